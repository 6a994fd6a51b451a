//! Fine-tuning, beside inference: examples → [`Batch`] (ids, token types, labels as
//! transformers' processor builds them) → [`Loss`] (transformers' cross-entropy) →
//! gradients (burn's autodiff) → [`Trainer`] (SGD or AdamW with torch's semantics) on
//! the parameters a [`Method`] selects → a checkpoint directory
//! ([`Model::save_pretrained`](crate::Model::save_pretrained)) that transformers loads.
//!
//! Train on an autodiff backend: `Model::<burn::backend::Autodiff<Cpu>>`.

mod batch;
mod data;
mod features;
mod lora;
mod loss;
mod method;
mod names;
mod save;
mod schedule;
mod state;
mod trainer;

pub use batch::{Batch, Example};
pub use data::{read_examples, read_examples_with};
pub use lora::{LoraConfig, LoraTargets};
pub use loss::{Loss, Reduction};
pub use method::Method;
pub use names::NamedTensor;
pub use schedule::Schedule;
pub use trainer::{Optimizer, Trainer};
