//! GELU (tanh form) of the MLP's gate projection times its up projection, in place.

use rayon::prelude::*;

use super::isa::Isa;
use super::parallel::min_items;

/// `g[i] = gelu_tanh(g[i]) * u[i]` (or `gelu_tanh(g[i])` without `u`), on all cores.
///
/// GELU's tanh form is evaluated as `x * sigmoid(2z)` (the same function, without the
/// cancellation of `1 + tanh(z)` for negative `z`) with a vectorisable `exp`; libm's
/// scalar `tanhf` had been a sixth of the prefill.
pub(crate) fn gelu_tanh_mul(g: &mut [f32], u: Option<&[f32]>) {
    const CHUNK: usize = 1 << 14;
    let isa = Isa::detect();
    let run = |g: &mut [f32], u: Option<&[f32]>| match isa {
        // SAFETY: a level is only chosen when the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { gelu_avx512(g, u) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { gelu_avx2(g, u) },
        Isa::Portable => gelu_body(g, u),
    };
    match u {
        Some(u) => g
            .par_chunks_mut(CHUNK)
            .zip(u.par_chunks(CHUNK))
            .with_min_len(min_items(CHUNK))
            .for_each(|(g, u)| run(g, Some(u))),
        None => g
            .par_chunks_mut(CHUNK)
            .with_min_len(min_items(CHUNK))
            .for_each(|g| run(g, None)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(g: &mut [f32], u: Option<&[f32]>) {
    gelu_body(g, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(g: &mut [f32], u: Option<&[f32]>) {
    gelu_body(g, u)
}

#[inline(always)]
fn gelu_body(g: &mut [f32], u: Option<&[f32]>) {
    match u {
        Some(u) => g
            .iter_mut()
            .zip(u)
            .for_each(|(g, &u)| *g = gelu_tanh(*g) * u),
        None => g.iter_mut().for_each(|g| *g = gelu_tanh(*g)),
    }
}

/// `0.5 x (1 + tanh(z)) = x / (1 + exp(-2z))`, `z = sqrt(2/pi) (x + 0.044715 x^3)`.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let z = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + exp(-2.0 * z))
}

/// `e^x` to about 1 ulp, branch-free so loops over it vectorise: `x = n ln 2 + r`
/// with `|r| <= ln 2 / 2`, Cephes' degree-5 polynomial for `e^r`, and `2^n` built in
/// the exponent bits. Inputs are clamped to where `2^n` is a normal float.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_f64() {
        let xs: Vec<f32> = (-4000..=4000)
            .map(|i| i as f32 * 0.0031)
            .chain([-95.0, -30.0, 30.0, 95.0])
            .collect();
        let mut g = xs.clone();
        let u: Vec<f32> = xs.iter().map(|x| 1.0 + x * 0.01).collect();
        gelu_tanh_mul(&mut g, Some(&u));
        for ((&x, &got), &u) in xs.iter().zip(&g).zip(&u) {
            let x64 = f64::from(x);
            let z = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let want = x64 / (1.0 + (-2.0 * z).exp()) * f64::from(u);
            let err = (f64::from(got) - want).abs();
            // In the negative tail f32 rounding of the argument dominates (torch, with
            // 1 + tanh(z) cancelling, is far less accurate there).
            assert!(
                err <= 5e-7 * want.abs() + 1e-8,
                "gelu({x}) = {got}, want {want}"
            );
            // The tanh form (what torch evaluates) agrees to f32 resolution.
            let tanh_form = 0.5 * x64 * (1.0 + z.tanh()) * f64::from(u);
            assert!((f64::from(got) - tanh_form).abs() <= 1e-6 * (1.0 + tanh_form.abs()));
        }
        for x in [-87.0f32, -10.0, -1.0, 0.0, 0.5, 1.0, 10.0, 88.0] {
            let rel = (f64::from(exp(x)) - f64::from(x).exp()).abs() / f64::from(x).exp();
            assert!(rel < 3e-7, "exp({x}) relative error {rel}");
        }
    }
}
