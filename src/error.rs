//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when loading or running a PaliGemma model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A required file is missing from the checkpoint directory.
    #[error("{path} not found: {hint}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file is and where it comes from.
        hint: String,
    },
    /// `config.json` is malformed or does not describe a supported PaliGemma model.
    #[error("invalid config{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Config {
        /// The config file (`None` for a config parsed from a string).
        path: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
    },
    /// A weight file is malformed.
    #[error("invalid weight file {path}: {reason}")]
    WeightFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor {name} not found in the checkpoint (looked for: {tried})")]
    MissingTensor {
        /// The canonical (hub-layout) name of the tensor.
        name: String,
        /// Every name that was tried.
        tried: String,
    },
    /// A tensor has a shape the config does not allow.
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's name in the file.
        name: String,
        /// The shape in the file.
        found: Vec<usize>,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor has a data type this crate cannot read.
    #[error("tensor {name} has unsupported dtype {dtype}")]
    TensorDtype {
        /// The tensor's name in the file.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A line of a training data file is invalid (line 0: the file as a whole).
    #[error("{}:{line}: {reason}", path.display())]
    Data {
        /// The data file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An image could not be read or decoded.
    #[error("image: {0}")]
    Image(String),
    /// The prompt cannot be run (too long, contains reserved tokens, ...).
    #[error("prompt: {0}")]
    Prompt(String),
    /// Generation options are invalid.
    #[error("invalid generation option: {0}")]
    Options(String),
    /// The model produced NaN or infinite logits (broken weights, a degenerate config,
    /// or half-precision overflow): no token is chosen from them.
    #[error("row {row}: the logits of generated token {step} are not finite (NaN or infinity)")]
    NonFinite {
        /// The batch row.
        row: usize,
        /// The 0-based index of the token being chosen.
        step: usize,
    },
    /// A task's arguments are invalid.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The segmentation mask decoder is missing or invalid.
    #[error("mask decoder: {0}")]
    MaskDecoder(String),
    /// The backend cannot run what was asked on this device: a dtype it does not
    /// compute in, or host weights on a GPU backend.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A name (of a dtype, a weight format, ...) that this crate does not know.
    #[error("unknown {kind} {name:?}: expected {expected}")]
    UnknownName {
        /// What was being named: `"dtype"`, `"weight format"`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// A saved optimiser state that does not fit the trainer resuming from it.
    #[error("invalid optimiser state {path}: {reason}")]
    OptimizerState {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The backend failed while running (reading a result back, for example).
    #[error("backend: {0}")]
    Backend(String),
}

/// Invalid task arguments, reported by [`Task::prompt`](crate::Task::prompt).
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

/// Shorthand for `std::result::Result<T, paligemma::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
