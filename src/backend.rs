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

/// Start `B` on `device` with one tiny operation, turning a panic inside the backend
/// (wgpu without an adapter, CUDA without a driver: cubecl panics in its device thread)
/// into `Error::Backend` with the backend's message and what to install. CPU backends
/// cannot fail this way and are not probed.
pub(crate) fn start_device<B: burn::tensor::backend::Backend>(
    device: &B::Device,
) -> crate::error::Result<()> {
    use std::sync::{Arc, Mutex};
    if is_cpu::<B>() {
        return Ok(());
    }
    // The panic messages go into the error instead of onto stderr: the hook is the
    // process's, so it is swapped only for the probe.
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let previous = std::panic::take_hook();
    let sink = Arc::clone(&messages);
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        if let Ok(mut m) = sink.lock() {
            m.push(text);
        }
    }));
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<B, 1>::zeros([1], device).into_data()
    }));
    std::panic::set_hook(previous);
    if probe.is_ok() {
        return Ok(());
    }
    let said = messages.lock().map(|m| m.join("; ")).unwrap_or_default();
    let name = std::any::type_name::<B>();
    let hint = if name.contains("Wgpu") || name.contains("wgpu") {
        "wgpu found no usable GPU adapter: install a Vulkan driver (the GPU vendor's, or \
         Mesa's software one: mesa-vulkan-drivers and libvulkan1 on Debian and Ubuntu), \
         or run on the CPU (--device cpu)"
    } else if name.contains("Cuda") || name.contains("cuda") {
        "CUDA could not start: it needs an NVIDIA GPU, its driver (libcuda) and NVRTC \
         (libnvrtc, from the CUDA toolkit) on the library path, or run on the CPU \
         (--device cpu)"
    } else {
        "the backend could not start on this device"
    };
    Err(crate::error::Error::Backend(format!(
        "{hint} (the backend said: {said})"
    )))
}
