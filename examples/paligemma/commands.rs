//! What each subcommand does, on whichever backend `--device` picked.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use paligemma::task::{Task, parse_detections, segmentations_from_text};
use paligemma::{Diagnostics, GenerateOptions, Generation, MaskDecoder, Model};
use serde::Deserialize;

use crate::Res;
use crate::args::{Command, GenerateArgs, ModelArgs, ObjectArgs, ParseArgs, WarmupArgs};
use crate::output::{
    self, BatchLineJson, ObjectJson, check_output, detection_annotations, report_generation,
    report_objects, save_annotated, segment_annotations,
};

pub fn run<B: Backend>(command: Command, device: &B::Device) -> Res<()> {
    match command {
        Command::Generate(args) => generate::<B>(&args, device),
        Command::Caption { common, lang } => text_task::<B>(&common, device, &Task::caption(&lang)),
        Command::Answer {
            common,
            question,
            lang,
        } => text_task::<B>(&common, device, &Task::answer(&lang, &question)),
        Command::Ocr { common } => text_task::<B>(&common, device, &Task::Ocr),
        Command::Detect(args) => objects::<B>(args, false, device),
        Command::Segment(args) => objects::<B>(args, true, device),
        Command::Parse(args) => parse::<B>(args, device),
        Command::Warmup(args) => warmup::<B>(&args, device),
        Command::Loss(args) => crate::train::loss::<B>(&args, device),
        Command::Finetune(_) => {
            Err("finetune runs on an autodiff backend; dispatched in main".into())
        }
    }
}

/// Step times are always recorded: the JSON timings carry them for benchmark scripts.
fn cli_diagnostics() -> Diagnostics {
    Diagnostics {
        step_times: true,
        ..Default::default()
    }
}

fn generate_options(args: &GenerateArgs) -> GenerateOptions {
    let mut options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        diagnostics: Diagnostics {
            ignore_eos: args.ignore_eos,
            top_logits: (args.top_logits > 0).then_some(args.top_logits),
            ..cli_diagnostics()
        },
        ..Default::default()
    };
    // As in transformers' CLI conventions, temperature 0 means greedy.
    if args.temperature != 0.0 {
        options = options.sample(args.temperature, args.seed);
        if let Some(k) = args.top_k {
            options = options.top_k(k);
        }
        if args.top_p != 1.0 {
            options = options.top_p(args.top_p);
        }
    }
    options
}

fn generate<B: Backend>(args: &GenerateArgs, device: &B::Device) -> Res<()> {
    let options = generate_options(args);
    if let Some(file) = &args.common.batch {
        return batch::<B>(args, file, &options, device);
    }
    let prompt = args.prompt.clone().unwrap_or_default();
    let (model, images, load_s) = load::<B>(&args.common, device)?;
    for _ in 0..args.warmup {
        model.generate(&images, &prompt, &options)?;
    }
    let out = if args.stream {
        let out = model.generate_stream(&images, &prompt, &options, |piece| {
            use std::io::Write;
            eprint!("{piece}");
            let _ = std::io::stderr().flush();
            std::ops::ControlFlow::Continue(())
        });
        eprintln!();
        out?
    } else {
        model.generate(&images, &prompt, &options)?
    };
    report_generation(&out, load_s, args.common.json)
}

/// caption, answer, ocr: the task's prompt with its default budget.
fn text_task<B: Backend>(args: &ModelArgs, device: &B::Device, task: &Task) -> Res<()> {
    let (model, images, load_s) = load::<B>(args, device)?;
    let options = GenerateOptions {
        max_new_tokens: task.default_max_new_tokens(),
        diagnostics: cli_diagnostics(),
        ..Default::default()
    };
    let out: Generation = model.run_task(&images, task, &options)?;
    report_generation(&out, load_s, args.json)
}

/// A checkpoint directory, or the embedded demo model for the literal `demo` (a
/// directory of that name is `./demo`).
pub fn open_model<B: Backend>(
    path: &Path,
    device: &B::Device,
    options: &paligemma::LoadOptions,
) -> paligemma::Result<Model<B>> {
    let model = if path.as_os_str() == "demo" {
        Model::<B>::demo_with(device, options)?
    } else {
        Model::<B>::from_pretrained_with(path, device, options)?
    };
    for warning in model.warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(model)
}

/// An image file; what `load_image_checked` warns about goes to stderr.
fn load_image(path: impl AsRef<std::path::Path>) -> paligemma::Result<image::DynamicImage> {
    let (image, warnings) = paligemma::load_image_checked(path)?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    Ok(image)
}

/// The images of `--image` (repeatable) or `--frames`, then the model.
fn load<B: Backend>(
    args: &ModelArgs,
    device: &B::Device,
) -> Res<(Model<B>, Vec<image::DynamicImage>, f64)> {
    let images = match &args.frames {
        Some(dir) => paligemma::load_frames(dir, args.max_frames)?,
        None if args.images.is_empty() => return Err("--image or --frames is required".into()),
        None => args
            .images
            .iter()
            .map(load_image)
            .collect::<paligemma::Result<_>>()?,
    };
    let start = Instant::now();
    let model = open_model::<B>(&args.model, device, &args.load)?;
    Ok((model, images, start.elapsed().as_secs_f64()))
}

/// One line of a batch file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    image: Option<PathBuf>,
    images: Option<Vec<PathBuf>>,
    prompt: String,
}

impl BatchLine {
    /// The line's image files, in order.
    fn files(&self) -> Result<Vec<PathBuf>, String> {
        match (&self.image, &self.images) {
            (Some(one), None) => Ok(vec![one.clone()]),
            (None, Some(several)) if !several.is_empty() => Ok(several.clone()),
            _ => Err("give \"image\" or a non-empty \"images\"".into()),
        }
    }
}

/// `generate --batch FILE.jsonl`: one JSON line out per input line, in input order,
/// each with its line number. Lines are read, checked and their images decoded one
/// batch at a time, after the model is loaded, so memory holds one batch's images. A
/// line that cannot be read (bad JSON, a missing or undecodable image) or whose
/// generation fails gets an `"error"` line and the others go on; when a batch fails,
/// its rows run one by one, so one bad row costs no valid results. The exit status is
/// an error when any line failed.
fn batch<B: Backend>(
    args: &GenerateArgs,
    file: &Path,
    options: &GenerateOptions,
    device: &B::Device,
) -> Res<()> {
    use std::io::IsTerminal;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| (n + 1, l))
        .collect();
    let model = open_model::<B>(&args.common.model, device, &args.common.load)?;
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    if args.common.json && !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = Instant::now();
    let mut failed = 0usize;
    let mut images = 0usize;
    let mut report = |n: usize, result: Result<(&Job, &Generation), String>| -> Res<()> {
        let line = match result {
            Ok((job, out)) => BatchLineJson::result(n, &job.prompt, &job.files, out),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}:{n}: {e}", file.display());
                BatchLineJson::error(n, e)
            }
        };
        println!("{}", serde_json::to_string(&line)?);
        Ok(())
    };
    for chunk in lines.chunks(args.batch_size.max(1)) {
        let jobs: Vec<(usize, Result<Job, String>)> = chunk
            .iter()
            .map(|&(n, line)| (n, Job::read(line)))
            .collect();
        let valid: Vec<&Job> = jobs.iter().filter_map(|(_, j)| j.as_ref().ok()).collect();
        images += valid.iter().map(|j| j.images.len()).sum::<usize>();
        let inputs: Vec<(&[image::DynamicImage], &str)> = valid
            .iter()
            .map(|j| (j.images.as_slice(), j.prompt.as_str()))
            .collect();
        let mut outs = match model.generate_batch(&inputs, options) {
            Ok(outs) => outs.into_iter().map(Ok).collect::<Vec<_>>(),
            // One row's failure must not cost the others: run them alone.
            Err(_) => inputs
                .iter()
                .map(|(images, prompt)| {
                    model
                        .generate(*images, prompt, options)
                        .map_err(|e| e.to_string())
                })
                .collect(),
        }
        .into_iter();
        for (n, job) in &jobs {
            match job {
                Ok(job) => {
                    let out = outs.next().unwrap_or_else(|| Err("no result".into()));
                    report(*n, out.as_ref().map(|o| (job, o)).map_err(Clone::clone))?;
                }
                Err(e) => report(*n, Err(e.clone()))?,
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    // Scripts read the first number after the last "(" (with one image per line,
    // prompts/s and the earlier images/s are the same figure).
    eprintln!(
        "{} prompts ({images} images) in {secs:.2}s ({:.2} prompts/s, {:.2} images/s)",
        lines.len(),
        lines.len() as f64 / secs,
        images as f64 / secs
    );
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of {} lines failed", lines.len()).into()),
    }
}

/// One line of a batch file, read and its images decoded.
struct Job {
    prompt: String,
    files: Vec<PathBuf>,
    images: Vec<image::DynamicImage>,
}

impl Job {
    fn read(line: &str) -> Result<Job, String> {
        let line: BatchLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let files = line.files()?;
        let images = files
            .iter()
            .map(load_image)
            .collect::<paligemma::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        Ok(Job {
            prompt: line.prompt,
            files,
            images,
        })
    }
}

/// detect, segment: the typed object tasks.
fn objects<B: Backend>(args: ObjectArgs, segment: bool, device: &B::Device) -> Res<()> {
    if let Some(path) = &args.out {
        check_output(path)?;
    }
    let (mut model, mut images, load_s) = load::<B>(&args.common, device)?;
    if images.len() != 1 {
        return Err(format!(
            "detect and segment take one image, not {}: boxes are in one image's pixels",
            images.len()
        )
        .into());
    }
    let image = images.remove(0);
    if let Some(vae) = &args.vae {
        model = model.with_mask_decoder(vae)?;
    }
    let task = match segment {
        true => Task::segment(&args.objects),
        false => Task::detect(&args.objects),
    };
    let options = GenerateOptions {
        max_new_tokens: args
            .max_new_tokens
            .unwrap_or_else(|| task.default_max_new_tokens()),
        diagnostics: cli_diagnostics(),
        ..Default::default()
    };
    if segment {
        let out = model.segment_with(&image, &args.objects, &options)?;
        if let Some(path) = &args.out {
            save_annotated(&image, path, &segment_annotations(&out.objects))?;
        }
        let list = out.objects.iter().map(ObjectJson::segmentation).collect();
        report_objects(
            list,
            &out.skipped,
            Some((&out.generation, load_s)),
            args.common.json,
        )
    } else {
        let out = model.detect_with(&image, &args.objects, &options)?;
        if let Some(path) = &args.out {
            save_annotated(&image, path, &detection_annotations(&out.objects))?;
        }
        let list = out.objects.iter().map(ObjectJson::detection).collect();
        report_objects(
            list,
            &out.skipped,
            Some((&out.generation, load_s)),
            args.common.json,
        )
    }
}

/// warmup: run the prompt shapes of the tasks at each batch size, `passes` times, and
/// time them; the first pass compiles and tunes the kernels (into the cache, with
/// `--gpu-cache`), later ones show the warm in-process times.
fn warmup<B: Backend>(args: &WarmupArgs, device: &B::Device) -> Res<()> {
    let start = Instant::now();
    let model = open_model::<B>(&args.model, device, &args.load)?;
    eprintln!("loaded in {:.2} s", start.elapsed().as_secs_f64());
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let (Some(kernels), _) = paligemma::gpu_cache_dirs() {
        eprintln!("kernel and autotune cache: {}", kernels.display());
    }
    let size = model.config().vision.image_size as u32;
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        size,
        size,
        image::Rgb([128, 128, 128]),
    ));
    // Prompts of the lengths the tasks use: short, a question, several objects.
    let prompts = [
        "caption en",
        "answer en what is in the image?",
        "detect cat ; dog ; person",
    ];
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens.max(1),
        diagnostics: Diagnostics {
            ignore_eos: true,
            ..cli_diagnostics()
        },
        ..Default::default()
    };
    for pass in 1..=args.passes.max(1) {
        for &batch in &args.batch_sizes {
            for prompt in prompts {
                let rows: Vec<(&image::DynamicImage, &str)> = vec![(&image, prompt); batch.max(1)];
                let t = Instant::now();
                let out = model.generate_batch(&rows, &options)?;
                let first = out.first().map_or(0.0, |g| g.timings.prefill_s);
                println!(
                    "pass {pass}  batch {batch:>3}  {prompt:<32} first token {first:>8.3} s  all {:>8.3} s",
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(())
}

/// parse: an output given as text, without a model.
fn parse<B: Backend>(args: ParseArgs, device: &B::Device) -> Res<()> {
    if let Some(path) = &args.out {
        check_output(path)?;
    }
    let image = match (&args.image, &args.out) {
        (Some(image), Some(_)) => Some(load_image(image)?),
        _ => None,
    };
    let annotate = |notes: &[crate::draw::Annotation<'_>]| -> Res<()> {
        match (&image, &args.out) {
            (Some(image), Some(path)) => save_annotated(image, path, notes),
            _ => Ok(()),
        }
    };
    if args.prompt.trim_start().starts_with("segment") {
        let vae = args
            .vae
            .as_ref()
            .ok_or("parsing a segmentation output needs --vae vae-oid.npz")?;
        let decoder = MaskDecoder::<B>::from_npz(vae, device)?;
        let (objects, skipped) =
            segmentations_from_text(&args.text, args.width, args.height, &decoder)?;
        annotate(&segment_annotations(&objects))?;
        let list = objects.iter().map(ObjectJson::segmentation).collect();
        output::report_objects(list, &skipped, None, args.json)
    } else {
        let out = parse_detections(&args.text, args.width, args.height);
        annotate(&detection_annotations(&out.objects))?;
        let list = out.objects.iter().map(ObjectJson::detection).collect();
        output::report_objects(list, &out.skipped, None, args.json)
    }
}
