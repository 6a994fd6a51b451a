//! Which of the kernels this CPU can run, detected at run time.

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
pub(super) enum Isa {
    Portable,
    /// AVX-512 F, BW and VL: the f32 and int8 kernels.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with BF16 dot products: every kernel.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

impl Isa {
    pub(super) fn detect() -> Self {
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
