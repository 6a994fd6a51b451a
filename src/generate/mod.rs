//! Generation on [`Model`]: one prompt, a stream, a batch, or prompts about an image
//! encoded once. The options are in [`options`](self::GenerateOptions), token choice in
//! `sampling`, streaming in `stream`, and the loop itself in `batch`.

mod batch;
mod options;
mod output;
mod sampling;
mod stream;

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::backend::Backend;
use image::DynamicImage;

pub use options::{Diagnostics, GenerateOptions, Sampling};
pub use output::{FinishReason, Generation, Timings};

use crate::error::{Error, Result};
use crate::model::{ImageEmbedding, Model};
use stream::TextSink;

impl<B: Backend> Model<B> {
    /// Generate a continuation of `prompt` about `image`.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// use paligemma::{GenerateOptions, Model, backend::Cpu};
    /// let device = Default::default();
    /// let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &device)?;
    /// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let out = model.generate(&image, "caption en", &GenerateOptions::default().max_new_tokens(8))?;
    /// assert!(!out.generated_ids.is_empty() && out.generated_ids.len() <= 8);
    /// # Ok(()) }
    /// ```
    pub fn generate(
        &self,
        image: &DynamicImage,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation> {
        options.validate()?;
        let start = Instant::now();
        let embedding = self.encode_image(image)?;
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
        image: &DynamicImage,
        prompt: &str,
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        options.validate()?;
        let start = Instant::now();
        let embedding = self.encode_image(image)?;
        self.generate_one(
            &embedding,
            prompt,
            options,
            start,
            Some(&mut |_, t| on_text(t)),
        )
    }

    /// Generate from an image embedding computed earlier with [`Model::encode_image`]:
    /// several prompts about one image cost one vision pass.
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

    /// Generate for several (image, prompt) pairs in one forward pass per step.
    /// Results come back in input order; greedy results equal one-by-one generation.
    pub fn generate_batch(
        &self,
        inputs: &[(&DynamicImage, &str)],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>> {
        options.validate()?;
        let start = Instant::now();
        let embeddings = inputs
            .iter()
            .map(|(image, _)| self.encode_image(image))
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<(&ImageEmbedding<B>, &str)> = embeddings
            .iter()
            .zip(inputs)
            .map(|(e, (_, p))| (e, *p))
            .collect();
        self.generate_rows(&pairs, options, start, None)
    }
}
