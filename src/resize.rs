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

fn fixed_point(coeffs: Vec<(usize, Vec<f64>)>) -> Vec<(usize, Vec<i32>)> {
    coeffs
        .into_iter()
        .map(|(start, w)| {
            let scale = f64::from(1u32 << PRECISION_BITS);
            let fixed = w
                .iter()
                .map(|&w| {
                    let v = w * scale;
                    (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
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
/// in 32-bit integers (as PIL: 255 times the weights' absolute sum stays below 2^31)
/// with rounding and clipping, floats in f64.
trait Sample: Copy {
    type Weight: Copy;
    type Acc: Copy;
    const INIT: Self::Acc;
    fn add(acc: Self::Acc, v: Self, k: Self::Weight) -> Self::Acc;
    fn finish(acc: Self::Acc) -> Self;
}

impl Sample for u8 {
    type Weight = i32;
    type Acc = i32;
    const INIT: i32 = 1 << (PRECISION_BITS - 1);
    fn add(acc: i32, v: u8, k: i32) -> i32 {
        acc + i32::from(v) * k
    }
    fn finish(acc: i32) -> u8 {
        (acc >> PRECISION_BITS).clamp(0, 255) as u8
    }
}

impl Sample for f32 {
    type Weight = f64;
    type Acc = f64;
    const INIT: f64 = 0.0;
    fn add(acc: f64, v: f32, k: f64) -> f64 {
        acc + f64::from(v) * k
    }
    fn finish(acc: f64) -> f32 {
        acc as f32
    }
}

/// The most interleaved channels a pixel has (RGBA).
const MAX_CHANNELS: usize = 4;

/// One pass, horizontal or `vertical`, over an image of `size` with `channels`
/// interleaved values per pixel. Every output value sums its taps in order, as PIL
/// does; the loops are arranged so the vertical pass runs along whole rows (which the
/// compiler vectorises) and the horizontal one over a pixel's channels at once.
fn pass<T: Sample>(
    src: &[T],
    (w, h): (usize, usize),
    channels: usize,
    vertical: bool,
    coeffs: &[(usize, Vec<T::Weight>)],
) -> Vec<T> {
    assert!((1..=MAX_CHANNELS).contains(&channels), "channels");
    let row = w * channels;
    let mut out = Vec::with_capacity(coeffs.len() * if vertical { row } else { h * channels });
    if vertical {
        let mut acc = vec![T::INIT; row];
        for (start, k) in coeffs {
            acc.fill(T::INIT);
            for (i, &kw) in k.iter().enumerate() {
                let line = &src[(start + i) * row..][..row];
                for (a, &v) in acc.iter_mut().zip(line) {
                    *a = T::add(*a, v, kw);
                }
            }
            out.extend(acc.iter().map(|&a| T::finish(a)));
        }
    } else {
        for line in src.chunks_exact(row).take(h) {
            for (start, k) in coeffs {
                let mut acc = [T::INIT; MAX_CHANNELS];
                let taps = line[start * channels..].chunks_exact(channels);
                for (&kw, pixel) in k.iter().zip(taps) {
                    for (a, &v) in acc.iter_mut().zip(pixel) {
                        *a = T::add(*a, v, kw);
                    }
                }
                out.extend(acc[..channels].iter().map(|&a| T::finish(a)));
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

    /// Each output value written as PIL's loops compute it, one value at a time.
    fn direct<T: Sample>(
        src: &[T],
        (w, h): (usize, usize),
        channels: usize,
        vertical: bool,
        coeffs: &[(usize, Vec<T::Weight>)],
    ) -> Vec<T> {
        let (out_w, out_h) = match vertical {
            true => (w, coeffs.len()),
            false => (coeffs.len(), h),
        };
        let mut out = Vec::new();
        for y in 0..out_h {
            for x in 0..out_w {
                let (start, k) = &coeffs[if vertical { y } else { x }];
                for c in 0..channels {
                    let mut acc = T::INIT;
                    for (i, &kw) in k.iter().enumerate() {
                        let (sx, sy) = if vertical {
                            (x, start + i)
                        } else {
                            (start + i, y)
                        };
                        acc = T::add(acc, src[(sy * w + sx) * channels + c], kw);
                    }
                    out.push(T::finish(acc));
                }
            }
        }
        out
    }

    #[test]
    fn passes_equal_the_direct_sums() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed >> 8
        };
        for (w, h, out_w, out_h, channels) in [
            (224, 224, 56, 56, 3),
            (31, 17, 64, 5, 4),
            (9, 40, 3, 41, 1),
            (5, 5, 2, 9, 2),
        ] {
            let src: Vec<u8> = (0..w * h * channels).map(|_| next() as u8).collect();
            let floats: Vec<f32> = src.iter().map(|&v| f32::from(v) / 7.0 - 9.0).collect();
            for filter in [Filter::Bicubic, Filter::Bilinear] {
                let horiz = fixed_point(coefficients(filter, w, out_w));
                let vert = fixed_point(coefficients(filter, h, out_h));
                let size = (w, h);
                assert_eq!(
                    pass(&src, size, channels, false, &horiz),
                    direct(&src, size, channels, false, &horiz)
                );
                assert_eq!(
                    pass(&src, size, channels, true, &vert),
                    direct(&src, size, channels, true, &vert)
                );
                let horiz = coefficients(filter, w, out_w);
                let vert = coefficients(filter, h, out_h);
                assert_eq!(
                    pass(&floats, size, channels, false, &horiz),
                    direct(&floats, size, channels, false, &horiz)
                );
                assert_eq!(
                    pass(&floats, size, channels, true, &vert),
                    direct(&floats, size, channels, true, &vert)
                );
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
