//! The demo's segmentation VQ-VAE: `vae-oid.npz`'s architecture at smaller widths,
//! trained on the box crops of the shapes' masks, so that `segment` works with the
//! demo as with a released checkpoint. Its encoder makes the `<seg>` codes of the
//! demo's segmentation targets; its decoder turns generated codes back into masks.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Tensor, TensorData, backend::AutodiffBackend, backend::Backend};

use super::scene::{Rng, Scene};
use crate::error::Result;
use crate::mask_encoder::{MaskEncoder, mask_crop, nearest_codes};
use crate::npz::{NpyArray, write_npz};
use crate::segmentation::{MASK_SIZE, MaskDecoder};

/// Channel widths: the encoder's four downsampling convs (the decoder mirrors them),
/// the latent width, and the number of codebook entries (128, as `<seg>` tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeSize {
    /// Output widths of `encoder.0/2/4/6` (`vae-oid.npz`: 16, 32, 64, 128).
    pub widths: [usize; 4],
    /// Codebook vector width (`vae-oid.npz`: 512).
    pub latent: usize,
}

impl Default for VaeSize {
    fn default() -> Self {
        VaeSize {
            widths: [8, 16, 32, 32],
            latent: 32,
        }
    }
}

/// The encoder and decoder trained together (the codebook is the decoder's).
#[derive(Module, Debug)]
pub(crate) struct MaskVae<B: Backend> {
    pub encoder: MaskEncoder<B>,
    pub decoder: MaskDecoder<B>,
}

/// He-initialised arrays named as in `vae-oid.npz` (fan-in over what reaches one output
/// pixel; the last conv of each residual branch halved) and a N(0, 1) codebook.
fn initial_arrays(size: &VaeSize, seed: u64) -> HashMap<String, NpyArray> {
    let mut rng = Rng::new(seed);
    let mut normal = move |n: usize, std: f64| rng.normals(n, std);
    let mut out = HashMap::new();
    let mut conv = |name: String, c_in: usize, c_out: usize, k: usize, transposed: bool| {
        let fan = if transposed { c_in * 4 } else { c_in * k * k };
        let gain = if name.ends_with("net.4") { 0.5 } else { 1.0 };
        let shape = if transposed {
            vec![c_in, c_out, k, k]
        } else {
            vec![c_out, c_in, k, k]
        };
        let data = normal(c_in * c_out * k * k, gain * (2.0 / fan as f64).sqrt());
        out.insert(format!("{name}.weight"), NpyArray { shape, data });
        out.insert(
            format!("{name}.bias"),
            NpyArray {
                shape: vec![c_out],
                data: vec![0.0; c_out],
            },
        );
    };
    let [a, b, c, d] = size.widths;
    let mut width = 1;
    for (i, w) in [0, 2, 4, 6].into_iter().zip([a, b, c, d]) {
        conv(format!("encoder.{i}"), width, w, 4, false);
        width = w;
    }
    for block in ["encoder.8", "encoder.9", "decoder.2", "decoder.3"] {
        conv(format!("{block}.net.0"), d, d, 3, false);
        conv(format!("{block}.net.2"), d, d, 3, false);
        conv(format!("{block}.net.4"), d, d, 1, false);
    }
    conv("encoder.10".into(), d, size.latent, 1, false);
    conv("decoder.0".into(), size.latent, d, 1, false);
    let mut width = d;
    for (i, w) in [4, 6, 8, 10].into_iter().zip([d, c, b, a]) {
        conv(format!("decoder.{i}"), width, w, 4, true);
        width = w;
    }
    conv("decoder.12".into(), a, 1, 1, false);
    out.insert(
        "_vq_vae._embedding".into(),
        NpyArray {
            shape: vec![128, size.latent],
            data: normal(128 * size.latent, 1.0),
        },
    );
    out
}

/// 64 x 64 box crops of the masks of the objects of scenes drawn from `seed` on.
fn crops(first_seed: u64, count: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(count);
    let mut seed = first_seed;
    while out.len() < count {
        let scene = Scene::generate(seed);
        for (i, o) in scene.objects.iter().enumerate() {
            if let Some(crop) = scene.mask(i).and_then(|m| mask_crop(&m, &o.bbox)) {
                out.push(crop);
            }
        }
        seed += 1;
    }
    out.truncate(count);
    out
}

impl<B: AutodiffBackend> MaskVae<B> {
    /// Reconstruction (squared error against the mask mapped to [-1, 1], the range the
    /// evaluator thresholds at 0), plus the VQ-VAE codebook and commitment terms
    /// (weight 0.25) with the straight-through estimator.
    fn loss(&self, masks: Tensor<B, 4>) -> Tensor<B, 1> {
        let [n, ..] = masks.dims();
        let z = self.encoder.latents(masks.clone());
        let [_, width, h, w] = z.dims();
        let cells = z.permute([0, 2, 3, 1]).reshape([n * h * w, width]);
        let codebook = self.decoder.codebook();
        let nearest = nearest_codes(cells.clone().detach(), codebook.clone().detach());
        let quantized = codebook.select(0, nearest);
        let codebook_loss = (quantized.clone() - cells.clone().detach())
            .powi_scalar(2)
            .mean();
        let commitment = (cells.clone() - quantized.clone().detach())
            .powi_scalar(2)
            .mean();
        let straight = cells.clone() + (quantized - cells).detach();
        let grid = straight.reshape([n, h, w, width]).permute([0, 3, 1, 2]);
        let out = self.decoder.decode_grid(grid);
        let target = masks.reshape([n, MASK_SIZE, MASK_SIZE]) * 2.0 - 1.0;
        let recon = (out - target).powi_scalar(2).mean();
        recon + codebook_loss + commitment * 0.25
    }
}

/// Train the demo's VQ-VAE with Adam (learning rate `lr`, batches of `batch` crops)
/// for `steps` steps, printing the loss now and then; returns it on the inner backend.
pub(crate) fn train<B: AutodiffBackend>(
    size: &VaeSize,
    steps: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    device: &B::Device,
) -> Result<MaskVae<B::InnerBackend>> {
    let arrays = initial_arrays(size, seed);
    let bad = crate::error::Error::MaskDecoder;
    let mut vae = MaskVae::<B> {
        encoder: MaskEncoder::from_arrays(&arrays, device).map_err(bad)?,
        decoder: MaskDecoder::from_arrays(&arrays, device).map_err(bad)?,
    };
    let mut optimizer = AdamWConfig::new().with_weight_decay(0.0).init();
    // Crops come from the training seeds (see `training_example`).
    let data = crops(
        super::HELD_OUT_SEEDS.wrapping_add(seed << 20),
        steps.min(2000) * batch,
    );
    for step in 0..steps {
        let start = (step * batch) % data.len().saturating_sub(batch).max(1);
        let flat: Vec<f32> = data[start..start + batch].concat();
        let masks = Tensor::<B, 4>::from_data(
            TensorData::new(flat, [batch, 1, MASK_SIZE, MASK_SIZE]),
            device,
        );
        let loss = vae.loss(masks);
        if step % 100 == 0 || step + 1 == steps {
            let value = loss
                .clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_or(f32::NAN, |v| v[0]);
            eprintln!("vae step {step}/{steps}  loss {value:.4}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &vae);
        vae = optimizer.step(lr, vae, grads);
    }
    let vae = vae.valid();
    // The encoder quantises with the trained codebook from now on.
    Ok(MaskVae {
        encoder: vae.encoder.with_codebook(vae.decoder.codebook()),
        decoder: vae.decoder,
    })
}

/// Train the demo's segmentation VQ-VAE from random weights drawn from `seed` (Adam at
/// `lr`, `steps` steps of `batch` mask crops of training scenes) and write it to `out`
/// as a `vae-oid.npz`; returns the mean IoU of 500 held-out crops with their round
/// trip through the sixteen codes.
pub fn train_vae<B: AutodiffBackend>(
    out: &Path,
    size: &VaeSize,
    (steps, batch, lr, seed): (usize, usize, f64, u64),
    device: &B::Device,
) -> Result<f64> {
    let vae = train::<B>(size, steps, batch, lr, seed, device)?;
    vae.save(out)?;
    vae.round_trip_iou(500)
}

impl<B: Backend> MaskVae<B> {
    /// Write the VAE as a `vae-oid.npz` (encoder, decoder, codebook).
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let mut arrays = self.encoder.to_arrays();
        arrays.extend(self.decoder.to_arrays());
        write_npz(path, &arrays)
    }

    /// Mean IoU between the crops of `count` held-out objects and their round trip
    /// through the codes (both thresholded at one half, as the evaluator's `> 0` on
    /// the decoder's [-1, 1] output).
    pub(crate) fn round_trip_iou(&self, count: usize) -> Result<f64> {
        let masks = crops(0, count);
        let codes = self.encoder.encode(&masks)?;
        let decoded = self.decoder.masks(&codes)?;
        let mut total = 0.0;
        for (m, d) in masks.iter().zip(&decoded) {
            let (mut inter, mut union) = (0usize, 0usize);
            for (&a, &b) in m.iter().zip(d) {
                let (a, b) = (a > 0.5, b > 0.0);
                inter += usize::from(a && b);
                union += usize::from(a || b);
            }
            total += if union == 0 {
                1.0
            } else {
                inter as f64 / union as f64
            };
        }
        Ok(total / masks.len().max(1) as f64)
    }
}
