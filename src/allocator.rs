//! Allocator tuning for programs that run many forward passes.

/// Let glibc keep freed memory for reuse instead of returning it to the kernel.
///
/// A forward pass allocates and frees activations of up to tens of MB per layer. With
/// glibc's defaults each buffer above 128 KiB is a fresh `mmap` (or a heap top that is
/// trimmed again after the pass), whose pages fault in zeroed on first touch and whose
/// `munmap` flushes the other cores' TLBs; for a small model or a batch of short
/// prompts that is a large share of the pass. After this call, buffers up to 32 MiB come
/// from the heap and up to 1 GiB of freed heap is kept. The CLI and `paligemma-server`
/// call it at start; a program embedding the library can do the same, or set
/// `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` and `MALLOC_TOP_PAD_`. It does
/// nothing with other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is thread-safe (it takes the arena lock) and only changes tuning;
    // a rejected value leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
