//! Image features of a frozen vision tower, computed once per image: a frozen tower
//! and projector give the same features for the same pixels at every step, so a
//! trainer with frozen vision keeps them, outside the autodiff graph and within a
//! memory budget, and later steps over the same images skip the tower.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

use burn::tensor::{Tensor, backend::AutodiffBackend};

use super::batch::Batch;
use crate::model::Model;

/// Features kept per image, keyed by a 128-bit hash of its normalised pixels.
pub(super) struct FeatureCache<B: AutodiffBackend> {
    budget: usize,
    used: usize,
    kept: HashMap<[u64; 2], Tensor<B::InnerBackend, 3>>,
}

impl<B: AutodiffBackend> FeatureCache<B> {
    /// A cache holding at most `budget` bytes of features (f32).
    pub(super) fn new(budget: usize) -> Self {
        FeatureCache {
            budget,
            used: 0,
            kept: HashMap::new(),
        }
    }

    /// Images whose features are kept.
    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }

    /// The features `[images, tokens, hidden]` of `batch`'s images in batch order:
    /// kept ones reused, the others computed in one pass of `model`'s tower and kept
    /// while the budget allows. The result carries no autodiff graph.
    pub(super) fn features(&mut self, model: &Model<B>, batch: &Batch) -> Tensor<B, 3> {
        let images: usize = batch.images_per_row.iter().sum();
        let keys: Vec<[u64; 2]> = (0..images).map(|i| key(batch.image_pixels(i))).collect();
        // Each image's features: kept from an earlier step, or slot `j` of this
        // step's pass over the distinct images not kept yet (`missing`).
        let mut missing: Vec<usize> = Vec::new();
        let mut sources = Vec::with_capacity(images);
        for (i, k) in keys.iter().enumerate() {
            let source = match self.kept.get(k) {
                Some(f) => Source::Kept(f.clone()),
                None => match missing.iter().position(|&m| keys[m] == *k) {
                    Some(j) => Source::Computed(j),
                    None => {
                        missing.push(i);
                        Source::Computed(missing.len() - 1)
                    }
                },
            };
            sources.push(source);
        }
        let computed = (!missing.is_empty()).then(|| {
            let device = model.device();
            let pixels = missing
                .iter()
                .map(|&i| batch.pixels_of::<B>(i..i + 1, device))
                .collect();
            model
                .network()
                .image_features(Tensor::cat(pixels, 0))
                .inner()
        });
        let slot = |t: &Tensor<B::InnerBackend, 3>, j: usize| {
            let [_, tokens, hidden] = t.dims();
            t.clone().slice([j..j + 1, 0..tokens, 0..hidden])
        };
        if let Some(computed) = &computed {
            let [_, tokens, hidden] = computed.dims();
            let bytes = tokens * hidden * std::mem::size_of::<f32>();
            for (j, &i) in missing.iter().enumerate() {
                if self.used + bytes <= self.budget {
                    self.used += bytes;
                    self.kept.insert(keys[i], slot(computed, j));
                }
            }
        }
        let parts = sources
            .into_iter()
            .filter_map(|source| match source {
                Source::Kept(f) => Some(f),
                Source::Computed(j) => computed.as_ref().map(|c| slot(c, j)),
            })
            .collect();
        Tensor::from_inner(Tensor::cat(parts, 0))
    }
}

/// Where one image's features come from.
enum Source<B: burn::tensor::backend::Backend> {
    Kept(Tensor<B, 3>),
    Computed(usize),
}

/// Two differently seeded hashes of the pixels' bits: a collision between distinct
/// images of one run is out of reach.
fn key(pixels: &[f32]) -> [u64; 2] {
    let mut a = DefaultHasher::new();
    let mut b = DefaultHasher::new();
    b.write_u64(0x5061_6c69_4765_6d6d);
    for &p in pixels {
        a.write_u32(p.to_bits());
        b.write_u32(p.to_bits());
    }
    [a.finish(), b.finish()]
}
