//! Turning an image into the vision tower's input, as transformers'
//! `PaliGemmaProcessor` does with its PIL-based `SiglipImageProcessor`.
//!
//! Images are converted to RGB as transformers does (gray replicated, transparency
//! composited onto white), resized with PIL's bicubic filter on 8-bit data
//! (fixed-point, in the pass order Pillow 13 uses, antialiased when shrinking),
//! scaled to [0, 1] and normalised with mean 0.5 and std 0.5.

use std::path::Path;

use image::DynamicImage;

use crate::error::{Error, Result};
use crate::resize::{Filter, resize_u8};

/// Open and decode an image file (PNG, JPEG, GIF, BMP, TIFF, WebP).
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader
        .decode()
        .map_err(|e| Error::Image(format!("cannot decode {}: {e}", path.display())))
}

/// Open and decode an image file, with warnings about damage the decoder passes over
/// ([`image_warnings`]).
pub fn load_image_checked(path: impl AsRef<Path>) -> Result<(DynamicImage, Vec<String>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let image = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::Image(format!("cannot decode {}: {e}", path.display())))?;
    let warnings = image_warnings(&bytes)
        .into_iter()
        .map(|w| format!("{}: {w}", path.display()))
        .collect();
    Ok((image, warnings))
}

/// Signs that image bytes are damaged although they decode. A JPEG that ends without
/// its end-of-image marker was cut short: the decoder fills the missing rows with grey
/// instead of failing. (Files with data appended after the marker are warned about
/// too.)
pub fn image_warnings(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if !bytes[..end].ends_with(&[0xFF, 0xD9]) {
            out.push(
                "the JPEG data ends without an end-of-image marker: the file looks truncated, \
                 and the missing part of the picture is grey"
                    .to_string(),
            );
        }
    }
    out
}

/// Preprocess an image into `[3, size, size]` channel-first normalised pixels.
pub fn preprocess_image(image: &DynamicImage, size: usize) -> Result<Vec<f32>> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::Image(format!("image has no pixels ({w}x{h})")));
    }
    if size == 0 {
        return Err(Error::Image("target size is zero".into()));
    }
    let rgb = to_rgb(image);
    let resized = resize_u8(Filter::Bicubic, &rgb, (w, h), (size, size), 3);
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        for c in 0..3 {
            // rescale 1/255, then (x - 0.5) / 0.5
            out[c * plane + i] = (f32::from(px[c]) * (1.0 / 255.0) - 0.5) / 0.5;
        }
    }
    Ok(out)
}

/// An image preprocessed for a vision tower of resolution `size`: `[3, size, size]`
/// channel-first values in [-1, 1] as [`preprocess_image`] makes them, with the size of
/// the image they came from (boxes and masks are scaled back to it).
///
/// Preprocessing resizes the whole image, so a server does it on the thread that
/// decoded the image and hands the model loop only [`Pixels`]
/// ([`continuous::Request::from_pixels`](crate::continuous::Request::from_pixels)).
///
/// ```
/// # fn main() -> paligemma::Result<()> {
/// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
/// let pixels = paligemma::Pixels::new(&image, 56)?;
/// assert_eq!(pixels.values().len(), 3 * 56 * 56);
/// assert_eq!(pixels.original_size(), (image.width(), image.height()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    values: Vec<f32>,
    size: usize,
    original_size: (u32, u32),
}

impl Pixels {
    /// Preprocess `image` for a tower of resolution `size` ([`preprocess_image`]).
    pub fn new(image: &DynamicImage, size: usize) -> Result<Pixels> {
        Ok(Pixels {
            values: preprocess_image(image, size)?,
            size,
            original_size: (image.width(), image.height()),
        })
    }

    /// The `[3, size, size]` values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The resolution they were made for.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Width and height of the image they came from.
    pub fn original_size(&self) -> (u32, u32) {
        self.original_size
    }
}

/// [`Pixels`] of the images of one prompt; an error names the image (1-based) when
/// there are several.
pub(crate) fn pixels_of(images: &[&DynamicImage], size: usize) -> Result<Vec<Pixels>> {
    images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            Pixels::new(image, size).map_err(|e| match images.len() {
                1 => e,
                _ => Error::Image(format!("image {}: {e}", i + 1)),
            })
        })
        .collect()
}

/// Interleaved RGB8 pixels as transformers' `convert_to_rgb` makes them: images with
/// an alpha channel are composited onto white (PIL's integer `alpha_composite`), gray
/// is replicated into three channels.
pub fn to_rgb(image: &DynamicImage) -> Vec<u8> {
    if !image.color().has_alpha() {
        return image.to_rgb8().into_raw();
    }
    let rgba = image.to_rgba8();
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let a = u32::from(px[3]);
        if a == 0 {
            out.extend([255, 255, 255]);
            continue;
        }
        // Background alpha is 255: blend = 255 * (255 - a), total alpha 255 * 255.
        const BITS: u32 = 7;
        let out_a255 = a * 255 + 255 * (255 - a);
        let coef1 = a * 255 * 255 * (1 << BITS) / out_a255;
        let coef2 = 255 * (1 << BITS) - coef1;
        let div255 = |v: u32| ((v >> 8) + v) >> 8;
        for &c in &px[..3] {
            let tmp = u32::from(c) * coef1 + 255 * coef2;
            out.push((div255(tmp + (0x80 << BITS)) >> BITS) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(13, 7, image::Rgb([200, 10, 0])));
        let px = preprocess_image(&img, 5).unwrap();
        let expect = |v: f32| (v / 255.0 - 0.5) / 0.5;
        assert!((px[0] - expect(200.0)).abs() < 1e-6);
        assert!((px[25] - expect(10.0)).abs() < 1e-6);
        assert!((px[74] - expect(0.0)).abs() < 1e-6);
    }

    /// A truncated JPEG decodes (grey where data is missing) but is warned about; the
    /// whole file is not.
    #[test]
    fn truncated_jpegs_are_warned_about() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
        }));
        let mut jpeg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.jpg");
        std::fs::write(&whole, &jpeg).unwrap();
        let (_, warnings) = load_image_checked(&whole).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &jpeg[..jpeg.len() * 2 / 3]).unwrap();
        let (decoded, warnings) = load_image_checked(&cut).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 48));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("cut.jpg") && warnings[0].contains("truncated"));
        assert!(image_warnings(&[0x89, b'P', b'N', b'G']).is_empty());
    }
}
