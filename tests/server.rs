//! The HTTP server on loopback, through a real HTTP client: every endpoint against the
//! library's own answers, streaming, errors, limits, disconnects and shutdown.
#![cfg(feature = "server")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{fixtures, open_image};
use paligemma::server::{Server, ServerConfig};
use paligemma::{GenerateOptions, Model, backend::Cpu};
use serde_json::{Value, json};

/// A server on a free loopback port, shut down when dropped.
struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    fn start(config: ServerConfig, model: Option<Model<Cpu>>) -> (Running, Server) {
        let server = Server::new(config);
        if let Some(m) = model {
            server.attach(m).unwrap();
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, address) = std::sync::mpsc::channel();
        let serving = server.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                bound.send(listener.local_addr()?).ok();
                serving
                    .serve(listener, async {
                        stopped.await.ok();
                    })
                    .await
            })
        });
        let address = address.recv().unwrap();
        (
            Running {
                base: format!("http://{address}"),
                stop: Some(stop),
                thread: Some(thread),
            },
            server,
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn address(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// Signal shutdown and wait for the server to stop.
    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap(),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// Status, headers we look at, and the body as JSON (or a string).
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("the request was answered");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        retry_after,
        body,
    }
}

fn post(url: &str, body: &Value) -> Answer {
    answer(
        agent()
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string()),
    )
}

fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

fn png_bytes(image: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn b64(image: &image::DynamicImage) -> String {
    base64::engine::general_purpose::STANDARD.encode(png_bytes(image))
}

fn shapes() -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(paligemma::demo::Scene::generate(0).render())
}

fn demo() -> Model<Cpu> {
    Model::<Cpu>::demo(&Default::default()).unwrap()
}

fn tiny() -> Model<Cpu> {
    Model::<Cpu>::from_pretrained(fixtures().join("pg1-tiny"), &Default::default()).unwrap()
}

fn config(id: &str) -> ServerConfig {
    ServerConfig {
        model_id: id.into(),
        ..ServerConfig::default()
    }
}

fn chat_body(model: &str, prompt: &str, image: &image::DynamicImage) -> Value {
    json!({
        "model": model,
        "messages": [{
            "role": "user",
            "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", b64(image))}},
            ],
        }],
    })
}

/// Health is 503 until a model is attached; the model list, metrics.
#[test]
fn health_turns_ready_once_the_model_is_attached() {
    let (running, server) = Running::start(config("demo"), None);
    let h = get(&running.url("/health"));
    assert_eq!(
        (h.status, h.body["status"].as_str()),
        (503, Some("loading"))
    );
    let refused = post(
        &running.url("/v1/caption"),
        &json!({"image": b64(&shapes())}),
    );
    assert_eq!(refused.status, 503);
    assert!(refused.retry_after.is_some());
    server.attach(demo()).unwrap();
    let h = get(&running.url("/health"));
    assert_eq!((h.status, h.body["status"].as_str()), (200, Some("ready")));
    let models = get(&running.url("/v1/models"));
    assert_eq!(models.body["data"][0]["id"], "demo");
    assert_eq!(get(&running.url("/v1/models/demo")).status, 200);
    assert_eq!(get(&running.url("/v1/models/other")).status, 404);
    let metrics = get(&running.url("/metrics"));
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("paligemma_requests_total{endpoint=\"/health\",status=\"503\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("paligemma_errors_total{endpoint=\"/v1/caption\",code=\"unavailable\"} 1")
    );
}

/// Chat completions answer what the library answers, with OpenAI's fields.
#[test]
fn chat_completions_equal_the_library() {
    let model = demo();
    let image = shapes();
    let caption = model.caption(&image, "en").unwrap();
    let single = model
        .generate(
            &image,
            "caption en",
            &GenerateOptions::default().max_new_tokens(128),
        )
        .unwrap();
    let (running, _) = Running::start(config("demo"), Some(model));
    let a = post(
        &running.url("/v1/chat/completions"),
        &chat_body("demo", "caption en", &image),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["object"], "chat.completion");
    assert_eq!(a.body["choices"][0]["message"]["content"], caption.as_str());
    assert_eq!(a.body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(a.body["choices"][0]["finish_reason"], "stop");
    let usage = &a.body["usage"];
    assert_eq!(usage["prompt_tokens"], single.prompt_ids.len());
    assert_eq!(usage["completion_tokens"], single.generated_ids.len());
    assert_eq!(
        usage["total_tokens"],
        single.prompt_ids.len() + single.generated_ids.len()
    );

    // A budget cut short: finish_reason length.
    let mut body = chat_body("demo", "caption en", &image);
    body["max_tokens"] = json!(2);
    let short = post(&running.url("/v1/chat/completions"), &body);
    assert_eq!(short.body["choices"][0]["finish_reason"], "length");
    assert_eq!(short.body["usage"]["completion_tokens"], 2);

    // A stop string.
    let mut body = chat_body("demo", "caption en", &image);
    body["stop"] = json!(" and");
    let stopped = post(&running.url("/v1/chat/completions"), &body);
    let expected = caption.split(" and").next().unwrap();
    assert_eq!(stopped.body["choices"][0]["message"]["content"], expected);

    // Sampling with a seed is reproducible and equals the library's draw.
    let mut body = chat_body("demo", "caption en", &image);
    body["temperature"] = json!(1.5);
    body["seed"] = json!(7);
    let drawn = post(&running.url("/v1/chat/completions"), &body);
    let again = post(&running.url("/v1/chat/completions"), &body);
    assert_eq!(
        drawn.body["choices"][0]["message"]["content"],
        again.body["choices"][0]["message"]["content"]
    );
    let model = demo();
    let library = model
        .generate(
            &image,
            "caption en",
            &GenerateOptions::default()
                .max_new_tokens(128)
                .sample(1.5, 7),
        )
        .unwrap();
    assert_eq!(
        drawn.body["choices"][0]["message"]["content"],
        library.text.as_str()
    );
}

/// Server-sent events: a role chunk, content chunks that concatenate to the answer, a
/// finish chunk, the usage chunk when asked for, then `[DONE]`.
#[test]
fn streaming_sends_openai_chunks_then_done() {
    let model = demo();
    let image = shapes();
    let caption = model.caption(&image, "en").unwrap();
    let (running, _) = Running::start(config("demo"), Some(model));
    let mut body = chat_body("demo", "caption en", &image);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = agent()
        .post(&running.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    let reader = BufReader::new(response.into_body().into_reader());
    let data: Vec<String> = reader
        .lines()
        .map(Result::unwrap)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, caption);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"])
    );
}

/// A multipart body with `fields` and one PNG `image` file.
fn multipart(fields: &[(&str, &str)], image: &[u8]) -> (String, Vec<u8>) {
    let boundary = "paligemma-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(image);
    write!(body, "\r\n--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The typed endpoints return the library's typed results, from JSON and multipart.
#[test]
fn typed_endpoints_equal_the_library() {
    let model = demo();
    let image = shapes();
    let boxes = model.detect(&image, "red triangle").unwrap();
    let caption = model.caption(&image, "en").unwrap();
    let count = model
        .answer(&image, "en", "how many shapes are there?")
        .unwrap();
    let ocr = model.ocr(&image).unwrap();
    let (running, _) = Running::start(config("demo"), Some(model));

    let d = post(
        &running.url("/v1/detect"),
        &json!({"image": b64(&image), "objects": ["red triangle"]}),
    );
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.body["image"], json!({"width": 224, "height": 224}));
    let objects = d.body["objects"].as_array().unwrap();
    assert_eq!(objects.len(), boxes.len());
    assert!(!boxes.is_empty());
    for (o, b) in objects.iter().zip(&boxes) {
        assert_eq!(o["label"], b.label.as_str());
        assert_eq!(o["box"]["x_min"].as_f64().unwrap(), b.bbox.x_min);
        assert_eq!(o["box"]["y_max"].as_f64().unwrap(), b.bbox.y_max);
        assert_eq!(o["loc"], json!(b.loc));
    }
    assert_eq!(d.body["skipped"], json!([]));

    // The same through a multipart upload, objects joined by ';'.
    let (kind, body) = multipart(
        &[("objects", "red triangle ; blue square")],
        &png_bytes(&image),
    );
    let m = answer(
        agent()
            .post(&running.url("/v1/detect"))
            .header("content-type", &kind)
            .send(&body[..]),
    );
    assert_eq!(m.status, 200, "{}", m.body);
    assert!(m.body["text"].as_str().unwrap().contains("<loc"));

    let c = post(&running.url("/v1/caption"), &json!({"image": b64(&image)}));
    assert_eq!(c.body["text"], caption.as_str());
    let a = post(
        &running.url("/v1/answer"),
        &json!({"image": b64(&image), "question": "how many shapes are there?", "lang": "en"}),
    );
    assert_eq!(a.body["text"], count.as_str());
    let o = post(&running.url("/v1/ocr"), &json!({"image": b64(&image)}));
    assert_eq!(o.body["text"], ocr.as_str());
    // Several images for a text task; detection refuses them.
    let two = post(
        &running.url("/v1/caption"),
        &json!({"images": [b64(&image), b64(&image)]}),
    );
    assert_eq!(two.status, 200);
    let refused = post(
        &running.url("/v1/detect"),
        &json!({"images": [b64(&image), b64(&image)], "objects": ["cat"]}),
    );
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (400, Some("too_many_images"))
    );
}

/// `/v1/segment` gives the library's segmentation of the same output (the random
/// fixture model with the random mask decoder; its outputs are mostly skipped spans,
/// so the mask encodings themselves are checked in `server::typed`'s unit tests), and
/// a model without a mask decoder says so.
#[test]
fn segment_returns_the_library_result() {
    let vae = fixtures().join("vae/vae-oid-random.npz");
    let model = tiny().with_mask_decoder(&vae).unwrap();
    let image = open_image("photo.png");
    let objects = ["cat"];
    let options = GenerateOptions::default()
        .max_new_tokens(paligemma::Task::segment(&objects).default_max_new_tokens());
    let library = model.segment_with(&image, &objects, &options).unwrap();
    let (running, _) = Running::start(config("tiny"), Some(model));
    for format in ["rle", "png"] {
        let a = post(
            &running.url("/v1/segment"),
            &json!({"image": b64(&image), "objects": objects, "mask_format": format}),
        );
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["text"], library.generation.text.as_str());
        assert_eq!(
            a.body["objects"].as_array().unwrap().len(),
            library.objects.len()
        );
        let skipped: Vec<(String, String)> = library
            .skipped
            .iter()
            .map(|s| (s.text.clone(), s.reason.to_string()))
            .collect();
        let theirs: Vec<(String, String)> = a.body["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["text"].as_str().unwrap().to_string(),
                    s["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(theirs, skipped);
    }
    let bad = post(
        &running.url("/v1/segment"),
        &json!({"image": b64(&image), "objects": objects, "mask_format": "svg"}),
    );
    assert_eq!(error_code(&bad), (400, "invalid_mask_format".into()));
    let (plain, _) = Running::start(config("tiny"), Some(tiny()));
    let no = post(
        &plain.url("/v1/segment"),
        &json!({"image": b64(&image), "objects": objects}),
    );
    assert_eq!(
        (no.status, no.body["error"]["code"].as_str()),
        (400, Some("unsupported"))
    );
}

fn error_code(a: &Answer) -> (u16, String) {
    (
        a.status,
        a.body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// A plain HTTP/1.1 file server on a free loopback port, one thread, for the
/// server's image downloads: `files` by path, 404 for anything else.
fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while reader.read_line(&mut request).is_ok_and(|n| n > 2) {}
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let reply = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    [head.into_bytes(), body.clone()].concat()
                }
                None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_vec(),
            };
            stream.write_all(&reply).ok();
        }
    });
    base
}

/// With fetching allowed, an http image URL is downloaded and answered as the same
/// image inline; a missing image and one over the byte limit get typed errors.
#[test]
fn remote_image_urls_are_fetched_only_when_allowed() {
    let model = demo();
    let image = shapes();
    let caption = model.caption(&image, "en").unwrap();
    let png = png_bytes(&image);
    let limit = 200_000;
    assert!(png.len() < limit);
    let files = serve_files(vec![("/shapes.png", png), ("/big.png", vec![0; limit + 1])]);
    let config = ServerConfig {
        fetch_remote_images: true,
        max_body_bytes: limit,
        ..config("demo")
    };
    let (running, _) = Running::start(config, Some(model));
    let chat = running.url("/v1/chat/completions");
    let with_url = |url: String| {
        let mut b = chat_body("demo", "caption en", &image);
        b["messages"][0]["content"][1]["image_url"]["url"] = json!(url);
        post(&chat, &b)
    };
    let fetched = with_url(format!("{files}/shapes.png"));
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert_eq!(
        fetched.body["choices"][0]["message"]["content"],
        caption.as_str()
    );
    let missing = with_url(format!("{files}/none.png"));
    assert_eq!(error_code(&missing), (400, "image_fetch_failed".into()));
    let message = missing.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("404"), "{message}");
    let big = with_url(format!("{files}/big.png"));
    assert_eq!(error_code(&big), (413, "image_too_large".into()));
    // Other schemes stay refused even when fetching is allowed.
    let file = with_url("file:///etc/passwd".into());
    assert_eq!(error_code(&file), (400, "remote_images_disabled".into()));
}

/// Every bad request gets OpenAI's error JSON with the right status.
#[test]
fn bad_requests_get_typed_errors() {
    let limits = ServerConfig {
        max_body_bytes: 200_000,
        max_image_pixels: 300 * 300,
        max_tokens: 64,
        ..config("demo")
    };
    let (running, _) = Running::start(limits, Some(demo()));
    let chat = running.url("/v1/chat/completions");
    let image = shapes();
    let raw = |body: &str| {
        answer(
            agent()
                .post(&chat)
                .header("content-type", "application/json")
                .send(body),
        )
    };
    assert_eq!(error_code(&raw("{not json")), (400, "invalid_json".into()));
    assert_eq!(
        error_code(&raw(r#"{"model": "demo"}"#)),
        (400, "invalid_json".into())
    );
    let unknown = post(&chat, &chat_body("gpt-4o", "caption en", &image));
    assert_eq!(error_code(&unknown), (404, "model_not_found".into()));
    assert_eq!(unknown.body["error"]["param"], "model");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = chat_body("demo", "caption en", &image);
        f(&mut b);
        post(&chat, &b)
    };
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, u16, &str)> = vec![
        (
            "bad base64",
            Box::new(|b| {
                b["messages"][0]["content"][1]["image_url"]["url"] =
                    json!("data:image/png;base64,@@@")
            }),
            400,
            "invalid_base64",
        ),
        (
            "not an image",
            Box::new(|b| {
                b["messages"][0]["content"][1]["image_url"]["url"] =
                    json!("data:text/plain;base64,aGVsbG8gd29ybGQ=")
            }),
            400,
            "invalid_image",
        ),
        (
            "remote URL",
            Box::new(|b| {
                b["messages"][0]["content"][1]["image_url"]["url"] =
                    json!("http://169.254.169.254/x.png")
            }),
            400,
            "remote_images_disabled",
        ),
        (
            "no image",
            Box::new(|b| b["messages"][0]["content"] = json!("caption en")),
            400,
            "no_image",
        ),
        (
            "too many tokens",
            Box::new(|b| b["max_tokens"] = json!(65)),
            400,
            "invalid_max_tokens",
        ),
        ("n = 2", Box::new(|b| b["n"] = json!(2)), 400, "unsupported"),
        (
            "temperature",
            Box::new(|b| b["temperature"] = json!(-1)),
            400,
            "invalid_temperature",
        ),
        (
            "over-long prompt",
            Box::new(|b| b["messages"][0]["content"][0]["text"] = json!("caption ".repeat(600))),
            400,
            "invalid_prompt",
        ),
        (
            "no user message",
            Box::new(|b| b["messages"][0]["role"] = json!("assistant")),
            400,
            "no_user_message",
        ),
        (
            "unknown role",
            Box::new(|b| b["messages"][0]["role"] = json!("wizard")),
            400,
            "invalid_role",
        ),
    ];
    for (what, f, status, code) in cases {
        let a = with(&*f);
        assert_eq!(error_code(&a), (status, code.into()), "{what}: {}", a.body);
        assert_eq!(a.body["error"]["type"], "invalid_request_error", "{what}");
    }
    // An image over the pixel limit (checked before decoding), a body over the limit.
    let big = image::DynamicImage::ImageRgb8(image::RgbImage::new(400, 400));
    let a = post(&running.url("/v1/caption"), &json!({"image": b64(&big)}));
    assert_eq!(error_code(&a), (413, "image_too_large".into()));
    // A body over the limit is refused from its Content-Length, before it is read
    // (the server closes the connection, so the client sends only the headers).
    let mut stream = TcpStream::connect(running.address()).unwrap();
    write!(
        stream,
        "POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200001\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the error body is complete (the server may keep the socket open).
    while !String::from_utf8_lossy(&reply).contains("}}") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"code\":\"body_too_large\""), "{reply}");
    // Typed endpoint errors.
    let a = post(&running.url("/v1/detect"), &json!({"image": b64(&image)}));
    assert_eq!(error_code(&a), (400, "no_objects".into()));
    let a = post(&running.url("/v1/answer"), &json!({"image": b64(&image)}));
    assert_eq!(error_code(&a), (400, "no_question".into()));
    let a = post(
        &running.url("/v1/detect"),
        &json!({"image": b64(&image), "objects": ["a\nb"]}),
    );
    assert_eq!(error_code(&a), (400, "invalid_prompt".into()));
    let a = post(&running.url("/v1/caption"), &json!({}));
    assert_eq!(error_code(&a), (400, "no_image".into()));
    // Routes and methods.
    assert_eq!(
        error_code(&get(&running.url("/v2/nothing"))),
        (404, "not_found".into())
    );
    assert_eq!(error_code(&get(&chat)), (405, "method_not_allowed".into()));
}

#[test]
fn api_key_is_required_when_set() {
    let keyed = ServerConfig {
        api_key: Some("sekret".into()),
        ..config("demo")
    };
    let (running, _) = Running::start(keyed, Some(demo()));
    let body = json!({"image": b64(&shapes())});
    let url = running.url("/v1/caption");
    let none = post(&url, &body);
    assert_eq!(error_code(&none), (401, "invalid_api_key".into()));
    let wrong = answer(
        agent()
            .post(&url)
            .header("authorization", "Bearer sekre")
            .header("content-type", "application/json")
            .send(body.to_string()),
    );
    assert_eq!(wrong.status, 401);
    let right = answer(
        agent()
            .post(&url)
            .header("authorization", "Bearer sekret")
            .header("content-type", "application/json")
            .send(body.to_string()),
    );
    assert_eq!(right.status, 200);
    // Probes stay open.
    assert_eq!(get(&running.url("/health")).status, 200);
}

/// A chat request the random fixture model answers with `tokens` tokens (it does not
/// stop on its own).
fn long_request(tokens: u32) -> Value {
    let mut b = chat_body("tiny", "caption en", &open_image("photo.png"));
    b["max_tokens"] = json!(tokens);
    b
}

/// A full queue answers 429 with Retry-After; everything else still completes.
#[test]
fn a_full_queue_answers_429() {
    let small = ServerConfig {
        queue_size: 1,
        max_batch: 1,
        max_tokens: 400,
        ..config("tiny")
    };
    let (running, _) = Running::start(small, Some(tiny()));
    let url = running.url("/v1/chat/completions");
    let body = long_request(400);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || post(&url, &body))
        })
        .collect();
    let answers: Vec<Answer> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(!busy.is_empty(), "some requests found the queue full");
    assert_eq!(ok + busy.len(), 8, "only 200s and 429s");
    for a in busy {
        assert_eq!(a.body["error"]["code"], "queue_full");
        assert_eq!(a.retry_after.as_deref(), Some("1"));
    }
}

/// Read `/metrics` and return one sample's value.
fn metric(running: &Running, name: &str) -> f64 {
    let text = get(&running.url("/metrics"))
        .body
        .as_str()
        .unwrap()
        .to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

/// A client that goes away mid-request cancels its generation; a request that runs
/// past the time limit gets 504 and is cancelled too.
#[test]
fn disconnects_and_timeouts_cancel_generation() {
    let limits = ServerConfig {
        max_tokens: 6000,
        request_timeout: Duration::from_millis(300),
        ..config("tiny")
    };
    let (running, _) = Running::start(limits, Some(tiny()));
    let body = long_request(6000).to_string();
    let mut stream = TcpStream::connect(running.address()).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait until it runs, then hang up.
    let start = Instant::now();
    while metric(&running, "paligemma_running_requests") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30), "never admitted");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(stream);
    let start = Instant::now();
    while metric(&running, "paligemma_cancelled_total") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30), "never cancelled");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The timeout.
    let a = post(&running.url("/v1/chat/completions"), &long_request(6000));
    assert_eq!(error_code(&a), (504, "timeout".into()));
    let start = Instant::now();
    while metric(&running, "paligemma_running_requests") > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the timed-out request kept running"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(metric(&running, "paligemma_cancelled_total") >= 2.0);
}

/// Shutdown lets in-flight requests finish within the grace, answers later ones 503,
/// and stops listening; past the grace, waiting requests get 503.
#[test]
fn shutdown_finishes_in_flight_requests_then_stops() {
    let graceful = ServerConfig {
        max_tokens: 400,
        shutdown_grace: Duration::from_secs(60),
        ..config("tiny")
    };
    let (mut running, _) = Running::start(graceful, Some(tiny()));
    let url = running.url("/v1/chat/completions");
    let body = long_request(300);
    let in_flight = {
        let (url, body) = (url.clone(), body.clone());
        std::thread::spawn(move || post(&url, &body))
    };
    let start = Instant::now();
    while metric(&running, "paligemma_running_requests") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    running.shutdown().unwrap();
    let done = in_flight.join().unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["usage"]["completion_tokens"], 300);
    assert!(
        TcpStream::connect(running.address()).is_err(),
        "no longer listening"
    );

    // No grace: the request still running is answered 503.
    let hurried = ServerConfig {
        max_tokens: 6000,
        shutdown_grace: Duration::ZERO,
        ..config("tiny")
    };
    let (mut running, _) = Running::start(hurried, Some(tiny()));
    let url = running.url("/v1/chat/completions");
    let body = long_request(6000);
    let in_flight = std::thread::spawn(move || post(&url, &body));
    let start = Instant::now();
    while metric(&running, "paligemma_running_requests") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    running.shutdown().unwrap();
    let cut = in_flight.join().unwrap();
    assert_eq!(error_code(&cut), (503, "unavailable".into()));
}

/// Concurrent clients share batches and every answer equals the single run.
#[test]
fn concurrent_requests_are_batched_and_exact() {
    let model = tiny();
    let image = open_image("photo.png");
    let prompts: Vec<String> = (0..12)
        .map(|i| format!("answer en question number {i}?"))
        .collect();
    let budgets: Vec<usize> = (0..12).map(|i| 4 + (i * 7) % 20).collect();
    let expected: Vec<String> = prompts
        .iter()
        .zip(&budgets)
        .map(|(p, &n)| {
            model
                .generate(&image, p, &GenerateOptions::default().max_new_tokens(n))
                .unwrap()
                .text
        })
        .collect();
    let batched = ServerConfig {
        max_batch: 4,
        ..config("tiny")
    };
    let (running, _) = Running::start(batched, Some(model));
    let url = Arc::new(running.url("/v1/chat/completions"));
    let threads: Vec<_> = prompts
        .iter()
        .zip(&budgets)
        .map(|(p, &n)| {
            let mut body = chat_body("tiny", p, &image);
            body["max_tokens"] = json!(n);
            let url = url.clone();
            std::thread::spawn(move || post(&url, &body))
        })
        .collect();
    for (t, want) in threads.into_iter().zip(&expected) {
        let a = t.join().unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["choices"][0]["message"]["content"], want.as_str());
    }
    let text = get(&running.url("/metrics"))
        .body
        .as_str()
        .unwrap()
        .to_string();
    let single_steps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("paligemma_batch_size_bucket{le=\"1\"} "))
        .unwrap()
        .parse()
        .unwrap();
    let steps = metric(&running, "paligemma_batch_size_count");
    assert!(
        single_steps < steps,
        "some steps ran several requests: {text}"
    );
}
