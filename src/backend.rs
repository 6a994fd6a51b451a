//! Backend type aliases, one per enabled cargo feature.
//!
//! The model is generic over [`burn::tensor::backend::Backend`]; these aliases name the
//! backends this build was compiled with. Switching backend is a feature flag plus the
//! type parameter: `Model::<Cpu>` becomes `Model::<Wgpu>` with `--features wgpu`.

/// burn's pure-Rust CPU backend (`flex`, the default feature).
#[cfg(feature = "flex")]
pub type Flex = burn::backend::Flex;

/// The ndarray CPU backend (`ndarray` feature).
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray<f32>;

/// Any GPU through wgpu: Vulkan, Metal, DX12 (`wgpu` feature).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu<f32, i32>;

/// NVIDIA GPUs through CUDA (`cuda` feature).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// The default CPU backend of this build: `Flex` when enabled, else `NdArray`.
#[cfg(feature = "flex")]
pub type Cpu = Flex;
/// The default CPU backend of this build: `Flex` when enabled, else `NdArray`.
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type Cpu = NdArray;

/// Whether `B` is one of the CPU backends this build was compiled with (whose tensors
/// live in host memory, so host-side weight kernels can read them without a transfer).
pub fn is_cpu<B: burn::tensor::backend::Backend>() -> bool {
    let id = std::any::TypeId::of::<B>();
    #[cfg(feature = "flex")]
    if id == std::any::TypeId::of::<Flex>() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    if id == std::any::TypeId::of::<NdArray>() {
        return true;
    }
    let _ = id;
    false
}
