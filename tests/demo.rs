//! The embedded demo model knows its world: scored on held-out scenes against their
//! ground truth (the full 500-scene evaluation and its targets are in `docs/demo.md`).
#![cfg(all(feature = "demo", feature = "train"))]

use paligemma::demo::{HELD_OUT_SEEDS, Report, Scene, evaluate, recipe};
use paligemma::{Dtype, LoadOptions, Model, WeightFormat, backend::Cpu};

/// Scenes scored in CI (the documented evaluation uses 500).
const SCENES: u64 = 50;

/// The scores the shipped demo model reaches on the first 50 held-out scenes
/// (`cargo run --release --example eval_demo -- --scenes 50`: captions 32%, counts
/// 59.5%, colours 66.7%, boxes for 63.6% of the objects named by colour and shape
/// with 17% spurious), less a margin: a guard against regressions in the model or in
/// the code that runs it (a wrong box convention or a flipped coordinate loses every
/// box). The targets (`docs/demo.md`) are not met yet, and segmentation finds
/// no masks yet, so it has no floor here.
fn check(report: &Report) {
    let msg = format!("{report}");
    assert!(Report::rate(report.captions) >= 0.25, "{msg}");
    assert!(Report::rate(report.counts) >= 0.53, "{msg}");
    assert!(Report::rate(report.colors) >= 0.60, "{msg}");
    let boxes = &report.colored_detection;
    let spurious = boxes.spurious() as f64 / boxes.predictions.max(1) as f64;
    assert!(boxes.recall() >= 0.55 && spurious <= 0.25, "{msg}");
    assert!(
        report.mask_iou.1 > 0,
        "segmentation prompts were asked: {msg}"
    );
}

#[test]
fn the_demo_model_keeps_its_scores_on_held_out_scenes() {
    let model = Model::<Cpu>::demo(&Default::default()).expect("the embedded demo loads");
    let report = evaluate(&model, 0..SCENES).expect("evaluation runs");
    eprintln!("{report}");
    check(&report);
}

/// The half-precision and int8 loading paths score as f32 does on the same scenes
/// (within 8 points on 25 scenes; the 500-scene figures in `docs/demo.md` agree to
/// about one point).
#[test]
fn the_demo_model_keeps_its_scores_in_bf16_and_int8() {
    let device = Default::default();
    let scenes = 0..SCENES / 2;
    let f32_model = Model::<Cpu>::demo(&device).expect("the embedded demo loads");
    let reference = evaluate(&f32_model, scenes.clone()).expect("evaluation runs");
    for options in [
        LoadOptions {
            dtype: Dtype::Bf16,
            ..Default::default()
        },
        LoadOptions {
            weights: WeightFormat::Int8,
            ..Default::default()
        },
    ] {
        let model = Model::<Cpu>::demo_with(&device, &options).expect("the embedded demo loads");
        let report = evaluate(&model, scenes.clone()).expect("evaluation runs");
        let msg = format!("{options:?}\n{report}\nf32:\n{reference}");
        let boxes = |r: &Report| (r.colored_detection.matched, r.colored_detection.targets);
        for (a, b) in [
            (report.captions, reference.captions),
            (report.counts, reference.counts),
            (report.colors, reference.colors),
            (boxes(&report), boxes(&reference)),
        ] {
            assert!((Report::rate(a) - Report::rate(b)).abs() <= 0.08, "{msg}");
        }
    }
}

/// Training never sees an evaluation scene.
#[test]
fn training_scenes_are_not_evaluation_scenes() {
    for i in [0, 7, 123_456] {
        let train = paligemma::demo::training_example::<Cpu>(i, None).expect("an example");
        let train = train.images[0].to_rgb8().into_raw();
        assert_eq!(
            train,
            Scene::generate(HELD_OUT_SEEDS + i).render().into_raw()
        );
        assert_ne!(train, Scene::generate(i).render().into_raw());
    }
}

/// The recipe's untrained checkpoint is an ordinary checkpoint directory, and its
/// tokenizer spells every prompt and answer with whole words (no byte fallback).
#[test]
fn the_recipe_writes_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let size = recipe::DemoSize::default();
    recipe::write_initial_checkpoint(dir.path(), &size, 1).expect("written");
    let model = Model::<Cpu>::from_pretrained(dir.path(), &Default::default()).expect("loads");
    let tok = model.tokenizer();
    for seed in 0..40 {
        let ex = paligemma::demo::training_example::<Cpu>(seed, None).expect("an example");
        for text in [&ex.prefix, &ex.suffix] {
            let ids = tok.suffix_ids(text).expect("encodes");
            let pieces: Vec<String> = ids
                .iter()
                .map(|&i| tok.inner().id_to_token(i).unwrap_or_default())
                .collect();
            assert!(
                pieces.iter().all(|p| !p.starts_with("<0x") && p != "<unk>"),
                "{text:?} -> {pieces:?}"
            );
        }
    }
    let ids = tok
        .suffix_ids("a red circle, a blue square and a yellow triangle")
        .expect("encodes");
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.inner().id_to_token(i).unwrap_or_default())
        .collect();
    let words = [
        "a",
        "▁red",
        "▁circle",
        ",",
        "▁a",
        "▁blue",
        "▁square",
        "▁and",
        "▁a",
        "▁yellow",
        "▁triangle",
        "<eos>",
    ];
    assert_eq!(pieces, words);
}

/// With the demo's mask encoder, segmentation targets carry sixteen codes per object
/// that the demo's decoder turns back into the object's mask.
#[test]
fn segmentation_targets_decode_to_the_shapes() {
    let model = Model::<Cpu>::demo(&Default::default()).expect("the embedded demo loads");
    let decoder = model.mask_decoder().expect("the demo has a mask decoder");
    let dir = tempfile::tempdir().expect("temporary directory");
    model
        .save_pretrained(dir.path().join("copy"), None)
        .expect("saved");
    let encoder = paligemma::MaskEncoder::<Cpu>::from_npz(
        dir.path().join("copy/vae-oid.npz"),
        &Default::default(),
    )
    .expect("the saved checkpoint keeps the VAE");
    let mut seen = 0;
    for i in 0..200 {
        let ex = paligemma::demo::training_example(i, Some(&encoder)).expect("an example");
        if !ex.prefix.starts_with("segment") || ex.suffix.is_empty() {
            continue;
        }
        let (objects, skipped) =
            paligemma::task::segmentations_from_text(&ex.suffix, 224, 224, decoder)
                .expect("decodes");
        assert!(skipped.is_empty() && !objects.is_empty(), "{}", ex.suffix);
        let scene = Scene::generate(HELD_OUT_SEEDS + i);
        for o in &objects {
            let (j, _) = scene
                .objects
                .iter()
                .enumerate()
                .map(|(j, t)| (j, paligemma::task::box_iou(&o.bbox, &t.bbox)))
                .fold((0, -1.0), |best, c| if c.1 > best.1 { c } else { best });
            let truth = scene.mask(j).expect("an object");
            let iou = paligemma::task::mask_iou(&o.mask, &truth);
            assert!(iou > 0.85, "example {i}: {} mask IoU {iou}", o.label);
        }
        seen += 1;
    }
    assert!(seen > 20, "only {seen} segmentation examples");
}

/// A `"masks"` data line becomes a segmentation target whose codes decode back to the
/// mask; without an encoder, or with a mask of the wrong size, the line is an error
/// naming the file and line.
#[test]
fn mask_data_lines_become_segmentation_targets() {
    use paligemma::train::{read_examples, read_examples_with};
    let dir = tempfile::tempdir().expect("temporary directory");
    let scene = Scene::generate(11);
    scene
        .render()
        .save(dir.path().join("scene.png"))
        .expect("saved");
    let mask = scene.mask(0).expect("an object");
    let pixels: Vec<u8> = mask.data.iter().map(|&m| if m { 255 } else { 0 }).collect();
    image::GrayImage::from_raw(224, 224, pixels)
        .expect("a mask image")
        .save(dir.path().join("mask.png"))
        .expect("saved");
    image::GrayImage::new(10, 10)
        .save(dir.path().join("small.png"))
        .expect("saved");
    let label = scene.objects[0].label();
    let line = |m: &str| {
        serde_json::json!({"image": "scene.png", "prefix": format!("segment {label}"),
        "masks": [{"label": label, "mask": m}]})
    };
    let file = dir.path().join("train.jsonl");
    std::fs::write(&file, format!("{}\n", line("mask.png"))).expect("written");
    let encoder =
        paligemma::MaskEncoder::<Cpu>::demo(&Default::default()).expect("the demo encoder");
    let examples = read_examples_with(&file, Some(&encoder)).expect("read");
    let model = Model::<Cpu>::demo(&Default::default()).expect("the embedded demo loads");
    let decoder = model.mask_decoder().expect("a decoder");
    let (objects, _) =
        paligemma::task::segmentations_from_text(&examples[0].1.suffix, 224, 224, decoder)
            .expect("decodes");
    assert_eq!(objects.len(), 1);
    assert!(paligemma::task::box_iou(&objects[0].bbox, &scene.objects[0].bbox) > 0.95);
    assert!(paligemma::task::mask_iou(&objects[0].mask, &mask) > 0.85);
    let err = read_examples(&file).expect_err("no encoder").to_string();
    assert!(
        err.contains("train.jsonl") && err.contains("vae-oid.npz"),
        "{err}"
    );
    std::fs::write(
        &file,
        format!("{}\n{}\n", line("mask.png"), line("small.png")),
    )
    .expect("written");
    let err = read_examples_with(&file, Some(&encoder))
        .expect_err("wrong size")
        .to_string();
    assert!(err.contains(":2") || err.contains("line 2"), "{err}");
}
