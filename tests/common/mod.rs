//! Shared helpers for the reference-parity tests: reading what
//! `scripts/make_fixtures.py` recorded from transformers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `tests/fixtures`; `PALIGEMMA_FIXTURES` overrides it for test binaries run on another
/// machine (`scripts/gpu_check.sh`).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("PALIGEMMA_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// A float tensor from an expected-output file.
pub struct Expected {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every tensor of `tests/fixtures/expected/{name}.safetensors`, as f32 (ints converted).
pub fn expected_tensors(name: &str) -> HashMap<String, Expected> {
    let path = fixtures()
        .join("expected")
        .join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.iter()
        .map(|(name, view)| {
            let b = view.data();
            let data = match view.dtype() {
                safetensors::Dtype::F32 => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I64 => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                safetensors::Dtype::U8 => b.iter().map(|&v| f32::from(v)).collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (
                name.to_string(),
                Expected {
                    shape: view.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

pub fn expected_json(name: &str) -> serde_json::Value {
    let path = fixtures().join("expected").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Largest absolute difference; panics on a length mismatch.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn open_image(name: &str) -> image::DynamicImage {
    image::open(fixtures().join("images").join(name)).unwrap()
}
