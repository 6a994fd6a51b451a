//! Which kernels run: the best level this CPU has, detected at run time, or the one
//! the environment variable `PALIGEMMA_KERNELS` forces (`portable`, `avx2`, `avx512`,
//! `avx512bf16`); and the dispatch from a level to its kernels.

use std::sync::OnceLock;

use super::kernels::{Element, OuterTile, portable};
#[cfg(target_arch = "x86_64")]
use super::kernels::{avx2, avx512};
use super::quantize::INT4_GROUP;
use crate::{Error, Result};

/// The environment variable that forces a kernel level.
pub(crate) const KERNELS_VAR: &str = "PALIGEMMA_KERNELS";

/// A kernel level, from the slowest to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Plain code (the compiler's baseline vectors).
    Portable,
    /// AVX2 with FMA: every format, bf16 and int8 widened to f32 in registers.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F, BW and VL: the same kernels on 16 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with BF16 dot products for the bf16 and int8 products: always for decode
    /// steps, for prompts where they outpace f32 FMAs on this CPU (`packed_dots`).
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

impl Isa {
    /// Every level, by the name `PALIGEMMA_KERNELS` takes.
    pub(super) fn all() -> &'static [(&'static str, Isa)] {
        &[
            ("portable", Isa::Portable),
            #[cfg(target_arch = "x86_64")]
            ("avx2", Isa::Avx2),
            #[cfg(target_arch = "x86_64")]
            ("avx512", Isa::Avx512),
            #[cfg(target_arch = "x86_64")]
            ("avx512bf16", Isa::Avx512Bf16),
        ]
    }

    /// The name `PALIGEMMA_KERNELS` takes for this level.
    pub(crate) fn name(self) -> &'static str {
        Isa::all()
            .iter()
            .find(|(_, isa)| *isa == self)
            .map_or("portable", |(name, _)| name)
    }

    /// The best level this CPU has.
    pub(crate) fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &str| match f {
                "avx512" => {
                    std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512vl")
                }
                "avx512bf16" => std::is_x86_feature_detected!("avx512bf16"),
                _ => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            };
            if has("avx512") {
                return if has("avx512bf16") {
                    Isa::Avx512Bf16
                } else {
                    Isa::Avx512
                };
            }
            if has("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The level named `value` (`PALIGEMMA_KERNELS`), if the CPU, whose best level is
    /// `best`, has it.
    pub(crate) fn parse(value: &str, best: Isa) -> std::result::Result<Isa, String> {
        let names = || {
            Isa::all()
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(&(_, isa)) = Isa::all().iter().find(|(name, _)| *name == value.trim()) else {
            return Err(format!(
                "{KERNELS_VAR}={value:?} is not a kernel level; use one of {}",
                names()
            ));
        };
        if isa > best {
            return Err(format!(
                "{KERNELS_VAR}={value} asks for kernels this CPU cannot run: its best level \
                 is {}",
                best.name()
            ));
        }
        Ok(isa)
    }

    /// The level every kernel runs at: `PALIGEMMA_KERNELS` when set and valid, the
    /// best level otherwise (an invalid value is reported by [`kernel_level`]).
    pub(crate) fn detect() -> Isa {
        chosen().as_ref().copied().unwrap_or_else(|_| Isa::best())
    }

    /// f32 lanes of this level's vectors: the row groups of its packed operand.
    pub(super) fn lanes(self) -> usize {
        match self {
            Isa::Portable => 4,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 8,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => 16,
        }
    }

    /// Activation groups per outer-product tile.
    pub(super) fn groups(self) -> usize {
        match self {
            Isa::Portable => 2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => 4,
        }
    }

    /// The f32 outer-product tile at this level (`kernels::outer_f32`).
    pub(super) fn outer_f32(self, t: &OuterTile<'_>, out: &mut [f32]) {
        // SAFETY: a level is only chosen when the CPU has its features (`best`,
        // `parse`); the kernels assert the bounds of every operand.
        unsafe {
            match self {
                Isa::Portable => portable::outer_f32(t, out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::outer_f32(t, out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx512Bf16 => avx512::outer_f32(t, out),
            }
        }
    }

    /// The four-row dot product at this level (`kernels::dot4`).
    pub(super) fn dot4<T: Element>(
        self,
        w: &[T],
        k: usize,
        rows: usize,
        x: &[f32],
        dots: &mut [f32; 4],
    ) {
        // SAFETY: as in `outer_f32`.
        unsafe {
            match self {
                Isa::Portable => portable::dot4(w, k, rows, x, dots),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::dot4(w, k, rows, x, dots),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx512Bf16 => avx512::dot4(w, k, rows, x, dots),
            }
        }
    }

    /// One int4 group widened and scaled at this level (`kernels::dequantize_i4_group`).
    pub(super) fn dequantize_i4_group(self, q: &[u8], scale: f32, out: &mut [f32; INT4_GROUP]) {
        // SAFETY: as in `outer_f32`.
        unsafe {
            match self {
                Isa::Portable => portable::dequantize_i4_group(q, scale, out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::dequantize_i4_group(q, scale, out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx512Bf16 => avx512::dequantize_i4_group(q, scale, out),
            }
        }
    }

    /// The grouped int4 four-row dot product at this level (`kernels::dot4_i4`).
    pub(super) fn dot4_i4(
        self,
        q: &[u8],
        scale: &[f32],
        groups: usize,
        rows: usize,
        x: &[f32],
        dots: &mut [f32; 4],
    ) {
        // SAFETY: as in `outer_f32`.
        unsafe {
            match self {
                Isa::Portable => portable::dot4_i4(q, scale, groups, rows, x, dots),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::dot4_i4(q, scale, groups, rows, x, dots),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx512Bf16 => avx512::dot4_i4(q, scale, groups, rows, x, dots),
            }
        }
    }
}

/// Whether prompt products (more than `STREAM_ROWS` activation rows) of bf16 and int8
/// weights at `isa` use `vdpbf16ps` (`Isa::Avx512Bf16` only) rather than the f32 tile
/// with the weights widened, as the AVX-512 level multiplies: measured once per
/// process on this CPU.
pub(super) fn packed_dots(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Bf16 {
        static PAY: OnceLock<bool> = OnceLock::new();
        // SAFETY: a level is only chosen when the CPU has its features.
        return *PAY.get_or_init(|| unsafe { super::avx512::dots_outpace_fma() });
    }
    let _ = isa;
    false
}

fn chosen() -> &'static std::result::Result<Isa, String> {
    static CHOSEN: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
    CHOSEN.get_or_init(|| match std::env::var(KERNELS_VAR) {
        Ok(value) if !value.trim().is_empty() => Isa::parse(&value, Isa::best()),
        _ => Ok(Isa::best()),
    })
}

/// The kernel level host weights run at, or the error a bad `PALIGEMMA_KERNELS` gives
/// (checked when a model with host weights loads).
pub(crate) fn kernel_level() -> Result<Isa> {
    chosen().clone().map_err(Error::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_by_name_and_refuse_what_the_cpu_lacks() {
        let best = Isa::best();
        for &(name, isa) in Isa::all() {
            let parsed = Isa::parse(name, best);
            if isa <= best {
                assert_eq!(parsed.unwrap(), isa);
                assert_eq!(isa.name(), name);
            } else {
                let msg = parsed.unwrap_err();
                assert!(
                    msg.contains("cannot run") && msg.contains(best.name()),
                    "{msg}"
                );
            }
        }
        assert_eq!(
            Isa::parse(" portable ", Isa::Portable).unwrap(),
            Isa::Portable
        );
        let msg = Isa::parse("avx9000", best).unwrap_err();
        assert!(
            msg.contains("PALIGEMMA_KERNELS") && msg.contains("portable"),
            "{msg}"
        );
        #[cfg(target_arch = "x86_64")]
        assert!(Isa::parse("avx512bf16", Isa::Avx2).is_err());
    }
}
