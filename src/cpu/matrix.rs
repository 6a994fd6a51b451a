//! `HostMatrix`: a weight matrix's values in host memory (owned, or borrowed from the
//! checkpoint's memory map) and the choice of product kernel by format and row count.

use std::sync::Arc;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::dpbf16::{Operand, bf16_block, int8_block};
use super::isa::Isa;
use super::memory::{FileBytes, from_bf16, prefer_huge_pages};
use super::parallel::min_items;
use super::products::{
    STREAM_ROWS, WeightRows, bf16_values, prompt_product, row_blocks, stream_int4, stream_product,
    transpose,
};
use super::quantize::{INT4_GROUP, dequantize_i4, quantize_row, quantize_row_i4};

/// Plain values (bf16 bits or f32), owned or borrowed from a checkpoint's bytes (a
/// memory map or embedded weights: zero-copy load).
enum Values<T> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<FileBytes>,
        offset: usize,
        len: usize,
    },
}

impl<T: Copy> Values<T> {
    /// Borrow `len` little-endian values at byte `offset` of a mapping, or `None` when
    /// they are not aligned for `T` (or the host is big-endian) and must be copied.
    fn mapped(map: &Arc<FileBytes>, offset: usize, len: usize) -> Option<Self> {
        let aligned = (map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>());
        let fits = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|bytes| offset.checked_add(bytes))
            .is_some_and(|end| end <= map.len());
        (cfg!(target_endian = "little") && aligned && fits).then(|| Values::Mapped {
            map: Arc::clone(map),
            offset,
            len,
        })
    }

    fn as_slice(&self) -> &[T] {
        match self {
            Values::Owned(v) => v,
            // SAFETY: `offset` is aligned for `T` and `len` values fit inside the
            // mapping (checked in `Values::mapped`); `T` is u16 or f32, for which
            // every bit pattern is valid; the mapping is read-only and lives as long
            // as `self`.
            Values::Mapped { map, offset, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*offset).cast::<T>(), *len)
            },
        }
    }
}

enum Storage {
    F32(Values<f32>),
    Bf16(Values<u16>),
    /// Symmetric per-row int8: `W[r][c] = q[r][c] * scale[r]`.
    Int8 {
        q: Vec<i8>,
        scale: Vec<f32>,
    },
    /// Grouped int4, `groups` groups of `INT4_GROUP` values per row, each with its
    /// scale (layout in `quantize::quantize_row_i4`).
    Int4 {
        q: Vec<u8>,
        scale: Vec<f32>,
        groups: usize,
    },
}

/// A `[rows, cols]` matrix in f32, bf16, int8 or grouped int4 in host memory.
pub(crate) struct HostMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

impl std::fmt::Debug for HostMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("format", &self.format_name())
            .finish()
    }
}

impl HostMatrix {
    /// Own a bf16 matrix.
    pub fn bf16(rows: usize, cols: usize, values: Vec<u16>) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        HostMatrix {
            rows,
            cols,
            storage: Storage::Bf16(Values::Owned(values)),
        }
    }

    /// Own an f32 matrix.
    pub fn f32(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        HostMatrix {
            rows,
            cols,
            storage: Storage::F32(Values::Owned(values)),
        }
    }

    /// Borrow `rows * cols` little-endian bf16 values at byte `offset` of a mapping, or
    /// `None` when they must be copied (see `Values::mapped`).
    pub fn mapped_bf16(
        map: &Arc<FileBytes>,
        offset: usize,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        let values = Values::mapped(map, offset, rows * cols)?;
        Some(HostMatrix {
            rows,
            cols,
            storage: Storage::Bf16(values),
        })
    }

    /// [`HostMatrix::mapped_bf16`] for f32 values.
    pub fn mapped_f32(
        map: &Arc<FileBytes>,
        offset: usize,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        let values = Values::mapped(map, offset, rows * cols)?;
        Some(HostMatrix {
            rows,
            cols,
            storage: Storage::F32(values),
        })
    }

    /// Quantize to symmetric per-row int8 (scale = max |w| / 127), in blocks of rows,
    /// each block's rows in parallel; `fill(r, buf)` writes row `r` in f32 into `buf`,
    /// and `done(rows)` is called after each block (to release its source pages).
    pub fn int8_rows(
        rows: usize,
        cols: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
        done: impl FnMut(std::ops::Range<usize>),
    ) -> Self {
        let (q, scale) = quantize_rows(rows, cols, cols, 1, fill, done, |w, q, s| {
            s[0] = quantize_row(w, q)
        });
        HostMatrix {
            rows,
            cols,
            storage: Storage::Int8 { q, scale },
        }
    }

    /// [`HostMatrix::int8_rows`] for grouped int4 (`INT4_GROUP` values per scale).
    pub fn int4_rows(
        rows: usize,
        cols: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
        done: impl FnMut(std::ops::Range<usize>),
    ) -> Self {
        let groups = cols.div_ceil(INT4_GROUP);
        let (q, scale) = quantize_rows(
            rows,
            cols,
            groups * INT4_GROUP / 2,
            groups,
            fill,
            done,
            quantize_row_i4,
        );
        HostMatrix {
            rows,
            cols,
            storage: Storage::Int4 { q, scale, groups },
        }
    }

    /// [`HostMatrix::int8_rows`] from row-major f32 values.
    #[cfg(test)]
    pub fn int8(rows: usize, cols: usize, values: &[f32]) -> Self {
        Self::int8_rows(
            rows,
            cols,
            |r, out| out.copy_from_slice(&values[r * cols..(r + 1) * cols]),
            |_| {},
        )
    }

    /// [`HostMatrix::int4_rows`] from row-major f32 values.
    #[cfg(test)]
    pub fn int4(rows: usize, cols: usize, values: &[f32]) -> Self {
        Self::int4_rows(
            rows,
            cols,
            |r, out| out.copy_from_slice(&values[r * cols..(r + 1) * cols]),
            |_| {},
        )
    }

    /// Number of rows (outputs of a product).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs of a product).
    pub fn cols(&self) -> usize {
        self.cols
    }

    fn format_name(&self) -> &'static str {
        match self.storage {
            Storage::F32(_) => "f32",
            Storage::Bf16(_) => "bf16",
            Storage::Int8 { .. } => "int8",
            Storage::Int4 { .. } => "int4",
        }
    }

    /// Row `r` widened to f32 (an embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.storage {
            Storage::F32(v) => out.copy_from_slice(&v.as_slice()[range]),
            Storage::Bf16(h) => {
                for (o, &v) in out.iter_mut().zip(&h.as_slice()[range]) {
                    *o = from_bf16(v);
                }
            }
            Storage::Int8 { q, scale } => {
                for (o, &v) in out.iter_mut().zip(&q[range]) {
                    *o = f32::from(v) * scale[r];
                }
            }
            Storage::Int4 { q, scale, groups } => {
                let (q, scale) = int4_row(q, scale, *groups, r);
                let mut row = Vec::with_capacity(self.cols);
                dequantize_i4(q, scale, 0, self.cols, &mut row);
                out.copy_from_slice(&row);
            }
        }
    }

    /// Every value widened to f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_mut(self.cols.max(1)).enumerate() {
            self.row_into(r, row);
        }
        out
    }

    /// The values as tensor data `[rows, cols]`: bf16 as stored, the others in f32.
    pub fn to_data(&self) -> burn::tensor::TensorData {
        let shape = [self.rows, self.cols];
        match &self.storage {
            Storage::Bf16(h) => {
                let values: Vec<half::bf16> = h
                    .as_slice()
                    .iter()
                    .map(|&v| half::bf16::from_bits(v))
                    .collect();
                burn::tensor::TensorData::new(values, shape)
            }
            _ => burn::tensor::TensorData::new(self.to_f32(), shape),
        }
    }

    /// `x · Wᵀ (+ bias)` for `x` `[m, cols]` row-major; returns `[m, rows]` row-major.
    pub fn matmul_t(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let isa = Isa::detect();
        self.matmul_t_with(x, m, bias, isa, super::isa::packed_dots(isa))
    }

    /// `matmul_t` at `isa`; `packed_dots`: prompt products of bf16 and int8 weights
    /// through `vdpbf16ps` (`Isa::Avx512Bf16` only, see `isa::packed_dots`).
    fn matmul_t_with(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        isa: Isa,
        packed_dots: bool,
    ) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        debug_assert_eq!(x.len(), m * k);
        // Computed as `[n, m]` so parallel tasks own disjoint output rows.
        let mut out_t = vec![0f32; n * m];
        if m > 0 && n > 0 {
            self.product(x, m, isa, packed_dots, &mut out_t);
        }
        let mut out = if m == 1 {
            out_t
        } else {
            transpose(&out_t, n, m)
        };
        if let Some(bias) = bias {
            for row in out.chunks_mut(n) {
                row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
            }
        }
        out
    }
}

impl HostMatrix {
    /// `out_t = W · xᵀ` (`[rows, m]`) by the kernels of `isa` for this format and row
    /// count. bf16 and int8 products see the activations rounded to bf16 at every row
    /// count, so a row's result does not depend on how many rows share the product.
    fn product(&self, x: &[f32], m: usize, isa: Isa, packed_dots: bool, out_t: &mut [f32]) {
        let k = self.cols;
        let stream = m <= STREAM_ROWS;
        #[cfg(not(target_arch = "x86_64"))]
        let _ = packed_dots;
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Bf16 {
            match &self.storage {
                Storage::Bf16(h) if stream || packed_dots => {
                    let a = Operand::new(x, m, k);
                    let h = h.as_slice();
                    row_blocks::<u16>(out_t, m, k, |r0, rows, _, out| {
                        bf16_block(&a, m, &h[r0 * k..(r0 + rows) * k], k, out);
                    });
                    return;
                }
                Storage::Int8 { q, scale } if !stream && packed_dots => {
                    let a = Operand::new(x, m, k);
                    row_blocks(out_t, m, k, |r0, rows, scratch, out| {
                        int8_block(&a, m, &q[r0 * k..(r0 + rows) * k], k, scratch, out);
                    });
                    scale_rows(out_t, m, scale);
                    return;
                }
                _ => {}
            }
        }
        match &self.storage {
            Storage::F32(w) if stream => stream_product(isa, x, m, w.as_slice(), k, out_t),
            Storage::F32(w) => {
                prompt_product(isa, x, m, k, WeightRows::F32(w.as_slice()), out_t);
            }
            Storage::Bf16(h) if stream => {
                stream_product(isa, &bf16_values(isa, x), m, h.as_slice(), k, out_t)
            }
            Storage::Bf16(h) => {
                let x = bf16_values(isa, x);
                prompt_product(isa, &x, m, k, WeightRows::Bf16(h.as_slice()), out_t);
            }
            Storage::Int8 { q, scale } => {
                let x = bf16_values(isa, x);
                if stream {
                    stream_product(isa, &x, m, q, k, out_t);
                } else {
                    prompt_product(isa, &x, m, k, WeightRows::Int8(q), out_t);
                }
                scale_rows(out_t, m, scale);
            }
            Storage::Int4 { q, scale, groups } => {
                let x = bf16_values(isa, x);
                if stream {
                    stream_int4(isa, &x, m, q, scale, *groups, k, out_t);
                } else {
                    let w = WeightRows::Int4 {
                        q,
                        scale,
                        groups: *groups,
                    };
                    prompt_product(isa, &x, m, k, w, out_t);
                }
            }
        }
    }
}

/// Row `r`'s bytes and scales of a grouped int4 matrix.
fn int4_row<'a>(q: &'a [u8], scale: &'a [f32], groups: usize, r: usize) -> (&'a [u8], &'a [f32]) {
    let bytes = groups * INT4_GROUP / 2;
    (
        &q[r * bytes..(r + 1) * bytes],
        &scale[r * groups..(r + 1) * groups],
    )
}

/// Quantize `rows` rows of `cols` values into `q_len` values and `s_len` scales per
/// row by `quantize(row, q, scales)`, in blocks of rows, each block's rows in parallel;
/// `fill(r, buf)` writes row `r` in f32 and `done(rows)` follows each block.
fn quantize_rows<Q: Copy + Default + Send>(
    rows: usize,
    cols: usize,
    q_len: usize,
    s_len: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
    mut done: impl FnMut(std::ops::Range<usize>),
    quantize: impl Fn(&[f32], &mut [Q], &mut [f32]) + Sync,
) -> (Vec<Q>, Vec<f32>) {
    const BLOCK: usize = 1024;
    let mut q = vec![Q::default(); rows * q_len];
    prefer_huge_pages(&mut q);
    let mut scale = vec![1f32; rows * s_len];
    let blocks = q
        .chunks_mut(BLOCK * q_len.max(1))
        .zip(scale.chunks_mut(BLOCK * s_len.max(1)));
    for (b, (q, scale)) in blocks.enumerate() {
        let r0 = b * BLOCK;
        q.par_chunks_mut(q_len.max(1))
            .zip(scale.par_chunks_mut(s_len.max(1)))
            .enumerate()
            .for_each_init(
                || vec![0f32; cols],
                |w, (r, (q, s))| {
                    fill(r0 + r, w);
                    quantize(w, q, s);
                },
            );
        done(r0..r0 + scale.len() / s_len.max(1));
    }
    (q, scale)
}

/// Row `r` of `out_t` (`m` values each) times `scale[r]`: int8 rows back to weights.
fn scale_rows(out_t: &mut [f32], m: usize, scale: &[f32]) {
    out_t
        .par_chunks_mut(m * 64)
        .zip(scale.par_chunks(64))
        .with_min_len(min_items(m * 64))
        .for_each(|(out, scale)| {
            for (o, s) in out.chunks_mut(m).zip(scale) {
                o.iter_mut().for_each(|v| *v *= s);
            }
        });
}

#[cfg(test)]
mod tests;
