//! The VQ-VAE encoder of `vae-oid.npz`: an object's mask to the sixteen `<segNNN>`
//! codes a segmentation target ends with, the inverse of the
//! [`MaskDecoder`](crate::MaskDecoder). Masks are prepared as big_vision prepares
//! segmentation training data: the mask cropped to the object's box (corners rounded
//! to pixels), resized to 64 x 64 with antialiased bilinear filtering, in [0, 1].
//!
//! Encoder: [0, 1] → [-1, 1] → four 4x4 stride-2 convs with ReLU (64 → 32 → 16 → 8 → 4
//! pixels) → two residual blocks → 1x1 conv to the codebook's width → per cell of the
//! 4 x 4 grid (row-major) the nearest codebook row by L2 distance. Channel widths are
//! read from the file.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor, TensorData, activation::relu, backend::Backend};

use crate::error::{Error, Result};
use crate::npz::NpyArray;
use crate::resize::{Filter, resize_f32};
use crate::segmentation::{
    BinaryMask, CODES_PER_MASK, Conv, MASK_SIZE, ResBlock, codebook, read_vae_part,
    read_vae_part_from_bytes,
};
use crate::task::{BoundingBox, format_objects, target_objects};

/// The segmentation mask encoder.
#[derive(Module, Debug)]
pub struct MaskEncoder<B: Backend> {
    down: [Conv<B>; 4],
    blocks: [ResBlock<B>; 2],
    output: Conv<B>,
    codebook: Param<Tensor<B, 2>>,
}

impl<B: Backend> MaskEncoder<B> {
    /// Load the encoder (`encoder.*`) and the codebook from a `vae-oid.npz` file.
    pub fn from_npz(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        read_vae_part(path.as_ref(), "encoder.", |a| Self::from_arrays(a, device))
    }

    /// Load from the bytes of a `vae-oid.npz` (an embedded file); `name` stands for it
    /// in errors.
    pub(crate) fn from_npz_bytes(bytes: &[u8], name: &str, device: &B::Device) -> Result<Self> {
        read_vae_part_from_bytes(bytes, name, "encoder.", |a| Self::from_arrays(a, device))
    }

    pub(crate) fn from_arrays(
        a: &HashMap<String, NpyArray>,
        device: &B::Device,
    ) -> std::result::Result<Self, String> {
        let codebook = codebook(a)?;
        let mut channels = 1;
        let mut down = Vec::with_capacity(4);
        for i in [0, 2, 4, 6] {
            let (conv, c) = Conv::load(a, &format!("encoder.{i}"), channels, 4, false, device)?;
            channels = c;
            down.push(conv);
        }
        let blocks = [
            ResBlock::load(a, "encoder.8", channels, device)?,
            ResBlock::load(a, "encoder.9", channels, device)?,
        ];
        let (output, c) = Conv::load(a, "encoder.10", channels, 1, false, device)?;
        if c != codebook.shape[1] {
            return Err(format!(
                "encoder.10 has {c} output channels but the codebook rows have {}",
                codebook.shape[1]
            ));
        }
        let down: [Conv<B>; 4] = down
            .try_into()
            .map_err(|_| "expected four downsampling layers".to_string())?;
        Ok(MaskEncoder {
            down,
            blocks,
            output,
            codebook: Param::from_tensor(codebook.tensor(device)),
        })
    }

    /// The encoder's arrays, named as in `vae-oid.npz` (`encoder.*`; the codebook is the
    /// decoder's to write).
    pub(crate) fn to_arrays(&self) -> Vec<(String, NpyArray)> {
        let mut out = Vec::new();
        for (conv, i) in self.down.iter().zip([0, 2, 4, 6]) {
            conv.push_arrays(&format!("encoder.{i}"), &mut out);
        }
        for (block, i) in self.blocks.iter().zip([8, 9]) {
            block.push_arrays(&format!("encoder.{i}"), &mut out);
        }
        self.output.push_arrays("encoder.10", &mut out);
        out
    }

    /// The same encoder quantising with another codebook (of the same width).
    pub(crate) fn with_codebook(self, codebook: Tensor<B, 2>) -> Self {
        MaskEncoder {
            codebook: Param::from_tensor(codebook),
            ..self
        }
    }

    /// Number of codebook entries (128 in the released file).
    pub fn codebook_size(&self) -> usize {
        self.codebook.dims()[0]
    }

    /// The encoder's continuous output `[n, width, 4, 4]` for masks `[n, 1, 64, 64]`
    /// in [0, 1], before quantisation.
    pub fn latents(&self, masks: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = masks * 2.0 - 1.0;
        for conv in &self.down {
            x = relu(conv.forward(x, 2, 1));
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.output.forward(x, 1, 0)
    }

    /// The sixteen codes of each 64 x 64 row-major mask in [0, 1] (see
    /// [`mask_crop`] for how big_vision prepares one from an object's mask).
    pub fn encode(&self, masks: &[Vec<f32>]) -> Result<Vec<[u16; CODES_PER_MASK]>> {
        let n = masks.len();
        let side = MASK_SIZE * MASK_SIZE;
        if n == 0 {
            return Ok(Vec::new());
        }
        if let Some(i) = masks.iter().position(|m| m.len() != side) {
            return Err(Error::MaskDecoder(format!(
                "mask {i} has {} values, expected {MASK_SIZE} x {MASK_SIZE}",
                masks[i].len()
            )));
        }
        let device = self.codebook.device();
        let flat: Vec<f32> = masks.iter().flatten().copied().collect();
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(flat, [n, 1, MASK_SIZE, MASK_SIZE]), &device);
        let z = self.latents(x);
        let [_, width, h, w] = z.dims();
        // One row per grid cell, row-major within each mask.
        let cells = z.permute([0, 2, 3, 1]).reshape([n * h * w, width]);
        let nearest = nearest_codes(cells, self.codebook.val())
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| Error::Backend(format!("reading codes: {e:?}")))?;
        Ok(nearest
            .chunks_exact(CODES_PER_MASK)
            .map(|c| std::array::from_fn(|k| c[k] as u16))
            .collect())
    }
}

impl<B: Backend> MaskEncoder<B> {
    /// A segmentation target: `<loc>`×4 `<seg>`×16 `label` per object, joined by ` ; `,
    /// from labelled pixel boxes and masks of a `width x height` image (boxes checked
    /// as [`detection_suffix`](crate::task::detection_suffix) checks them; each mask
    /// cropped to its box by [`mask_crop`] and encoded).
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// use paligemma::{BinaryMask, MaskEncoder, backend::Cpu, task::{BoundingBox, parse_segmentations}};
    /// let encoder = MaskEncoder::<Cpu>::from_npz("tests/fixtures/vae/vae-oid-random.npz", &Default::default())?;
    /// let mask = BinaryMask { width: 8, height: 8, data: (0..64).map(|i| i % 8 < 4).collect() };
    /// let bbox = BoundingBox { x_min: 0.0, y_min: 0.0, x_max: 4.0, y_max: 8.0 };
    /// let suffix = encoder.segmentation_suffix(&[("left half", bbox, &mask)], 8, 8)?;
    /// assert!(suffix.ends_with(" left half") && suffix.matches("<seg").count() == 16);
    /// # Ok(()) }
    /// ```
    pub fn segmentation_suffix<S: AsRef<str>>(
        &self,
        objects: &[(S, BoundingBox, &BinaryMask)],
        width: u32,
        height: u32,
    ) -> Result<String> {
        let boxes: Vec<(&str, BoundingBox)> =
            objects.iter().map(|(l, b, _)| (l.as_ref(), *b)).collect();
        let mut targets = target_objects(&boxes, width, height).map_err(Error::Prompt)?;
        let crops = objects
            .iter()
            .enumerate()
            .map(|(i, (label, b, m))| {
                if (m.width, m.height) != (width, height) {
                    return Err(Error::Prompt(format!(
                        "object {i} ({}): its mask is {}x{}, the image {width}x{height}",
                        label.as_ref(),
                        m.width,
                        m.height
                    )));
                }
                mask_crop(m, b).ok_or_else(|| {
                    Error::Prompt(format!("object {i} ({}): empty box", label.as_ref()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for (t, codes) in targets.iter_mut().zip(self.encode(&crops)?) {
            t.seg_codes = Some(codes);
        }
        Ok(format_objects(&targets))
    }
}

/// For each row of `cells` `[n, width]`, the index of the nearest codebook row by L2
/// distance `[n]` (big_vision's quantisation).
pub(crate) fn nearest_codes<B: Backend>(
    cells: Tensor<B, 2>,
    codebook: Tensor<B, 2>,
) -> Tensor<B, 1, Int> {
    let n = cells.dims()[0];
    let distances = cells.clone().powi_scalar(2).sum_dim(1)
        + codebook.clone().powi_scalar(2).sum_dim(1).transpose()
        - cells.matmul(codebook.transpose()) * 2.0;
    distances.argmin(1).reshape([n])
}

/// An object's mask prepared for [`MaskEncoder::encode`] as big_vision prepares
/// segmentation targets: cropped to `bbox` with its corners rounded (half to even, as
/// TensorFlow rounds) to whole pixels,
/// resized to 64 x 64 with antialiased bilinear filtering, row-major in [0, 1]. `None`
/// when the rounded box is empty or leaves the mask.
pub fn mask_crop(mask: &BinaryMask, bbox: &BoundingBox) -> Option<Vec<f32>> {
    let corner = |v: f64, size: u32| -> Option<usize> {
        let r = v.round_ties_even();
        (r >= 0.0 && r <= f64::from(size)).then_some(r as usize)
    };
    let (x1, x2) = (
        corner(bbox.x_min, mask.width)?,
        corner(bbox.x_max, mask.width)?,
    );
    let (y1, y2) = (
        corner(bbox.y_min, mask.height)?,
        corner(bbox.y_max, mask.height)?,
    );
    if x2 <= x1 || y2 <= y1 || mask.data.len() != mask.width as usize * mask.height as usize {
        return None;
    }
    let (w, h) = (x2 - x1, y2 - y1);
    let mut crop = Vec::with_capacity(w * h);
    for y in y1..y2 {
        let row = y * mask.width as usize;
        crop.extend(
            mask.data[row + x1..row + x2]
                .iter()
                .map(|&b| f32::from(u8::from(b))),
        );
    }
    Some(resize_f32(
        Filter::Bilinear,
        &crop,
        (w, h),
        (MASK_SIZE, MASK_SIZE),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(width: u32, height: u32, inside: impl Fn(u32, u32) -> bool) -> BinaryMask {
        let data = (0..width * height)
            .map(|i| inside(i % width, i / width))
            .collect();
        BinaryMask {
            width,
            height,
            data,
        }
    }

    #[test]
    fn crops_follow_the_box() {
        let square = mask(100, 80, |x, y| {
            (10..50).contains(&x) && (20..40).contains(&y)
        });
        let b = BoundingBox {
            x_min: 10.0,
            y_min: 20.0,
            x_max: 50.0,
            y_max: 40.0,
        };
        let crop = mask_crop(&square, &b).unwrap_or_default();
        assert_eq!(crop.len(), MASK_SIZE * MASK_SIZE);
        assert!(crop.iter().all(|&v| (v - 1.0).abs() < 1e-6));
        // Half the box outside the object: the left half of the crop is empty.
        let wider = BoundingBox { x_min: 0.0, ..b };
        let crop = mask_crop(&square, &wider).unwrap_or_default();
        assert!(crop[0] < 1e-6 && (crop[MASK_SIZE - 1] - 1.0).abs() < 1e-6);
        let outside = BoundingBox { x_max: 101.0, ..b };
        assert_eq!(mask_crop(&square, &outside), None);
        let empty = BoundingBox { x_max: 10.2, ..b };
        assert_eq!(mask_crop(&square, &empty), None);
    }
}
