//! Prompts with several images against transformers on both tiny checkpoints: prompt
//! ids, pixels, prefill logits and greedy ids for 2 and 3 images of mixed sizes and
//! modes, a batch whose rows have 1 and 3 images, the training batch and loss of 1- and
//! 2-image examples, and the errors. Expected values come from
//! `scripts/make_multi_image_fixtures.py`.

mod common;

use common::*;
use image::DynamicImage;
use paligemma::{Error, GenerateOptions, LoadOptions, Model, WeightFormat, backend::Cpu};

const TOL: f32 = 1e-4;

/// Backend weights: the exact f32 path the transformers fixtures are held to.
fn model(name: &str) -> Model<Cpu> {
    let options = LoadOptions {
        weights: WeightFormat::Backend,
        ..Default::default()
    };
    Model::<Cpu>::from_pretrained_with(fixtures().join(name), &Default::default(), &options)
        .unwrap()
}

fn images(files: &serde_json::Value) -> Vec<DynamicImage> {
    files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| open_image(f.as_str().unwrap()))
        .collect()
}

fn values<const D: usize>(t: burn::tensor::Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

#[test]
fn two_and_three_images_match_transformers() {
    for name in ["pg1-tiny", "pg2-tiny"] {
        let model = model(name);
        let meta = expected_json(&format!("multi-{name}"));
        let tensors = expected_tensors(&format!("multi-{name}"));
        let cases = meta["cases"].as_object().unwrap();
        assert_eq!(cases.len(), 3);
        for (case, c) in cases {
            let imgs = images(&c["images"]);
            let prompt = c["prompt"].as_str().unwrap();
            let ids = model.prompt_ids_with_images(prompt, imgs.len()).unwrap();
            assert_eq!(
                ids,
                common::ids(&c["prompt_ids"]),
                "{name}/{case}: prompt ids"
            );

            let mut pixels = Vec::new();
            for img in &imgs {
                pixels.extend(values(model.pixel_values(img).unwrap()));
            }
            let px = max_abs_diff(&pixels, &tensors[&format!("{case}.pixel_values")].data);
            assert!(px < 1e-6, "{name}/{case}: pixels differ by {px}");

            let embedding = model.encode_images(&imgs).unwrap();
            assert_eq!(embedding.images(), imgs.len());
            let logits = values(model.forward_logits(&embedding.features, &ids).unwrap());
            let diff = max_abs_diff(&logits, &tensors[&format!("{case}.logits")].data);
            assert!(diff < TOL, "{name}/{case}: prefill logits differ by {diff}");

            let options = GenerateOptions::default().max_new_tokens(12);
            let out = model.generate(&imgs, prompt, &options).unwrap();
            assert_eq!(out.prompt_ids, ids, "{name}/{case}");
            assert_eq!(
                out.generated_ids,
                common::ids(&c["generated_ids"]),
                "{name}/{case}: greedy ids"
            );
        }
    }
}

#[test]
fn batched_rows_with_one_and_three_images_equal_transformers_and_single_runs() {
    for name in ["pg1-tiny", "pg2-tiny"] {
        let model = model(name);
        let meta = expected_json(&format!("multi-{name}"));
        let batch = &meta["batch"];
        let rows: Vec<(Vec<DynamicImage>, String)> = batch["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    images(&r["images"]),
                    r["prompt"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            rows.iter().map(|r| r.0.len()).collect::<Vec<_>>(),
            [1, 3],
            "{name}: the batch mixes one and three images"
        );
        let inputs: Vec<(&[DynamicImage], &str)> = rows
            .iter()
            .map(|(imgs, p)| (imgs.as_slice(), p.as_str()))
            .collect();
        let options = GenerateOptions::default().max_new_tokens(12);
        let out = model.generate_batch(&inputs, &options).unwrap();
        for (i, (got, (imgs, prompt))) in out.iter().zip(&rows).enumerate() {
            let theirs = common::ids(&batch["generated_ids"][i]);
            assert_eq!(
                got.generated_ids, theirs,
                "{name} row {i}: transformers batch"
            );
            let single = model.generate(imgs, prompt, &options).unwrap();
            assert_eq!(
                got.generated_ids, single.generated_ids,
                "{name} row {i}: single"
            );
            let theirs_single = common::ids(&batch["single_generated_ids"][i]);
            assert_eq!(single.generated_ids, theirs_single, "{name} row {i}");
        }
    }
}

#[cfg(feature = "train")]
#[test]
fn training_on_several_images_matches_transformers_loss() {
    use burn::backend::Autodiff;
    use paligemma::train::{Example, Reduction};
    for name in ["pg1-tiny", "pg2-tiny"] {
        let model =
            Model::<Autodiff<Cpu>>::from_pretrained(fixtures().join(name), &Default::default())
                .unwrap();
        let meta = expected_json(&format!("multi-{name}"));
        let train = &meta["train"];
        let examples: Vec<Example> = train["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                Example::with_images(
                    images(&e["images"]),
                    e["prefix"].as_str().unwrap(),
                    e["suffix"].as_str().unwrap(),
                )
            })
            .collect();
        let batch = model.training_batch(&examples).unwrap();
        assert_eq!(batch.images_per_row, [2, 1]);
        for (r, row) in train["input_ids"].as_array().unwrap().iter().enumerate() {
            assert_eq!(batch.input_ids[r], common::ids(row), "{name} row {r}: ids");
            let labels: Vec<Option<u32>> = train["labels"][r]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| u32::try_from(l.as_i64().unwrap()).ok())
                .collect();
            assert_eq!(batch.labels[r], labels, "{name} row {r}: labels");
        }
        let loss = model
            .loss(&batch, Reduction::Tokens)
            .unwrap()
            .scalar()
            .unwrap();
        let theirs = train["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - theirs).abs() < TOL,
            "{name}: loss {loss} against {theirs}"
        );
    }
}

#[test]
fn no_images_and_too_many_image_tokens_are_errors() {
    let model = model("pg1-tiny");
    let options = GenerateOptions::default().max_new_tokens(4);
    let none: [&DynamicImage; 0] = [];
    let e = model.generate(&none, "caption en", &options).unwrap_err();
    assert!(matches!(e, Error::Image(_)), "{e}");
    assert!(e.to_string().contains("at least one image"), "{e}");

    let image = open_image("photo.png");
    let context = model.config().text.max_position_embeddings;
    let fits = (context - 2) / model.config().num_image_tokens();
    let too_many: Vec<&DynamicImage> = vec![&image; fits + 1];
    let e = model.encode_images(&too_many).unwrap_err();
    assert!(matches!(e, Error::Prompt(_)), "{e}");
    assert!(e.to_string().contains("exceed the model's context"), "{e}");
    let e = model
        .prompt_ids_with_images("caption en", fits + 1)
        .unwrap_err();
    assert!(e.to_string().contains("exceed the model's context"), "{e}");

    // Boxes are in one image's pixels: a detection over several images is refused.
    let two = [&image, &image];
    let task = paligemma::Task::detect(&["cat"]);
    let e = model.run_task(&two, &task, &options).unwrap_err();
    assert!(e.to_string().contains("take one image"), "{e}");
}
