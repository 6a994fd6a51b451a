//! The AVX-512 BF16 kernels (`vdpbf16ps` and bf16 conversions), which have no
//! counterpart at the other levels; the shared shapes are in `kernels`.

use std::arch::x86_64::*;

/// Run `$body` for `$i` = 0, 16, 32, .. below `$n`, `$mask` covering the lanes below
/// `$n`. A macro, not a closure: a closure is compiled without the caller's target
/// features, so the intrinsics in it stayed function calls.
macro_rules! by_16 {
    ($n:expr, |$i:ident, $mask:ident| $body:block) => {{
        let n = $n;
        let mut $i = 0;
        while $i < n {
            let len = (n - $i).min(16);
            let $mask = (1u32 << len).wrapping_sub(1) as u16;
            $body
            $i += len;
        }
    }};
}

/// Store 16 f32 lanes as bf16 (nearest even) under `mask`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn store_bf16(out: *mut u16, mask: u16, v: __m512) {
    // SAFETY: the caller guarantees the masked lanes of `out` are writable.
    unsafe {
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_mask_storeu_epi16(out.cast(), mask, h);
    }
}

/// Round f32 to bf16 (nearest even), 16 at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn round_to_bf16(x: &[f32], out: &mut [u16]) {
    by_16!(x.len().min(out.len()), |i, mask| {
        // SAFETY: masked loads and stores touch only lanes below the length.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
            store_bf16(out.as_mut_ptr().add(i), mask, v);
        }
    });
}

/// int8 to bf16 (exact), 16 at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn widen_i8(q: &[i8], out: &mut [u16]) {
    by_16!(q.len().min(out.len()), |i, mask| {
        // SAFETY: masked loads and stores touch only lanes below the length.
        unsafe {
            let v = _mm_maskz_loadu_epi8(mask, q.as_ptr().add(i).cast());
            let f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
            store_bf16(out.as_mut_ptr().add(i), mask, f);
        }
    });
}

#[inline(always)]
unsafe fn load_bf16(p: *const u16, mask: u32) -> __m512bh {
    // SAFETY: the caller guarantees the `mask`ed lanes are readable.
    unsafe { std::mem::transmute(_mm512_maskz_loadu_epi16(mask, p.cast())) }
}

/// `out[r * m + i - i0] += Σ_p a[i][p] · w[r][p]` over bf16 pairs `p0..p0 + np`, for
/// `nr` ≤ 6 weight rows and activation groups `g0..g0 + nv` (nv ≤ 4) of the packed
/// operand: 6 x 4 accumulators of 16 rows, one broadcast weight pair per row and
/// step, no horizontal sums. Output rows past `m` are not written.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn outer_bf16(
    a: &[u32],
    pairs: usize,
    g0: usize,
    nv: usize,
    p0: usize,
    np: usize,
    w: &[u16],
    ldw: usize,
    nr: usize,
    out: &mut [f32],
    m: usize,
    i0: usize,
    accumulate: bool,
) {
    assert!((1..=4).contains(&nv) && (1..=6).contains(&nr) && p0 + np <= pairs);
    assert!(a.len() >= (g0 + nv) * pairs * 16);
    assert!(w.len() >= (nr - 1) * ldw + 2 * np);
    assert!(i0 < m && out.len() >= (nr - 1) * m + (m - i0));
    let valid = m - i0;
    // SAFETY: the asserts bound every read of `a`, `w` and every write of `out`.
    unsafe {
        let a = a.as_ptr().add((g0 * pairs + p0) * 16);
        let gstride = pairs * 16;
        let out = &mut out[i0..];
        match nv {
            1 => outer::<1>(a, gstride, np, w, ldw, nr, out, m, valid, accumulate),
            2 => outer::<2>(a, gstride, np, w, ldw, nr, out, m, valid, accumulate),
            3 => outer::<3>(a, gstride, np, w, ldw, nr, out, m, valid, accumulate),
            _ => outer::<4>(a, gstride, np, w, ldw, nr, out, m, valid, accumulate),
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn outer<const NV: usize>(
    a: *const u32,
    gstride: usize,
    np: usize,
    w: &[u16],
    ldw: usize,
    nr: usize,
    out: &mut [f32],
    m: usize,
    valid: usize,
    accumulate: bool,
) {
    // SAFETY (whole body): bounds checked by `outer_bf16`; missing weight rows
    // repeat row 0 and their sums are discarded.
    unsafe {
        let wp: [*const u16; 6] =
            std::array::from_fn(|r| w.as_ptr().add(if r < nr { r * ldw } else { 0 }));
        let mut acc = [[_mm512_setzero_ps(); NV]; 6];
        for p in 0..np {
            let av: [__m512bh; NV] = std::array::from_fn(|v| {
                std::mem::transmute(_mm512_loadu_si512(a.add(v * gstride + p * 16).cast()))
            });
            for r in 0..6 {
                let pair = wp[r].add(2 * p).cast::<i32>().read_unaligned();
                let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                for v in 0..NV {
                    acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av[v], b);
                }
            }
        }
        store_tile(&acc, nr, out, m, valid, accumulate);
    }
}

/// Write (or add, after the first k block) `nr` rows of a 6 x `NV` accumulator tile
/// into `out` (row stride `m`), only the `valid` activation lanes.
#[inline(always)]
unsafe fn store_tile<const NV: usize>(
    acc: &[[__m512; NV]; 6],
    nr: usize,
    out: &mut [f32],
    m: usize,
    valid: usize,
    accumulate: bool,
) {
    for (r, acc) in acc.iter().enumerate().take(nr) {
        for (v, acc) in acc.iter().enumerate() {
            let lanes = valid.saturating_sub(16 * v).min(16);
            if lanes == 0 {
                break;
            }
            let mask = ((1u32 << lanes) - 1) as u16;
            // SAFETY: the caller checked that `nr` rows of `m` values from the
            // start of `out` are in bounds; lanes past `valid` are masked off.
            unsafe {
                let o = out.as_mut_ptr().add(r * m + 16 * v);
                let sum = if accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), *acc)
                } else {
                    *acc
                };
                _mm512_mask_storeu_ps(o, mask, sum);
            }
        }
    }
}

#[inline(always)]
unsafe fn load_full(p: *const u16) -> __m512bh {
    // SAFETY: the caller guarantees 32 readable values at `p`.
    unsafe { std::mem::transmute(_mm512_loadu_si512(p.cast())) }
}

/// `acc[i][j] = Σ a[i][..k] · w[j][..k]` for `mr`, `nr` ≤ 4 rows of bf16 operands,
/// 32 products per `vdpbf16ps`; missing rows repeat row 0 and are discarded.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn tile_bf16(
    a: &[u16],
    lda: usize,
    mr: usize,
    w: &[u16],
    ldw: usize,
    nr: usize,
    k: usize,
    acc_out: &mut [[f32; 4]; 4],
) {
    assert!(mr >= 1 && nr >= 1 && mr <= 4 && nr <= 4);
    assert!(a.len() >= (mr - 1) * lda + k && w.len() >= (nr - 1) * ldw + k);
    // SAFETY: the asserts above bound every row start plus `k` inside the slices.
    unsafe {
        match mr {
            1 => tile::<1>(a, lda, w, ldw, nr, k, acc_out),
            2 => tile::<2>(a, lda, w, ldw, nr, k, acc_out),
            3 => tile::<3>(a, lda, w, ldw, nr, k, acc_out),
            _ => tile::<4>(a, lda, w, ldw, nr, k, acc_out),
        }
    }
}

#[inline(always)]
unsafe fn tile<const MR: usize>(
    a: &[u16],
    lda: usize,
    w: &[u16],
    ldw: usize,
    nr: usize,
    k: usize,
    acc_out: &mut [[f32; 4]; 4],
) {
    // SAFETY (whole body): rows `< MR` of `a` and `< nr` of `w` hold `k` values
    // (checked by the caller); lanes past `k` are masked off.
    unsafe {
        let ap: [*const u16; MR] = std::array::from_fn(|i| a.as_ptr().add(i * lda));
        let wp: [*const u16; 4] =
            std::array::from_fn(|j| w.as_ptr().add(if j < nr { j * ldw } else { 0 }));
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        let mut c = 0;
        while c + 32 <= k {
            // Decode-step products stream the weights from memory: request each row
            // 1 KiB ahead so more lines are in flight than the hardware prefetcher
            // keeps (a hint: past the row's end it touches nothing).
            for &row in &wp {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(c + 512).cast());
            }
            let wv: [__m512bh; 4] = std::array::from_fn(|j| load_full(wp[j].add(c)));
            for i in 0..MR {
                let av = load_full(ap[i].add(c));
                for j in 0..4 {
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, wv[j]);
                }
            }
            c += 32;
        }
        if c < k {
            let mask = (1u32 << (k - c)) - 1;
            let wv: [__m512bh; 4] = std::array::from_fn(|j| load_bf16(wp[j].add(c), mask));
            for i in 0..MR {
                let av = load_bf16(ap[i].add(c), mask);
                for j in 0..4 {
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, wv[j]);
                }
            }
        }
        for i in 0..MR {
            for j in 0..4 {
                acc_out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
            }
        }
    }
}

/// `dots[j] = Σ w[j][c] * x[c]` for `rows` ≤ 4 rows of grouped int4 weights (layout in
/// `quantize`) against bf16 activations `x` (`groups * 32` values, zero past the row):
/// per group, the 32 nibbles become bf16 integers by a table permute and one
/// `vdpbf16ps` multiplies them by the group's 32 activations (exact products), then the
/// group's scale is applied once. Missing rows repeat row 0 and are discarded.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn dot4_i4_bf16(
    q: &[u8],
    scale: &[f32],
    groups: usize,
    rows: usize,
    x: &[u16],
    dots: &mut [f32; 4],
) {
    let row_bytes = groups * 16;
    assert!((1..=4).contains(&rows));
    assert!(q.len() >= rows * row_bytes && scale.len() >= rows * groups);
    assert!(x.len() >= groups * 32);
    // SAFETY: row starts are inside `q` and `scale` (asserted); group `g` reads bytes
    // `16g..16g + 16` of a row and values `32g..32g + 32` of `x`, inside the lengths.
    unsafe {
        let row = |j: usize| if j < rows { j } else { 0 };
        let qp = [0, 1, 2, 3].map(|j| q.as_ptr().add(row(j) * row_bytes));
        let sp = [0, 1, 2, 3].map(|j| scale.as_ptr().add(row(j) * groups));
        // bf16 of n - 8 at index n (the nibble), for n in 0..16.
        let table = _mm512_set_epi16(
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // indexes 16..31: unused
            0x40E0, 0x40C0, 0x40A0, 0x4080, 0x4040, 0x4000, 0x3F80, 0, -16512, -16384, -16320,
            -16256, -16224, -16192, -16160, -16128,
        );
        let low = _mm256_set1_epi16(15);
        let mut acc = [_mm512_setzero_ps(); 4];
        for g in 0..groups {
            let xv = load_full(x.as_ptr().add(g * 32));
            for j in 0..4 {
                let bytes = _mm_loadu_si128(qp[j].add(g * 16).cast());
                let wide = _mm256_cvtepu8_epi16(bytes);
                let lo = _mm256_and_si256(wide, low);
                let hi = _mm256_srli_epi16(wide, 4);
                let nibbles = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let w: __m512bh = std::mem::transmute(_mm512_permutexvar_epi16(nibbles, table));
                let part = _mm512_dpbf16_ps(_mm512_setzero_ps(), w, xv);
                acc[j] = _mm512_fmadd_ps(part, _mm512_set1_ps(*sp[j].add(g)), acc[j]);
            }
        }
        for j in 0..4 {
            dots[j] = _mm512_reduce_add_ps(acc[j]);
        }
    }
}

/// Whether `vdpbf16ps` multiplies faster than f32 FMAs on this core, from the time of
/// the same number of each, 24 independent accumulators at a time (enough to hide
/// either's latency). One `vdpbf16ps` does twice an FMA's products, but cores differ
/// in how fast they issue it against FMAs (docs/benchmarks.md has two that differ
/// fourfold), so the packed prompt products take whichever is faster here. Best of
/// several short runs, so a preempted run does not decide.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn dots_outpace_fma() -> bool {
    // SAFETY: the caller guarantees AVX-512 F and BF16; nothing is read or written
    // but locals.
    unsafe {
        const ROUNDS: usize = 2048;
        let ones = _mm512_set1_ps(1.0);
        let (mut dots, mut fmas) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..7 {
            let pair: __m512bh =
                std::mem::transmute(std::hint::black_box(_mm512_set1_epi32(0x3c00_3c00)));
            let mut acc: [__m512; 24] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
            let t = std::time::Instant::now();
            for _ in 0..ROUNDS {
                for a in acc.iter_mut() {
                    *a = _mm512_dpbf16_ps(*a, pair, pair);
                }
            }
            std::hint::black_box(acc);
            dots = dots.min(t.elapsed().as_secs_f64());

            let x = std::hint::black_box(ones);
            let mut acc: [__m512; 24] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
            let t = std::time::Instant::now();
            for _ in 0..ROUNDS {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(x, x, *a);
                }
            }
            std::hint::black_box(acc);
            fmas = fmas.min(t.elapsed().as_secs_f64());
        }
        // Products per second: 32 per dot-product instruction, 16 per FMA. The f32 path
        // also widens weights and moves twice the activation bytes, so the dot products
        // keep the prompts unless they fall clearly behind.
        32.0 / dots >= 0.8 * 16.0 / fmas
    }
}
