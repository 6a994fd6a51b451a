//! Training data files: JSON lines of `{"image": "path", "prefix": "...", "suffix":
//! "..."}`, image paths relative to the file (or `"images": ["a.png", "b.png"]` for a
//! prompt about several images, e.g. video frames); instead of `suffix`, `"boxes": [{"label":
//! "cat", "bbox": [x_min, y_min, x_max, y_max]}]` in pixels makes a detection target,
//! and `"masks": [{"label": "cat", "mask": "cat-mask.png"}]` (a mask image of the
//! image's size, non-black inside the object; optionally a `"bbox"`, otherwise the
//! mask's extent) a segmentation target, encoded by the checkpoint's VQ-VAE encoder
//! (boxes and masks need exactly one image: they are in its pixels).
//! Every line is checked (JSON, fields, image, target) before anything trains, and an
//! error names the file and line.

use std::path::Path;

use serde::Deserialize;

use super::batch::Example;
use crate::error::{Error, Result};
use crate::mask_encoder::MaskEncoder;
use crate::preprocess::load_image;
use crate::segmentation::BinaryMask;
use crate::task::{BoundingBox, detection_suffix};
use burn::tensor::backend::Backend;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    image: Option<String>,
    images: Option<Vec<String>>,
    prefix: String,
    suffix: Option<String>,
    boxes: Option<Vec<LabelledBox>>,
    masks: Option<Vec<LabelledMask>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelledMask {
    label: String,
    mask: String,
    bbox: Option<[f64; 4]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelledBox {
    label: String,
    bbox: [f64; 4],
}

/// Read every example of a JSON-lines file with its 1-based line number (blank lines
/// are skipped).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let file = dir.path().join("train.jsonl");
/// let image = std::fs::canonicalize("tests/fixtures/images/photo.png")?;
/// let line = serde_json::json!({"image": image, "prefix": "caption en", "suffix": "a photo"});
/// std::fs::write(&file, format!("{line}\n"))?;
/// let examples = paligemma::train::read_examples(&file)?;
/// assert_eq!((examples[0].0, examples[0].1.suffix.as_str()), (1, "a photo"));
/// # Ok(()) }
/// ```
pub fn read_examples(path: impl AsRef<Path>) -> Result<Vec<(usize, Example)>> {
    read_examples_with::<crate::backend::Cpu>(path, None)
}

/// [`read_examples`], with the mask `encoder` that turns `"masks"` lines into
/// segmentation targets (`MaskEncoder::from_npz` on the checkpoint's `vae-oid.npz`);
/// without one such lines are an error.
pub fn read_examples_with<B: Backend>(
    path: impl AsRef<Path>,
    encoder: Option<&MaskEncoder<B>>,
) -> Result<Vec<(usize, Example)>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |reason: String| Error::Data {
            path: path.to_path_buf(),
            line: n + 1,
            reason,
        };
        let l: Line = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let files = match (l.image, l.images) {
            (Some(one), None) => vec![one],
            (None, Some(several)) if !several.is_empty() => several,
            (None, Some(_)) => return Err(at("\"images\" is empty".into())),
            _ => return Err(at("give exactly one of \"image\" or \"images\"".into())),
        };
        let images = files
            .iter()
            .map(|f| load_image(base.join(f)).map_err(|e| at(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        let image = match images.as_slice() {
            [one] => Some(one),
            _ => None,
        };
        let one_image = |what: &str| {
            image.ok_or_else(|| {
                at(format!(
                    "\"{what}\" targets are in one image's pixels; this line has {} images",
                    images.len()
                ))
            })
        };
        let suffix = match (l.suffix, l.boxes, l.masks) {
            (Some(s), None, None) => s,
            (None, Some(boxes), None) => {
                let image = one_image("boxes")?;
                let objects: Vec<(String, BoundingBox)> = boxes
                    .into_iter()
                    .map(|b| (b.label, pixel_box(b.bbox)))
                    .collect();
                detection_suffix(&objects, image.width(), image.height()).map_err(at)?
            }
            (None, None, Some(masks)) => {
                let encoder = encoder.ok_or_else(|| {
                    at("\"masks\" targets need the checkpoint's VQ-VAE encoder \
                        (vae-oid.npz); give the <seg> codes in \"suffix\" instead"
                        .into())
                })?;
                let image = one_image("masks")?;
                let (w, h) = (image.width(), image.height());
                let mut objects = Vec::with_capacity(masks.len());
                for m in masks {
                    let mask = read_mask(&base.join(&m.mask), w, h).map_err(&at)?;
                    let bbox = match m.bbox {
                        Some(b) => pixel_box(b),
                        None => {
                            extent(&mask).ok_or_else(|| at(format!("{}: empty mask", m.mask)))?
                        }
                    };
                    objects.push((m.label, bbox, mask));
                }
                let refs: Vec<(&str, BoundingBox, &BinaryMask)> = objects
                    .iter()
                    .map(|(l, b, m)| (l.as_str(), *b, m))
                    .collect();
                encoder
                    .segmentation_suffix(&refs, w, h)
                    .map_err(|e| at(e.to_string()))?
            }
            _ => {
                return Err(at(
                    "give exactly one of \"suffix\", \"boxes\" or \"masks\"".into()
                ));
            }
        };
        out.push((n + 1, Example::with_images(images, l.prefix, suffix)));
    }
    if out.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 0,
            reason: "no examples".into(),
        });
    }
    Ok(out)
}

fn pixel_box([x_min, y_min, x_max, y_max]: [f64; 4]) -> BoundingBox {
    BoundingBox {
        x_min,
        y_min,
        x_max,
        y_max,
    }
}

/// A mask image of `width x height`: pixels with any non-zero channel are inside.
fn read_mask(path: &Path, width: u32, height: u32) -> std::result::Result<BinaryMask, String> {
    let img = load_image(path).map_err(|e| e.to_string())?.to_luma8();
    if img.dimensions() != (width, height) {
        return Err(format!(
            "{}: the mask is {}x{}, the image {width}x{height}",
            path.display(),
            img.width(),
            img.height()
        ));
    }
    Ok(BinaryMask {
        width,
        height,
        data: img.pixels().map(|p| p.0[0] > 0).collect(),
    })
}

/// The smallest pixel box holding every pixel of `mask`, or `None` when it is empty.
fn extent(mask: &BinaryMask) -> Option<BoundingBox> {
    let w = mask.width as usize;
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, _) in mask.data.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
    }
    (x1 > 0).then_some(BoundingBox {
        x_min: x0 as f64,
        y_min: y0 as f64,
        x_max: x1 as f64,
        y_max: y1 as f64,
    })
}
