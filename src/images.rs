//! One image or several per prompt: [`Images`], what every generating method takes,
//! and [`load_frames`], the frames of a video extracted into a folder.
//!
//! Several images become several blocks of `<image>` tokens, in order, before `<bos>`,
//! as transformers' `PaliGemmaProcessor` lays them out for a list of images; all of
//! them are in the bidirectional prefix.

use std::path::{Path, PathBuf};

use image::DynamicImage;

use crate::error::{Error, Result};
use crate::preprocess::load_image;

/// The images of one prompt, in order: a single [`DynamicImage`], or a slice, array or
/// vector of images (owned or borrowed).
///
/// ```
/// # fn main() -> paligemma::Result<()> {
/// use paligemma::{Images, load_image};
/// let a = load_image("tests/fixtures/images/photo.png")?;
/// let b = load_image("tests/fixtures/images/gray.png")?;
/// assert_eq!(a.images().len(), 1);
/// assert_eq!([&a, &b].images().len(), 2);
/// assert_eq!(vec![a, b].images().len(), 2);
/// # Ok(()) }
/// ```
pub trait Images {
    /// The images, in prompt order.
    fn images(&self) -> Vec<&DynamicImage>;
}

impl Images for DynamicImage {
    fn images(&self) -> Vec<&DynamicImage> {
        vec![self]
    }
}

impl Images for [DynamicImage] {
    fn images(&self) -> Vec<&DynamicImage> {
        self.iter().collect()
    }
}

impl Images for [&DynamicImage] {
    fn images(&self) -> Vec<&DynamicImage> {
        self.to_vec()
    }
}

impl<const N: usize> Images for [DynamicImage; N] {
    fn images(&self) -> Vec<&DynamicImage> {
        self.iter().collect()
    }
}

impl<const N: usize> Images for [&DynamicImage; N] {
    fn images(&self) -> Vec<&DynamicImage> {
        self.to_vec()
    }
}

impl Images for Vec<DynamicImage> {
    fn images(&self) -> Vec<&DynamicImage> {
        self.iter().collect()
    }
}

impl Images for Vec<&DynamicImage> {
    fn images(&self) -> Vec<&DynamicImage> {
        self.clone()
    }
}

/// File name endings taken as images by [`frame_paths`] (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"];

/// The image files of `dir` in name order (hidden files skipped), `max` of them at
/// most, sampled evenly: frame `i` of `max` is the one at the middle of the `i`-th
/// equal share of the folder. Nothing is decoded.
pub fn frame_paths(dir: impl AsRef<Path>, max: Option<usize>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if image && !name.starts_with('.') && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Image(format!(
            "{} holds no image files ({})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    match max {
        Some(0) => Err(Error::Image("a frame budget of 0 takes no frames".into())),
        Some(n) if n < paths.len() => {
            let total = paths.len();
            Ok((0..n)
                .map(|i| paths[(2 * i + 1) * total / (2 * n)].clone())
                .collect())
        }
        _ => Ok(paths),
    }
}

/// Decode the frames [`frame_paths`] picks from `dir`; an undecodable frame is an error
/// that names its file.
///
/// ```
/// # fn main() -> paligemma::Result<()> {
/// let frames = paligemma::load_frames("tests/fixtures/images", Some(2))?;
/// assert_eq!(frames.len(), 2);
/// # Ok(()) }
/// ```
pub fn load_frames(dir: impl AsRef<Path>, max: Option<usize>) -> Result<Vec<DynamicImage>> {
    frame_paths(dir, max)?.iter().map(load_image).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for n in names {
            std::fs::write(dir.path().join(n), b"").unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    }

    #[test]
    fn frames_are_sampled_evenly_in_name_order() {
        let names: Vec<String> = (0..10).map(|i| format!("f{i:02}.PNG")).collect();
        let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
        all.extend(["notes.txt", ".hidden.png"]);
        let tmp = folder(&all);
        let dir = tmp.path();
        let picked = |max| {
            frame_paths(dir, max)
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(picked(None).len(), 10);
        assert_eq!(picked(Some(3)), ["f01.PNG", "f05.PNG", "f08.PNG"]);
        assert_eq!(picked(Some(1)), ["f05.PNG"]);
        assert_eq!(picked(Some(20)).len(), 10);
        assert!(frame_paths(dir, Some(0)).is_err());
    }

    #[test]
    fn an_empty_folder_and_a_bad_frame_are_errors_naming_them() {
        let tmp = folder(&["a.txt"]);
        let dir = tmp.path();
        let e = frame_paths(dir, None).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("no image files"), "{e}");
        std::fs::write(dir.join("b.png"), b"not a png").unwrap_or_else(|e| panic!("{e}"));
        let e = load_frames(dir, None).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("b.png"), "{e}");
    }
}
