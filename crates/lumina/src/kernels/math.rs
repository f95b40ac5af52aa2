//! Vectorisable elementwise math for the kernels.

/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer
/// with plain adds, which vectorise on every instruction set (`round` does not on SSE2).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// The Taylor coefficients of `2^f = e^(f ln 2)`: `(ln 2)^k / k!` for k = 1…6.
const EXP2_POLY: [f32; 6] = [
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
];

/// `2^x` to about 2 ulp, branch-free so loops over it vectorise.
///
/// `2^x = 2ⁿ · 2^f` with `n = round(x)` and `f = x − n ∈ [−½, ½]` (exact), where the degree-6
/// Taylor polynomial of `e^(f ln 2)` is exact to 1.2e-7 relative. Base 2 is what the attention
/// softmax wants: with log₂e folded into its scale, `exp(s) = 2^(s·log₂e)` needs no range
/// reduction by ln 2 (FlashAttention-2 does the same). Inputs are clamped to the range of
/// normal results, so `−∞` (a masked score) gives 2⁻¹²⁶ instead of 0, which a softmax cannot
/// tell apart.
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    const C: [f32; 6] = EXP2_POLY;
    let x = x.clamp(-126.0, 127.0);
    let shifted = x + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let f = x - n;
    let p = 1.0 + f * (C[0] + f * (C[1] + f * (C[2] + f * (C[3] + f * (C[4] + f * C[5])))));
    // 2ⁿ from the bits of n + 1.5·2²³, whose low mantissa bits hold n: integer adds instead
    // of a float → int cast, which Rust saturates and LLVM then leaves scalar
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND_MAGIC.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// AVX-512 forms of the functions above.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::EXP2_POLY;

    /// [`super::exp2`] on 16 lanes, with AVX-512's own rounding (`vrndscaleps`) and
    /// power-of-two scaling (`vscalefps`) instead of the bit arithmetic: 9 instructions. Large
    /// inputs overflow to +∞ as they should; inputs are clamped below at −126 as in the
    /// scalar form (which also keeps −∞ from becoming NaN).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp2(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-126.0));
        // round to nearest, no fraction bits kept
        let n = _mm512_roundscale_ps::<0>(x);
        let f = _mm512_sub_ps(x, n);
        let mut p = _mm512_set1_ps(EXP2_POLY[5]);
        for &c in EXP2_POLY[..5].iter().rev() {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
        _mm512_scalef_ps(p, n)
    }
}

/// AVX2 + FMA forms of the functions above.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::EXP2_POLY;

    /// [`super::exp2`] on 8 lanes: `vroundps` for n, the polynomial on FMAs and 2ⁿ from n's
    /// integer bits, 13 instructions. The scalar form auto-vectorised takes about 20, as
    /// Rust never fuses its multiplies and adds. Same clamping as the scalar form (a large
    /// input gives 2¹²⁷·p instead of +∞; the softmax never has one, its scores are ≤ 0).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp2(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-126.0)),
            _mm256_set1_ps(127.0),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let f = _mm256_sub_ps(x, n);
        let mut p = _mm256_set1_ps(EXP2_POLY[5]);
        for &c in EXP2_POLY[..5].iter().rev() {
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
        }
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }
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
    fn exp2_matches_std_to_a_few_ulp_over_the_softmax_range() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -126.0 + 253.0 * i as f32 / 200_000.0;
            let want = x.exp2();
            let rel = ((exp2(x) - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp2(f32::NEG_INFINITY) < 1.2e-38);
        assert_eq!(exp2(0.0), 1.0);
        assert_eq!(exp2(-3.0), 0.125);
    }

    /// A vector exp2 of `L` lanes against the scalar form over the softmax's range (−130 … 0 in
    /// 40 000 steps) and `extra` inputs, to within 4e-7 relative.
    #[cfg(target_arch = "x86_64")]
    fn assert_lanes_match_scalar<const L: usize>(
        extra: &[f32],
        eval: impl Fn(&[f32; L]) -> [f32; L],
    ) {
        let xs: Vec<f32> = (0..=40_000)
            .map(|i| -130.0 + 130.0 * i as f32 / 40_000.0)
            .chain(extra.iter().copied())
            .collect();
        for chunk in xs.chunks(L) {
            let mut lanes = [0f32; L];
            lanes[..chunk.len()].copy_from_slice(chunk);
            for (&x, &g) in lanes.iter().zip(&eval(&lanes)) {
                let want = exp2(x);
                assert!(
                    (g - want).abs() <= 4e-7 * want,
                    "exp2({x}) on {L} lanes: {g} against {want}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_exp2_matches_the_scalar_form() {
        use std::arch::x86_64::*;
        if !crate::kernels::Isa::of_cpu().avx2 {
            assert!(
                std::env::var_os("CI").is_none(),
                "under CI an x86-64 machine without AVX2 skipped the AVX2 exp2"
            );
            eprintln!("skipped: no AVX2 on this CPU");
            return;
        }
        assert_lanes_match_scalar::<8>(&[f32::NEG_INFINITY, -1e30, 0.5, 3.0, 126.5], |lanes| {
            let mut got = [0f32; 8];
            // SAFETY: AVX2 and FMA checked above; both arrays hold 8 values.
            unsafe {
                let v = avx2::exp2(_mm256_loadu_ps(lanes.as_ptr()));
                _mm256_storeu_ps(got.as_mut_ptr(), v);
            }
            got
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp2_matches_the_scalar_form() {
        use std::arch::x86_64::*;
        if !crate::kernels::Isa::detect().avx512f {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
        assert_lanes_match_scalar::<16>(&[f32::NEG_INFINITY, -1e30, 0.5, 3.0], |lanes| {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above; both arrays hold 16 values.
            unsafe {
                let v = avx512::exp2(_mm512_loadu_ps(lanes.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), v);
            }
            got
        });
    }
}
