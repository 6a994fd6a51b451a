//! The typed endpoints: caption, answer, OCR, detect and segment, taking JSON or a
//! multipart upload and returning the crate's typed results as JSON, boxes in pixels of
//! the uploaded image.
//!
//! Masks come as COCO's uncompressed run-length encoding by default (`"rle"`: `size`
//! `[height, width]`, `counts` alternating runs of 0 and 1, starting with 0, over the
//! pixels in column-major order, as `pycocotools.mask.frPyObjects` reads them) or as a
//! base64 PNG (`"png"`: 8-bit gray, 255 inside the object).

use std::io::Cursor;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header;
use base64::Engine as _;
use image::DynamicImage;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::media::{base64_image, decode_image};
use super::openai::json_body;
use super::{AppState, finish_reason, unix_time, usage};
use crate::generate::{GenerateOptions, Generation};
use crate::segmentation::BinaryMask;
use crate::task::{BoundingBox, Detection, Segmentation, Skipped, Task, parse_detections};

/// A typed request, from JSON or multipart fields of the same names.
#[derive(Debug, Default, Deserialize)]
struct TaskRequest {
    /// One image: base64 or a `data:` URL.
    image: Option<String>,
    /// Several images (caption, answer, OCR).
    images: Option<Vec<String>>,
    objects: Option<Objects>,
    question: Option<String>,
    lang: Option<String>,
    max_tokens: Option<u64>,
    mask_format: Option<String>,
    model: Option<String>,
    #[serde(skip)]
    uploads: Vec<Bytes>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Objects {
    List(Vec<String>),
    /// `"cat ; dog"`.
    Joined(String),
}

impl TaskRequest {
    fn objects(&self) -> Result<Vec<String>, ApiError> {
        let list: Vec<String> = match &self.objects {
            None => Vec::new(),
            Some(Objects::List(v)) => v.clone(),
            Some(Objects::Joined(s)) => s.split(';').map(|o| o.trim().to_string()).collect(),
        };
        if list.is_empty() {
            return Err(ApiError::invalid_param(
                "objects",
                "no_objects",
                "name at least one object to find",
            ));
        }
        Ok(list)
    }

    fn lang(&self) -> &str {
        self.lang.as_deref().unwrap_or("en")
    }
}

/// Read a JSON body or a multipart form.
async fn read(state: &Arc<AppState>, request: Request) -> Result<TaskRequest, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let parsed = if multipart {
        let form = Multipart::from_request(request, state)
            .await
            .map_err(|r| ApiError::invalid("invalid_multipart", r.body_text()))?;
        read_form(form).await?
    } else {
        json_body(Bytes::from_request(request, state).await)?
    };
    if let Some(m) = &parsed.model
        && *m != state.config.model_id
    {
        return Err(ApiError::unknown_model(m, &state.config.model_id));
    }
    Ok(parsed)
}

async fn read_form(mut form: Multipart) -> Result<TaskRequest, ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status().as_u16() == 413 {
            ApiError::too_large("body_too_large", e.body_text())
        } else {
            ApiError::invalid("invalid_multipart", e.body_text())
        }
    };
    let mut r = TaskRequest::default();
    let mut objects = Vec::new();
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" || name == "images" {
            r.uploads.push(field.bytes().await.map_err(bad)?);
            continue;
        }
        let text = field.text().await.map_err(bad)?;
        match name.as_str() {
            "objects" => objects.extend(text.split(';').map(|o| o.trim().to_string())),
            "question" => r.question = Some(text),
            "lang" => r.lang = Some(text),
            "mask_format" => r.mask_format = Some(text),
            "model" => r.model = Some(text),
            "max_tokens" => {
                r.max_tokens = Some(text.trim().parse().map_err(|_| {
                    ApiError::invalid_param(
                        "max_tokens",
                        "invalid_max_tokens",
                        "max_tokens must be a whole number",
                    )
                })?);
            }
            other => {
                return Err(ApiError::invalid(
                    "unknown_field",
                    format!("unknown form field `{other}`"),
                ));
            }
        }
    }
    if !objects.is_empty() {
        r.objects = Some(Objects::List(objects));
    }
    Ok(r)
}

/// Decode the request's images (off the async threads).
async fn images(state: &AppState, r: &mut TaskRequest) -> Result<Vec<DynamicImage>, ApiError> {
    let max_pixels = state.config.max_image_pixels;
    let encoded: Vec<String> = r
        .image
        .take()
        .into_iter()
        .chain(r.images.take().unwrap_or_default())
        .collect();
    let uploads = std::mem::take(&mut r.uploads);
    if encoded.len() + uploads.len() > state.config.max_images {
        return Err(ApiError::invalid(
            "too_many_images",
            format!(
                "this server takes at most {} images per request",
                state.config.max_images
            ),
        ));
    }
    let decoded = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for e in &encoded {
            out.push(base64_image(e, "image", max_pixels)?);
        }
        for u in &uploads {
            out.push(decode_image(u, "image", max_pixels)?);
        }
        Ok::<_, ApiError>(out)
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding the images failed: {e}")))??;
    if decoded.is_empty() {
        return Err(ApiError::invalid_param(
            "image",
            "no_image",
            "the request has no image",
        ));
    }
    Ok(decoded)
}

/// Run a task's prompt greedily with its budget (or the request's `max_tokens`).
async fn run(
    state: &Arc<AppState>,
    r: &TaskRequest,
    images: Vec<DynamicImage>,
    task: &Task,
) -> Result<(Generation, usize), ApiError> {
    let prompt = task
        .prompt()
        .map_err(|e| ApiError::invalid("invalid_prompt", e.to_string()))?;
    let budget = state.budget(r.max_tokens, task.default_max_new_tokens())?;
    let options = GenerateOptions::default().max_new_tokens(budget);
    let pending = state.submit(images, prompt, options, false).await?;
    state.complete(pending).await
}

/// What every typed answer carries besides its result.
fn envelope(
    state: &AppState,
    g: &Generation,
    prompt_tokens: usize,
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("model".into(), json!(state.config.model_id));
    m.insert("created".into(), json!(unix_time()));
    m.insert("text".into(), json!(g.text));
    m.insert("finish_reason".into(), json!(finish_reason(g.finish)));
    m.insert("usage".into(), usage(prompt_tokens, g));
    m
}

async fn text_task(
    state: Arc<AppState>,
    request: Request,
    task: impl FnOnce(&TaskRequest) -> Result<Task, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let mut r = read(&state, request).await?;
    let task = task(&r)?;
    let images = images(&state, &mut r).await?;
    let (g, prompt_tokens) = run(&state, &r, images, &task).await?;
    Ok(Json(Value::Object(envelope(&state, &g, prompt_tokens))))
}

/// `POST /v1/caption`: `{"image", "lang"}`.
pub(super) async fn caption(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    text_task(state, request, |r| Ok(Task::caption(r.lang()))).await
}

/// `POST /v1/answer`: `{"image", "question", "lang"}`.
pub(super) async fn answer(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    text_task(state, request, |r| {
        let q = r.question.as_deref().ok_or_else(|| {
            ApiError::invalid_param("question", "no_question", "answer needs a question")
        })?;
        Ok(Task::answer(r.lang(), q))
    })
    .await
}

/// `POST /v1/ocr`: `{"image"}`.
pub(super) async fn ocr(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    text_task(state, request, |_| Ok(Task::Ocr)).await
}

fn box_json(b: &BoundingBox) -> Value {
    json!({ "x_min": b.x_min, "y_min": b.y_min, "x_max": b.x_max, "y_max": b.y_max })
}

fn skipped_json(skipped: &[Skipped]) -> Value {
    skipped
        .iter()
        .map(|s| json!({ "text": s.text, "reason": s.reason.to_string() }))
        .collect()
}

fn detection_json(d: &Detection) -> Value {
    json!({ "label": d.label, "box": box_json(&d.bbox), "loc": d.loc })
}

/// Read one image for an object task; several are refused (boxes are in one image).
async fn one_image(state: &AppState, r: &mut TaskRequest) -> Result<DynamicImage, ApiError> {
    let mut images = images(state, r).await?;
    if images.len() > 1 {
        return Err(ApiError::invalid_param(
            "image",
            "too_many_images",
            "detection and segmentation take one image: boxes are in one image's pixels",
        ));
    }
    images
        .pop()
        .ok_or_else(|| ApiError::invalid_param("image", "no_image", "the request has no image"))
}

/// `POST /v1/detect`: `{"image", "objects"}`.
pub(super) async fn detect(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let mut r = read(&state, request).await?;
    let objects = r.objects()?;
    let image = one_image(&state, &mut r).await?;
    let (w, h) = (image.width(), image.height());
    let (g, prompt_tokens) = run(&state, &r, vec![image], &Task::detect(&objects)).await?;
    let parsed = parse_detections(&g.text, w, h);
    let mut out = envelope(&state, &g, prompt_tokens);
    out.insert("image".into(), json!({ "width": w, "height": h }));
    out.insert(
        "objects".into(),
        parsed.objects.iter().map(detection_json).collect(),
    );
    out.insert("skipped".into(), skipped_json(&parsed.skipped));
    Ok(Json(Value::Object(out)))
}

/// `POST /v1/segment`: `{"image", "objects", "mask_format"}`.
pub(super) async fn segment(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let mut r = read(&state, request).await?;
    let objects = r.objects()?;
    let png = match r.mask_format.as_deref() {
        None | Some("rle") => false,
        Some("png") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "mask_format",
                "invalid_mask_format",
                format!("mask_format is `rle` or `png`, not `{other}`"),
            ));
        }
    };
    if let Some(why) = state.engine()?.masks.missing() {
        return Err(ApiError::invalid("unsupported", why));
    }
    let image = one_image(&state, &mut r).await?;
    let (w, h) = (image.width(), image.height());
    let (g, prompt_tokens) = run(&state, &r, vec![image], &Task::segment(&objects)).await?;
    let text = g.text.clone();
    let decoder_state = state.clone();
    let (found, skipped) = tokio::task::spawn_blocking(move || {
        let engine = decoder_state
            .engine
            .get()
            .ok_or_else(|| ApiError::internal("no model"))?;
        engine
            .masks
            .segmentations(&text, w, h)
            .map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding the masks failed: {e}")))??;
    let mut out = envelope(&state, &g, prompt_tokens);
    out.insert("image".into(), json!({ "width": w, "height": h }));
    out.insert(
        "objects".into(),
        found
            .iter()
            .map(|s| segmentation_json(s, png))
            .collect::<Result<_, _>>()?,
    );
    out.insert("skipped".into(), skipped_json(&skipped));
    Ok(Json(Value::Object(out)))
}

fn segmentation_json(s: &Segmentation, png: bool) -> Result<Value, ApiError> {
    let mask = if png {
        json!({ "format": "png", "data": mask_png(&s.mask)? })
    } else {
        json!({ "format": "rle", "size": [s.mask.height, s.mask.width], "counts": coco_rle(&s.mask) })
    };
    Ok(json!({
        "label": s.label,
        "box": box_json(&s.bbox),
        "loc": s.loc,
        "codes": s.codes,
        "mask": mask,
    }))
}

/// COCO's uncompressed RLE: runs over column-major pixels, starting with a run of 0s.
pub(crate) fn coco_rle(mask: &BinaryMask) -> Vec<u64> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let mut counts = Vec::new();
    let mut current = false;
    let mut run = 0u64;
    for x in 0..w {
        for y in 0..h {
            let v = mask.data[y * w + x];
            if v != current {
                counts.push(run);
                run = 0;
                current = v;
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

fn mask_png(mask: &BinaryMask) -> Result<String, ApiError> {
    let pixels: Vec<u8> = mask.data.iter().map(|&b| if b { 255 } else { 0 }).collect();
    let gray = image::GrayImage::from_raw(mask.width, mask.height, pixels)
        .ok_or_else(|| ApiError::internal("mask size mismatch"))?;
    let mut out = Vec::new();
    gray.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("encoding a mask: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_runs_are_column_major_and_start_with_background() {
        // 3 wide, 2 high; inside: (1,0), (1,1), (2,1).
        let mask = BinaryMask {
            width: 3,
            height: 2,
            data: vec![false, true, false, false, true, true],
        };
        // Column-major: x=0: 0 0 | x=1: 1 1 | x=2: 0 1.
        assert_eq!(coco_rle(&mask), [2, 2, 1, 1]);
        let full = BinaryMask {
            width: 2,
            height: 1,
            data: vec![true, true],
        };
        assert_eq!(coco_rle(&full), [0, 2]);
    }

    /// A segmentation decoded by the library (random fixture decoder) comes out of the
    /// JSON encoding as the same mask, through RLE and through PNG.
    #[test]
    fn mask_encodings_round_trip_library_masks() {
        use crate::task::{loc_token, seg_token, segmentations_from_text};
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/vae/vae-oid-random.npz"
        );
        let decoder =
            crate::MaskDecoder::<crate::backend::Cpu>::from_npz(path, &Default::default()).unwrap();
        let mut text: String = [100, 200, 700, 900].iter().map(|&v| loc_token(v)).collect();
        text.extend((0..16).map(|i| seg_token(i * 8)));
        text.push_str(" cat");
        let (found, _) = segmentations_from_text(&text, 61, 47, &decoder).unwrap();
        assert_eq!(found.len(), 1);
        let s = &found[0];
        assert!(
            s.mask.area() > 0 && s.mask.area() < 61 * 47,
            "a partial mask"
        );
        let rle = segmentation_json(s, false).unwrap();
        assert_eq!(rle["mask"]["size"], json!([47, 61]));
        let mut flags = Vec::new();
        for (i, n) in rle["mask"]["counts"].as_array().unwrap().iter().enumerate() {
            flags.extend(std::iter::repeat_n(
                i % 2 == 1,
                n.as_u64().unwrap() as usize,
            ));
        }
        let (w, h) = (61, 47);
        assert_eq!(flags.len(), w * h);
        for x in 0..w {
            for y in 0..h {
                assert_eq!(flags[x * h + y], s.mask.data[y * w + x]);
            }
        }
        assert_eq!(rle["codes"], json!(s.codes));
        assert_eq!(rle["box"]["x_min"].as_f64().unwrap(), s.bbox.x_min);
        let png = segmentation_json(s, true).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png["mask"]["data"].as_str().unwrap())
            .unwrap();
        let gray = image::load_from_memory(&bytes).unwrap().to_luma8();
        assert_eq!((gray.width(), gray.height()), (61, 47));
        let flags: Vec<bool> = gray.pixels().map(|p| p.0[0] == 255).collect();
        assert_eq!(flags, s.mask.data);
    }
}
