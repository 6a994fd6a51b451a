//! Persistent caches for the GPU backends (features `wgpu`, `cuda`): compiled kernels
//! (CUDA PTX, SPIR-V where cubecl builds it) and autotune results, kept in one
//! directory so a new process, or a container started from a pre-warmed image
//! (`paligemma warmup`), does not compile and tune everything again before its first
//! token.
//!
//! cubecl reads its runtime configuration once, on the first GPU operation, so the
//! cache is set before any GPU model is loaded: by [`set_gpu_cache`], or by the
//! environment variable [`GPU_CACHE_ENV`], which every model load on a GPU backend
//! reads. Without either, cubecl's defaults hold (no kernel cache; autotune results in
//! the project's `target/` or the user's cache directory), and a `cubecl.toml` or the
//! `[cubecl]` section of a `burn.toml` is honoured as cubecl documents them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::cubecl::config::cache::CacheConfig;
use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

use crate::error::{Error, Result};

/// The environment variable naming the GPU cache directory.
pub const GPU_CACHE_ENV: &str = "PALIGEMMA_GPU_CACHE";

/// Keep compiled kernels and autotune results under `dir` (created if needed) for
/// every GPU model of this process. Returns `false` when the caches already pointed
/// there. Must run before the first GPU operation: afterwards cubecl's configuration
/// is fixed, and asking for another directory is `Error::Backend`. The rest of the
/// configuration is cubecl's own (its files and `CUBECL_AUTOTUNE_LEVEL`, where
/// `minimal` trades a little speed for a much shorter first run).
pub fn set_gpu_cache(dir: impl AsRef<Path>) -> Result<bool> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let mut state = CubeClRuntimeConfig::storage().lock();
    if let Some(current) = state.as_ref() {
        return match cache_dirs(current) {
            (Some(kernels), Some(tuning)) if kernels == dir && tuning == dir => Ok(false),
            _ => Err(Error::Backend(format!(
                "the GPU runtime has already started without its cache in {}: set the cache \
                 (paligemma::set_gpu_cache or {GPU_CACHE_ENV}) before the first GPU model is loaded",
                dir.display()
            ))),
        };
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.compilation.cache = Some(CacheConfig::File(dir.clone()));
    config.autotune.cache = CacheConfig::File(dir);
    *state = Some(Arc::new(config));
    Ok(true)
}

/// [`set_gpu_cache`] on the directory in [`GPU_CACHE_ENV`], when it is set and
/// non-empty; nothing otherwise.
pub fn gpu_cache_from_env() -> Result<()> {
    match std::env::var_os(GPU_CACHE_ENV) {
        Some(dir) if !dir.is_empty() => set_gpu_cache(PathBuf::from(dir)).map(|_| ()),
        _ => Ok(()),
    }
}

/// The directories of the kernel and autotune caches, when they are explicit paths.
pub fn gpu_cache_dirs() -> (Option<PathBuf>, Option<PathBuf>) {
    cache_dirs(&CubeClRuntimeConfig::get())
}

fn cache_dirs(config: &CubeClRuntimeConfig) -> (Option<PathBuf>, Option<PathBuf>) {
    let file = |c: &CacheConfig| match c {
        CacheConfig::File(p) => Some(p.clone()),
        _ => None,
    };
    (
        config.compilation.cache.as_ref().and_then(file),
        file(&config.autotune.cache),
    )
}
