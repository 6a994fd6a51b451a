//! Numeric formats chosen when a model is loaded: the compute dtype and how the large
//! weight matrices are held.
//!
//! Weights are converted from whatever the checkpoint stores into the compute dtype
//! while loading. Norms, the attention softmax, GELU and the final logits run in f32
//! whatever the compute dtype, as transformers does for half-precision models.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, FloatDType, backend::Backend};

use crate::error::{Error, Result};

/// Floating-point type the model's weights and activations are held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Dtype {
    /// 32-bit float: supported by every backend, matches transformers' float32 to 1e-4.
    #[default]
    F32,
    /// IEEE half precision: GPUs (wgpu with shader-f16, CUDA) and burn's CPU backend.
    F16,
    /// bfloat16: CUDA and burn's CPU backend; not wgpu.
    Bf16,
}

impl Dtype {
    /// The name used by the CLI and in errors: `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// burn's float dtype.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Dtype::F32 => FloatDType::F32,
            Dtype::F16 => FloatDType::F16,
            Dtype::Bf16 => FloatDType::BF16,
        }
    }

    /// burn's tensor dtype.
    pub fn burn_dtype(self) -> DType {
        DType::from(self.float_dtype())
    }

    /// An error unless backend `B` can store and compute in this dtype on `device`.
    ///
    /// Asked of the backend itself, so a GPU without half-precision support is refused
    /// before any weight is loaded rather than computing garbage.
    pub fn check_supported<B: Backend>(self, device: &B::Device) -> Result<()> {
        if B::supports_dtype(device, self.burn_dtype()) {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "the {} backend cannot compute in {} on {device:?}; use --dtype f32{}",
                B::name(device),
                self.name(),
                if self == Dtype::Bf16 {
                    " or f16 (bf16 needs CUDA or the CPU backend)"
                } else {
                    ""
                }
            )))
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" | "half" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(Error::UnknownName {
                kind: "dtype",
                name: s.to_string(),
                expected: "f32, f16 or bf16",
            }),
        }
    }
}

/// How the large weight matrices (every linear layer and the tied embedding) are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum WeightFormat {
    /// The fastest format that keeps the checkpoint's values: on a CPU backend with f32
    /// compute and SIMD kernels (AVX2 + FMA or AVX-512), host weights in the
    /// checkpoint's own precision ([`WeightFormat::Bf16`] for a bf16 checkpoint,
    /// [`WeightFormat::F32`] for f32 and f16 ones, which widen exactly); `Backend`
    /// everywhere else (GPUs, autodiff, half-precision compute, CPUs without SIMD
    /// kernels). Resolved when the model loads: [`Model::weight_format`] never
    /// reports `Auto`.
    ///
    /// [`Model::weight_format`]: crate::Model::weight_format
    #[default]
    Auto,
    /// As backend tensors in the compute [`Dtype`]: any backend; the reference path
    /// (f32 compute matches transformers' float32 to 1e-4) and the one that trains.
    Backend,
    /// f32 in host memory, multiplied by this crate's CPU kernels (AVX-512 where the CPU
    /// has it): the same f32 arithmetic as `Backend` with f32, faster on such CPUs; an
    /// f32 checkpoint is used in place from its memory map. CPU backends, f32 compute.
    F32,
    /// bf16 in host memory, multiplied by this crate's CPU kernels with f32
    /// accumulation (AVX-512 BF16 where the CPU has it). Half the memory of f32; a
    /// bf16 checkpoint is used in place from its memory map. CPU backends, f32 compute.
    Bf16,
    /// Symmetric per-row int8 in host memory (a quarter of f32), multiplied by this
    /// crate's CPU kernels. CPU backends, f32 compute.
    Int8,
    /// Grouped int4 in host memory: 32 values per f32 scale, the scale the group's
    /// largest-magnitude value over -8 (as Q4_0 does), 4.5 bits per weight. The fastest
    /// decode and the smallest model; the largest drift from the checkpoint (see
    /// docs/precision.md). CPU backends, f32 compute.
    Int4,
}

impl WeightFormat {
    /// The name used by the CLI: `auto`, `backend`, `f32`, `bf16`, `int8` or `int4`.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Auto => "auto",
            WeightFormat::Backend => "backend",
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
            WeightFormat::Int4 => "int4",
        }
    }

    /// Whether this CPU runs the format's host kernels with SIMD (AVX2 + FMA or
    /// AVX-512, at the level `PALIGEMMA_KERNELS` allows). Without it they fall back to
    /// portable code. Always true for `Backend` and `Auto` (which picks host weights
    /// only where they are).
    pub fn accelerated(self) -> bool {
        matches!(self, WeightFormat::Backend | WeightFormat::Auto)
            || crate::cpu::Isa::detect() > crate::cpu::Isa::Portable
    }

    /// Whether the matrices live in host memory rather than backend tensors (`Auto`
    /// is neither until it is resolved).
    pub fn is_host(self) -> bool {
        !matches!(self, WeightFormat::Backend | WeightFormat::Auto)
    }

    /// The format a model loaded with this one on backend `B` with `dtype` compute
    /// uses, for a checkpoint whose matrices are stored in `stored`: `Auto` chosen as
    /// documented there, any other format unchanged.
    pub fn resolve<B: Backend>(self, dtype: Dtype, stored: Dtype) -> Result<WeightFormat> {
        if self != WeightFormat::Auto {
            return Ok(self);
        }
        if !crate::backend::is_cpu::<B>() || dtype != Dtype::F32 {
            return Ok(WeightFormat::Backend);
        }
        // A level named in PALIGEMMA_KERNELS that this CPU lacks is still an error.
        if crate::cpu::kernel_level()? == crate::cpu::Isa::Portable {
            return Ok(WeightFormat::Backend);
        }
        Ok(match stored {
            Dtype::Bf16 => WeightFormat::Bf16,
            Dtype::F32 | Dtype::F16 => WeightFormat::F32,
        })
    }

    /// An error unless this format can run with `dtype` on backend `B`: host formats
    /// need a CPU backend (their products read host memory) and f32 activations.
    pub fn check_supported<B: Backend>(self, dtype: Dtype, device: &B::Device) -> Result<()> {
        if !self.is_host() {
            return Ok(());
        }
        crate::cpu::kernel_level()?;
        if !crate::backend::is_cpu::<B>() {
            return Err(Error::Unsupported(format!(
                "{} weights are multiplied on the CPU, but the backend is {}; use a CPU \
                 backend or --weights backend",
                self.name(),
                B::name(device)
            )));
        }
        if dtype != Dtype::F32 {
            return Err(Error::Unsupported(format!(
                "{} weights compute activations in f32; got --dtype {dtype}",
                self.name()
            )));
        }
        Ok(())
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(WeightFormat::Auto),
            "backend" => Ok(WeightFormat::Backend),
            "f32" | "float32" => Ok(WeightFormat::F32),
            "bf16" | "bfloat16" => Ok(WeightFormat::Bf16),
            "int8" | "i8" | "q8" => Ok(WeightFormat::Int8),
            "int4" | "i4" | "q4" => Ok(WeightFormat::Int4),
            _ => Err(Error::UnknownName {
                kind: "weight format",
                name: s.to_string(),
                expected: "auto, backend, f32, bf16, int8 or int4",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_others() {
        assert_eq!("bf16".parse::<Dtype>().unwrap(), Dtype::Bf16);
        assert_eq!("Float16".parse::<Dtype>().unwrap(), Dtype::F16);
        assert_eq!("f32".parse::<Dtype>().unwrap().to_string(), "f32");
        let err = "int4".parse::<Dtype>().unwrap_err().to_string();
        assert!(err.contains("int4") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn weight_formats_parse_and_report_acceleration() {
        assert_eq!("int8".parse::<WeightFormat>().unwrap(), WeightFormat::Int8);
        assert_eq!("q4".parse::<WeightFormat>().unwrap(), WeightFormat::Int4);
        assert_eq!("F32".parse::<WeightFormat>().unwrap(), WeightFormat::F32);
        assert_eq!(WeightFormat::Bf16.to_string(), "bf16");
        let err = "int3".parse::<WeightFormat>().unwrap_err().to_string();
        assert!(err.contains("int3") && err.contains("int4"), "{err}");
        assert!(WeightFormat::Backend.accelerated());
        // Every host format runs at the same kernel level.
        let host = [
            WeightFormat::F32,
            WeightFormat::Bf16,
            WeightFormat::Int8,
            WeightFormat::Int4,
        ];
        assert!(
            host.iter()
                .all(|w| w.accelerated() == host[0].accelerated())
        );
        assert_eq!(
            host[0].accelerated(),
            crate::cpu::Isa::detect() > crate::cpu::Isa::Portable
        );
    }
}
