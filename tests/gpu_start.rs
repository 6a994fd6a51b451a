//! GPU start-up (feature `wgpu`): the cache directory (`set_gpu_cache`) is installed
//! once, before cubecl starts, with the kernel and autotune caches in it; and a machine
//! without a usable adapter gets `Error::Backend` saying what to install, not a panic.
//! One test in its own binary: cubecl's configuration and device are global to the
//! process, so the steps run in order.
#![cfg(feature = "wgpu")]

mod common;

use paligemma::{Error, Model, backend::Wgpu, gpu_cache_dirs, set_gpu_cache};

#[test]
fn gpu_start_up_is_configured_once_and_fails_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("kernels");
    assert!(set_gpu_cache(&cache).unwrap(), "the first call installs it");
    assert!(cache.is_dir(), "the directory is created");
    let canonical = std::fs::canonicalize(&cache).unwrap();
    assert_eq!(gpu_cache_dirs(), (Some(canonical.clone()), Some(canonical)));
    assert!(
        !set_gpu_cache(&cache).unwrap(),
        "the same directory again is fine"
    );
    match set_gpu_cache(dir.path().join("other")) {
        Err(Error::Backend(msg)) => assert!(msg.contains("already started"), "{msg}"),
        other => panic!("another directory after start: {other:?}"),
    }

    // Hide every Vulkan driver from the loader: wgpu then finds no adapter (unless the
    // machine offers one by another API, in which case loading simply works).
    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe {
        std::env::set_var("VK_ICD_FILENAMES", "/nonexistent/icd.json");
        std::env::set_var("VK_DRIVER_FILES", "/nonexistent/icd.json");
    }
    let dir = common::fixtures().join("pg1-tiny");
    match Model::<Wgpu>::from_pretrained(&dir, &Default::default()) {
        Err(Error::Backend(msg)) => {
            eprintln!("without Vulkan drivers: {msg}");
            assert!(msg.contains("adapter") && msg.contains("Vulkan"), "{msg}")
        }
        Err(e) => panic!("no adapter: unexpected error {e}"),
        Ok(_) => eprintln!("an adapter was found without Vulkan drivers; nothing to check"),
    }
}
