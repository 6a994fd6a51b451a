//! # paligemma
//!
//! Google's PaliGemma 1 and 2 vision-language models on [burn], generic over the
//! backend: pure-Rust CPU by default, any GPU through wgpu, NVIDIA through CUDA.
//!
//! ```
//! # fn main() -> paligemma::Result<()> {
//! use paligemma::{Model, backend::Cpu, demo::Scene};
//!
//! // The demo model is embedded in the library: no download. A Hugging Face
//! // checkpoint directory loads with `Model::<Cpu>::from_pretrained(dir, &device)`.
//! let model = Model::<Cpu>::demo(&Default::default())?;
//! let scene = Scene::generate(0); // a blue square, then a red triangle
//! let image = image::DynamicImage::ImageRgb8(scene.render());
//!
//! assert_eq!(model.caption(&image, "en")?, "a blue square and a red triangle");
//! assert_eq!(model.answer(&image, "en", "how many shapes are there?")?, "2");
//!
//! // Typed tasks return boxes in pixels of the original image (and masks, from
//! // `segment`, which the demo model does not do yet: docs/demo.md has its scores).
//! let triangles = model.detect(&image, "red triangle")?;
//! assert_eq!(triangles.len(), 1);
//! let truth = &scene.objects[1].bbox;
//! assert!(paligemma::task::box_iou(&triangles[0].bbox, truth) > 0.6);
//! # Ok(()) }
//! ```
//!
//! ## How data flows
//!
//! image → [`load_image`] / [`preprocess_image`] pixels → [`VisionTower`] (SigLIP) →
//! projector → prompt embeddings with the image features merged in ([`PaliGemma`]) →
//! [`Decoder`] (Gemma) → tokens ([`Model::generate`], [`GenerateOptions`]) → typed
//! results ([`task`]: [`Detection`], [`Segmentation`], with [`MaskDecoder`] for masks).
//! `docs/architecture.md` maps each step to its file.
//!
//! ## Where to start
//!
//! - [`Model::from_pretrained`] loads a Hugging Face checkpoint directory; [`LoadOptions`]
//!   picks the compute [`Dtype`] and the [`WeightFormat`]. [`Model::demo`] loads the
//!   embedded demo model ([`demo`], `docs/demo.md`).
//! - [`Model::caption`], [`Model::answer`], [`Model::ocr`], [`Model::detect`] and
//!   [`Model::segment`] run the tasks the mix checkpoints were trained on.
//! - [`Model::generate`], [`Model::generate_stream`] and [`Model::generate_batch`] run
//!   any prompt; [`Model::prefill`] and [`Model::extend`] are the two steps of a
//!   decoding loop of your own.
#![warn(missing_docs)]

mod allocator;
mod attention;
pub mod backend;
mod config;
mod cpu;
mod decode_state;
pub mod demo;
mod error;
mod gemma;
mod generate;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod gpu_cache;
mod images;
mod kv_cache;
mod layers;
mod lora;
mod mask_encoder;
mod matmul;
mod model;
mod npz;
mod paligemma;
mod precision;
mod prefix_lm;
mod preprocess;
mod pretrained;
mod resize;
mod rope;
mod segmentation;
#[cfg(feature = "server")]
pub mod server;
mod siglip;
pub mod task;
mod tokenizer;
#[cfg(feature = "train")]
pub mod train;
mod weights;

pub use crate::paligemma::{DecodeState, PaliGemma};
pub use allocator::keep_freed_memory;
pub use config::{Config, LayerKind, Release, TextArch, TextConfig, VisionConfig};
pub use error::{Error, Result};
pub use gemma::Decoder;
pub use generate::continuous;
pub use generate::{Diagnostics, FinishReason, GenerateOptions, Generation, Sampling, Timings};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use gpu_cache::{GPU_CACHE_ENV, gpu_cache_dirs, gpu_cache_from_env, set_gpu_cache};
pub use images::{Images, frame_paths, load_frames};
pub use kv_cache::KvCache;
pub use mask_encoder::{MaskEncoder, mask_crop};
pub use model::{ImageEmbedding, Model};
pub use precision::{Dtype, WeightFormat};
pub use prefix_lm::RowLayout;
pub use preprocess::{
    Pixels, image_warnings, load_image, load_image_checked, preprocess_image, to_rgb,
};
pub use pretrained::LoadOptions;
pub use segmentation::{BinaryMask, CODES_PER_MASK, MASK_SIZE, MaskDecoder, paste_mask};
pub use siglip::VisionTower;
pub use task::{BoundingBox, Detection, Segmentation, Task, TaskError, TaskOutput};
pub use tokenizer::{PaddingSide, Tokenizer};
