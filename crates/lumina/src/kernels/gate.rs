//! Gemma's feed-forward gate `gelu_tanh(a) ⊙ b` in one pass (inference; the composed candle
//! ops are the reference and the path for training and other devices).
//!
//! Composed, it is three passes with a fresh tensor each, and candle's GELU calls libm's
//! scalar `tanhf` per element: in a Gemma-2 2B encoding of 512 tokens that was 5 % of the
//! time. Here `½·x·(1 + tanh(y)) = x·σ(2y)` with `y = √(2/π)·(x + 0.044715·x³)` (the
//! approximation Gemma's `gelu_pytorch_tanh` names), and `σ(2y) = 1 / (1 + 2^(−2y·log₂e))` on
//! the vectorisable [`math::exp2`]: no cancellation in `1 + tanh`, within a few ulp of the
//! composed form.
//!
//! bf16 operands (a bf16 pipeline's encoder) are widened per chunk, gated in f32 and rounded
//! once; candle's bf16 GELU was 40 % of a Gemma-2B bf16 encoding under `perf` (scalar
//! `tanhf`/`expm1f` per element, then a second rounding in the product).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::math;
use super::storage::{contiguous_bf16, contiguous_f32};
use super::{Isa, Level};
use crate::error::Result;

/// Elements per rayon task.
const CHUNK: usize = 16_384;

/// Whether [`gelu_tanh_gate`] takes these operands: CPU, both f32 or both bf16, same shape,
/// no autograd.
pub fn applies(a: &Tensor, b: &Tensor) -> bool {
    super::modulate::applies(&[a, b])
        && matches!(a.dtype(), DType::F32 | DType::BF16)
        && a.dtype() == b.dtype()
        && a.dims() == b.dims()
}

/// `gelu_tanh(a) ⊙ b` for same-shaped CPU f32 or bf16 tensors (see [`applies`]), in their
/// dtype.
pub fn gelu_tanh_gate(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.contiguous()?.apply_op2_no_bwd(
        &b.contiguous()?,
        &GeluGate {
            level: Isa::detect().level(),
        },
    )?)
}

/// `x·σ(2y)`, the tanh-approximated GELU, branch-free.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    // −2·√(2/π)·log₂e, folded so the exponent is one multiply of the cubic
    const K: f32 = -2.0 * 0.797_884_6 * std::f32::consts::LOG2_E;
    let inner = x + 0.044_715 * x * x * x;
    x / (1.0 + math::exp2(K * inner))
}

#[inline(always)]
fn body(y: &mut [f32], a: &[f32], b: &[f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = gelu_tanh(a) * b;
    }
}

at_level! {
    /// `body` compiled for `level`'s vector width.
    fn gate_at(y: &mut [f32], a: &[f32], b: &[f32]) => body
}

struct GeluGate {
    level: Level,
}

impl CustomOp2 for GeluGate {
    fn name(&self) -> &'static str {
        "gelu-tanh-gate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape().elem_count() != l2.shape().elem_count() {
            candle_core::bail!("gelu gate: {:?} against {:?}", l1.shape(), l2.shape());
        }
        let y = if matches!(s1, CpuStorage::BF16(_)) {
            let a = contiguous_bf16(s1, l1, "gelu gate a")?;
            let b = contiguous_bf16(s2, l2, "gelu gate b")?;
            CpuStorage::BF16(gate_bf16(self.level, a, b))
        } else {
            let a = contiguous_f32(s1, l1, "gelu gate a")?;
            let b = contiguous_f32(s2, l2, "gelu gate b")?;
            let mut y = vec![0f32; a.len()];
            y.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(|(y, (a, b))| gate_at(self.level, y, a, b));
            CpuStorage::F32(y)
        };
        Ok((y, l1.shape().clone()))
    }
}

/// The gate over bf16 operands: each chunk widened to f32 (exact), gated, rounded to bf16 once.
fn gate_bf16(level: Level, a: &[bf16], b: &[bf16]) -> Vec<bf16> {
    let mut y = vec![bf16::ZERO; a.len()];
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each_init(
            || (vec![0f32; CHUNK], vec![0f32; CHUNK], vec![0f32; CHUNK]),
            |(wa, wb, wy), (y, (a, b))| {
                let n = y.len();
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(a, &mut wa[..n]);
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(b, &mut wb[..n]);
                gate_at(level, &mut wy[..n], &wa[..n], &wb[..n]);
                half::slice::HalfFloatSliceExt::convert_from_f32_slice(y, &wy[..n]);
            },
        );
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every level against the f64 definition `½·x·(1 + tanh(y))·b` (relative 2e-6 plus the
    /// conditioning of the tail) and against
    /// candle's composed GELU ⊙ b, whose `1 + tanh` cancels in the negative tail (there it is
    /// off by up to ½·|x|·2⁻²³·|b|, rounding to 0 where the true value is ~1e-7), over a range
    /// that covers both saturated tails, with a ragged length.
    #[test]
    fn gate_matches_the_definition_and_the_composed_ops_at_every_level() -> Result<()> {
        let n = 40_001;
        let a: Vec<f32> = (0..n).map(|i| -12.0 + 24.0 * i as f32 / n as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let (ta, tb) = (
            Tensor::from_slice(&a, n, &Device::Cpu)?,
            Tensor::from_slice(&b, n, &Device::Cpu)?,
        );
        let composed = (ta.gelu()? * &tb)?.to_vec1::<f32>()?;
        // (value, its relative conditioning): σ(2y) far in the negative tail is e^{2y}, whose
        // relative error is |2y| times that of the f32 argument
        let exact: Vec<(f64, f64)> = a
            .iter()
            .zip(&b)
            .map(|(&x, &b)| {
                let (x, b) = (f64::from(x), f64::from(b));
                let y = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044_715 * x.powi(3));
                // ½(1 + tanh y) = σ(2y), the form without cancellation in f64 either
                let cond = 4.0 * y.abs() * f64::from(f32::EPSILON);
                (x * b / (1.0 + (-2.0 * y).exp()), cond)
            })
            .collect();
        assert!(applies(&ta, &tb));
        for level in crate::kernels::test_levels() {
            let mut got = vec![0f32; n];
            gate_at(level, &mut got, &a, &b);
            for i in 0..n {
                let (g, (e, cond), c) = (f64::from(got[i]), exact[i], f64::from(composed[i]));
                let name = level.name();
                assert!(
                    (g - e).abs() <= (2e-6 + cond) * e.abs() + 1e-30,
                    "{name} at x = {}: {g} against the definition {e}",
                    a[i]
                );
                let cancel = 0.5 * f64::from(a[i].abs() * b[i]) * f64::from(f32::EPSILON);
                assert!(
                    (g - c).abs() <= 2e-6 * c.abs() + cancel,
                    "{name} at x = {}: {g} against candle's {c}",
                    a[i]
                );
            }
        }
        let got = gelu_tanh_gate(&ta, &tb)?.to_vec1::<f32>()?;
        assert_eq!(got.len(), n);
        Ok(())
    }

    /// bf16 operands: at every level, each output is the f32 gate of the (exactly widened)
    /// inputs rounded to bf16 once — over a ragged length spanning several chunks — and the
    /// public op keeps the dtype and takes the dtype pair only when both agree.
    #[test]
    fn bf16_gate_is_the_f32_gate_rounded_once() -> Result<()> {
        let n = 2 * CHUNK + 1_234;
        let a: Vec<bf16> = (0..n)
            .map(|i| bf16::from_f32(-9.0 + 18.0 * i as f32 / n as f32))
            .collect();
        let b: Vec<bf16> = (0..n)
            .map(|i| bf16::from_f32(0.5 + (i % 11) as f32 * 0.3))
            .collect();
        let (wa, wb): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|v| v.to_f32()).collect(),
            b.iter().map(|v| v.to_f32()).collect(),
        );
        let mut want = vec![0f32; n];
        body(&mut want, &wa, &wb);
        for level in crate::kernels::test_levels() {
            let got = gate_bf16(level, &a, &b);
            for i in 0..n {
                assert_eq!(
                    got[i].to_bits(),
                    bf16::from_f32(want[i]).to_bits(),
                    "{} at x = {}: {} against {} rounded",
                    level.name(),
                    wa[i],
                    got[i],
                    want[i]
                );
            }
        }
        let (ta, tb) = (
            Tensor::from_slice(&a, n, &Device::Cpu)?,
            Tensor::from_slice(&b, n, &Device::Cpu)?,
        );
        assert!(applies(&ta, &tb));
        assert!(!applies(&ta, &tb.to_dtype(DType::F32)?));
        let got = gelu_tanh_gate(&ta, &tb)?;
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(got.to_vec1::<bf16>()?, gate_bf16(Level::Portable, &a, &b));
        Ok(())
    }
}
