//! Loading a Hugging Face checkpoint directory into a [`Model`]: config, tokenizer,
//! safetensors weights (single file or shards, any transformers layout) and the
//! optional segmentation decoder, each validated before the model exists.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{Model, Origin, Source};
use crate::paligemma::PaliGemma;
use crate::precision::{Dtype, WeightFormat};
use crate::segmentation::MaskDecoder;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightStore;

/// How [`Model::from_pretrained_with`] loads a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Compute dtype (default f32).
    pub dtype: Dtype,
    /// How the large matrices are stored and multiplied (default: [`WeightFormat::Auto`],
    /// host weights in the checkpoint's precision where this CPU has SIMD kernels).
    pub weights: WeightFormat,
}

impl LoadOptions {
    /// Whether backend `B` on `device` can compute in this dtype with these weights.
    pub(crate) fn check_supported<B: Backend>(&self, device: &B::Device) -> Result<()> {
        // Before anything touches a GPU device: cubecl reads its configuration once.
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        if !crate::backend::is_cpu::<B>() {
            crate::gpu_cache::gpu_cache_from_env()?;
        }
        crate::backend::start_device::<B>(device)?;
        self.dtype.check_supported::<B>(device)?;
        self.weights.check_supported::<B>(self.dtype, device)
    }
}

impl<B: Backend> Model<B> {
    /// Load a Hugging Face checkpoint directory: `config.json`, `tokenizer.json` and
    /// `model.safetensors` (or shards with `model.safetensors.index.json`), plus the
    /// segmentation decoder `vae-oid.npz` when the directory has one.
    ///
    /// Everything is validated before the model is returned: a missing file or tensor,
    /// a wrong shape or a config that is not PaliGemma is an error, never a partial model.
    /// Computes in f32, with the weights held as [`WeightFormat::Auto`] chooses (on a
    /// CPU with AVX2 or AVX-512: in host memory, in the checkpoint's precision, through
    /// the crate's kernels); see [`Model::from_pretrained_with`] for other choices.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::from_pretrained_with(dir, device, &LoadOptions::default())
    }

    /// [`Model::from_pretrained`] with options: the compute dtype, into which weights
    /// are converted from whatever the checkpoint stores, and the weight format.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// use paligemma::{Dtype, LoadOptions, Model, WeightFormat, backend::Cpu};
    ///
    /// let options = LoadOptions { dtype: Dtype::Bf16, ..Default::default() };
    /// let model = Model::<Cpu>::from_pretrained_with("tests/fixtures/pg2-tiny", &Default::default(), &options)?;
    /// assert_eq!(model.dtype(), Dtype::Bf16);
    ///
    /// // On a CPU backend: int8 weights multiplied by the crate's own kernels.
    /// let options = LoadOptions { weights: WeightFormat::Int8, ..Default::default() };
    /// let model = Model::<Cpu>::from_pretrained_with("tests/fixtures/pg2-tiny", &Default::default(), &options)?;
    /// assert_eq!(model.weight_format(), WeightFormat::Int8);
    /// # Ok(()) }
    /// ```
    ///
    /// A dtype the backend cannot compute in on `device` (bf16 on wgpu, f16 on a GPU
    /// without half-precision shaders), or host weights ([`WeightFormat::Bf16`],
    /// [`WeightFormat::Int8`]) on a GPU backend or with a half-precision dtype, is an
    /// [`Error::Unsupported`] before anything loads.
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        options.check_supported::<B>(device)?;
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                hint: "expected a checkpoint directory".into(),
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::MissingFile {
                path: config_path,
                hint: "a checkpoint directory needs its config.json".into(),
            });
        }
        let config = Config::from_file(&config_path)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let store = WeightStore::open_dir(dir)?;
        // The mask decoder is optional: a broken one disables segmentation (with a
        // warning the model keeps), not the whole checkpoint.
        let vae = dir.join("vae-oid.npz");
        let (mask_decoder, warning) = match vae.is_file() {
            true => match MaskDecoder::from_npz(&vae, device) {
                Ok(d) => (Some(d), None),
                Err(e) => (None, Some(format!("segmentation is disabled: {e}"))),
            },
            false => (None, None),
        };
        let origin = Origin::Dir(dir.to_path_buf());
        let parts = Parts {
            config,
            config_path: Some(config_path),
            tokenizer,
            store,
            mask_decoder,
        };
        let model = Self::assemble(parts, origin, device, options)?;
        Ok(model.with_warnings(warning.into_iter().collect()))
    }

    /// Build the network from validated files and put the model together.
    pub(crate) fn assemble(
        parts: Parts<B>,
        origin: Origin,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        let Parts {
            config,
            config_path,
            tokenizer,
            store,
            mask_decoder,
        } = parts;
        check_tokenizer(&config, &tokenizer).map_err(|reason| Error::Config {
            path: config_path,
            reason,
        })?;
        let stored = store.stored_dtype("language_model.model.embed_tokens.weight")?;
        let format = options.weights.resolve::<B>(options.dtype, stored)?;
        let store = store.with_dtype(options.dtype).with_format(format);
        let network = PaliGemma::load(&store, &config, tokenizer.image_id, device)?;
        let source = Source {
            origin,
            dtype: stored,
        };
        Ok(Model::new(
            config,
            network,
            tokenizer,
            mask_decoder,
            device.clone(),
            store.format(),
            Some(source),
        ))
    }
}

/// The files of a checkpoint, read and parsed, before the network is built.
pub(crate) struct Parts<B: Backend> {
    pub config: Config,
    /// Where `config` came from, for errors.
    pub config_path: Option<std::path::PathBuf>,
    pub tokenizer: Tokenizer,
    pub store: WeightStore,
    pub mask_decoder: Option<MaskDecoder<B>>,
}

/// The tokenizer and the config must agree on the `<image>` id, and every token id must
/// have an embedding row.
fn check_tokenizer(config: &Config, tokenizer: &Tokenizer) -> std::result::Result<(), String> {
    if tokenizer.image_id as usize != config.image_token_index {
        return Err(format!(
            "image_token_index is {} but the tokenizer's <image> is {}",
            config.image_token_index, tokenizer.image_id
        ));
    }
    // The largest id, not the number of tokens: ids may leave gaps.
    let largest = tokenizer
        .inner()
        .get_vocab(true)
        .into_values()
        .max()
        .unwrap_or(0) as usize;
    if largest >= config.text.vocab_size {
        return Err(format!(
            "the tokenizer has token id {largest} but the model only {} embedding rows",
            config.text.vocab_size
        ));
    }
    Ok(())
}
