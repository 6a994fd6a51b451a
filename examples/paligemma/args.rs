//! Command-line arguments: every subcommand, flag and default of the CLI.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use paligemma::{Dtype, LoadOptions, WeightFormat};

#[derive(Parser)]
#[command(name = "paligemma", about = "Run PaliGemma vision-language models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Backend: cpu (burn's flex CPU backend), ndarray, wgpu or cuda[:N].
    #[arg(long, global = true, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// Compute dtype: f32, f16 (cpu, wgpu, cuda) or bf16 (cpu, cuda).
    #[arg(long, global = true, value_enum, ignore_case = true, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// Weight matrices: auto (host weights in the checkpoint's precision on a CPU with
    /// AVX2 or AVX-512 and --dtype f32, backend tensors elsewhere), backend (tensors in
    /// --dtype), or f32 / bf16 / int8 / int4 in host memory multiplied by the crate's
    /// CPU kernels (CPU backends, --dtype f32).
    #[arg(long, global = true, value_enum, ignore_case = true, default_value_t = WeightsArg::Auto)]
    pub weights: WeightsArg,
    /// GPU backends: keep compiled kernels and autotune results in this directory
    /// (also PALIGEMMA_GPU_CACHE), so later processes start warm.
    #[arg(long, global = true)]
    pub gpu_cache: Option<PathBuf>,
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// burn's flex CPU backend.
    Cpu,
    /// The ndarray CPU backend.
    Ndarray,
    /// Any GPU through wgpu.
    Wgpu,
    /// NVIDIA GPU number N through CUDA.
    Cuda(usize),
}

fn parse_device(s: &str) -> Result<Device, String> {
    let (kind, index) = match s.split_once(':') {
        Some((k, i)) => (
            k,
            Some(
                i.parse::<usize>()
                    .map_err(|_| format!("bad device index in {s:?}"))?,
            ),
        ),
        None => (s, None),
    };
    // An index is accepted on every kind, as before; only CUDA uses it.
    match kind {
        "cpu" => Ok(Device::Cpu),
        "ndarray" => Ok(Device::Ndarray),
        "wgpu" => Ok(Device::Wgpu),
        "cuda" => Ok(Device::Cuda(index.unwrap_or(0))),
        _ => Err(format!(
            "unknown device {s:?}: use cpu, ndarray, wgpu or cuda[:N]"
        )),
    }
}

/// `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// 32-bit float.
    #[value(alias = "float32")]
    F32,
    /// IEEE half precision.
    #[value(alias = "float16", alias = "half")]
    F16,
    /// bfloat16.
    #[value(alias = "bfloat16")]
    Bf16,
}

impl From<DtypeArg> for Dtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::Bf16,
        }
    }
}

/// `--weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightsArg {
    /// The fastest format that keeps the checkpoint's values.
    Auto,
    /// Backend tensors in the compute dtype.
    Backend,
    /// f32 in host memory.
    #[value(alias = "float32")]
    F32,
    /// bf16 in host memory.
    #[value(alias = "bfloat16")]
    Bf16,
    /// Per-row int8 in host memory.
    #[value(alias = "i8", alias = "q8")]
    Int8,
    /// Grouped int4 (32 values per scale) in host memory.
    #[value(alias = "i4", alias = "q4")]
    Int4,
}

impl From<WeightsArg> for WeightFormat {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::Auto => WeightFormat::Auto,
            WeightsArg::Backend => WeightFormat::Backend,
            WeightsArg::F32 => WeightFormat::F32,
            WeightsArg::Bf16 => WeightFormat::Bf16,
            WeightsArg::Int8 => WeightFormat::Int8,
            WeightsArg::Int4 => WeightFormat::Int4,
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Compile and tune every kernel one generation needs (GPU backends; use with
    /// --gpu-cache to pre-warm a machine or a container image), timing each pass.
    Warmup(WarmupArgs),
    /// The loss of a data file (JSON lines of {"image", "prefix", "suffix"}).
    Loss(LossArgs),
    /// Fine-tune on a data file and save the result as a checkpoint directory.
    Finetune(FinetuneArgs),
}

impl Command {
    /// The model arguments of commands that load a model.
    pub fn model_args(&mut self) -> Option<&mut ModelArgs> {
        match self {
            Command::Generate(a) => Some(&mut a.common),
            Command::Caption { common, .. }
            | Command::Answer { common, .. }
            | Command::Ocr { common } => Some(common),
            Command::Detect(a) | Command::Segment(a) => Some(&mut a.common),
            Command::Parse(_) | Command::Loss(_) | Command::Finetune(_) | Command::Warmup(_) => {
                None
            }
        }
    }
}

#[derive(Args)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json, tokenizer.json, *.safetensors), or `demo`
    /// for the embedded demo model.
    #[arg(long)]
    pub model: PathBuf,
    /// Image file; repeat for a prompt about several images, in order (for `generate
    /// --batch`, images come from the batch file).
    #[arg(long = "image", value_name = "IMAGE", required_unless_present_any = ["batch", "frames"])]
    pub images: Vec<PathBuf>,
    /// A folder of video frames (image files, taken in name order) instead of --image.
    #[arg(long, conflicts_with = "images")]
    pub frames: Option<PathBuf>,
    /// With --frames: at most this many frames, sampled evenly.
    #[arg(long, requires = "frames")]
    pub max_frames: Option<usize>,
    /// Batch file for `generate`: one {"image": ..} or {"images": [..]} with a
    /// "prompt" per line.
    #[arg(long, hide = true)]
    pub batch: Option<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Set from the global `--dtype` and `--weights`.
    #[arg(skip)]
    pub load: LoadOptions,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// The prompt, e.g. "caption en".
    #[arg(long, required_unless_present = "batch")]
    pub prompt: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the K most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens covering this probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print text as it is generated.
    #[arg(long)]
    pub stream: bool,
    /// Sequences per forward pass with --batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Keep generating past <eos> (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Record the K largest logits of each step.
    #[arg(long, default_value_t = 0)]
    pub top_logits: usize,
    /// Run the generation this many times before the timed one (GPU backends compile
    /// and tune their kernels on first use).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
}

#[derive(Args)]
pub struct WarmupArgs {
    /// Checkpoint directory, or `demo` for the embedded demo model.
    #[arg(long)]
    pub model: PathBuf,
    /// Set from the global `--dtype` and `--weights`.
    #[arg(skip)]
    pub load: LoadOptions,
    /// Batch sizes to run (each compiles and tunes its own shapes).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch_sizes: Vec<usize>,
    /// Tokens generated per pass.
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Passes over every prompt and batch size (the first compiles and tunes).
    #[arg(long, default_value_t = 2)]
    pub passes: usize,
}

#[derive(Args)]
pub struct ObjectArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Object class to find; repeat for several.
    #[arg(long = "object", required = true)]
    pub objects: Vec<String>,
    /// Most tokens to generate (default: the task's, 256 for up to ten objects).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Mask decoder (vae-oid.npz), when the checkpoint directory has none.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Write the image annotated with boxes, labels and masks here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ParseArgs {
    /// The prompt the output answers ("detect ..." or "segment ...").
    #[arg(long)]
    pub prompt: String,
    /// The model's output text.
    #[arg(long)]
    pub text: String,
    /// Width of the original image.
    #[arg(long)]
    pub width: u32,
    /// Height of the original image.
    #[arg(long)]
    pub height: u32,
    /// Mask decoder for segmentation outputs.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// The original image, to draw the objects on (with --out).
    #[arg(long, requires = "out")]
    pub image: Option<PathBuf>,
    /// Write the annotated image here.
    #[arg(long, requires = "image")]
    pub out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct LossArgs {
    /// Checkpoint directory, or `demo` for the embedded demo model.
    #[arg(long)]
    pub model: PathBuf,
    /// JSON lines of {"image": path relative to the file, "prefix", "suffix"}.
    #[arg(long)]
    pub data: PathBuf,
    /// Examples per forward pass (default: the whole file as one batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// What `finetune --method` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Every parameter.
    Full,
    /// The decoder's q/k/v/o projections.
    Attention,
    /// Low-rank adapters on the decoder's projections (PEFT's LoRA).
    Lora,
}

/// `finetune --schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// The peak rate after warmup.
    Constant,
    /// Down along a half cosine to 0.
    Cosine,
    /// Down linearly to 0.
    Linear,
}

/// `finetune --optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// Stochastic gradient descent (torch.optim.SGD).
    Sgd,
    /// AdamW (torch.optim.AdamW).
    Adamw,
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// Checkpoint directory to start from, or `demo` for the embedded demo model.
    #[arg(long)]
    pub model: PathBuf,
    /// Training data: JSON lines of {"image", "prefix", "suffix"}.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the fine-tuned checkpoint (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// What trains.
    #[arg(long, value_enum, default_value_t = MethodArg::Full)]
    pub method: MethodArg,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// LoRA alpha (adapters scale by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f32,
    /// The optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adamw)]
    pub optimizer: OptimizerArg,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Weight decay (AdamW: decoupled; SGD: L2 added to the gradient).
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    /// Optimiser steps (default: one epoch).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Passes over the data.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Forward passes whose gradients make one optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Learning-rate schedule after the warmup.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Constant)]
    pub schedule: ScheduleArg,
    /// Steps of linear warmup from 0.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Clip the global gradient norm to this (torch's clip_grad_norm_).
    #[arg(long)]
    pub clip_norm: Option<f32>,
    /// Keep the vision tower and projector frozen (their features are then computed
    /// once per image and reused by later steps).
    #[arg(long)]
    pub freeze_vision: bool,
    /// Keep the file's order instead of shuffling every epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Seed of the shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out data: its loss is reported after training.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Also write the optimiser's state (AdamW's moments, SGD's momentum) to
    /// OUT/optimizer.mpk, to resume from OUT later (--resume-optimizer, --start-step).
    #[arg(long)]
    pub save_optimizer: bool,
    /// Continue from an optimiser state saved with --save-optimizer (pass the
    /// checkpoint saved with it as --model).
    #[arg(long)]
    pub resume_optimizer: Option<PathBuf>,
    /// The step this run starts at, of --steps (or --epochs) in all: the schedule and
    /// the data order continue from there (with --resume-optimizer).
    #[arg(long, default_value_t = 0)]
    pub start_step: usize,
    /// One JSON line per step, then a summary line.
    #[arg(long)]
    pub json: bool,
}
