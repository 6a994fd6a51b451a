//! Symmetric per-row int8 quantization of weight rows at load time.

use super::isa::Isa;

/// Quantize one row to symmetric int8 (nearest, ties to even) and return its scale,
/// `max |w| / 127` (1 for an all-zero row).
pub(super) fn quantize_row(w: &[f32], q: &mut [i8]) -> f32 {
    match Isa::detect() {
        // SAFETY: a level is only chosen when the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { quantize_row_avx512(w, q) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { quantize_row_avx2(w, q) },
        Isa::Portable => quantize_row_body(w, q),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_row_avx512(w: &[f32], q: &mut [i8]) -> f32 {
    quantize_row_body(w, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(w: &[f32], q: &mut [i8]) -> f32 {
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

/// Values per int4 group: each group of a row has its own scale.
pub(super) const INT4_GROUP: usize = 32;

/// Quantize one row to grouped int4 (`INT4_GROUP` values per group, nearest, ties to
/// even), writing `INT4_GROUP / 2` bytes and one scale per group. Each group's scale is
/// its largest-magnitude value over -8, so that value is exactly -8 steps and the other
/// side of zero reaches +7 (the Q4_0 convention); value `16 * h + j` of a group sits in
/// byte `j`'s low (`h = 0`) or high (`h = 1`) nibble, offset by 8. A partial last group
/// is padded with zeros.
pub(super) fn quantize_row_i4(w: &[f32], q: &mut [u8], scale: &mut [f32]) {
    match Isa::detect() {
        // SAFETY: a level is only chosen when the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { quantize_row_i4_avx512(w, q, scale) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { quantize_row_i4_avx2(w, q, scale) },
        Isa::Portable => quantize_row_i4_body(w, q, scale),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_i4_avx512(w: &[f32], q: &mut [u8], scale: &mut [f32]) {
    quantize_row_i4_body(w, q, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_i4_avx2(w: &[f32], q: &mut [u8], scale: &mut [f32]) {
    quantize_row_i4_body(w, q, scale)
}

/// Written so it vectorises at the caller's level, as `quantize_row_body`.
#[inline(always)]
fn quantize_row_i4_body(w: &[f32], q: &mut [u8], scale: &mut [f32]) {
    const ROUND: f32 = 12_582_912.0;
    const HALF: usize = INT4_GROUP / 2;
    for ((w, q), s) in w
        .chunks(INT4_GROUP)
        .zip(q.chunks_exact_mut(HALF))
        .zip(scale.iter_mut())
    {
        let mut group = [0f32; INT4_GROUP];
        group[..w.len()].copy_from_slice(w);
        // The first value of the largest magnitude, NaN ignored. Magnitudes compare as
        // their bits without the sign, so the maximum is an integer reduction that
        // vectorises (a float `max` must order NaN and stays scalar).
        let magnitude = |v: f32| match v.to_bits() & 0x7fff_ffff {
            b if b > 0x7f80_0000 => 0,
            b => b,
        };
        let largest = group.iter().map(|&v| magnitude(v)).max().unwrap_or(0);
        let extreme = group
            .iter()
            .copied()
            .find(|&v| magnitude(v) == largest)
            .unwrap_or(0.0);
        *s = if extreme != 0.0 && extreme.is_finite() {
            extreme / -8.0
        } else {
            1.0
        };
        let inv = 1.0 / *s;
        let nibble = |v: f32| ((v * inv).clamp(-8.0, 7.0) + ROUND - ROUND + 8.0) as u8;
        for (j, q) in q.iter_mut().enumerate() {
            *q = nibble(group[j]) | nibble(group[j + HALF]) << 4;
        }
    }
}

/// Values `c0..c0 + n` of an int4 row (`quantize_row_i4`'s layout), each times its
/// group's scale, appended to `out`.
pub(super) fn dequantize_i4(q: &[u8], scale: &[f32], c0: usize, n: usize, out: &mut Vec<f32>) {
    const HALF: usize = INT4_GROUP / 2;
    let isa = Isa::detect();
    let mut c = c0;
    while c < c0 + n {
        let g = c / INT4_GROUP;
        let mut group = [0f32; INT4_GROUP];
        isa.dequantize_i4_group(&q[g * HALF..(g + 1) * HALF], scale[g], &mut group);
        let from = c - g * INT4_GROUP;
        let to = (c0 + n - g * INT4_GROUP).min(INT4_GROUP);
        out.extend_from_slice(&group[from..to]);
        c = g * INT4_GROUP + to;
    }
}
