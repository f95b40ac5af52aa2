//! The adaLN modulation of a Lumina block fused with the RMSNorm before it, one pass over
//! memory each (inference only; training composes differentiable ops):
//!
//! - [`rms_scale`]: `RMSNorm(x) · (1 + s)`, the modulated input of attention and FFN;
//! - [`rms_gated_residual`]: `x + tanh(g) · RMSNorm(y)`, the gated residual after each.
//!
//! Composed, each is five to seven full passes with a fresh tensor per pass (upcast, square,
//! mean, scale, weight, modulate, add). Statistics and products are f32 whatever the storage
//! dtype (f32 or bf16), rounded once at the end.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::math::inv_rms;
use super::storage::{contiguous_bf16, contiguous_f32};
use crate::error::{Error, Result};

/// Whether the fused kernels can take these operands (CPU, f32 or bf16, no autograd).
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| {
        t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::BF16) && !t.track_op()
    })
}

/// `RMSNorm(x)·w·(1 + s)` for `x` (B, N, D), the norm weight `w` (D,) and `s` (B, D).
pub fn rms_scale(x: &Tensor, weight: &Tensor, s: &Tensor, eps: f64) -> Result<Tensor> {
    let factor = weight
        .to_dtype(DType::F32)?
        .broadcast_mul(&(s.to_dtype(DType::F32)? + 1.0)?)?; // (B, D)
    let op = RowOp {
        eps: eps as f32,
        rows_per_batch: rows_per_batch(x, &factor)?,
    };
    Ok(x.contiguous()?
        .apply_op2_no_bwd(&factor.contiguous()?, &op)?)
}

/// `x + tanh(g)·RMSNorm(y)·w` for `x`, `y` (B, N, D), the norm weight `w` (D,), `g` (B, D).
pub fn rms_gated_residual(
    x: &Tensor,
    y: &Tensor,
    weight: &Tensor,
    g: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if x.dims() != y.dims() || x.dtype() != y.dtype() {
        return Err(Error::input(
            "gated residual operands",
            format!("{:?} {:?} twice", x.dims(), x.dtype()),
            format!("{:?} {:?}", y.dims(), y.dtype()),
        ));
    }
    let factor = weight
        .to_dtype(DType::F32)?
        .broadcast_mul(&g.to_dtype(DType::F32)?.tanh()?)?; // (B, D)
    let op = RowOp {
        eps: eps as f32,
        rows_per_batch: rows_per_batch(x, &factor)?,
    };
    Ok(x.contiguous()?
        .apply_op3_no_bwd(&y.contiguous()?, &factor.contiguous()?, &op)?)
}

/// Rows of `x` (B, N, D) per row of `factor` (B, D).
fn rows_per_batch(x: &Tensor, factor: &Tensor) -> Result<usize> {
    let (b, n, d) = x.dims3()?;
    if factor.dims() != [b, d] {
        return Err(Error::input(
            "modulation vector",
            format!("({b}, {d}) for activations {:?}", x.dims()),
            format!("{:?}", factor.dims()),
        ));
    }
    Ok(n)
}

struct RowOp {
    eps: f32,
    rows_per_batch: usize,
}

/// Activations as f32 rows, whatever their storage.
enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Rows<'a> {
    fn new(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<Self> {
        match s {
            CpuStorage::BF16(_) => Ok(Rows::Bf16(contiguous_bf16(s, l, "modulated rows")?)),
            _ => Ok(Rows::F32(contiguous_f32(s, l, "modulated rows")?)),
        }
    }

    /// Row `r` of width `d` widened into `buf`.
    fn row(&self, r: usize, d: usize, buf: &mut [f32]) {
        match self {
            Rows::F32(v) => buf.copy_from_slice(&v[r * d..(r + 1) * d]),
            Rows::Bf16(v) => buf
                .iter_mut()
                .zip(&v[r * d..(r + 1) * d])
                .for_each(|(o, x)| *o = x.to_f32()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::Bf16(v) => v.len(),
        }
    }

    fn is_bf16(&self) -> bool {
        matches!(self, Rows::Bf16(_))
    }
}

impl RowOp {
    /// Runs `f(row, widened x row, out row)` over all rows in parallel and stores the result
    /// in the storage dtype of the activations.
    fn map_rows(
        &self,
        x: &Rows,
        d: usize,
        shape: &[usize],
        f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
    ) -> (CpuStorage, Shape) {
        let rows = x.len() / d.max(1);
        let mut out = vec![0f32; rows * d];
        out.par_chunks_mut(d.max(1) * 16)
            .enumerate()
            .for_each(|(chunk, block)| {
                let mut buf = vec![0f32; d];
                for (i, orow) in block.chunks_mut(d).enumerate() {
                    let r = chunk * 16 + i;
                    x.row(r, d, &mut buf);
                    f(r, &mut buf, orow);
                }
            });
        let storage = if x.is_bf16() {
            CpuStorage::BF16(out.into_iter().map(bf16::from_f32).collect())
        } else {
            CpuStorage::F32(out)
        };
        (storage, Shape::from_dims(shape))
    }
}

impl CustomOp2 for RowOp {
    fn name(&self) -> &'static str {
        "fused-rms-scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = Rows::new(s1, l1)?;
        let factor = contiguous_f32(s2, l2, "modulation factor")?;
        let d = l1.dims().last().copied().unwrap_or(1);
        Ok(self.map_rows(&x, d, l1.dims(), |r, xr, out| {
            let f = &factor[(r / self.rows_per_batch) * d..][..d];
            let inv = inv_rms(xr, self.eps);
            for ((o, x), f) in out.iter_mut().zip(xr.iter()).zip(f) {
                *o = x * inv * f;
            }
        }))
    }
}

impl CustomOp3 for RowOp {
    fn name(&self) -> &'static str {
        "fused-rms-gated-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = Rows::new(s1, l1)?;
        let y = Rows::new(s2, l2)?;
        let factor = contiguous_f32(s3, l3, "modulation factor")?;
        let d = l1.dims().last().copied().unwrap_or(1);
        Ok(self.map_rows(&x, d, l1.dims(), |r, xr, out| {
            let f = &factor[(r / self.rows_per_batch) * d..][..d];
            y.row(r, d, out);
            let inv = inv_rms(out, self.eps);
            for ((o, x), f) in out.iter_mut().zip(xr.iter()).zip(f) {
                *o = x + *o * inv * f;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{gated_residual, ops, scale};
    use candle_core::Device;

    /// Largest difference relative to the largest magnitude of `b`.
    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        let b = b.to_dtype(DType::F32)?;
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        Ok((a.to_dtype(DType::F32)? - b)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?
            / scale.max(1e-6))
    }

    /// Against the composed ops the blocks used before: f32 to rounding, bf16 to bf16 precision.
    #[test]
    fn fused_modulation_matches_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (b, n, d) = (2, 37, 48);
        let x = Tensor::randn(0f32, 1.0, (b, n, d), &dev)?;
        let y = (Tensor::randn(0f32, 1.0, (b, n, d), &dev)? * 3.0)?;
        let w = (Tensor::randn(0f32, 0.1, d, &dev)? + 1.0)?;
        let s = Tensor::randn(0f32, 0.5, (b, d), &dev)?;
        // bf16 storage: the fused kernel computes in f32 and rounds once, so it must sit within
        // one bf16 rounding (2⁻⁸ relative) of the f32 composition on the same inputs
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 2f32.powi(-8))] {
            let (x, y) = (x.to_dtype(dtype)?, y.to_dtype(dtype)?);
            let (xf, yf) = (x.to_dtype(DType::F32)?, y.to_dtype(DType::F32)?);
            let want = scale(&ops::rms_norm_composed(&xf, &w, 1e-5)?, &s)?;
            let got = rms_scale(&x, &w, &s, 1e-5)?;
            assert_eq!(got.dtype(), dtype);
            let e = max_diff(&got, &want)?;
            assert!(e < tol, "{dtype:?} rms_scale: {e}");

            let normed = ops::rms_norm_composed(&yf, &w, 1e-5)?;
            let want = gated_residual(&xf, &s, &normed)?;
            let got = rms_gated_residual(&x, &y, &w, &s, 1e-5)?;
            let e = max_diff(&got, &want)?;
            assert!(e < tol, "{dtype:?} rms_gated_residual: {e}");
        }
        let bad = Tensor::zeros((3, d), DType::F32, &dev)?;
        assert!(rms_scale(&x, &w, &bad, 1e-5).is_err());
        Ok(())
    }
}
