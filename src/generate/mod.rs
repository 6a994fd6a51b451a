//! Generation on [`Model`]: one prompt, a stream, a batch, or prompts about images
//! encoded once. Every prompt has one image or several ([`Images`]). The options are in [`options`](self::GenerateOptions), token choice in
//! `sampling`, streaming in `stream`, and the loop itself in `batch`.

mod batch;
pub mod continuous;
mod options;
mod output;
mod row;
mod sampling;
mod stream;

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::backend::Backend;

pub use options::{Diagnostics, GenerateOptions, Sampling};
pub use output::{FinishReason, Generation, Timings};

use crate::error::{Error, Result};
use crate::images::Images;
use crate::model::{ImageEmbedding, Model};
use stream::TextSink;

impl<B: Backend> Model<B> {
    /// Generate a continuation of `prompt` about one image or several (in order, each
    /// its own block of image tokens, as transformers' processor lays out a list of
    /// images).
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// use paligemma::{GenerateOptions, Model, backend::Cpu};
    /// let device = Default::default();
    /// let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &device)?;
    /// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let out = model.generate(&image, "caption en", &GenerateOptions::default().max_new_tokens(8))?;
    /// assert!(!out.generated_ids.is_empty() && out.generated_ids.len() <= 8);
    ///
    /// // Two frames of a video: both are in the prompt, in order.
    /// let next = paligemma::load_image("tests/fixtures/images/big.png")?;
    /// let out = model.generate(&[&image, &next], "caption en", &GenerateOptions::default())?;
    /// assert_eq!(out.prompt_ids.len(), 2 * model.config().num_image_tokens() + 4);
    /// # Ok(()) }
    /// ```
    pub fn generate(
        &self,
        images: &(impl Images + ?Sized),
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation> {
        options.validate()?;
        let start = Instant::now();
        let embedding = self.encode_images(images)?;
        self.generate_one(&embedding, prompt, options, start, None)
    }

    /// Generate, calling `on_text` with each new piece of text as soon as it is final
    /// (never half a UTF-8 character, never the start of a stop string that may still
    /// complete). Return `ControlFlow::Break(())` to stop early. The pieces concatenate
    /// to the returned text.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{GenerateOptions, Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// # let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// use std::ops::ControlFlow;
    /// let mut shown = String::new();
    /// let out = model.generate_stream(&image, "caption en", &GenerateOptions::default(), |piece| {
    ///     shown.push_str(piece);
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!(shown, out.text);
    /// # Ok(()) }
    /// ```
    pub fn generate_stream(
        &self,
        images: &(impl Images + ?Sized),
        prompt: &str,
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        options.validate()?;
        let start = Instant::now();
        let embedding = self.encode_images(images)?;
        self.generate_one(
            &embedding,
            prompt,
            options,
            start,
            Some(&mut |_, t| on_text(t)),
        )
    }

    /// Generate from an image embedding computed earlier with [`Model::encode_image`]
    /// or [`Model::encode_images`]: several prompts about the same images cost one
    /// vision pass.
    pub fn generate_with_embedding(
        &self,
        embedding: &ImageEmbedding<B>,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation> {
        options.validate()?;
        self.generate_one(embedding, prompt, options, Instant::now(), None)
    }

    fn generate_one(
        &self,
        embedding: &ImageEmbedding<B>,
        prompt: &str,
        options: &GenerateOptions,
        start: Instant,
        on_text: Option<TextSink<'_>>,
    ) -> Result<Generation> {
        let mut out = self.generate_rows(&[(embedding, prompt)], options, start, on_text)?;
        // One input row gives one result.
        out.pop()
            .ok_or_else(|| Error::Prompt("no generation produced".into()))
    }

    /// Generate for several (images, prompt) pairs in one forward pass per step; rows
    /// may have different numbers of images. Results come back in input order; greedy
    /// results equal one-by-one generation.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{GenerateOptions, Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// let a = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let b = paligemma::load_image("tests/fixtures/images/gray.png")?;
    /// let rows: [(&[&_], &str); 2] = [(&[&a], "caption en"), (&[&a, &b], "answer en what is this?")];
    /// let out = model.generate_batch(&rows, &GenerateOptions::default().max_new_tokens(4))?;
    /// assert_eq!(out.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn generate_batch<I: Images + ?Sized>(
        &self,
        inputs: &[(&I, &str)],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>> {
        options.validate()?;
        let start = Instant::now();
        let embeddings = inputs
            .iter()
            .map(|(images, _)| self.encode_images(*images))
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<(&ImageEmbedding<B>, &str)> = embeddings
            .iter()
            .zip(inputs)
            .map(|(e, (_, p))| (e, *p))
            .collect();
        self.generate_rows(&pairs, options, start, None)
    }
}
