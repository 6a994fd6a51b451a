//! Memory and number-format helpers shared by the kernels and the weight loader.

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

pub(super) fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// The bytes of a weight file: memory-mapped from disk, or embedded in the binary
/// (the demo model). Host matrices borrow weights from either in place.
pub(crate) enum FileBytes {
    /// A read-only mapping of a file.
    Mapped(memmap2::Mmap),
    /// Bytes that live as long as the program (`include_bytes!`).
    Static(&'static [u8]),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Static(b) => b,
        }
    }
}
