//! OpenAI-compatible chat completions (`POST /v1/chat/completions`, streaming or not)
//! and the model list (`GET /v1/models`).
//!
//! PaliGemma is not a chat model: the prompt is the text of the last user message
//! (its text parts joined by newlines) and the images are that message's
//! `image_url` parts, in order. Earlier turns are not part of the prompt.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use image::DynamicImage;
use serde::Deserialize;
use serde_json::{Value, json};

use super::engine::Message;
use super::error::ApiError;
use super::media::{RemoteFetch, url_image};
use super::{AppState, Pending, finish_reason, unix_time, usage};
use crate::generate::GenerateOptions;

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
}

/// Parse a JSON body, with errors in OpenAI's shape (413 for an oversized body).
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        if r.status().as_u16() == 413 {
            ApiError::too_large("body_too_large", r.body_text())
        } else {
            ApiError::invalid("invalid_body", r.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            "invalid_json",
            format!("the body is not valid JSON for this endpoint: {e}"),
        )
    })
}

/// `GET /v1/models`.
pub(super) async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_entry(&state)] }))
}

/// `GET /v1/models/{id}`.
pub(super) async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id != state.config.model_id {
        return Err(ApiError::unknown_model(&id, &state.config.model_id));
    }
    Ok(Json(model_entry(&state)))
}

fn model_entry(state: &AppState) -> Value {
    json!({
        "id": state.config.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "paligemma",
    })
}

/// The prompt and images of a conversation (see the module documentation).
fn prompt_and_images(
    messages: Vec<ChatMessage>,
    max_pixels: u64,
    remote: Option<RemoteFetch>,
) -> Result<(String, Vec<DynamicImage>), ApiError> {
    for m in &messages {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant" | "tool"
        ) {
            return Err(ApiError::invalid_param(
                "messages",
                "invalid_role",
                format!("unknown message role `{}`", m.role),
            ));
        }
    }
    let Some(last) = messages.into_iter().rev().find(|m| m.role == "user") else {
        return Err(ApiError::invalid_param(
            "messages",
            "no_user_message",
            "the conversation has no user message",
        ));
    };
    let mut texts = Vec::new();
    let mut images = Vec::new();
    match last.content {
        None => {}
        Some(Content::Text(t)) => texts.push(t),
        Some(Content::Parts(parts)) => {
            for part in parts {
                match part {
                    Part::Text { text } => texts.push(text),
                    Part::ImageUrl { image_url } => {
                        images.push(url_image(&image_url.url, "image_url", max_pixels, remote)?);
                    }
                }
            }
        }
    }
    if images.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "no_image",
            "PaliGemma answers about images: the last user message needs an image_url part",
        ));
    }
    Ok((texts.join("\n"), images))
}

/// The generation options a chat request asks for.
fn options(state: &AppState, r: &ChatRequest) -> Result<GenerateOptions, ApiError> {
    if r.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param(
            "n",
            "unsupported",
            "only n = 1 is supported",
        ));
    }
    let budget = state.budget(
        r.max_completion_tokens.or(r.max_tokens),
        state.config.default_max_tokens,
    )?;
    let mut options = GenerateOptions::default().max_new_tokens(budget);
    match r.temperature {
        Some(t) if !(0.0..=2.0).contains(&t) => {
            return Err(ApiError::invalid_param(
                "temperature",
                "invalid_temperature",
                format!("temperature must be between 0 and 2, got {t}"),
            ));
        }
        // Absent or 0: greedy, as the tasks were trained and evaluated.
        None | Some(0.0) => {}
        Some(t) => {
            let seed = r.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            options = options.sample(t, seed);
            if let Some(p) = r.top_p {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(ApiError::invalid_param(
                        "top_p",
                        "invalid_top_p",
                        format!("top_p must be in (0, 1], got {p}"),
                    ));
                }
                if p < 1.0 {
                    options = options.top_p(p);
                }
            }
        }
    }
    let stops = match &r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stops.len() > 16 || stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "invalid_stop",
            "stop takes up to 16 non-empty strings",
        ));
    }
    Ok(options.stop_strings(stops))
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut request: ChatRequest = json_body(body)?;
    if request.model != state.config.model_id {
        return Err(ApiError::unknown_model(
            &request.model,
            &state.config.model_id,
        ));
    }
    let options = options(&state, &request)?;
    let stream = request.stream.unwrap_or(false);
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let messages = std::mem::take(&mut request.messages);
    let max_pixels = state.config.max_image_pixels;
    let remote = state.config.remote_fetch();
    let (prompt, images) =
        tokio::task::spawn_blocking(move || prompt_and_images(messages, max_pixels, remote))
            .await
            .map_err(|e| ApiError::internal(format!("decoding the images failed: {e}")))??;
    let pending = state.submit(images, prompt, options, stream).await?;
    let id = state.id("chatcmpl");
    let created = unix_time();
    if !stream {
        let (g, prompt_tokens) = state.complete(pending).await?;
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": state.config.model_id,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": g.text },
                "finish_reason": finish_reason(g.finish),
            }],
            "usage": usage(prompt_tokens, &g),
        }))
        .into_response());
    }
    stream_response(state, pending, id, created, include_usage).await
}

/// Where a chat stream stands.
enum Phase {
    Running,
    Usage(Value),
    Done,
    End,
}

struct ChatStream {
    state: Arc<AppState>,
    pending: Pending,
    id: String,
    created: u64,
    include_usage: bool,
    phase: Phase,
    /// Messages already received before the response started.
    early: Vec<Message>,
}

impl ChatStream {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.state.config.model_id,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        SseEvent::default().data(body.to_string())
    }

    /// The next server-sent event, or `None` at the end.
    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Running) {
                Phase::End => {
                    self.phase = Phase::End;
                    return None;
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Some(SseEvent::default().data("[DONE]"));
                }
                Phase::Usage(usage) => {
                    self.phase = Phase::Done;
                    let body = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.state.config.model_id,
                        "choices": [],
                        "usage": usage,
                    });
                    return Some(SseEvent::default().data(body.to_string()));
                }
                Phase::Running => {}
            }
            let message = if self.early.is_empty() {
                let state = self.state.clone();
                state.next(&mut self.pending).await
            } else {
                Ok(self.early.remove(0))
            };
            match message {
                Ok(Message::Text(t)) => return Some(self.chunk(json!({ "content": t }), None)),
                Ok(Message::Prefilled(_)) => {}
                Ok(Message::Finished(g)) => {
                    self.phase = if self.include_usage {
                        Phase::Usage(usage(self.pending.prompt_tokens, &g))
                    } else {
                        Phase::Done
                    };
                    return Some(self.chunk(json!({}), Some(finish_reason(g.finish))));
                }
                Ok(Message::Failed(e)) => {
                    self.phase = Phase::End;
                    return Some(SseEvent::default().data(ApiError::from(e).body().to_string()));
                }
                Err(e) => {
                    self.phase = Phase::End;
                    return Some(SseEvent::default().data(e.body().to_string()));
                }
            }
        }
    }
}

/// Answer a streaming request: errors before the first token are plain HTTP errors;
/// after that, chunks in OpenAI's format and `[DONE]`.
async fn stream_response(
    state: Arc<AppState>,
    mut pending: Pending,
    id: String,
    created: u64,
    include_usage: bool,
) -> Result<Response, ApiError> {
    // Wait for the prompt to run, so that a bad prompt is a 400, not a broken stream.
    let mut early = Vec::new();
    loop {
        match state.next(&mut pending).await? {
            Message::Failed(e) => return Err(e.into()),
            m @ Message::Prefilled(_) => {
                early.push(m);
                break;
            }
            m => early.push(m),
        }
    }
    let stream = ChatStream {
        state,
        pending,
        id,
        created,
        include_usage,
        phase: Phase::Running,
        early,
    };
    let first = stream.chunk(json!({ "role": "assistant", "content": "" }), None);
    let events = futures_util::stream::unfold((stream, Some(first)), |(mut s, first)| async move {
        let event = match first {
            Some(e) => Some(e),
            None => s.next_event().await,
        };
        event.map(|e| (Ok::<_, Infallible>(e), (s, None)))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
