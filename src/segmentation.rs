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
use crate::npz::{NpyArray, read_npz_from};
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

impl<B: Backend> Conv<B> {
    /// The conv `name` of an npz whose input must be `c_in` wide (the previous layer's
    /// output); `transposed` weights are `[in, out, kh, kw]`, regular ones
    /// `[out, in, kh, kw]`. Returns the conv and its output width.
    pub(crate) fn load(
        a: &HashMap<String, NpyArray>,
        name: &str,
        c_in: usize,
        kernel: usize,
        transposed: bool,
        device: &B::Device,
    ) -> std::result::Result<(Self, usize), String> {
        let w = array(a, &format!("{name}.weight"), 4)?;
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
        let b = array(a, &format!("{name}.bias"), 1)?;
        if b.shape[0] != o {
            return Err(format!(
                "{name}.bias has {} entries, expected {o}",
                b.shape[0]
            ));
        }
        let conv = Conv {
            weight: Param::from_tensor(w.tensor::<B, 4>(device)),
            bias: Param::from_tensor(b.tensor::<B, 1>(device)),
        };
        Ok((conv, o))
    }

    /// Its weight and bias as npz arrays `{name}.weight`, `{name}.bias`.
    pub(crate) fn push_arrays(&self, name: &str, out: &mut Vec<(String, NpyArray)>) {
        out.push((format!("{name}.weight"), param_array(&self.weight)));
        out.push((format!("{name}.bias"), param_array(&self.bias)));
    }

    /// A regular convolution with `stride` and symmetric `padding`.
    pub(crate) fn forward(&self, x: Tensor<B, 4>, stride: usize, padding: usize) -> Tensor<B, 4> {
        let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
        conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }
}

/// 3x3 conv, ReLU, 3x3 conv, ReLU, 1x1 conv, plus the input (no ReLU after the sum).
#[derive(Module, Debug)]
pub(crate) struct ResBlock<B: Backend> {
    conv1: Conv<B>,
    conv2: Conv<B>,
    conv3: Conv<B>,
}

impl<B: Backend> ResBlock<B> {
    /// The block `{name}.net.{0,2,4}` of an npz, `width` channels in and out.
    pub(crate) fn load(
        a: &HashMap<String, NpyArray>,
        name: &str,
        width: usize,
        device: &B::Device,
    ) -> std::result::Result<Self, String> {
        let (conv1, c1) = Conv::load(a, &format!("{name}.net.0"), width, 3, false, device)?;
        let (conv2, c2) = Conv::load(a, &format!("{name}.net.2"), c1, 3, false, device)?;
        let (conv3, c3) = Conv::load(a, &format!("{name}.net.4"), c2, 1, false, device)?;
        if c3 != width {
            return Err(format!("residual block {name} changes the width"));
        }
        Ok(ResBlock {
            conv1,
            conv2,
            conv3,
        })
    }

    /// Its convs as npz arrays `{name}.net.{0,2,4}.*`.
    pub(crate) fn push_arrays(&self, name: &str, out: &mut Vec<(String, NpyArray)>) {
        self.conv1.push_arrays(&format!("{name}.net.0"), out);
        self.conv2.push_arrays(&format!("{name}.net.2"), out);
        self.conv3.push_arrays(&format!("{name}.net.4"), out);
    }

    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = relu(self.conv1.forward(x.clone(), 1, 1));
        let h = relu(self.conv2.forward(h, 1, 1));
        self.conv3.forward(h, 1, 0) + x
    }
}

/// Read the arrays of one half of a `vae-oid.npz` file (names starting with `part`)
/// and the codebook, and build it with `build`; errors name the file.
pub(crate) fn read_vae_part<T>(
    path: &Path,
    part: &str,
    build: impl FnOnce(&HashMap<String, NpyArray>) -> std::result::Result<T, String>,
) -> Result<T> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_vae_part_from(file, &path.display().to_string(), part, build)
}

/// [`read_vae_part`] from the bytes of an archive (an embedded file) called `name`.
pub(crate) fn read_vae_part_from_bytes<T>(
    bytes: &[u8],
    name: &str,
    part: &str,
    build: impl FnOnce(&HashMap<String, NpyArray>) -> std::result::Result<T, String>,
) -> Result<T> {
    read_vae_part_from(std::io::Cursor::new(bytes), name, part, build)
}

fn read_vae_part_from<T>(
    reader: impl std::io::Read + std::io::Seek,
    name: &str,
    part: &str,
    build: impl FnOnce(&HashMap<String, NpyArray>) -> std::result::Result<T, String>,
) -> Result<T> {
    let arrays = read_npz_from(reader, name, |n| {
        n.starts_with(part) || n == "_vq_vae._embedding"
    })?;
    build(&arrays).map_err(|reason| Error::MaskDecoder(format!("{name}: {reason}")))
}

/// The codebook `[entries, width]`, neither empty.
pub(crate) fn codebook(a: &HashMap<String, NpyArray>) -> std::result::Result<&NpyArray, String> {
    let c = array(a, "_vq_vae._embedding", 2)?;
    if c.shape[0] == 0 || c.shape[1] == 0 {
        return Err(format!("the codebook has shape {:?}", c.shape));
    }
    Ok(c)
}

/// A parameter's values and shape as an npz array.
pub(crate) fn param_array<B: Backend, const D: usize>(p: &Param<Tensor<B, D>>) -> NpyArray {
    let t = p.val();
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default();
    NpyArray { shape, data }
}

/// Array `name` of an npz, of rank `rank`.
pub(crate) fn array<'a>(
    a: &'a HashMap<String, NpyArray>,
    name: &str,
    rank: usize,
) -> std::result::Result<&'a NpyArray, String> {
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
        // Inference needs only the decoder; the encoder's arrays are left unread.
        read_vae_part(path.as_ref(), "decoder.", |a| Self::from_arrays(a, device))
    }

    pub(crate) fn from_arrays(
        a: &HashMap<String, NpyArray>,
        device: &B::Device,
    ) -> std::result::Result<Self, String> {
        let codebook_arr = codebook(a)?;
        let mut channels = codebook_arr.shape[1];
        let conv = |name: &str, c_in: usize, kernel: usize, transposed: bool| {
            Conv::load(a, name, c_in, kernel, transposed, device)
        };
        let (input, c) = conv("decoder.0", channels, 1, false)?;
        channels = c;
        let block = |i: usize| ResBlock::load(a, &format!("decoder.{i}"), channels, device);
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
        Ok(self.decode_grid(x))
    }

    /// The decoder proper: a `[n, width, 4, 4]` grid of codebook vectors (or, while
    /// training, their straight-through stand-ins) to `[n, 64, 64]` soft masks.
    pub(crate) fn decode_grid(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let n = x.dims()[0];
        let mut x = relu(self.input.forward(x, 1, 0));
        for b in &self.blocks {
            x = b.forward(x);
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
        self.output
            .forward(x, 1, 0)
            .reshape([n, MASK_SIZE, MASK_SIZE])
    }

    /// The codebook `[entries, width]`.
    pub(crate) fn codebook(&self) -> Tensor<B, 2> {
        self.codebook.val()
    }

    /// Load from the bytes of a `vae-oid.npz` (an embedded file); `name` stands for it
    /// in errors.
    pub(crate) fn from_npz_bytes(bytes: &[u8], name: &str, device: &B::Device) -> Result<Self> {
        read_vae_part_from_bytes(bytes, name, "decoder.", |a| Self::from_arrays(a, device))
    }

    /// Every array of the decoder and the codebook, named as in `vae-oid.npz`.
    pub(crate) fn to_arrays(&self) -> Vec<(String, NpyArray)> {
        let mut out = vec![(
            "_vq_vae._embedding".to_string(),
            param_array(&self.codebook),
        )];
        self.input.push_arrays("decoder.0", &mut out);
        for (b, i) in self.blocks.iter().zip([2, 3]) {
            b.push_arrays(&format!("decoder.{i}"), &mut out);
        }
        for (u, i) in self.upsample.iter().zip([4, 6, 8, 10]) {
            u.push_arrays(&format!("decoder.{i}"), &mut out);
        }
        self.output.push_arrays("decoder.12", &mut out);
        out
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

    /// An empty codebook (no rows, or rows of width 0) is an error naming the file,
    /// for the decoder and the encoder alike.
    #[test]
    fn empty_codebooks_are_refused() {
        use crate::backend::Cpu;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for shape in [vec![128, 0], vec![0, 512]] {
            let path = dir.path().join("vae.npz");
            let codebook = NpyArray {
                shape,
                data: Vec::new(),
            };
            crate::npz::write_npz(&path, &[("_vq_vae._embedding".into(), codebook)])
                .unwrap_or_else(|e| panic!("{e}"));
            let err = MaskDecoder::<Cpu>::from_npz(&path, &Default::default()).err();
            assert!(err.is_some_and(|e| e.to_string().contains("codebook")));
            let err = crate::MaskEncoder::<Cpu>::from_npz(&path, &Default::default()).err();
            assert!(err.is_some_and(|e| e.to_string().contains("codebook")));
        }
    }

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
