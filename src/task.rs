//! Task prompts and parsing of PaliGemma's structured outputs.
//!
//! # Prompts
//!
//! The mix checkpoints were trained on fixed prompt templates; [`Task::prompt`] builds
//! them and rejects arguments that would change their structure. The processor appends
//! the final `"\n"`.
//!
//! | task | prompt |
//! |---|---|
//! | [`Task::Caption`] | `caption {lang}` |
//! | [`Task::Describe`] | `describe {lang}` |
//! | [`Task::Ocr`] | `ocr` |
//! | [`Task::Answer`] | `answer {lang} {question}` |
//! | [`Task::Question`] | `question {lang} {answer}` |
//! | [`Task::Detect`] | `detect {object} ; {object}` |
//! | [`Task::Segment`] | `segment {object} ; {object}` |
//!
//! # Outputs
//!
//! Detection and segmentation answers are token sequences: per object four
//! `<locDDDD>` tokens (y_min, x_min, y_max, x_max on a 0..=1023 grid), for segmentation
//! then sixteen `<segDDD>` codes (0..=127, the input of the mask decoder), then
//! ` label`; objects are separated by ` ; `. For example
//! `<loc0051><loc0309><loc0708><loc0646> shoe`.
//!
//! The parser ([`parse_detections`], [`parse_segmentations`], [`parse_objects_with`])
//! is a pure function that never panics and never invents an object: everything that
//! does not form a valid object is reported in [`ParseOutput::skipped`] with a
//! [`SkipReason`].
//!
//! Coordinates are decoded as big_vision's evaluator does, `value / 1023` clipped to
//! [0, 1] and scaled by the image's width or height ([`Coordinates::BigVision`]); the
//! Hugging Face demo spaces divide by 1024 instead ([`Coordinates::Demo`]). The two
//! differ by under 0.1%.

use std::fmt;

use serde::Serialize;

/// Invalid task arguments, reported by [`Task::prompt`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
        /// The offending name, trimmed.
        name: String,
        /// What it contains.
        what: &'static str,
    },
    /// A question or answer text is empty after trimming.
    #[error("the {0} is empty")]
    EmptyText(&'static str),
    /// Text contains a newline, which ends a PaliGemma prompt.
    #[error("the {0} contains a newline; PaliGemma prompts are one line")]
    Newline(&'static str),
    /// Text contains a special token of the PaliGemma vocabulary, which the tokenizer
    /// would turn into a control token (`<image>`, `<eos>`, `<loc0001>`, ...).
    #[error(
        "the {field} contains {token:?}, a special token of the PaliGemma vocabulary that would change the prompt's structure"
    )]
    SpecialToken {
        /// Which argument: `"question"` or `"answer"`.
        field: &'static str,
        /// The token as written.
        token: String,
    },
    /// The language code is not of the form the checkpoints were trained with.
    #[error(
        "language code {0:?} is not valid: use a lowercase ISO 639 code such as \"en\", \"de\" or \"zh\", optionally with a region or script such as \"pt-BR\" or \"sr-Latn\""
    )]
    Language(String),
}

/// A PaliGemma task: builds the exact prompt the mix checkpoints were trained on.
///
/// Construct the variants directly or with the convenience constructors, then call
/// [`Task::prompt`], which validates the arguments.
///
/// ```
/// use paligemma::task::Task;
/// assert_eq!(Task::caption("en").prompt().unwrap(), "caption en");
/// assert_eq!(Task::detect(&["cat", " red car "]).prompt().unwrap(), "detect cat ; red car");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// `caption {lang}`: a short caption.
    Caption {
        /// Output language code (see [`Task::prompt`] for the accepted form).
        lang: String,
    },
    /// `describe {lang}`: a longer description.
    Describe {
        /// Output language code.
        lang: String,
    },
    /// `ocr`: the text in the image.
    Ocr,
    /// `answer {lang} {question}`: visual question answering.
    Answer {
        /// Language code of question and answer.
        lang: String,
        /// The question; one line, trimmed.
        question: String,
    },
    /// `question {lang} {answer}`: generate a question that has the given answer.
    Question {
        /// Language code.
        lang: String,
        /// The answer; one line, trimmed.
        answer: String,
    },
    /// `detect a ; b`: boxes for each named object class.
    Detect {
        /// Object classes; each is trimmed and must be non-empty.
        objects: Vec<String>,
    },
    /// `segment a ; b`: boxes and masks for each named object class. PaliGemma 1 was
    /// trained with one object per prompt; PaliGemma 2's documentation also lists
    /// several.
    Segment {
        /// Object classes; each is trimmed and must be non-empty.
        objects: Vec<String>,
    },
}

impl Task {
    /// [`Task::Caption`]: `caption {lang}`.
    pub fn caption(lang: &str) -> Self {
        Task::Caption { lang: lang.into() }
    }

    /// [`Task::Describe`]: `describe {lang}`.
    pub fn describe(lang: &str) -> Self {
        Task::Describe { lang: lang.into() }
    }

    /// [`Task::Ocr`]: `ocr`.
    pub fn ocr() -> Self {
        Task::Ocr
    }

    /// [`Task::Answer`]: `answer {lang} {question}`.
    pub fn answer(lang: &str, question: &str) -> Self {
        Task::Answer {
            lang: lang.into(),
            question: question.into(),
        }
    }

    /// [`Task::Question`]: `question {lang} {answer}`.
    pub fn question(lang: &str, answer: &str) -> Self {
        Task::Question {
            lang: lang.into(),
            answer: answer.into(),
        }
    }

    /// [`Task::Detect`]: `detect a ; b ; ...`.
    pub fn detect<S: AsRef<str>>(objects: &[S]) -> Self {
        Task::Detect {
            objects: objects.iter().map(|s| s.as_ref().to_string()).collect(),
        }
    }

    /// [`Task::Segment`]: `segment a ; b ; ...`.
    pub fn segment<S: AsRef<str>>(objects: &[S]) -> Self {
        Task::Segment {
            objects: objects.iter().map(|s| s.as_ref().to_string()).collect(),
        }
    }

    /// Validate the arguments and build the prompt text, without the trailing newline
    /// (the processor adds it).
    ///
    /// Rules:
    /// - Language codes are two or three lowercase ASCII letters (ISO 639-1 or 639-2/3,
    ///   e.g. `en`, `de`, `fil`), optionally followed by `-` and one subtag of two to
    ///   four ASCII letters or digits for a region or script (`pt-BR`, `zh-CN`,
    ///   `sr-Latn`). The code is used exactly as given. The mix checkpoints were
    ///   trained on captions and answers in about 35 languages (the languages of the
    ///   COCO-35L captions: English and 34 translations, including for example `de`,
    ///   `es`, `fr`, `it`, `ja`, `ko`, `nl`, `pl`, `pt`, `ru`, `tr`, `uk`, `vi`, `zh`);
    ///   other well-formed codes are accepted and simply work worse.
    /// - Questions and answers are trimmed, must be non-empty, may not contain a
    ///   newline (`\n` or `\r`), and may not contain special tokens of the vocabulary
    ///   (`<image>`, `<bos>`, `<eos>`, `<pad>`, `<unk>`, `<mask>`, `<start_of_turn>`,
    ///   `<end_of_turn>`, `<locN>`, `<segN>`, `<unusedN>`), which the tokenizer would
    ///   not treat as text.
    /// - Object lists must be non-empty; each name is trimmed, must be non-empty and
    ///   may not contain `;` (the separator), a newline, `<` or `>`.
    ///
    /// ```
    /// use paligemma::task::{Task, TaskError};
    /// assert_eq!(Task::detect(&["cat", "dog"]).prompt().unwrap(), "detect cat ; dog");
    /// assert_eq!(Task::answer("en", "what is this?").prompt().unwrap(), "answer en what is this?");
    /// assert!(matches!(Task::detect(&["cat;dog"]).prompt(), Err(TaskError::ReservedInObject { .. })));
    /// assert!(matches!(Task::caption("English").prompt(), Err(TaskError::Language(_))));
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

/// Check a language code; see [`Task::prompt`] for the rule.
fn language(code: &str) -> Result<&str, TaskError> {
    let (base, subtag) = match code.split_once('-') {
        Some((base, subtag)) => (base, Some(subtag)),
        None => (code, None),
    };
    let base_ok = (2..=3).contains(&base.len()) && base.bytes().all(|b| b.is_ascii_lowercase());
    let subtag_ok = subtag
        .is_none_or(|s| (2..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    if base_ok && subtag_ok {
        Ok(code)
    } else {
        Err(TaskError::Language(code.to_string()))
    }
}

/// Check a free-text argument (question or answer) and return it trimmed.
fn text<'a>(t: &'a str, field: &'static str) -> Result<&'a str, TaskError> {
    let t = t.trim();
    if t.is_empty() {
        return Err(TaskError::EmptyText(field));
    }
    if t.contains(['\n', '\r']) {
        return Err(TaskError::Newline(field));
    }
    if let Some(token) = find_special_token(t) {
        return Err(TaskError::SpecialToken {
            field,
            token: token.to_string(),
        });
    }
    Ok(t)
}

/// The first special token of the PaliGemma vocabulary written in `s`, if any.
fn find_special_token(s: &str) -> Option<&str> {
    const NAMED: [&str; 8] = [
        "<image>",
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
        "<mask>",
        "<start_of_turn>",
        "<end_of_turn>",
    ];
    const NUMBERED: [&str; 3] = ["<loc", "<seg", "<unused"];
    for (at, _) in s.match_indices('<') {
        let rest = s.get(at..).unwrap_or("");
        if let Some(name) = NAMED.iter().find(|n| rest.starts_with(**n)) {
            return rest.get(..name.len());
        }
        for prefix in NUMBERED {
            let Some(after) = rest.strip_prefix(prefix) else {
                continue;
            };
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && after.as_bytes().get(digits) == Some(&b'>') {
                return rest.get(..prefix.len() + digits + 1);
            }
        }
    }
    None
}

/// Check an object list and join it with ` ; `.
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
        } else if name.contains(['<', '>']) {
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

/// Largest valid `<loc>` value.
pub const MAX_LOC: u16 = 1023;
/// Largest valid `<seg>` value (the mask decoder's codebook has 128 entries).
pub const MAX_SEG: u16 = 127;

/// How `<locDDDD>` values map to pixel coordinates.
///
/// Either way the parser returns `f32` pixel coordinates without rounding; see
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
    fn to_pixel(self, value: u16, size: u32) -> f32 {
        let divisor = match self {
            Coordinates::BigVision => 1023.0,
            Coordinates::Demo => 1024.0,
        };
        ((f64::from(value) / divisor).clamp(0.0, 1.0) * f64::from(size)) as f32
    }
}

/// A box in pixels of the original image: `(x_min, y_min)` is the top-left corner,
/// `(x_max, y_max)` the bottom-right one (exclusive).
///
/// Boxes returned by the parser satisfy `0 <= x_min < x_max <= width` and
/// `0 <= y_min < y_max <= height` for a non-empty image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoundingBox {
    /// Left edge.
    pub x_min: f32,
    /// Top edge.
    pub y_min: f32,
    /// Right edge (exclusive).
    pub x_max: f32,
    /// Bottom edge (exclusive).
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

/// One object parsed from a detection or segmentation output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParsedObject {
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
    pub objects: Vec<ParsedObject>,
    /// Invalid spans, in output order.
    pub skipped: Vec<Skipped>,
}

/// Parse a detection output (four `<loc>` tokens and a label per object) for a
/// `width` x `height` image, with big_vision's coordinates.
///
/// ```
/// use paligemma::task::parse_detections;
/// let out = parse_detections("<loc0051><loc0309><loc0708><loc0646> shoe", 640, 480);
/// let shoe = &out.objects[0];
/// assert_eq!(shoe.label, "shoe");
/// assert!((shoe.bbox.x_min - 309.0 / 1023.0 * 640.0).abs() < 1e-3);
/// assert!((shoe.bbox.y_max - 708.0 / 1023.0 * 480.0).abs() < 1e-3);
/// assert!(out.skipped.is_empty());
/// ```
pub fn parse_detections(text: &str, width: u32, height: u32) -> ParseOutput {
    parse_objects_with(text, width, height, false, Coordinates::BigVision)
}

/// Parse a segmentation output (four `<loc>` tokens, sixteen `<seg>` tokens and a label
/// per object) for a `width` x `height` image, with big_vision's coordinates.
pub fn parse_segmentations(text: &str, width: u32, height: u32) -> ParseOutput {
    parse_objects_with(text, width, height, true, Coordinates::BigVision)
}

/// Parse objects with explicit settings: `expect_segments` requires sixteen `<seg>`
/// codes per object; `coords` picks the coordinate convention.
///
/// How the text is cut into objects:
/// - The tokens delimit objects: an object starts at a run of `<loc>` tokens, may
///   continue with `<seg>` tokens, and its label is the text after them up to the next
///   separator, `<loc>` or `<seg>` token. Whitespace between tokens is ignored.
/// - Separators are `;`, a newline and the control tokens `<eos>`, `<bos>` and
///   `<pad>`. They are optional between objects: PaliGemma sometimes writes
///   `<loc…>×4 cat<loc…>×4 dog`, which gives two objects.
/// - Labels are trimmed; an object without a label is skipped
///   ([`SkipReason::MissingLabel`]), since a truncated output looks like that and an
///   unlabelled box is ambiguous when several classes were asked for.
/// - A run of more than four `<loc>` tokens is one skipped span
///   ([`SkipReason::TooManyLocs`]), not split into guessed objects.
/// - Tokens must have exactly four (`<loc>`) or three (`<seg>`) digits, as in the
///   vocabulary; other digit counts make the object invalid
///   ([`SkipReason::MalformedToken`]). `<loc`/`<seg` without digits and a closing
///   `>` is ordinary text.
/// - Validity follows big_vision's evaluator: locs in 0..=1023, y_max > y_min and
///   x_max > x_min; for segmentation exactly sixteen codes in 0..=127.
/// - In a detection parse `<seg>` codes before the label are not validated: the
///   object keeps its box and gets `seg_codes` only if there are exactly sixteen
///   valid ones. `<seg>` tokens after a label, or with no object, are
///   [`SkipReason::StraySegs`].
/// - Text that belongs to no object is [`SkipReason::StrayText`]; whitespace and
///   separators alone are not reported. An empty string gives nothing.
///
/// Coordinates: see [`Coordinates`]. For an image with zero width or height every box
/// is degenerate along that axis (all its coordinates are 0).
pub fn parse_objects_with(
    text: &str,
    width: u32,
    height: u32,
    expect_segments: bool,
    coords: Coordinates,
) -> ParseOutput {
    let mut parser = Parser {
        text,
        width,
        height,
        expect_segments,
        coords,
        out: ParseOutput::default(),
        draft: None,
        stray: None,
    };
    for (tok, start, end) in lex(text) {
        parser.push(tok, start, end);
    }
    parser.finish_draft();
    parser.flush_stray();
    parser.out
}

/// A lexical piece of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// `<locDDDD>`.
    Loc(u16),
    /// `<segDDD>`.
    Seg(u16),
    /// `<loc` + digits + `>` with a digit count other than four.
    BadLoc,
    /// `<seg` + digits + `>` with a digit count other than three.
    BadSeg,
    /// `;`, `\n`, `<eos>`, `<bos>` or `<pad>`.
    Sep,
    /// Anything else; `blank` when it is only whitespace.
    Text { blank: bool },
}

/// Control tokens that end an object like a `;`.
const CONTROL: [&[u8]; 3] = [b"<eos>", b"<bos>", b"<pad>"];

/// The token starting at the `<` that begins `s`, and its length in bytes.
fn special_at(s: &[u8]) -> Option<(Tok, usize)> {
    if let Some(control) = CONTROL.iter().find(|c| s.starts_with(c)) {
        return Some((Tok::Sep, control.len()));
    }
    let (is_loc, rest) = if let Some(rest) = s.strip_prefix(b"<loc") {
        (true, rest)
    } else {
        (false, s.strip_prefix(b"<seg")?)
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits) != Some(&b'>') {
        return None;
    }
    let len = 4 + digits + 1;
    let want = if is_loc { 4 } else { 3 };
    let tok = if digits == want {
        // At most four digits: fits in a u16.
        let value = rest
            .iter()
            .take(digits)
            .fold(0u16, |v, d| v * 10 + u16::from(d - b'0'));
        if is_loc {
            Tok::Loc(value)
        } else {
            Tok::Seg(value)
        }
    } else if is_loc {
        Tok::BadLoc
    } else {
        Tok::BadSeg
    };
    Some((tok, len))
}

/// Cut `text` into tokens, separators and text runs, as `(piece, start, end)` byte
/// ranges. Every cut is next to an ASCII byte, so every range is a `str` boundary.
fn lex(text: &str) -> Vec<(Tok, usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    let push_text = |out: &mut Vec<(Tok, usize, usize)>, start: usize, end: usize| {
        if start < end {
            let blank = text.get(start..end).is_none_or(|t| t.trim().is_empty());
            out.push((Tok::Text { blank }, start, end));
        }
    };
    while let Some(&b) = bytes.get(i) {
        let special = match b {
            b';' | b'\n' => Some((Tok::Sep, 1)),
            b'<' => bytes.get(i..).and_then(special_at),
            _ => None,
        };
        match special {
            Some((tok, len)) => {
                push_text(&mut out, text_start, i);
                out.push((tok, i, i + len));
                i += len;
                text_start = i;
            }
            None => i += 1,
        }
    }
    push_text(&mut out, text_start, bytes.len());
    out
}

/// Where an object under construction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading `<loc>` tokens.
    Locs,
    /// Reading `<seg>` tokens.
    Segs,
    /// Reading the label.
    Label,
}

/// An object under construction, as byte ranges into the text.
struct Draft {
    start: usize,
    end: usize,
    phase: Phase,
    locs: Vec<u16>,
    segs: Vec<u16>,
    bad_loc: Option<(usize, usize)>,
    bad_seg: Option<(usize, usize)>,
    label: Option<(usize, usize)>,
}

/// A run of text or `<seg>` tokens outside any object.
struct Stray {
    start: usize,
    end: usize,
    reason: SkipReason,
}

struct Parser<'a> {
    text: &'a str,
    width: u32,
    height: u32,
    expect_segments: bool,
    coords: Coordinates,
    out: ParseOutput,
    draft: Option<Draft>,
    stray: Option<Stray>,
}

impl Parser<'_> {
    fn span(&self, start: usize, end: usize) -> &str {
        self.text.get(start..end).unwrap_or("").trim()
    }

    fn push(&mut self, tok: Tok, start: usize, end: usize) {
        match tok {
            Tok::Loc(_) | Tok::BadLoc => {
                if !self.draft.as_ref().is_some_and(|d| d.phase == Phase::Locs) {
                    self.finish_draft();
                    self.flush_stray();
                    self.draft = Some(Draft {
                        start,
                        end,
                        phase: Phase::Locs,
                        locs: Vec::with_capacity(4),
                        segs: Vec::new(),
                        bad_loc: None,
                        bad_seg: None,
                        label: None,
                    });
                }
                if let Some(d) = self.draft.as_mut() {
                    match tok {
                        Tok::Loc(v) => d.locs.push(v),
                        _ => {
                            d.locs.push(u16::MAX);
                            d.bad_loc.get_or_insert((start, end));
                        }
                    }
                    d.end = end;
                }
            }
            Tok::Seg(_) | Tok::BadSeg => {
                match self.draft.as_mut() {
                    Some(d) if d.phase != Phase::Label => {
                        match tok {
                            Tok::Seg(v) => d.segs.push(v),
                            _ => {
                                d.segs.push(u16::MAX);
                                d.bad_seg.get_or_insert((start, end));
                            }
                        }
                        d.phase = Phase::Segs;
                        d.end = end;
                    }
                    _ => {
                        // After a label, a <seg> ends the object and belongs to none.
                        self.finish_draft();
                        self.stray(SkipReason::StraySegs, start, end);
                    }
                }
            }
            Tok::Text { blank } => match (self.draft.as_mut(), &mut self.stray) {
                (Some(d), _) => {
                    if !blank && d.phase != Phase::Label {
                        d.phase = Phase::Label;
                        d.label = Some((start, end));
                    } else if let Some(label) = d.label.as_mut() {
                        label.1 = end;
                    }
                    d.end = end;
                }
                (None, Some(stray)) if blank => stray.end = end,
                (None, _) if blank => {}
                (None, _) => self.stray(SkipReason::StrayText, start, end),
            },
            Tok::Sep => {
                self.finish_draft();
                self.flush_stray();
            }
        }
    }

    /// Extend the current stray run if it has the same reason, else start a new one.
    fn stray(&mut self, reason: SkipReason, start: usize, end: usize) {
        match self.stray.as_mut() {
            Some(s) if s.reason == reason => s.end = end,
            _ => {
                self.flush_stray();
                self.stray = Some(Stray { start, end, reason });
            }
        }
    }

    fn flush_stray(&mut self) {
        if let Some(s) = self.stray.take() {
            let text = self.span(s.start, s.end);
            if !text.is_empty() {
                let text = text.to_string();
                self.out.skipped.push(Skipped {
                    text,
                    reason: s.reason,
                });
            }
        }
    }

    fn finish_draft(&mut self) {
        let Some(d) = self.draft.take() else {
            return;
        };
        match self.validate(&d) {
            Ok(object) => self.out.objects.push(object),
            Err(reason) => {
                let text = self.span(d.start, d.end).to_string();
                self.out.skipped.push(Skipped { text, reason });
            }
        }
    }

    fn validate(&self, d: &Draft) -> Result<ParsedObject, SkipReason> {
        let malformed = |range: (usize, usize)| SkipReason::MalformedToken {
            token: self.span(range.0, range.1).to_string(),
        };
        if let Some(range) = d.bad_loc {
            return Err(malformed(range));
        }
        let loc: [u16; 4] = match <[u16; 4]>::try_from(d.locs.as_slice()) {
            Ok(loc) => loc,
            Err(_) if d.locs.len() < 4 => {
                return Err(SkipReason::TooFewLocs {
                    found: d.locs.len(),
                });
            }
            Err(_) => {
                return Err(SkipReason::TooManyLocs {
                    found: d.locs.len(),
                });
            }
        };
        if let Some(&value) = loc.iter().find(|&&v| v > MAX_LOC) {
            return Err(SkipReason::LocOutOfRange { value });
        }
        let [y_min, x_min, y_max, x_max] = loc;
        if y_max <= y_min || x_max <= x_min {
            return Err(SkipReason::InvertedBox);
        }
        let codes = <[u16; 16]>::try_from(d.segs.as_slice()).ok();
        let seg_codes = if self.expect_segments {
            if let Some(range) = d.bad_seg {
                return Err(malformed(range));
            }
            let Some(codes) = codes else {
                return Err(SkipReason::WrongSegCount {
                    found: d.segs.len(),
                });
            };
            if let Some(&value) = codes.iter().find(|&&v| v > MAX_SEG) {
                return Err(SkipReason::SegOutOfRange { value });
            }
            Some(codes)
        } else {
            codes.filter(|c| c.iter().all(|&v| v <= MAX_SEG))
        };
        let label = d.label.map_or("", |(start, end)| self.span(start, end));
        if label.is_empty() {
            return Err(SkipReason::MissingLabel);
        }
        let (w, h) = (self.width, self.height);
        Ok(ParsedObject {
            label: label.to_string(),
            bbox: BoundingBox {
                x_min: self.coords.to_pixel(x_min, w),
                y_min: self.coords.to_pixel(y_min, h),
                x_max: self.coords.to_pixel(x_max, w),
                y_max: self.coords.to_pixel(y_max, h),
            },
            loc,
            seg_codes,
        })
    }
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

    fn segs(f: impl Fn(u16) -> u16) -> String {
        (0..16).map(|i| seg_token(f(i))).collect()
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-3
    }

    fn reasons(text: &str, segments: bool) -> Vec<SkipReason> {
        parse_objects_with(text, 10, 10, segments, Coordinates::BigVision)
            .skipped
            .into_iter()
            .map(|s| s.reason)
            .collect()
    }

    fn labels(out: &ParseOutput) -> Vec<&str> {
        out.objects.iter().map(|o| o.label.as_str()).collect()
    }

    #[test]
    fn each_task_builds_its_trained_prompt() {
        let cases = [
            (Task::caption("en"), "caption en"),
            (Task::describe("de"), "describe de"),
            (Task::ocr(), "ocr"),
            (Task::Ocr, "ocr"),
            (
                Task::answer("en", "  what is on the table? "),
                "answer en what is on the table?",
            ),
            (Task::question("pt-BR", " a cat "), "question pt-BR a cat"),
            (Task::detect(&["cat"]), "detect cat"),
            (
                Task::detect(&["red car", " 猫 ", "double-decker bus"]),
                "detect red car ; 猫 ; double-decker bus",
            ),
            (Task::segment(&[" cat "]), "segment cat"),
            (Task::segment(&["cat", "dog"]), "segment cat ; dog"),
            (
                Task::Caption {
                    lang: "zh-CN".into(),
                },
                "caption zh-CN",
            ),
            (Task::answer("fr", "a < b > c?"), "answer fr a < b > c?"),
        ];
        for (task, want) in cases {
            assert_eq!(task.prompt().as_deref(), Ok(want), "{task:?}");
        }
    }

    #[test]
    fn language_codes() {
        for good in [
            "en", "de", "fil", "zh", "zh-CN", "pt-BR", "sr-Latn", "zh-Hant", "es-419",
        ] {
            assert_eq!(Task::caption(good).prompt(), Ok(format!("caption {good}")));
        }
        for bad in [
            "",
            "EN",
            "En",
            "english",
            "e",
            "en-",
            "-en",
            "en_US",
            "en-toolong",
            "en-US-x",
            " en",
            "en ",
            "ü",
            "zh-C",
            "de\n",
        ] {
            assert_eq!(
                Task::caption(bad).prompt(),
                Err(TaskError::Language(bad.to_string())),
                "{bad:?}"
            );
            assert!(matches!(
                Task::answer(bad, "why?").prompt(),
                Err(TaskError::Language(_))
            ));
        }
    }

    #[test]
    fn invalid_arguments_are_rejected_with_reasons() {
        assert_eq!(
            Task::detect::<&str>(&[]).prompt(),
            Err(TaskError::NoObjects("detect"))
        );
        assert_eq!(
            Task::segment::<&str>(&[]).prompt(),
            Err(TaskError::NoObjects("segment"))
        );
        assert_eq!(
            Task::detect(&["cat", "  "]).prompt(),
            Err(TaskError::EmptyObject { index: 1 })
        );
        for (name, what) in [
            ("a;b", "';'"),
            ("a\nb", "newline"),
            ("a\rb", "newline"),
            ("<loc0001>", "'<'"),
            ("a > b", "'<'"),
        ] {
            match Task::segment(&[name]).prompt() {
                Err(e @ TaskError::ReservedInObject { .. }) => {
                    assert!(e.to_string().contains(what), "{e}")
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        assert_eq!(
            Task::answer("en", " \t").prompt(),
            Err(TaskError::EmptyText("question"))
        );
        assert_eq!(
            Task::question("en", "").prompt(),
            Err(TaskError::EmptyText("answer"))
        );
        assert_eq!(
            Task::answer("en", "a\nb").prompt(),
            Err(TaskError::Newline("question"))
        );
        assert_eq!(
            Task::question("en", "a\r\nb").prompt(),
            Err(TaskError::Newline("answer"))
        );
        for (q, token) in [
            ("what is <image> here", "<image>"),
            ("stop<eos>", "<eos>"),
            ("where is <loc0001>?", "<loc0001>"),
            ("x <seg12> y", "<seg12>"),
            ("<unused7>", "<unused7>"),
            ("<start_of_turn>user", "<start_of_turn>"),
        ] {
            assert_eq!(
                Task::answer("en", q).prompt(),
                Err(TaskError::SpecialToken {
                    field: "question",
                    token: token.into()
                }),
                "{q:?}"
            );
        }
        // Angle brackets that are not tokens are text.
        assert!(
            Task::answer("en", "is <b> bold? <loc> <seg>")
                .prompt()
                .is_ok()
        );
    }

    #[test]
    fn error_messages_are_descriptive() {
        let messages = [
            TaskError::NoObjects("detect").to_string(),
            TaskError::EmptyObject { index: 2 }.to_string(),
            TaskError::EmptyText("question").to_string(),
            TaskError::Newline("answer").to_string(),
            TaskError::Language("EN".into()).to_string(),
            TaskError::SpecialToken {
                field: "question",
                token: "<image>".into(),
            }
            .to_string(),
        ];
        assert_eq!(
            messages[0],
            "no objects given: name at least one object to detect"
        );
        assert_eq!(messages[1], "object name 2 is empty");
        assert!(messages[4].contains("\"EN\"") && messages[4].contains("pt-BR"));
        assert!(messages[5].contains("\"<image>\""));
    }

    #[test]
    fn spec_example_on_640x480() {
        let text = "<loc0051><loc0309><loc0708><loc0646> shoe";
        let out = parse_detections(text, 640, 480);
        assert_eq!(out.skipped, []);
        let [o] = out.objects.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(
            (o.label.as_str(), o.loc, o.seg_codes),
            ("shoe", [51, 309, 708, 646], None)
        );
        assert!(close(o.bbox.x_min, 309.0 / 1023.0 * 640.0));
        assert!(close(o.bbox.y_min, 51.0 / 1023.0 * 480.0));
        assert!(close(o.bbox.x_max, 646.0 / 1023.0 * 640.0));
        assert!(close(o.bbox.y_max, 708.0 / 1023.0 * 480.0));
        assert_eq!(o.bbox.to_pixels(), (193, 23, 404, 332));
        assert!(close(o.bbox.width(), 337.0 / 1023.0 * 640.0));
        assert!(close(o.bbox.height(), 657.0 / 1023.0 * 480.0));

        let demo = parse_objects_with(text, 640, 480, false, Coordinates::Demo);
        let b = demo.objects[0].bbox;
        assert!(close(b.x_min, 309.0 / 1024.0 * 640.0)); // 193.125
        assert!(close(b.y_max, 708.0 / 1024.0 * 480.0)); // 331.875
        assert_eq!(b.to_pixels_rounded(), (193, 24, 404, 332));
        assert_eq!(demo.objects[0].loc, o.loc);
    }

    #[test]
    fn non_square_images_scale_each_axis() {
        let text = format!("{} tall thing", locs([0, 0, 1023, 511]));
        let b = parse_detections(&text, 100, 3000).objects[0].bbox;
        assert_eq!((b.x_min, b.y_min, b.y_max), (0.0, 0.0, 3000.0));
        assert!(close(b.x_max, 511.0 / 1023.0 * 100.0));
        let b = parse_detections(&text, 3000, 100).objects[0].bbox;
        assert_eq!(b.y_max, 100.0);
        assert!(close(b.x_max, 511.0 / 1023.0 * 3000.0));
    }

    #[test]
    fn several_objects_spaces_unicode_and_separators() {
        let text = format!(
            "{} red double-decker bus ; {} 猫 ;{}  chat noir  ",
            locs([1, 2, 500, 600]),
            locs([10, 20, 30, 40]),
            locs([100, 100, 1023, 1023])
        );
        let out = parse_detections(&text, 100, 50);
        assert_eq!(labels(&out), ["red double-decker bus", "猫", "chat noir"]);
        assert_eq!(out.skipped, []);
        let b = out.objects[2].bbox;
        assert_eq!((b.x_max, b.y_max), (100.0, 50.0));
        assert_eq!(out.objects[1].loc, [10, 20, 30, 40]);
    }

    #[test]
    fn missing_separators_newlines_and_control_tokens() {
        // PaliGemma sometimes omits " ; ": the next <loc> run starts a new object.
        let text = format!("{} cat{} dog", locs([1, 2, 3, 4]), locs([5, 6, 7, 8]));
        let out = parse_detections(&text, 10, 10);
        assert_eq!(labels(&out), ["cat", "dog"]);
        assert_eq!(out.skipped, []);
        // Newlines and control tokens separate too and are not reported.
        let text = format!(
            "{} cat\n{} dog<eos><pad><pad>",
            locs([1, 2, 3, 4]),
            locs([5, 6, 7, 8])
        );
        let out = parse_detections(&text, 10, 10);
        assert_eq!(labels(&out), ["cat", "dog"]);
        assert_eq!(out.skipped, []);
        let text = format!("{} cat\nthe end", locs([1, 2, 3, 4]));
        let out = parse_detections(&text, 10, 10);
        assert_eq!(labels(&out), ["cat"]);
        assert_eq!(
            out.skipped,
            [Skipped {
                text: "the end".into(),
                reason: SkipReason::StrayText
            }]
        );
        // Whitespace between tokens is ignored.
        let text = "<loc0001> <loc0002>\t<loc0003> <loc0004>  cat ";
        assert_eq!(labels(&parse_detections(text, 10, 10)), ["cat"]);
        // Separators in odd places.
        let text = format!(
            ";; ; {} a;b ; ; {}; c",
            locs([1, 2, 3, 4]),
            locs([1, 2, 3, 4])
        );
        let out = parse_detections(&text, 10, 10);
        assert_eq!(labels(&out), ["a"]);
        let skipped: Vec<_> = out
            .skipped
            .iter()
            .map(|s| (s.text.as_str(), &s.reason))
            .collect();
        let second = locs([1, 2, 3, 4]);
        assert_eq!(
            skipped,
            [
                ("b", &SkipReason::StrayText),
                (second.as_str(), &SkipReason::MissingLabel),
                ("c", &SkipReason::StrayText),
            ]
        );
    }

    #[test]
    fn empty_and_textual_outputs() {
        assert_eq!(parse_detections("", 10, 10), ParseOutput::default());
        assert_eq!(
            parse_segmentations(" \n ; <eos>", 10, 10),
            ParseOutput::default()
        );
        let out = parse_detections("no objects here", 10, 10);
        assert_eq!(out.objects, []);
        assert_eq!(
            out.skipped,
            [Skipped {
                text: "no objects here".into(),
                reason: SkipReason::StrayText
            }]
        );
        // Text before the first object is reported, the object is kept.
        let out = parse_detections(&format!("sure: {} cat", locs([1, 2, 3, 4])), 10, 10);
        assert_eq!(labels(&out), ["cat"]);
        assert_eq!(out.skipped[0].text, "sure:");
    }

    #[test]
    fn every_skip_reason() {
        let box4 = locs([1, 2, 3, 4]);
        let cases: Vec<(String, bool, SkipReason)> = vec![
            (
                "<loc0001><loc0002><loc0003>".into(),
                false,
                SkipReason::TooFewLocs { found: 3 },
            ),
            (
                format!("{box4}<loc0009> x"),
                false,
                SkipReason::TooManyLocs { found: 5 },
            ),
            (
                locs([1, 2, 3000, 4]) + " x",
                false,
                SkipReason::LocOutOfRange { value: 3000 },
            ),
            (locs([5, 2, 5, 4]) + " x", false, SkipReason::InvertedBox),
            (locs([5, 9, 6, 4]) + " x", false, SkipReason::InvertedBox),
            (
                format!("{box4}<seg001> x"),
                true,
                SkipReason::WrongSegCount { found: 1 },
            ),
            (
                format!("{box4} x"),
                true,
                SkipReason::WrongSegCount { found: 0 },
            ),
            (
                format!("{box4}{} x", segs(|i| if i == 3 { 200 } else { i })),
                true,
                SkipReason::SegOutOfRange { value: 200 },
            ),
            (
                "<loc0001><loc12><loc0003><loc0004> x".into(),
                false,
                SkipReason::MalformedToken {
                    token: "<loc12>".into(),
                },
            ),
            (
                format!("{box4}{}<seg0001> x", segs(|i| i).get(8..).unwrap_or("")),
                true,
                SkipReason::MalformedToken {
                    token: "<seg0001>".into(),
                },
            ),
            (box4.clone(), false, SkipReason::MissingLabel),
            (
                format!("{box4}{} ", segs(|i| i)),
                true,
                SkipReason::MissingLabel,
            ),
            ("hello".into(), false, SkipReason::StrayText),
            ("<seg001> <seg002>".into(), false, SkipReason::StraySegs),
        ];
        for (text, segments, reason) in cases {
            let out = parse_objects_with(&text, 10, 10, segments, Coordinates::BigVision);
            assert_eq!(out.objects, [], "{text}");
            assert_eq!(
                out.skipped,
                [Skipped {
                    text: text.trim().to_string(),
                    reason: reason.clone()
                }],
                "{text}"
            );
            assert!(!reason.to_string().is_empty());
        }
    }

    #[test]
    fn truncated_and_odd_tokens() {
        let cat = format!("{} cat", locs([1, 2, 3, 4]));
        // Cut off after a complete object: the partial one is reported.
        assert_eq!(
            reasons(&format!("{cat} ; <loc0005><loc0006>"), false),
            [SkipReason::TooFewLocs { found: 2 }]
        );
        // A partial token is text; it cannot become a token.
        let out = parse_detections(&format!("{cat} ; <loc00"), 10, 10);
        assert_eq!(labels(&out), ["cat"]);
        assert_eq!(out.skipped[0].text, "<loc00");
        // 5-digit and short tokens are malformed, not text of a label.
        assert_eq!(
            reasons("<loc00001><loc0002><loc0003><loc0004> cat", false),
            [SkipReason::MalformedToken {
                token: "<loc00001>".into()
            }]
        );
        let out = parse_detections(&format!("{cat} <loc12> dog"), 10, 10);
        assert_eq!(labels(&out), ["cat"]);
        assert_eq!(
            out.skipped,
            [Skipped {
                text: "<loc12> dog".into(),
                reason: SkipReason::MalformedToken {
                    token: "<loc12>".into()
                }
            }]
        );
        // Not tokens at all.
        let out = parse_detections(
            &format!("{} a <b> <loc> <seg>x", locs([1, 2, 3, 4])),
            10,
            10,
        );
        assert_eq!(labels(&out), ["a <b> <loc> <seg>x"]);
        // A huge digit run does not overflow.
        let long = format!("<loc{}>", "9".repeat(100));
        assert!(matches!(
            reasons(&long, false).as_slice(),
            [SkipReason::MalformedToken { .. }]
        ));
        // A 4-digit value above 1023.
        assert_eq!(
            reasons(&format!("{} x", locs([1, 2, 9999, 4])), true),
            [SkipReason::LocOutOfRange { value: 9999 }]
        );
    }

    #[test]
    fn segmentation_outputs() {
        let codes = segs(|i| i * 8);
        let text = format!(
            "{}{codes} cat ; {}{codes} dog",
            locs([0, 0, 511, 1023]),
            locs([512, 0, 1023, 1023])
        );
        let out = parse_segmentations(&text, 64, 32);
        assert_eq!(out.skipped, []);
        assert_eq!(labels(&out), ["cat", "dog"]);
        let want: [u16; 16] = std::array::from_fn(|i| i as u16 * 8);
        assert!(out.objects.iter().all(|o| o.seg_codes == Some(want)));
        assert!(close(out.objects[0].bbox.y_max, 511.0 / 1023.0 * 32.0));
        assert_eq!(format_objects(&out.objects), text);
        // Missing separator between segmentation objects.
        let text = format!(
            "{}{codes} cat{}{codes} dog",
            locs([0, 0, 5, 5]),
            locs([1, 1, 6, 6])
        );
        assert_eq!(labels(&parse_segmentations(&text, 8, 8)), ["cat", "dog"]);
    }

    #[test]
    fn segs_in_a_detection_output() {
        let codes = segs(|i| i);
        // Sixteen valid codes are kept, so a segmentation output parses as detection.
        let text = format!("{}{codes} cat", locs([0, 0, 5, 5]));
        let seg = parse_segmentations(&text, 8, 8);
        assert_eq!(parse_detections(&text, 8, 8), seg);
        // Any other codes are ignored; the box stays.
        for codes in [
            "<seg001><seg002>".to_string(),
            segs(|i| if i == 0 { 500 } else { i }),
            codes.replacen("<seg000>", "<seg0>", 1),
        ] {
            let out = parse_detections(&format!("{}{codes} cat", locs([0, 0, 5, 5])), 8, 8);
            assert_eq!(out.skipped, [], "{codes}");
            assert_eq!(
                (labels(&out), out.objects[0].seg_codes),
                (vec!["cat"], None)
            );
        }
        // <seg> after a label belongs to no object and ends the label.
        let out = parse_detections(&format!("{} cat <seg001> dog", locs([0, 0, 5, 5])), 8, 8);
        assert_eq!(labels(&out), ["cat"]);
        let skipped: Vec<_> = out
            .skipped
            .iter()
            .map(|s| (s.text.as_str(), &s.reason))
            .collect();
        assert_eq!(
            skipped,
            [
                ("<seg001>", &SkipReason::StraySegs),
                ("dog", &SkipReason::StrayText)
            ]
        );
    }

    #[test]
    fn zero_sized_images_give_degenerate_boxes() {
        let out = parse_detections(&format!("{} cat", locs([1, 2, 3, 4])), 0, 10);
        let b = out.objects[0].bbox;
        assert_eq!((b.x_min, b.x_max), (0.0, 0.0));
        assert!(b.y_min < b.y_max);
    }

    #[test]
    fn huge_images_keep_boxes_strictly_ordered() {
        let out = parse_detections(
            &format!("{} cat", locs([1022, 1022, 1023, 1023])),
            u32::MAX,
            u32::MAX,
        );
        let b = out.objects[0].bbox;
        assert!(b.x_min < b.x_max && b.x_max <= u32::MAX as f32);
    }

    #[test]
    fn outputs_serialize() {
        let out = parse_detections(&format!("{} cat ; <loc0001>", locs([1, 2, 3, 4])), 10, 10);
        let json = serde_json::to_value(&out).unwrap_or_default();
        assert_eq!(json["objects"][0]["label"], "cat");
        assert_eq!(json["objects"][0]["loc"][3], 4);
        assert_eq!(json["skipped"][0]["reason"]["TooFewLocs"]["found"], 1);
    }

    #[test]
    fn tokens_format_with_fixed_width() {
        assert_eq!(loc_token(51), "<loc0051>");
        assert_eq!(loc_token(1023), "<loc1023>");
        assert_eq!(seg_token(7), "<seg007>");
        assert_eq!(format_objects(&[]), "");
    }
}
