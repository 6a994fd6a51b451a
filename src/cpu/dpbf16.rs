//! The bf16 and int8 products at `Isa::Avx512Bf16`: activations rounded to bf16 once
//! per product and multiplied with `vdpbf16ps`, int8 weights widened to bf16 (exact)
//! per k block. Callers build an `Operand` only at that level, which the unsafe kernel
//! calls here rely on.

use rayon::prelude::*;

use super::avx512;
use super::isa::Isa;
use super::parallel::min_items;
use super::products::{STREAM_ROWS, round_to_bf16, transpose_into};

/// Length of the k blocks the strip kernels split products into, so an activation
/// strip of 4 rows (32 KiB of bf16) stays in L1.
const BLOCK_K: usize = 4096;
/// k block of the packed (outer-product) kernel; see `Operand::block_k`.
const PACKED_BLOCK_K: usize = 1024;

/// Activations rounded to bf16 once per product, in the layout the kernel reads.
pub(super) enum Operand {
    /// Row-major `[m, k]`, for the strip kernels.
    Rows(Vec<u16>),
    /// Groups of 16 rows with bf16 pairs interleaved, `[m/16][k/2][16]` (rows past `m`
    /// zero): one 512-bit load is pair `p` of 16 rows, the operand of `vdpbf16ps`
    /// against a broadcast weight pair. Needs AVX-512 BF16 and an even `k`; used for
    /// more than `STREAM_ROWS` rows (fewer rows would leave the broadcasts the bottleneck).
    Packed(Vec<u32>),
}

impl Operand {
    pub(super) fn new(x: &[f32], m: usize, k: usize) -> Self {
        if k.is_multiple_of(2) && m > STREAM_ROWS {
            let pairs = k / 2;
            // Round row-major (vectorised), then view each row as `pairs` u32 bf16
            // pairs and transpose every group of 16 rows to `[pairs][16]`.
            let rows = round_to_bf16(Isa::Avx512Bf16, x);
            let rows: Vec<u32> = rows
                .chunks_exact(2)
                .map(|p| u32::from(p[0]) | u32::from(p[1]) << 16)
                .collect();
            let mut packed = vec![0u32; m.div_ceil(16) * pairs * 16];
            packed
                .par_chunks_mut(pairs * 16)
                .enumerate()
                .with_min_len(min_items(pairs * 16))
                .for_each(|(g, dst)| {
                    let valid = 16.min(m - g * 16);
                    transpose_into(&rows[g * 16 * pairs..], pairs, dst, 16, valid, pairs);
                });
            return Operand::Packed(packed);
        }
        Operand::Rows(round_to_bf16(Isa::Avx512Bf16, x))
    }

    /// Length of the k blocks a product is split into: the packed operand's block of
    /// all rows (`m * block * 2` bytes, 0.5 MiB for 268 rows) stays in L2 while six
    /// weight rows stream from memory once; the strip kernels keep a 4-row strip in L1.
    fn block_k(&self) -> usize {
        match self {
            Operand::Rows(..) => BLOCK_K,
            Operand::Packed(_) => PACKED_BLOCK_K,
        }
    }

    /// `out[j * m + i] += a[i][k0..k0 + kc] · w[j][..kc]` for the weight rows `w`
    /// (`ldw` apart) of one task; the first k block (`k0 == 0`) stores instead of
    /// adding, so fresh output pages are never read.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        m: usize,
        k: usize,
        w: &[u16],
        ldw: usize,
        k0: usize,
        kc: usize,
        out: &mut [f32],
    ) {
        match self {
            Operand::Rows(a) => strips(&a[k0..], k, m, w, ldw, kc, out),
            Operand::Packed(a) => {
                let rows = out.len() / m;
                let (groups, pairs) = (m.div_ceil(16), k / 2);
                for j0 in (0..rows).step_by(6) {
                    for g0 in (0..groups).step_by(4) {
                        // SAFETY: an `Operand` is only built at `Isa::Avx512Bf16`;
                        // the bounds of every operand are asserted inside.
                        unsafe {
                            avx512::outer_bf16(
                                a,
                                pairs,
                                g0,
                                4.min(groups - g0),
                                k0 / 2,
                                kc / 2,
                                &w[j0 * ldw..],
                                ldw,
                                6.min(rows - j0),
                                &mut out[j0 * m..],
                                m,
                                g0 * 16,
                                k0 > 0,
                            )
                        }
                    }
                }
            }
        }
    }
}

/// The bf16 product of one task's weight rows, read in place.
pub(super) fn bf16_block(a: &Operand, m: usize, w: &[u16], k: usize, out: &mut [f32]) {
    let block = a.block_k();
    for k0 in (0..k).step_by(block) {
        a.product(m, k, &w[k0..], k, k0, block.min(k - k0), out);
    }
}

/// The int8 product for many activation rows: each k block of the weight rows is
/// widened once to bf16 (exact for integers up to 256) and reused by every strip.
pub(super) fn int8_block(
    a: &Operand,
    m: usize,
    q: &[i8],
    k: usize,
    scratch: &mut Vec<u16>,
    out: &mut [f32],
) {
    let rows = out.len() / m;
    let block = a.block_k();
    for k0 in (0..k).step_by(block) {
        let kc = block.min(k - k0);
        scratch.resize(rows * kc, 0);
        for (dst, src) in scratch.chunks_mut(kc).zip(q.chunks(k)) {
            let src = &src[k0..k0 + kc];
            // SAFETY: an `Operand` is only built at `Isa::Avx512Bf16` (see the module).
            unsafe { avx512::widen_i8(src, dst) }
        }
        a.product(m, k, scratch, kc, k0, kc, out);
    }
}

/// Every 4x4 tile of `out[j * m + i] += a[i][..kc] · w[j][..kc]`, rows of `a` and `w`
/// `lda` and `ldw` apart.
#[allow(clippy::too_many_arguments)]
fn strips(a: &[u16], lda: usize, m: usize, w: &[u16], ldw: usize, kc: usize, out: &mut [f32]) {
    let rows = out.len() / m;
    for i0 in (0..m).step_by(4) {
        let mr = 4.min(m - i0);
        for j0 in (0..rows).step_by(4) {
            let nr = 4.min(rows - j0);
            let mut acc = [[0f32; 4]; 4];
            let a_rows = &a[i0 * lda..];
            let w_rows = &w[j0 * ldw..];
            // SAFETY: as in `int8_block`; the tile reads `mr` rows of `a` and `nr`
            // rows of `w`, `kc` values each, bounds asserted inside.
            unsafe { avx512::tile_bf16(a_rows, lda, mr, w_rows, ldw, nr, kc, &mut acc) }
            for (i, acc) in acc.iter().enumerate().take(mr) {
                for (j, &v) in acc.iter().enumerate().take(nr) {
                    out[(j0 + j) * m + i0 + i] += v;
                }
            }
        }
    }
}
