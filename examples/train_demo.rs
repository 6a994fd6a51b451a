//! Train the demo model from nothing with the crate's own fine-tuning code:
//!
//! ```text
//! cargo run --release --example train_demo -- --out assets/demo
//! ```
//!
//! Writes the untrained checkpoint (`paligemma::demo::recipe`), then trains every
//! weight with AdamW on a stream of scenes and questions drawn from the training seeds
//! (`paligemma::demo::training_example`), and saves the result in bf16 beside a
//! learning curve (`docs/demo-curve.csv`), and AdamW's state beside it (`DIR.optimizer`,
//! not part of the checkpoint). With `--resume DIR --start-step N` a run continues an
//! earlier one: the optimiser's moments from `DIR.optimizer` when it is there (the
//! weights were rounded to bf16 on saving), the data stream and the schedule from step
//! N.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use burn::backend::Autodiff;
use clap::Parser;
use paligemma::backend::Cpu;
use paligemma::demo::{recipe, training_example};
use paligemma::train::{Method, Optimizer, Reduction, Schedule, Trainer};
use paligemma::{Dtype, MaskEncoder, Model};

#[derive(Parser)]
struct Args {
    /// Where the trained checkpoint goes.
    #[arg(long, default_value = "assets/demo")]
    out: PathBuf,
    /// Optimiser steps in the whole schedule.
    #[arg(long, default_value_t = 6500)]
    steps: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many minutes (saving what was trained), to run in parts.
    #[arg(long)]
    minutes: Option<f64>,
    /// Continue from this checkpoint instead of starting from random weights.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// The first step of this run (with --resume).
    #[arg(long, default_value_t = 0)]
    start_step: usize,
    /// Ramp the learning rate up linearly over this run's first N steps (with
    /// --resume): AdamW's moments start again, and the full rate on fresh moments
    /// undoes part of what was learnt.
    #[arg(long, default_value_t = 0)]
    rewarm: usize,
    /// The learning curve (one line per step).
    #[arg(long, default_value = "docs/demo-curve.csv")]
    curve: PathBuf,
    /// Only train the segmentation VQ-VAE, into `--out`/vae-oid.npz.
    #[arg(long)]
    vae_only: bool,
    /// VQ-VAE training steps (batches of 32 mask crops).
    #[arg(long, default_value_t = 1500)]
    vae_steps: usize,
    /// The first step whose examples include segmentation (before it, the mix has
    /// captions, answers and detection only, and the loss is transformers' per-token
    /// mean; from it on, each example weighs the same). Off by default: in the shipped
    /// run, segmentation from step 3,500 made the model answer every detection with
    /// `<eos>` again within 1,000 steps (docs/demo.md).
    #[arg(long)]
    segment_from: Option<usize>,
    /// Save a checkpoint every this many steps.
    #[arg(long, default_value_t = 500)]
    save_every: usize,
}

type Train = Autodiff<Cpu>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = Default::default();
    if args.vae_only {
        std::fs::create_dir_all(&args.out)?;
        train_vae(
            &args.out.join("vae-oid.npz"),
            args.vae_steps,
            args.seed,
            &device,
        )?;
        return Ok(());
    }
    let start_dir = match &args.resume {
        Some(dir) => dir.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!("paligemma-demo-init-{}", args.seed));
            recipe::write_initial_checkpoint(&dir, &recipe::DemoSize::default(), args.seed)?;
            train_vae(&dir.join("vae-oid.npz"), args.vae_steps, args.seed, &device)?;
            dir
        }
    };
    // The mask encoder makes the codes of the segmentation targets; the checkpoint
    // keeps the whole VAE (its decoder serves `segment`).
    let vae = start_dir.join("vae-oid.npz");
    let encoder = match vae.is_file() {
        true => Some(MaskEncoder::<Cpu>::from_npz(&vae, &device)?),
        false => None,
    };
    let model = Model::<Train>::from_pretrained(&start_dir, &device)?;
    let mut trainer = Trainer::new(model, Method::Full, Optimizer::adamw())?.with_clip_norm(1.0);
    // AdamW's moments from the run that saved `--resume`, when it left them.
    let state = |dir: &std::path::Path| dir.with_extension("optimizer");
    if let Some(dir) = &args.resume
        && state(dir).is_file()
    {
        trainer = trainer.load_optimizer_state(state(dir))?;
    }
    let mut curve = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.curve)?;
    if args.start_step == 0 {
        curve.set_len(0)?;
        writeln!(curve, "step,examples,loss,lr,seconds")?;
    }
    let started = Instant::now();
    let mut window = Vec::new();
    for step in args.start_step..args.steps {
        // Images are grounded first (captions, counts, colours, boxes); segmentation
        // joins later. Once it has, each example weighs the same whatever its length
        // (big_vision's per-example mean): with the per-token mean, the 21 tokens of
        // each segmented object would drown the one-token answers.
        let segmenting = args.segment_from.is_some_and(|from| step >= from);
        if segmenting && args.segment_from.map(|f| f.max(args.start_step)) == Some(step) {
            trainer = trainer.with_reduction(Reduction::Examples);
        }
        let encoder = encoder.as_ref().filter(|_| segmenting);
        let first = (step * args.batch_size) as u64;
        let examples: Vec<_> = (first..first + args.batch_size as u64)
            .map(|i| training_example(i, encoder))
            .collect::<paligemma::Result<_>>()?;
        let batch = trainer.model()?.training_batch(&examples)?;
        let ramp = match args.rewarm {
            0 => 1.0,
            n => ((step - args.start_step + 1) as f64 / n as f64).min(1.0),
        };
        let lr = ramp * Schedule::Cosine.rate(args.lr, step, args.steps, args.warmup);
        let loss = trainer.step(&batch, lr)?;
        window.push(loss);
        let seconds = started.elapsed().as_secs_f64();
        writeln!(
            curve,
            "{},{},{loss:.5},{lr:.3e},{seconds:.1}",
            step + 1,
            (step + 1) * args.batch_size
        )?;
        if (step + 1) % 20 == 0 {
            let mean = window.iter().sum::<f32>() / window.len() as f32;
            window.clear();
            eprintln!(
                "step {}/{}  loss {mean:.4}  lr {lr:.2e}  {:.2} s/step",
                step + 1,
                args.steps,
                seconds / (step + 1 - args.start_step) as f64
            );
        }
        let out_of_time = args.minutes.is_some_and(|m| seconds > m * 60.0);
        if (step + 1) % args.save_every == 0 || step + 1 == args.steps || out_of_time {
            save(&trainer.model()?.valid(), &args.out)?;
            trainer.save_optimizer_state(state(&args.out))?;
            eprintln!("saved step {} to {}", step + 1, args.out.display());
        }
        if out_of_time {
            eprintln!(
                "time is up; resume with --resume {} --start-step {}",
                args.out.display(),
                step + 1
            );
            break;
        }
    }
    Ok(())
}

/// Train the segmentation VQ-VAE into `path`.
fn train_vae(
    path: &std::path::Path,
    steps: usize,
    seed: u64,
    device: &burn::backend::flex::FlexDevice,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let size = paligemma::demo::VaeSize::default();
    let iou = paligemma::demo::train_vae::<Train>(path, &size, (steps, 32, 1e-3, seed), device)?;
    eprintln!(
        "vae: {} in {:.0} s; held-out round-trip mask IoU {iou:.3}",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Replace the checkpoint in `out` by `model`'s weights: written beside it first, so
/// that an interrupted save leaves the previous checkpoint whole.
fn save(model: &Model<Cpu>, out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let next = out.with_extension("next");
    let old = out.with_extension("old");
    let _ = std::fs::remove_dir_all(&next);
    model.save_pretrained(&next, Some(Dtype::Bf16))?;
    if out.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old)?;
    }
    std::fs::rename(&next, out)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
