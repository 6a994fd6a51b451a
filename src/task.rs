//! Placeholder until the task module lands.

/// Invalid task arguments.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);
