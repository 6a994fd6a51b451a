//! The product drivers: weight rows split into blocks computed in parallel, k split into
//! blocks that stay in cache. Prompts run outer-product tiles over activations packed
//! once per product (`vdpbf16ps` for bf16 and int8 widened to bf16, FMA for f32); decode
//! steps (at most `STREAM_ROWS` activation rows) stream each weight row once.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::isa::Isa;
use super::memory::{from_bf16, to_bf16};
use super::portable;

/// Output rows of `W` per parallel task: 64 rows of a 4096-wide k block of bf16 are
/// 512 KiB, which stays in a core's L2 while every activation strip streams past it.
const BLOCK_ROWS: usize = 64;
/// Length of the k blocks products are split into, so an activation strip of 4 rows
/// (32 KiB of bf16) stays in L1.
const BLOCK_K: usize = 4096;
/// k block of the packed (outer-product) kernel; see `Operand::block_k`.
#[cfg(target_arch = "x86_64")]
const PACKED_BLOCK_K: usize = 1024;
/// k block of the f32 outer-product kernel: a packed block of 268 rows is 0.5 MiB.
#[cfg(target_arch = "x86_64")]
const F32_BLOCK_K: usize = 512;
/// Activation rows at or below this use the streaming path (decode steps).
pub(super) const STREAM_ROWS: usize = 4;

/// Run `task(r0, rows, scratch, out)` on all cores for each block of `BLOCK_ROWS` weight
/// rows starting at `r0`, `out` being the block's `[rows, m]` part of the transposed
/// output and `scratch` a per-thread buffer.
pub(super) fn row_blocks(
    out_t: &mut [f32],
    m: usize,
    task: impl Fn(usize, usize, &mut Vec<u16>, &mut [f32]) + Sync + Send,
) {
    out_t
        .par_chunks_mut(BLOCK_ROWS * m)
        .enumerate()
        .for_each_init(Vec::new, |scratch, (b, out)| {
            task(b * BLOCK_ROWS, out.len() / m, scratch, out)
        });
}

/// `[n, m]` to `[m, n]`, 16 output rows per task so each read of `t` is one cache
/// line and the writes are 16 sequential streams.
pub(super) fn transpose(t: &[f32], n: usize, m: usize) -> Vec<f32> {
    const ROWS: usize = 16;
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(ROWS * n)
        .enumerate()
        .for_each(|(b, block)| {
            let rows = block.len() / n;
            transpose_into(&t[b * ROWS..], m, block, n, n, rows);
        });
    out
}

/// `dst[c * ds + r] = src[r * ss + c]` for `r < rows`, `c < cols`, in 16 x 16 tiles so
/// reads and writes both touch whole cache lines (a plain column walk over rows 64 KiB
/// apart aliases in L1 and was a tenth of the prefill).
fn transpose_into<T: Copy>(
    src: &[T],
    ss: usize,
    dst: &mut [T],
    ds: usize,
    rows: usize,
    cols: usize,
) {
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let dst = &mut dst[c * ds + r0..c * ds + r1];
                for (d, r) in dst.iter_mut().zip(r0..r1) {
                    *d = src[r * ss + c];
                }
            }
        }
    }
}

fn round_to_bf16(isa: Isa, x: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; x.len()];
    out.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(o, x)| match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512Bf16` is only chosen when the CPU has these features.
            Isa::Avx512Bf16 => unsafe { avx512::round_to_bf16(x, o) },
            _ => o.iter_mut().zip(x).for_each(|(o, &v)| *o = to_bf16(v)),
        });
    out
}

/// `x` rounded to bf16 and widened back: the activations every bf16 and int8 product
/// multiplies, for the int8 decode kernel, which reads f32.
pub(super) fn bf16_values(isa: Isa, x: &[f32]) -> Vec<f32> {
    round_to_bf16(isa, x).into_iter().map(from_bf16).collect()
}

/// Activations rounded to bf16 once per product, in the layout the kernel reads.
pub(super) enum Operand {
    /// Row-major `[m, k]`, for the strip kernels.
    Rows(Isa, Vec<u16>),
    /// Groups of 16 rows with bf16 pairs interleaved, `[m/16][k/2][16]` (rows past `m`
    /// zero): one 512-bit load is pair `p` of 16 rows, the operand of `vdpbf16ps`
    /// against a broadcast weight pair. Needs AVX-512 BF16 and an even `k`; used for
    /// more than `STREAM_ROWS` rows (fewer rows would leave the broadcasts the bottleneck).
    #[cfg(target_arch = "x86_64")]
    Packed(Vec<u32>),
}

impl Operand {
    pub(super) fn new(isa: Isa, x: &[f32], m: usize, k: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Bf16 && k.is_multiple_of(2) && m > STREAM_ROWS {
            let pairs = k / 2;
            // Round row-major (vectorised), then view each row as `pairs` u32 bf16
            // pairs and transpose every group of 16 rows to `[pairs][16]`.
            let rows = round_to_bf16(isa, x);
            let rows: Vec<u32> = rows
                .chunks_exact(2)
                .map(|p| u32::from(p[0]) | u32::from(p[1]) << 16)
                .collect();
            let mut packed = vec![0u32; m.div_ceil(16) * pairs * 16];
            packed
                .par_chunks_mut(pairs * 16)
                .enumerate()
                .for_each(|(g, dst)| {
                    let valid = 16.min(m - g * 16);
                    transpose_into(&rows[g * 16 * pairs..], pairs, dst, 16, valid, pairs);
                });
            return Operand::Packed(packed);
        }
        Operand::Rows(isa, round_to_bf16(isa, x))
    }

    /// Length of the k blocks a product is split into: the packed operand's block of
    /// all rows (`m * block * 2` bytes, 0.5 MiB for 268 rows) stays in L2 while six
    /// weight rows stream from memory once; the strip kernels keep a 4-row strip in L1.
    fn block_k(&self) -> usize {
        match self {
            Operand::Rows(..) => BLOCK_K,
            #[cfg(target_arch = "x86_64")]
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
            Operand::Rows(isa, a) => strips(*isa, &a[k0..], k, m, w, ldw, kc, out),
            #[cfg(target_arch = "x86_64")]
            Operand::Packed(a) => {
                let rows = out.len() / m;
                let (groups, pairs) = (m.div_ceil(16), k / 2);
                for j0 in (0..rows).step_by(6) {
                    for g0 in (0..groups).step_by(4) {
                        // SAFETY: `Packed` is only built when the CPU has AVX-512 BF16;
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
    isa: Isa,
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
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: features checked by `Isa::detect`.
                Isa::Avx512Bf16 => unsafe { avx512::widen_i8(src, dst) },
                _ => {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = to_bf16(f32::from(s));
                    }
                }
            }
        }
        a.product(m, k, scratch, kc, k0, kc, out);
    }
}

/// Every 4x4 tile of `out[j * m + i] += a[i][..kc] · w[j][..kc]`, rows of `a` and `w`
/// `lda` and `ldw` apart.
#[allow(clippy::too_many_arguments)]
fn strips(
    isa: Isa,
    a: &[u16],
    lda: usize,
    m: usize,
    w: &[u16],
    ldw: usize,
    kc: usize,
    out: &mut [f32],
) {
    let rows = out.len() / m;
    for i0 in (0..m).step_by(4) {
        let mr = 4.min(m - i0);
        for j0 in (0..rows).step_by(4) {
            let nr = 4.min(rows - j0);
            let mut acc = [[0f32; 4]; 4];
            let a_rows = &a[i0 * lda..];
            let w_rows = &w[j0 * ldw..];
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: features checked by `Isa::detect`; the tile reads `mr` rows of
                // `a` and `nr` rows of `w`, `kc` values each, bounds asserted inside.
                Isa::Avx512Bf16 => unsafe {
                    avx512::tile_bf16(a_rows, lda, mr, w_rows, ldw, nr, kc, &mut acc)
                },
                _ => portable::tile_bf16(a_rows, lda, mr, w_rows, ldw, nr, kc, &mut acc),
            }
            for (i, acc) in acc.iter().enumerate().take(mr) {
                for (j, &v) in acc.iter().enumerate().take(nr) {
                    out[(j0 + j) * m + i0 + i] += v;
                }
            }
        }
    }
}

/// The int8 product for a few f32 activation rows (decode), reading each weight byte
/// once: bandwidth, not arithmetic, bounds it.
pub(super) fn int8_stream(
    isa: Isa,
    x: &[f32],
    m: usize,
    q: &[i8],
    scale: &[f32],
    k: usize,
    out: &mut [f32],
) {
    stream(x, m, q, k, out, |w, rows, x, dots| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: features checked by `Isa::detect`; `w` holds `rows` rows of `k`
        // values and `x` holds `k`.
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { avx512::dot4_i8_f32(w, k, rows, x, dots) },
        Isa::Portable => portable::dot4_i8_f32(w, k, x, dots),
    });
    for (out, s) in out.chunks_mut(m).zip(scale) {
        out.iter_mut().for_each(|v| *v *= s);
    }
}

/// `out[j * m + i] = dot4(w rows j..j + 4, x row i)` for weight rows `w` `[rows, k]`,
/// four weight rows per pass so each activation load serves four products.
fn stream<T>(
    x: &[f32],
    m: usize,
    w: &[T],
    k: usize,
    out: &mut [f32],
    dot4: impl Fn(&[T], usize, &[f32], &mut [f32; 4]),
) {
    for (j4, out) in out.chunks_mut(4 * m).enumerate() {
        let rows = out.len() / m;
        let w = &w[j4 * 4 * k..(j4 * 4 + rows) * k];
        for i in 0..m {
            let mut dots = [0f32; 4];
            dot4(w, rows, &x[i * k..(i + 1) * k], &mut dots);
            for (j, &d) in dots.iter().enumerate().take(rows) {
                out[j * m + i] = d;
            }
        }
    }
}

/// The f32 product `out_t = W · xᵀ` (`[n, m]`), exact f32 arithmetic: an AVX-512
/// outer-product kernel over a packed operand for prompts, streaming for decode steps.
pub(super) fn f32_product(isa: Isa, x: &[f32], m: usize, w: &[f32], k: usize, out_t: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && m > STREAM_ROWS {
        // `[m/16][k][16]`: one 512-bit load is column `c` of 16 activation rows.
        let groups = m.div_ceil(16);
        let mut packed = vec![0f32; groups * k * 16];
        packed
            .par_chunks_mut(k * 16)
            .enumerate()
            .for_each(|(g, dst)| {
                transpose_into(&x[g * 16 * k..], k, dst, 16, 16.min(m - g * 16), k)
            });
        row_blocks(out_t, m, |r0, rows, _, out| {
            let w = &w[r0 * k..(r0 + rows) * k];
            for k0 in (0..k).step_by(F32_BLOCK_K) {
                let kc = F32_BLOCK_K.min(k - k0);
                for j0 in (0..rows).step_by(6) {
                    for g0 in (0..groups).step_by(4) {
                        // SAFETY: `isa` is not portable, so the CPU has AVX-512F; the
                        // bounds of every operand are asserted inside.
                        unsafe {
                            avx512::outer_f32(
                                &packed,
                                k,
                                g0,
                                4.min(groups - g0),
                                k0,
                                kc,
                                &w[j0 * k + k0..],
                                k,
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
        });
        return;
    }
    row_blocks(out_t, m, |r0, rows, _, out| {
        let w = &w[r0 * k..(r0 + rows) * k];
        stream(x, m, w, k, out, |w, rows, x, dots| match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F; `w` holds `rows` rows of `k`, `x` `k`.
            Isa::Avx512 | Isa::Avx512Bf16 => unsafe { avx512::dot4_f32(w, k, rows, x, dots) },
            Isa::Portable => portable::dot4_f32(w, k, x, dots),
        });
    });
}
