//! Training data files: JSON lines of `{"image": "path", "prefix": "...", "suffix":
//! "..."}`, image paths relative to the file; instead of `suffix`, `"boxes": [{"label":
//! "cat", "bbox": [x_min, y_min, x_max, y_max]}]` in pixels makes a detection target.
//! Every line is checked (JSON, fields, image, target) before anything trains, and an
//! error names the file and line.

use std::path::Path;

use serde::Deserialize;

use super::batch::Example;
use crate::error::{Error, Result};
use crate::preprocess::load_image;
use crate::task::{BoundingBox, detection_suffix};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    image: String,
    prefix: String,
    suffix: Option<String>,
    boxes: Option<Vec<LabelledBox>>,
    masks: Option<serde_json::Value>,
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
        let image = load_image(base.join(&l.image)).map_err(|e| at(e.to_string()))?;
        let suffix = match (l.suffix, l.boxes, l.masks) {
            (Some(s), None, None) => s,
            (None, Some(boxes), None) => {
                let objects: Vec<(String, BoundingBox)> = boxes
                    .into_iter()
                    .map(|b| {
                        let [x_min, y_min, x_max, y_max] = b.bbox;
                        (
                            b.label,
                            BoundingBox {
                                x_min,
                                y_min,
                                x_max,
                                y_max,
                            },
                        )
                    })
                    .collect();
                detection_suffix(&objects, image.width(), image.height()).map_err(at)?
            }
            (None, None, Some(_)) => {
                return Err(at(
                    "\"masks\" targets need the VQ-VAE encoder, which this version \
                               does not have yet; give the <seg> codes in \"suffix\""
                        .into(),
                ));
            }
            _ => {
                return Err(at(
                    "give exactly one of \"suffix\", \"boxes\" or \"masks\"".into()
                ));
            }
        };
        out.push((n + 1, Example::new(image, l.prefix, suffix)));
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
