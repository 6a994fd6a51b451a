//! Symmetric per-row int8 quantization of weight rows at load time.

/// Quantize one row to symmetric int8 (nearest, ties to even) and return its scale,
/// `max |w| / 127` (1 for an all-zero row).
pub(super) fn quantize_row(w: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { quantize_row_avx512(w, q) };
    }
    quantize_row_body(w, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_row_avx512(w: &[f32], q: &mut [i8]) -> f32 {
    quantize_row_body(w, q)
}

/// Written so both loops vectorise: per-lane maxima, and rounding by adding and
/// subtracting 1.5 * 2^23 (exact for |x| <= 127) instead of a libm `roundf` call.
#[inline(always)]
fn quantize_row_body(w: &[f32], q: &mut [i8]) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let mut lanes = [0f32; 16];
    for chunk in w.chunks(16) {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = l.max(v.abs());
        }
    }
    let max = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let scale = if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    };
    let inv = 1.0 / scale;
    for (q, &w) in q.iter_mut().zip(w) {
        *q = ((w * inv).clamp(-127.0, 127.0) + ROUND - ROUND) as i8;
    }
    scale
}
