//! The model against Hugging Face transformers on the tiny random checkpoints:
//! prompt ids, pixels, vision tower, projector, prefill logits and greedy generation.
//! Expected values come from `scripts/make_fixtures.py`.

mod common;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use common::*;
use paligemma::{
    Diagnostics, Dtype, GenerateOptions, LoadOptions, Model, WeightFormat, backend::Cpu,
};

const TOL: f32 = 1e-4;

fn tensor_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Every stage of `name` against the reference, on backend `B` with backend weights
/// (the reference path; host weights have their own tests below).
fn check_model<B: Backend>(name: &str, device: &B::Device) {
    let options = LoadOptions {
        weights: WeightFormat::Backend,
        ..Default::default()
    };
    check_model_with::<B>(name, &options, device);
}

/// [`check_model`] for a model loaded with `options` (f32 activations).
fn check_model_with<B: Backend>(name: &str, options: &LoadOptions, device: &B::Device) {
    let model = Model::<B>::from_pretrained_with(fixtures().join(name), device, options).unwrap();
    let tensors = expected_tensors(name);
    let meta = expected_json(name);
    let max_new = meta["max_new_tokens"].as_u64().unwrap() as usize;
    for (case, c) in meta["cases"].as_object().unwrap() {
        let image = open_image(c["image"].as_str().unwrap());
        let prompt = c["prompt"].as_str().unwrap();
        let ids = model.prompt_ids(prompt).unwrap();
        assert_eq!(
            ids,
            common::ids(&c["prompt_ids"]),
            "{name}/{case}: prompt ids"
        );

        let px = &tensors[&format!("{case}.pixel_values")];
        let ours = tensor_vec(model.pixel_values(&image).unwrap());
        let diff = max_abs_diff(&ours, &px.data);
        assert!(diff < 1e-5, "{name}/{case}: pixels differ by {diff}");

        // Feed the reference pixels so each stage is compared on its own.
        let pixels = Tensor::<B, 4>::from_data(
            TensorData::new(px.data.clone(), px.shape.clone()),
            model.device(),
        );
        let vision = tensor_vec(model.vision_tower().forward(pixels.clone()));
        let diff = max_abs_diff(&vision, &tensors[&format!("{case}.vision")].data);
        assert!(diff < TOL, "{name}/{case}: vision tower differs by {diff}");

        let proj = tensor_vec(model.image_features(pixels.clone()));
        let diff = max_abs_diff(&proj, &tensors[&format!("{case}.projector")].data);
        assert!(diff < TOL, "{name}/{case}: projector differs by {diff}");

        let features = model.image_features(pixels);
        let logits = tensor_vec(model.forward_logits(&features, &ids).unwrap());
        let diff = max_abs_diff(&logits, &tensors[&format!("{case}.logits")].data);
        assert!(diff < TOL, "{name}/{case}: prefill logits differ by {diff}");

        let options = GenerateOptions {
            max_new_tokens: max_new,
            diagnostics: Diagnostics {
                top_logits: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = model.generate(&image, prompt, &options).unwrap();
        assert_eq!(
            out.generated_ids,
            common::ids(&c["generated_ids"]),
            "{name}/{case}: greedy tokens"
        );
        assert_eq!(
            out.text,
            c["generated_text"].as_str().unwrap(),
            "{name}/{case}: text"
        );
        let tops = out.top_logits.unwrap();
        for (step, (ours, theirs)) in tops
            .iter()
            .zip(c["top_logits"].as_array().unwrap())
            .enumerate()
        {
            for ((id, v), t) in ours.iter().zip(theirs.as_array().unwrap()) {
                let (tid, tv) = (t[0].as_u64().unwrap() as u32, t[1].as_f64().unwrap() as f32);
                // Ties below the tolerance may order differently; values must agree.
                assert!(
                    (v - tv).abs() < TOL,
                    "{name}/{case} step {step}: logit {v} vs {tv}"
                );
                if (v - tv).abs() < TOL && *id != tid {
                    assert!(
                        ours.iter().any(|(i, _)| *i == tid),
                        "{name}/{case} step {step}: top-k ids"
                    );
                }
            }
        }
    }
}

/// Half precision against the float32 reference: prefill logits within twice the error
/// transformers itself makes in `dtype` on the same checkpoint (recorded by
/// `scripts/make_precision_fixtures.py`, see docs/precision.md), and greedy tokens
/// equal to float32's up to the first step whose top-2 margin is within that error.
fn check_half<B: Backend>(name: &str, dtype: Dtype, device: &B::Device) {
    let options = LoadOptions {
        dtype,
        ..Default::default()
    };
    check_reduced::<B>(name, &options, dtype, 2.0, device);
}

/// [`check_half`] for a model loaded with `options` whose products run at the precision
/// of `products` (f32 on tensor-core GPUs multiplies in TF32, with f16's 10-bit
/// mantissa), with a tolerance of `factor` times transformers' drift in `products`.
fn check_reduced<B: Backend>(
    name: &str,
    options: &LoadOptions,
    products: Dtype,
    factor: f32,
    device: &B::Device,
) {
    let model = Model::<B>::from_pretrained_with(fixtures().join(name), device, options).unwrap();
    assert_eq!(model.dtype(), options.dtype);
    if options.weights != WeightFormat::Auto {
        assert_eq!(model.weight_format(), options.weights);
    }
    let dtype = format!("{}/{} weights", options.dtype, options.weights);
    let tensors = expected_tensors(name);
    let meta = expected_json(name);
    let precision = expected_json("precision");
    let theirs = precision["models"][name][products.name()]["max_abs_diff_vs_f32"]
        .as_f64()
        .unwrap() as f32;
    let tol = factor * theirs;
    let max_new = meta["max_new_tokens"].as_u64().unwrap() as usize;
    for (case, c) in meta["cases"].as_object().unwrap() {
        let px = &tensors[&format!("{case}.pixel_values")];
        let pixels = Tensor::<B, 4>::from_data(
            TensorData::new(px.data.clone(), px.shape.clone()),
            model.device(),
        );
        let ids = common::ids(&c["prompt_ids"]);
        let features = model.image_features(pixels);
        let logits = tensor_vec(model.forward_logits(&features, &ids).unwrap());
        assert!(
            logits.iter().all(|v| v.is_finite()),
            "{name}/{case}/{dtype}: non-finite logits"
        );
        let diff = max_abs_diff(&logits, &tensors[&format!("{case}.logits")].data);
        eprintln!(
            "{name}/{case}/{dtype}: logits differ from f32 by {diff} (transformers: {theirs})"
        );
        assert!(
            diff <= tol,
            "{name}/{case}/{dtype}: prefill logits differ from f32 by {diff}; transformers in {products} by {theirs}"
        );

        let image = open_image(c["image"].as_str().unwrap());
        let options = GenerateOptions {
            max_new_tokens: max_new,
            ..Default::default()
        };
        let ours = model
            .generate(&image, c["prompt"].as_str().unwrap(), &options)
            .unwrap()
            .generated_ids;
        let reference = common::ids(&c["generated_ids"]);
        let margins = c["margins"].as_array().unwrap();
        if let Some(step) = ours.iter().zip(&reference).position(|(a, b)| a != b) {
            let margin = margins[step].as_f64().unwrap() as f32;
            assert!(
                margin <= tol,
                "{name}/{case}/{dtype}: greedy token {step} differs from f32 although f32's top-2 margin {margin} exceeds the tolerance {tol}"
            );
        } else {
            assert_eq!(ours.len(), reference.len(), "{name}/{case}/{dtype}: length");
        }
    }
}

#[test]
fn half_precision_on_cpu() {
    for dtype in [Dtype::F16, Dtype::Bf16] {
        check_half::<Cpu>("pg1-tiny", dtype, &Default::default());
        check_half::<Cpu>("pg2-tiny", dtype, &Default::default());
    }
}

/// f32 host weights are the same f32 arithmetic through the crate's own kernels: held
/// to the full f32 check (1e-4 against transformers float32, equal greedy tokens).
#[test]
fn f32_host_weights_on_cpu() {
    let options = LoadOptions {
        weights: WeightFormat::F32,
        ..Default::default()
    };
    check_model_with::<Cpu>("pg1-tiny", &options, &Default::default());
    check_model_with::<Cpu>("pg2-tiny", &options, &Default::default());
}

/// bf16 host weights round the weights and each product's activations to bf16, as
/// transformers' bfloat16 rounds everything: held to the same tolerance as bf16.
#[test]
fn bf16_host_weights_on_cpu() {
    let options = LoadOptions {
        weights: WeightFormat::Bf16,
        ..Default::default()
    };
    for name in ["pg1-tiny", "pg2-tiny"] {
        check_reduced::<Cpu>(name, &options, Dtype::Bf16, 2.0, &Default::default());
    }
}

/// int8 host weights: a per-row absmax step is several times bf16's rounding error, so
/// the tolerance is 4x transformers' bf16 drift (measured: up to 1.9x; docs/precision.md).
#[test]
fn int8_host_weights_on_cpu() {
    let options = LoadOptions {
        weights: WeightFormat::Int8,
        ..Default::default()
    };
    for name in ["pg1-tiny", "pg2-tiny"] {
        check_reduced::<Cpu>(name, &options, Dtype::Bf16, 4.0, &Default::default());
    }
}

/// Grouped int4 host weights: a step is an eighth of a group's largest weight, far
/// coarser than int8's; the tolerance is 10x transformers' bf16 drift (measured: 7.4x; see
/// docs/precision.md), and greedy tokens must agree up to the first near-tie as above.
#[test]
fn int4_host_weights_on_cpu() {
    let options = LoadOptions {
        weights: WeightFormat::Int4,
        ..Default::default()
    };
    for name in ["pg1-tiny", "pg2-tiny"] {
        check_reduced::<Cpu>(name, &options, Dtype::Bf16, 10.0, &Default::default());
    }
}

/// Host weights compute activations in f32: a half-precision dtype with them is an
/// error naming both, not a silently different model.
#[test]
fn host_weights_refuse_half_activations() {
    let options = LoadOptions {
        dtype: Dtype::F16,
        weights: WeightFormat::Bf16,
    };
    let dir = fixtures().join("pg2-tiny");
    match Model::<Cpu>::from_pretrained_with(dir, &Default::default(), &options) {
        Err(paligemma::Error::Unsupported(msg)) => {
            assert!(msg.contains("f16") && msg.contains("bf16 weights"), "{msg}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("f16 activations with bf16 host weights must be refused"),
    }
}

#[test]
fn paligemma1_hub_layout_sharded_f32_mqa() {
    check_model::<Cpu>("pg1-tiny", &Default::default());
}

#[test]
fn paligemma2_v5_layout_bf16_gqa_softcap_sliding() {
    check_model::<Cpu>("pg2-tiny", &Default::default());
}

#[cfg(feature = "ndarray")]
#[test]
fn parity_on_ndarray() {
    use paligemma::backend::NdArray;
    check_model::<NdArray>("pg1-tiny", &Default::default());
    check_model::<NdArray>("pg2-tiny", &Default::default());
}

/// Runs where a wgpu adapter exists (CI uses Mesa's software Vulkan driver).
#[cfg(feature = "wgpu")]
#[test]
fn parity_on_wgpu() {
    use paligemma::backend::Wgpu;
    check_model::<Wgpu>("pg1-tiny", &Default::default());
    check_model::<Wgpu>("pg2-tiny", &Default::default());
}

/// f16 on wgpu where the adapter has half-precision shaders; bf16 is refused with an
/// error before loading, never run into garbage.
#[cfg(feature = "wgpu")]
#[test]
fn half_precision_on_wgpu() {
    use burn::tensor::{DType, backend::Backend};
    use paligemma::backend::Wgpu;
    let device = Default::default();
    if Wgpu::supports_dtype(&device, DType::F16) {
        check_half::<Wgpu>("pg1-tiny", Dtype::F16, &device);
        check_half::<Wgpu>("pg2-tiny", Dtype::F16, &device);
    } else {
        eprintln!("this wgpu adapter has no f16 support; checking the error only");
        let options = LoadOptions {
            dtype: Dtype::F16,
            ..Default::default()
        };
        let err =
            Model::<Wgpu>::from_pretrained_with(fixtures().join("pg1-tiny"), &device, &options);
        assert!(matches!(err, Err(paligemma::Error::Unsupported(_))));
    }
    let options = LoadOptions {
        dtype: Dtype::Bf16,
        ..Default::default()
    };
    match Model::<Wgpu>::from_pretrained_with(fixtures().join("pg2-tiny"), &device, &options) {
        Err(paligemma::Error::Unsupported(msg)) => assert!(msg.contains("bf16"), "{msg}"),
        Err(e) => panic!("bf16 on wgpu: unexpected error {e}"),
        Ok(_) => {
            assert!(Wgpu::supports_dtype(&device, DType::BF16));
            check_half::<Wgpu>("pg2-tiny", Dtype::Bf16, &device);
        }
    }
    // Host weight kernels read host memory: refused on a GPU backend, before loading.
    let options = LoadOptions {
        weights: WeightFormat::Int8,
        ..Default::default()
    };
    match Model::<Wgpu>::from_pretrained_with(fixtures().join("pg2-tiny"), &device, &options) {
        Err(paligemma::Error::Unsupported(msg)) => assert!(msg.contains("CPU"), "{msg}"),
        Err(e) => panic!("int8 weights on wgpu: unexpected error {e}"),
        Ok(_) => panic!("int8 weights on wgpu must be refused"),
    }
}

/// f32 on CUDA (run by `scripts/gpu_check.sh` on a machine with a GPU). burn's CUDA
/// matmul multiplies f32 in TF32 on tensor-core GPUs (cubek-matmul stages f32 operands
/// as tf32), so the tolerance is f16's, not 1e-4: see docs/precision.md.
#[cfg(feature = "cuda")]
#[test]
fn parity_on_cuda_f32_tf32_products() {
    use paligemma::backend::Cuda;
    let device = Default::default();
    let options = LoadOptions::default();
    check_reduced::<Cuda>("pg1-tiny", &options, Dtype::F16, 2.0, &device);
    check_reduced::<Cuda>("pg2-tiny", &options, Dtype::F16, 2.0, &device);
}

/// f16 and bf16 on CUDA.
#[cfg(feature = "cuda")]
#[test]
fn half_precision_on_cuda() {
    use paligemma::backend::Cuda;
    let device = Default::default();
    for dtype in [Dtype::F16, Dtype::Bf16] {
        check_half::<Cuda>("pg1-tiny", dtype, &device);
        check_half::<Cuda>("pg2-tiny", dtype, &device);
    }
}

#[test]
fn preprocessing_matches_pil_processor() {
    let tensors = expected_tensors("processor");
    let meta = expected_json("processor");
    for (key, m) in meta.as_object().unwrap() {
        let image = open_image(m["image"].as_str().unwrap());
        let size = m["size"].as_u64().unwrap() as usize;
        let ours = paligemma::preprocess_image(&image, size).unwrap();
        let theirs = &tensors[key].data;
        let mean = mean_abs_diff(&ours, theirs);
        let max = max_abs_diff(&ours, theirs);
        assert!(mean < 1.0 / 255.0, "{key}: mean abs diff {mean}");
        assert!(
            max < 1e-5,
            "{key}: max abs diff {max} (PIL bicubic should match exactly)"
        );
    }
}

fn random_vae() -> paligemma::MaskDecoder<Cpu> {
    let path = fixtures().join("vae/vae-oid-random.npz");
    paligemma::MaskDecoder::<Cpu>::from_npz(path, &Default::default()).unwrap()
}

#[test]
fn mask_decoder_matches_pytorch() {
    let decoder = random_vae();
    let t = expected_tensors("vae");
    let codes: Vec<[u16; 16]> = t["codes"]
        .data
        .chunks_exact(16)
        .map(|c| std::array::from_fn(|i| c[i] as u16))
        .collect();
    let ours: Vec<f32> = decoder.masks(&codes).unwrap().concat();
    let diff = max_abs_diff(&ours, &t["masks"].data);
    let scale = t["masks"].data.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        diff < 1e-4 * scale.max(1.0),
        "decoder differs by {diff} (output scale {scale})"
    );
}

#[test]
fn pasted_masks_match_big_vision_evaluator() {
    let decoder = random_vae();
    let t = expected_tensors("vae");
    let meta = expected_json("vae");
    let (w, h) = (
        meta["width"].as_u64().unwrap() as u32,
        meta["height"].as_u64().unwrap() as u32,
    );
    let (objects, skipped) =
        paligemma::task::segmentations_from_text(meta["text"].as_str().unwrap(), w, h, &decoder)
            .unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(objects.len(), 2);
    let plane = (w * h) as usize;
    for (i, o) in objects.iter().enumerate() {
        let expected = &t["pasted"].data[i * plane..(i + 1) * plane];
        let differing = o
            .mask
            .data
            .iter()
            .zip(expected)
            .filter(|(a, b)| **a != (**b > 0.5))
            .count();
        assert_eq!(differing, 0, "object {i}: {differing} pixels differ");
        assert!(o.mask.area() > 0);
    }
}

/// The encoder turns masks into the codes an independent PyTorch encoder finds (and
/// its continuous output agrees to 1e-4), on the random fixture npz.
#[test]
fn mask_encoder_matches_pytorch() {
    let path = fixtures().join("vae/vae-oid-random.npz");
    let encoder = paligemma::MaskEncoder::<Cpu>::from_npz(path, &Default::default()).unwrap();
    let t = expected_tensors("mask_encoder");
    let masks: Vec<Vec<f32>> = t["masks"]
        .data
        .chunks_exact(64 * 64)
        .map(<[f32]>::to_vec)
        .collect();
    let n = masks.len();
    let input = Tensor::<Cpu, 4>::from_data(
        TensorData::new(masks.concat(), [n, 1, 64, 64]),
        &Default::default(),
    );
    let latents = tensor_vec(encoder.latents(input));
    let diff = max_abs_diff(&latents, &t["latents"].data);
    let scale = t["latents"].data.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        diff < 1e-4 * scale.max(1.0),
        "latents differ by {diff} (scale {scale})"
    );
    let codes: Vec<f32> = encoder
        .encode(&masks)
        .unwrap()
        .concat()
        .iter()
        .map(|&c| f32::from(c))
        .collect();
    assert_eq!(codes, t["codes"].data);
}

/// Masks of the wrong size and missing files are typed errors.
#[test]
fn mask_encoder_rejects_bad_masks() {
    let path = fixtures().join("vae/vae-oid-random.npz");
    let encoder = paligemma::MaskEncoder::<Cpu>::from_npz(path, &Default::default()).unwrap();
    assert_eq!(encoder.codebook_size(), 128);
    assert!(encoder.encode(&[vec![0.0; 10]]).is_err());
    assert!(encoder.encode(&[]).unwrap().is_empty());
    // The decoder fixture alone has no encoder: a typed error naming the array.
    let err = paligemma::MaskEncoder::<Cpu>::from_npz(
        fixtures().join("vae/missing.npz"),
        &Default::default(),
    );
    assert!(err.is_err());
}

/// The default weight format follows the checkpoint: host weights in its precision
/// where this CPU has SIMD kernels (pg1-tiny stores f32, pg2-tiny bf16), backend
/// tensors elsewhere and for half-precision compute; each passes its format's check.
#[test]
fn default_weights_follow_the_checkpoint() {
    let device = Default::default();
    let accelerated = WeightFormat::F32.accelerated();
    for (name, host) in [
        ("pg1-tiny", WeightFormat::F32),
        ("pg2-tiny", WeightFormat::Bf16),
    ] {
        let model = Model::<Cpu>::from_pretrained(fixtures().join(name), &device).unwrap();
        let expected = if accelerated {
            host
        } else {
            WeightFormat::Backend
        };
        assert_eq!(model.weight_format(), expected, "{name}");
        let half = LoadOptions {
            dtype: Dtype::F16,
            ..Default::default()
        };
        let model = Model::<Cpu>::from_pretrained_with(fixtures().join(name), &device, &half);
        assert_eq!(model.unwrap().weight_format(), WeightFormat::Backend);
    }
    check_model_with::<Cpu>("pg1-tiny", &LoadOptions::default(), &device);
    check_reduced::<Cpu>(
        "pg2-tiny",
        &LoadOptions::default(),
        Dtype::Bf16,
        2.0,
        &device,
    );
}

/// Prefill logits of the first parity case of `name`.
fn first_case_logits(model: &Model<Cpu>, name: &str) -> Vec<f32> {
    let meta = expected_json(name);
    let (_, case) = meta["cases"].as_object().unwrap().iter().next().unwrap();
    let image = open_image(case["image"].as_str().unwrap());
    let ids = model.prompt_ids(case["prompt"].as_str().unwrap()).unwrap();
    let features = model.image_features(model.pixel_values(&image).unwrap());
    tensor_vec(model.forward_logits(&features, &ids).unwrap())
}

/// Host weights take PEFT adapters (run on the backend beside the host products) and
/// merge them, with the logits of backend weights; a host model saves a checkpoint
/// holding exactly the values it loaded.
#[test]
fn host_weights_take_adapters_and_save() {
    let device = Default::default();
    let load = |name: &str, weights| {
        let options = LoadOptions {
            weights,
            ..Default::default()
        };
        Model::<Cpu>::from_pretrained_with(fixtures().join(name), &device, &options).unwrap()
    };
    for (name, host) in [
        ("pg1-tiny", WeightFormat::F32),
        ("pg2-tiny", WeightFormat::Bf16),
    ] {
        let adapter = fixtures().join(format!("lora-{name}"));
        let reference = load(name, WeightFormat::Backend)
            .with_lora_adapter(&adapter)
            .unwrap();
        let ours = load(name, host).with_lora_adapter(&adapter).unwrap();
        assert!(ours.has_lora());
        let (want, got) = (
            first_case_logits(&reference, name),
            first_case_logits(&ours, name),
        );
        // bf16 host weights round the activations to bf16: check_reduced's tolerance.
        let precision = expected_json("precision");
        let bf16 = &precision["models"][name]["bf16"]["max_abs_diff_vs_f32"];
        let tol = match host {
            WeightFormat::F32 => TOL,
            _ => 2.0 * bf16.as_f64().unwrap() as f32,
        };
        let diff = max_abs_diff(&got, &want);
        assert!(
            diff < tol,
            "{name}: {host} weights with an adapter differ by {diff}"
        );
        let merged = ours.merge_lora().unwrap();
        assert!(!merged.has_lora());
        let diff = max_abs_diff(&first_case_logits(&merged, name), &want);
        assert!(
            diff < tol,
            "{name}: merged {host} adapter differs by {diff}"
        );

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("copy");
        load(name, host).save_pretrained(&out, None).unwrap();
        let saved = Model::<Cpu>::from_pretrained_with(
            &out,
            &device,
            &LoadOptions {
                weights: WeightFormat::Backend,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            first_case_logits(&saved, name),
            first_case_logits(&load(name, WeightFormat::Backend), name),
            "{name}: a checkpoint saved from {host} weights holds other values"
        );
    }
    let err = load("pg1-tiny", WeightFormat::Int8)
        .save_pretrained(tempfile::tempdir().unwrap().path().join("q"), None)
        .unwrap_err();
    assert!(err.to_string().contains("int8"), "{err}");
}
