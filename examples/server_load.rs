//! A bounded load test of the HTTP server on loopback: `clients` concurrent clients
//! each send `requests` chat completions (distinct prompts, greedy) to an in-process
//! server, once per maximum batch size; every answer is checked against the single run
//! of the same prompt, and latency percentiles and throughput are printed as a
//! markdown table (docs/benchmarks.md).
//!
//! ```text
//! cargo run --release --features server --example server_load -- \
//!     --model tests/fixtures/pg1-tiny --batch 1,4,8 --clients 64 --requests 4 --tokens 32
//! ```

#[path = "../benches/common/mid_model.rs"]
mod mid_model;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use paligemma::server::{Server, ServerConfig};
use paligemma::{GenerateOptions, LoadOptions, Model, WeightFormat, backend::Cpu};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Checkpoint directory, `demo`, or `mid` (the benchmarks' mid-size random model,
    /// written to a temporary directory).
    #[arg(long, default_value = "tests/fixtures/pg1-tiny")]
    model: String,
    /// Maximum batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    batch: Vec<usize>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Requests per client, one after another.
    #[arg(long, default_value_t = 4)]
    requests: usize,
    /// Tokens per answer (`max_tokens`).
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Load burn's f32 weights (`WeightFormat::Backend`) instead of the default.
    #[arg(long)]
    backend_weights: bool,
    /// Rounds over all batch sizes (alternating, so slow spells of a shared machine
    /// fall on every size); the ratio is given per round and as the median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Give up on a configuration after this many seconds.
    #[arg(long, default_value_t = 600)]
    limit_s: u64,
}

fn load(model: &str, backend_weights: bool) -> Model<Cpu> {
    let device = Default::default();
    let options = LoadOptions {
        weights: match backend_weights {
            true => WeightFormat::Backend,
            false => WeightFormat::Auto,
        },
        ..LoadOptions::default()
    };
    let loaded = if model == "mid" {
        let dir = std::env::temp_dir().join(format!("paligemma-mid-{}", std::process::id()));
        let written = std::fs::create_dir_all(&dir).map(|()| mid_model::write_checkpoint(&dir));
        let loaded = written
            .map_err(|e| paligemma::Error::Io {
                path: dir.clone(),
                source: e,
            })
            .and_then(|()| Model::<Cpu>::from_pretrained_with(&dir, &device, &options));
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    } else if model == "demo" {
        Model::<Cpu>::demo_with(&device, &options)
    } else {
        Model::<Cpu>::from_pretrained_with(model, &device, &options)
    };
    loaded.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    })
}

/// Rows per decode step over the run, from the server's `/metrics` (NaN if unreadable).
fn mean_batch(url: &str) -> f64 {
    let text = ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    value("paligemma_batch_size_sum ") / value("paligemma_batch_size_count ")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // As the server binary does.
    paligemma::keep_freed_memory();
    let args = Args::parse();
    let image = image::DynamicImage::ImageRgb8(paligemma::demo::Scene::generate(3).render());
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encoding a PNG in memory");
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let total = args.clients * args.requests;
    let prompts: Vec<String> = (0..total)
        .map(|i| format!("answer en what is shape number {i}?"))
        .collect();
    let model = load(&args.model, args.backend_weights);
    let options = GenerateOptions::default().max_new_tokens(args.tokens);
    let start = Instant::now();
    let expected: Arc<Vec<String>> = Arc::new(
        prompts
            .iter()
            .map(|p| model.generate(&image, p, &options).map(|g| g.text))
            .collect::<paligemma::Result<_>>()
            .unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(1)
            }),
    );
    eprintln!(
        "{total} single runs for the expected answers in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    drop(model);
    println!(
        "| max batch | requests | wrong | lost | 429 | p50 latency (s) | p99 latency (s) | requests/s | tokens/s | mean batch |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 0..args.rounds.max(1) {
        let mut rates = Vec::new();
        for &batch in &args.batch {
            let config = ServerConfig {
                model_id: "load".into(),
                max_batch: batch,
                queue_size: total,
                max_tokens: args.tokens,
                request_timeout: Duration::from_secs(args.limit_s),
                ..ServerConfig::default()
            };
            let server = Server::new(config);
            if let Err(e) = server.attach(load(&args.model, args.backend_weights)) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (bound, address) = std::sync::mpsc::channel();
            let serving = std::thread::spawn(move || {
                let runtime = tokio::runtime::Runtime::new()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    bound.send(listener.local_addr()?).ok();
                    server
                        .serve(listener, async {
                            stopped.await.ok();
                        })
                        .await
                })
            });
            let Ok(address) = address.recv() else {
                eprintln!("error: the server did not start");
                std::process::exit(1);
            };
            let endpoint = Arc::new(format!("http://{address}/v1/chat/completions"));
            let url = Arc::new(url.clone());
            let prompts = Arc::new(prompts.clone());
            let deadline = Instant::now() + Duration::from_secs(args.limit_s);
            let begin = Instant::now();
            let clients: Vec<_> = (0..args.clients)
                .map(|c| {
                    let (endpoint, url, prompts, expected) = (
                        endpoint.clone(),
                        url.clone(),
                        prompts.clone(),
                        expected.clone(),
                    );
                    let (requests, tokens) = (args.requests, args.tokens);
                    std::thread::spawn(move || {
                        let agent: ureq::Agent = ureq::Agent::config_builder()
                            .http_status_as_error(false)
                            .timeout_global(Some(
                                deadline.saturating_duration_since(Instant::now()),
                            ))
                            .build()
                            .into();
                        let mut out = Vec::new();
                        for r in 0..requests {
                            let i = c * requests + r;
                            let body = json!({
                                "model": "load",
                                "max_tokens": tokens,
                                "messages": [{"role": "user", "content": [
                                    {"type": "text", "text": prompts[i]},
                                    {"type": "image_url", "image_url": {"url": url.as_str()}},
                                ]}],
                            });
                            let sent = Instant::now();
                            let answer = agent
                                .post(endpoint.as_str())
                                .header("content-type", "application/json")
                                .send(body.to_string());
                            let seconds = sent.elapsed().as_secs_f64();
                            let outcome = match answer {
                                Ok(mut a) => {
                                    let status = a.status().as_u16();
                                    let text = a.body_mut().read_to_string().unwrap_or_default();
                                    let v: serde_json::Value =
                                        serde_json::from_str(&text).unwrap_or_default();
                                    let content = v["choices"][0]["message"]["content"].as_str();
                                    let tokens =
                                        v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                                    (status, content == Some(expected[i].as_str()), tokens)
                                }
                                Err(_) => (0, false, 0),
                            };
                            out.push((outcome, seconds));
                        }
                        out
                    })
                })
                .collect();
            let results: Vec<((u16, bool, u64), f64)> = clients
                .into_iter()
                .flat_map(|c| c.join().unwrap_or_default())
                .collect();
            let wall = begin.elapsed().as_secs_f64();
            let batch_mean = mean_batch(&endpoint.replace("/v1/chat/completions", "/metrics"));
            stop.send(()).ok();
            let _ = serving.join();
            let ok: Vec<&((u16, bool, u64), f64)> =
                results.iter().filter(|((s, _, _), _)| *s == 200).collect();
            let wrong = ok.iter().filter(|((_, right, _), _)| !right).count();
            let busy = results.iter().filter(|((s, _, _), _)| *s == 429).count();
            let lost = total - ok.len() - busy;
            let tokens: u64 = ok.iter().map(|((_, _, t), _)| t).sum();
            let mut latency: Vec<f64> = ok.iter().map(|(_, s)| *s).collect();
            latency.sort_by(f64::total_cmp);
            let (p50, p99) = if latency.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                (percentile(&latency, 0.5), percentile(&latency, 0.99))
            };
            let rate = ok.len() as f64 / wall;
            rates.push((batch, rate));
            println!(
                "| {batch} | {} | {wrong} | {lost} | {busy} | {p50:.3} | {p99:.3} | {rate:.1} | {:.0} | {batch_mean:.2} |",
                results.len(),
                tokens as f64 / wall
            );
            if wrong > 0 || lost > 0 {
                eprintln!("error: {wrong} wrong and {lost} lost answers at max batch {batch}");
                std::process::exit(1);
            }
        }
        if let (Some(&(b0, r0)), Some(&(b1, r1))) = (rates.first(), rates.last()) {
            println!(
                "\nround {}: throughput at max batch {b1} / max batch {b0}: {:.2}x\n",
                round + 1,
                r1 / r0
            );
            ratios.push(r1 / r0);
        }
    }
    ratios.sort_by(f64::total_cmp);
    if let Some(median) = ratios.get(ratios.len() / 2) {
        println!(
            "median throughput ratio over {} rounds: {median:.2}x",
            ratios.len()
        );
    }
}
