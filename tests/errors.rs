//! Bad input gets a typed error that says what is wrong, never a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::fixtures;
use paligemma::{Error, GenerateOptions, Model, backend::Cpu};

fn load(dir: &Path) -> paligemma::Result<Model<Cpu>> {
    Model::<Cpu>::from_pretrained(dir, &Default::default())
}

/// A writable copy of a fixture checkpoint.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    fs::create_dir(&dir).unwrap();
    for entry in fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    fs::write(path, v.to_string()).unwrap();
}

#[test]
fn missing_directory_and_files() {
    let err = load(Path::new("/nonexistent/checkpoint")).err().unwrap();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");

    let (_tmp, dir) = copy_fixture("pg2-tiny");
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(err, Error::MissingFile { .. }) && err.to_string().contains("model.safetensors"),
        "{err}"
    );

    let (_tmp, dir) = copy_fixture("pg2-tiny");
    fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let (_tmp, dir) = copy_fixture("pg1-tiny");
    fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(err.to_string().contains("model-00002-of-00002"), "{err}");
}

#[test]
fn config_that_is_not_paligemma() {
    let (_tmp, dir) = copy_fixture("pg2-tiny");
    edit_config(&dir, |c| c["model_type"] = "llava".into());
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(err, Error::Config { .. }) && err.to_string().contains("llava"),
        "{err}"
    );

    fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(matches!(load(&dir).err().unwrap(), Error::Config { .. }));
}

#[test]
fn tensor_with_the_wrong_shape_is_named() {
    let (_tmp, dir) = copy_fixture("pg1-tiny");
    edit_config(&dir, |c| c["text_config"]["intermediate_size"] = 96.into());
    let err = load(&dir).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::TensorShape { .. }), "{msg}");
    assert!(
        msg.contains("mlp.gate_proj.weight") && msg.contains("96"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = copy_fixture("pg2-tiny");
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st
        .iter()
        .filter(|(name, _)| !name.ends_with("post_layernorm.weight"))
        .collect();
    let out = safetensors::serialize(kept, None).unwrap();
    fs::write(&path, out).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(err, Error::MissingTensor { .. })
            && err.to_string().contains("post_layernorm.weight"),
        "{err}"
    );
}

#[test]
fn corrupt_weight_file() {
    let (_tmp, dir) = copy_fixture("pg2-tiny");
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        load(&dir).err().unwrap(),
        Error::WeightFile { .. }
    ));
    fs::write(&path, b"garbage").unwrap();
    assert!(matches!(
        load(&dir).err().unwrap(),
        Error::WeightFile { .. }
    ));
}

#[test]
fn undecodable_image() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.png");
    fs::write(&path, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    assert!(matches!(
        paligemma::load_image(&path).err().unwrap(),
        Error::Image(_)
    ));
    assert!(matches!(
        paligemma::load_image(tmp.path().join("absent.png"))
            .err()
            .unwrap(),
        Error::Io { .. }
    ));

    let model = load(&fixtures().join("pg2-tiny")).unwrap();
    let empty = image::DynamicImage::new_rgb8(0, 0);
    let err = model
        .generate(&empty, "caption en", &GenerateOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::Image(_)), "{err}");
}

#[test]
fn prompts_beyond_the_context_and_bad_options() {
    let model = load(&fixtures().join("pg2-tiny")).unwrap();
    let image = common::open_image("photo.png");
    let long = "cat ".repeat(9000);
    let err = model
        .generate(&image, &long, &GenerateOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Prompt(_)) && err.to_string().contains("context"),
        "{err}"
    );

    let huge = GenerateOptions::default().max_new_tokens(100_000);
    assert!(matches!(
        model.generate(&image, "caption en", &huge).err().unwrap(),
        Error::Prompt(_)
    ));

    let zero = GenerateOptions::default().max_new_tokens(0);
    assert!(matches!(
        model.generate(&image, "caption en", &zero).err().unwrap(),
        Error::Options(_)
    ));

    let err = model
        .generate(&image, "<image> caption en", &GenerateOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::Prompt(_)), "{err}");
}
