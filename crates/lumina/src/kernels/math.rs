//! Vectorisable elementwise math for the kernels.

/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer
/// with plain adds, which vectorise on every instruction set (`round` does not on SSE2).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `exp(x)` to about 2 ulp, branch-free so loops over it vectorise.
///
/// `exp(x) = 2ⁿ · e^r` with `n = round(x / ln 2)` and `r = x − n ln 2 ∈ [−ln2/2, ln2/2]`,
/// where a degree-6 Taylor polynomial is exact to 1.2e-7 relative. Inputs are clamped to the
/// range of normal results, so `−∞` (a masked score) gives 1e-38 instead of 0, which a
/// softmax cannot tell apart.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    // ln 2 split in a high part exact in f32 and a low correction (Cody–Waite)
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ⁿ from the bits of n + 1.5·2²³, whose low mantissa bits hold n: integer adds instead
    // of a float → int cast, which Rust saturates and LLVM then leaves scalar
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND_MAGIC.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    p * scale
}

/// `1 / sqrt(mean(x²) + eps)`: the RMSNorm factor of one row.
pub(crate) fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    1.0 / (ms + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp_over_the_softmax_range() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = x.exp();
            let rel = ((exp(x) - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }
}
