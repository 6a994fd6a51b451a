//! Micro-benchmarks on a mid-size random PaliGemma (SigLIP 384 wide x 6 layers at 224 px,
//! Gemma 512 wide x 6 layers, MQA): the vision tower, a prompt prefill and one decode
//! step, so regressions show without a 3B checkpoint. `cargo bench` (add
//! `-- --quick` for a fast pass). The checkpoint is written to a temporary directory
//! with the tiny fixture's tokenizer; the weights are random, the shapes are what count.

#[path = "common/mid_model.rs"]
mod mid_model;

use burn::tensor::{Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use mid_model::{IMAGE, write_checkpoint};
use paligemma::{Dtype, LoadOptions, Model, WeightFormat, backend::Cpu};

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    write_checkpoint(dir.path());
    let device = Default::default();
    let configs = [
        (Dtype::F32, WeightFormat::Backend, "f32"),
        (Dtype::F16, WeightFormat::Backend, "f16"),
        (Dtype::F32, WeightFormat::Bf16, "bf16_weights"),
        (Dtype::F32, WeightFormat::Int8, "int8_weights"),
    ];
    for (dtype, weights, dtype_name) in configs {
        let options = LoadOptions { dtype, weights };
        let dtype = dtype_name;
        let model = Model::<Cpu>::from_pretrained_with(dir.path(), &device, &options)
            .expect("load mid-size model");
        let pixels = Tensor::<Cpu, 4>::from_data(
            TensorData::new(vec![0.1f32; 3 * IMAGE * IMAGE], [1, 3, IMAGE, IMAGE]),
            &device,
        );
        c.bench_function(&format!("vision_tower_224_{dtype}"), |b| {
            b.iter(|| model.image_features(pixels.clone()).into_data())
        });

        let features = model.image_features(pixels.clone());
        let ids = model.prompt_ids("caption en").expect("prompt");
        let n = ids.len();
        let prompt = [(&features, ids.as_slice())];
        c.bench_function(&format!("prefill_{n}_tokens_{dtype}"), |b| {
            b.iter(|| model.prefill(&prompt, 1).expect("prefill").1.into_data())
        });

        let (mut state, _) = model.prefill(&prompt, 1).expect("prefill");
        c.bench_function(&format!("decode_step_{dtype}"), |b| {
            b.iter(|| {
                let logits = model.extend(&mut state, &[100]).expect("step").into_data();
                state.truncate(n);
                logits
            })
        });
    }
}

criterion_group!(model, benches);
criterion_main!(model);
