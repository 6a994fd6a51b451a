//! Products of every format at every kernel level this CPU runs, against an f64
//! reference; the zero-copy and row-lookup paths.

use super::*;
use crate::cpu::memory::to_bf16;

/// Deterministic values in [-1, 1) (no rand dependency needed).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// f64 reference of `x · Wᵀ + b` on the exact operands the kernels see.
fn reference(x: &[f64], w: &[f64], bias: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|c| x[i * k + c] * w[j * k + c]).sum();
            out[i * n + j] = dot + f64::from(bias[j]);
        }
    }
    out
}

/// Every kernel level this CPU can run, portable included.
fn isas() -> Vec<Isa> {
    let levels = [
        Isa::Portable,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16,
    ];
    levels.into_iter().filter(|&l| l <= Isa::best()).collect()
}

/// Every level with every route its prompt products can take: at AVX-512 BF16 both
/// the `vdpbf16ps` products and the f32 tile, whichever this CPU would choose.
fn routes() -> Vec<(Isa, bool)> {
    isas()
        .into_iter()
        .flat_map(|isa| {
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512Bf16 {
                return vec![(isa, false), (isa, true)];
            }
            vec![(isa, false)]
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], k: usize, what: &str) {
    // f32 accumulation of k products of magnitude <= 1.
    let tol = 1e-6 * k as f64 + 1e-6;
    for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what}: element {idx}: {g} vs {w} (tol {tol})"
        );
    }
}

/// A product without bias against the f64 reference on activations rounded to bf16
/// (what every reduced-precision product multiplies) and weights `wr` as stored.
fn check_unbiased(
    mat: &HostMatrix,
    x: &[f32],
    wr: &[f64],
    (m, n, k): (usize, usize, usize),
    (isa, dots): (Isa, bool),
    what: &str,
) {
    let xr: Vec<f64> = x
        .iter()
        .map(|&v| f64::from(from_bf16(to_bf16(v))))
        .collect();
    let got = mat.matmul_t_with(x, m, None, isa, dots);
    let want = reference(&xr, wr, &vec![0f32; n], m, n, k);
    assert_close(
        &got,
        &want,
        k,
        &format!("{what} {isa:?} dots {dots} {m}x{n}x{k}"),
    );
}

// Shapes cover k tails (not a multiple of 32 or 16, odd), row remainders (m, n not
// multiples of 4 or 6), several row blocks, several k blocks, and for the packed
// kernel several 64-row activation blocks with a partial last one.
const SHAPES: [(usize, usize, usize); 7] = [
    (70, 40, 2050),
    (1, 8, 32),
    (3, 70, 45),
    (4, 132, 4097),
    (5, 64, 100),
    (1, 130, 9000),
    (9, 67, 1153),
];

#[test]
fn bf16_product_matches_reference() {
    for (isa, dots) in routes() {
        for &(m, n, k) in &SHAPES {
            let x = values(m * k, 1);
            let w: Vec<u16> = values(n * k, 2).into_iter().map(to_bf16).collect();
            let bias = values(n, 3);
            let mat = HostMatrix::bf16(n, k, w.clone());
            let got = mat.matmul_t_with(&x, m, Some(&bias), isa, dots);
            let xr: Vec<f64> = x
                .iter()
                .map(|&v| f64::from(from_bf16(to_bf16(v))))
                .collect();
            let wr: Vec<f64> = w.iter().map(|&v| f64::from(from_bf16(v))).collect();
            let want = reference(&xr, &wr, &bias, m, n, k);
            assert_close(
                &got,
                &want,
                k,
                &format!("bf16 {isa:?} dots {dots} {m}x{n}x{k}"),
            );
        }
    }
}

#[test]
fn f32_product_matches_reference() {
    // f32 weights take the same route whatever `packed_dots` says.
    for (isa, dots) in isas().into_iter().map(|isa| (isa, false)) {
        for &(m, n, k) in &SHAPES {
            let x = values(m * k, 7);
            let w = values(n * k, 8);
            let bias = values(n, 9);
            let got = HostMatrix::f32(n, k, w.clone()).matmul_t_with(&x, m, Some(&bias), isa, dots);
            let xr: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let wr: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
            let want = reference(&xr, &wr, &bias, m, n, k);
            assert_close(
                &got,
                &want,
                k,
                &format!("f32 {isa:?} dots {dots} {m}x{n}x{k}"),
            );
        }
    }
}

#[test]
fn int8_product_matches_reference() {
    for (isa, dots) in routes() {
        for &(m, n, k) in &SHAPES {
            let x = values(m * k, 4);
            let w = values(n * k, 5);
            let mat = HostMatrix::int8(n, k, &w);
            let Storage::Int8 { q, scale } = &mat.storage else {
                unreachable!()
            };
            // Quantization error is at most half a step per weight.
            for (r, row) in w.chunks(k).enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    let back = f32::from(q[r * k + c]) * scale[r];
                    assert!((back - v).abs() <= scale[r] * 0.5 + 1e-7);
                }
            }
            let wr: Vec<f64> = (0..n * k)
                .map(|i| f64::from(q[i]) * f64::from(scale[i / k]))
                .collect();
            // Every product sees the activations in bf16, streaming rows included.
            check_unbiased(&mat, &x, &wr, (m, n, k), (isa, dots), "int8");
        }
    }
}

#[test]
fn int4_product_matches_reference() {
    for (isa, dots) in routes() {
        for &(m, n, k) in &SHAPES {
            let x = values(m * k, 11);
            let w = values(n * k, 12);
            let mat = HostMatrix::int4(n, k, &w);
            let mut back = vec![0f32; k];
            let mut wr = Vec::with_capacity(n * k);
            for (r, row) in w.chunks(k).enumerate() {
                mat.row_into(r, &mut back);
                let Storage::Int4 { scale, groups, .. } = &mat.storage else {
                    unreachable!()
                };
                // Half a step, or one step where the side of zero opposite the
                // group's extreme value is clamped at +7 steps.
                for (c, (&b, &v)) in back.iter().zip(row).enumerate() {
                    let s = scale[r * groups + c / 32];
                    let limit = if v / s > 7.5 { s.abs() } else { s.abs() * 0.5 };
                    assert!((b - v).abs() <= limit + 1e-7, "row {r} col {c}: {b} vs {v}");
                }
                wr.extend(back.iter().map(|&v| f64::from(v)));
            }
            check_unbiased(&mat, &x, &wr, (m, n, k), (isa, dots), "int4");
        }
    }
}

/// The zero-copy path reads the mapping in place, and refuses offsets that are not
/// aligned for the element type (the loader then copies).
#[test]
fn mapped_values_read_in_place_or_refuse() {
    use std::io::Write;
    let w: Vec<u16> = values(2 * 3, 10).into_iter().map(to_bf16).collect();
    let mut bytes = vec![0u8; 2];
    bytes.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    bytes.push(0);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&bytes).unwrap();
    // SAFETY (test): the temporary file is private to this test and not modified.
    let map = Arc::new(FileBytes::Mapped(
        unsafe { memmap2::Mmap::map(&file) }.unwrap(),
    ));
    let m = HostMatrix::mapped_bf16(&map, 2, 2, 3).expect("2-aligned bf16 in place");
    let mut row = vec![0f32; 3];
    m.row_into(1, &mut row);
    assert_eq!(
        row,
        w[3..].iter().map(|&v| from_bf16(v)).collect::<Vec<_>>()
    );
    assert!(
        HostMatrix::mapped_bf16(&map, 1, 2, 3).is_none(),
        "odd offset"
    );
    assert!(
        HostMatrix::mapped_f32(&map, 2, 1, 2).is_none(),
        "not 4-aligned"
    );
    assert!(
        HostMatrix::mapped_bf16(&map, 4, 2, 3).is_none(),
        "past the end"
    );
}

#[test]
fn rows_widen_exactly() {
    let w = values(3 * 5, 6);
    let bf: Vec<u16> = w.iter().map(|&v| to_bf16(v)).collect();
    let mut row = vec![0f32; 5];
    HostMatrix::bf16(3, 5, bf.clone()).row_into(1, &mut row);
    assert_eq!(
        row,
        bf[5..10].iter().map(|&v| from_bf16(v)).collect::<Vec<_>>()
    );
    let q = HostMatrix::int8(3, 5, &w);
    q.row_into(2, &mut row);
    for (got, want) in row.iter().zip(&w[10..15]) {
        assert!((got - want).abs() <= 1.0 / 254.0 + 1e-6);
    }
}
