//! Portable kernels: the bf16 tile where the CPU lacks AVX-512 BF16, the f32 and int8
//! decode dot products where it lacks AVX-512. The operands are rounded as the AVX-512
//! kernels round them; sums run in index order.

use super::memory::from_bf16;

/// `acc[i][j] = Σ a[i][..k] · w[j][..k]` in f32 from bf16 operands.
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_bf16(
    a: &[u16],
    lda: usize,
    mr: usize,
    w: &[u16],
    ldw: usize,
    nr: usize,
    k: usize,
    acc: &mut [[f32; 4]; 4],
) {
    for (i, acc) in acc.iter_mut().enumerate().take(mr) {
        let a = &a[i * lda..i * lda + k];
        for (j, acc) in acc.iter_mut().enumerate().take(nr) {
            let w = &w[j * ldw..j * ldw + k];
            *acc = a
                .iter()
                .zip(w)
                .map(|(&a, &w)| from_bf16(a) * from_bf16(w))
                .sum();
        }
    }
}

/// `dots[j] = Σ w[j][c] * x[c]` for the rows of `w` (at most four) of `k` f32 values.
pub(super) fn dot4_f32(w: &[f32], k: usize, x: &[f32], dots: &mut [f32; 4]) {
    for (d, w) in dots.iter_mut().zip(w.chunks(k)) {
        *d = w.iter().zip(x).map(|(&w, &x)| w * x).sum();
    }
}

/// `dots[j] = Σ w[j][c] * x[c]` for the rows of `w` (at most four) of `k` int8 values.
pub(super) fn dot4_i8_f32(w: &[i8], k: usize, x: &[f32], dots: &mut [f32; 4]) {
    for (d, w) in dots.iter_mut().zip(w.chunks(k)) {
        *d = w.iter().zip(x).map(|(&w, &x)| f32::from(w) * x).sum();
    }
}
