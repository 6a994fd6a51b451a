//! Score a demo checkpoint on held-out scenes (seeds never used in training):
//!
//! ```text
//! cargo run --release --example eval_demo -- --model assets/demo --scenes 500
//! ```

use std::path::PathBuf;

use clap::Parser;
use paligemma::backend::Cpu;
use paligemma::demo::{Report, Scene, evaluate};
use paligemma::{Dtype, LoadOptions, Model, WeightFormat};

#[derive(Parser)]
struct Args {
    /// The checkpoint directory.
    #[arg(long, default_value = "assets/demo")]
    model: PathBuf,
    /// Number of scenes.
    #[arg(long, default_value_t = 500)]
    scenes: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Weight format: backend, bf16, int8 or f32.
    #[arg(long, default_value = "backend")]
    weights: String,
    /// Print the scores as a row of the table in `docs/demo.md`.
    #[arg(long)]
    markdown: bool,
    /// Instead of evaluating, draw the scene of `--first-seed` into this PNG file and
    /// print its objects.
    #[arg(long)]
    write_scene: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(path) = &args.write_scene {
        let scene = Scene::generate(args.first_seed);
        scene.render().save(path)?;
        for o in &scene.objects {
            let b = &o.bbox;
            println!(
                "{} [{}, {}, {}, {}]",
                o.label(),
                b.x_min,
                b.y_min,
                b.x_max,
                b.y_max
            );
        }
        return Ok(());
    }
    let options = LoadOptions {
        dtype: args.dtype.parse::<Dtype>()?,
        weights: args.weights.parse::<WeightFormat>()?,
    };
    let model = Model::<Cpu>::from_pretrained_with(&args.model, &Default::default(), &options)?;
    let start = std::time::Instant::now();
    let report = evaluate(&model, args.first_seed..args.first_seed + args.scenes)?;
    let seconds = start.elapsed().as_secs_f64();
    if args.markdown {
        let d = &report.detection;
        let c = &report.colored_detection;
        let pct = |x: f64| format!("{:.1}", 100.0 * x);
        println!(
            "| {} {} | {} | {} / {:.3} / {} | {} / {:.3} / {} | {} | {} | {} | {} / {:.3} |",
            args.dtype,
            args.weights,
            report.scenes,
            pct(d.recall()),
            d.mean_iou(),
            pct(Report::spurious_rate(d)),
            pct(c.recall()),
            c.mean_iou(),
            pct(Report::spurious_rate(c)),
            pct(Report::rate(report.captions)),
            pct(Report::rate(report.counts)),
            pct(Report::rate(report.colors)),
            pct(report.segmentation.recall()),
            report.mean_mask_iou(),
        );
    } else {
        println!("{report}");
    }
    eprintln!("{seconds:.1} s");
    Ok(())
}
