//! The PaliGemma model: vision tower, projector and decoder, with the image features
//! merged into the token embeddings in place of the `<image>` placeholders.

use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use image::DynamicImage;

use crate::attention::{KvCache, RowLayout};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::layers::Linear;
use crate::mask::MaskDecoder;
use crate::precision::{Dtype, LoadOptions, WeightFormat};
use crate::processor::{TextProcessor, preprocess_image};
use crate::text::Decoder;
use crate::vision::VisionTower;
use crate::weights::WeightStore;

/// A loaded PaliGemma checkpoint, ready to run on backend `B`.
pub struct Model<B: Backend> {
    pub(crate) config: Config,
    pub(crate) vision: VisionTower<B>,
    pub(crate) projector: Linear<B>,
    pub(crate) decoder: Decoder<B>,
    pub(crate) text: TextProcessor,
    pub(crate) mask_decoder: Option<MaskDecoder<B>>,
    pub(crate) device: B::Device,
    pub(crate) weight_format: WeightFormat,
}

/// Image features after the projector, ready to be merged with a prompt; compute once
/// with [`Model::encode_image`] and reuse for several prompts.
#[derive(Debug, Clone)]
pub struct ImageEmbedding<B: Backend> {
    /// `[1, image_tokens, text_hidden]`.
    pub features: Tensor<B, 3>,
    /// Width and height of the original image in pixels.
    pub original_size: (u32, u32),
}

impl<B: Backend> Model<B> {
    /// Load a Hugging Face checkpoint directory: `config.json`, `tokenizer.json` and
    /// `model.safetensors` (or shards with `model.safetensors.index.json`), plus the
    /// segmentation decoder `vae-oid.npz` when the directory has one.
    ///
    /// Everything is validated before the model is returned: a missing file or tensor,
    /// a wrong shape or a config that is not PaliGemma is an error, never a partial model.
    /// Computes in f32; see [`Model::from_pretrained_with`] for half precision.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::from_pretrained_with(dir, device, &LoadOptions::default())
    }

    /// [`Model::from_pretrained`] with options: the compute dtype, into which weights
    /// are converted from whatever the checkpoint stores.
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
    /// [`Error::Backend`] before anything loads.
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        options.dtype.check_supported::<B>(device)?;
        options
            .weights
            .check_supported::<B>(options.dtype, device)?;
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
        let text = TextProcessor::from_dir(dir)?;
        if text.image_id as usize != config.image_token_index {
            return Err(Error::Config {
                path: config_path,
                reason: format!(
                    "image_token_index is {} but the tokenizer's <image> is {}",
                    config.image_token_index, text.image_id
                ),
            });
        }
        let vocab = text.tokenizer().get_vocab_size(true);
        if vocab > config.text.vocab_size {
            return Err(Error::Config {
                path: config_path,
                reason: format!(
                    "the tokenizer has {vocab} tokens but the model only {} embedding rows",
                    config.text.vocab_size
                ),
            });
        }
        let store = WeightStore::open_dir(dir)?
            .with_dtype(options.dtype)
            .with_format(options.weights);
        let mut model = Self::from_parts(config, text, &store, device)?;
        let vae = dir.join("vae-oid.npz");
        if vae.is_file() {
            model.mask_decoder = Some(MaskDecoder::from_npz(&vae, device)?);
        }
        Ok(model)
    }

    /// Build a model from an already parsed config, tokenizer and weight store; it
    /// computes in the store's dtype.
    pub fn from_parts(
        config: Config,
        text: TextProcessor,
        store: &WeightStore,
        device: &B::Device,
    ) -> Result<Self> {
        let vision = VisionTower::load(store, &config.vision, device)?;
        let projector = Linear::load(
            store,
            "multi_modal_projector.linear",
            config.vision.hidden_size,
            config.text.hidden_size,
            true,
            device,
        )?;
        let decoder = Decoder::load(store, &config.text, device)?;
        Ok(Model {
            config,
            vision,
            projector,
            decoder,
            text,
            mask_decoder: None,
            device: device.clone(),
            weight_format: store.format(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tokenizer and special ids.
    pub fn text_processor(&self) -> &TextProcessor {
        &self.text
    }

    /// The compute dtype.
    pub fn dtype(&self) -> Dtype {
        self.decoder.dtype()
    }

    /// How the large weight matrices are held.
    pub fn weight_format(&self) -> WeightFormat {
        self.weight_format
    }

    /// The device the model runs on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The vision tower.
    pub fn vision_tower(&self) -> &VisionTower<B> {
        &self.vision
    }

    /// The language decoder.
    pub fn decoder(&self) -> &Decoder<B> {
        &self.decoder
    }

    /// Preprocess an image into `[1, 3, size, size]` pixels at the model's resolution.
    pub fn pixel_values(&self, image: &DynamicImage) -> Result<Tensor<B, 4>> {
        let size = self.config.vision.image_size;
        let px = preprocess_image(image, size)?;
        Ok(Tensor::from_data(
            TensorData::new(px, [1, 3, size, size]),
            &self.device,
        ))
    }

    /// Vision tower and projector: `[batch, 3, s, s]` pixels to `[batch, tokens, hidden]`
    /// features, unscaled (as transformers 5.x and big_vision feed them to the decoder).
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.projector.forward(self.vision.forward(pixels))
    }

    /// Run the vision side once for an image, for reuse across prompts.
    pub fn encode_image(&self, image: &DynamicImage) -> Result<ImageEmbedding<B>> {
        Ok(ImageEmbedding {
            features: self.image_features(self.pixel_values(image)?),
            original_size: (image.width(), image.height()),
        })
    }

    /// Prompt ids exactly as `PaliGemmaProcessor` builds them.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.text.prompt_ids(prompt, self.config.num_image_tokens())
    }

    /// Merge image features `[1, tokens, hidden]` with the embeddings of `ids`, whose
    /// first `tokens` entries must be the `<image>` placeholders.
    pub(crate) fn merge(&self, features: &Tensor<B, 3>, ids: &[u32]) -> Result<Tensor<B, 3>> {
        let n = self.config.num_image_tokens();
        let [_, fn_, _] = features.dims();
        if fn_ != n || ids.len() < n || ids[..n].iter().any(|&i| i != self.text.image_id) {
            return Err(Error::Prompt(format!(
                "expected {n} <image> placeholders at the start of the prompt ids"
            )));
        }
        if ids[n..].contains(&self.text.image_id) {
            return Err(Error::Prompt("<image> tokens after the image block".into()));
        }
        let text = self.decoder.embed(&[ids[n..].to_vec()], &self.device);
        let features = features.clone().cast(text.dtype());
        Ok(Tensor::cat(vec![features, text], 1))
    }

    /// Final logits `[1, seq, vocab]` for every position of a prompt, from image
    /// features `[1, tokens, hidden]` (no cache kept): the reference comparison point.
    pub fn forward_logits(&self, features: &Tensor<B, 3>, ids: &[u32]) -> Result<Tensor<B, 3>> {
        let x = self.merge(features, ids)?;
        let len = ids.len();
        let mut cache = self.new_cache(1, len);
        let hidden = self.decoder.forward(
            x,
            &[RowLayout {
                pad: 0,
                prefix: len,
            }],
            &[(1..=len).collect()],
            &mut cache,
        );
        Ok(self.decoder.logits(hidden))
    }

    /// An empty KV cache for `batch` rows of up to `capacity` positions, in the model's
    /// dtype, for driving [`Decoder::forward`] step by step.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> KvCache<B> {
        let t = &self.config.text;
        KvCache::new(
            t.num_hidden_layers,
            batch,
            t.num_key_value_heads,
            capacity,
            t.head_dim,
            &self.device,
            self.dtype().burn_dtype(),
        )
    }
}
