//! What the CLI prints: the JSON objects (one per run, or per line of a batch) and the
//! plain-text report, and the annotated picture for `--out`.

use std::path::Path;

use paligemma::task::{Detection, Segmentation, Skipped};
use paligemma::{BoundingBox, Generation, Timings};
use serde::Serialize;

use crate::Res;
use crate::draw;

/// The library's timings plus the load time.
#[derive(Serialize)]
pub struct TimingsJson<'a> {
    #[serde(flatten)]
    pub timings: &'a Timings,
    pub load_s: f64,
}

/// A text task or `generate`.
#[derive(Serialize)]
pub struct GenerationJson<'a> {
    pub prompt_ids: &'a [u32],
    pub generated_ids: &'a [u32],
    pub text: &'a str,
    pub top_logits: &'a [Vec<(u32, f32)>],
    pub timings: TimingsJson<'a>,
}

impl<'a> GenerationJson<'a> {
    pub fn new(out: &'a Generation, load_s: f64) -> Self {
        GenerationJson {
            prompt_ids: &out.prompt_ids,
            generated_ids: &out.generated_ids,
            text: &out.text,
            top_logits: out.top_logits.as_deref().unwrap_or_default(),
            timings: TimingsJson {
                timings: &out.timings,
                load_s,
            },
        }
    }
}

/// One line of `generate --batch`: a result, or what went wrong with that line.
#[derive(Serialize)]
pub struct BatchLineJson<'a> {
    /// 1-based line of the batch file.
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<&'a [std::path::PathBuf]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_ids: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<'a> BatchLineJson<'a> {
    /// The generation for line `line`.
    pub fn result(
        line: usize,
        prompt: &'a str,
        files: &'a [std::path::PathBuf],
        out: &'a paligemma::Generation,
    ) -> Self {
        BatchLineJson {
            line,
            image: match files {
                [one] => Some(one.as_path()),
                _ => None,
            },
            images: (files.len() > 1).then_some(files),
            prompt: Some(prompt),
            generated_ids: Some(&out.generated_ids),
            text: Some(&out.text),
            error: None,
        }
    }

    /// Why line `line` has no result.
    pub fn error(line: usize, error: String) -> Self {
        BatchLineJson {
            line,
            image: None,
            images: None,
            prompt: None,
            generated_ids: None,
            text: None,
            error: Some(error),
        }
    }
}

/// One detected or segmented object.
#[derive(Serialize)]
pub struct ObjectJson<'a> {
    pub label: &'a str,
    /// `[x_min, y_min, x_max, y_max]` in pixels of the original image.
    pub bbox: [f64; 4],
    /// Raw `<loc>` values: y_min, x_min, y_max, x_max.
    pub loc: [u16; 4],
    /// The decoder's 64 x 64 soft mask, as 64 rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask64: Option<Vec<&'a [f32]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_area: Option<usize>,
}

impl<'a> ObjectJson<'a> {
    pub fn detection(d: &'a Detection) -> Self {
        ObjectJson {
            label: &d.label,
            bbox: bbox(&d.bbox),
            loc: d.loc,
            mask64: None,
            mask_area: None,
        }
    }

    pub fn segmentation(s: &'a Segmentation) -> Self {
        ObjectJson {
            label: &s.label,
            bbox: bbox(&s.bbox),
            loc: s.loc,
            mask64: Some(s.mask64.chunks(64).collect()),
            mask_area: Some(s.mask.area()),
        }
    }
}

fn bbox(b: &BoundingBox) -> [f64; 4] {
    [b.x_min, b.y_min, b.x_max, b.y_max]
}

#[derive(Serialize)]
pub struct SkippedJson<'a> {
    pub text: &'a str,
    pub reason: String,
}

/// `detect`, `segment` and `parse`: the objects, what was skipped, and (when a model
/// ran) the generation.
#[derive(Serialize)]
pub struct ObjectsJson<'a> {
    pub objects: Vec<ObjectJson<'a>>,
    pub skipped: Vec<SkippedJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_ids: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<TimingsJson<'a>>,
}

/// Print a text result: JSON, or the text with timings on stderr.
pub fn report_generation(out: &Generation, load_s: f64, as_json: bool) -> Res<()> {
    if as_json {
        println!(
            "{}",
            serde_json::to_string(&GenerationJson::new(out, load_s))?
        );
    } else {
        println!("{}", out.text);
        eprintln!(
            "load {load_s:.2}s, prefill {:.2}s, decode {:.3}s for {} tokens",
            out.timings.prefill_s, out.timings.decode_s, out.timings.tokens
        );
    }
    Ok(())
}

/// Print objects: JSON, or one `label<TAB>bbox` line each.
pub fn report_objects(
    objects: Vec<ObjectJson<'_>>,
    skipped: &[Skipped],
    generation: Option<(&Generation, f64)>,
    as_json: bool,
) -> Res<()> {
    if as_json {
        let out = ObjectsJson {
            skipped: skipped
                .iter()
                .map(|s| SkippedJson {
                    text: &s.text,
                    reason: s.reason.to_string(),
                })
                .collect(),
            objects,
            text: generation.map(|(g, _)| g.text.as_str()),
            generated_ids: generation.map(|(g, _)| g.generated_ids.as_slice()),
            timings: generation.map(|(g, load_s)| TimingsJson {
                timings: &g.timings,
                load_s,
            }),
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    if let Some((g, _)) = generation {
        eprintln!("output: {}", g.text);
    }
    for o in &objects {
        println!("{}\t{}", o.label, serde_json::to_string(&o.bbox)?);
    }
    for s in skipped {
        eprintln!("skipped {:?}: {}", s.text, s.reason);
    }
    Ok(())
}

/// Boxes (and masks) drawn on the image, written to `path`.
/// Check before any work that an annotated image can be written to `path`: a known
/// image extension, and a directory that exists and takes a new file.
pub fn check_output(path: &Path) -> Res<()> {
    image::ImageFormat::from_path(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "cannot write {}: {} is not a directory",
            path.display(),
            dir.display()
        )
        .into());
    }
    let probe = dir.join(format!(".paligemma-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn save_annotated(
    image: &image::DynamicImage,
    path: &Path,
    notes: &[draw::Annotation<'_>],
) -> Res<()> {
    let mut canvas = image.to_rgb8();
    draw::annotate(&mut canvas, notes);
    canvas
        .save(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

fn annotation<'a>(
    label: &'a str,
    b: &BoundingBox,
    mask: Option<&'a [bool]>,
) -> draw::Annotation<'a> {
    draw::Annotation {
        bbox: (b.x_min, b.y_min, b.x_max, b.y_max),
        label,
        mask,
    }
}

pub fn detection_annotations(objects: &[Detection]) -> Vec<draw::Annotation<'_>> {
    objects
        .iter()
        .map(|o| annotation(&o.label, &o.bbox, None))
        .collect()
}

pub fn segment_annotations(objects: &[Segmentation]) -> Vec<draw::Annotation<'_>> {
    objects
        .iter()
        .map(|s| annotation(&s.label, &s.bbox, Some(&s.mask.data)))
        .collect()
}
