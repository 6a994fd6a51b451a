//! Fine-tuning against transformers and torch on the tiny checkpoints: the training
//! batch the processor builds, the loss, every parameter's gradient, and the losses of
//! SGD and AdamW steps (full and attention-only). Expected values come from
//! `scripts/make_training_fixtures.py`.
#![cfg(feature = "train")]

mod common;

use burn::backend::Autodiff;
use common::*;
use paligemma::train::{Batch, Example, Method, Optimizer, Reduction, Schedule, Trainer};
use paligemma::{Model, backend::Cpu};

type Ad = Autodiff<Cpu>;

fn load(name: &str) -> Model<Ad> {
    Model::<Ad>::from_pretrained(fixtures().join(name), &Default::default()).unwrap()
}

fn examples(meta: &serde_json::Value) -> Vec<Example> {
    meta["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            Example::new(
                open_image(e["image"].as_str().unwrap()),
                e["prefix"].as_str().unwrap(),
                e["suffix"].as_str().unwrap(),
            )
        })
        .collect()
}

fn batch(model: &Model<Ad>, meta: &serde_json::Value) -> Batch {
    model.training_batch(&examples(meta)).unwrap()
}

fn rows<T: Copy>(v: &[Vec<T>]) -> Vec<T> {
    v.iter().flatten().copied().collect()
}

fn check_batch(name: &str) {
    let model = load(name);
    let meta = expected_json(&format!("train-{name}"));
    let t = expected_tensors(&format!("train-{name}"));
    let b = batch(&model, &meta);
    let ids: Vec<f32> = rows(&b.input_ids).iter().map(|&v| v as f32).collect();
    assert_eq!(ids, t["input_ids"].data, "{name}: input ids");
    let types: Vec<f32> = rows(&b.token_type_ids)
        .iter()
        .map(|&v| f32::from(v))
        .collect();
    assert_eq!(types, t["token_type_ids"].data, "{name}: token types");
    let labels: Vec<f32> = rows(&b.labels)
        .iter()
        .map(|l| l.map_or(-100.0, |v| v as f32))
        .collect();
    assert_eq!(labels, t["labels"].data, "{name}: labels");
    let mask: Vec<f32> = b
        .lengths
        .iter()
        .zip(&b.left_padding)
        .flat_map(|(&len, &left)| {
            (0..b.width()).map(move |i| {
                if (left..left + len).contains(&i) {
                    1.0
                } else {
                    0.0
                }
            })
        })
        .collect();
    assert_eq!(mask, t["attention_mask"].data, "{name}: attention mask");
    let px = b
        .pixels::<Cpu>(&Default::default())
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let diff = max_abs_diff(&px, &t["pixel_values"].data);
    assert!(diff < 1e-5, "{name}: pixels differ by {diff}");
}

fn check_loss_and_gradients(name: &str) {
    let model = load(name);
    let meta = expected_json(&format!("train-{name}"));
    let t = expected_tensors(&format!("train-{name}"));
    let b = batch(&model, &meta);
    assert_eq!(
        b.supervised_tokens(),
        meta["supervised_tokens"].as_u64().unwrap() as usize
    );
    let loss = model.loss(&b, Reduction::Tokens).unwrap();
    let ours = loss.scalar().unwrap();
    let theirs = meta["loss"].as_f64().unwrap() as f32;
    assert!(
        ((ours - theirs) / theirs).abs() < 1e-5,
        "{name}: loss {ours} vs {theirs}"
    );
    for (o, e) in loss
        .per_example()
        .unwrap()
        .iter()
        .zip(meta["per_example_losses"].as_array().unwrap())
    {
        let e = e.as_f64().unwrap() as f32;
        assert!(
            ((o - e) / e).abs() < 1e-5,
            "{name}: example loss {o} vs {e}"
        );
    }
    let grads = loss.value.backward();
    let named = model.named_gradients(&grads).unwrap();
    let expected: Vec<&String> = t.keys().filter(|k| k.starts_with("grad.")).collect();
    assert_eq!(named.len(), expected.len(), "{name}: number of gradients");
    for g in &named {
        let e = &t[&format!("grad.{}", g.name)];
        assert_eq!(g.values.len(), e.data.len(), "{}: gradient size", g.name);
        let scale = e.data.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&g.values, &e.data);
        assert!(
            diff / scale < 1e-4,
            "{name}: gradient of {} differs by {diff} (scale {scale})",
            g.name
        );
    }
}

fn check_optimizer_runs(name: &str) {
    let meta = expected_json(&format!("train-{name}"));
    for run in meta["runs"].as_array().unwrap() {
        let model = load(name);
        let b = batch(&model, &meta);
        let f = |k: &str| run[k].as_f64().unwrap();
        let method = match run["method"].as_str().unwrap() {
            "full" => Method::Full,
            "attention" => Method::Attention,
            m => panic!("unknown method {m}"),
        };
        let optimizer = match run["optimizer"].as_str().unwrap() {
            "sgd" => Optimizer::Sgd {
                momentum: f("momentum"),
                weight_decay: f("weight_decay") as f32,
            },
            _ => Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
                weight_decay: f("weight_decay") as f32,
            },
        };
        let mut trainer = Trainer::new(model, method, optimizer).unwrap();
        if let Some(c) = run["clip_norm"].as_f64() {
            trainer = trainer.with_clip_norm(c as f32);
        }
        // Micro-batches (gradient accumulation) or the whole batch.
        let all = examples(&meta);
        let batches: Vec<Batch> = match run["micro_batches"].as_array() {
            Some(groups) => groups
                .iter()
                .map(|g| {
                    let part: Vec<Example> = g
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| all[i.as_u64().unwrap() as usize].clone())
                        .collect();
                    trainer.model().unwrap().training_batch(&part).unwrap()
                })
                .collect(),
            None => vec![b],
        };
        let schedule = match run["schedule"].as_str() {
            Some("cosine") => Schedule::Cosine,
            _ => Schedule::Constant,
        };
        let warmup = run["warmup"].as_u64().unwrap_or(0) as usize;
        let expected: Vec<f32> = run["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let steps = expected.len() - 1;
        let mut ours: Vec<f32> = (0..steps)
            .map(|s| {
                let lr = schedule.rate(f("lr"), s, steps, warmup);
                trainer.step_accumulated(&batches, lr).unwrap()
            })
            .collect();
        let model = trainer.into_model().unwrap();
        let total: usize = batches.iter().map(Batch::supervised_tokens).sum();
        let after: f32 = batches
            .iter()
            .map(|b| {
                let share = b.supervised_tokens() as f32 / total as f32;
                model.loss(b, Reduction::Tokens).unwrap().scalar().unwrap() * share
            })
            .sum();
        ours.push(after);
        // Optimisation amplifies float error; torch's own float32-vs-float64 distance on
        // the same run bounds what agreement can mean.
        let exact: Vec<f32> = run["float64_losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let tolerance = (2.0 * max_abs_diff(&expected, &exact)).max(1e-4);
        let diff = max_abs_diff(&ours, &expected);
        assert!(
            diff < tolerance,
            "{name}/{}: step losses {ours:?} vs {expected:?} (tolerance {tolerance})",
            run["name"]
        );
    }
}

#[test]
fn batch_matches_the_processor() {
    check_batch("pg1-tiny");
    check_batch("pg2-tiny");
}

#[test]
fn loss_and_every_gradient_match_transformers_pg1() {
    check_loss_and_gradients("pg1-tiny");
}

#[test]
fn loss_and_every_gradient_match_transformers_pg2() {
    check_loss_and_gradients("pg2-tiny");
}

#[test]
fn sgd_and_adamw_steps_match_torch_pg1() {
    check_optimizer_runs("pg1-tiny");
}

#[test]
fn sgd_and_adamw_steps_match_torch_pg2() {
    check_optimizer_runs("pg2-tiny");
}

/// A few dozen steps on a handful of examples memorise them.
#[test]
fn fine_tuning_memorises_a_small_batch() {
    let model = load("pg1-tiny");
    let meta = expected_json("train-pg1-tiny");
    let b = batch(&model, &meta);
    let mut trainer = Trainer::new(model, Method::Full, Optimizer::adamw()).unwrap();
    let first = trainer.step(&b, 3e-3).unwrap();
    let mut last = first;
    for _ in 0..30 {
        last = trainer.step(&b, 3e-3).unwrap();
    }
    assert!(last < first / 10.0, "loss {first} -> {last}");
    // What was learnt: greedy decoding now writes the first example's suffix.
    let model = trainer.into_model().unwrap();
    let ex = &examples(&meta)[0];
    let out = model
        .generate(
            &ex.images,
            &ex.prefix,
            &paligemma::GenerateOptions::default(),
        )
        .unwrap();
    assert_eq!(out.text, ex.suffix);
}

/// A fine-tuned model saved and loaded again computes the same logits; in the source's
/// dtype by default (bf16 for the PaliGemma 2 fixture), exactly in f32 when asked.
#[test]
fn saved_fine_tune_reloads_with_the_same_logits() {
    let meta = expected_json("train-pg2-tiny");
    let model = load("pg2-tiny");
    let b = batch(&model, &meta);
    let mut trainer = Trainer::new(model, Method::Full, Optimizer::adamw()).unwrap();
    for _ in 0..3 {
        trainer.step(&b, 1e-3).unwrap();
    }
    let tuned = trainer.into_model().unwrap();
    let ex = &examples(&meta)[0];
    let logits = |m: &Model<Ad>| -> Vec<f32> {
        let e = m.encode_images(&ex.images).unwrap();
        let ids = m.prompt_ids(&ex.prefix).unwrap();
        m.forward_logits(&e.features, &ids)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let before = logits(&tuned);
    let tmp = tempfile::tempdir().unwrap();
    let exact = tmp.path().join("f32");
    tuned
        .save_pretrained(&exact, Some(paligemma::Dtype::F32))
        .unwrap();
    let diff = max_abs_diff(
        &logits(&Model::<Ad>::from_pretrained(&exact, &Default::default()).unwrap()),
        &before,
    );
    assert!(diff < 1e-5, "f32 save changed logits by {diff}");
    assert!(exact.join("tokenizer.json").is_file() && exact.join("config.json").is_file());

    let rounded = tmp.path().join("bf16");
    tuned.save_pretrained(&rounded, None).unwrap();
    let again = Model::<Ad>::from_pretrained(&rounded, &Default::default()).unwrap();
    let diff = max_abs_diff(&logits(&again), &before);
    assert!(
        diff > 0.0 && diff < 0.5,
        "bf16 save: logits moved by {diff}"
    );
    let size = std::fs::metadata(rounded.join("model.safetensors"))
        .unwrap()
        .len();
    let full = std::fs::metadata(exact.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(size < full * 6 / 10, "bf16 file {size} bytes vs f32 {full}");
    // An existing directory is refused, and nothing is left behind by a failed save.
    assert!(tuned.save_pretrained(&rounded, None).is_err());
    let leftovers = std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(leftovers, 2);
}

/// PEFT's LoRA: an adapter saved by peft loads onto the base model and gives peft's
/// loss and adapter gradients; AdamW steps on the adapters follow torch's.
fn check_lora(name: &str) {
    let meta = expected_json(&format!("train-{name}"));
    let t = expected_tensors(&format!("train-{name}"));
    let lora = &meta["lora"];
    let adapter = fixtures().join(lora["adapter_dir"].as_str().unwrap());
    let model = load(name).with_lora_adapter(&adapter).unwrap();
    let config = paligemma::train::LoraConfig {
        rank: lora["r"].as_u64().unwrap() as usize,
        alpha: lora["lora_alpha"].as_f64().unwrap() as f32,
        ..Default::default()
    };
    let model = model.with_trainable(Method::Lora(config));
    let b = batch(&model, &meta);
    let loss = model.loss(&b, Reduction::Tokens).unwrap();
    let (ours, theirs) = (
        loss.scalar().unwrap(),
        lora["loss"].as_f64().unwrap() as f32,
    );
    assert!(
        ((ours - theirs) / theirs).abs() < 1e-5,
        "{name}: LoRA loss {ours} vs {theirs}"
    );
    let grads = loss.value.backward();
    let named = model.named_gradients(&grads).unwrap();
    let expected = t.keys().filter(|k| k.starts_with("lora_grad.")).count();
    assert_eq!(
        named.len(),
        expected,
        "{name}: only the adapters have gradients"
    );
    for g in &named {
        let e = &t[&format!("lora_grad.{}", g.name)];
        let scale = e.data.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&g.values, &e.data);
        assert!(
            diff / scale < 1e-4,
            "{name}: gradient of {} differs by {diff}",
            g.name
        );
    }

    let mut trainer = Trainer::new(model, Method::Lora(config), Optimizer::adamw()).unwrap();
    let lr = lora["lr"].as_f64().unwrap();
    let expected: Vec<f32> = lora["adamw_losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let mut ours: Vec<f32> = (0..expected.len() - 1)
        .map(|_| trainer.step(&b, lr).unwrap())
        .collect();
    let model = trainer.into_model().unwrap();
    ours.push(model.loss(&b, Reduction::Tokens).unwrap().scalar().unwrap());
    let diff = max_abs_diff(&ours, &expected);
    assert!(
        diff < 1e-4,
        "{name}: LoRA AdamW losses {ours:?} vs {expected:?}"
    );

    // Merged weights compute the same loss; saved adapters load back to the same loss.
    let tuned = model.loss(&b, Reduction::Tokens).unwrap().scalar().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    model.save_lora_adapter(&dir).unwrap();
    let reloaded = load(name).with_lora_adapter(&dir).unwrap();
    let again = reloaded
        .loss(&b, Reduction::Tokens)
        .unwrap()
        .scalar()
        .unwrap();
    assert!(
        (again - tuned).abs() < 1e-5,
        "{name}: reloaded adapter {again} vs {tuned}"
    );
    let merged = model.merge_lora().unwrap();
    let m = merged
        .loss(&b, Reduction::Tokens)
        .unwrap()
        .scalar()
        .unwrap();
    assert!(
        (m - tuned).abs() < 1e-4,
        "{name}: merged {m} vs adapters {tuned}"
    );
}

#[test]
fn lora_matches_peft_pg1() {
    check_lora("pg1-tiny");
}

#[test]
fn lora_matches_peft_pg2() {
    check_lora("pg2-tiny");
}

/// Data files: suffixes or detection boxes; a bad line is an error naming the file and
/// line, before anything trains.
#[test]
fn data_files_with_boxes_and_errors_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let image = fixtures().join("images/photo.png");
    let write = |name: &str, lines: &[serde_json::Value]| {
        let path = tmp.path().join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = write(
        "good.jsonl",
        &[
            serde_json::json!({"image": image, "prefix": "caption en", "suffix": "a photo"}),
            serde_json::json!({"image": image, "prefix": "detect cat", "boxes": [
                {"label": "cat", "bbox": [1.0, 2.0, 30.0, 40.0]}]}),
        ],
    );
    let examples = paligemma::train::read_examples(&good).unwrap();
    assert_eq!(examples[1].0, 3, "line numbers count blank lines");
    let (w, h) = (
        examples[1].1.images[0].width(),
        examples[1].1.images[0].height(),
    );
    let parsed = paligemma::task::parse_detections(&examples[1].1.suffix, w, h);
    assert_eq!(parsed.objects[0].label, "cat");
    assert!((parsed.objects[0].bbox.y_max - 40.0).abs() < f64::from(h) / 1023.0);
    let bad = [
        serde_json::json!({"image": "missing.png", "prefix": "x", "suffix": "y"}),
        serde_json::json!({"image": image, "prefix": "x"}),
        serde_json::json!({"image": image, "prefix": "x", "suffix": "y", "boxes": []}),
        serde_json::json!({"image": image, "prefix": "detect cat", "boxes": [
            {"label": "cat", "bbox": [1.0, 2.0, 3000.0, 40.0]}]}),
        serde_json::json!({"image": image, "prefix": "x", "suffix": "y", "extra": 1}),
    ];
    for (i, line) in bad.iter().enumerate() {
        let path = write(
            &format!("bad{i}.jsonl"),
            &[
                serde_json::json!({"image": image, "prefix": "a", "suffix": "b"}),
                line.clone(),
            ],
        );
        match paligemma::train::read_examples(&path) {
            Err(paligemma::Error::Data { line: 3, .. }) => {}
            other => panic!("bad line {i}: {other:?}"),
        }
    }
}

/// A frozen vision tower gets no gradient; the decoder still does.
#[test]
fn frozen_vision_tower_gets_no_gradient() {
    let meta = expected_json("train-pg1-tiny");
    let model = load("pg1-tiny");
    let b = batch(&model, &meta);
    let trainer = Trainer::new(model, Method::Full, Optimizer::adamw())
        .unwrap()
        .with_frozen_vision()
        .unwrap();
    let model = trainer.into_model().unwrap();
    let grads = model.loss(&b, Reduction::Tokens).unwrap().value.backward();
    let names: Vec<String> = model
        .named_gradients(&grads)
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("language_model.")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.contains("self_attn.q_proj")));
}

/// With the vision tower frozen, its features are computed once per distinct image
/// and reused: the steps' losses equal those of a trainer that runs the tower every
/// step (budget 0), and a batch repeating an image keeps it once.
#[test]
fn frozen_vision_features_are_computed_once_per_image() {
    let meta = expected_json("train-pg1-tiny");
    let model = load("pg1-tiny");
    let mut examples = examples(&meta);
    examples.push(examples[0].clone());
    let b = model.training_batch(&examples).unwrap();
    let distinct = {
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for ex in &examples {
            let bytes = ex.images[0].as_bytes().to_vec();
            if !seen.contains(&bytes) {
                seen.push(bytes);
            }
        }
        seen.len()
    };
    assert!(distinct < examples.len());
    let run = |budget: usize| {
        let mut t = Trainer::new(load("pg1-tiny"), Method::Full, Optimizer::adamw())
            .unwrap()
            .with_frozen_vision()
            .unwrap()
            .with_feature_budget(budget);
        let losses: Vec<f32> = (0..3).map(|_| t.step(&b, 2e-3).unwrap()).collect();
        (losses, t.cached_images())
    };
    let (cached, kept) = run(1 << 30);
    let (uncached, none) = run(0);
    assert_eq!((kept, none), (distinct, 0));
    for (a, b) in cached.iter().zip(&uncached) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "{cached:?} vs {uncached:?}"
        );
    }
    assert!(
        cached[2] < cached[0],
        "the decoder still trains: {cached:?}"
    );
}

/// A run stopped after two steps and resumed in a fresh trainer from the saved model
/// and optimiser state continues exactly as the uninterrupted run (AdamW moments and
/// step count, SGD momentum); without the state it does not. Mismatched states are
/// refused with the file named.
#[test]
fn optimizer_state_resumes_a_run_by_parameter_name() {
    let meta = expected_json("train-pg1-tiny");
    let sgd = Optimizer::Sgd {
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let tmp = tempfile::tempdir().unwrap();
    for (i, (optimizer, lr)) in [(Optimizer::adamw(), 2e-3), (sgd, 3e-2)]
        .into_iter()
        .enumerate()
    {
        let model = load("pg1-tiny");
        let b = batch(&model, &meta);
        let mut whole = Trainer::new(model, Method::Full, optimizer).unwrap();
        let straight: Vec<f32> = (0..4).map(|_| whole.step(&b, lr).unwrap()).collect();

        let mut first = Trainer::new(load("pg1-tiny"), Method::Full, optimizer).unwrap();
        for _ in 0..2 {
            first.step(&b, lr).unwrap();
        }
        let dir = tmp.path().join(format!("run-{i}"));
        let state = tmp.path().join(format!("run-{i}.optimizer"));
        first.model().unwrap().save_pretrained(&dir, None).unwrap();
        first.save_optimizer_state(&state).unwrap();
        let reload = || Model::<Ad>::from_pretrained(&dir, &Default::default()).unwrap();

        let mut resumed = Trainer::new(reload(), Method::Full, optimizer)
            .unwrap()
            .load_optimizer_state(&state)
            .unwrap();
        let tail: Vec<f32> = (0..2).map(|_| resumed.step(&b, lr).unwrap()).collect();
        for (got, want) in tail.iter().zip(&straight[2..]) {
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "{optimizer:?}: resumed loss {got} vs {want} uninterrupted ({straight:?})"
            );
        }
        let mut fresh = Trainer::new(reload(), Method::Full, optimizer).unwrap();
        let restarted: Vec<f32> = (0..2).map(|_| fresh.step(&b, lr).unwrap()).collect();
        assert!(
            (restarted[1] - straight[3]).abs() > 1e-4 * straight[3].abs(),
            "{optimizer:?}: a fresh optimiser gave the same loss ({} vs {})",
            restarted[1],
            straight[3]
        );
    }

    // The other optimiser's state, another model's, and a file that is no state.
    let adamw_state = tmp.path().join("run-0.optimizer");
    let err = Trainer::new(load("pg1-tiny"), Method::Full, sgd)
        .unwrap()
        .load_optimizer_state(&adamw_state)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("run-0.optimizer") && err.contains("adamw") && err.contains("sgd"),
        "{err}"
    );
    let other =
        Model::<Ad>::from_pretrained(fixtures().join("pg2-tiny"), &Default::default()).unwrap();
    let err = Trainer::new(other, Method::Full, Optimizer::adamw())
        .unwrap()
        .load_optimizer_state(&adamw_state)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("lacks") || err.contains("shape"), "{err}");
    let junk = tmp.path().join("junk.optimizer");
    std::fs::write(&junk, b"not a state").unwrap();
    let err = Trainer::new(load("pg1-tiny"), Method::Full, Optimizer::adamw())
        .unwrap()
        .load_optimizer_state(&junk)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("junk.optimizer"), "{err}");
}
