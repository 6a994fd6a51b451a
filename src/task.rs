//! Task prompts and parsing of PaliGemma's structured outputs.
//!
//! The mix checkpoints were trained on fixed prompt templates ([`Task::prompt`]).
//! Detection and segmentation answers are token sequences: per object four
//! `<locDDDD>` tokens (y_min, x_min, y_max, x_max on a 0..=1023 grid), for
//! segmentation sixteen `<segDDD>` codes, then ` label`; objects are separated by
//! ` ; `. For example `<loc0051><loc0309><loc0708><loc0646> shoe`.
//!
//! The parser is a pure function that never panics and never invents an object:
//! everything that does not form a valid object is reported in
//! [`ParseOutput::skipped`] with the reason.
//!
//! Coordinates are decoded as big_vision's evaluator does, `value / 1023` clipped to
//! [0, 1] and scaled by the image's width or height ([`Coordinates::BigVision`]); the
//! Hugging Face demo spaces divide by 1024 instead ([`Coordinates::Demo`]); the two
//! differ by under 0.1%.

use std::fmt;

use serde::Serialize;

/// Invalid task arguments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// No object names were given to detect or segment.
    #[error("no objects given: name at least one object to {0}")]
    NoObjects(&'static str),
    /// An object name is empty after trimming.
    #[error("object name {index} is empty")]
    EmptyObject {
        /// Position of the name in the list.
        index: usize,
    },
    /// An object name contains a character that would change the prompt's structure.
    #[error("object name {name:?} contains {what}, which the prompt format reserves")]
    ReservedInObject {
        /// The offending name.
        name: String,
        /// What it contains.
        what: &'static str,
    },
    /// A question or answer text is empty.
    #[error("the {0} is empty")]
    EmptyText(&'static str),
    /// Text contains a newline, which ends a PaliGemma prompt.
    #[error("the {0} contains a newline; PaliGemma prompts are one line")]
    Newline(&'static str),
    /// The language code is not of the form the checkpoints were trained with.
    #[error(
        "language code {0:?} is not valid: use a lowercase ISO 639 code such as \"en\", \"de\" or \"zh\", optionally with a region such as \"pt-BR\""
    )]
    Language(String),
}

/// A task with the exact prompt template the PaliGemma mix checkpoints were trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// `caption {lang}`: a short caption.
    Caption {
        /// Output language.
        lang: String,
    },
    /// `describe {lang}`: a longer description.
    Describe {
        /// Output language.
        lang: String,
    },
    /// `ocr`: the text in the image.
    Ocr,
    /// `answer {lang} {question}`: visual question answering.
    Answer {
        /// Language of question and answer.
        lang: String,
        /// The question.
        question: String,
    },
    /// `question {lang} {answer}`: generate a question that has the given answer.
    Question {
        /// Language.
        lang: String,
        /// The answer.
        answer: String,
    },
    /// `detect a ; b`: boxes for each named object class.
    Detect {
        /// Object classes.
        objects: Vec<String>,
    },
    /// `segment a ; b`: boxes and masks for each named object class.
    Segment {
        /// Object classes.
        objects: Vec<String>,
    },
}

impl Task {
    /// `caption {lang}`.
    pub fn caption(lang: &str) -> Self {
        Task::Caption { lang: lang.into() }
    }

    /// `answer {lang} {question}`.
    pub fn answer(lang: &str, question: &str) -> Self {
        Task::Answer {
            lang: lang.into(),
            question: question.into(),
        }
    }

    /// `detect a ; b ; ...`.
    pub fn detect<S: AsRef<str>>(objects: &[S]) -> Self {
        Task::Detect {
            objects: objects.iter().map(|s| s.as_ref().to_string()).collect(),
        }
    }

    /// `segment a ; b ; ...`.
    pub fn segment<S: AsRef<str>>(objects: &[S]) -> Self {
        Task::Segment {
            objects: objects.iter().map(|s| s.as_ref().to_string()).collect(),
        }
    }

    /// Validate the arguments and build the prompt text (without the trailing newline,
    /// which the processor adds).
    ///
    /// ```
    /// use paligemma::task::Task;
    /// assert_eq!(Task::detect(&["cat", "dog"]).prompt().unwrap(), "detect cat ; dog");
    /// assert_eq!(Task::answer("en", "what is this?").prompt().unwrap(), "answer en what is this?");
    /// assert!(Task::detect(&["cat;dog"]).prompt().is_err());
    /// ```
    pub fn prompt(&self) -> Result<String, TaskError> {
        Ok(match self {
            Task::Caption { lang } => format!("caption {}", language(lang)?),
            Task::Describe { lang } => format!("describe {}", language(lang)?),
            Task::Ocr => "ocr".to_string(),
            Task::Answer { lang, question } => {
                format!("answer {} {}", language(lang)?, text(question, "question")?)
            }
            Task::Question { lang, answer } => {
                format!("question {} {}", language(lang)?, text(answer, "answer")?)
            }
            Task::Detect { objects } => format!("detect {}", object_list(objects, "detect")?),
            Task::Segment { objects } => format!("segment {}", object_list(objects, "segment")?),
        })
    }
}

/// Language codes: ISO 639-1/2 (two or three lowercase letters), optionally followed by
/// `-` and a region or script of two to four ASCII letters or digits (`pt-BR`,
/// `zh-Hant`). The mix checkpoints were trained on about 35 languages for captions and
/// answers; other well-formed codes are passed through and simply answer worse.
fn language(code: &str) -> Result<&str, TaskError> {
    let mut parts = code.splitn(2, '-');
    let base = parts.next().unwrap_or("");
    let base_ok = (2..=3).contains(&base.len()) && base.bytes().all(|b| b.is_ascii_lowercase());
    let region_ok = parts
        .next()
        .is_none_or(|r| (2..=4).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric()));
    if base_ok && region_ok {
        Ok(code)
    } else {
        Err(TaskError::Language(code.to_string()))
    }
}

fn text<'a>(t: &'a str, what: &'static str) -> Result<&'a str, TaskError> {
    let t = t.trim();
    if t.is_empty() {
        return Err(TaskError::EmptyText(what));
    }
    if t.contains(['\n', '\r']) {
        return Err(TaskError::Newline(what));
    }
    Ok(t)
}

fn object_list(objects: &[String], verb: &'static str) -> Result<String, TaskError> {
    if objects.is_empty() {
        return Err(TaskError::NoObjects(verb));
    }
    let mut names = Vec::with_capacity(objects.len());
    for (index, name) in objects.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            return Err(TaskError::EmptyObject { index });
        }
        let reserved = if name.contains(';') {
            Some("';' (the object separator)")
        } else if name.contains(['\n', '\r']) {
            Some("a newline")
        } else if name.contains('<') || name.contains('>') {
            Some("'<' or '>' (token markup)")
        } else {
            None
        };
        if let Some(what) = reserved {
            return Err(TaskError::ReservedInObject {
                name: name.to_string(),
                what,
            });
        }
        names.push(name);
    }
    Ok(names.join(" ; "))
}

// ---- output parsing ------------------------------------------------------------------

/// How `<locDDDD>` values map to coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coordinates {
    /// `value / 1023`, as big_vision encodes and evaluates them (the default).
    #[default]
    BigVision,
    /// `value / 1024`, as the Hugging Face demo spaces decode them.
    Demo,
}

impl Coordinates {
    fn fraction(self, v: u16) -> f32 {
        let d = match self {
            Coordinates::BigVision => 1023.0,
            Coordinates::Demo => 1024.0,
        };
        (f32::from(v) / d).clamp(0.0, 1.0)
    }
}

/// A box in pixels of the original image: `(x_min, y_min)` is the top-left corner,
/// `(x_max, y_max)` the bottom-right one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoundingBox {
    /// Left edge.
    pub x_min: f32,
    /// Top edge.
    pub y_min: f32,
    /// Right edge.
    pub x_max: f32,
    /// Bottom edge.
    pub y_max: f32,
}

impl BoundingBox {
    /// Width in pixels.
    pub fn width(&self) -> f32 {
        self.x_max - self.x_min
    }

    /// Height in pixels.
    pub fn height(&self) -> f32 {
        self.y_max - self.y_min
    }

    /// Integer pixel box `(x_min, y_min, x_max, y_max)` truncated as big_vision's
    /// evaluator does (`int(v / 1023 * size)`).
    pub fn to_pixels(&self) -> (u32, u32, u32, u32) {
        (
            self.x_min as u32,
            self.y_min as u32,
            self.x_max as u32,
            self.y_max as u32,
        )
    }
}

/// One object parsed from a detection or segmentation output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParsedObject {
    /// The label the model wrote, trimmed.
    pub label: String,
    /// The box in pixels of the image the output refers to.
    pub bbox: BoundingBox,
    /// Raw `<loc>` values: y_min, x_min, y_max, x_max.
    pub loc: [u16; 4],
    /// The sixteen `<seg>` codes, when the object has them.
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
    /// A `<loc>` value above 1023.
    LocOutOfRange {
        /// The value.
        value: u16,
    },
    /// `y_max <= y_min` or `x_max <= x_min`.
    InvertedBox,
    /// A segmentation object without exactly sixteen `<seg>` codes.
    WrongSegCount {
        /// How many there were.
        found: usize,
    },
    /// A `<seg>` value above 127.
    SegOutOfRange {
        /// The value.
        value: u16,
    },
    /// The location tokens are not followed by a label.
    MissingLabel,
    /// Text that belongs to no object (no `<loc>` tokens before it).
    StrayText,
    /// `<seg>` tokens that belong to no object.
    StraySegs,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::TooFewLocs { found } => write!(f, "{found} <loc> tokens, 4 needed"),
            SkipReason::TooManyLocs { found } => write!(f, "{found} <loc> tokens, 4 expected"),
            SkipReason::LocOutOfRange { value } => write!(f, "<loc{value:04}> is beyond 1023"),
            SkipReason::InvertedBox => write!(f, "box has no area (max <= min)"),
            SkipReason::WrongSegCount { found } => write!(f, "{found} <seg> tokens, 16 needed"),
            SkipReason::SegOutOfRange { value } => write!(f, "<seg{value:03}> is beyond 127"),
            SkipReason::MissingLabel => write!(f, "no label after the location tokens"),
            SkipReason::StrayText => write!(f, "text outside any object"),
            SkipReason::StraySegs => write!(f, "<seg> tokens outside any object"),
        }
    }
}

/// A span of output that did not form a valid object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// The span as the model wrote it.
    pub text: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// Objects found in an output, and what was skipped.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ParseOutput {
    /// Valid objects, in output order.
    pub objects: Vec<ParsedObject>,
    /// Invalid spans, in output order.
    pub skipped: Vec<Skipped>,
}

/// Parse a detection output (4 locs + label per object) for a `width x height` image.
///
/// ```
/// use paligemma::task::parse_detections;
/// let out = parse_detections("<loc0051><loc0309><loc0708><loc0646> shoe", 640, 480);
/// let b = out.objects[0].bbox;
/// assert_eq!(out.objects[0].label, "shoe");
/// assert!((b.x_min - 309.0 / 1023.0 * 640.0).abs() < 1e-3 && (b.y_max - 708.0 / 1023.0 * 480.0).abs() < 1e-3);
/// ```
pub fn parse_detections(text: &str, width: u32, height: u32) -> ParseOutput {
    parse_objects_with(text, width, height, false, Coordinates::BigVision)
}

/// Parse a segmentation output (4 locs + 16 segs + label per object).
pub fn parse_segmentations(text: &str, width: u32, height: u32) -> ParseOutput {
    parse_objects_with(text, width, height, true, Coordinates::BigVision)
}

#[derive(Debug, Clone, PartialEq)]
enum Piece<'a> {
    Loc(u16),
    Seg(u16),
    Text(&'a str),
}

/// `<locDDDD>` / `<segDDD>` at the start of `s`: the piece and its byte length.
fn special_at(s: &str) -> Option<(Piece<'_>, usize)> {
    let number = |prefix: &str, digits: usize| -> Option<u16> {
        let rest = s.strip_prefix(prefix)?;
        let d = rest.get(..digits)?;
        if !d.bytes().all(|b| b.is_ascii_digit()) || rest.as_bytes().get(digits) != Some(&b'>') {
            return None;
        }
        d.parse().ok()
    };
    if let Some(v) = number("<loc", 4) {
        return Some((Piece::Loc(v), 9));
    }
    number("<seg", 3).map(|v| (Piece::Seg(v), 8))
}

fn pieces(text: &str) -> Vec<(Piece<'_>, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(off) = text[i..].find('<') {
        let at = i + off;
        if let Some((piece, len)) = special_at(&text[at..]) {
            if start < at {
                out.push((Piece::Text(&text[start..at]), &text[start..at]));
            }
            out.push((piece, &text[at..at + len]));
            start = at + len;
            i = start;
        } else {
            i = at + 1;
        }
    }
    if start < text.len() {
        out.push((Piece::Text(&text[start..]), &text[start..]));
    }
    out
}

#[derive(Default)]
struct Draft {
    locs: Vec<u16>,
    segs: Vec<u16>,
    label: String,
    raw: String,
}

/// Parse objects with explicit settings: `expect_segments` requires sixteen `<seg>`
/// codes per object; `coords` picks the coordinate convention.
///
/// Rules: an object starts at a run of `<loc>` tokens; its label is the text after its
/// tokens up to ` ; ` or the next `<loc>` (separators are optional, as PaliGemma
/// sometimes omits them). In a detection output, `<seg>` codes are kept when there
/// are exactly sixteen valid ones and ignored otherwise. Objects without a label are
/// skipped ([`SkipReason::MissingLabel`]): that is what a truncated output looks like.
pub fn parse_objects_with(
    text: &str,
    width: u32,
    height: u32,
    expect_segments: bool,
    coords: Coordinates,
) -> ParseOutput {
    let mut out = ParseOutput::default();
    let mut draft: Option<Draft> = None;
    let mut stray = String::new();
    let finish = |d: Draft, out: &mut ParseOutput| {
        finish_object(d, width, height, expect_segments, coords, out)
    };
    for (piece, raw) in pieces(text) {
        match piece {
            Piece::Loc(v) => {
                let continues = draft
                    .as_ref()
                    .is_some_and(|d| d.segs.is_empty() && d.label.trim().is_empty());
                if !continues {
                    flush_stray(&mut stray, &mut out);
                    if let Some(d) = draft.take() {
                        finish(d, &mut out);
                    }
                    draft = Some(Draft::default());
                }
                if let Some(d) = draft.as_mut() {
                    d.locs.push(v);
                    d.raw.push_str(raw);
                }
            }
            Piece::Seg(v) => match draft.as_mut() {
                Some(d) if d.label.trim().is_empty() => {
                    d.segs.push(v);
                    d.raw.push_str(raw);
                }
                _ => {
                    flush_stray(&mut stray, &mut out);
                    out.skipped.push(Skipped {
                        text: raw.to_string(),
                        reason: SkipReason::StraySegs,
                    });
                }
            },
            Piece::Text(t) => {
                let (own, rest) = match t.split_once(';') {
                    Some((own, rest)) => (own, Some(rest)),
                    None => (t, None),
                };
                match draft.as_mut() {
                    Some(d) => {
                        d.label.push_str(own);
                        d.raw.push_str(own);
                    }
                    None => stray.push_str(own),
                }
                if let Some(rest) = rest {
                    // A separator ends the current object; what follows belongs to none
                    // until the next <loc>.
                    if let Some(d) = draft.take() {
                        finish(d, &mut out);
                    }
                    flush_stray(&mut stray, &mut out);
                    for part in rest.split(';') {
                        stray.push_str(part);
                        flush_stray(&mut stray, &mut out);
                    }
                }
            }
        }
    }
    if let Some(d) = draft.take() {
        finish(d, &mut out);
    }
    flush_stray(&mut stray, &mut out);
    out
}

fn flush_stray(stray: &mut String, out: &mut ParseOutput) {
    let t = stray.trim();
    // Whitespace, separators and end-of-text markers are not content.
    if !t.is_empty() && t != "<eos>" {
        out.skipped.push(Skipped {
            text: t.to_string(),
            reason: SkipReason::StrayText,
        });
    }
    stray.clear();
}

fn finish_object(
    d: Draft,
    width: u32,
    height: u32,
    expect_segments: bool,
    coords: Coordinates,
    out: &mut ParseOutput,
) {
    let raw = d.raw.trim().to_string();
    let skip = |reason| Skipped {
        text: raw.clone(),
        reason,
    };
    let reason = if d.locs.len() < 4 {
        Some(SkipReason::TooFewLocs {
            found: d.locs.len(),
        })
    } else if d.locs.len() > 4 {
        Some(SkipReason::TooManyLocs {
            found: d.locs.len(),
        })
    } else if let Some(&value) = d.locs.iter().find(|&&v| v > 1023) {
        Some(SkipReason::LocOutOfRange { value })
    } else if d.locs[2] <= d.locs[0] || d.locs[3] <= d.locs[1] {
        Some(SkipReason::InvertedBox)
    } else if expect_segments && d.segs.len() != 16 {
        Some(SkipReason::WrongSegCount {
            found: d.segs.len(),
        })
    } else if let Some(&value) = d
        .segs
        .iter()
        .find(|&&v| v > 127)
        .filter(|_| expect_segments)
    {
        Some(SkipReason::SegOutOfRange { value })
    } else if d.label.trim().is_empty() {
        Some(SkipReason::MissingLabel)
    } else {
        None
    };
    if let Some(reason) = reason {
        out.skipped.push(skip(reason));
        return;
    }
    let loc = [d.locs[0], d.locs[1], d.locs[2], d.locs[3]];
    let (w, h) = (width as f32, height as f32);
    let seg_codes = (d.segs.len() == 16 && d.segs.iter().all(|&v| v <= 127))
        .then(|| std::array::from_fn(|i| d.segs[i]));
    out.objects.push(ParsedObject {
        label: d.label.trim().to_string(),
        bbox: BoundingBox {
            x_min: coords.fraction(loc[1]) * w,
            y_min: coords.fraction(loc[0]) * h,
            x_max: coords.fraction(loc[3]) * w,
            y_max: coords.fraction(loc[2]) * h,
        },
        loc,
        seg_codes,
    });
}

/// The `<locDDDD>` token for a value.
pub fn loc_token(v: u16) -> String {
    format!("<loc{v:04}>")
}

/// The `<segDDD>` token for a value.
pub fn seg_token(v: u16) -> String {
    format!("<seg{v:03}>")
}

/// Write objects in PaliGemma's output format (the inverse of parsing).
pub fn format_objects(objects: &[ParsedObject]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn locs(v: [u16; 4]) -> String {
        v.iter().map(|&x| loc_token(x)).collect()
    }

    #[test]
    fn prompts() {
        assert_eq!(Task::caption("en").prompt().unwrap(), "caption en");
        assert_eq!(
            Task::Describe { lang: "de".into() }.prompt().unwrap(),
            "describe de"
        );
        assert_eq!(Task::Ocr.prompt().unwrap(), "ocr");
        assert_eq!(
            Task::Question {
                lang: "pt-BR".into(),
                answer: " a cat ".into()
            }
            .prompt()
            .unwrap(),
            "question pt-BR a cat"
        );
        assert_eq!(Task::segment(&[" cat "]).prompt().unwrap(), "segment cat");
        assert_eq!(
            Task::detect(&["red car", "猫"]).prompt().unwrap(),
            "detect red car ; 猫"
        );
    }

    #[test]
    fn invalid_arguments() {
        assert_eq!(
            Task::detect::<&str>(&[]).prompt(),
            Err(TaskError::NoObjects("detect"))
        );
        assert_eq!(
            Task::detect(&["cat", "  "]).prompt(),
            Err(TaskError::EmptyObject { index: 1 })
        );
        assert!(matches!(
            Task::segment(&["a;b"]).prompt(),
            Err(TaskError::ReservedInObject { .. })
        ));
        assert!(matches!(
            Task::detect(&["a\nb"]).prompt(),
            Err(TaskError::ReservedInObject { .. })
        ));
        assert!(matches!(
            Task::detect(&["<loc0001>"]).prompt(),
            Err(TaskError::ReservedInObject { .. })
        ));
        assert_eq!(
            Task::answer("en", " ").prompt(),
            Err(TaskError::EmptyText("question"))
        );
        assert_eq!(
            Task::answer("en", "a\nb").prompt(),
            Err(TaskError::Newline("question"))
        );
        for bad in ["", "EN", "english", "e", "en-", "en_US", "en-toolong"] {
            assert!(
                matches!(Task::caption(bad).prompt(), Err(TaskError::Language(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn spec_example_on_640x480() {
        let out = parse_detections("<loc0051><loc0309><loc0708><loc0646> shoe", 640, 480);
        assert_eq!(out.skipped, vec![]);
        let o = &out.objects[0];
        assert_eq!((o.label.as_str(), o.loc), ("shoe", [51, 309, 708, 646]));
        let close = |a: f32, b: f32| (a - b).abs() < 1e-3;
        assert!(close(o.bbox.x_min, 309.0 / 1023.0 * 640.0));
        assert!(close(o.bbox.y_min, 51.0 / 1023.0 * 480.0));
        assert!(close(o.bbox.x_max, 646.0 / 1023.0 * 640.0));
        assert!(close(o.bbox.y_max, 708.0 / 1023.0 * 480.0));
        let demo = parse_objects_with(
            "<loc0051><loc0309><loc0708><loc0646> shoe",
            640,
            480,
            false,
            Coordinates::Demo,
        );
        assert!(close(demo.objects[0].bbox.x_min, 309.0 / 1024.0 * 640.0));
    }

    #[test]
    fn several_objects_spaces_unicode_and_missing_separators() {
        let text = format!(
            "{} red double-decker bus ; {} 猫{} dog",
            locs([1, 2, 500, 600]),
            locs([10, 20, 30, 40]),
            locs([100, 100, 1023, 1023])
        );
        let out = parse_detections(&text, 100, 50);
        let labels: Vec<_> = out.objects.iter().map(|o| o.label.as_str()).collect();
        assert_eq!(labels, ["red double-decker bus", "猫", "dog"]);
        assert_eq!(out.skipped, vec![]);
        let b = out.objects[2].bbox;
        assert_eq!((b.x_max, b.y_max), (100.0, 50.0));
    }

    #[test]
    fn malformed_outputs_are_skipped_with_reasons() {
        let reasons = |t: &str, seg: bool| -> Vec<SkipReason> {
            parse_objects_with(t, 10, 10, seg, Coordinates::BigVision)
                .skipped
                .into_iter()
                .map(|s| s.reason)
                .collect()
        };
        assert_eq!(
            reasons("<loc0001><loc0002><loc0003>", false),
            [SkipReason::TooFewLocs { found: 3 }]
        );
        assert_eq!(
            reasons(&format!("{}<loc0009> x", locs([1, 2, 3, 4])), false),
            [SkipReason::TooManyLocs { found: 5 }]
        );
        assert_eq!(
            reasons(&format!("{} x", locs([1, 2, 3000, 4])), false),
            [SkipReason::LocOutOfRange { value: 3000 }]
        );
        assert_eq!(
            reasons(&format!("{} x", locs([5, 2, 5, 4])), false),
            [SkipReason::InvertedBox]
        );
        assert_eq!(
            reasons(&format!("{}<seg001> x", locs([1, 2, 3, 4])), true),
            [SkipReason::WrongSegCount { found: 1 }]
        );
        let segs: String = (0..16)
            .map(|i| seg_token(if i == 3 { 200 } else { i }))
            .collect();
        assert_eq!(
            reasons(&format!("{}{segs} x", locs([1, 2, 3, 4])), true),
            [SkipReason::SegOutOfRange { value: 200 }]
        );
        assert_eq!(
            reasons(&locs([1, 2, 3, 4]), false),
            [SkipReason::MissingLabel]
        );
        assert_eq!(
            reasons("hello <seg001>", false),
            [SkipReason::StrayText, SkipReason::StraySegs]
        );
        assert_eq!(reasons("", false), []);
        assert_eq!(reasons("  <eos>", false), []);
        assert_eq!(
            reasons("<loc12> <loc00001>", false),
            [SkipReason::StrayText]
        );
    }

    #[test]
    fn segmentation_and_round_trip() {
        let segs: String = (0..16).map(|i| seg_token(i * 8)).collect();
        let text = format!(
            "{}{segs} cat ; {}{segs} dog",
            locs([0, 0, 511, 1023]),
            locs([512, 0, 1023, 1023])
        );
        let out = parse_segmentations(&text, 64, 32);
        assert_eq!(out.objects.len(), 2);
        assert_eq!(out.objects[1].seg_codes.unwrap()[15], 120);
        assert_eq!(format_objects(&out.objects), text);
        // The same text as a detection keeps the boxes and the codes.
        assert_eq!(parse_detections(&text, 64, 32).objects, out.objects);
    }
}
