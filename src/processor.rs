//! Turning an image and a prompt into model inputs, as transformers'
//! `PaliGemmaProcessor` does with its PIL-based `SiglipImageProcessor`.
//!
//! Images are converted to RGB as transformers does (gray replicated, transparency
//! composited onto white), resized with PIL's bicubic filter on 8-bit data
//! (fixed-point, in the pass order Pillow 13 uses, antialiased when shrinking),
//! scaled to [0, 1] and normalised with mean 0.5 and std 0.5.

use std::collections::HashSet;
use std::path::Path;

use image::DynamicImage;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::resize::{Filter, resize_u8};

/// Open and decode an image file (PNG, JPEG, GIF, BMP, TIFF, WebP).
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader
        .decode()
        .map_err(|e| Error::Image(format!("cannot decode {}: {e}", path.display())))
}

/// Preprocess an image into `[3, size, size]` channel-first normalised pixels.
pub fn preprocess_image(image: &DynamicImage, size: usize) -> Result<Vec<f32>> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::Image(format!("image has no pixels ({w}x{h})")));
    }
    if size == 0 {
        return Err(Error::Image("target size is zero".into()));
    }
    let rgb = to_rgb(image);
    let resized = resize_u8(Filter::Bicubic, &rgb, (w, h), (size, size), 3);
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        for c in 0..3 {
            // rescale 1/255, then (x - 0.5) / 0.5
            out[c * plane + i] = (f32::from(px[c]) * (1.0 / 255.0) - 0.5) / 0.5;
        }
    }
    Ok(out)
}

/// Interleaved RGB8 pixels as transformers' `convert_to_rgb` makes them: images with
/// an alpha channel are composited onto white (PIL's integer `alpha_composite`), gray
/// is replicated into three channels.
pub fn to_rgb(image: &DynamicImage) -> Vec<u8> {
    if !image.color().has_alpha() {
        return image.to_rgb8().into_raw();
    }
    let rgba = image.to_rgba8();
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let a = u32::from(px[3]);
        if a == 0 {
            out.extend([255, 255, 255]);
            continue;
        }
        // Background alpha is 255: blend = 255 * (255 - a), total alpha 255 * 255.
        const BITS: u32 = 7;
        let out_a255 = a * 255 + 255 * (255 - a);
        let coef1 = a * 255 * 255 * (1 << BITS) / out_a255;
        let coef2 = 255 * (1 << BITS) - coef1;
        let div255 = |v: u32| ((v >> 8) + v) >> 8;
        for &c in &px[..3] {
            let tmp = u32::from(c) * coef1 + 255 * coef2;
            out.push((div255(tmp + (0x80 << BITS)) >> BITS) as u8);
        }
    }
    out
}

/// The checkpoint's tokenizer plus the special ids PaliGemma needs, resolved by text.
pub struct TextProcessor {
    tokenizer: Tokenizer,
    /// `<image>`.
    pub image_id: u32,
    /// `<bos>`.
    pub bos_id: u32,
    /// `<eos>`.
    pub eos_id: u32,
    /// `<pad>`, when the tokenizer has one.
    pub pad_id: Option<u32>,
    /// Ids dropped when decoding to text (special tokens other than `<loc>`/`<seg>`).
    skip_ids: HashSet<u32>,
}

impl TextProcessor {
    /// Load `tokenizer.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::MissingFile {
                path,
                hint: "the checkpoint's tokenizer (tokenizer.json) is required".into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::new(tokenizer)
    }

    /// Wrap a tokenizer, resolving the special tokens.
    pub fn new(tokenizer: Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {t} token")))
        };
        let image_id = id("<image>")?;
        let bos_id = id("<bos>")?;
        let eos_id = id("<eos>")?;
        let pad_id = tokenizer.token_to_id("<pad>");
        let skip_ids = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !is_loc_or_seg(&t.content))
            .map(|(id, _)| id)
            .chain([image_id, bos_id, eos_id])
            .chain(pad_id)
            .collect();
        Ok(TextProcessor {
            tokenizer,
            image_id,
            bos_id,
            eos_id,
            pad_id,
            skip_ids,
        })
    }

    /// The underlying tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Input ids for a prompt: `<image>` x `num_image_tokens`, `<bos>`, the prompt's
    /// tokens and `\n`, with no other special tokens added.
    pub fn prompt_ids(&self, prompt: &str, num_image_tokens: usize) -> Result<Vec<u32>> {
        let text = format!("{prompt}\n");
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let body = enc.get_ids();
        if body.contains(&self.image_id) {
            return Err(Error::Prompt(
                "the prompt contains the <image> token; the image placeholders are added \
                 automatically"
                    .into(),
            ));
        }
        let mut ids = Vec::with_capacity(num_image_tokens + 1 + body.len());
        ids.extend(std::iter::repeat_n(self.image_id, num_image_tokens));
        ids.push(self.bos_id);
        ids.extend_from_slice(body);
        Ok(ids)
    }

    /// Decode generated ids to text, dropping special tokens but keeping `<loc>`/`<seg>`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| !self.skip_ids.contains(id))
            .collect();
        self.tokenizer
            .decode(&kept, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

fn is_loc_or_seg(token: &str) -> bool {
    let digits = |rest: &str, n: usize| {
        rest.strip_suffix('>')
            .is_some_and(|d| d.len() == n && d.bytes().all(|b| b.is_ascii_digit()))
    };
    token.strip_prefix("<loc").is_some_and(|r| digits(r, 4))
        || token.strip_prefix("<seg").is_some_and(|r| digits(r, 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(13, 7, image::Rgb([200, 10, 0])));
        let px = preprocess_image(&img, 5).unwrap();
        let expect = |v: f32| (v / 255.0 - 0.5) / 0.5;
        assert!((px[0] - expect(200.0)).abs() < 1e-6);
        assert!((px[25] - expect(10.0)).abs() < 1e-6);
        assert!((px[74] - expect(0.0)).abs() < 1e-6);
    }

    #[test]
    fn loc_seg_names() {
        assert!(is_loc_or_seg("<loc0012>") && is_loc_or_seg("<seg127>"));
        assert!(!is_loc_or_seg("<loc12>") && !is_loc_or_seg("<image>"));
    }
}
