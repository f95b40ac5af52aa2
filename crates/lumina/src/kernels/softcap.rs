//! Gemma-2's attention-logit soft cap `cap·tanh(scale·s/cap)` in one pass over f32 scores
//! (inference; the composed candle ops are the reference and the path for training and
//! other devices).
//!
//! Composed it is three passes, and candle's `tanh` is libm's scalar `tanhf` per element:
//! 1.9 % of a Gemma-2 2B bf16 encoding of 512 tokens under `perf`, more than the whole
//! attention softmax. Here `cap·tanh(z) = cap − 2·cap / (1 + e^{2z})` on the vectorisable
//! `math::exp2`: both tails saturate to ±cap without overflow (the exponent is clamped),
//! and the absolute error is a few ulp of `cap` — far below the bf16 rounding of the scores
//! in HF's own eager path (`transformers` `Gemma2Attention`).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::math;
use super::storage::contiguous_f32;
use super::{Isa, Level};
use crate::error::Result;

/// Elements per rayon task.
const CHUNK: usize = 16_384;

/// Whether [`softcap`] takes this tensor: CPU, f32, no autograd.
pub fn applies(s: &Tensor) -> bool {
    super::modulate::applies(&[s]) && s.dtype() == DType::F32
}

/// `cap·tanh(scale·s/cap)` elementwise for a CPU f32 tensor (see [`applies`]).
pub fn softcap(s: &Tensor, scale: f64, cap: f64) -> Result<Tensor> {
    Ok(s.contiguous()?.apply_op1_no_bwd(&SoftCap {
        level: Isa::detect().level(),
        scale: scale as f32,
        cap: cap as f32,
    })?)
}

/// The constants of `cap − 2·cap / (1 + 2^(k·s))` with `k = 2·log₂e·scale/cap`.
#[derive(Clone, Copy)]
struct Params {
    k: f32,
    cap: f32,
}

impl Params {
    fn new(scale: f32, cap: f32) -> Self {
        Self {
            k: 2.0 * std::f32::consts::LOG2_E * scale / cap,
            cap,
        }
    }
}

#[inline(always)]
fn body(y: &mut [f32], s: &[f32], p: Params) {
    for (y, &s) in y.iter_mut().zip(s) {
        *y = p.cap - 2.0 * p.cap / (1.0 + math::exp2(p.k * s));
    }
}

at_level! {
    /// `body` compiled for `level`'s vector width.
    fn cap_at(y: &mut [f32], s: &[f32], p: Params) => body
}

struct SoftCap {
    level: Level,
    scale: f32,
    cap: f32,
}

impl CustomOp1 for SoftCap {
    fn name(&self) -> &'static str {
        "softcap"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let s = contiguous_f32(s, l, "softcap scores")?;
        let p = Params::new(self.scale, self.cap);
        let mut y = vec![0f32; s.len()];
        y.par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK))
            .for_each(|(y, s)| cap_at(self.level, y, s, p));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every level against the f64 definition (absolute error within 4 f32 ulp of `cap`) and
    /// candle's composed ops, over scores that reach both saturated tails, with a ragged
    /// length; the public op on a tensor gives the portable result's values.
    #[test]
    fn softcap_matches_the_definition_at_every_level() -> Result<()> {
        let (scale, cap) = (0.0625f32, 50.0f32);
        let n = 3 * CHUNK + 77;
        let s: Vec<f32> = (0..n)
            .map(|i| -6000.0 + 12000.0 * (i as f32 / n as f32).powi(3))
            .collect();
        let p = Params::new(scale, cap);
        let t = Tensor::from_slice(&s, n, &Device::Cpu)?;
        let composed = (((&t * f64::from(scale))? / f64::from(cap))?.tanh()? * f64::from(cap))?
            .to_vec1::<f32>()?;
        let tol = 4.0 * f64::from(cap) * f64::from(f32::EPSILON);
        for level in crate::kernels::test_levels() {
            let mut got = vec![0f32; n];
            cap_at(level, &mut got, &s, p);
            for i in 0..n {
                let x = f64::from(s[i]) * f64::from(scale);
                let want = f64::from(cap) * (x / f64::from(cap)).tanh();
                let g = f64::from(got[i]);
                assert!(
                    (g - want).abs() <= tol,
                    "{} at s = {}: {g} against the definition {want}",
                    level.name(),
                    s[i]
                );
                assert!(
                    (g - f64::from(composed[i])).abs() <= 2.0 * tol,
                    "{} at s = {}: {g} against candle's {}",
                    level.name(),
                    s[i],
                    composed[i]
                );
            }
        }
        assert!(applies(&t));
        assert!(!applies(&t.to_dtype(DType::BF16)?));
        let mut portable = vec![0f32; n];
        cap_at(Level::Portable, &mut portable, &s, p);
        let got = softcap(&t, f64::from(scale), f64::from(cap))?.to_vec1::<f32>()?;
        for (i, (g, w)) in got.iter().zip(&portable).enumerate() {
            assert!((g - w).abs() <= tol as f32, "element {i}: {g} against {w}");
        }
        Ok(())
    }
}
