//! Tasks: the prompts PaliGemma was trained on, and its structured outputs parsed into
//! typed results.
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
//!
//! # Files
//!
//! - `prompt.rs`: [`Task`] and its validation;
//! - `parse.rs`: the lexer and parser of `<loc>`/`<seg>` outputs;
//! - `objects.rs`: what parsing yields ([`BoundingBox`], [`Detection`], [`Segmentation`],
//!   [`Skipped`]) and the inverse, [`format_objects`];
//! - `run.rs`: the typed task methods on [`Model`](crate::Model);
//! - `metrics.rs`: box and mask IoU, detection recall, exact match.

mod metrics;
mod objects;
mod parse;
mod prompt;
mod run;

pub use crate::error::TaskError;
pub use metrics::{DetectionMatch, box_iou, exact_match, mask_iou};
pub(crate) use objects::target_objects;
pub use objects::{
    BoundingBox, Coordinates, Detection, MAX_LOC, MAX_SEG, ParseOutput, Segmentation, SkipReason,
    Skipped, detection_suffix, format_objects, loc_token, loc_value, seg_token,
};
pub use parse::{parse_detections, parse_objects_with, parse_segmentations};
pub use prompt::Task;
pub use run::{MAX_MASK_PIXELS, TaskOutput, segmentations_from_text};
