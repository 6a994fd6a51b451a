//! # paligemma
//!
//! Google's PaliGemma 1 and 2 vision-language models on [burn], generic over the
//! backend: pure-Rust CPU by default, any GPU through wgpu, NVIDIA through CUDA.
//!
//! Data flows one way: image → [`processor`] pixels → [`vision`] tower → projector →
//! merged embeddings ([`model`]) → [`text`] decoder → tokens ([`generate`]) → typed
//! results ([`task`]).
//!
//! ```
//! # fn main() -> paligemma::Result<()> {
//! use paligemma::{GenerateOptions, Model, backend::Cpu};
//!
//! let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg2-tiny", &Default::default())?;
//! let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
//! let out = model.generate(&image, "caption en", &GenerateOptions::default())?;
//! println!("{}", out.text);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod backend;
pub mod config;
mod cpu;
pub mod error;
pub mod generate;
pub mod layers;
pub mod mask;
pub mod model;
pub mod pipeline;
pub mod precision;
pub mod processor;
mod resize;
mod sampling;
pub mod task;
pub mod text;
pub mod vision;
pub mod weights;

pub use config::Config;
pub use error::{Error, Result};
pub use generate::{FinishReason, GenerateOptions, Generation, Timings};
pub use model::{ImageEmbedding, Model};
pub use pipeline::{Detection, Segmentation, TaskOutput};
pub use precision::{Dtype, LoadOptions, WeightFormat};
pub use processor::load_image;
pub use task::{BoundingBox, Task};
