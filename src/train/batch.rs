//! Training examples and the model inputs they become, exactly as transformers'
//! `PaliGemmaProcessor(text=prefix, images=image, suffix=suffix, padding="longest")`
//! builds them: `<image>` x N per image, `<bos>`, prefix, `\n` (token type 0), then the suffix
//! and `<eos>` (type 1, the only labelled tokens), padded on the tokenizer's
//! `padding_side` (Gemma's default: left).

use burn::tensor::{Tensor, TensorData, backend::Backend};
use image::DynamicImage;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::preprocess::preprocess_image;
use crate::tokenizer::PaddingSide;

/// One training example: its image (or images), the prompt it answers and the target
/// output.
#[derive(Debug, Clone)]
pub struct Example {
    /// The images in prompt order; one for most tasks.
    pub images: Vec<DynamicImage>,
    /// The prompt, e.g. `"caption en"`.
    pub prefix: String,
    /// What the model should answer, e.g. `"a red circle"`; `<eos>` is appended.
    pub suffix: String,
}

impl Example {
    /// An example about one image.
    pub fn new(image: DynamicImage, prefix: impl Into<String>, suffix: impl Into<String>) -> Self {
        Example::with_images(vec![image], prefix, suffix)
    }

    /// An example about several images (each its own block of image tokens, in order).
    pub fn with_images(
        images: Vec<DynamicImage>,
        prefix: impl Into<String>,
        suffix: impl Into<String>,
    ) -> Self {
        Example {
            images,
            prefix: prefix.into(),
            suffix: suffix.into(),
        }
    }
}

/// A batch of examples as model inputs, padded to the longest row on the tokenizer's
/// padding side.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[rows][width]` token ids, padded with `<pad>`.
    pub input_ids: Vec<Vec<u32>>,
    /// `[rows][width]`: 0 for the image, `<bos>`, prefix, `\n` and padding; 1 for the
    /// suffix and its `<eos>`.
    pub token_type_ids: Vec<Vec<u8>>,
    /// `[rows][width]`: the token each position must produce, only on the suffix and
    /// its `<eos>` (transformers writes -100 elsewhere).
    pub labels: Vec<Vec<Option<u32>>>,
    /// Real (unpadded) tokens per row.
    pub lengths: Vec<usize>,
    /// Padding before each row's first token (0 when padding on the right).
    pub left_padding: Vec<usize>,
    /// Tokens of each row's bidirectional prefix (image, `<bos>`, prefix, `\n`).
    pub prefix_lengths: Vec<usize>,
    /// Images of each row.
    pub images_per_row: Vec<usize>,
    /// `[images, 3, size, size]` normalised pixels of every row's images in order.
    pixels: Vec<f32>,
    image_size: usize,
}

impl Batch {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the batch has no examples (never true for a built batch).
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Tokens per padded row.
    pub fn width(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    /// Tokens that carry a loss: each row's suffix and `<eos>`.
    pub fn supervised_tokens(&self) -> usize {
        self.labels.iter().flatten().filter(|l| l.is_some()).count()
    }

    /// The pixels of every row's images, in order, as an `[images, 3, size, size]`
    /// tensor (`images` is the sum of [`Batch::images_per_row`]).
    pub fn pixels<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        let images = self.images_per_row.iter().sum::<usize>();
        self.pixels_of(0..images, device)
    }

    /// The pixels of images `range` (in batch order) as `[range.len(), 3, size, size]`.
    pub(crate) fn pixels_of<B: Backend>(
        &self,
        range: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Tensor<B, 4> {
        let s = self.image_size;
        let per = 3 * s * s;
        let values = self.pixels[range.start * per..range.end * per].to_vec();
        Tensor::from_data(TensorData::new(values, [range.len(), 3, s, s]), device)
    }

    /// The normalised pixels of image `i` (in batch order).
    pub(crate) fn image_pixels(&self, i: usize) -> &[f32] {
        let per = 3 * self.image_size * self.image_size;
        &self.pixels[i * per..(i + 1) * per]
    }
}

impl<B: Backend> Model<B> {
    /// Turn examples into a training batch. Errors name the example: no image, an
    /// image that cannot be preprocessed, a prompt or suffix with `<image>` tokens, or
    /// a row longer than the model's context.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// use paligemma::{Model, backend::Cpu, train::Example};
    /// let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let batch = model.training_batch(&[
    ///     Example::new(image.clone(), "caption en", "a photo"),
    ///     Example::new(image, "answer en how many?", "2"),
    /// ])?;
    /// assert_eq!(batch.len(), 2);
    /// // Labels are the suffix and <eos> only.
    /// assert!(batch.labels[1].iter().rev().find_map(|l| *l) == Some(model.tokenizer().eos_id));
    /// # Ok(()) }
    /// ```
    pub fn training_batch(&self, examples: &[Example]) -> Result<Batch> {
        if examples.is_empty() {
            return Err(Error::Prompt(
                "a training batch needs at least one example".into(),
            ));
        }
        let context = self.config().text.max_position_embeddings;
        let size = self.config().vision.image_size;
        let tokenizer = self.tokenizer();
        let mut rows = Vec::with_capacity(examples.len());
        let mut pixels = Vec::with_capacity(examples.len() * 3 * size * size);
        for (i, ex) in examples.iter().enumerate() {
            let at = |e: Error| Error::Prompt(format!("training example {i}: {e}"));
            let prompt = self
                .prompt_ids_with_images(&ex.prefix, ex.images.len())
                .map_err(at)?;
            let suffix = tokenizer.suffix_ids(&ex.suffix).map_err(at)?;
            if prompt.len() + suffix.len() > context {
                return Err(Error::Prompt(format!(
                    "training example {i}: {} prompt and {} suffix tokens exceed the model's context of {context}",
                    prompt.len(),
                    suffix.len()
                )));
            }
            for image in &ex.images {
                pixels.extend(preprocess_image(image, size).map_err(at)?);
            }
            rows.push((prompt, suffix));
        }
        let width = rows
            .iter()
            .map(|(p, s)| p.len() + s.len())
            .max()
            .unwrap_or(0);
        let pad = tokenizer.padding_id();
        let mut batch = Batch {
            input_ids: Vec::with_capacity(rows.len()),
            token_type_ids: Vec::with_capacity(rows.len()),
            labels: Vec::with_capacity(rows.len()),
            lengths: Vec::with_capacity(rows.len()),
            left_padding: Vec::with_capacity(rows.len()),
            prefix_lengths: Vec::with_capacity(rows.len()),
            images_per_row: examples.iter().map(|e| e.images.len()).collect(),
            pixels,
            image_size: size,
        };
        for (prompt, suffix) in rows {
            let len = prompt.len() + suffix.len();
            let left = match tokenizer.padding_side {
                PaddingSide::Left => width - len,
                PaddingSide::Right => 0,
            };
            let mut ids = vec![pad; left];
            ids.extend(&prompt);
            ids.extend(&suffix);
            ids.resize(width, pad);
            let targets = left + prompt.len()..left + len;
            let mut types = vec![0u8; width];
            types[targets.clone()].fill(1);
            let labels = (0..width)
                .map(|i| targets.contains(&i).then(|| ids[i]))
                .collect();
            batch.input_ids.push(ids);
            batch.token_type_ids.push(types);
            batch.labels.push(labels);
            batch.lengths.push(len);
            batch.left_padding.push(left);
            batch.prefix_lengths.push(prompt.len());
        }
        Ok(batch)
    }
}
