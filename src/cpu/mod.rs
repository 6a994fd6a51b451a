//! Weight matrices kept in host memory as f32, bf16 or int8 and multiplied by this
//! crate's own CPU kernels ([`WeightFormat`](crate::WeightFormat) other than `Backend`).
//!
//! burn's CPU backends widen bf16 to f32 before a matrix product, have no int8 product,
//! and multiply f32 with AVX2 kernels. These kernels multiply the stored values
//! directly, at the best level the CPU has (AVX-512 BF16, AVX-512, AVX2 + FMA, or
//! portable code with the same rounding of operands). Activations stay f32 between layers; for bf16 and int8 only the operands
//! of a product are rounded to bf16, as transformers' bfloat16 models round everything.
//!
//! All products are `y = x · Wᵀ` with `W` stored `[out, in]` exactly as the checkpoint
//! lays it out, so weights can be used in place from the checkpoint's memory map.
//!
//! - `matrix`: `HostMatrix`, its storage, and which product a format and row count get.
//! - `products`: the blocked, parallel product drivers and the packed activations (at
//!   the portable level, prompt products go through the `gemm` crate, as burn's do).
//! - `isa`: which kernel level runs (detected, or forced by `PALIGEMMA_KERNELS`) and
//!   the dispatch to its kernels.
//! - `simd`, `kernels`: the kernel shapes every level shares, written once over a small
//!   vector trait (portable, AVX2 + FMA, AVX-512); `avx512`, `dpbf16`: the AVX-512 BF16
//!   kernels and the bf16 and int8 products built on them.
//! - `attention`, `packed_kv`: attention for layers with host weights, on the same f32
//!   tile, and their KV cache, kept in the layouts that tile reads.
//! - `gelu`, `quantize`, `memory`: the MLP activation, int8 quantization at load, and
//!   bf16 conversion and huge-page helpers.

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod dpbf16;
mod gelu;
mod isa;
mod kernels;
mod matrix;
mod memory;
mod packed_kv;
mod parallel;
mod products;
mod quantize;
mod simd;

pub(crate) use attention::{AttentionShape, attention, cached_attention};
pub(crate) use gelu::gelu_tanh_mul;
pub(crate) use isa::{Isa, kernel_level};
pub(crate) use matrix::HostMatrix;
pub(crate) use memory::{FileBytes, prefer_huge_pages, to_bf16};
pub(crate) use packed_kv::PackedKv;
