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
//! paligemma warmup   --model DIR --device cuda --gpu-cache DIR [--batch-sizes 1,8]
//! ```
//!
//! `--image` repeats (a prompt about several images), or `--frames DIR [--max-frames N]`
//! takes the frames of a video.
//!
//! `args.rs` holds the arguments, `commands.rs` what each subcommand does, `output.rs`
//! what is printed, `draw.rs` the annotated pictures.

mod args;
mod commands;
mod draw;
mod output;
mod train;

use std::process::ExitCode;

use clap::Parser;
use paligemma::WeightFormat;

use args::{Cli, Command, Device};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    paligemma::keep_freed_memory();
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Pick the backend named by `--device`; a backend this build lacks names its feature.
fn dispatch(mut cli: Cli) -> Res<()> {
    let weights = WeightFormat::from(cli.weights);
    if !weights.accelerated() {
        eprintln!(
            "warning: the {weights} weight kernels run portable code here (this CPU lacks \
             AVX2 and FMA, or PALIGEMMA_KERNELS=portable); --weights backend may be faster"
        );
    }
    if let Some(args) = cli.command.model_args() {
        args.load.dtype = cli.dtype.into();
        args.load.weights = weights;
    }
    if let Command::Warmup(args) = &mut cli.command {
        args.load.dtype = cli.dtype.into();
        args.load.weights = weights;
    }
    if let Some(dir) = &cli.gpu_cache {
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        paligemma::set_gpu_cache(dir)?;
        #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
        return Err(format!(
            "--gpu-cache {} is for the GPU backends: build with --features wgpu or cuda",
            dir.display()
        )
        .into());
    }
    let missing = |feature: &str| -> Res<()> {
        Err(format!(
            "--device {:?} needs the `{feature}` feature: cargo run --release --features {feature} --example paligemma -- ...",
            cli.device
        )
        .into())
    };
    if let Command::Finetune(args) = &cli.command {
        return finetune(args, cli.device);
    }
    match cli.device {
        #[cfg(feature = "flex")]
        Device::Cpu => commands::run::<paligemma::backend::Flex>(cli.command, &Default::default()),
        #[cfg(not(feature = "flex"))]
        Device::Cpu => missing("flex"),
        #[cfg(feature = "ndarray")]
        Device::Ndarray => {
            commands::run::<paligemma::backend::NdArray>(cli.command, &Default::default())
        }
        #[cfg(not(feature = "ndarray"))]
        Device::Ndarray => missing("ndarray"),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => commands::run::<paligemma::backend::Wgpu>(cli.command, &Default::default()),
        #[cfg(not(feature = "wgpu"))]
        Device::Wgpu => missing("wgpu"),
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => commands::run::<paligemma::backend::Cuda>(
            cli.command,
            &burn::backend::cuda::CudaDevice::new(index),
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => missing("cuda"),
    }
}

/// `finetune` on the autodiff wrapper of the backend `--device` names.
fn finetune(args: &args::FinetuneArgs, device: Device) -> Res<()> {
    use burn::backend::Autodiff;
    match device {
        #[cfg(feature = "flex")]
        Device::Cpu => {
            train::finetune::<Autodiff<paligemma::backend::Flex>>(args, &Default::default())
        }
        #[cfg(feature = "ndarray")]
        Device::Ndarray => {
            train::finetune::<Autodiff<paligemma::backend::NdArray>>(args, &Default::default())
        }
        #[cfg(feature = "wgpu")]
        Device::Wgpu => {
            train::finetune::<Autodiff<paligemma::backend::Wgpu>>(args, &Default::default())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => train::finetune::<Autodiff<paligemma::backend::Cuda>>(
            args,
            &burn::backend::cuda::CudaDevice::new(index),
        ),
        #[allow(unreachable_patterns)]
        other => Err(format!("--device {other:?} is not enabled in this build").into()),
    }
}
