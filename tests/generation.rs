//! Sampling, stop rules, streaming, image-embedding reuse and batching.

mod common;

use std::ops::ControlFlow;

use common::{expected_json, fixtures, ids, open_image};
use paligemma::{FinishReason, GenerateOptions, LoadOptions, Model, WeightFormat, backend::Cpu};

fn model(name: &str) -> Model<Cpu> {
    Model::<Cpu>::from_pretrained(fixtures().join(name), &Default::default()).unwrap()
}

fn model_with(name: &str, weights: WeightFormat) -> Model<Cpu> {
    let options = LoadOptions {
        weights,
        ..Default::default()
    };
    Model::<Cpu>::from_pretrained_with(fixtures().join(name), &Default::default(), &options)
        .unwrap()
}

/// Batching with left padding, through burn's kernels and through the f32 host
/// kernels (several activation rows per product, padded rows included): both exact f32.
#[test]
fn batched_greedy_equals_transformers_batch_and_single_prompts() {
    for (name, weights) in ["pg1-tiny", "pg2-tiny"]
        .into_iter()
        .flat_map(|n| [(n, WeightFormat::Backend), (n, WeightFormat::F32)])
    {
        let model = model_with(name, weights);
        let meta = expected_json(name);
        let name = format!("{name} ({weights} weights)");

        let cases = &meta["cases"];
        let order: Vec<&str> = meta["batch"]["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let images: Vec<_> = order
            .iter()
            .map(|c| open_image(cases[c]["image"].as_str().unwrap()))
            .collect();
        let inputs: Vec<(&image::DynamicImage, &str)> = order
            .iter()
            .zip(&images)
            .map(|(c, img)| (img, cases[c]["prompt"].as_str().unwrap()))
            .collect();
        let options = GenerateOptions::default().max_new_tokens(12);
        let batch = model.generate_batch(&inputs, &options).unwrap();
        for (i, (out, case)) in batch.iter().zip(&order).enumerate() {
            let theirs = ids(&meta["batch"]["generated_ids"][i]);
            assert_eq!(
                out.generated_ids, theirs,
                "{name}/{case}: transformers batch"
            );
            let single = model.generate(inputs[i].0, inputs[i].1, &options).unwrap();
            assert_eq!(
                out.generated_ids, single.generated_ids,
                "{name}/{case}: batch vs single"
            );
            assert_eq!(out.text, single.text);
        }
    }
}

/// Every host weight format (f32, and bf16, int8, int4, which round every product's
/// activations the same way whatever the number of rows) gives batched greedy output
/// equal to single runs at every batch size (decode steps of 1 to 4 rows and of more
/// use different kernels).
#[test]
fn reduced_host_weights_batch_equals_single_at_every_batch_size() {
    for (name, weights) in ["pg1-tiny", "pg2-tiny"].into_iter().flat_map(|n| {
        [
            WeightFormat::F32,
            WeightFormat::Bf16,
            WeightFormat::Int8,
            WeightFormat::Int4,
        ]
        .map(|w| (n, w))
    }) {
        let model = model_with(name, weights);
        let meta = expected_json(name);
        let cases: Vec<(image::DynamicImage, String)> = meta["cases"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| {
                let image = open_image(c["image"].as_str().unwrap());
                (image, c["prompt"].as_str().unwrap().to_string())
            })
            .collect();
        let options = GenerateOptions::default().max_new_tokens(12).top_logits(3);
        let singles: Vec<paligemma::Generation> = cases
            .iter()
            .map(|(i, p)| model.generate(i, p, &options).unwrap())
            .collect();
        for size in [1, 2, 4, 5, 8] {
            let rows: Vec<(&image::DynamicImage, &str)> = (0..size)
                .map(|r| {
                    let (i, p) = &cases[r % cases.len()];
                    (i, p.as_str())
                })
                .collect();
            let out = model.generate_batch(&rows, &options).unwrap();
            for (r, o) in out.iter().enumerate() {
                let single = &singles[r % cases.len()];
                let at = format!("{name} ({weights} weights): row {r} of a batch of {size}");
                assert_eq!(o.generated_ids, single.generated_ids, "{at}");
                // Not only the argmax: the logits agree up to the order of f32 sums,
                // within one bf16 rounding (2^-9 relative) at their magnitude. f32
                // order alone reaches 0.4 of that on these random weights (kernel
                // levels without `vdpbf16ps`), where the logits cancel large terms;
                // a product that rounds its activations differently drifts by many.
                let steps = o
                    .top_logits
                    .iter()
                    .flatten()
                    .zip(single.top_logits.iter().flatten());
                // Below the argmax, two candidates within that tolerance of each
                // other may swap ranks (the k-th value still agrees).
                for (step, (a, b)) in steps.enumerate() {
                    for (rank, ((ia, va), (ib, vb))) in a.iter().zip(b).enumerate() {
                        let tol = va.abs().max(1.0) * 2f32.powi(-9);
                        assert!(
                            (va - vb).abs() < tol,
                            "{at}, step {step}, rank {rank}: {ia} {va} vs {ib} {vb}"
                        );
                        assert!(
                            ia == ib || rank > 0,
                            "{at}, step {step}: argmax {ia} vs {ib}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_top_k_one_is_greedy() {
    let model = model("pg1-tiny");
    let image = open_image("photo.png");
    let sample = |seed| {
        let o = GenerateOptions::default()
            .max_new_tokens(12)
            .sample(1.5, seed);
        model
            .generate(&image, "caption en", &o)
            .unwrap()
            .generated_ids
    };
    assert_eq!(sample(1), sample(1));
    assert!(
        (2..6).any(|s| sample(s) != sample(1)),
        "different seeds never differed"
    );
    let greedy = model
        .generate(
            &image,
            "caption en",
            &GenerateOptions::default().max_new_tokens(12),
        )
        .unwrap();
    let top1 = GenerateOptions::default()
        .max_new_tokens(12)
        .sample(2.0, 9)
        .top_k(1);
    assert_eq!(
        model
            .generate(&image, "caption en", &top1)
            .unwrap()
            .generated_ids,
        greedy.generated_ids
    );
}

#[test]
fn stop_strings_and_tokens_cut_at_the_right_place() {
    let model = model("pg1-tiny");
    let image = open_image("noise.png");
    let base = GenerateOptions::default().max_new_tokens(12);
    let full = model.generate(&image, "detect cat ; dog", &base).unwrap();
    // Stop at a piece of the greedy text that starts after its first character.
    let chars: Vec<(usize, char)> = full.text.char_indices().collect();
    assert!(chars.len() > 4, "fixture text too short: {:?}", full.text);
    let (cut, _) = chars[chars.len() / 2];
    let stop: String = full.text[cut..].chars().take(2).collect();
    let expected_end = full.text.find(&stop).unwrap();
    let out = model
        .generate(
            &image,
            "detect cat ; dog",
            &base.clone().stop_strings([stop.clone()]),
        )
        .unwrap();
    assert_eq!(out.text, full.text[..expected_end], "stop {stop:?}");
    assert_eq!(out.finish, FinishReason::StopString);
    assert!(out.generated_ids.len() < full.generated_ids.len() || expected_end < full.text.len());

    let third = full.generated_ids[2];
    let first_hit = full.generated_ids.iter().position(|&t| t == third).unwrap();
    let by_token = GenerateOptions {
        stop_tokens: vec![third],
        ..base.clone()
    };
    let out = model
        .generate(&image, "detect cat ; dog", &by_token)
        .unwrap();
    assert_eq!(out.generated_ids, full.generated_ids[..=first_hit]);
    assert_eq!(out.finish, FinishReason::StopToken);
}

#[test]
fn streaming_concatenates_to_the_text_and_can_stop() {
    let model = model("pg2-tiny");
    for (image, prompt) in [("photo.png", "caption en"), ("rgba.png", "")] {
        let image = open_image(image);
        let options = GenerateOptions::default().max_new_tokens(12);
        let plain = model.generate(&image, prompt, &options).unwrap();
        let mut pieces = Vec::new();
        let streamed = model
            .generate_stream(&image, prompt, &options, |p| {
                assert!(!p.is_empty());
                pieces.push(p.to_string());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(pieces.concat(), plain.text);
        assert_eq!(streamed.generated_ids, plain.generated_ids);
    }
    let image = open_image("photo.png");
    let mut calls = 0;
    let out = model
        .generate_stream(
            &image,
            "caption en",
            &GenerateOptions::default().max_new_tokens(12),
            |_| {
                calls += 1;
                ControlFlow::Break(())
            },
        )
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(out.finish, FinishReason::Cancelled);
    assert!(out.generated_ids.len() < 12);
}

#[test]
fn reused_image_embedding_equals_recomputing_it() {
    let model = model("pg1-tiny");
    let image = open_image("gray.png");
    let embedding = model.encode_image(&image).unwrap();
    let options = GenerateOptions::default().max_new_tokens(12);
    for prompt in ["caption en", "answer en what is this?"] {
        let reused = model
            .generate_with_embedding(&embedding, prompt, &options)
            .unwrap();
        let fresh = model.generate(&image, prompt, &options).unwrap();
        assert_eq!(reused.generated_ids, fresh.generated_ids, "{prompt}");
    }
}

/// One model serves several threads (`Model: Send + Sync`, every method `&self`), and
/// each thread gets what a single thread gets.
#[test]
fn one_model_serves_several_threads_deterministically() {
    fn shared<T: Send + Sync>(_: &T) {}
    let model = model("pg2-tiny");
    shared(&model);
    let image = open_image("photo.png");
    let options = GenerateOptions::default().max_new_tokens(8);
    let alone = model
        .generate(&image, "caption en", &options)
        .unwrap()
        .generated_ids;
    let results: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    model
                        .generate(&image, "caption en", &options)
                        .unwrap()
                        .generated_ids
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r, alone);
    }
}

/// Rows that finish early leave the batch once they are half of it (the demo model
/// stops at different lengths: counts after 2 tokens, captions after about 8); every
/// row still equals its single run, in every weight format.
#[test]
fn rows_leaving_the_batch_equal_single_runs() {
    let scene = paligemma::demo::Scene::generate(5);
    let image = image::DynamicImage::ImageRgb8(scene.render());
    let prompts = [
        "answer en how many shapes are there?",
        "caption en",
        "answer en how many shapes are there?",
        "detect circle ; square ; triangle",
        "answer en what color is the circle?",
    ];
    for weights in [WeightFormat::Backend, WeightFormat::Int8] {
        let options = LoadOptions {
            weights,
            ..Default::default()
        };
        let model = Model::<Cpu>::demo_with(&Default::default(), &options).unwrap();
        let generate = GenerateOptions::default().max_new_tokens(40);
        let rows: Vec<(&image::DynamicImage, &str)> =
            prompts.iter().map(|p| (&image, *p)).collect();
        let batch = model.generate_batch(&rows, &generate).unwrap();
        let lengths: Vec<usize> = batch.iter().map(|g| g.generated_ids.len()).collect();
        assert!(
            lengths
                .iter()
                .filter(|&&n| n < lengths.iter().copied().max().unwrap())
                .count()
                * 2
                >= lengths.len(),
            "at least half the rows finish early: {lengths:?}"
        );
        for (out, prompt) in batch.iter().zip(prompts) {
            let single = model.generate(&image, prompt, &generate).unwrap();
            assert_eq!(
                out.generated_ids, single.generated_ids,
                "{weights}: {prompt}"
            );
            assert_eq!(out.text, single.text);
        }
    }
}
