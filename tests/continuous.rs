//! Continuous batching: requests that join and leave a running batch compute what they
//! compute alone (and what transformers computes), and one request's failure or
//! cancellation touches no other.

mod common;

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::{expected_json, fixtures, ids, open_image};
use paligemma::continuous::{Event, Request};
use paligemma::{DecodeState, FinishReason, GenerateOptions, Generation, Model, backend::Cpu};

fn model(name: &str) -> Model<Cpu> {
    Model::<Cpu>::from_pretrained(fixtures().join(name), &Default::default()).unwrap()
}

/// What a request reported.
#[derive(Debug, Default)]
struct Report {
    events: Vec<String>,
    streamed: String,
    finished: Option<Generation>,
    failed: Option<String>,
}

type Reports = Arc<Mutex<Vec<Report>>>;

/// A request whose events land in `reports[index]`; `hook` sees every event first
/// and decides whether to go on.
fn request(
    reports: &Reports,
    index: usize,
    image: &image::DynamicImage,
    prompt: &str,
    options: GenerateOptions,
    mut hook: impl FnMut(&Event<'_>) -> ControlFlow<()> + Send + 'static,
) -> Request {
    let reports = reports.clone();
    Request::new(vec![image.clone()], prompt, options)
        .streaming(true)
        .on_event(move |event| {
            let flow = hook(&event);
            let mut all = reports.lock().unwrap();
            let report = &mut all[index];
            match event {
                Event::Admitted => report.events.push("admitted".into()),
                Event::Prefilled { .. } => report.events.push("prefilled".into()),
                Event::Token(t) => report.events.push(format!("token {t}")),
                Event::Text(t) => report.streamed.push_str(t),
                Event::Finished(g) => report.finished = Some(g),
                Event::Failed(e) => report.failed = Some(e.to_string()),
            }
            flow
        })
}

fn reports(n: usize) -> Reports {
    Arc::new(Mutex::new((0..n).map(|_| Report::default()).collect()))
}

/// Requests of different lengths and budgets, greedy and sampled, arriving while others
/// decode (sent from the first request's callback at fixed tokens, so the arrival
/// steps are the same every run), through a batch of at most 3.
#[test]
fn joining_and_leaving_rows_equal_single_runs_and_transformers() {
    for name in ["pg1-tiny", "pg2-tiny"] {
        let model = model(name);
        let meta = expected_json(name);
        let budget = meta["max_new_tokens"].as_u64().unwrap() as usize;
        let cases: Vec<&str> = vec!["caption", "detect", "answer", "empty"];
        let mut specs: Vec<(image::DynamicImage, String, GenerateOptions)> = cases
            .iter()
            .map(|c| {
                let case = &meta["cases"][c];
                (
                    open_image(case["image"].as_str().unwrap()),
                    case["prompt"].as_str().unwrap().to_string(),
                    GenerateOptions::default().max_new_tokens(budget),
                )
            })
            .collect();
        let photo = specs[0].0.clone();
        specs.push((
            photo.clone(),
            "caption en".into(),
            GenerateOptions::default().max_new_tokens(3),
        ));
        specs.push((
            photo.clone(),
            "answer en what is in the picture today?".into(),
            GenerateOptions::default().max_new_tokens(7).sample(0.8, 5),
        ));
        specs.push((
            specs[2].0.clone(),
            "ocr".into(),
            GenerateOptions::default()
                .max_new_tokens(9)
                .stop_strings(["<loc"]),
        ));

        let all = reports(specs.len());
        let (send, requests) = mpsc::channel();
        // Requests 2.. arrive one by one as request 0 produces its tokens.
        let later: Vec<Request> = specs
            .iter()
            .enumerate()
            .skip(2)
            .map(|(i, (img, p, o))| {
                request(&all, i, img, p, o.clone(), |_| ControlFlow::Continue(()))
            })
            .collect();
        let later = Mutex::new(later.into_iter());
        let feeder = Mutex::new(send.clone());
        let mut tokens = 0;
        let first = request(
            &all,
            0,
            &specs[0].0,
            &specs[0].1,
            specs[0].2.clone(),
            move |e| {
                if matches!(e, Event::Token(_)) {
                    tokens += 1;
                    if tokens % 2 == 0
                        && let Some(r) = later.lock().unwrap().next()
                    {
                        feeder.lock().unwrap().send(r).unwrap();
                    }
                }
                ControlFlow::Continue(())
            },
        );
        send.send(first).unwrap();
        let (img, p, o) = &specs[1];
        send.send(request(&all, 1, img, p, o.clone(), |_| {
            ControlFlow::Continue(())
        }))
        .unwrap();
        drop(send);
        let mut batches = Vec::new();
        model.run_continuous(&requests, 3, |s| batches.push(s.batch));
        assert!(batches.iter().all(|&b| b <= 3), "{name}: {batches:?}");
        assert!(
            batches.contains(&3),
            "{name}: the batch filled up: {batches:?}"
        );

        let all = all.lock().unwrap();
        for (i, ((img, prompt, options), report)) in specs.iter().zip(all.iter()).enumerate() {
            let out = report
                .finished
                .as_ref()
                .unwrap_or_else(|| panic!("{name}/{i} did not finish: {report:?}"));
            let single = model.generate(img, prompt, options).unwrap();
            assert_eq!(
                out.generated_ids, single.generated_ids,
                "{name}/{i} {prompt}"
            );
            assert_eq!(out.text, single.text, "{name}/{i}");
            assert_eq!(out.finish, single.finish, "{name}/{i}");
            assert_eq!(report.streamed, out.text, "{name}/{i}: stream");
            if let Some(case) = cases.get(i) {
                let theirs = ids(&meta["cases"][case]["generated_ids"]);
                assert_eq!(out.generated_ids, theirs, "{name}/{case}: transformers");
            }
            assert_eq!(report.events[..2], ["admitted", "prefilled"], "{name}/{i}");
        }
    }
}

#[test]
fn a_bad_request_fails_alone() {
    let model = model("pg1-tiny");
    let image = open_image("photo.png");
    let good = GenerateOptions::default().max_new_tokens(5);
    let all = reports(4);
    let (send, requests) = mpsc::channel();
    let go = |_: &Event<'_>| ControlFlow::Continue(());
    send.send(request(&all, 0, &image, "caption en", good.clone(), go))
        .unwrap();
    send.send(request(
        &all,
        1,
        &image,
        "caption en",
        GenerateOptions::default().max_new_tokens(usize::MAX),
        go,
    ))
    .unwrap();
    let mut bad_sampling = GenerateOptions::default().sample(1.0, 0);
    bad_sampling.sampling = paligemma::Sampling::Random {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };
    send.send(request(&all, 2, &image, "caption en", bad_sampling, go))
        .unwrap();
    let reports3 = all.clone();
    send.send(
        Request::new(Vec::new(), "caption en", good.clone()).on_event(move |e| {
            if let Event::Failed(e) = e {
                reports3.lock().unwrap()[3].failed = Some(e.to_string());
            }
            ControlFlow::Continue(())
        }),
    )
    .unwrap();
    drop(send);
    model.run_continuous(&requests, 8, |_| {});
    let all = all.lock().unwrap();
    let single = model.generate(&image, "caption en", &good).unwrap();
    assert_eq!(
        all[0].finished.as_ref().unwrap().generated_ids,
        single.generated_ids
    );
    let context = all[1].failed.as_deref().unwrap();
    assert!(context.contains("context"), "{context}");
    let options = all[2].failed.as_deref().unwrap();
    assert!(options.contains("temperature"), "{options}");
    let images = all[3].failed.as_deref().unwrap();
    assert!(images.contains("image"), "{images}");
    for r in &all[1..] {
        assert!(r.finished.is_none());
    }
}

#[test]
fn cancelled_requests_stop_and_the_others_go_on() {
    let model = model("pg2-tiny");
    let image = open_image("photo.png");
    let options = GenerateOptions::default().max_new_tokens(8);
    let all = reports(3);
    let (send, requests) = mpsc::channel();
    let mut seen = 0;
    send.send(request(
        &all,
        0,
        &image,
        "caption en",
        options.clone(),
        move |e| {
            if matches!(e, Event::Token(_)) {
                seen += 1;
            }
            if seen >= 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    ))
    .unwrap();
    send.send(request(
        &all,
        1,
        &image,
        "caption en",
        options.clone(),
        |e| {
            if matches!(e, Event::Admitted) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    ))
    .unwrap();
    send.send(request(
        &all,
        2,
        &image,
        "caption en",
        options.clone(),
        |_| ControlFlow::Continue(()),
    ))
    .unwrap();
    drop(send);
    model.run_continuous(&requests, 4, |_| {});
    let all = all.lock().unwrap();
    let single = model.generate(&image, "caption en", &options).unwrap();
    let cancelled = all[0].finished.as_ref().unwrap();
    assert_eq!(cancelled.finish, FinishReason::Cancelled);
    assert_eq!(cancelled.generated_ids, single.generated_ids[..2]);
    assert_eq!(all[1].events, ["admitted"], "dropped before any work");
    assert!(all[1].finished.is_none() && all[1].failed.is_none());
    assert_eq!(
        all[2].finished.as_ref().unwrap().generated_ids,
        single.generated_ids
    );
}

/// The regrouping primitive on its own: rows prefilled apart, then decoded together
/// (with new left padding), give the logits they give apart; a subset of a batch
/// (its shared padding dropped) too.
#[test]
fn regrouped_rows_compute_what_they_computed_apart() {
    for name in ["pg1-tiny", "pg2-tiny"] {
        let model = model(name);
        let image = open_image("photo.png");
        let embedding = model.encode_image(&image).unwrap();
        let short = model.prompt_ids("caption en").unwrap();
        let long = model
            .prompt_ids("answer en what is the colour of the thing on the left side?")
            .unwrap();
        let f = &embedding.features;
        let logits = |state: &mut DecodeState<Cpu>, tokens: &[u32]| -> Vec<f32> {
            model
                .extend(state, tokens)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap()
        };
        let (mut a, _) = model.prefill(&[(f, &short)], 8).unwrap();
        let (mut b, _) = model.prefill(&[(f, &long), (f, &short)], 8).unwrap();
        // Decode a alone two steps, so that its length differs from b's.
        logits(&mut a, &[7]);
        logits(&mut a, &[9]);
        let mut joined = DecodeState::regroup(&[(&a, &[0]), (&b, &[1, 0])], 4).unwrap();
        assert_eq!(joined.batch(), 3);
        let together = logits(&mut joined, &[11, 12, 13]);
        let apart_a = logits(&mut a, &[11]);
        let apart_b = logits(&mut b, &[13, 12]);
        let vocab = apart_a.len();
        let expected: Vec<f32> = apart_a
            .iter()
            .chain(&apart_b[vocab..])
            .chain(&apart_b[..vocab])
            .copied()
            .collect();
        let worst = together
            .iter()
            .zip(&expected)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: joined logits differ by {worst}");

        // Keep only the short row of `joined`: its padding is shared and dropped.
        let before = joined.len();
        let mut alone = DecodeState::regroup(&[(&joined, &[1])], 2).unwrap();
        assert!(alone.len() < before, "{name}: padding was dropped");
        let kept = logits(&mut alone, &[5]);
        let again = logits(&mut b, &[5, 5]);
        let worst = kept
            .iter()
            .zip(&again[vocab..])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: kept row differs by {worst}");
        assert!(DecodeState::regroup(&[(&b, &[5])], 1).is_err());
    }
}

/// Requests of preprocessed pixels (as the server sends them) compute what requests of
/// decoded images compute; pixels made for another resolution
/// fail their request alone, with an error that says so.
#[test]
fn pixel_requests_equal_image_requests() {
    let model = model("pg1-tiny");
    let image = open_image("photo.png");
    let options = GenerateOptions::default().max_new_tokens(6);
    let size = model.config().vision.image_size;
    let finished = Arc::new(Mutex::new(vec![None; 3]));
    let failed = Arc::new(Mutex::new(None));
    let report = |i: usize| {
        let (finished, failed) = (finished.clone(), failed.clone());
        move |e: Event<'_>| {
            match e {
                Event::Finished(g) => finished.lock().unwrap()[i] = Some(g),
                Event::Failed(e) => *failed.lock().unwrap() = Some((i, e.to_string())),
                _ => {}
            }
            ControlFlow::Continue(())
        }
    };
    let pixels = model.pixels(&image).unwrap();
    assert_eq!(pixels, paligemma::Pixels::new(&image, size).unwrap());
    let wrong = paligemma::Pixels::new(&image, size + 14).unwrap();
    let (send, requests) = mpsc::channel();
    let prompt = "detect cat";
    send.send(Request::new(vec![image.clone()], prompt, options.clone()).on_event(report(0)))
        .unwrap();
    send.send(Request::from_pixels(vec![pixels], prompt, options.clone()).on_event(report(1)))
        .unwrap();
    send.send(Request::from_pixels(vec![wrong], prompt, options.clone()).on_event(report(2)))
        .unwrap();
    drop(send);
    model.run_continuous(&requests, 8, |_| {});
    let finished = finished.lock().unwrap();
    let single = model.generate(&image, prompt, &options).unwrap();
    for g in finished[..2].iter() {
        let g = g.as_ref().unwrap();
        assert_eq!(g.generated_ids, single.generated_ids);
        assert_eq!(g.text, single.text);
    }
    assert!(finished[2].is_none());
    let (index, why) = failed.lock().unwrap().clone().unwrap();
    assert_eq!(index, 2);
    assert!(why.contains(&format!("takes {size}x{size}")), "{why}");
}
