//! The bridge between async handlers and the model: one thread runs
//! [`Model::run_continuous`](crate::Model::run_continuous) over a bounded queue; each
//! request gets a channel of what happens to it. A handler that stops listening (the
//! client went away, the request timed out) cancels its request at the next token.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use burn::tensor::backend::Backend;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::error::ApiError;
use super::metrics::Metrics;
use crate::continuous::{Event, Request};
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Generation};
use crate::model::Model;
use crate::preprocess::Pixels;
use crate::task::{Segmentation, Skipped, segmentations_from_text};

/// What happens to a submitted request.
#[derive(Debug)]
pub(crate) enum Message {
    /// The prompt ran (this many tokens, images included).
    Prefilled(usize),
    /// Final text (streaming requests).
    Text(String),
    /// Done.
    Finished(Generation),
    /// Failed.
    Failed(Error),
}

/// The model's side of the server, whatever its backend.
pub(crate) trait Masks: Send + Sync {
    /// Segmentations of a segmentation output for an image of `width x height`.
    fn segmentations(
        &self,
        text: &str,
        width: u32,
        height: u32,
    ) -> Result<(Vec<Segmentation>, Vec<Skipped>)>;

    /// Why segmentation is unavailable, if it is.
    fn missing(&self) -> Option<String>;
}

struct ModelMasks<B: Backend>(Arc<Model<B>>);

impl<B: Backend> Masks for ModelMasks<B>
where
    Model<B>: Send + Sync,
{
    fn segmentations(
        &self,
        text: &str,
        width: u32,
        height: u32,
    ) -> Result<(Vec<Segmentation>, Vec<Skipped>)> {
        match self.0.mask_decoder() {
            Some(decoder) => segmentations_from_text(text, width, height, decoder),
            None => Err(Error::MaskDecoder(self.missing().unwrap_or_default())),
        }
    }

    fn missing(&self) -> Option<String> {
        if self.0.mask_decoder().is_some() {
            return None;
        }
        let why = self
            .0
            .warnings()
            .iter()
            .find(|w| w.starts_with("segmentation"))
            .cloned();
        Some(why.unwrap_or_else(|| {
            "this model has no mask decoder (vae-oid.npz in its checkpoint directory), so it \
             cannot segment"
                .into()
        }))
    }
}

/// The generation thread and its queue.
pub(crate) struct Engine {
    queue: Mutex<Option<SyncSender<Request>>>,
    /// The vision tower's resolution, for preprocessing on the handlers' threads.
    pub image_size: usize,
    capacity: usize,
    metrics: Arc<Metrics>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub masks: Box<dyn Masks>,
}

impl Engine {
    /// Start the generation thread: at most `max_batch` requests per step, `queue` more
    /// waiting.
    pub fn start<B: Backend>(
        model: Model<B>,
        max_batch: usize,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Engine>
    where
        Model<B>: Send + Sync + 'static,
    {
        let image_size = model.config().vision.image_size;
        let model = Arc::new(model);
        let (send, requests) = sync_channel(queue);
        let loop_model = model.clone();
        let loop_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("paligemma-batcher".into())
            .spawn(move || {
                let run = move || {
                    loop_model.run_continuous(&requests, max_batch, |s| loop_metrics.step(s.batch))
                };
                // The loop runs on a worker of its own thread pool, so the kernels' parallel
                // loops start from inside the pool: small ones run inline, instead of every
                // one being handed to another thread and waited for (the costs that dominate
                // a small model's decode step). Its own pool, because the loop blocks while
                // it waits for requests, and handlers may use the global pool meanwhile.
                match rayon::ThreadPoolBuilder::new()
                    .num_threads(rayon::current_num_threads())
                    .thread_name(|i| format!("paligemma-model-{i}"))
                    .build()
                {
                    Ok(pool) => pool.install(run),
                    Err(_) => run(),
                }
            })?;
        Ok(Engine {
            queue: Mutex::new(Some(send)),
            image_size,
            capacity: queue,
            metrics,
            thread: Mutex::new(Some(thread)),
            masks: Box::new(ModelMasks(model)),
        })
    }

    /// Whether the generation thread is running.
    pub fn alive(&self) -> bool {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        queue.is_some() && thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Queue a request; a full queue is a 429, a stopped engine a 503.
    pub fn submit(
        &self,
        pixels: Vec<Pixels>,
        prompt: String,
        options: GenerateOptions,
        stream: bool,
    ) -> std::result::Result<UnboundedReceiver<Message>, ApiError> {
        let (tx, rx) = unbounded_channel();
        let request = Request::from_pixels(pixels, prompt, options)
            .streaming(stream)
            .on_event(reporter(tx, self.metrics.clone()));
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queue.as_ref() else {
            return Err(ApiError::unavailable("the server is shutting down"));
        };
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(request) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::busy(self.capacity),
                    TrySendError::Disconnected(_) => {
                        ApiError::unavailable("the generation thread has stopped")
                    }
                })
            }
        }
    }

    /// Take no more requests; the thread ends once the admitted ones are done.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Wait for the thread to end (after [`Engine::close`]).
    pub fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A request's event receiver: forwards to the handler's channel, counts queue and
/// running requests, and stops the request once the handler no longer listens.
fn reporter(
    tx: UnboundedSender<Message>,
    metrics: Arc<Metrics>,
) -> impl FnMut(Event<'_>) -> ControlFlow<()> + Send + 'static {
    let mut admitted = false;
    let mut cancelled = false;
    move |event| {
        let mut flow = |ok: bool| {
            if ok {
                ControlFlow::Continue(())
            } else {
                if !std::mem::replace(&mut cancelled, true) {
                    metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                ControlFlow::Break(())
            }
        };
        let leave = |admitted: &mut bool| {
            if std::mem::take(admitted) {
                metrics.running.fetch_sub(1, Ordering::Relaxed);
            }
        };
        match event {
            Event::Admitted => {
                metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                if tx.is_closed() {
                    return flow(false);
                }
                metrics.running.fetch_add(1, Ordering::Relaxed);
                admitted = true;
                ControlFlow::Continue(())
            }
            Event::Prefilled { prompt_tokens } => {
                let ok = tx.send(Message::Prefilled(prompt_tokens)).is_ok();
                if !ok {
                    // Dropped without a further event.
                    leave(&mut admitted);
                }
                flow(ok)
            }
            Event::Token(_) => flow(!tx.is_closed()),
            Event::Text(t) => flow(tx.send(Message::Text(t.to_string())).is_ok()),
            Event::Finished(g) => {
                leave(&mut admitted);
                flow(tx.send(Message::Finished(g)).is_ok())
            }
            Event::Failed(e) => {
                leave(&mut admitted);
                flow(tx.send(Message::Failed(e)).is_ok())
            }
        }
    }
}
