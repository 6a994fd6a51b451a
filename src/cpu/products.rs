//! The product drivers: weight rows split into blocks computed in parallel, k split into
//! blocks that stay in cache. Prompts run outer-product tiles over activations packed
//! once per product (`vdpbf16ps` for bf16 and int8 widened to bf16 with AVX-512 BF16;
//! f32 FMA at every other level, bf16 and int8 weights widened to f32 per k block);
//! decode steps (at most `STREAM_ROWS` activation rows) stream each weight row once.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::isa::Isa;
use super::kernels::{Element, OuterTile};
use super::memory::{from_bf16, to_bf16};
use super::parallel::min_items;
use super::quantize::{INT4_GROUP, dequantize_i4};

/// Output rows of `W` per parallel task: 64 rows of a 4096-wide k block of bf16 are
/// 512 KiB, which stays in a core's L2 while every activation strip streams past it.
const BLOCK_ROWS: usize = 64;
/// k block of the f32 outer-product kernel: a packed block of 268 rows is 0.5 MiB.
const F32_BLOCK_K: usize = 512;
/// Activation rows at or below this use the streaming path (decode steps).
pub(super) const STREAM_ROWS: usize = 4;

/// Run `task(r0, rows, scratch, out)` on all cores for each block of `BLOCK_ROWS` weight
/// rows (of `k` columns) starting at `r0`, `out` being the block's `[rows, m]` part of
/// the transposed output and `scratch` a per-thread buffer.
pub(super) fn row_blocks<S: Send>(
    out_t: &mut [f32],
    m: usize,
    k: usize,
    task: impl Fn(usize, usize, &mut Vec<S>, &mut [f32]) + Sync + Send,
) {
    out_t
        .par_chunks_mut(BLOCK_ROWS * m)
        .enumerate()
        .with_min_len(min_items(BLOCK_ROWS * m * k))
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
        .with_min_len(min_items(ROWS * n))
        .for_each(|(b, block)| {
            let rows = block.len() / n;
            transpose_into(&t[b * ROWS..], m, block, n, n, rows);
        });
    out
}

/// `dst[c * ds + r] = src[r * ss + c]` for `r < rows`, `c < cols`, in 16 x 16 tiles so
/// reads and writes both touch whole cache lines (a plain column walk over rows 64 KiB
/// apart aliases in L1 and was a tenth of the prefill).
pub(super) fn transpose_into<T: Copy>(
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

pub(super) fn round_to_bf16(isa: Isa, x: &[f32]) -> Vec<u16> {
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

/// `out_t = W · xᵀ` (`[n, m]`) for a few activation rows (decode), reading each weight
/// row once: bandwidth, not arithmetic, bounds it. bf16 and int8 weights are widened
/// in registers; the caller scales int8 rows.
pub(super) fn stream_product<T: Element + Sync>(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &[T],
    k: usize,
    out_t: &mut [f32],
) {
    row_blocks::<()>(out_t, m, k, |r0, rows, _, out| {
        let w = &w[r0 * k..(r0 + rows) * k];
        for (j4, out) in out.chunks_mut(4 * m).enumerate() {
            let rows = out.len() / m;
            let w = &w[j4 * 4 * k..(j4 * 4 + rows) * k];
            for i in 0..m {
                let mut dots = [0f32; 4];
                isa.dot4(w, k, rows, &x[i * k..(i + 1) * k], &mut dots);
                for (j, &d) in dots.iter().enumerate().take(rows) {
                    out[j * m + i] = d;
                }
            }
        }
    });
}

/// The grouped int4 product for a few activation rows (decode): `stream_product`'s
/// loop over `dot4_i4` (`vdpbf16ps` on bf16 activations with AVX-512 BF16), which
/// applies the group scales itself. Each activation row is padded with zeros to whole
/// groups.
#[allow(clippy::too_many_arguments)]
pub(super) fn stream_int4(
    isa: Isa,
    x: &[f32],
    m: usize,
    q: &[u8],
    scale: &[f32],
    groups: usize,
    k: usize,
    out_t: &mut [f32],
) {
    let padded = groups * INT4_GROUP;
    let mut xp = vec![0f32; m * padded];
    for (dst, src) in xp.chunks_mut(padded).zip(x.chunks(k)) {
        dst[..k].copy_from_slice(src);
    }
    // With AVX-512 BF16 the activations go in as bf16 (exact: already rounded).
    #[cfg(target_arch = "x86_64")]
    let xh: Vec<u16> = if isa == Isa::Avx512Bf16 {
        xp.iter().map(|&v| to_bf16(v)).collect()
    } else {
        Vec::new()
    };
    let row_bytes = groups * INT4_GROUP / 2;
    row_blocks::<()>(out_t, m, k, |r0, _, _, out| {
        for (j4, out) in out.chunks_mut(4 * m).enumerate() {
            let (r, rows) = (r0 + 4 * j4, out.len() / m);
            let q = &q[r * row_bytes..(r + rows) * row_bytes];
            let scale = &scale[r * groups..(r + rows) * groups];
            for i in 0..m {
                let mut dots = [0f32; 4];
                let x = i * padded..(i + 1) * padded;
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512Bf16 {
                    // SAFETY: the CPU has AVX-512 BF16 (a level is only chosen when it
                    // does); the kernel asserts its bounds.
                    unsafe {
                        avx512::dot4_i4_bf16(q, scale, groups, rows, &xh[x.clone()], &mut dots)
                    };
                } else {
                    isa.dot4_i4(q, scale, groups, rows, &xp[x.clone()], &mut dots);
                }
                #[cfg(not(target_arch = "x86_64"))]
                isa.dot4_i4(q, scale, groups, rows, &xp[x], &mut dots);
                for (j, &d) in dots.iter().enumerate().take(rows) {
                    out[j * m + i] = d;
                }
            }
        }
    });
}

/// Weight rows as a product reads them: f32 in place; bf16, int8 or grouped int4
/// widened to f32 (int4 with its scales) one k block of a task's rows at a time.
#[derive(Clone, Copy)]
pub(super) enum WeightRows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    Int8(&'a [i8]),
    Int4 {
        q: &'a [u8],
        scale: &'a [f32],
        groups: usize,
    },
}

/// Activations `[m, k]` packed `[m / lanes][k][lanes]` (rows past `m` zero): one vector
/// load is column `c` of `lanes` rows, the operand of the f32 outer-product tile.
pub(super) fn pack_rows(x: &[f32], m: usize, k: usize, lanes: usize) -> Vec<f32> {
    let mut packed = vec![0f32; m.div_ceil(lanes) * k * lanes];
    packed
        .par_chunks_mut(k * lanes)
        .enumerate()
        .with_min_len(min_items(k * lanes))
        .for_each(|(g, dst)| {
            let valid = lanes.min(m - g * lanes);
            transpose_into(&x[g * lanes * k..], k, dst, lanes, valid, k);
        });
    packed
}

/// `out_t = W · xᵀ` for many activation rows (prompts): the f32 tile over activations
/// packed once, or at the portable level the `gemm` crate (`gemm_product`).
pub(super) fn prompt_product(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRows<'_>,
    out_t: &mut [f32],
) {
    if isa == Isa::Portable {
        gemm_product(x, m, k, w, out_t);
    } else {
        let a = pack_rows(x, m, k, isa.lanes());
        packed_product(isa, &a, m, k, w, out_t);
    }
}

/// `out_t = W · aᵀ` (`[n, m]`) from activations packed by `pack_rows` at `isa`'s lanes:
/// each task's weight rows in k blocks of `F32_BLOCK_K` (widened once per block and
/// reused by every activation group), tiles of 6 weight rows by `isa.groups()`
/// activation groups.
fn packed_product(isa: Isa, a: &[f32], m: usize, k: usize, w: WeightRows<'_>, out_t: &mut [f32]) {
    row_blocks::<f32>(out_t, m, k, |r0, rows, scratch, out| {
        for k0 in (0..k).step_by(F32_BLOCK_K) {
            let kc = F32_BLOCK_K.min(k - k0);
            let (block, ldw) = weight_block(w, k, r0, rows, k0, kc, scratch);
            let cols = Columns { k, c0: k0, nc: kc };
            outer_block(isa, a, m, cols, block, ldw, rows, out);
        }
    });
}

/// Columns `c0..c0 + nc` of operands with `k` columns: one k block of a product.
#[derive(Clone, Copy)]
pub(super) struct Columns {
    pub k: usize,
    pub c0: usize,
    pub nc: usize,
}

/// `out[r * m + i] (+)= Σ_c w[r][c] · a[i][c]` over `cols` for `rows` rows of `w`
/// (`ldw` apart, `w[0]` being column `c0`) and all `m` rows of `a`, packed by
/// `pack_rows` at `isa`'s lanes: tiles of 6 rows by `isa.groups()` groups. The block
/// at column 0 stores, later blocks add.
#[allow(clippy::too_many_arguments)]
pub(super) fn outer_block(
    isa: Isa,
    a: &[f32],
    m: usize,
    cols: Columns,
    w: &[f32],
    ldw: usize,
    rows: usize,
    out: &mut [f32],
) {
    let (lanes, per_tile) = (isa.lanes(), isa.groups());
    let groups = m.div_ceil(lanes);
    for j0 in (0..rows).step_by(6) {
        for g0 in (0..groups).step_by(per_tile) {
            let tile = OuterTile {
                a,
                k: cols.k,
                g0,
                nv: per_tile.min(groups - g0),
                c0: cols.c0,
                nc: cols.nc,
                w: &w[j0 * ldw..],
                ldw,
                nr: 6.min(rows - j0),
                m,
                i0: g0 * lanes,
                accumulate: cols.c0 > 0,
            };
            isa.outer_f32(&tile, &mut out[j0 * m..]);
        }
    }
}

/// Columns `k0..k0 + kc` of weight rows `r0..r0 + rows` as f32, with their row
/// stride: f32 in place, other formats widened into `scratch` (`kc` apart).
fn weight_block<'a>(
    w: WeightRows<'a>,
    k: usize,
    r0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    scratch: &'a mut Vec<f32>,
) -> (&'a [f32], usize) {
    match w {
        WeightRows::F32(w) => (&w[r0 * k + k0..], k),
        WeightRows::Bf16(h) => {
            widen_block(&h[r0 * k..], k, rows, k0, kc, scratch, from_bf16);
            (scratch, kc)
        }
        WeightRows::Int8(q) => {
            widen_block(&q[r0 * k..], k, rows, k0, kc, scratch, f32::from);
            (scratch, kc)
        }
        WeightRows::Int4 { q, scale, groups } => {
            let bytes = groups * INT4_GROUP / 2;
            scratch.clear();
            for r in r0..r0 + rows {
                let (q, scale) = (&q[r * bytes..], &scale[r * groups..]);
                dequantize_i4(q, scale, k0, kc, scratch);
            }
            (scratch, kc)
        }
    }
}

/// `out_t = W · xᵀ` (`[n, m]`, `x` `[m, k]` unpacked) through the `gemm` crate, which
/// picks its own SIMD at run time as burn's CPU backends do: the portable level's
/// prompt products, so a CPU without this crate's levels (ARM, x86 without AVX2) is
/// no slower than burn. f32 weights go in one parallel call; other formats are
/// widened a block at a time per task.
pub(super) fn gemm_product(x: &[f32], m: usize, k: usize, w: WeightRows<'_>, out_t: &mut [f32]) {
    let n = out_t.len() / m.max(1);
    // SAFETY (both calls): `dst` is `[rows, m]` (row stride m), `lhs` `rows` weight rows
    // of `kc` values `ldw` apart, `rhs` columns `k0..k0 + kc` of `x` read as a `[kc, m]`
    // matrix (row stride 1, column stride k); all inside their slices.
    if let WeightRows::F32(w) = w {
        let threads = rayon::current_num_threads();
        unsafe {
            gemm::gemm(
                n,
                m,
                k,
                out_t.as_mut_ptr(),
                1,
                m as isize,
                false,
                w.as_ptr(),
                1,
                k as isize,
                x.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
        return;
    }
    row_blocks::<f32>(out_t, m, k, |r0, rows, scratch, out| {
        for k0 in (0..k).step_by(F32_BLOCK_K) {
            let kc = F32_BLOCK_K.min(k - k0);
            let (block, ldw) = weight_block(w, k, r0, rows, k0, kc, scratch);
            assert!(block.len() >= (rows - 1) * ldw + kc && x.len() >= (m - 1) * k + k0 + kc);
            unsafe {
                gemm::gemm(
                    rows,
                    m,
                    kc,
                    out.as_mut_ptr(),
                    1,
                    m as isize,
                    k0 > 0,
                    block.as_ptr(),
                    1,
                    ldw as isize,
                    x.as_ptr().add(k0),
                    k as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    });
}

/// Columns `k0..k0 + kc` of `rows` rows of `w` (`k` apart) widened into `out`, `kc` apart.
fn widen_block<T: Copy>(
    w: &[T],
    k: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    out: &mut Vec<f32>,
    widen: impl Fn(T) -> f32,
) {
    out.clear();
    for r in 0..rows {
        out.extend(w[r * k + k0..r * k + k0 + kc].iter().map(|&v| widen(v)));
    }
}
