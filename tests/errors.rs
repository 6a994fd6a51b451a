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

/// A token budget beyond the context (even usize::MAX) is a prompt error, not an
/// overflow, in generation and in a bare prefill.
#[test]
fn huge_token_budgets_are_errors() {
    let model = load(&fixtures().join("pg1-tiny")).unwrap();
    let image = paligemma::load_image(fixtures().join("images/photo.png")).unwrap();
    for n in [usize::MAX, usize::MAX / 2, 1 << 40] {
        let options = GenerateOptions::default().max_new_tokens(n);
        let err = model.generate(&image, "caption en", &options).unwrap_err();
        assert!(matches!(err, Error::Prompt(_)), "{err}");
        let features = model.encode_image(&image).unwrap().features;
        let ids = model.prompt_ids("caption en").unwrap();
        let err = model.prefill(&[(&features, &ids)], n).unwrap_err();
        assert!(matches!(err, Error::Prompt(_)), "{err}");
    }
}

/// A token id at or beyond the embedding rows is refused at load time (not a panic in
/// the embedding lookup later), even when the tokenizer has fewer tokens than rows.
#[test]
fn token_ids_beyond_the_embedding_rows_are_refused() {
    let (_tmp, dir) = copy_fixture("pg1-tiny");
    let path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    tok["model"]["vocab"]["<bos>"] = 9999.into();
    for t in tok["added_tokens"].as_array_mut().unwrap() {
        if t["content"] == "<bos>" {
            t["id"] = 9999.into();
        }
    }
    fs::write(&path, tok.to_string()).unwrap();
    let err = load(&dir).err().expect("refused");
    assert!(
        matches!(err, Error::Config { .. }) && err.to_string().contains("9999"),
        "{err}"
    );
}

/// NaN logits (here from a NaN in the final norm's weights) are reported, never turned
/// into tokens.
#[test]
fn non_finite_logits_are_errors() {
    let (_tmp, dir) = copy_fixture("pg1-tiny");
    let shard = dir.join("model-00001-of-00002.safetensors");
    let bytes = fs::read(&shard).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .iter()
        .map(|(name, v)| {
            (
                name.to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    for (name, dtype, _, data) in &mut tensors {
        if name.ends_with("model.norm.weight") {
            assert_eq!(*dtype, safetensors::Dtype::F32);
            data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &shard).unwrap();
    let model = load(&dir).unwrap();
    let image = paligemma::load_image(fixtures().join("images/photo.png")).unwrap();
    let err = model
        .generate(&image, "caption en", &GenerateOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { row: 0, step: 0 }), "{err}");
}

/// A corrupt optional `vae-oid.npz` disables segmentation only: the checkpoint loads,
/// other tasks run, the problem is a warning, and `segment` reports it.
#[test]
fn a_corrupt_mask_decoder_disables_segmentation_only() {
    let (_tmp, dir) = copy_fixture("pg1-tiny");
    fs::write(dir.join("vae-oid.npz"), b"not a zip archive").unwrap();
    let model = load(&dir).unwrap();
    assert_eq!(model.warnings().len(), 1, "{:?}", model.warnings());
    assert!(model.warnings()[0].contains("vae-oid.npz"));
    let image = paligemma::load_image(fixtures().join("images/photo.png")).unwrap();
    model.caption(&image, "en").unwrap();
    let err = model.segment(&image, "cat").unwrap_err();
    assert!(
        matches!(err, Error::MaskDecoder(_)) && err.to_string().contains("not an npz"),
        "{err}"
    );
}

/// A prompt far beyond the context is refused before it is tokenized.
#[test]
fn huge_prompts_are_refused_before_tokenizing() {
    let model = load(&fixtures().join("pg1-tiny")).unwrap();
    let context = model.config().text.max_position_embeddings;
    let prompt = "a".repeat(256 * context + 256);
    let err = model.prompt_ids(&prompt).unwrap_err();
    // The length error, not the context error that tokenizing first would give.
    assert!(
        matches!(err, Error::Prompt(_)) && err.to_string().contains("bytes"),
        "{err}"
    );
}

/// Degenerate sizes and epsilons are config errors naming the field, not panics or
/// NaN later: an odd (or zero) head width, negative or non-finite norm epsilons.
#[test]
fn degenerate_config_values_are_refused() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 4] = [
        ("head_dim", |c| c["text_config"]["head_dim"] = 1.into()),
        ("head_dim", |c| c["text_config"]["head_dim"] = 0.into()),
        ("rms_norm_eps", |c| {
            c["text_config"]["rms_norm_eps"] = (-1.0).into()
        }),
        ("layer_norm_eps", |c| {
            c["vision_config"]["layer_norm_eps"] = (-1e-6).into()
        }),
    ];
    for (field, edit) in cases {
        let (_tmp, dir) = copy_fixture("pg1-tiny");
        edit_config(&dir, edit);
        let err = load(&dir).err().expect("refused");
        assert!(
            matches!(err, Error::Config { .. }) && err.to_string().contains(field),
            "{err}"
        );
    }
}

/// Segmentation masks cover the whole image, so an output whose masks would exceed
/// `MAX_MASK_PIXELS` is refused before any allocation (a 10^18-pixel request aborted
/// the process before).
#[test]
fn huge_segmentation_canvases_are_refused() {
    let decoder = paligemma::MaskDecoder::<Cpu>::from_npz(
        fixtures().join("vae/vae-oid-random.npz"),
        &Default::default(),
    )
    .unwrap();
    let one = format!(
        "<loc0000><loc0000><loc0500><loc0500>{} cat",
        "<seg001>".repeat(16)
    );
    for (w, h, n) in [
        (1_000_000_000u32, 1_000_000_000u32, 1),
        (50_000, 50_000, 1),
        (3000, 3000, 400),
    ] {
        let text = vec![one.as_str(); n].join(" ; ");
        let err = paligemma::task::segmentations_from_text(&text, w, h, &decoder).unwrap_err();
        assert!(
            matches!(err, Error::Prompt(_)) && err.to_string().contains("mask pixels"),
            "{err}"
        );
    }
    let (objects, _) = paligemma::task::segmentations_from_text(&one, 640, 480, &decoder).unwrap();
    assert_eq!(objects.len(), 1);
}
