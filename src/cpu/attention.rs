//! Attention in host memory for CPU backends with host weights: scores, soft-capping,
//! the mask, an f32 softmax and the value product, in parallel over heads and query
//! blocks, with both products on the f32 outer-product tile of the kernel level.
//!
//! Each task holds the scores of one block of query rows against every key (`QUERY_BLOCK`
//! rows x the key count), so memory grows with the keys, not with their square: 48 rows
//! against SigLIP's 4096 tokens at 896 px are 768 KiB per core. Softmax rows are whole,
//! so it is the plain two-pass softmax, not an online one, and needs no rescaling.

use rayon::prelude::*;

use super::isa::Isa;
use super::packed_kv::PackedKv;
use super::parallel::min_items;
use super::products::{Columns, outer_block, pack_rows};

/// Query rows per task (a multiple of the tile's 6 rows).
const QUERY_BLOCK: usize = 48;
/// Keys per k block of the value product: a 6-row strip of probabilities and a packed
/// group of values stay in L1 and L2.
const KEY_BLOCK: usize = 512;

/// The shape of one call. `q` is `[batch, heads, rows, d]`, `k` and `v` are `[batch,
/// heads, keys, d]` (heads sharing a key/value head are folded into `rows`), the mask
/// `[batch, mask_rows, keys]`, `true` where a key is hidden; query row `r` uses mask row
/// `r % mask_rows` of its batch row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub rows: usize,
    pub keys: usize,
    pub d: usize,
    pub mask_rows: usize,
}

/// `softmax(softcap(scale · q kᵀ) + mask) v` per head, `[batch, heads, rows, d]`, at
/// kernel level `isa`. A row whose keys are all hidden gives zeros.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[bool]>,
    shape: AttentionShape,
    scale: f32,
    softcap: Option<f32>,
) -> Vec<f32> {
    let AttentionShape {
        batch,
        heads,
        rows,
        keys,
        d,
        ..
    } = shape;
    let n_heads = batch * heads;
    assert_eq!(q.len(), n_heads * rows * d, "query size");
    assert_eq!(k.len(), n_heads * keys * d, "key size");
    assert_eq!(v.len(), k.len(), "value size");
    check_mask(mask, shape);
    let lanes = isa.lanes();
    // Keys packed as the operand of q kᵀ, values as the operand of p v, once per head.
    let packed: Vec<(Vec<f32>, Vec<f32>)> = (0..n_heads)
        .into_par_iter()
        .with_min_len(min_items(2 * keys * d))
        .map(|h| {
            let range = h * keys * d..(h + 1) * keys * d;
            (
                pack_rows(&k[range.clone()], keys, d, lanes),
                pack_columns(&v[range], keys, d, lanes),
            )
        })
        .collect();
    let heads: Vec<(&[f32], &[f32])> = packed
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    attend(isa, q, &heads, keys, mask, shape, scale, softcap)
}

/// [`attention`] against the first `shape.keys` positions of a cache whose keys and
/// values are already packed (`shape.heads` key/value heads per batch row), at the
/// cache's kernel level.
pub(crate) fn cached_attention(
    q: &[f32],
    cache: &PackedKv,
    mask: Option<&[bool]>,
    shape: AttentionShape,
    scale: f32,
    softcap: Option<f32>,
) -> Vec<f32> {
    let n_heads = shape.batch * shape.heads;
    assert!(
        n_heads == cache.heads() && shape.d == cache.d() && shape.keys <= cache.capacity(),
        "cache shape"
    );
    assert_eq!(q.len(), n_heads * shape.rows * shape.d, "query size");
    check_mask(mask, shape);
    let heads: Vec<(&[f32], &[f32])> = (0..n_heads)
        .map(|h| (cache.keys(h), cache.values(h)))
        .collect();
    let stride = cache.capacity();
    attend(cache.isa(), q, &heads, stride, mask, shape, scale, softcap)
}

fn check_mask(mask: Option<&[bool]>, s: AttentionShape) {
    if let Some(m) = mask {
        assert!(
            s.mask_rows > 0 && m.len() == s.batch * s.mask_rows * s.keys,
            "mask size"
        );
    }
}

/// Attention of every head's query rows against its packed keys and values (`heads`,
/// one pair per batch row and key/value head); `value_stride` is the key count the
/// values were packed for (their room, for a cache).
#[allow(clippy::too_many_arguments)]
fn attend(
    isa: Isa,
    q: &[f32],
    heads: &[(&[f32], &[f32])],
    value_stride: usize,
    mask: Option<&[bool]>,
    shape: AttentionShape,
    scale: f32,
    softcap: Option<f32>,
) -> Vec<f32> {
    let AttentionShape {
        batch,
        heads: kv_heads,
        rows,
        keys,
        d,
        mask_rows,
    } = shape;
    let mut out = vec![0f32; q.len()];
    if out.is_empty() {
        return out;
    }
    // Enough tasks for every core also when there are few rows (decode steps).
    let threads = rayon::current_num_threads().max(1);
    let block = (batch * kv_heads * rows)
        .div_ceil(4 * threads)
        .next_multiple_of(6)
        .clamp(6, QUERY_BLOCK);
    // q kᵀ and p v: two multiply-adds per query row, key and column.
    let row_work = 2 * keys * d;
    out.par_chunks_mut(rows * d)
        .zip(heads)
        .enumerate()
        .with_min_len(min_items(rows * row_work))
        .for_each(|(h, (out, &(pk, pv)))| {
            let mask = mask.map(|m| &m[(h / kv_heads) * mask_rows * keys..][..mask_rows * keys]);
            let blocks = out.par_chunks_mut(block * d).enumerate();
            blocks
                .with_min_len(min_items(block * row_work))
                .for_each_init(Vec::new, |scores, (b, out)| {
                    let r0 = b * block;
                    let n = out.len() / d;
                    let q = &q[(h * rows + r0) * d..][..n * d];
                    let task = Block {
                        isa,
                        keys,
                        value_stride,
                        d,
                        scale,
                        softcap,
                    };
                    task.run(q, pk, pv, r0, mask.map(|m| (m, mask_rows)), scores, out);
                });
        });
    out
}

/// `[keys, d]` packed `[d / lanes][keys][lanes]` (columns past `d` zero): the operand
/// of the value product, one vector load being `lanes` columns of one key.
fn pack_columns(v: &[f32], keys: usize, d: usize, lanes: usize) -> Vec<f32> {
    let groups = d.div_ceil(lanes);
    let mut packed = vec![0f32; groups * keys * lanes];
    for (g, dst) in packed.chunks_mut(keys * lanes).enumerate() {
        let (c0, width) = (g * lanes, lanes.min(d - g * lanes));
        for (key, dst) in dst.chunks_mut(lanes).enumerate() {
            dst[..width].copy_from_slice(&v[key * d + c0..][..width]);
        }
    }
    packed
}

/// One task's constants.
struct Block {
    isa: Isa,
    keys: usize,
    /// The key count the values were packed for.
    value_stride: usize,
    d: usize,
    scale: f32,
    softcap: Option<f32>,
}

impl Block {
    /// Attention of the `out.len() / d` query rows `q` (starting at row `r0` of their
    /// head) against one head's packed keys `pk` and values `pv`, into `out`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        q: &[f32],
        pk: &[f32],
        pv: &[f32],
        r0: usize,
        mask: Option<(&[bool], usize)>,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let (isa, keys, d) = (self.isa, self.keys, self.d);
        let n = out.len() / d;
        scores.clear();
        scores.resize(n * keys, 0.0);
        // Scores: query rows as the tile's weight rows, keys as its packed operand.
        let all_of_d = Columns { k: d, c0: 0, nc: d };
        outer_block(isa, pk, keys, all_of_d, q, d, n, scores);
        let mut sums = vec![0f32; n];
        for (r, (row, sum)) in scores.chunks_mut(keys).zip(&mut sums).enumerate() {
            let hidden = mask.map(|(m, mask_rows)| &m[((r0 + r) % mask_rows) * keys..][..keys]);
            *sum = softmax_row(isa, row, hidden, self.scale, self.softcap);
        }
        // Values: probability rows as the tile's weight rows, value columns as its
        // packed operand, in key blocks added up in `out`.
        for k0 in (0..keys).step_by(KEY_BLOCK) {
            let kc = KEY_BLOCK.min(keys - k0);
            let cols = Columns {
                k: self.value_stride,
                c0: k0,
                nc: kc,
            };
            outer_block(isa, pv, d, cols, &scores[k0..], keys, n, out);
        }
        for (row, &sum) in out.chunks_mut(d).zip(&sums) {
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Scores to unnormalised probabilities in place (`exp(s - max)`, hidden keys 0);
/// returns their sum (0 when every key is hidden).
fn softmax_row(
    isa: Isa,
    row: &mut [f32],
    hidden: Option<&[bool]>,
    scale: f32,
    softcap: Option<f32>,
) -> f32 {
    match isa {
        // SAFETY: a level is only chosen when the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { softmax_avx512(row, hidden, scale, softcap) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { softmax_avx2(row, hidden, scale, softcap) },
        Isa::Portable => softmax_body(row, hidden, scale, softcap),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(r: &mut [f32], h: Option<&[bool]>, s: f32, c: Option<f32>) -> f32 {
    softmax_body(r, h, s, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(r: &mut [f32], h: Option<&[bool]>, s: f32, c: Option<f32>) -> f32 {
    softmax_body(r, h, s, c)
}

/// Scaling, soft-capping (`cap · tanh(s / cap)`, as Gemma 2 applies it before the mask),
/// then the softmax numerator. `exp` and `tanh` are libm's (half an ulp): the
/// vectorised polynomial of the GELU (one ulp) moved f32 parity on the fixtures past
/// 1e-4, and these are a small part of the prefill.
#[inline(always)]
fn softmax_body(row: &mut [f32], hidden: Option<&[bool]>, scale: f32, softcap: Option<f32>) -> f32 {
    match softcap {
        Some(cap) => row
            .iter_mut()
            .for_each(|x| *x = cap * (*x * scale / cap).tanh()),
        None => row.iter_mut().for_each(|x| *x *= scale),
    }
    if let Some(hidden) = hidden {
        row.iter_mut()
            .zip(hidden)
            .for_each(|(x, &h)| *x = if h { f32::NEG_INFINITY } else { *x });
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return 0.0;
    }
    // exp(-inf) is 0: hidden keys drop out.
    row.iter_mut().for_each(|x| *x = (*x - max).exp());
    row.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// f64 attention on the same operands.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[bool]>,
        s: AttentionShape,
        scale: f64,
        softcap: Option<f64>,
    ) -> Vec<f64> {
        let mut out = vec![0f64; q.len()];
        for h in 0..s.batch * s.heads {
            let b = h / s.heads;
            for r in 0..s.rows {
                let qr = &q[(h * s.rows + r) * s.d..][..s.d];
                let hidden = |j: usize| {
                    mask.is_some_and(|m| m[(b * s.mask_rows + r % s.mask_rows) * s.keys + j])
                };
                let scores: Vec<f64> = (0..s.keys)
                    .map(|j| {
                        let kr = &k[(h * s.keys + j) * s.d..][..s.d];
                        let dot: f64 = qr
                            .iter()
                            .zip(kr)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum();
                        let x = dot * scale;
                        let x = softcap.map_or(x, |c| c * (x / c).tanh());
                        if hidden(j) { f64::NEG_INFINITY } else { x }
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let p: Vec<f64> = scores.iter().map(|&x| (x - max).exp()).collect();
                let sum: f64 = p.iter().sum();
                for c in 0..s.d {
                    let o: f64 = (0..s.keys)
                        .map(|j| p[j] * f64::from(v[(h * s.keys + j) * s.d + c]))
                        .sum();
                    out[(h * s.rows + r) * s.d + c] = o / sum;
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_f64_at_every_level() {
        let levels: Vec<Isa> = Isa::all()
            .iter()
            .map(|&(_, l)| l)
            .filter(|&l| l <= Isa::best())
            .collect();
        // Remainders everywhere: d not a multiple of 8 or 16, keys past one key block
        // and not a multiple of the lanes, query rows not a multiple of 6 or of a block,
        // grouped heads folded into the rows (mask_rows < rows), one fully hidden row.
        let shapes = [
            (1, 1, 7, 5, 13, 7),
            (2, 3, 50, 37, 72, 25),
            (1, 2, 16, 600, 24, 8),
            (2, 1, 130, 70, 256, 65),
        ];
        for (batch, heads, rows, keys, d, mask_rows) in shapes {
            let s = AttentionShape {
                batch,
                heads,
                rows,
                keys,
                d,
                mask_rows,
            };
            let q = values(batch * heads * rows * d, 1);
            let k = values(batch * heads * keys * d, 2);
            let v = values(batch * heads * keys * d, 3);
            let mut mask: Vec<bool> = values(batch * mask_rows * keys, 4)
                .iter()
                .map(|&x| x > 0.3)
                .collect();
            mask[..keys].fill(true);
            for (scale, cap) in [(0.3f32, None), (2.5, Some(4.0f32))] {
                for m in [None, Some(mask.as_slice())] {
                    let want = reference(&q, &k, &v, m, s, f64::from(scale), cap.map(f64::from));
                    for &isa in &levels {
                        let plain = attention(isa, &q, &k, &v, m, s, scale, cap);
                        // The same keys and values written into a cache with room for
                        // more, after a stale earlier write (left in place).
                        let mut cache = PackedKv::new(isa, batch * heads, keys + 9, d);
                        cache.write(keys, 9, &values(batch * heads * 9 * d, 5), &{
                            values(batch * heads * 9 * d, 6)
                        });
                        cache.write(0, keys, &k, &v);
                        let cached = cached_attention(&q, &cache, m, s, scale, cap);
                        for (got, how) in [(plain, "packed per call"), (cached, "cached")] {
                            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    (f64::from(g) - w).abs() < 2e-5,
                                    "{isa:?} {how} {s:?} cap {cap:?} mask {}: [{i}] {g} vs {w}",
                                    m.is_some()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
