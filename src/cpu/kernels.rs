//! The kernel shapes every level shares, written once over [`Simd`] and compiled per
//! level by `level!` (portable, AVX2 + FMA, AVX-512): the f32 outer-product tile of
//! prompt products and the four-row dot products of decode steps, over f32, bf16,
//! int8 or grouped int4 weights. The kernels that only AVX-512 BF16 has (`vdpbf16ps`) stay in
//! `avx512`.

use super::quantize::INT4_GROUP;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Portable, Simd};

/// A weight element the kernels widen to f32 in registers.
pub(super) trait Element: Copy + Default {
    /// `S::LANES` values at `p`, widened.
    ///
    /// # Safety
    ///
    /// `p` must be valid for `S::LANES` values and the CPU must have `S`'s features.
    unsafe fn load<S: Simd>(p: *const Self) -> S::V;
}

impl Element for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const f32) -> S::V {
        // SAFETY: forwarded from the caller.
        unsafe { S::load(p) }
    }
}

impl Element for u16 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const u16) -> S::V {
        // SAFETY: forwarded from the caller.
        unsafe { S::load_bf16(p) }
    }
}

impl Element for i8 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const i8) -> S::V {
        // SAFETY: forwarded from the caller.
        unsafe { S::load_i8(p) }
    }
}

/// `dots[j] = Σ w[j][c] * x[c]` for `rows` ≤ 4 weight rows of `k` values (missing rows
/// repeat row 0 and are discarded): each load of `x` serves four rows, two sets of
/// accumulators so the widening loads do not leave the FMA chains the latency bound.
#[inline(always)]
unsafe fn dot4<S: Simd, T: Element>(
    w: &[T],
    k: usize,
    rows: usize,
    x: &[f32],
    dots: &mut [f32; 4],
) {
    assert!((1..=4).contains(&rows) && w.len() >= rows * k && x.len() >= k);
    let l = S::LANES;
    // SAFETY (whole body): row starts are inside `w` (asserted); full loads stay below
    // `k` in every row and in `x`; the tail is copied into a zero-padded buffer.
    unsafe {
        let base = w.as_ptr();
        let wp = [0, 1, 2, 3].map(|j| base.add(if j < rows { j * k } else { 0 }));
        let x = x.as_ptr();
        let mut acc = [S::zero(); 4];
        let mut acc2 = [S::zero(); 4];
        let mut c = 0;
        while c + 2 * l <= k {
            let xv = S::load(x.add(c));
            let xv2 = S::load(x.add(c + l));
            for j in 0..4 {
                acc[j] = S::mul_add(T::load::<S>(wp[j].add(c)), xv, acc[j]);
                acc2[j] = S::mul_add(T::load::<S>(wp[j].add(c + l)), xv2, acc2[j]);
            }
            c += 2 * l;
        }
        for j in 0..4 {
            acc[j] = S::add(acc[j], acc2[j]);
        }
        if c + l <= k {
            let xv = S::load(x.add(c));
            for j in 0..4 {
                acc[j] = S::mul_add(T::load::<S>(wp[j].add(c)), xv, acc[j]);
            }
            c += l;
        }
        if c < k {
            let n = k - c;
            let xv = S::load_part(x.add(c), n);
            let mut tail = [T::default(); 16];
            for j in 0..4 {
                std::ptr::copy_nonoverlapping(wp[j].add(c), tail.as_mut_ptr(), n);
                acc[j] = S::mul_add(T::load::<S>(tail.as_ptr()), xv, acc[j]);
            }
        }
        for j in 0..4 {
            dots[j] = S::sum(acc[j]);
        }
    }
}

/// `dots[j] = Σ w[j][c] * x[c]` for `rows` ≤ 4 rows of grouped int4 weights (layout in
/// `quantize`: `groups` groups of `INT4_GROUP` values per row, 16 bytes and one scale
/// each): per group, the nibbles times `x` summed in f32, then times the group's scale.
/// `x` holds `groups * INT4_GROUP` values (zero past the row's length).
#[inline(always)]
unsafe fn dot4_i4<S: Simd>(
    q: &[u8],
    scale: &[f32],
    groups: usize,
    rows: usize,
    x: &[f32],
    dots: &mut [f32; 4],
) {
    let l = S::LANES;
    let row_bytes = groups * INT4_GROUP / 2;
    assert!((1..=4).contains(&rows) && l <= INT4_GROUP / 2);
    assert!(q.len() >= rows * row_bytes && scale.len() >= rows * groups);
    assert!(x.len() >= groups * INT4_GROUP);
    // SAFETY (whole body): row starts are inside `q` and `scale` (asserted); each group
    // reads its 16 bytes and 32 values of `x`, all inside the asserted lengths.
    unsafe {
        let row = |j: usize| if j < rows { j } else { 0 };
        let qp = [0, 1, 2, 3].map(|j| q.as_ptr().add(row(j) * row_bytes));
        let sp = [0, 1, 2, 3].map(|j| scale.as_ptr().add(row(j) * groups));
        let mut acc = [S::zero(); 4];
        for g in 0..groups {
            let xg = x.as_ptr().add(g * INT4_GROUP);
            let mut part = [S::zero(); 4];
            for o in (0..INT4_GROUP / 2).step_by(l) {
                let lo_x = S::load(xg.add(o));
                let hi_x = S::load(xg.add(INT4_GROUP / 2 + o));
                for j in 0..4 {
                    let (lo, hi) = S::load_nibbles(qp[j].add(g * INT4_GROUP / 2 + o));
                    part[j] = S::mul_add(lo, lo_x, part[j]);
                    part[j] = S::mul_add(hi, hi_x, part[j]);
                }
            }
            for j in 0..4 {
                acc[j] = S::mul_add(part[j], S::splat(*sp[j].add(g)), acc[j]);
            }
        }
        for j in 0..4 {
            dots[j] = S::sum(acc[j]);
        }
    }
}

/// The 32 weights of one int4 group (16 bytes at `q`, `quantize_row_i4`'s layout: low
/// nibbles are weights 0..16, high nibbles 16..32) times the group's `scale`.
#[inline(always)]
unsafe fn dequantize_i4_group<S: Simd>(q: &[u8], scale: f32, out: &mut [f32; INT4_GROUP]) {
    const HALF: usize = INT4_GROUP / 2;
    assert!(q.len() >= HALF && S::LANES <= HALF);
    // SAFETY: each step reads `LANES` of the 16 asserted bytes and writes `LANES`
    // values inside each half of `out`.
    unsafe {
        let s = S::splat(scale);
        for o in (0..HALF).step_by(S::LANES) {
            let (lo, hi) = S::load_nibbles(q.as_ptr().add(o));
            S::store(out.as_mut_ptr().add(o), S::mul_add(lo, s, S::zero()));
            S::store(out.as_mut_ptr().add(HALF + o), S::mul_add(hi, s, S::zero()));
        }
    }
}

/// One call of the f32 outer-product tile (`outer_f32`): activation groups `g0..g0 +
/// nv` of the packed operand `a` (`k` columns), columns `c0..c0 + nc`, `nr` ≤ 6 weight
/// rows of `w` (`ldw` apart), output rows `m` apart from activation row `i0`, added to
/// the output after the first k block (`accumulate`).
pub(super) struct OuterTile<'a> {
    pub a: &'a [f32],
    pub k: usize,
    pub g0: usize,
    pub nv: usize,
    pub c0: usize,
    pub nc: usize,
    pub w: &'a [f32],
    pub ldw: usize,
    pub nr: usize,
    pub m: usize,
    pub i0: usize,
    pub accumulate: bool,
}

/// `out[r * m + i - i0] (+)= Σ_c a[i][c] · w[r][c]` over columns `c0..c0 + nc`, for
/// `nr` ≤ 6 f32 weight rows (`ldw` apart) and activation groups `g0..g0 + nv` of an
/// operand packed `[m / LANES][k][LANES]` (rows past `m` zero): one load is column `c`
/// of `LANES` activation rows, one broadcast weight per row and column, `6 x nv`
/// accumulators, no horizontal sums. The first k block stores, later ones add.
#[inline(always)]
unsafe fn outer_f32<S: Simd>(t: &OuterTile<'_>, out: &mut [f32]) {
    let OuterTile {
        a,
        k,
        g0,
        nv,
        c0,
        nc,
        w,
        ldw,
        nr,
        m,
        i0,
        accumulate,
    } = *t;
    let l = S::LANES;
    assert!((1..=S::GROUPS).contains(&nv) && (1..=6).contains(&nr) && c0 + nc <= k);
    assert!(a.len() >= (g0 + nv) * k * l);
    assert!(w.len() >= (nr - 1) * ldw + nc);
    assert!(i0 < m && out.len() >= (nr - 1) * m + m);
    // SAFETY: the asserts bound every read of `a` and `w` and every write of `out`;
    // missing weight rows repeat row 0 and their sums are discarded.
    unsafe {
        let a = a.as_ptr().add((g0 * k + c0) * l);
        let base = w.as_ptr();
        let wp = [0, 1, 2, 3, 4, 5].map(|r| base.add(if r < nr { r * ldw } else { 0 }));
        let tile = Tile {
            a,
            gstride: k * l,
            nc,
            wp,
        };
        let out = &mut out[i0..];
        let valid = m - i0;
        match nv {
            1 => tile.run::<S, 1>(out, nr, m, valid, accumulate),
            2 => tile.run::<S, 2>(out, nr, m, valid, accumulate),
            3 => tile.run::<S, 3>(out, nr, m, valid, accumulate),
            _ => tile.run::<S, 4>(out, nr, m, valid, accumulate),
        }
    }
}

/// The operands of one outer-product tile (see `outer_f32`).
struct Tile {
    a: *const f32,
    gstride: usize,
    nc: usize,
    wp: [*const f32; 6],
}

impl Tile {
    // Indexed loops over the fixed 6 x NV register tile (the form measured).
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn run<S: Simd, const NV: usize>(
        &self,
        out: &mut [f32],
        nr: usize,
        m: usize,
        valid: usize,
        accumulate: bool,
    ) {
        let l = S::LANES;
        // SAFETY (whole body): bounds checked by `outer_f32`.
        unsafe {
            let mut acc = [[S::zero(); NV]; 6];
            let mut av = [S::zero(); NV];
            for c in 0..self.nc {
                for (v, av) in av.iter_mut().enumerate() {
                    *av = S::load(self.a.add(v * self.gstride + c * l));
                }
                for r in 0..6 {
                    let b = S::splat(*self.wp[r].add(c));
                    for v in 0..NV {
                        acc[r][v] = S::mul_add(av[v], b, acc[r][v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(nr) {
                for (v, &acc) in acc.iter().enumerate() {
                    let lanes = valid.saturating_sub(l * v).min(l);
                    if lanes == 0 {
                        break;
                    }
                    let o = out.as_mut_ptr().add(r * m + l * v);
                    let sum = match (accumulate, lanes == l) {
                        (false, _) => acc,
                        (true, true) => S::add(S::load(o), acc),
                        (true, false) => S::add(S::load_part(o, lanes), acc),
                    };
                    if lanes == l {
                        S::store(o, sum);
                    } else {
                        S::store_part(o, lanes, sum);
                    }
                }
            }
        }
    }
}

/// Entry points of one level: the shared kernels compiled with its target features.
macro_rules! level {
    ($module:ident, $simd:ty $(, $features:literal)?) => {
        pub(super) mod $module {
            use super::*;

            /// `outer_f32` on this level.
            ///
            /// # Safety
            ///
            /// The CPU must have this level's features.
            $(#[target_feature(enable = $features)])?
            pub(in crate::cpu) unsafe fn outer_f32(t: &OuterTile<'_>, out: &mut [f32]) {
                // SAFETY: forwarded from the caller.
                unsafe { super::outer_f32::<$simd>(t, out) }
            }

            /// `dot4` on this level.
            ///
            /// # Safety
            ///
            /// The CPU must have this level's features.
            $(#[target_feature(enable = $features)])?
            pub(in crate::cpu) unsafe fn dot4<T: Element>(
                w: &[T],
                k: usize,
                rows: usize,
                x: &[f32],
                dots: &mut [f32; 4],
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { super::dot4::<$simd, T>(w, k, rows, x, dots) }
            }

            /// `dequantize_i4_group` on this level.
            ///
            /// # Safety
            ///
            /// The CPU must have this level's features.
            $(#[target_feature(enable = $features)])?
            pub(in crate::cpu) unsafe fn dequantize_i4_group(
                q: &[u8],
                scale: f32,
                out: &mut [f32; INT4_GROUP],
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { super::dequantize_i4_group::<$simd>(q, scale, out) }
            }

            /// `dot4_i4` on this level.
            ///
            /// # Safety
            ///
            /// The CPU must have this level's features.
            $(#[target_feature(enable = $features)])?
            pub(in crate::cpu) unsafe fn dot4_i4(
                q: &[u8],
                scale: &[f32],
                groups: usize,
                rows: usize,
                x: &[f32],
                dots: &mut [f32; 4],
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { super::dot4_i4::<$simd>(q, scale, groups, rows, x, dots) }
            }
        }
    };
}

level!(portable, Portable);
#[cfg(target_arch = "x86_64")]
level!(avx2, Avx2, "avx2,fma");
#[cfg(target_arch = "x86_64")]
level!(avx512, Avx512, "avx512f,avx512bw,avx512vl");
