//! Fine-tuning, beside inference: examples → [`Batch`] (ids, token types, labels as
//! transformers' processor builds them) → [`Loss`] (transformers' cross-entropy) →
//! gradients (burn's autodiff) → [`Trainer`] (SGD or AdamW with torch's semantics) on
//! the parameters a [`Method`] selects.
//!
//! Train on an autodiff backend: `Model::<burn::backend::Autodiff<Cpu>>`.

mod batch;
mod loss;
mod method;
mod names;
mod trainer;

pub use batch::{Batch, Example};
pub use loss::{Loss, Reduction};
pub use method::Method;
pub use names::NamedTensor;
pub use trainer::{Optimizer, Trainer};
