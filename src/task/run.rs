//! The typed task methods on [`Model`]: caption, describe, answer, OCR, detect, segment.
//!
//! Each builds the trained prompt ([`Task`]), generates greedily with the task's budget
//! ([`Task::default_max_new_tokens`]) and turns the output into typed results, with
//! boxes and masks in pixels of the original image. Detection and segmentation share
//! one path, [`Model::object_task`], and differ only in how the text becomes objects.
//!
//! Captions, descriptions, answers, questions and OCR take one image or several
//! ([`Images`], e.g. the frames of a short video). Detection and segmentation take one:
//! boxes are in the coordinates of one image, and nothing in a PaliGemma output says
//! which of several images a box belongs to.

use burn::tensor::backend::Backend;
use image::DynamicImage;

use super::objects::{Detection, Segmentation, Skipped};
use super::parse::{parse_detections, parse_segmentations};
use super::prompt::Task;
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Generation};
use crate::images::Images;
use crate::model::Model;
use crate::segmentation::{MaskDecoder, paste_mask};

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

impl<B: Backend> Model<B> {
    /// Run a task with explicit generation options and return the raw generation.
    /// Detection and segmentation tasks with more than one image are refused (see the
    /// module documentation).
    pub fn run_task(
        &self,
        images: &(impl Images + ?Sized),
        task: &Task,
        options: &GenerateOptions,
    ) -> Result<Generation> {
        let count = images.images().len();
        if count > 1 && matches!(task, Task::Detect { .. } | Task::Segment { .. }) {
            return Err(Error::Prompt(format!(
                "detection and segmentation take one image, not {count}: boxes are in one \
                 image's coordinates and the output does not say which image they are in"
            )));
        }
        self.generate(images, &task.prompt()?, options)
    }

    /// Run a task greedily with its default budget and return the text.
    fn task_text(&self, images: &(impl Images + ?Sized), task: &Task) -> Result<String> {
        let options = GenerateOptions::default().max_new_tokens(task.default_max_new_tokens());
        Ok(self.run_task(images, task, &options)?.text)
    }

    /// A short caption in language `lang` (`"en"`, `"de"`, ...), of one image or of
    /// several.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let caption: String = model.caption(&image, "en")?;
    /// let frames = paligemma::load_frames("tests/fixtures/images", Some(3))?;
    /// let of_the_clip: String = model.caption(&frames, "en")?;
    /// # Ok(()) }
    /// ```
    pub fn caption(&self, images: &(impl Images + ?Sized), lang: &str) -> Result<String> {
        self.task_text(images, &Task::caption(lang))
    }

    /// A longer description in language `lang`.
    pub fn describe(&self, images: &(impl Images + ?Sized), lang: &str) -> Result<String> {
        self.task_text(images, &Task::describe(lang))
    }

    /// Answer a question about the image (or images), in language `lang`.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// # let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let answer = model.answer(&image, "en", "what color is the car?")?;
    /// # Ok(()) }
    /// ```
    pub fn answer(
        &self,
        images: &(impl Images + ?Sized),
        lang: &str,
        question: &str,
    ) -> Result<String> {
        self.task_text(images, &Task::answer(lang, question))
    }

    /// The text in the image (or images).
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// # let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let text = model.ocr(&image)?;
    /// # Ok(()) }
    /// ```
    pub fn ocr(&self, images: &(impl Images + ?Sized)) -> Result<String> {
        self.task_text(images, &Task::Ocr)
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
        let options = GenerateOptions::default().max_new_tokens(task.default_max_new_tokens());
        Ok(self.detect_with(image, objects, &options)?.objects)
    }

    /// Detection with explicit options, returning skipped spans and the generation too.
    pub fn detect_with<S: AsRef<str>>(
        &self,
        image: &DynamicImage,
        objects: &[S],
        options: &GenerateOptions,
    ) -> Result<TaskOutput<Detection>> {
        self.object_task(image, &Task::detect(objects), options, |text, w, h| {
            let parsed = parse_detections(text, w, h);
            Ok((parsed.objects, parsed.skipped))
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
        let options = GenerateOptions::default().max_new_tokens(task.default_max_new_tokens());
        Ok(self.segment_with(image, objects, &options)?.objects)
    }

    /// Segmentation with explicit options, returning skipped spans and the generation.
    pub fn segment_with<S: AsRef<str>>(
        &self,
        image: &DynamicImage,
        objects: &[S],
        options: &GenerateOptions,
    ) -> Result<TaskOutput<Segmentation>> {
        let decoder = self.mask_decoder().ok_or_else(|| {
            let why = self
                .warnings()
                .iter()
                .find(|w| w.starts_with("segmentation"));
            Error::MaskDecoder(why.cloned().unwrap_or_else(|| VAE_HINT.into()))
        })?;
        self.object_task(image, &Task::segment(objects), options, |text, w, h| {
            segmentations_from_text(text, w, h, decoder)
        })
    }

    /// Generate for an object task and turn the text into objects of `image`'s size.
    fn object_task<T>(
        &self,
        image: &DynamicImage,
        task: &Task,
        options: &GenerateOptions,
        objects: impl FnOnce(&str, u32, u32) -> Result<(Vec<T>, Vec<Skipped>)>,
    ) -> Result<TaskOutput<T>> {
        let generation = self.run_task(image, task, options)?;
        let (objects, skipped) = objects(&generation.text, image.width(), image.height())?;
        Ok(TaskOutput {
            objects,
            skipped,
            generation,
        })
    }
}

/// The most mask pixels [`segmentations_from_text`] allocates for one output: every
/// object's mask covers the whole image, so objects x width x height is bounded
/// (1 GiB of flags).
pub const MAX_MASK_PIXELS: u64 = 1 << 30;

/// Parse a segmentation output for a `width x height` image and decode its masks.
///
/// Each object's [`BinaryMask`](crate::BinaryMask) covers the whole image; an output
/// whose masks would together exceed [`MAX_MASK_PIXELS`] is an error before anything
/// is allocated.
pub fn segmentations_from_text<B: Backend>(
    text: &str,
    width: u32,
    height: u32,
    decoder: &MaskDecoder<B>,
) -> Result<(Vec<Segmentation>, Vec<Skipped>)> {
    let parsed = parse_segmentations(text, width, height);
    let pixels = u64::from(width) * u64::from(height);
    let total = pixels.saturating_mul(parsed.objects.len() as u64);
    if total > MAX_MASK_PIXELS {
        return Err(Error::Prompt(format!(
            "{} masks of {width}x{height} pixels exceed the limit of {MAX_MASK_PIXELS} mask pixels",
            parsed.objects.len()
        )));
    }
    // A segmentation parse gives every object its codes.
    let objects: Vec<(Detection, [u16; 16])> = parsed
        .objects
        .into_iter()
        .filter_map(|o| o.seg_codes.map(|codes| (o, codes)))
        .collect();
    let codes: Vec<[u16; 16]> = objects.iter().map(|(_, c)| *c).collect();
    let masks = decoder.masks(&codes)?;
    let segmentations = objects
        .into_iter()
        .zip(masks)
        .map(|((o, codes), mask64)| Segmentation {
            mask: paste_mask(&mask64, o.bbox.to_pixels(), width, height),
            label: o.label,
            bbox: o.bbox,
            loc: o.loc,
            codes,
            mask64,
        })
        .collect();
    Ok((segmentations, parsed.skipped))
}
