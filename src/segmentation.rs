//! The VQ-VAE decoder that turns PaliGemma's sixteen `<segNNN>` codes into a 64 x 64
//! mask, loaded from big_vision's `vae-oid.npz`, and pasting a mask into the image as
//! big_vision's segmentation evaluator does.
//!
//! Decoder: codebook lookup → 4 x 4 x 512 grid (row-major) → 1x1 conv + ReLU → two
//! residual blocks (3x3 conv, ReLU, 3x3 conv, ReLU, 1x1 conv, plus the input) → four
//! stride-2 transposed convs with ReLU (4 → 8 → 16 → 32 → 64 pixels) → 1x1 conv to one
//! channel. Channel widths are read from the file.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{
    Int, Tensor, TensorData,
    activation::relu,
    backend::Backend,
    module::{conv_transpose2d, conv2d},
    ops::{ConvOptions, ConvTransposeOptions},
};

use crate::error::{Error, Result};
use crate::npz::{NpyArray, read_npz};
use crate::resize::{Filter, resize_f32};

/// Side of the decoded mask.
pub const MASK_SIZE: usize = 64;
/// Codes per object.
pub const CODES_PER_MASK: usize = 16;

/// A convolution's weight and bias (applied with big_vision's strides and paddings).
#[derive(Module, Debug)]
pub(crate) struct Conv<B: Backend> {
    weight: Param<Tensor<B, 4>>,
    bias: Param<Tensor<B, 1>>,
}

/// 3x3 conv, ReLU, 3x3 conv, ReLU, 1x1 conv, plus the input.
#[derive(Module, Debug)]
pub(crate) struct ResBlock<B: Backend> {
    conv1: Conv<B>,
    conv2: Conv<B>,
    conv3: Conv<B>,
}

/// The segmentation mask decoder.
#[derive(Module, Debug)]
pub struct MaskDecoder<B: Backend> {
    codebook: Param<Tensor<B, 2>>,
    input: Conv<B>,
    blocks: [ResBlock<B>; 2],
    upsample: [Conv<B>; 4],
    output: Conv<B>,
}

impl<B: Backend> MaskDecoder<B> {
    /// Load `vae-oid.npz` (a zip of `.npy` arrays named after a PyTorch state dict).
    pub fn from_npz(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        // Inference needs only the decoder; the encoder's arrays are left unread.
        let arrays = read_npz(path, |name| {
            name.starts_with("decoder.") || name == "_vq_vae._embedding"
        })?;
        Self::from_arrays(&arrays, device)
            .map_err(|reason| Error::MaskDecoder(format!("{}: {reason}", path.display())))
    }

    fn from_arrays(
        a: &HashMap<String, NpyArray>,
        device: &B::Device,
    ) -> std::result::Result<Self, String> {
        let get = |name: &str, rank: usize| -> std::result::Result<&NpyArray, String> {
            let arr = a
                .get(name)
                .ok_or_else(|| format!("array {name} is missing"))?;
            if arr.shape.len() != rank {
                return Err(format!(
                    "{name} has shape {:?}, expected rank {rank}",
                    arr.shape
                ));
            }
            Ok(arr)
        };
        let codebook_arr = get("_vq_vae._embedding", 2)?;
        if codebook_arr.shape[0] == 0 {
            return Err("the codebook is empty".into());
        }
        let mut channels = codebook_arr.shape[1];
        // A conv whose input width must be `c_in` (the output of the previous layer);
        // `transposed` weights are [in, out, kh, kw], regular ones [out, in, kh, kw].
        let conv = |name: &str, c_in: usize, kernel: usize, transposed: bool| {
            let w = get(&format!("{name}.weight"), 4)?;
            let (i, o) = if transposed {
                (w.shape[0], w.shape[1])
            } else {
                (w.shape[1], w.shape[0])
            };
            if i != c_in || w.shape[2] != kernel || w.shape[3] != kernel {
                return Err(format!(
                    "{name}.weight has shape {:?}; expected {c_in} input channels and a {kernel}x{kernel} kernel",
                    w.shape
                ));
            }
            let b = get(&format!("{name}.bias"), 1)?;
            if b.shape[0] != o {
                return Err(format!(
                    "{name}.bias has {} entries, expected {o}",
                    b.shape[0]
                ));
            }
            Ok::<_, String>((
                Conv {
                    weight: Param::from_tensor(w.tensor::<B, 4>(device)),
                    bias: Param::from_tensor(b.tensor::<B, 1>(device)),
                },
                o,
            ))
        };
        let (input, c) = conv("decoder.0", channels, 1, false)?;
        channels = c;
        let block = |i: usize| -> std::result::Result<ResBlock<B>, String> {
            let (conv1, c1) = conv(&format!("decoder.{i}.net.0"), channels, 3, false)?;
            let (conv2, c2) = conv(&format!("decoder.{i}.net.2"), c1, 3, false)?;
            let (conv3, c3) = conv(&format!("decoder.{i}.net.4"), c2, 1, false)?;
            if c3 != channels {
                return Err(format!("residual block decoder.{i} changes the width"));
            }
            Ok(ResBlock {
                conv1,
                conv2,
                conv3,
            })
        };
        let blocks = [block(2)?, block(3)?];
        let mut up = Vec::with_capacity(4);
        for i in [4, 6, 8, 10] {
            let (layer, c) = conv(&format!("decoder.{i}"), channels, 4, true)?;
            channels = c;
            up.push(layer);
        }
        let (output, c) = conv("decoder.12", channels, 1, false)?;
        if c != 1 {
            return Err(format!("decoder.12 has {c} output channels, expected 1"));
        }
        let upsample: [Conv<B>; 4] = up
            .try_into()
            .map_err(|_| "expected four upsampling layers".to_string())?;
        Ok(MaskDecoder {
            codebook: Param::from_tensor(codebook_arr.tensor(device)),
            input,
            blocks,
            upsample,
            output,
        })
    }

    /// Number of codebook entries (128 in the released file).
    pub fn codebook_size(&self) -> usize {
        self.codebook.dims()[0]
    }

    /// Sets of 16 codes to `[n, 64, 64]` soft masks (nominally in [-1, 1], not clipped).
    pub fn forward(&self, codes: &[[u16; CODES_PER_MASK]]) -> Result<Tensor<B, 3>> {
        let n = codes.len();
        let device = self.codebook.device();
        if n == 0 {
            return Ok(Tensor::zeros([0, MASK_SIZE, MASK_SIZE], &device));
        }
        let limit = self.codebook_size();
        let mut flat = Vec::with_capacity(n * CODES_PER_MASK);
        for set in codes {
            for &c in set {
                if usize::from(c) >= limit {
                    return Err(Error::MaskDecoder(format!(
                        "code {c} is outside the codebook of {limit} entries"
                    )));
                }
                flat.push(i64::from(c));
            }
        }
        let idx =
            Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [n * CODES_PER_MASK]), &device);
        let dim = self.codebook.dims()[1];
        // Code k sits at row k / 4, column k % 4; channels first for the convs.
        let x = self
            .codebook
            .val()
            .select(0, idx)
            .reshape([n, 4, 4, dim])
            .permute([0, 3, 1, 2]);
        let same = |p: usize| ConvOptions::new([1, 1], [p, p], [1, 1], 1);
        let apply = |c: &Conv<B>, x: Tensor<B, 4>, p: usize| {
            conv2d(x, c.weight.val(), Some(c.bias.val()), same(p))
        };
        let mut x = relu(apply(&self.input, x, 0));
        for b in &self.blocks {
            let h = relu(apply(&b.conv1, x.clone(), 1));
            let h = relu(apply(&b.conv2, h, 1));
            x = apply(&b.conv3, h, 0) + x;
        }
        for up in &self.upsample {
            let opts = ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1);
            x = relu(conv_transpose2d(
                x,
                up.weight.val(),
                Some(up.bias.val()),
                opts,
            ));
        }
        let x = apply(&self.output, x, 0);
        Ok(x.reshape([n, MASK_SIZE, MASK_SIZE]))
    }

    /// [`MaskDecoder::forward`] into host memory: one row-major 64 x 64 map per code set.
    pub fn masks(&self, codes: &[[u16; CODES_PER_MASK]]) -> Result<Vec<Vec<f32>>> {
        let data = self
            .forward(codes)?
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::Backend(format!("reading masks: {e:?}")))?;
        Ok(data
            .chunks_exact(MASK_SIZE * MASK_SIZE)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// A binary mask over the original image, row-major, `true` inside the object.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryMask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` flags.
    pub data: Vec<bool>,
}

impl BinaryMask {
    /// Whether pixel `(x, y)` is inside the object (false outside the image).
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.width
            && y < self.height
            && self.data[y as usize * self.width as usize + x as usize]
    }

    /// Number of pixels inside the object.
    pub fn area(&self) -> usize {
        self.data.iter().filter(|&&b| b).count()
    }
}

/// Paste a 64 x 64 soft mask into a `width x height` image inside the pixel box
/// `[x_min, x_max) x [y_min, y_max)`, as big_vision's evaluator does: bilinear resize
/// (PIL, antialiased when shrinking) to the box, then threshold at 0. The box is clipped
/// to the image; an empty box gives an empty mask.
pub fn paste_mask(
    mask64: &[f32],
    (x_min, y_min, x_max, y_max): (u32, u32, u32, u32),
    width: u32,
    height: u32,
) -> BinaryMask {
    let mut data = vec![false; width as usize * height as usize];
    let (x_max, y_max) = (x_max.min(width), y_max.min(height));
    if mask64.len() == MASK_SIZE * MASK_SIZE && x_max > x_min && y_max > y_min {
        let (bw, bh) = ((x_max - x_min) as usize, (y_max - y_min) as usize);
        let resized = resize_f32(Filter::Bilinear, mask64, (MASK_SIZE, MASK_SIZE), (bw, bh));
        for (row, chunk) in resized.chunks_exact(bw).enumerate() {
            let y = y_min as usize + row;
            for (col, &v) in chunk.iter().enumerate() {
                data[y * width as usize + x_min as usize + col] = v > 0.0;
            }
        }
    }
    BinaryMask {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paste_clips_and_handles_empty_boxes() {
        let ones = vec![1.0f32; MASK_SIZE * MASK_SIZE];
        let m = paste_mask(&ones, (2, 1, 50, 3), 10, 4);
        assert_eq!(m.area(), 8 * 2);
        assert!(m.get(2, 1) && !m.get(1, 1) && !m.get(2, 3));
        assert_eq!(paste_mask(&ones, (5, 5, 5, 9), 10, 10).area(), 0);
        assert_eq!(paste_mask(&ones[..10], (0, 0, 5, 5), 10, 10).area(), 0);
    }
}
