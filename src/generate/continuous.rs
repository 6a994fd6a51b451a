//! Continuous batching: requests arrive on a channel while others are being decoded;
//! new ones join the running batch at a step boundary and finished ones leave it, so
//! concurrent requests share every forward pass.
//!
//! Each request keeps its own options (budget, sampling, stops) and its own sampler
//! seed, so a request computes what it would alone: greedy outputs equal
//! [`Model::generate`]'s. [`Model::run_continuous`] runs the loop on the calling
//! thread until the channel closes and every admitted request has finished.
//!
//! ```
//! # fn main() -> paligemma::Result<()> {
//! use std::ops::ControlFlow;
//! use std::sync::mpsc;
//! use paligemma::continuous::{Event, Request};
//! use paligemma::{GenerateOptions, Model, backend::Cpu};
//!
//! let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
//! let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
//! let (send, requests) = mpsc::channel();
//! let (done, results) = mpsc::channel();
//! for prompt in ["caption en", "answer en what is this?"] {
//!     let done = done.clone();
//!     let request = Request::new(vec![image.clone()], prompt, GenerateOptions::default().max_new_tokens(6))
//!         .on_event(move |event| {
//!             if let Event::Finished(generation) = event {
//!                 let _ = done.send(generation.text);
//!             }
//!             ControlFlow::Continue(())
//!         });
//!     send.send(request).ok();
//! }
//! drop(send); // the loop returns once the channel is closed and both are done
//! model.run_continuous(&requests, 8, |_| {});
//! assert_eq!(results.try_iter().count(), 2);
//! # Ok(()) }
//! ```

use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use burn::tensor::{Tensor, backend::Backend};
use image::DynamicImage;

use super::batch::host_logits;
use super::options::GenerateOptions;
use super::output::{Generation, Timings};
use super::row::Row;
use crate::decode_state::DecodeState;
use crate::error::{Error, Result};
use crate::model::{ImageEmbedding, Model};
use crate::preprocess::{Pixels, pixels_of};

/// What the loop reports about a request, in this order: `Admitted`, `Prefilled`, then
/// per token `Text` (streaming requests only, when text became final) and `Token`,
/// then `Finished` or `Failed`. A request that was refused before its prefill gets
/// `Failed` right after `Admitted`.
#[derive(Debug)]
pub enum Event<'a> {
    /// Taken off the queue; returning `Break` here drops the request unrun.
    Admitted,
    /// The prompt ran; its first token is being chosen.
    Prefilled {
        /// Prompt tokens, image tokens included.
        prompt_tokens: usize,
    },
    /// A token was chosen; returning `Break` stops the request (finish `Cancelled`).
    Token(u32),
    /// A piece of final text (streaming requests).
    Text(&'a str),
    /// The request finished.
    Finished(Generation),
    /// The request failed; nothing more follows.
    Failed(Error),
}

/// Receives a request's events; `Break` stops it.
type EventFn = Box<dyn FnMut(Event<'_>) -> ControlFlow<()> + Send>;

/// A prompt about one image or several, with its own options.
pub struct Request {
    images: RequestImages,
    prompt: String,
    options: GenerateOptions,
    stream: bool,
    on_event: EventFn,
}

/// A request's images: decoded, to be preprocessed by the loop, or already pixels.
enum RequestImages {
    Images(Vec<DynamicImage>),
    Pixels(Vec<Pixels>),
}

impl RequestImages {
    fn len(&self) -> usize {
        match self {
            RequestImages::Images(i) => i.len(),
            RequestImages::Pixels(p) => p.len(),
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("images", &self.images.len())
            .field("prompt", &self.prompt)
            .field("options", &self.options)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A request whose events go nowhere (set a receiver with [`Request::on_event`]).
    /// The loop preprocesses its images; see [`Request::from_pixels`] to do that on
    /// another thread.
    pub fn new(
        images: Vec<DynamicImage>,
        prompt: impl Into<String>,
        options: GenerateOptions,
    ) -> Self {
        Self::with_images(RequestImages::Images(images), prompt.into(), options)
    }

    /// A request about images already preprocessed ([`Model::pixels`]), so the loop
    /// only runs the model. Pixels made for another resolution fail the request.
    pub fn from_pixels(
        pixels: Vec<Pixels>,
        prompt: impl Into<String>,
        options: GenerateOptions,
    ) -> Self {
        Self::with_images(RequestImages::Pixels(pixels), prompt.into(), options)
    }

    fn with_images(images: RequestImages, prompt: String, options: GenerateOptions) -> Self {
        Request {
            images,
            prompt,
            options,
            stream: false,
            on_event: Box::new(|_| ControlFlow::Continue(())),
        }
    }

    /// Send this request's events to `f`. It runs on the loop's thread between steps,
    /// so it must not block.
    pub fn on_event(
        mut self,
        f: impl FnMut(Event<'_>) -> ControlFlow<()> + Send + 'static,
    ) -> Self {
        self.on_event = Box::new(f);
        self
    }

    /// Report text as it becomes final ([`Event::Text`]).
    pub fn streaming(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }
}

/// What one decode step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepStats {
    /// Requests decoded in this step's forward pass.
    pub batch: usize,
    /// Requests admitted (prefilled) just before it.
    pub admitted: usize,
}

/// A request being decoded.
struct Live {
    row: Row,
    on_event: EventFn,
    stream: bool,
    admitted: Instant,
    first_token: Instant,
}

impl Live {
    /// Choose this request's next token from its logits and report it; returns whether
    /// it is still running.
    fn step<B: Backend>(&mut self, model: &Model<B>, logits: &mut [f32]) -> Result<bool> {
        let on_event = &mut self.on_event;
        let token = if self.stream {
            let mut text = |t: &str| on_event(Event::Text(t));
            self.row
                .step(0, logits, model.tokenizer(), Some(&mut text))?
        } else {
            self.row.step(0, logits, model.tokenizer(), None)?
        };
        if (self.on_event)(Event::Token(token)).is_break() {
            self.row.cancel(model.tokenizer())?;
        }
        Ok(self.row.finish.is_none())
    }

    /// Report the finished generation.
    fn finish(mut self) {
        let tokens = self.row.generated.len();
        let timings = Timings {
            prefill_s: (self.first_token - self.admitted).as_secs_f64(),
            decode_s: self.first_token.elapsed().as_secs_f64(),
            tokens,
            decode_elapsed_s: Vec::new(),
        };
        let _ = (self.on_event)(Event::Finished(self.row.into_generation(timings)));
    }

    fn fail(mut self, error: Error) {
        let _ = (self.on_event)(Event::Failed(error));
    }
}

/// The running batch: the decoding state and, per row of it, the live request (`None`
/// once it finished; such rows are fed padding until the batch is regrouped).
struct Running<B: Backend> {
    state: DecodeState<B>,
    slots: Vec<Option<Live>>,
}

impl<B: Backend> Running<B> {
    fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// A request whose images are pixels, waiting for the vision tower.
struct Prepared<B: Backend> {
    /// `[images, 3, size, size]`.
    pixels: Tensor<B, 4>,
    original_sizes: Vec<(u32, u32)>,
    row: Row,
    on_event: EventFn,
    stream: bool,
    admitted: Instant,
}

/// A request ready for its prefill.
struct Admitted<B: Backend> {
    embedding: ImageEmbedding<B>,
    row: Row,
    on_event: EventFn,
    stream: bool,
    admitted: Instant,
}

impl<B: Backend> Model<B> {
    /// Run requests from `requests` with continuous batching, at most `max_batch` at a
    /// time, until the channel is closed and every admitted request has finished.
    /// `on_step` hears about every decode step (for metrics).
    ///
    /// Errors of one request (bad options, an undecodable image, a prompt too long for
    /// the context, non-finite logits) fail that request only.
    pub fn run_continuous(
        &self,
        requests: &Receiver<Request>,
        max_batch: usize,
        mut on_step: impl FnMut(StepStats),
    ) {
        let max_batch = max_batch.max(1);
        let mut running: Option<Running<B>> = None;
        let mut closed = false;
        loop {
            let live = running.as_ref().map_or(0, Running::live);
            let mut incoming = Vec::new();
            if live == 0 {
                if closed {
                    return;
                }
                match requests.recv() {
                    Ok(r) => incoming.push(r),
                    Err(_) => return,
                }
            }
            while live + incoming.len() < max_batch {
                match requests.try_recv() {
                    Ok(r) => incoming.push(r),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let admitted = incoming.len();
            if !incoming.is_empty() {
                running = self.admit(incoming, running.take());
            }
            if let Some(batch) = running.as_mut() {
                on_step(StepStats {
                    batch: batch.live(),
                    admitted,
                });
                if let Err(e) = self.decode_step(batch) {
                    for live in batch.slots.drain(..).flatten() {
                        live.fail(Error::Backend(format!("decode step failed: {e}")));
                    }
                }
                running = self.compact(running.take());
            }
        }
    }

    /// Prefill new requests (all at once, or one by one if that fails, so that one
    /// bad request fails alone), choose their first tokens and merge them into the
    /// running batch.
    fn admit(&self, incoming: Vec<Request>, running: Option<Running<B>>) -> Option<Running<B>> {
        let prepared: Vec<Prepared<B>> = incoming
            .into_iter()
            .filter_map(|request| self.prepare(request))
            .collect();
        let ready = self.encode_prepared(prepared);
        if ready.is_empty() {
            return running;
        }
        let room = if running.is_some() {
            0
        } else {
            ready.iter().map(|a| a.row.remaining()).max().unwrap_or(0)
        };
        let (mut fresh, states) = match self.prefill_admitted(&ready, room) {
            Ok((state, logits)) => (ready, vec![(state, logits)]),
            Err(_) if ready.len() > 1 => {
                let mut ok = Vec::new();
                let mut states = Vec::new();
                for mut a in ready {
                    match self.prefill_admitted(std::slice::from_ref(&a), room) {
                        Ok(s) => {
                            ok.push(a);
                            states.push(s);
                        }
                        Err(e) => {
                            let _ = (a.on_event)(Event::Failed(e));
                        }
                    }
                }
                (ok, states)
            }
            Err(e) => {
                if let Some(mut a) = ready.into_iter().next() {
                    let _ = (a.on_event)(Event::Failed(e));
                }
                return running;
            }
        };
        // Pair each prefilled state with its requests' first-token logits.
        let mut groups: Vec<(DecodeState<B>, Vec<Option<Live>>)> = Vec::new();
        let mut fresh = fresh.drain(..);
        for (state, mut logits) in states {
            let mut slots = Vec::with_capacity(state.batch());
            let vocab = logits.len() / state.batch().max(1);
            for step in logits.chunks_mut(vocab) {
                let Some(a) = fresh.next() else { break };
                let mut live = Live {
                    row: a.row,
                    on_event: a.on_event,
                    stream: a.stream,
                    admitted: a.admitted,
                    first_token: Instant::now(),
                };
                let prompt_tokens = live.row.prompt.len();
                if (live.on_event)(Event::Prefilled { prompt_tokens }).is_break() {
                    slots.push(None);
                    continue;
                }
                match live.step(self, step) {
                    Ok(true) => slots.push(Some(live)),
                    Ok(false) => {
                        live.finish();
                        slots.push(None);
                    }
                    Err(e) => {
                        live.fail(e);
                        slots.push(None);
                    }
                }
            }
            groups.push((state, slots));
        }
        let mut all = Vec::new();
        if let Some(r) = running {
            all.push((r.state, r.slots));
        }
        all.extend(groups);
        self.merge(all)
    }

    /// Validate a request, turn its images into pixels and tokenize its prompt; a
    /// request that fails here fails alone.
    fn prepare(&self, mut request: Request) -> Option<Prepared<B>> {
        if (request.on_event)(Event::Admitted).is_break() {
            return None;
        }
        let ready = request.options.validate().and_then(|()| {
            let count = request.images.len();
            self.check_image_count(count)?;
            let preprocessed;
            let pixels = match &request.images {
                RequestImages::Images(images) => {
                    let images: Vec<&DynamicImage> = images.iter().collect();
                    preprocessed = pixels_of(&images, self.config().vision.image_size)?;
                    &preprocessed
                }
                RequestImages::Pixels(pixels) => pixels,
            };
            let sizes = pixels.iter().map(Pixels::original_size).collect();
            let pixels = self.pixel_tensor(pixels)?;
            let ids = self.prompt_within_context(&request.prompt, count, &request.options)?;
            Ok((pixels, sizes, ids))
        });
        match ready {
            Ok((pixels, original_sizes, ids)) => Some(Prepared {
                pixels,
                original_sizes,
                row: Row::new(ids, &request.options, self.tokenizer(), 0),
                on_event: request.on_event,
                stream: request.stream,
                admitted: Instant::now(),
            }),
            Err(e) => {
                let _ = (request.on_event)(Event::Failed(e));
                None
            }
        }
    }

    /// The images of every prepared request through the vision tower as one batch (each
    /// image's features do not depend on the others'), split back per request.
    fn encode_prepared(&self, prepared: Vec<Prepared<B>>) -> Vec<Admitted<B>> {
        if prepared.is_empty() {
            return Vec::new();
        }
        let pixels = prepared.iter().map(|p| p.pixels.clone()).collect();
        let features = self.image_features(Tensor::cat(pixels, 0));
        let [_, tokens, hidden] = features.dims();
        let mut first = 0;
        prepared
            .into_iter()
            .map(|p| {
                let k = p.original_sizes.len();
                let own = features
                    .clone()
                    .slice([first..first + k, 0..tokens, 0..hidden]);
                first += k;
                Admitted {
                    embedding: ImageEmbedding {
                        features: own.reshape([1, k * tokens, hidden]),
                        original_sizes: p.original_sizes,
                    },
                    row: p.row,
                    on_event: p.on_event,
                    stream: p.stream,
                    admitted: p.admitted,
                }
            })
            .collect()
    }

    fn prefill_admitted(
        &self,
        ready: &[Admitted<B>],
        room: usize,
    ) -> Result<(DecodeState<B>, Vec<f32>)> {
        let prompts: Vec<(&Tensor<B, 3>, &[u32])> = ready
            .iter()
            .map(|a| (&a.embedding.features, a.row.prompt.as_slice()))
            .collect();
        let (state, logits) = self.prefill(&prompts, room)?;
        Ok((state, host_logits(logits)?))
    }

    /// Feed every live row its last token and choose the next one.
    fn decode_step(&self, batch: &mut Running<B>) -> Result<()> {
        let pad = self.tokenizer().padding_id();
        let tokens: Vec<u32> = batch
            .slots
            .iter()
            .map(|s| s.as_ref().and_then(|l| l.row.last()).unwrap_or(pad))
            .collect();
        let mut logits = host_logits(self.extend(&mut batch.state, &tokens)?)?;
        let vocab = logits.len() / tokens.len().max(1);
        for (slot, step) in batch.slots.iter_mut().zip(logits.chunks_mut(vocab)) {
            let Some(mut live) = slot.take() else {
                continue;
            };
            match live.step(self, step) {
                Ok(true) => *slot = Some(live),
                Ok(false) => live.finish(),
                Err(e) => live.fail(e),
            }
        }
        Ok(())
    }

    /// Drop finished rows once they are half the batch (regrouping copies the cache).
    fn compact(&self, running: Option<Running<B>>) -> Option<Running<B>> {
        let batch = running?;
        let live = batch.live();
        if live == 0 {
            return None;
        }
        if live * 2 > batch.slots.len() {
            return Some(batch);
        }
        self.merge(vec![(batch.state, batch.slots)])
    }

    /// One running batch of the live rows of several groups.
    fn merge(&self, groups: Vec<(DecodeState<B>, Vec<Option<Live>>)>) -> Option<Running<B>> {
        let groups: Vec<_> = groups
            .into_iter()
            .filter(|(_, slots)| slots.iter().any(Option::is_some))
            .collect();
        if groups.len() == 1 && groups[0].1.iter().all(Option::is_some) {
            let (state, slots) = groups.into_iter().next()?;
            return Some(Running { state, slots });
        }
        let rows: Vec<Vec<usize>> = groups
            .iter()
            .map(|(_, slots)| (0..slots.len()).filter(|&i| slots[i].is_some()).collect())
            .collect();
        let room = groups
            .iter()
            .flat_map(|(_, slots)| slots.iter().flatten())
            .map(|l| l.row.remaining())
            .max()?;
        let parts: Vec<(&DecodeState<B>, &[usize])> = groups
            .iter()
            .zip(&rows)
            .map(|((state, _), rows)| (state, rows.as_slice()))
            .collect();
        match DecodeState::regroup(&parts, room) {
            Ok(state) => Some(Running {
                state,
                slots: groups
                    .into_iter()
                    .flat_map(|(_, slots)| slots.into_iter().flatten())
                    .map(Some)
                    .collect(),
            }),
            Err(e) => {
                for live in groups
                    .into_iter()
                    .flat_map(|(_, s)| s.into_iter().flatten())
                {
                    live.fail(Error::Backend(format!("regrouping the batch failed: {e}")));
                }
                None
            }
        }
    }
}
