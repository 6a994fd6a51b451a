//! PIL-compatible separable resampling.
//!
//! PIL resizes in two passes, horizontal then vertical, each a weighted sum over a
//! filter whose support widens by the scale factor when shrinking (antialiasing).
//! 8-bit images use 22-bit fixed-point weights and round to `u8` between passes;
//! float images (`"F"` mode) accumulate in f64. Matching both exactly is what lets
//! pixels and pasted masks agree with the reference.

/// A resampling filter: its support radius and kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Filter {
    /// `Image.BICUBIC` (a = -0.5), support 2.
    Bicubic,
    /// `Image.BILINEAR` (triangle), support 1.
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Bilinear => (1.0 - x).max(0.0),
        }
    }
}

/// For each output index: the first input index and the normalised weights.
pub(crate) fn coefficients(
    filter: Filter,
    in_size: usize,
    out_size: usize,
) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64)
                .min(in_size as i64)
                .max(xmin as i64) as usize;
            let mut weights: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            (xmin, weights)
        })
        .collect()
}

pub(crate) const PRECISION_BITS: u32 = 32 - 8 - 2;

fn fixed_point(coeffs: Vec<(usize, Vec<f64>)>) -> Vec<(usize, Vec<i64>)> {
    coeffs
        .into_iter()
        .map(|(start, w)| {
            let scale = f64::from(1u32 << PRECISION_BITS);
            let fixed = w
                .iter()
                .map(|&w| {
                    let v = w * scale;
                    (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i32 as i64
                })
                .collect();
            (start, fixed)
        })
        .collect()
}

/// Resample interleaved 8-bit pixels (`channels` per pixel) like PIL's `Image.resize`.
pub(crate) fn resize_u8(
    filter: Filter,
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    channels: usize,
) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let clip8 = |v: i64| (v >> PRECISION_BITS).clamp(0, 255) as u8;
    // PIL skips a pass whose size does not change.
    let horiz = if out_w != w {
        let coeffs = fixed_point(coefficients(filter, w, out_w));
        let mut tmp = vec![0u8; out_w * h * channels];
        for y in 0..h {
            let row = &src[y * w * channels..(y + 1) * w * channels];
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..channels {
                    let ss = k.iter().enumerate().fold(half, |ss, (i, &kw)| {
                        ss + i64::from(row[(xmin + i) * channels + c]) * kw
                    });
                    tmp[(y * out_w + xx) * channels + c] = clip8(ss);
                }
            }
        }
        tmp
    } else {
        src.to_vec()
    };
    if out_h == h {
        return horiz;
    }
    let stride = out_w * channels;
    let coeffs = fixed_point(coefficients(filter, h, out_h));
    let mut out = vec![0u8; stride * out_h];
    for (yy, (ymin, k)) in coeffs.iter().enumerate() {
        for x in 0..stride {
            let ss = k.iter().enumerate().fold(half, |ss, (i, &kw)| {
                ss + i64::from(horiz[(ymin + i) * stride + x]) * kw
            });
            out[yy * stride + x] = clip8(ss);
        }
    }
    out
}

/// Resample a single-channel float image like PIL's `Image.resize` in `"F"` mode.
pub(crate) fn resize_f32(
    filter: Filter,
    src: &[f32],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
) -> Vec<f32> {
    let horiz = if out_w != w {
        let coeffs = coefficients(filter, w, out_w);
        let mut tmp = vec![0f32; out_w * h];
        for y in 0..h {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                let ss: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(i, &kw)| f64::from(src[y * w + xmin + i]) * kw)
                    .sum();
                tmp[y * out_w + xx] = ss as f32;
            }
        }
        tmp
    } else {
        src.to_vec()
    };
    if out_h == h {
        return horiz;
    }
    let coeffs = coefficients(filter, h, out_h);
    let mut out = vec![0f32; out_w * out_h];
    for (yy, (ymin, k)) in coeffs.iter().enumerate() {
        for x in 0..out_w {
            let ss: f64 = k
                .iter()
                .enumerate()
                .map(|(i, &kw)| f64::from(horiz[(ymin + i) * out_w + x]) * kw)
                .sum();
            out[yy * out_w + x] = ss as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_normalised() {
        for filter in [Filter::Bicubic, Filter::Bilinear] {
            for (i, o) in [(300, 224), (56, 224), (7, 3), (1, 5), (64, 1)] {
                for (_, k) in coefficients(filter, i, o) {
                    let sum: f64 = k.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-9, "{filter:?} {i}->{o}");
                }
            }
        }
    }

    #[test]
    fn constant_images_stay_constant() {
        let src = vec![77u8; 13 * 7 * 3];
        assert!(
            resize_u8(Filter::Bicubic, &src, (13, 7), (5, 9), 3)
                .iter()
                .all(|&v| v == 77)
        );
        let src = vec![-0.25f32; 64 * 64];
        let out = resize_f32(Filter::Bilinear, &src, (64, 64), (10, 100));
        assert!(out.iter().all(|&v| (v + 0.25).abs() < 1e-6));
    }
}
