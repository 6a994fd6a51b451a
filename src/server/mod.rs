//! An HTTP server for a [`Model`]: OpenAI-compatible chat completions, typed endpoints
//! that return boxes and masks as data, continuous batching of concurrent requests,
//! limits, metrics and graceful shutdown. Behind the `server` feature; the
//! `paligemma-server` binary is a thin command line over [`Server`].
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | 200 once the model is loaded and the server takes requests, else 503 |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/models` | the served model |
//! | `POST /v1/chat/completions` | OpenAI chat completions, streaming or not |
//! | `POST /v1/caption`, `/v1/answer`, `/v1/ocr` | text tasks |
//! | `POST /v1/detect`, `/v1/segment` | boxes (and masks) in pixels of the image |
//!
//! The server holds no state between requests, so replicas behind any HTTP load
//! balancer serve the same answers (`docs/server.md`).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use paligemma::server::{Server, ServerConfig};
//! use paligemma::{Model, backend::Cpu};
//!
//! let server = Server::new(ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let model = Model::<Cpu>::demo(&Default::default()).expect("the demo model loads");
//! server.attach(model)?; // /health turns 200
//! server.serve(listener, async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```

mod engine;
mod error;
mod media;
mod metrics;
mod openai;
mod typed;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use burn::tensor::backend::Backend;
use image::DynamicImage;
use serde_json::json;
use tokio::sync::{Notify, mpsc::UnboundedReceiver, watch};

pub use error::ApiError;

use crate::generate::{FinishReason, GenerateOptions, Generation};
use crate::model::Model;
use crate::preprocess::pixels_of;
use engine::{Engine, Message};
use metrics::Metrics;

/// Limits and settings of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model name clients send (`model` in chat requests) and `/v1/models` lists.
    pub model_id: String,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Largest image in pixels, checked from the image header before decoding (413).
    pub max_image_pixels: u64,
    /// Most images in one request.
    pub max_images: usize,
    /// Most tokens a request may ask for (`max_tokens` above this is a 400).
    pub max_tokens: usize,
    /// Tokens a chat request without `max_tokens` gets.
    pub default_max_tokens: usize,
    /// Time a request may take before it is answered 504 and stopped.
    pub request_timeout: Duration,
    /// Requests that may wait for a place in the batch (429 beyond).
    pub queue_size: usize,
    /// Most requests decoded together.
    pub max_batch: usize,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// After a shutdown signal, how long in-flight requests may take to finish before
    /// they are answered 503.
    pub shutdown_grace: Duration,
    /// Fetch `http://` and `https://` image URLs in chat requests (off by default:
    /// the server would make requests to addresses clients choose). A download is
    /// held to `max_body_bytes` and `request_timeout`, following at most 3 redirects.
    pub fetch_remote_images: bool,
}

impl ServerConfig {
    /// The download limits for image URLs, when fetching them is allowed.
    fn remote_fetch(&self) -> Option<media::RemoteFetch> {
        self.fetch_remote_images.then_some(media::RemoteFetch {
            max_bytes: self.max_body_bytes,
            timeout: self.request_timeout,
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_id: "paligemma".into(),
            max_body_bytes: 20 * 1024 * 1024,
            max_image_pixels: 40_000_000,
            max_images: 16,
            max_tokens: 1024,
            default_max_tokens: 128,
            request_timeout: Duration::from_secs(120),
            queue_size: 64,
            max_batch: 8,
            api_key: None,
            shutdown_grace: Duration::from_secs(30),
            fetch_remote_images: false,
        }
    }
}

/// What every handler shares.
struct AppState {
    config: ServerConfig,
    engine: OnceLock<Engine>,
    metrics: Arc<Metrics>,
    /// Set once a shutdown signal arrived: new generation requests get 503.
    draining: AtomicBool,
    /// Flips to true when the shutdown grace ran out: waiting handlers answer 503.
    hard_stop: watch::Sender<bool>,
    started: Instant,
    next_id: AtomicU64,
}

/// The HTTP server. Create it, [`attach`](Server::attach) a model (until then
/// `/health` answers 503 and requests are refused), then [`serve`](Server::serve).
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.state.config)
            .field("loaded", &self.state.engine.get().is_some())
            .finish()
    }
}

impl Server {
    /// A server without a model yet.
    pub fn new(config: ServerConfig) -> Self {
        let (hard_stop, _) = watch::channel(false);
        Server {
            state: Arc::new(AppState {
                config,
                engine: OnceLock::new(),
                metrics: Arc::new(Metrics::default()),
                draining: AtomicBool::new(false),
                hard_stop,
                started: Instant::now(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Serve `model` (starts its generation thread). A second model is refused.
    pub fn attach<B: Backend>(&self, model: Model<B>) -> std::io::Result<()>
    where
        Model<B>: Send + Sync + 'static,
    {
        let c = &self.state.config;
        let engine = Engine::start(model, c.max_batch, c.queue_size, self.state.metrics.clone())?;
        self.state
            .engine
            .set(engine)
            .map_err(|_| std::io::Error::other("a model is already attached"))?;
        tracing::info!(model = %c.model_id, max_batch = c.max_batch, "model loaded; ready");
        Ok(())
    }

    /// The routes, for embedding in a larger axum application.
    pub fn router(&self) -> Router {
        let c = &self.state.config;
        Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/v1/models", get(openai::models))
            .route("/v1/models/{id}", get(openai::model))
            .route("/v1/chat/completions", post(openai::chat))
            .route("/v1/caption", post(typed::caption))
            .route("/v1/answer", post(typed::answer))
            .route("/v1/ocr", post(typed::ocr))
            .route("/v1/detect", post(typed::detect))
            .route("/v1/segment", post(typed::segment))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                authorize,
            ))
            .layer(DefaultBodyLimit::max(c.max_body_bytes))
            .layer(middleware::from_fn_with_state(self.state.clone(), account))
            .with_state(self.state.clone())
    }

    /// Serve on `listener` until `shutdown` completes, then shut down gracefully: stop
    /// accepting, let in-flight requests finish for [`ServerConfig::shutdown_grace`],
    /// answer the rest 503, and stop the generation thread.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let signalled = Arc::new(Notify::new());
        let graceful = {
            let state = state.clone();
            let signalled = signalled.clone();
            async move {
                shutdown.await;
                state.draining.store(true, Ordering::SeqCst);
                tracing::info!("shutdown signal: finishing in-flight requests");
                signalled.notify_one();
            }
        };
        let serve = axum::serve(listener, self.router())
            .with_graceful_shutdown(graceful)
            .into_future();
        tokio::pin!(serve);
        let grace = state.config.shutdown_grace;
        let result = tokio::select! {
            r = &mut serve => r,
            () = async { signalled.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("shutdown grace over: failing the requests still running");
                let _ = state.hard_stop.send(true);
                serve.await
            }
        };
        if let Some(engine) = state.engine.get() {
            engine.close();
            let state = state.clone();
            let _ = tokio::task::spawn_blocking(move || state.engine.get().map(Engine::join)).await;
        }
        tracing::info!("stopped");
        result
    }
}

/// The endpoint label for metrics.
fn endpoint(path: &str) -> &'static str {
    const KNOWN: [&str; 10] = [
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/models/{id}",
        "/v1/chat/completions",
        "/v1/caption",
        "/v1/answer",
        "/v1/ocr",
        "/v1/detect",
        "/v1/segment",
    ];
    KNOWN
        .iter()
        .find(|k| **k == path)
        .copied()
        .unwrap_or("other")
}

/// The error code of an error response, for metrics.
#[derive(Clone, Copy)]
struct ErrorCode(&'static str);

/// Count and log every answer.
async fn account(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let label = endpoint(&path);
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let seconds = start.elapsed().as_secs_f64();
    state.metrics.answered(label, status, seconds);
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state.metrics.error(label, code);
    }
    let ms = (seconds * 1000.0).round();
    if matches!(label, "/health" | "/metrics") {
        // Probes and scrapes come every few seconds: keep them out of the info log.
        tracing::debug!(%method, path = %path, status, ms, "request");
    } else {
        tracing::info!(%method, path = %path, status, ms, "request");
    }
    response
}

/// Require the API key on `/v1/*` when one is configured; refuse a body whose declared
/// length is over the limit before reading it (longer chunked bodies are cut off by
/// the body limit as they are read).
async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let max = state.config.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > max as u64
    {
        return ApiError::too_large(
            "body_too_large",
            format!("the body has {n} bytes; this server accepts at most {max}"),
        )
        .into_response();
    }
    if let Some(key) = &state.config.api_key
        && request.uri().path().starts_with("/v1/")
    {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !same(given.as_bytes(), key.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Compare without stopping at the first difference (no timing hint about the key).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (status, what) = match state.engine.get() {
        _ if state.draining.load(Ordering::SeqCst) => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
        Some(e) if !e.alive() => (StatusCode::SERVICE_UNAVAILABLE, "generation thread stopped"),
        Some(_) => (StatusCode::OK, "ready"),
    };
    let body = json!({
        "status": what,
        "model": state.config.model_id,
        "uptime_s": state.started.elapsed().as_secs_f64(),
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::invalid(
            "not_found",
            format!("no route {} {}", request.method(), request.uri().path()),
        )
    }
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid(
            "method_not_allowed",
            format!(
                "{} is not allowed on {}",
                request.method(),
                request.uri().path()
            ),
        )
    }
}

/// A request's generation, submitted.
struct Pending {
    rx: UnboundedReceiver<Message>,
    start: Instant,
    prompt_tokens: usize,
    first: Option<Instant>,
}

impl AppState {
    fn engine(&self) -> Result<&Engine, ApiError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.engine
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    /// A fresh id for a response.
    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{:016x}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Check a token budget against the server's limit.
    fn budget(&self, asked: Option<u64>, default: usize) -> Result<usize, ApiError> {
        let max = self.config.max_tokens;
        match asked {
            None => Ok(default.min(max)),
            Some(0) => Err(ApiError::invalid_param(
                "max_tokens",
                "invalid_max_tokens",
                "max_tokens must be at least 1",
            )),
            Some(n) if n > max as u64 => Err(ApiError::invalid_param(
                "max_tokens",
                "invalid_max_tokens",
                format!("max_tokens is {n}; this server allows at most {max}"),
            )),
            Some(n) => Ok(n as usize),
        }
    }

    /// Preprocess the images on a blocking thread and queue a generation.
    async fn submit(
        &self,
        images: Vec<DynamicImage>,
        prompt: String,
        options: GenerateOptions,
        stream: bool,
    ) -> Result<Pending, ApiError> {
        // The request's time limit and its time to first token count the preprocessing.
        let start = Instant::now();
        if images.len() > self.config.max_images {
            return Err(ApiError::invalid(
                "too_many_images",
                format!(
                    "{} images; this server takes at most {} per request",
                    images.len(),
                    self.config.max_images
                ),
            ));
        }
        let size = self.engine()?.image_size;
        // A whole resize per image: off the async workers and off the model's thread.
        let pixels = tokio::task::spawn_blocking(move || {
            pixels_of(&images.iter().collect::<Vec<_>>(), size)
        })
        .await
        .map_err(|e| ApiError::internal(format!("preprocessing the images failed: {e}")))??;
        let rx = self.engine()?.submit(pixels, prompt, options, stream)?;
        Ok(Pending {
            rx,
            start,
            prompt_tokens: 0,
            first: None,
        })
    }

    /// The next message of a pending generation, within the request's time limit and
    /// until the shutdown grace runs out.
    async fn next(&self, pending: &mut Pending) -> Result<Message, ApiError> {
        let deadline = pending.start + self.config.request_timeout;
        let mut stop = self.hard_stop.subscribe();
        let message = tokio::select! {
            m = pending.rx.recv() => m,
            () = tokio::time::sleep_until(deadline.into()) => {
                return Err(ApiError::timeout(self.config.request_timeout.as_secs_f64()));
            }
            _ = stop.wait_for(|s| *s) => {
                return Err(ApiError::unavailable("the server shut down before the request finished"));
            }
        };
        let message = message.ok_or_else(|| ApiError::internal("the generation thread stopped"))?;
        match &message {
            Message::Prefilled(n) => {
                pending.prompt_tokens = *n;
                pending.first = Some(Instant::now());
            }
            Message::Finished(g) => self.finished(pending, g),
            _ => {}
        }
        Ok(message)
    }

    /// Record a finished generation's figures.
    fn finished(&self, pending: &Pending, g: &Generation) {
        let first = pending.first.unwrap_or(pending.start);
        self.metrics.generation(
            pending.prompt_tokens,
            g.generated_ids.len(),
            (first - pending.start).as_secs_f64(),
            first.elapsed().as_secs_f64(),
        );
    }

    /// Wait for the whole generation.
    async fn complete(&self, mut pending: Pending) -> Result<(Generation, usize), ApiError> {
        loop {
            match self.next(&mut pending).await? {
                Message::Finished(g) => return Ok((g, pending.prompt_tokens)),
                Message::Failed(e) => return Err(e.into()),
                Message::Prefilled(_) | Message::Text(_) => {}
            }
        }
    }
}

/// OpenAI's `finish_reason`: `length` when the budget ran out, else `stop`.
fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::StopToken | FinishReason::StopString | FinishReason::Cancelled => "stop",
    }
}

/// OpenAI's `usage` object.
fn usage(prompt_tokens: usize, g: &Generation) -> serde_json::Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": g.generated_ids.len(),
        "total_tokens": prompt_tokens + g.generated_ids.len(),
    })
}

/// Seconds since the Unix epoch (OpenAI's `created`).
fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
