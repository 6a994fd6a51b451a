//! Command-line front end for the `paligemma` crate.
//!
//! ```text
//! cargo run --release --example paligemma -- generate --model DIR --image FILE --prompt TEXT \
//!     [--max-new-tokens N] [--ignore-eos] [--top-logits K] [--json]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use paligemma::{GenerateOptions, Generation, Model, backend::Cpu};

#[derive(Parser)]
#[command(name = "paligemma", about = "Run PaliGemma vision-language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a raw prompt about an image.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// Checkpoint directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Image file.
    #[arg(long)]
    image: PathBuf,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    common: ModelArgs,
    /// The prompt, e.g. "caption en".
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Keep generating past <eos> (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Record the K largest logits of each step.
    #[arg(long, default_value_t = 0)]
    top_logits: usize,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Generate(args) => generate(args),
    }
}

fn load(
    args: &ModelArgs,
) -> Result<(Model<Cpu>, image::DynamicImage, f64), Box<dyn std::error::Error>> {
    let image = paligemma::load_image(&args.image)?;
    let start = Instant::now();
    let model = Model::<Cpu>::from_pretrained(&args.model, &Default::default())?;
    Ok((model, image, start.elapsed().as_secs_f64()))
}

fn generate(args: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (model, image, load_s) = load(&args.common)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        ignore_eos: args.ignore_eos,
        top_logits: args.top_logits,
    };
    let out = model.generate(&image, &args.prompt, &options)?;
    if args.common.json {
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

fn generation_json(out: &Generation, load_s: f64) -> serde_json::Value {
    let top: Vec<Vec<(u32, f32)>> = out.top_logits.clone().unwrap_or_default();
    serde_json::json!({
        "prompt_ids": out.prompt_ids,
        "generated_ids": out.generated_ids,
        "text": out.text,
        "top_logits": top,
        "timings": {
            "load_s": load_s,
            "prefill_s": out.timings.prefill_s,
            "decode_s": out.timings.decode_s,
            "tokens": out.timings.tokens,
        },
    })
}
