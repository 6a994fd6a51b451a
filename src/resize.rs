//! PIL-compatible separable resampling.
//!
//! PIL resizes in two passes (see [`vertical_first`] for the order), each a weighted sum over a
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

/// Pillow (from 13.0) runs the vertical pass first when the height shrinks by more than
/// twice as many pixels as the width; otherwise horizontal first. The order changes
/// the result, since 8-bit passes round in between.
fn vertical_first((w, h): (usize, usize), (out_w, out_h): (usize, usize)) -> bool {
    let dh = h as i64 - out_h as i64;
    let dw = w as i64 - out_w as i64;
    dh > 0 && dh > dw * 2
}

/// A pixel value type and how PIL accumulates it: 8-bit values in 22-bit fixed point
/// with rounding and clipping, floats in f64.
trait Sample: Copy {
    type Weight;
    type Acc: Copy;
    const INIT: Self::Acc;
    fn add(acc: Self::Acc, v: Self, k: &Self::Weight) -> Self::Acc;
    fn finish(acc: Self::Acc) -> Self;
}

impl Sample for u8 {
    type Weight = i64;
    type Acc = i64;
    const INIT: i64 = 1 << (PRECISION_BITS - 1);
    fn add(acc: i64, v: u8, k: &i64) -> i64 {
        acc + i64::from(v) * k
    }
    fn finish(acc: i64) -> u8 {
        (acc >> PRECISION_BITS).clamp(0, 255) as u8
    }
}

impl Sample for f32 {
    type Weight = f64;
    type Acc = f64;
    const INIT: f64 = 0.0;
    fn add(acc: f64, v: f32, k: &f64) -> f64 {
        acc + f64::from(v) * k
    }
    fn finish(acc: f64) -> f32 {
        acc as f32
    }
}

/// One pass, horizontal or `vertical`, over an image of `size` with `channels`
/// interleaved values per pixel.
fn pass<T: Sample>(
    src: &[T],
    (w, h): (usize, usize),
    channels: usize,
    vertical: bool,
    coeffs: &[(usize, Vec<T::Weight>)],
) -> Vec<T> {
    let (out_w, out_h) = if vertical {
        (w, coeffs.len())
    } else {
        (coeffs.len(), h)
    };
    let mut out = Vec::with_capacity(out_w * out_h * channels);
    for y in 0..out_h {
        for x in 0..out_w {
            let (start, k) = &coeffs[if vertical { y } else { x }];
            for c in 0..channels {
                let v = k.iter().enumerate().fold(T::INIT, |a, (i, kw)| {
                    let (sx, sy) = if vertical {
                        (x, start + i)
                    } else {
                        (start + i, y)
                    };
                    T::add(a, src[(sy * w + sx) * channels + c], kw)
                });
                out.push(T::finish(v));
            }
        }
    }
    out
}

/// Run the two passes PIL would run, in PIL's order, skipping a pass whose size
/// does not change.
fn two_pass<T: Clone>(
    src: &[T],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    horizontal: impl Fn(&[T], (usize, usize)) -> Vec<T>,
    vertical: impl Fn(&[T], (usize, usize)) -> Vec<T>,
) -> Vec<T> {
    match (out_w != w, out_h != h) {
        (false, false) => src.to_vec(),
        (true, false) => horizontal(src, (w, h)),
        (false, true) => vertical(src, (w, h)),
        (true, true) if vertical_first((w, h), (out_w, out_h)) => {
            horizontal(&vertical(src, (w, h)), (w, out_h))
        }
        (true, true) => vertical(&horizontal(src, (w, h)), (out_w, h)),
    }
}

/// Resample interleaved 8-bit pixels (`channels` per pixel) like PIL's `Image.resize`.
pub(crate) fn resize_u8(
    filter: Filter,
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    channels: usize,
) -> Vec<u8> {
    let horiz = fixed_point(coefficients(filter, w, out_w));
    let vert = fixed_point(coefficients(filter, h, out_h));
    two_pass(
        src,
        (w, h),
        (out_w, out_h),
        |s, size| pass(s, size, channels, false, &horiz),
        |s, size| pass(s, size, channels, true, &vert),
    )
}

/// Resample a single-channel float image like PIL's `Image.resize` in `"F"` mode.
pub(crate) fn resize_f32(
    filter: Filter,
    src: &[f32],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
) -> Vec<f32> {
    let horiz = coefficients(filter, w, out_w);
    let vert = coefficients(filter, h, out_h);
    two_pass(
        src,
        (w, h),
        (out_w, out_h),
        |s, size| pass(s, size, 1, false, &horiz),
        |s, size| pass(s, size, 1, true, &vert),
    )
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
