//! [`Model`]: a loaded checkpoint as users hold it, the [`PaliGemma`] network with its
//! config, tokenizer and optional mask decoder, and the steps from an image and a
//! prompt to what the network consumes.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use image::DynamicImage;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gemma::Decoder;
use crate::images::Images;
use crate::paligemma::{DecodeState, PaliGemma};
use crate::precision::{Dtype, WeightFormat};
use crate::preprocess::{Pixels, pixels_of};
use crate::segmentation::MaskDecoder;
use crate::siglip::VisionTower;
use crate::tokenizer::Tokenizer;

/// A loaded PaliGemma checkpoint, ready to run on backend `B`.
///
/// Load one with [`Model::from_pretrained`]; every method takes `&self`, so one model
/// serves several threads.
pub struct Model<B: Backend> {
    config: Config,
    network: PaliGemma<B>,
    tokenizer: Tokenizer,
    mask_decoder: Option<MaskDecoder<B>>,
    device: B::Device,
    weight_format: WeightFormat,
    source: Option<Source>,
    warnings: Vec<String>,
}

/// Where a model was loaded from: what saving it copies and keeps.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The checkpoint's files (config, tokenizer and processor files, `vae-oid.npz`).
    pub origin: Origin,
    /// The dtype its weights are stored in.
    pub dtype: Dtype,
}

/// A checkpoint's home.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// A directory on disk.
    Dir(std::path::PathBuf),
    /// Files embedded in the binary, by name (the demo model).
    Embedded(&'static [(&'static str, &'static [u8])]),
}

impl Origin {
    /// Copy the checkpoint's file `name` to `to`; `false` when it has none.
    pub(crate) fn copy_file(&self, name: &str, to: &std::path::Path) -> Result<bool> {
        let io = |e| crate::error::Error::io(to, e);
        match self {
            Origin::Dir(dir) => {
                let from = dir.join(name);
                if !from.is_file() {
                    return Ok(false);
                }
                std::fs::copy(&from, to).map_err(io)?;
            }
            Origin::Embedded(files) => {
                let Some((_, bytes)) = files.iter().find(|(n, _)| *n == name) else {
                    return Ok(false);
                };
                std::fs::write(to, bytes).map_err(io)?;
            }
        }
        Ok(true)
    }

    /// How a saved adapter names its base model.
    pub(crate) fn describe(&self) -> String {
        match self {
            Origin::Dir(dir) => dir.display().to_string(),
            Origin::Embedded(_) => "paligemma-demo".into(),
        }
    }
}

/// Image features after the projector, ready to be merged with a prompt; compute once
/// with [`Model::encode_image`] (or [`Model::encode_images`] for several images) and
/// reuse for several prompts.
#[derive(Debug, Clone)]
pub struct ImageEmbedding<B: Backend> {
    /// `[1, images x image_tokens, text_hidden]`: the images' features in prompt order.
    pub features: Tensor<B, 3>,
    /// Width and height of each original image in pixels.
    pub original_sizes: Vec<(u32, u32)>,
}

impl<B: Backend> ImageEmbedding<B> {
    /// How many images the embedding holds.
    pub fn images(&self) -> usize {
        self.original_sizes.len()
    }
}

impl<B: Backend> Model<B> {
    /// Put together a model from validated parts (see `pretrained.rs`).
    pub(crate) fn new(
        config: Config,
        network: PaliGemma<B>,
        tokenizer: Tokenizer,
        mask_decoder: Option<MaskDecoder<B>>,
        device: B::Device,
        weight_format: WeightFormat,
        source: Option<Source>,
    ) -> Self {
        Model {
            config,
            network,
            tokenizer,
            mask_decoder,
            device,
            weight_format,
            source,
            warnings: Vec::new(),
        }
    }

    /// The same model with load-time warnings about optional files.
    pub(crate) fn with_warnings(self, warnings: Vec<String>) -> Self {
        Model { warnings, ..self }
    }

    /// Problems with optional files found while loading (a `vae-oid.npz` that could not
    /// be read disables segmentation only); empty when everything loaded.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Where the model was loaded from.
    pub(crate) fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    /// The same model with its network replaced by `f(network)` (training updates).
    pub(crate) fn map_network(self, f: impl FnOnce(PaliGemma<B>) -> PaliGemma<B>) -> Self {
        Model {
            network: f(self.network),
            ..self
        }
    }

    /// [`Model::map_network`] with a fallible `f`.
    pub(crate) fn try_map_network(
        self,
        f: impl FnOnce(PaliGemma<B>) -> Result<PaliGemma<B>>,
    ) -> Result<Self> {
        Ok(Model {
            network: f(self.network)?,
            ..self
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tokenizer and special ids.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The network itself (a burn module).
    pub fn network(&self) -> &PaliGemma<B> {
        &self.network
    }

    /// The compute dtype.
    pub fn dtype(&self) -> Dtype {
        self.network.decoder().dtype()
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
        self.network.vision_tower()
    }

    /// The language decoder.
    pub fn decoder(&self) -> &Decoder<B> {
        self.network.decoder()
    }

    /// The segmentation decoder, when one is loaded.
    pub fn mask_decoder(&self) -> Option<&MaskDecoder<B>> {
        self.mask_decoder.as_ref()
    }

    /// Load the segmentation decoder from a `vae-oid.npz` file.
    pub fn with_mask_decoder(mut self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        self.mask_decoder = Some(MaskDecoder::from_npz(path, &self.device)?);
        self.warnings
            .retain(|w| !w.starts_with("segmentation is disabled"));
        Ok(self)
    }

    /// Preprocess an image into `[1, 3, size, size]` pixels at the model's resolution.
    pub fn pixel_values(&self, image: &DynamicImage) -> Result<Tensor<B, 4>> {
        self.pixel_batch(&[image])
    }

    /// `[images.len(), 3, size, size]` pixels of several images; an error names the
    /// image (1-based) when there are several.
    pub(crate) fn pixel_batch(&self, images: &[&DynamicImage]) -> Result<Tensor<B, 4>> {
        self.pixel_tensor(&pixels_of(images, self.config.vision.image_size)?)
    }

    /// Preprocess an image for this model's vision tower, on the caller's thread (see
    /// [`Pixels`]).
    pub fn pixels(&self, image: &DynamicImage) -> Result<Pixels> {
        Pixels::new(image, self.config.vision.image_size)
    }

    /// `[pixels.len(), 3, size, size]` from preprocessed images, which must have been
    /// made at this model's resolution.
    pub(crate) fn pixel_tensor(&self, pixels: &[Pixels]) -> Result<Tensor<B, 4>> {
        let size = self.config.vision.image_size;
        if let Some(p) = pixels.iter().find(|p| p.size() != size) {
            return Err(Error::Image(format!(
                "pixels preprocessed at {0}x{0} for a model whose vision tower takes {size}x{size}",
                p.size()
            )));
        }
        let mut values = Vec::with_capacity(pixels.len() * 3 * size * size);
        for p in pixels {
            values.extend_from_slice(p.values());
        }
        Ok(Tensor::from_data(
            TensorData::new(values, [pixels.len(), 3, size, size]),
            &self.device,
        ))
    }

    /// Vision tower and projector: `[batch, 3, s, s]` pixels to `[batch, tokens, hidden]`
    /// features, unscaled (as transformers 5.x and big_vision feed them to the decoder).
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.network.image_features(pixels)
    }

    /// Run the vision side once for an image, for reuse across prompts.
    pub fn encode_image(&self, image: &DynamicImage) -> Result<ImageEmbedding<B>> {
        self.encode_images(image)
    }

    /// Run the vision side once for the images of one prompt (one batch through the
    /// tower), for reuse across prompts. No images, or more image tokens than the
    /// context holds with `<bos>` and `\n`, are errors before any work is done.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// let a = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let b = paligemma::load_image("tests/fixtures/images/gray.png")?;
    /// let both = model.encode_images(&[&a, &b])?;
    /// assert_eq!(both.images(), 2);
    /// assert_eq!(both.features.dims()[1], 2 * model.config().num_image_tokens());
    /// # Ok(()) }
    /// ```
    pub fn encode_images(&self, images: &(impl Images + ?Sized)) -> Result<ImageEmbedding<B>> {
        let images = images.images();
        self.check_image_count(images.len())?;
        let k = images.len();
        let features = self.image_features(self.pixel_batch(&images)?);
        let [_, tokens, hidden] = features.dims();
        Ok(ImageEmbedding {
            features: features.reshape([1, k * tokens, hidden]),
            original_sizes: images.iter().map(|i| (i.width(), i.height())).collect(),
        })
    }

    /// Refuse zero images, or more image tokens than the context holds with `<bos>`
    /// and `\n`.
    pub(crate) fn check_image_count(&self, images: usize) -> Result<()> {
        let context = self.config.text.max_position_embeddings;
        let tokens = self.config.num_image_tokens();
        if images == 0 {
            return Err(Error::Image("a prompt needs at least one image".into()));
        }
        if images.saturating_mul(tokens).saturating_add(2) > context {
            return Err(Error::Prompt(format!(
                "{images} images of {tokens} tokens each, <bos> and \\n exceed the model's context of {context}"
            )));
        }
        Ok(())
    }

    /// Prompt ids for one image exactly as `PaliGemmaProcessor` builds them.
    ///
    /// A prompt of more bytes than 256 per position of the context is refused before
    /// tokenizing (no token of any released vocabulary is that long, so it could not
    /// fit), which keeps a huge input from costing gigabytes first.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.prompt_ids_with_images(prompt, 1)
    }

    /// Prompt ids for `images` images as `PaliGemmaProcessor` builds them: a block of
    /// `<image>` tokens per image, `<bos>`, the prompt and `\n`.
    pub fn prompt_ids_with_images(&self, prompt: &str, images: usize) -> Result<Vec<u32>> {
        self.check_image_count(images)?;
        let context = self.config.text.max_position_embeddings;
        if prompt.len() / 256 > context {
            return Err(Error::Prompt(format!(
                "the prompt has {} bytes, more than any prompt that fits the context of {context} tokens",
                prompt.len()
            )));
        }
        self.tokenizer
            .prompt_ids(prompt, images * self.config.num_image_tokens())
    }

    /// Final logits `[1, seq, vocab]` for every position of a prompt, from image
    /// features `[1, tokens, hidden]` (no cache kept): the reference comparison point.
    pub fn forward_logits(&self, features: &Tensor<B, 3>, ids: &[u32]) -> Result<Tensor<B, 3>> {
        self.network.forward_logits(features, ids)
    }

    /// Run prompts (image features with prompt ids from [`Model::prompt_ids`]) in one
    /// batch, left-padded with `<pad>`, leaving room for `new_tokens` more; returns the
    /// decoding state and the f32 logits `[batch, vocab]` of each prompt's last token.
    /// See [`PaliGemma::prefill`].
    pub fn prefill(
        &self,
        prompts: &[(&Tensor<B, 3>, &[u32])],
        new_tokens: usize,
    ) -> Result<(DecodeState<B>, Tensor<B, 2>)> {
        let pad = self.tokenizer.padding_id();
        self.network.prefill(prompts, pad, new_tokens)
    }

    /// Feed one token per row; returns the f32 logits `[batch, vocab]` of the next.
    pub fn extend(&self, state: &mut DecodeState<B>, tokens: &[u32]) -> Result<Tensor<B, 2>> {
        self.network.extend(state, tokens)
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> Model<B> {
    /// This model on the inner backend (see `Model::valid`).
    pub(crate) fn to_inner(&self) -> Model<B::InnerBackend> {
        use burn::module::AutodiffModule;
        Model {
            config: self.config.clone(),
            network: self.network.valid(),
            tokenizer: self.tokenizer.clone(),
            mask_decoder: self.mask_decoder.as_ref().map(AutodiffModule::valid),
            device: self.device.clone(),
            weight_format: self.weight_format,
            source: self.source.clone(),
            warnings: self.warnings.clone(),
        }
    }
}
