//! `paligemma-server`: serve a PaliGemma checkpoint (or the embedded demo model) over
//! HTTP. See `docs/server.md`.

use std::path::PathBuf;
use std::time::Duration;

use burn::tensor::backend::Backend;
use clap::Parser;
use paligemma::server::{Server, ServerConfig};
use paligemma::{Dtype, LoadOptions, Model, WeightFormat};

/// Serve a PaliGemma model: OpenAI-compatible chat completions and typed
/// detect/segment/caption/answer/ocr endpoints, with continuous batching.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A Hugging Face checkpoint directory, or `demo` for the embedded demo model.
    #[arg(long)]
    model: PathBuf,
    /// Address to bind (loopback by default; use 0.0.0.0 behind a load balancer).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Backend: cpu, wgpu or cuda[:N] (wgpu and cuda need the cargo features).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Weight matrices: auto, backend, f32, bf16, int8 or int4 (host weights on CPU
    /// backends; auto picks them in the checkpoint's precision where the CPU has SIMD
    /// kernels).
    #[arg(long, default_value = "auto")]
    weights: WeightFormat,
    /// The model name clients send; defaults to the checkpoint directory's name.
    #[arg(long)]
    model_id: Option<String>,
    /// Most requests decoded together.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests that may wait for the batch before new ones get 429.
    #[arg(long, default_value_t = 64)]
    queue_size: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 20 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Largest image in pixels (checked before decoding).
    #[arg(long, default_value_t = 40_000_000)]
    max_image_pixels: u64,
    /// Most tokens a request may ask for.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Seconds a request may take.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace: f64,
    /// Require `Authorization: Bearer <key>`; also read from PALIGEMMA_API_KEY.
    #[arg(long, env = "PALIGEMMA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Fetch http:// and https:// image URLs in chat requests (by default only inline
    /// data: URLs are accepted, so the server never requests addresses clients choose).
    #[arg(long)]
    allow_remote_images: bool,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn seconds(what: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| format!("--{what} must be a non-negative number of seconds, got {s}"))
}

fn main() {
    paligemma::keep_freed_memory();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format.as_str() {
        "json" => logs.json().init(),
        "text" => logs.init(),
        other => {
            eprintln!("error: --log-format is text or json, not {other}");
            std::process::exit(2);
        }
    }
    if let Err(e) = run(args) {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let model_id = args.model_id.clone().unwrap_or_else(|| {
        if args.model.as_os_str() == "demo" {
            "paligemma-demo".into()
        } else {
            args.model
                .file_name()
                .map_or_else(|| "paligemma".into(), |n| n.to_string_lossy().into_owned())
        }
    });
    let config = ServerConfig {
        model_id,
        max_body_bytes: args.max_body_bytes,
        max_image_pixels: args.max_image_pixels,
        max_tokens: args.max_tokens,
        request_timeout: seconds("timeout", args.timeout)?,
        queue_size: args.queue_size,
        max_batch: args.max_batch,
        api_key: args.api_key.clone(),
        shutdown_grace: seconds("shutdown-grace", args.shutdown_grace)?,
        fetch_remote_images: args.allow_remote_images,
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("starting tokio: {e}"))?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        tracing::info!(%address, "listening; loading the model (/health answers 503 until then)");
        let server = Server::new(config);
        let serving = tokio::spawn(server.clone().serve(listener, shutdown_signal()));
        let loader = server.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&args, &loader))
            .await
            .map_err(|e| format!("loading the model: {e}"))?;
        if let Err(e) = loaded {
            serving.abort();
            return Err(e);
        }
        serving
            .await
            .map_err(|e| format!("the server stopped: {e}"))?
            .map_err(|e| format!("the server failed: {e}"))
    })
}

/// Load the model on the backend `--device` names and attach it.
fn load(args: &Args, server: &Server) -> Result<(), String> {
    let options = LoadOptions {
        dtype: args.dtype,
        weights: args.weights,
    };
    let (name, index) = match args.device.split_once(':') {
        Some((n, i)) => (
            n,
            Some(
                i.parse::<usize>()
                    .map_err(|_| format!("bad device index in {:?}", args.device))?,
            ),
        ),
        None => (args.device.as_str(), None),
    };
    match (name, index) {
        ("cpu", None) => {
            attach::<paligemma::backend::Cpu>(args, server, &Default::default(), &options)
        }
        #[cfg(feature = "wgpu")]
        ("wgpu", None) => {
            attach::<paligemma::backend::Wgpu>(args, server, &Default::default(), &options)
        }
        #[cfg(feature = "cuda")]
        ("cuda", i) => attach::<paligemma::backend::Cuda>(
            args,
            server,
            &burn::backend::cuda::CudaDevice::new(i.unwrap_or(0)),
            &options,
        ),
        ("wgpu" | "cuda", _) => Err(format!(
            "--device {} needs a build with --features {name}",
            args.device
        )),
        _ => Err(format!(
            "unknown device {:?}: use cpu, wgpu or cuda[:N]",
            args.device
        )),
    }
}

fn attach<B: Backend>(
    args: &Args,
    server: &Server,
    device: &B::Device,
    options: &LoadOptions,
) -> Result<(), String>
where
    Model<B>: Send + Sync + 'static,
{
    let model = if args.model.as_os_str() == "demo" {
        demo::<B>(device, options)?
    } else {
        Model::<B>::from_pretrained_with(&args.model, device, options).map_err(|e| e.to_string())?
    };
    for warning in model.warnings() {
        tracing::warn!("{warning}");
    }
    server
        .attach(model)
        .map_err(|e| format!("starting the generation thread: {e}"))
}

#[cfg(feature = "demo")]
fn demo<B: Backend>(device: &B::Device, options: &LoadOptions) -> Result<Model<B>, String> {
    Model::<B>::demo_with(device, options).map_err(|e| e.to_string())
}

#[cfg(not(feature = "demo"))]
fn demo<B: Backend>(_: &B::Device, _: &LoadOptions) -> Result<Model<B>, String> {
    Err("--model demo needs a build with the demo feature (on by default)".into())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
