//! Typed task methods on [`Model`]: caption, describe, answer, OCR, detect, segment.
//!
//! Each builds the trained prompt ([`Task`]), generates greedily and turns the output
//! into typed results, with boxes and masks in pixels of the original image.

use std::path::Path;

use burn::tensor::backend::Backend;
use image::DynamicImage;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Generation};
use crate::mask::{BinaryMask, MaskDecoder, paste_mask};
use crate::model::Model;
use crate::task::{BoundingBox, Skipped, Task, parse_detections, parse_segmentations};

/// A detected object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// The label the model wrote.
    pub label: String,
    /// The box in pixels of the original image.
    pub bbox: BoundingBox,
}

/// A segmented object.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// The label the model wrote.
    pub label: String,
    /// The box in pixels of the original image.
    pub bbox: BoundingBox,
    /// Binary mask over the whole original image, pasted as big_vision's evaluator does.
    pub mask: BinaryMask,
    /// The decoder's soft 64 x 64 output (row-major, nominally in [-1, 1]).
    pub mask64: Vec<f32>,
}

/// Objects of a detection or segmentation task, with everything else the model said.
#[derive(Debug, Clone)]
pub struct TaskOutput<T> {
    /// Valid objects in output order.
    pub objects: Vec<T>,
    /// Output spans that did not form valid objects, and why.
    pub skipped: Vec<Skipped>,
    /// The raw generation (ids, text, timings).
    pub generation: Generation,
}

/// Where the segmentation decoder comes from, for error messages.
const VAE_HINT: &str = "segmentation needs the VQ-VAE mask decoder vae-oid.npz (distributed \
    with big_vision's PaliGemma release and the Hugging Face PaliGemma demo space): put it \
    in the checkpoint directory or call Model::with_mask_decoder";

/// Default generation budget per task: room for several objects or a long answer.
fn budget(task: &Task) -> usize {
    match task {
        Task::Caption { .. } | Task::Answer { .. } | Task::Question { .. } => 64,
        Task::Describe { .. } | Task::Ocr | Task::Detect { .. } => 256,
        Task::Segment { objects } => (24 * objects.len() + 8).clamp(64, 512),
    }
}

impl<B: Backend> Model<B> {
    /// Load the segmentation decoder from a `vae-oid.npz` file.
    pub fn with_mask_decoder(mut self, path: impl AsRef<Path>) -> Result<Self> {
        self.mask_decoder = Some(MaskDecoder::from_npz(path, &self.device)?);
        Ok(self)
    }

    /// The segmentation decoder, when one is loaded.
    pub fn mask_decoder(&self) -> Option<&MaskDecoder<B>> {
        self.mask_decoder.as_ref()
    }

    /// Run a task with explicit generation options and return the raw generation.
    pub fn run_task(
        &self,
        image: &DynamicImage,
        task: &Task,
        options: &GenerateOptions,
    ) -> Result<Generation> {
        self.generate(image, &task.prompt()?, options)
    }

    fn run_default(&self, image: &DynamicImage, task: &Task) -> Result<Generation> {
        let options = GenerateOptions::default().max_new_tokens(budget(task));
        self.run_task(image, task, &options)
    }

    /// A short caption in language `lang` (`"en"`, `"de"`, ...).
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let caption: String = model.caption(&image, "en")?;
    /// # Ok(()) }
    /// ```
    pub fn caption(&self, image: &DynamicImage, lang: &str) -> Result<String> {
        Ok(self.run_default(image, &Task::caption(lang))?.text)
    }

    /// A longer description in language `lang`.
    pub fn describe(&self, image: &DynamicImage, lang: &str) -> Result<String> {
        let task = Task::Describe { lang: lang.into() };
        Ok(self.run_default(image, &task)?.text)
    }

    /// Answer a question about the image, in language `lang`.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// # let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let answer = model.answer(&image, "en", "what color is the car?")?;
    /// # Ok(()) }
    /// ```
    pub fn answer(&self, image: &DynamicImage, lang: &str, question: &str) -> Result<String> {
        Ok(self.run_default(image, &Task::answer(lang, question))?.text)
    }

    /// The text in the image.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// # let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let text = model.ocr(&image)?;
    /// # Ok(()) }
    /// ```
    pub fn ocr(&self, image: &DynamicImage) -> Result<String> {
        Ok(self.run_default(image, &Task::Ocr)?.text)
    }

    /// Boxes of one object class, in pixels of `image`.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// # let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// for cat in model.detect(&image, "cat")? {
    ///     println!("{} at {:?}", cat.label, cat.bbox);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn detect(&self, image: &DynamicImage, object: &str) -> Result<Vec<Detection>> {
        self.detect_many(image, &[object])
    }

    /// Boxes of several object classes at once (`detect a ; b`).
    pub fn detect_many<S: AsRef<str>>(
        &self,
        image: &DynamicImage,
        objects: &[S],
    ) -> Result<Vec<Detection>> {
        let task = Task::detect(objects);
        let options = GenerateOptions::default().max_new_tokens(budget(&task));
        Ok(self.detect_with(image, objects, &options)?.objects)
    }

    /// Detection with explicit options, returning skipped spans and the generation too.
    pub fn detect_with<S: AsRef<str>>(
        &self,
        image: &DynamicImage,
        objects: &[S],
        options: &GenerateOptions,
    ) -> Result<TaskOutput<Detection>> {
        let generation = self.run_task(image, &Task::detect(objects), options)?;
        let parsed = parse_detections(&generation.text, image.width(), image.height());
        Ok(TaskOutput {
            objects: parsed
                .objects
                .into_iter()
                .map(|o| Detection {
                    label: o.label,
                    bbox: o.bbox,
                })
                .collect(),
            skipped: parsed.skipped,
            generation,
        })
    }

    /// Boxes and masks of one object class; needs the mask decoder.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?
    ///     .with_mask_decoder("tests/fixtures/vae/vae-oid-random.npz")?;
    /// # let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// for cat in model.segment(&image, "cat")? {
    ///     println!("{}: {} pixels", cat.label, cat.mask.area());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn segment(&self, image: &DynamicImage, object: &str) -> Result<Vec<Segmentation>> {
        self.segment_many(image, &[object])
    }

    /// Boxes and masks of several object classes at once.
    pub fn segment_many<S: AsRef<str>>(
        &self,
        image: &DynamicImage,
        objects: &[S],
    ) -> Result<Vec<Segmentation>> {
        let task = Task::segment(objects);
        let options = GenerateOptions::default().max_new_tokens(budget(&task));
        Ok(self.segment_with(image, objects, &options)?.objects)
    }

    /// Segmentation with explicit options, returning skipped spans and the generation.
    pub fn segment_with<S: AsRef<str>>(
        &self,
        image: &DynamicImage,
        objects: &[S],
        options: &GenerateOptions,
    ) -> Result<TaskOutput<Segmentation>> {
        let decoder = self
            .mask_decoder
            .as_ref()
            .ok_or_else(|| Error::MaskDecoder(VAE_HINT.into()))?;
        let task = Task::segment(objects);
        task.prompt()?;
        let generation = self.run_task(image, &task, options)?;
        let (objects, skipped) =
            segmentations_from_text(&generation.text, image.width(), image.height(), decoder)?;
        Ok(TaskOutput {
            objects,
            skipped,
            generation,
        })
    }
}

/// big_vision's evaluator box in whole pixels, `int(v / 1023 * size)`, from raw
/// `<loc>` values (y_min, x_min, y_max, x_max), computed in f64 as Python does.
fn pixel_box(loc: [u16; 4], width: u32, height: u32) -> (u32, u32, u32, u32) {
    let px = |v: u16, size: u32| (f64::from(v) / 1023.0 * f64::from(size)) as u32;
    (
        px(loc[1], width),
        px(loc[0], height),
        px(loc[3], width),
        px(loc[2], height),
    )
}

/// Parse a segmentation output and decode its masks for a `width x height` image.
pub fn segmentations_from_text<B: Backend>(
    text: &str,
    width: u32,
    height: u32,
    decoder: &MaskDecoder<B>,
) -> Result<(Vec<Segmentation>, Vec<Skipped>)> {
    let parsed = parse_segmentations(text, width, height);
    let codes: Vec<[u16; 16]> = parsed.objects.iter().filter_map(|o| o.seg_codes).collect();
    let masks = decoder.decode_to_vec(&codes)?;
    let objects = parsed
        .objects
        .into_iter()
        .zip(masks)
        .map(|(o, mask64)| Segmentation {
            mask: paste_mask(&mask64, pixel_box(o.loc, width, height), width, height),
            label: o.label,
            bbox: o.bbox,
            mask64,
        })
        .collect();
    Ok((objects, parsed.skipped))
}
