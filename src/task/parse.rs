//! The parser of detection and segmentation outputs: a lexer that cuts the text into
//! `<loc>`/`<seg>` tokens, separators and text, and a state machine that assembles
//! objects from them. Pure functions: no panic, no invented object.

use super::objects::{
    BoundingBox, Coordinates, Detection, MAX_LOC, MAX_SEG, ParseOutput, SkipReason, Skipped,
};

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

    fn validate(&self, d: &Draft) -> Result<Detection, SkipReason> {
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
        Ok(Detection {
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
