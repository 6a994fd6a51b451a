//! The vector operations the shared kernels (`kernels`) are written in, one
//! implementation per kernel level: plain arrays of four lanes (portable: the compiler
//! turns them into the target's baseline vectors, SSE2 on x86_64), AVX2 with FMA (8
//! lanes), AVX-512 (16 lanes).
//!
//! Every method is `#[inline(always)]` and carries no target features itself: the
//! kernels are inlined into entry points compiled with the level's features
//! (`kernels::level!`), and the intrinsics with them.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One kernel level's f32 vector and the operations the kernels need.
///
/// # Safety
///
/// The methods are unsafe: pointer arguments must be valid for the lanes they touch,
/// and the CPU must have the level's features.
pub(super) trait Simd {
    /// A vector of `LANES` f32 values.
    type V: Copy;
    /// f32 values per vector.
    const LANES: usize;
    /// Activation vectors per outer-product tile: `6 * GROUPS` accumulators plus the
    /// loads must fit the level's registers.
    const GROUPS: usize;

    /// All lanes zero.
    unsafe fn zero() -> Self::V;
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self::V;
    /// `LANES` values at `p`.
    unsafe fn load(p: *const f32) -> Self::V;
    /// The first `n < LANES` values at `p`, the other lanes zero.
    unsafe fn load_part(p: *const f32, n: usize) -> Self::V;
    /// Write all lanes to `p`.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Write the first `n < LANES` lanes to `p`.
    unsafe fn store_part(p: *mut f32, n: usize, v: Self::V);
    /// `acc + a * b` (fused where the level has FMA).
    unsafe fn mul_add(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// `a + b`.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes.
    unsafe fn sum(v: Self::V) -> f32;
    /// `LANES` int8 values at `p`, widened to f32 (exact).
    unsafe fn load_i8(p: *const i8) -> Self::V;
    /// `LANES` bf16 values at `p`, widened to f32 (exact).
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    /// `LANES` bytes at `p` as two vectors of 4-bit values minus 8 (exact): the low
    /// nibbles, then the high nibbles.
    unsafe fn load_nibbles(p: *const u8) -> (Self::V, Self::V);
}

/// Plain code over arrays of four lanes, one SSE2 or NEON register each.
pub(super) struct Portable;

impl Simd for Portable {
    type V = [f32; 4];
    const LANES: usize = 4;
    const GROUPS: usize = 2;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 4]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; 4]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees four readable values.
        unsafe { p.cast::<[f32; 4]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self::V {
        let mut v = [0.0; 4];
        // SAFETY: the caller guarantees `n` readable values.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n) };
        v
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees four writable values.
        unsafe { p.cast::<[f32; 4]>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn store_part(p: *mut f32, n: usize, v: Self::V) {
        // SAFETY: the caller guarantees `n` writable values.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, n) };
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        // A separate multiply and add: `f32::mul_add` is a libm call where the target
        // has no FMA.
        [
            acc[0] + a[0] * b[0],
            acc[1] + a[1] * b[1],
            acc[2] + a[2] * b[2],
            acc[3] + a[3] * b[3],
        ]
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        (v[0] + v[2]) + (v[1] + v[3])
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self::V {
        // SAFETY: the caller guarantees four readable values.
        let q = unsafe { p.cast::<[i8; 4]>().read_unaligned() };
        q.map(f32::from)
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        // SAFETY: the caller guarantees four readable values.
        let h = unsafe { p.cast::<[u16; 4]>().read_unaligned() };
        h.map(|h| f32::from_bits(u32::from(h) << 16))
    }
    #[inline(always)]
    unsafe fn load_nibbles(p: *const u8) -> (Self::V, Self::V) {
        // SAFETY: the caller guarantees four readable bytes.
        let b = unsafe { p.cast::<[u8; 4]>().read_unaligned() };
        (
            b.map(|b| f32::from(b & 15) - 8.0),
            b.map(|b| f32::from(b >> 4) - 8.0),
        )
    }
}

/// AVX2 with FMA: 16 registers of 8 lanes.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// Lanes below `n` set, for `vmaskmovps`.
    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        // SAFETY: plain register arithmetic (AVX2, which the caller guarantees).
        unsafe {
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane)
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    const GROUPS: usize = 2;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self::V {
        // SAFETY: masked-off lanes are not read.
        unsafe { _mm256_maskload_ps(p, Self::mask(n)) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_part(p: *mut f32, n: usize, v: Self::V) {
        // SAFETY: masked-off lanes are not written.
        unsafe { _mm256_maskstore_ps(p, Self::mask(n), v) }
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        unsafe { _mm256_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        unsafe {
            let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
            _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
        }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self::V {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        unsafe {
            let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
        }
    }
    #[inline(always)]
    unsafe fn load_nibbles(p: *const u8) -> (Self::V, Self::V) {
        unsafe {
            let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()));
            let eight = _mm256_set1_ps(8.0);
            let lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
            let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
            (_mm256_sub_ps(lo, eight), _mm256_sub_ps(hi, eight))
        }
    }
}

/// AVX-512 F, BW and VL: 32 registers of 16 lanes.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    const GROUPS: usize = 4;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize) -> Self::V {
        // SAFETY: masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_part(p: *mut f32, n: usize, v: Self::V) {
        // SAFETY: masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v) }
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        unsafe { _mm512_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self::V {
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        unsafe {
            let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))
        }
    }
    #[inline(always)]
    unsafe fn load_nibbles(p: *const u8) -> (Self::V, Self::V) {
        unsafe {
            let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()));
            let eight = _mm512_set1_ps(8.0);
            let lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
            let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
            (_mm512_sub_ps(lo, eight), _mm512_sub_ps(hi, eight))
        }
    }
}
