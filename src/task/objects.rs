//! What parsing an output yields: boxes in pixels, detected and segmented objects, and
//! the spans that formed no object; and the inverse, writing objects as tokens.

use std::fmt;

use serde::Serialize;

use crate::segmentation::BinaryMask;

/// Largest valid `<loc>` value.
pub const MAX_LOC: u16 = 1023;
/// Largest valid `<seg>` value (the mask decoder's codebook has 128 entries).
pub const MAX_SEG: u16 = 127;

/// How `<locDDDD>` values map to pixel coordinates.
///
/// Either way the parser returns pixel coordinates without rounding; see
/// [`BoundingBox::to_pixels`] and [`BoundingBox::to_pixels_rounded`] for the two
/// integer conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Coordinates {
    /// `value / 1023`, clipped to [0, 1], times the width (x) or height (y): how
    /// big_vision encodes (`round(v * 1023)`) and evaluates boxes. big_vision's
    /// evaluator then truncates to whole pixels with `int()` when it pastes masks
    /// ([`BoundingBox::to_pixels`]). The default.
    #[default]
    BigVision,
    /// `value / 1024` times the width or height, as the Hugging Face demo spaces
    /// decode boxes (they then round to whole pixels, [`BoundingBox::to_pixels_rounded`]).
    Demo,
}

impl Coordinates {
    /// The coordinate of `value` on an axis of `size` pixels, in f64 as Python does.
    pub(crate) fn to_pixel(self, value: u16, size: u32) -> f64 {
        let divisor = match self {
            Coordinates::BigVision => 1023.0,
            Coordinates::Demo => 1024.0,
        };
        (f64::from(value) / divisor).clamp(0.0, 1.0) * f64::from(size)
    }
}

/// A box in pixels of the original image: `(x_min, y_min)` is the top-left corner,
/// `(x_max, y_max)` the bottom-right one (exclusive). Coordinates are f64, computed as
/// Python computes them, so [`BoundingBox::to_pixels`] is exactly big_vision's
/// `int(v / 1023 * size)`, the box masks are pasted into.
///
/// Boxes returned by the parser satisfy `0 <= x_min < x_max <= width` and
/// `0 <= y_min < y_max <= height` for a non-empty image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoundingBox {
    /// Left edge.
    pub x_min: f64,
    /// Top edge.
    pub y_min: f64,
    /// Right edge (exclusive).
    pub x_max: f64,
    /// Bottom edge (exclusive).
    pub y_max: f64,
}

impl BoundingBox {
    /// Width in pixels.
    pub fn width(&self) -> f64 {
        self.x_max - self.x_min
    }

    /// Height in pixels.
    pub fn height(&self) -> f64 {
        self.y_max - self.y_min
    }

    /// Whole-pixel box `(x_min, y_min, x_max, y_max)`, truncated as big_vision's
    /// evaluator does (`int(v / 1023 * size)`). Negative or NaN values become 0.
    pub fn to_pixels(&self) -> (u32, u32, u32, u32) {
        (
            self.x_min as u32,
            self.y_min as u32,
            self.x_max as u32,
            self.y_max as u32,
        )
    }

    /// Whole-pixel box `(x_min, y_min, x_max, y_max)`, rounded to the nearest pixel as
    /// the Hugging Face demo spaces do. Negative or NaN values become 0.
    pub fn to_pixels_rounded(&self) -> (u32, u32, u32, u32) {
        (
            self.x_min.round() as u32,
            self.y_min.round() as u32,
            self.x_max.round() as u32,
            self.y_max.round() as u32,
        )
    }
}

/// A detected object: one object parsed from a detection or segmentation output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// The label the model wrote, trimmed; never empty, never contains `;` or a
    /// newline.
    pub label: String,
    /// The box in pixels of the image the output refers to.
    pub bbox: BoundingBox,
    /// Raw `<loc>` values in output order: y_min, x_min, y_max, x_max.
    pub loc: [u16; 4],
    /// The sixteen `<seg>` codes (each 0..=127), when the object has them: always in a
    /// segmentation parse; in a detection parse only when the model wrote exactly
    /// sixteen valid ones.
    pub seg_codes: Option<[u16; 16]>,
}

/// Why part of an output did not become an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SkipReason {
    /// Fewer than four `<loc>` tokens (often a truncated output).
    TooFewLocs {
        /// How many there were.
        found: usize,
    },
    /// More than four `<loc>` tokens in one run.
    TooManyLocs {
        /// How many there were.
        found: usize,
    },
    /// A `<loc>` value above 1023 (`<loc1500>`).
    LocOutOfRange {
        /// The value.
        value: u16,
    },
    /// `y_max <= y_min` or `x_max <= x_min`: the box has no area.
    InvertedBox,
    /// A segmentation object without exactly sixteen `<seg>` codes.
    WrongSegCount {
        /// How many there were.
        found: usize,
    },
    /// A `<seg>` value above 127 (`<seg200>`).
    SegOutOfRange {
        /// The value.
        value: u16,
    },
    /// A `<loc…>` or `<seg…>` token with the wrong number of digits (`<loc12>`,
    /// `<loc01023>`, `<seg0001>`): not a token of the vocabulary.
    MalformedToken {
        /// The token as written.
        token: String,
    },
    /// The location (and segmentation) tokens are not followed by a label.
    MissingLabel,
    /// Text that belongs to no object (nothing but text since the last separator).
    StrayText,
    /// `<seg>` tokens that belong to no object.
    StraySegs,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::TooFewLocs { found } => {
                write!(f, "{found} <loc> tokens, 4 needed (truncated output?)")
            }
            SkipReason::TooManyLocs { found } => write!(f, "{found} <loc> tokens, 4 expected"),
            SkipReason::LocOutOfRange { value } => {
                write!(f, "<loc{value:04}> is beyond {MAX_LOC}")
            }
            SkipReason::InvertedBox => write!(f, "box has no area (max <= min)"),
            SkipReason::WrongSegCount { found } => write!(f, "{found} <seg> tokens, 16 needed"),
            SkipReason::SegOutOfRange { value } => {
                write!(f, "<seg{value:03}> is beyond {MAX_SEG}")
            }
            SkipReason::MalformedToken { token } => {
                write!(f, "{token} is not a <locDDDD> or <segDDD> token")
            }
            SkipReason::MissingLabel => write!(f, "no label after the location tokens"),
            SkipReason::StrayText => write!(f, "text outside any object"),
            SkipReason::StraySegs => write!(f, "<seg> tokens outside any object"),
        }
    }
}

/// A span of output that did not form a valid object, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The span as the model wrote it, trimmed.
    pub text: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// Objects found in an output, and what was skipped.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ParseOutput {
    /// Valid objects, in output order.
    pub objects: Vec<Detection>,
    /// Invalid spans, in output order.
    pub skipped: Vec<Skipped>,
}

/// The `<locDDDD>` token for a value (`loc_token(51)` is `<loc0051>`).
pub fn loc_token(v: u16) -> String {
    format!("<loc{v:04}>")
}

/// The `<segDDD>` token for a value (`seg_token(7)` is `<seg007>`).
pub fn seg_token(v: u16) -> String {
    format!("<seg{v:03}>")
}

/// Write objects in PaliGemma's output format, `<loc…>×4[<seg…>×16] label` joined by
/// ` ; `: the inverse of parsing for valid objects (boxes are ignored; `loc` and
/// `seg_codes` are written).
///
/// ```
/// use paligemma::task::{format_objects, parse_detections};
/// let text = "<loc0051><loc0309><loc0708><loc0646> shoe ; <loc0001><loc0002><loc0500><loc0600> red bus";
/// assert_eq!(format_objects(&parse_detections(text, 640, 480).objects), text);
/// ```
pub fn format_objects(objects: &[Detection]) -> String {
    objects
        .iter()
        .map(|o| {
            let mut s: String = o.loc.iter().map(|&v| loc_token(v)).collect();
            if let Some(codes) = &o.seg_codes {
                s.extend(codes.iter().map(|&v| seg_token(v)));
            }
            s.push(' ');
            s.push_str(&o.label);
            s
        })
        .collect::<Vec<_>>()
        .join(" ; ")
}

/// A segmented object: a detection with its sixteen codes decoded into a mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// The label the model wrote.
    pub label: String,
    /// The box in pixels of the original image.
    pub bbox: BoundingBox,
    /// Raw `<loc>` values in output order: y_min, x_min, y_max, x_max.
    pub loc: [u16; 4],
    /// The sixteen `<seg>` codes.
    pub codes: [u16; 16],
    /// Binary mask over the whole original image, pasted into
    /// [`BoundingBox::to_pixels`] as big_vision's evaluator does.
    pub mask: BinaryMask,
    /// The decoder's soft 64 x 64 output (row-major, nominally in [-1, 1]).
    pub mask64: Vec<f32>,
}

/// The `<loc>` value of pixel coordinate `v` on an axis of `size` pixels, as big_vision
/// encodes boxes: `round(v / size * 1023)`, clipped to 0..=1023.
pub fn loc_value(v: f64, size: u32) -> u16 {
    let normalized = if size == 0 { 0.0 } else { v / f64::from(size) };
    (normalized * f64::from(MAX_LOC))
        .round()
        .clamp(0.0, f64::from(MAX_LOC)) as u16
}

/// A detection target: `<locYMIN><locXMIN><locYMAX><locXMAX> label` per object, joined by
/// ` ; `, from labelled pixel boxes of a `width x height` image; the inverse of
/// [`parse_detections`](super::parse_detections) up to one `<loc>` step.
///
/// A label must be a valid object name (see [`Task::prompt`](super::Task::prompt)); a
/// box must lie inside the image and keep a positive size on the `<loc>` grid.
///
/// ```
/// use paligemma::task::{BoundingBox, detection_suffix, parse_detections};
/// let cat = BoundingBox { x_min: 10.0, y_min: 20.0, x_max: 110.0, y_max: 90.0 };
/// let suffix = detection_suffix(&[("cat", cat)], 200, 100).unwrap();
/// assert_eq!(suffix, "<loc0205><loc0051><loc0921><loc0563> cat");
/// let back = &parse_detections(&suffix, 200, 100).objects[0].bbox;
/// assert!((back.x_min - 10.0).abs() < 0.2 && (back.y_max - 90.0).abs() < 0.2);
/// ```
pub fn detection_suffix<S: AsRef<str>>(
    objects: &[(S, BoundingBox)],
    width: u32,
    height: u32,
) -> std::result::Result<String, String> {
    Ok(format_objects(&target_objects(objects, width, height)?))
}

/// Labelled pixel boxes as detections on the `<loc>` grid (no `<seg>` codes), checked
/// as [`detection_suffix`] documents.
pub(crate) fn target_objects<S: AsRef<str>>(
    objects: &[(S, BoundingBox)],
    width: u32,
    height: u32,
) -> std::result::Result<Vec<Detection>, String> {
    let mut out = Vec::with_capacity(objects.len());
    for (i, (label, b)) in objects.iter().enumerate() {
        let label = label.as_ref().trim();
        if label.is_empty() || label.contains([';', '\n', '\r', '<', '>']) {
            return Err(format!(
                "object {i}: label {label:?} is empty or contains ';', '<', '>' or a newline"
            ));
        }
        let inside = |lo: f64, hi: f64, size: u32| 0.0 <= lo && lo < hi && hi <= f64::from(size);
        if !(inside(b.x_min, b.x_max, width) && inside(b.y_min, b.y_max, height)) {
            return Err(format!(
                "object {i} ({label}): box {:?} is not inside the {width}x{height} image",
                [b.x_min, b.y_min, b.x_max, b.y_max]
            ));
        }
        let loc = [
            loc_value(b.y_min, height),
            loc_value(b.x_min, width),
            loc_value(b.y_max, height),
            loc_value(b.x_max, width),
        ];
        if loc[2] <= loc[0] || loc[3] <= loc[1] {
            return Err(format!(
                "object {i} ({label}): box {:?} is smaller than one <loc> step",
                [b.x_min, b.y_min, b.x_max, b.y_max]
            ));
        }
        out.push(Detection {
            label: label.to_string(),
            bbox: *b,
            loc,
            seg_codes: None,
        });
    }
    Ok(out)
}
