//! `HostMatrix`: a weight matrix's values in host memory (owned, or borrowed from the
//! checkpoint's memory map) and the choice of product kernel by format and row count.

use std::sync::Arc;

use rayon::prelude::*;

use super::isa::Isa;
use super::memory::{FileBytes, from_bf16, prefer_huge_pages};
use super::products::{
    Operand, STREAM_ROWS, bf16_block, bf16_values, f32_product, int8_block, int8_stream,
    row_blocks, transpose,
};
use super::quantize::quantize_row;

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
}

/// A `[rows, cols]` matrix in bf16 or int8 in host memory.
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
        mut done: impl FnMut(std::ops::Range<usize>),
    ) -> Self {
        const BLOCK: usize = 1024;
        let mut q = vec![0i8; rows * cols];
        prefer_huge_pages(&mut q);
        let mut scale = vec![1f32; rows];
        let blocks = q
            .chunks_mut(BLOCK * cols.max(1))
            .zip(scale.chunks_mut(BLOCK));
        for (b, (q, scale)) in blocks.enumerate() {
            let r0 = b * BLOCK;
            q.par_chunks_mut(cols.max(1))
                .zip(scale.par_iter_mut())
                .enumerate()
                .for_each_init(
                    || vec![0f32; cols],
                    |w, (r, (q, s))| {
                        fill(r0 + r, w);
                        *s = quantize_row(w, q);
                    },
                );
            done(r0..r0 + scale.len());
        }
        HostMatrix {
            rows,
            cols,
            storage: Storage::Int8 { q, scale },
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
        }
    }

    /// `x · Wᵀ (+ bias)` for `x` `[m, cols]` row-major; returns `[m, rows]` row-major.
    pub fn matmul_t(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        self.matmul_t_with(x, m, bias, Isa::detect())
    }

    fn matmul_t_with(&self, x: &[f32], m: usize, bias: Option<&[f32]>, isa: Isa) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        debug_assert_eq!(x.len(), m * k);
        // Computed as `[n, m]` so parallel tasks own disjoint output rows.
        let mut out_t = vec![0f32; n * m];
        if m > 0 && n > 0 {
            match &self.storage {
                Storage::F32(w) => f32_product(isa, x, m, w.as_slice(), k, &mut out_t),
                Storage::Int8 { q, scale } if m <= STREAM_ROWS => {
                    // Rounded as the longer products round them, so a row's result does
                    // not depend on how many rows share the product (batch == single).
                    let x = bf16_values(isa, x);
                    row_blocks(&mut out_t, m, |r0, rows, _, out| {
                        let q = &q[r0 * k..(r0 + rows) * k];
                        int8_stream(isa, &x, m, q, &scale[r0..r0 + rows], k, out);
                    });
                }
                Storage::Int8 { q, scale } => {
                    let a = Operand::new(isa, x, m, k);
                    row_blocks(&mut out_t, m, |r0, rows, scratch, out| {
                        int8_block(isa, &a, m, &q[r0 * k..(r0 + rows) * k], k, scratch, out);
                        for (o, s) in out.chunks_mut(m).zip(&scale[r0..r0 + rows]) {
                            o.iter_mut().for_each(|v| *v *= s);
                        }
                    });
                }
                Storage::Bf16(h) => {
                    let a = Operand::new(isa, x, m, k);
                    row_blocks(&mut out_t, m, |r0, rows, _, out| {
                        bf16_block(&a, m, &h.as_slice()[r0 * k..(r0 + rows) * k], k, out);
                    });
                }
            }
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

#[cfg(test)]
mod tests;
