//! Command-line front end for the `paligemma` crate.
//!
//! ```text
//! paligemma generate --model DIR --image FILE --prompt TEXT [--max-new-tokens N]
//!                    [--ignore-eos] [--top-logits K] [--json]
//! paligemma caption  --model DIR --image FILE [--lang en] [--json]
//! paligemma answer   --model DIR --image FILE --question TEXT [--lang en] [--json]
//! paligemma ocr      --model DIR --image FILE [--json]
//! paligemma detect   --model DIR --image FILE --object cat [--object dog] [--out annotated.png] [--json]
//! paligemma segment  --model DIR --image FILE --object cat [--vae vae-oid.npz] [--out annotated.png] [--json]
//! paligemma parse    --prompt "detect cat" --text OUTPUT --width W --height H [--vae FILE] [--json]
//! ```

mod draw;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::backend::Backend;
use clap::{Args, Parser, Subcommand};
use paligemma::mask::MaskDecoder;
use paligemma::pipeline::segmentations_from_text;
use paligemma::task::{Skipped, Task, parse_detections};
use paligemma::{
    Dtype, GenerateOptions, Generation, LoadOptions, Model, Segmentation, WeightFormat,
};
use serde_json::{Value, json};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(name = "paligemma", about = "Run PaliGemma vision-language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Backend: cpu (burn's flex CPU backend), ndarray, wgpu or cuda[:N].
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, f16 (cpu, wgpu, cuda) or bf16 (cpu, cuda).
    #[arg(long, global = true, default_value = "f32")]
    dtype: String,
    /// Weight matrices: backend (tensors in --dtype), or bf16 / int8 in host memory
    /// multiplied by the crate's CPU kernels (CPU backends, --dtype f32).
    #[arg(long, global = true, default_value = "backend")]
    weights: String,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a raw prompt about an image.
    Generate(GenerateArgs),
    /// Caption an image ("caption {lang}").
    Caption {
        #[command(flatten)]
        common: ModelArgs,
        /// Output language.
        #[arg(long, default_value = "en")]
        lang: String,
    },
    /// Answer a question about an image ("answer {lang} {question}").
    Answer {
        #[command(flatten)]
        common: ModelArgs,
        /// The question.
        #[arg(long)]
        question: String,
        /// Language of question and answer.
        #[arg(long, default_value = "en")]
        lang: String,
    },
    /// Read the text in an image ("ocr").
    Ocr {
        #[command(flatten)]
        common: ModelArgs,
    },
    /// Detect objects ("detect a ; b"), boxes in pixels of the image.
    Detect(ObjectArgs),
    /// Segment objects ("segment a ; b"), boxes and masks.
    Segment(ObjectArgs),
    /// Parse a model output into objects without running the model.
    Parse(ParseArgs),
}

impl Command {
    /// The model arguments of commands that load a model.
    fn model_args(&mut self) -> Option<&mut ModelArgs> {
        match self {
            Command::Generate(a) => Some(&mut a.common),
            Command::Caption { common, .. }
            | Command::Answer { common, .. }
            | Command::Ocr { common } => Some(common),
            Command::Detect(a) | Command::Segment(a) => Some(&mut a.common),
            Command::Parse(_) => None,
        }
    }
}

#[derive(Args)]
struct ModelArgs {
    /// Checkpoint directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Image file (for `generate --batch`, images come from the batch file).
    #[arg(long, required_unless_present = "batch")]
    image: Option<PathBuf>,
    /// Batch file for `generate`: one {"image": .., "prompt": ..} JSON object per line.
    #[arg(long, hide = true)]
    batch: Option<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Set from the global `--dtype` and `--weights`.
    #[arg(skip)]
    load: LoadOptions,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    common: ModelArgs,
    /// The prompt, e.g. "caption en".
    #[arg(long, required_unless_present = "batch")]
    prompt: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens covering this probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print text as it is generated.
    #[arg(long)]
    stream: bool,
    /// Sequences per forward pass with --batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Keep generating past <eos> (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Record the K largest logits of each step.
    #[arg(long, default_value_t = 0)]
    top_logits: usize,
    /// Run the generation this many times before the timed one (GPU backends compile
    /// and tune their kernels on first use).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
}

#[derive(Args)]
struct ObjectArgs {
    #[command(flatten)]
    common: ModelArgs,
    /// Object class to find; repeat for several.
    #[arg(long = "object", required = true)]
    objects: Vec<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Mask decoder (vae-oid.npz), when the checkpoint directory has none.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Write the image annotated with boxes, labels and masks here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ParseArgs {
    /// The prompt the output answers ("detect ..." or "segment ...").
    #[arg(long)]
    prompt: String,
    /// The model's output text.
    #[arg(long)]
    text: String,
    /// Width of the original image.
    #[arg(long)]
    width: u32,
    /// Height of the original image.
    #[arg(long)]
    height: u32,
    /// Mask decoder for segmentation outputs.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// The original image, to draw the objects on (with --out).
    #[arg(long, requires = "out")]
    image: Option<PathBuf>,
    /// Write the annotated image here.
    #[arg(long, requires = "image")]
    out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    keep_freed_memory();
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Let glibc keep freed memory for reuse instead of returning it to the kernel: a
/// forward pass allocates and frees activations of up to tens of MB per layer, and
/// with glibc's defaults each is a fresh `mmap` whose pages fault in zeroed and whose
/// `munmap` flushes the other cores' TLBs (about a tenth of the time to first token on
/// 2 cores). A program embedding the library can do the same, or set
/// `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` / `MALLOC_TOP_PAD_`.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread
    // exists. A rejected value leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Pick the backend named by `--device`; a backend this build lacks names its feature.
fn dispatch(mut cli: Cli) -> Res<()> {
    let dtype: Dtype = cli.dtype.parse()?;
    let weights: WeightFormat = cli.weights.parse()?;
    if !weights.accelerated() {
        eprintln!(
            "warning: this CPU lacks the AVX-512 instructions of the {weights} weight kernels; \
             their portable fallback is much slower than --weights backend"
        );
    }
    if let Some(args) = cli.command.model_args() {
        args.load.dtype = dtype;
        args.load.weights = weights;
    }
    let missing = |feature: &str| -> Res<()> {
        Err(format!(
            "--device {} needs the `{feature}` feature: cargo run --release --features {feature} --example paligemma -- ...",
            cli.device
        )
        .into())
    };
    let (kind, index) = match cli.device.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>()
                .map_err(|_| format!("bad device index in {:?}", cli.device))?,
        ),
        None => (cli.device.as_str(), 0),
    };
    match kind {
        #[cfg(feature = "flex")]
        "cpu" => run::<paligemma::backend::Flex>(cli.command, &Default::default()),
        #[cfg(not(feature = "flex"))]
        "cpu" => missing("flex"),
        #[cfg(feature = "ndarray")]
        "ndarray" => run::<paligemma::backend::NdArray>(cli.command, &Default::default()),
        #[cfg(not(feature = "ndarray"))]
        "ndarray" => missing("ndarray"),
        #[cfg(feature = "wgpu")]
        "wgpu" => run::<paligemma::backend::Wgpu>(cli.command, &Default::default()),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => missing("wgpu"),
        #[cfg(feature = "cuda")]
        "cuda" => run::<paligemma::backend::Cuda>(
            cli.command,
            &burn::backend::cuda::CudaDevice::new(index),
        ),
        #[cfg(not(feature = "cuda"))]
        "cuda" => missing("cuda"),
        other => Err(format!(
            "unknown --device {other:?}: use cpu, ndarray, wgpu or cuda[:N] (index {index})"
        )
        .into()),
    }
}

fn run<B: Backend>(command: Command, device: &B::Device) -> Res<()> {
    match command {
        Command::Generate(args) => {
            let options = GenerateOptions {
                max_new_tokens: args.max_new_tokens,
                ignore_eos: args.ignore_eos,
                top_logits: args.top_logits,
                ..Default::default()
            }
            .sample(args.temperature, args.top_k, args.top_p, args.seed);
            if let Some(file) = &args.common.batch {
                return batch::<B>(&args, file, &options, device);
            }
            let prompt = args.prompt.clone().unwrap_or_default();
            let stream = args.stream;
            let warmup = args.warmup;
            text_task::<B>(&args.common, device, |m, img| {
                for _ in 0..warmup {
                    m.generate(img, &prompt, &options)?;
                }
                if !stream {
                    return m.generate(img, &prompt, &options);
                }
                let out = m.generate_stream(img, &prompt, &options, |piece| {
                    use std::io::Write;
                    eprint!("{piece}");
                    let _ = std::io::stderr().flush();
                    std::ops::ControlFlow::Continue(())
                });
                eprintln!();
                out
            })
        }
        Command::Caption { common, lang } => text_task::<B>(&common, device, |m, img| {
            m.run_task(img, &Task::caption(&lang), &GenerateOptions::default())
        }),
        Command::Answer {
            common,
            question,
            lang,
        } => text_task::<B>(&common, device, |m, img| {
            m.run_task(
                img,
                &Task::answer(&lang, &question),
                &GenerateOptions::default(),
            )
        }),
        Command::Ocr { common } => text_task::<B>(&common, device, |m, img| {
            m.run_task(
                img,
                &Task::Ocr,
                &GenerateOptions::default().max_new_tokens(256),
            )
        }),
        Command::Detect(args) => objects::<B>(args, false, device),
        Command::Segment(args) => objects::<B>(args, true, device),
        Command::Parse(args) => parse::<B>(args, device),
    }
}

fn load<B: Backend>(
    args: &ModelArgs,
    device: &B::Device,
) -> Res<(Model<B>, image::DynamicImage, f64)> {
    let path = args.image.as_ref().ok_or("--image is required")?;
    let image = paligemma::load_image(path)?;
    let start = Instant::now();
    let model = Model::<B>::from_pretrained_with(&args.model, device, &args.load)?;
    Ok((model, image, start.elapsed().as_secs_f64()))
}

/// `generate --batch FILE.jsonl`: one JSON result per input line, in input order.
fn batch<B: Backend>(
    args: &GenerateArgs,
    file: &Path,
    options: &GenerateOptions,
    device: &B::Device,
) -> Res<()> {
    use std::io::IsTerminal;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut jobs = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", file.display(), n + 1))?;
        let field = |k: &str| {
            v[k].as_str().map(str::to_string).ok_or_else(|| {
                format!("{}:{}: missing string field \"{k}\"", file.display(), n + 1)
            })
        };
        let image_path = PathBuf::from(field("image")?);
        let image = paligemma::load_image(&image_path)?;
        jobs.push((image_path, image, field("prompt")?));
    }
    let model = Model::<B>::from_pretrained_with(&args.common.model, device, &args.common.load)?;
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    if args.common.json && !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = Instant::now();
    for chunk in jobs.chunks(args.batch_size.max(1)) {
        let inputs: Vec<(&image::DynamicImage, &str)> =
            chunk.iter().map(|(_, img, p)| (img, p.as_str())).collect();
        for ((path, _, prompt), out) in chunk.iter().zip(model.generate_batch(&inputs, options)?) {
            println!(
                "{}",
                json!({"image": path, "prompt": prompt, "generated_ids": out.generated_ids, "text": out.text})
            );
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} images in {secs:.2}s ({:.2} images/s)",
        jobs.len(),
        jobs.len() as f64 / secs
    );
    Ok(())
}

fn text_task<B: Backend>(
    args: &ModelArgs,
    device: &B::Device,
    f: impl FnOnce(&Model<B>, &image::DynamicImage) -> paligemma::Result<Generation>,
) -> Res<()> {
    let (model, image, load_s) = load::<B>(args, device)?;
    let out = f(&model, &image)?;
    if args.json {
        println!("{}", generation_json(&out, load_s));
    } else {
        println!("{}", out.text);
        eprintln!(
            "load {load_s:.2}s, prefill {:.2}s, decode {:.3}s for {} tokens",
            out.timings.prefill_s, out.timings.decode_s, out.timings.tokens
        );
    }
    Ok(())
}

fn generation_json(out: &Generation, load_s: f64) -> Value {
    let top: Vec<Vec<(u32, f32)>> = out.top_logits.clone().unwrap_or_default();
    json!({
        "prompt_ids": out.prompt_ids,
        "generated_ids": out.generated_ids,
        "text": out.text,
        "top_logits": top,
        "timings": timings_json(&out.timings, load_s),
    })
}

/// The library's timings plus the load time.
fn timings_json(timings: &paligemma::Timings, load_s: f64) -> Value {
    let mut t = json!(timings);
    t["load_s"] = json!(load_s);
    t
}

fn objects<B: Backend>(args: ObjectArgs, segment: bool, device: &B::Device) -> Res<()> {
    let (mut model, image, load_s) = load::<B>(&args.common, device)?;
    if let Some(vae) = &args.vae {
        model = model.with_mask_decoder(vae)?;
    }
    let options = GenerateOptions::default().max_new_tokens(args.max_new_tokens);
    let (list, skipped, generation) = if segment {
        let out = model.segment_with(&image, &args.objects, &options)?;
        let list = out.objects.iter().map(segmentation_json).collect();
        if let Some(path) = &args.out {
            save_annotated(&image, path, &segment_annotations(&out.objects))?;
        }
        (list, out.skipped, out.generation)
    } else {
        let out = model.detect_with(&image, &args.objects, &options)?;
        let list = out
            .objects
            .iter()
            .map(|d| json!({"label": d.label, "bbox": bbox_json(&d.bbox)}))
            .collect();
        if let Some(path) = &args.out {
            let notes: Vec<_> = out
                .objects
                .iter()
                .map(|d| annotation(&d.label, &d.bbox, None))
                .collect();
            save_annotated(&image, path, &notes)?;
        }
        (list, out.skipped, out.generation)
    };
    report(
        list,
        &skipped,
        Some((&generation, load_s)),
        args.common.json,
    );
    Ok(())
}

fn parse<B: Backend>(args: ParseArgs, device: &B::Device) -> Res<()> {
    let segment = args.prompt.trim_start().starts_with("segment");
    let (list, skipped) = if segment {
        let vae = args
            .vae
            .as_ref()
            .ok_or("parsing a segmentation output needs --vae vae-oid.npz")?;
        let decoder = MaskDecoder::<B>::from_npz(vae, device)?;
        let (objects, skipped) =
            segmentations_from_text(&args.text, args.width, args.height, &decoder)?;
        if let (Some(image), Some(path)) = (&args.image, &args.out) {
            save_annotated(
                &paligemma::load_image(image)?,
                path,
                &segment_annotations(&objects),
            )?;
        }
        (objects.iter().map(segmentation_json).collect(), skipped)
    } else {
        let out = parse_detections(&args.text, args.width, args.height);
        if let (Some(image), Some(path)) = (&args.image, &args.out) {
            save_annotated(
                &paligemma::load_image(image)?,
                path,
                &detection_annotations(&out.objects),
            )?;
        }
        let list = out
            .objects
            .iter()
            .map(|o| json!({"label": o.label, "bbox": bbox_json(&o.bbox)}))
            .collect();
        (list, out.skipped)
    };
    report(list, &skipped, None, args.json);
    Ok(())
}

fn bbox_json(b: &paligemma::BoundingBox) -> Value {
    json!([b.x_min, b.y_min, b.x_max, b.y_max])
}

fn segmentation_json(s: &Segmentation) -> Value {
    let rows: Vec<&[f32]> = s.mask64.chunks(64).collect();
    json!({"label": s.label, "bbox": bbox_json(&s.bbox), "mask64": rows, "mask_area": s.mask.area()})
}

fn report(
    list: Vec<Value>,
    skipped: &[Skipped],
    generation: Option<(&Generation, f64)>,
    as_json: bool,
) {
    if as_json {
        let skipped: Vec<Value> = skipped
            .iter()
            .map(|s| json!({"text": s.text, "reason": s.reason.to_string()}))
            .collect();
        let mut out = json!({"objects": list, "skipped": skipped});
        if let Some((g, load_s)) = generation {
            out["text"] = json!(g.text);
            out["generated_ids"] = json!(g.generated_ids);
            out["timings"] = timings_json(&g.timings, load_s);
        }
        println!("{out}");
        return;
    }
    if let Some((g, _)) = generation {
        eprintln!("output: {}", g.text);
    }
    for o in &list {
        println!("{}\t{}", o["label"].as_str().unwrap_or(""), o["bbox"]);
    }
    for s in skipped {
        eprintln!("skipped {:?}: {}", s.text, s.reason);
    }
}

fn annotation<'a>(
    label: &'a str,
    b: &paligemma::BoundingBox,
    mask: Option<&'a [bool]>,
) -> draw::Annotation<'a> {
    draw::Annotation {
        bbox: (b.x_min, b.y_min, b.x_max, b.y_max),
        label,
        mask,
    }
}

fn segment_annotations(objects: &[Segmentation]) -> Vec<draw::Annotation<'_>> {
    objects
        .iter()
        .map(|s| annotation(&s.label, &s.bbox, Some(&s.mask.data)))
        .collect()
}

fn detection_annotations(objects: &[paligemma::task::ParsedObject]) -> Vec<draw::Annotation<'_>> {
    objects
        .iter()
        .map(|o| annotation(&o.label, &o.bbox, None))
        .collect()
}

fn save_annotated(
    image: &image::DynamicImage,
    path: &Path,
    notes: &[draw::Annotation<'_>],
) -> Res<()> {
    let mut canvas = image.to_rgb8();
    draw::annotate(&mut canvas, notes);
    canvas
        .save(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
