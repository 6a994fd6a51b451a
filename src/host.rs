//! Weight matrices kept in host memory as f32, bf16 or int8 and multiplied by this
//! crate's own CPU kernels ([`WeightFormat`](crate::WeightFormat) other than `Backend`).
//!
//! burn's CPU backends widen bf16 to f32 before a matrix product, have no int8 product,
//! and multiply f32 with AVX2 kernels. These kernels multiply the stored values
//! directly: prompts through outer-product tiles over activations packed once per
//! product (`vdpbf16ps` for bf16 and int8 widened to bf16, FMA for f32), decode steps by
//! streaming each weight row once; portable code with the same rounding elsewhere.
//! Activations stay f32 between layers; for bf16 and int8 only the operands of a
//! product are rounded to bf16, as transformers' bfloat16 models round everything.
//!
//! All products are `y = x · Wᵀ` with `W` stored `[out, in]` exactly as the checkpoint
//! lays it out, so weights can be used in place from the checkpoint's memory map.

use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

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
const STREAM_ROWS: usize = 4;

/// Plain values (bf16 bits or f32), owned or borrowed from a memory-mapped checkpoint
/// (zero-copy load).
enum Values<T> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

impl<T: Copy> Values<T> {
    /// Borrow `len` little-endian values at byte `offset` of a mapping, or `None` when
    /// they are not aligned for `T` (or the host is big-endian) and must be copied.
    fn mapped(map: &Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
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

/// Ask the kernel to back a large fresh buffer with transparent huge pages (where THP
/// is in `madvise` mode): filling gigabytes of 4 KiB pages costs one fault and one
/// zeroing per page, and that, not the conversion, bounded loading. Advice only.
pub(crate) fn prefer_huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(buf);
        if bytes < 4 * HUGE {
            return;
        }
        let start = (buf.as_mut_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_mut_ptr() as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside `buf`, which this function borrows mutably;
            // MADV_HUGEPAGE changes no contents. Failure is harmless (advice only).
            let _ = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE)
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// `f32` to bf16 bits, rounding to nearest even (as torch and `vcvtneps2bf16` do).
pub(crate) fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
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
    pub fn mapped_bf16(map: &Arc<Mmap>, offset: usize, rows: usize, cols: usize) -> Option<Self> {
        let values = Values::mapped(map, offset, rows * cols)?;
        Some(HostMatrix {
            rows,
            cols,
            storage: Storage::Bf16(values),
        })
    }

    /// [`HostMatrix::mapped_bf16`] for f32 values.
    pub fn mapped_f32(map: &Arc<Mmap>, offset: usize, rows: usize, cols: usize) -> Option<Self> {
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
                    row_blocks(&mut out_t, m, |r0, rows, _, out| {
                        let q = &q[r0 * k..(r0 + rows) * k];
                        int8_stream(isa, x, m, q, &scale[r0..r0 + rows], k, out);
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

/// Run `task(r0, rows, scratch, out)` on all cores for each block of `BLOCK_ROWS` weight
/// rows starting at `r0`, `out` being the block's `[rows, m]` part of the transposed
/// output and `scratch` a per-thread buffer.
fn row_blocks(
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
fn transpose(t: &[f32], n: usize, m: usize) -> Vec<f32> {
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

/// Quantize one row to symmetric int8 (nearest, ties to even) and return its scale,
/// `max |w| / 127` (1 for an all-zero row).
fn quantize_row(w: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { quantize_row_avx512(w, q) };
    }
    quantize_row_body(w, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_row_avx512(w: &[f32], q: &mut [i8]) -> f32 {
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

/// `g[i] = gelu_tanh(g[i]) * u[i]` (or `gelu_tanh(g[i])` without `u`), on all cores.
///
/// GELU's tanh form is evaluated as `x * sigmoid(2z)` (the same function, without the
/// cancellation of `1 + tanh(z)` for negative `z`) with a vectorisable `exp`; libm's
/// scalar `tanhf` had been a sixth of the prefill.
pub(crate) fn gelu_tanh_mul(g: &mut [f32], u: Option<&[f32]>) {
    const CHUNK: usize = 1 << 14;
    let run = |g: &mut [f32], u: Option<&[f32]>| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { gelu_avx512(g, u) };
        }
        gelu_body(g, u)
    };
    match u {
        Some(u) => g
            .par_chunks_mut(CHUNK)
            .zip(u.par_chunks(CHUNK))
            .for_each(|(g, u)| run(g, Some(u))),
        None => g.par_chunks_mut(CHUNK).for_each(|g| run(g, None)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(g: &mut [f32], u: Option<&[f32]>) {
    gelu_body(g, u)
}

#[inline(always)]
fn gelu_body(g: &mut [f32], u: Option<&[f32]>) {
    match u {
        Some(u) => g
            .iter_mut()
            .zip(u)
            .for_each(|(g, &u)| *g = gelu_tanh(*g) * u),
        None => g.iter_mut().for_each(|g| *g = gelu_tanh(*g)),
    }
}

/// `0.5 x (1 + tanh(z)) = x / (1 + exp(-2z))`, `z = sqrt(2/pi) (x + 0.044715 x^3)`.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let z = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + exp(-2.0 * z))
}

/// `e^x` to about 1 ulp, branch-free so loops over it vectorise: `x = n ln 2 + r`
/// with `|r| <= ln 2 / 2`, Cephes' degree-5 polynomial for `e^r`, and `2^n` built in
/// the exponent bits. Inputs are clamped to where `2^n` is a normal float.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// 0: portable kernels only; 1: AVX-512 (f32 and int8 decode); 2: AVX-512 BF16 too.
pub(crate) fn simd_level() -> u8 {
    match Isa::detect() {
        Isa::Portable => 0,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => 1,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => 2,
    }
}

/// Which kernels this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Portable,
    /// AVX-512 F, BW and VL: the f32 and int8 kernels.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with BF16 dot products: every kernel.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
        {
            return if std::is_x86_feature_detected!("avx512bf16") {
                Isa::Avx512Bf16
            } else {
                Isa::Avx512
            };
        }
        Isa::Portable
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

/// Activations rounded to bf16 once per product, in the layout the kernel reads.
enum Operand {
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
    fn new(isa: Isa, x: &[f32], m: usize, k: usize) -> Self {
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
fn bf16_block(a: &Operand, m: usize, w: &[u16], k: usize, out: &mut [f32]) {
    let block = a.block_k();
    for k0 in (0..k).step_by(block) {
        a.product(m, k, &w[k0..], k, k0, block.min(k - k0), out);
    }
}

/// The int8 product for many activation rows: each k block of the weight rows is
/// widened once to bf16 (exact for integers up to 256) and reused by every strip.
fn int8_block(
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
                _ => portable_tile(a_rows, lda, mr, w_rows, ldw, nr, kc, &mut acc),
            }
            for (i, acc) in acc.iter().enumerate().take(mr) {
                for (j, &v) in acc.iter().enumerate().take(nr) {
                    out[(j0 + j) * m + i0 + i] += v;
                }
            }
        }
    }
}

/// `acc[i][j] = Σ a[i][..k] · w[j][..k]` in f32 from bf16 operands.
#[allow(clippy::too_many_arguments)]
fn portable_tile(
    a: &[u16],
    lda: usize,
    mr: usize,
    w: &[u16],
    ldw: usize,
    nr: usize,
    k: usize,
    acc: &mut [[f32; 4]; 4],
) {
    for (i, acc) in acc.iter_mut().enumerate().take(mr) {
        let a = &a[i * lda..i * lda + k];
        for (j, acc) in acc.iter_mut().enumerate().take(nr) {
            let w = &w[j * ldw..j * ldw + k];
            *acc = a
                .iter()
                .zip(w)
                .map(|(&a, &w)| from_bf16(a) * from_bf16(w))
                .sum();
        }
    }
}

/// The int8 product for a few f32 activation rows (decode), reading each weight byte
/// once: bandwidth, not arithmetic, bounds it.
fn int8_stream(isa: Isa, x: &[f32], m: usize, q: &[i8], scale: &[f32], k: usize, out: &mut [f32]) {
    stream(x, m, q, k, out, |w, rows, x, dots| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: features checked by `Isa::detect`; `w` holds `rows` rows of `k`
        // values and `x` holds `k`.
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { avx512::dot4_i8_f32(w, k, rows, x, dots) },
        Isa::Portable => {
            for (d, w) in dots.iter_mut().zip(w.chunks(k)) {
                *d = w.iter().zip(x).map(|(&w, &x)| f32::from(w) * x).sum();
            }
        }
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
fn f32_product(isa: Isa, x: &[f32], m: usize, w: &[f32], k: usize, out_t: &mut [f32]) {
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
            Isa::Portable => {
                for (d, w) in dots.iter_mut().zip(w.chunks(k)) {
                    *d = w.iter().zip(x).map(|(&w, &x)| w * x).sum();
                }
            }
        });
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
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

    /// The f32 counterpart of `outer_bf16`: columns `c0..c0 + nc` of `nr` ≤ 6 weight
    /// rows against activation groups `g0..g0 + nv` of an operand packed `[m/16][k][16]`,
    /// one broadcast weight and four FMAs of 16 rows per column and weight row.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn outer_f32(
        a: &[f32],
        k: usize,
        g0: usize,
        nv: usize,
        c0: usize,
        nc: usize,
        w: &[f32],
        ldw: usize,
        nr: usize,
        out: &mut [f32],
        m: usize,
        i0: usize,
        accumulate: bool,
    ) {
        assert!((1..=4).contains(&nv) && (1..=6).contains(&nr) && c0 + nc <= k);
        assert!(a.len() >= (g0 + nv) * k * 16);
        assert!(w.len() >= (nr - 1) * ldw + nc);
        assert!(i0 < m && out.len() >= (nr - 1) * m + m);
        let valid = m - i0;
        // SAFETY: the asserts bound every read of `a`, `w` and every write of `out`;
        // missing weight rows repeat row 0 and their sums are discarded.
        unsafe {
            let a = a.as_ptr().add((g0 * k + c0) * 16);
            let gstride = k * 16;
            let out = &mut out[i0..];
            let wp: [*const f32; 6] =
                std::array::from_fn(|r| w.as_ptr().add(if r < nr { r * ldw } else { 0 }));
            macro_rules! run {
                ($nv:literal) => {{
                    let mut acc = [[_mm512_setzero_ps(); $nv]; 6];
                    for c in 0..nc {
                        let av: [__m512; $nv] =
                            std::array::from_fn(|v| _mm512_loadu_ps(a.add(v * gstride + c * 16)));
                        for r in 0..6 {
                            let b = _mm512_set1_ps(*wp[r].add(c));
                            for v in 0..$nv {
                                acc[r][v] = _mm512_fmadd_ps(av[v], b, acc[r][v]);
                            }
                        }
                    }
                    store_tile(&acc, nr, out, m, valid, accumulate);
                }};
            }
            match nv {
                1 => run!(1),
                2 => run!(2),
                3 => run!(3),
                _ => run!(4),
            }
        }
    }

    /// `dots[j] = Σ w[j][c] * x[c]` for `rows` ≤ 4 f32 rows of `k` values (missing rows
    /// repeat row 0 and are discarded); each load of `x` serves four rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot4_f32(
        w: &[f32],
        k: usize,
        rows: usize,
        x: &[f32],
        dots: &mut [f32; 4],
    ) {
        assert!((1..=4).contains(&rows) && w.len() >= rows * k && x.len() >= k);
        // SAFETY: row starts are inside `w` (asserted), masked loads touch only lanes
        // below `k`.
        unsafe {
            let wp: [*const f32; 4] =
                std::array::from_fn(|j| w.as_ptr().add(if j < rows { j * k } else { 0 }));
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut c = 0;
            while c < k {
                let mask = if k - c >= 16 {
                    u16::MAX
                } else {
                    (1u16 << (k - c)) - 1
                };
                let xv = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(c));
                for j in 0..4 {
                    let wv = _mm512_maskz_loadu_ps(mask, wp[j].add(c));
                    acc[j] = _mm512_fmadd_ps(wv, xv, acc[j]);
                }
                c += 16;
            }
            for j in 0..4 {
                dots[j] = _mm512_reduce_add_ps(acc[j]);
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

    /// `dots[j] = Σ w[j][c] * x[c]` for `rows` ≤ 4 int8 rows of `k` values (missing
    /// rows repeat row 0 and are discarded), widened to f32 16 at a time; each load of
    /// `x` serves four rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dot4_i8_f32(
        w: &[i8],
        k: usize,
        rows: usize,
        x: &[f32],
        dots: &mut [f32; 4],
    ) {
        assert!((1..=4).contains(&rows) && w.len() >= rows * k && x.len() >= k);
        // SAFETY: row starts are inside `w` (asserted), masked loads touch only lanes
        // below `k`.
        unsafe {
            let wp: [*const i8; 4] =
                std::array::from_fn(|j| w.as_ptr().add(if j < rows { j * k } else { 0 }));
            // Two independent accumulators per row: the widening conversions leave
            // the FMA chains as the latency bound otherwise.
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut acc2 = [_mm512_setzero_ps(); 4];
            let mut c = 0;
            while c + 32 <= k {
                let xv = _mm512_loadu_ps(x.as_ptr().add(c));
                let xv2 = _mm512_loadu_ps(x.as_ptr().add(c + 16));
                for j in 0..4 {
                    let q = _mm_loadu_si128(wp[j].add(c).cast());
                    let q2 = _mm_loadu_si128(wp[j].add(c + 16).cast());
                    let wf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                    let wf2 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q2));
                    acc[j] = _mm512_fmadd_ps(wf, xv, acc[j]);
                    acc2[j] = _mm512_fmadd_ps(wf2, xv2, acc2[j]);
                }
                c += 32;
            }
            for j in 0..4 {
                acc[j] = _mm512_add_ps(acc[j], acc2[j]);
            }
            while c + 16 <= k {
                let xv = _mm512_loadu_ps(x.as_ptr().add(c));
                for j in 0..4 {
                    let q = _mm_loadu_si128(wp[j].add(c).cast());
                    let wf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                    acc[j] = _mm512_fmadd_ps(wf, xv, acc[j]);
                }
                c += 16;
            }
            if c < k {
                let mask = (1u16 << (k - c)) - 1;
                let xv = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(c));
                for j in 0..4 {
                    let q = _mm_maskz_loadu_epi8(mask, wp[j].add(c).cast());
                    let wf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                    acc[j] = _mm512_fmadd_ps(wf, xv, acc[j]);
                }
            }
            for j in 0..4 {
                dots[j] = _mm512_reduce_add_ps(acc[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (no rand dependency needed).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// f64 reference of `x · Wᵀ + b` on the exact operands the kernels see.
    fn reference(x: &[f64], w: &[f64], bias: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|c| x[i * k + c] * w[j * k + c]).sum();
                out[i * n + j] = dot + f64::from(bias[j]);
            }
        }
        out
    }

    /// Every kernel level this CPU can run, portable included.
    fn isas() -> Vec<Isa> {
        let mut out = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::detect() != Isa::Portable {
                out.push(Isa::Avx512);
            }
            if Isa::detect() == Isa::Avx512Bf16 {
                out.push(Isa::Avx512Bf16);
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f64], k: usize, what: &str) {
        // f32 accumulation of k products of magnitude <= 1.
        let tol = 1e-6 * k as f64 + 1e-6;
        for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= tol,
                "{what}: element {idx}: {g} vs {w} (tol {tol})"
            );
        }
    }

    // Shapes cover k tails (not a multiple of 32 or 16, odd), row remainders (m, n not
    // multiples of 4 or 6), several row blocks, several k blocks, and for the packed
    // kernel several 64-row activation blocks with a partial last one.
    const SHAPES: [(usize, usize, usize); 7] = [
        (70, 40, 2050),
        (1, 8, 32),
        (3, 70, 45),
        (4, 132, 4097),
        (5, 64, 100),
        (1, 130, 9000),
        (9, 67, 1153),
    ];

    #[test]
    fn bf16_product_matches_reference() {
        for isa in isas() {
            for &(m, n, k) in &SHAPES {
                let x = values(m * k, 1);
                let w: Vec<u16> = values(n * k, 2).into_iter().map(to_bf16).collect();
                let bias = values(n, 3);
                let mat = HostMatrix::bf16(n, k, w.clone());
                let got = mat.matmul_t_with(&x, m, Some(&bias), isa);
                let xr: Vec<f64> = x
                    .iter()
                    .map(|&v| f64::from(from_bf16(to_bf16(v))))
                    .collect();
                let wr: Vec<f64> = w.iter().map(|&v| f64::from(from_bf16(v))).collect();
                let want = reference(&xr, &wr, &bias, m, n, k);
                assert_close(&got, &want, k, &format!("bf16 {isa:?} {m}x{n}x{k}"));
            }
        }
    }

    #[test]
    fn f32_product_matches_reference() {
        for isa in isas() {
            for &(m, n, k) in &SHAPES {
                let x = values(m * k, 7);
                let w = values(n * k, 8);
                let bias = values(n, 9);
                let got = HostMatrix::f32(n, k, w.clone()).matmul_t_with(&x, m, Some(&bias), isa);
                let xr: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
                let wr: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
                let want = reference(&xr, &wr, &bias, m, n, k);
                assert_close(&got, &want, k, &format!("f32 {isa:?} {m}x{n}x{k}"));
            }
        }
    }

    #[test]
    fn int8_product_matches_reference() {
        for isa in isas() {
            for &(m, n, k) in &SHAPES {
                let x = values(m * k, 4);
                let w = values(n * k, 5);
                let mat = HostMatrix::int8(n, k, &w);
                let Storage::Int8 { q, scale } = &mat.storage else {
                    unreachable!()
                };
                // Quantization error is at most half a step per weight.
                for (r, row) in w.chunks(k).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        let back = f32::from(q[r * k + c]) * scale[r];
                        assert!((back - v).abs() <= scale[r] * 0.5 + 1e-7);
                    }
                }
                let wr: Vec<f64> = (0..n * k)
                    .map(|i| f64::from(q[i]) * f64::from(scale[i / k]))
                    .collect();
                // Streaming rows see f32 activations; more rows see them in bf16.
                let xr: Vec<f64> = if m <= STREAM_ROWS {
                    x.iter().map(|&v| f64::from(v)).collect()
                } else {
                    x.iter()
                        .map(|&v| f64::from(from_bf16(to_bf16(v))))
                        .collect()
                };
                let zero = vec![0f32; n];
                let got = mat.matmul_t_with(&x, m, None, isa);
                let want = reference(&xr, &wr, &zero, m, n, k);
                assert_close(&got, &want, k, &format!("int8 {isa:?} {m}x{n}x{k}"));
            }
        }
    }

    #[test]
    fn gelu_matches_f64() {
        let xs: Vec<f32> = (-4000..=4000)
            .map(|i| i as f32 * 0.0031)
            .chain([-95.0, -30.0, 30.0, 95.0])
            .collect();
        let mut g = xs.clone();
        let u: Vec<f32> = xs.iter().map(|x| 1.0 + x * 0.01).collect();
        gelu_tanh_mul(&mut g, Some(&u));
        for ((&x, &got), &u) in xs.iter().zip(&g).zip(&u) {
            let x64 = f64::from(x);
            let z = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let want = x64 / (1.0 + (-2.0 * z).exp()) * f64::from(u);
            let err = (f64::from(got) - want).abs();
            // In the negative tail f32 rounding of the argument dominates (torch, with
            // 1 + tanh(z) cancelling, is far less accurate there).
            assert!(
                err <= 5e-7 * want.abs() + 1e-8,
                "gelu({x}) = {got}, want {want}"
            );
            // The tanh form (what torch evaluates) agrees to f32 resolution.
            let tanh_form = 0.5 * x64 * (1.0 + z.tanh()) * f64::from(u);
            assert!((f64::from(got) - tanh_form).abs() <= 1e-6 * (1.0 + tanh_form.abs()));
        }
        for x in [-87.0f32, -10.0, -1.0, 0.0, 0.5, 1.0, 10.0, 88.0] {
            let rel = (f64::from(exp(x)) - f64::from(x).exp()).abs() / f64::from(x).exp();
            assert!(rel < 3e-7, "exp({x}) relative error {rel}");
        }
    }

    /// The zero-copy path reads the mapping in place, and refuses offsets that are not
    /// aligned for the element type (the loader then copies).
    #[test]
    fn mapped_values_read_in_place_or_refuse() {
        use std::io::Write;
        let w: Vec<u16> = values(2 * 3, 10).into_iter().map(to_bf16).collect();
        let mut bytes = vec![0u8; 2];
        bytes.extend(w.iter().flat_map(|v| v.to_le_bytes()));
        bytes.push(0);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        // SAFETY (test): the temporary file is private to this test and not modified.
        let map = Arc::new(unsafe { Mmap::map(&file) }.unwrap());
        let m = HostMatrix::mapped_bf16(&map, 2, 2, 3).expect("2-aligned bf16 in place");
        let mut row = vec![0f32; 3];
        m.row_into(1, &mut row);
        assert_eq!(
            row,
            w[3..].iter().map(|&v| from_bf16(v)).collect::<Vec<_>>()
        );
        assert!(
            HostMatrix::mapped_bf16(&map, 1, 2, 3).is_none(),
            "odd offset"
        );
        assert!(
            HostMatrix::mapped_f32(&map, 2, 1, 2).is_none(),
            "not 4-aligned"
        );
        assert!(
            HostMatrix::mapped_bf16(&map, 4, 2, 3).is_none(),
            "past the end"
        );
    }

    #[test]
    fn rows_widen_exactly() {
        let w = values(3 * 5, 6);
        let bf: Vec<u16> = w.iter().map(|&v| to_bf16(v)).collect();
        let mut row = vec![0f32; 5];
        HostMatrix::bf16(3, 5, bf.clone()).row_into(1, &mut row);
        assert_eq!(
            row,
            bf[5..10].iter().map(|&v| from_bf16(v)).collect::<Vec<_>>()
        );
        let q = HostMatrix::int8(3, 5, &w);
        q.row_into(2, &mut row);
        for (got, want) in row.iter().zip(&w[10..15]) {
            assert!((got - want).abs() <= 1.0 / 254.0 + 1e-6);
        }
    }
}
