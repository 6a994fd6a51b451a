//! What batching saves on one model, without HTTP: the time of a batched prefill and of
//! a decode step at several batch sizes, and the batching loop's time per request at
//! each maximum batch (`Model::run_continuous` fed queued, preprocessed requests). The
//! figures behind docs/benchmarks.md, "Serving: preprocessing off the batching thread".
//!
//! ```text
//! cargo run --release --example batch_costs -- --model tests/fixtures/pg1-tiny --keep-freed-memory
//! ```

use std::time::Instant;

use clap::Parser;
use paligemma::continuous::Request;
use paligemma::{GenerateOptions, Model, backend::Cpu};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory or `demo`.
    #[arg(long, default_value = "tests/fixtures/pg1-tiny")]
    model: String,
    /// Batch sizes of the prefill and decode-step timings, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    batch: Vec<usize>,
    /// Repetitions of each prefill timing (a tenth of them for decode steps).
    #[arg(long, default_value_t = 200)]
    repeats: usize,
    /// Requests queued for each run of the batching loop.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Tokens per request in the decode and loop timings.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Call `paligemma::keep_freed_memory()` first, as the CLI and the server do.
    #[arg(long)]
    keep_freed_memory: bool,
}

fn main() -> paligemma::Result<()> {
    let args = Args::parse();
    if args.keep_freed_memory {
        paligemma::keep_freed_memory();
    }
    let device = Default::default();
    let model = match args.model.as_str() {
        "demo" => Model::<Cpu>::demo(&device)?,
        dir => Model::<Cpu>::from_pretrained(dir, &device)?,
    };
    let image = image::DynamicImage::ImageRgb8(paligemma::demo::Scene::generate(3).render());
    // The server's batching loop runs inside a pool of its own; so do these timings.
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .map_err(|e| paligemma::Error::Backend(e.to_string()))?;
    pool.install(|| {
        let embedding = model.encode_image(&image)?;
        let ids = model.prompt_ids("answer en what is shape number 7?")?;
        let repeats = args.repeats.max(10);
        println!("| rows | prefill (us) | decode step (us) | decode step per row (us) |");
        println!("|---|---|---|---|");
        for &rows in &args.batch {
            let prompts: Vec<_> = (0..rows)
                .map(|_| (&embedding.features, ids.as_slice()))
                .collect();
            let start = Instant::now();
            for _ in 0..repeats {
                model.prefill(&prompts, args.tokens + 1)?;
            }
            let prefill = start.elapsed().as_secs_f64() / repeats as f64;
            let mut steps = 0.0;
            let start = Instant::now();
            for _ in 0..repeats / 10 {
                let (mut state, _) = model.prefill(&prompts, args.tokens + 1)?;
                for _ in 0..args.tokens {
                    model.extend(&mut state, &vec![5; rows])?.into_data();
                    steps += 1.0;
                }
            }
            let step = (start.elapsed().as_secs_f64() - prefill * (repeats / 10) as f64) / steps;
            println!(
                "| {rows} | {:.0} | {:.1} | {:.1} |",
                prefill * 1e6,
                step * 1e6,
                step * 1e6 / rows as f64
            );
        }
        let pixels = model.pixels(&image)?;
        let options = GenerateOptions::default().max_new_tokens(args.tokens);
        println!("\n| max batch | loop time per request (us) |");
        println!("|---|---|");
        for &max_batch in &args.batch {
            let (send, requests) = std::sync::mpsc::channel();
            for i in 0..args.requests {
                let prompt = format!("answer en what is shape number {i}?");
                let request = Request::from_pixels(vec![pixels.clone()], prompt, options.clone());
                send.send(request).ok();
            }
            drop(send);
            let start = Instant::now();
            model.run_continuous(&requests, max_batch, |_| {});
            let per_request = start.elapsed().as_secs_f64() / args.requests.max(1) as f64;
            println!("| {max_batch} | {:.0} |", per_request * 1e6);
        }
        Ok(())
    })
}
