//! In-place parameter updates for the optimiser and the EMA: one pass over memory each instead
//! of a dozen tensor ops with fresh allocations.
//!
//! The composed tensor-op forms in `optim.rs` are the reference (`AdamW::step_composed`); the
//! tests check these kernels against them bit for bit, so a run can switch between the two and
//! still resume exactly.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor};

use crate::error::Result;

type CResult<T> = candle_core::Result<T>;

fn f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> CResult<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: in-place updates take f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("{what}: in-place updates take contiguous tensors"),
    }
}

fn f32_ref<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: in-place updates take f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: in-place updates take contiguous tensors"),
    }
}

fn check_len(what: &str, dst: usize, src: usize) -> CResult<()> {
    if dst != src {
        candle_core::bail!("{what}: {dst} elements updated from {src}")
    }
    Ok(())
}

/// `acc ← β·acc + (1−β)·x` (or `x²` with `square`): Adam's moments and the EMA.
///
/// Every factor is rounded to f32 from f64 and every product carries candle's `affine`
/// `+ 0.0`, exactly as the composed `(acc * β)? + (x * (1.0 − β))?` computes it.
struct Moment {
    beta: f32,
    one_minus_beta: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "moment-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> CResult<()> {
        let acc = f32_mut(dst, dst_l, self.name())?;
        let x = f32_ref(src, src_l, self.name())?;
        check_len(self.name(), acc.len(), x.len())?;
        let (b, c) = (self.beta, self.one_minus_beta);
        if self.square {
            acc.iter_mut()
                .zip(x)
                .for_each(|(a, &g)| *a = (*a * b + 0.0) + ((g * g) * c + 0.0));
        } else {
            acc.iter_mut()
                .zip(x)
                .for_each(|(a, &g)| *a = (*a * b + 0.0) + (g * c + 0.0));
        }
        Ok(())
    }
}

/// `θ ← θ·keep − lr · (m / c1) / (sqrt(v / c2) + eps)`, in the composed form's exact f32
/// arithmetic (divisions by scalars are candle multiplications by the f32 reciprocal).
struct AdamApply {
    lr: f32,
    inv_c1: f32,
    inv_c2: f32,
    eps: f32,
    /// `1 − lr·weight_decay`; `None` for parameters without decay.
    keep: Option<f32>,
}

impl InplaceOp3 for AdamApply {
    fn name(&self) -> &'static str {
        "adamw-apply"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> CResult<()> {
        let theta = f32_mut(dst, dst_l, self.name())?;
        let m = f32_ref(m, m_l, self.name())?;
        let v = f32_ref(v, v_l, self.name())?;
        check_len(self.name(), theta.len(), m.len())?;
        check_len(self.name(), theta.len(), v.len())?;
        for ((p, &m), &v) in theta.iter_mut().zip(m).zip(v) {
            let update = (m * self.inv_c1 + 0.0) / ((v * self.inv_c2 + 0.0).sqrt() + self.eps);
            let kept = match self.keep {
                Some(keep) => *p * keep + 0.0,
                None => *p,
            };
            *p = kept - (update * self.lr + 0.0);
        }
        Ok(())
    }
}

/// `acc ← β·acc + (1−β)·x` in place.
pub fn moment(acc: &Tensor, x: &Tensor, beta: f64) -> Result<()> {
    Ok(acc.inplace_op2(x, &Moment::new(beta, false))?)
}

/// `acc ← β·acc + (1−β)·x²` in place.
pub fn moment_sq(acc: &Tensor, x: &Tensor, beta: f64) -> Result<()> {
    Ok(acc.inplace_op2(x, &Moment::new(beta, true))?)
}

impl Moment {
    fn new(beta: f64, square: bool) -> Self {
        Self {
            beta: beta as f32,
            one_minus_beta: (1.0 - beta) as f32,
            square,
        }
    }
}

/// The AdamW parameter update in place (see [`crate::optim::AdamW`]): bias corrections
/// `c1`, `c2`; `keep = 1 − lr·weight_decay` for decayed parameters.
pub fn adamw_apply(
    theta: &Tensor,
    (m, v): (&Tensor, &Tensor),
    lr: f64,
    (c1, c2): (f64, f64),
    eps: f64,
    keep: Option<f64>,
) -> Result<()> {
    Ok(theta.inplace_op3(
        m,
        v,
        &AdamApply {
            lr: lr as f32,
            inv_c1: (1.0 / c1) as f32,
            inv_c2: (1.0 / c2) as f32,
            eps: eps as f32,
            keep: keep.map(|k| k as f32),
        },
    )?)
}

/// Whether the in-place kernels cover these tensors (contiguous f32 on the CPU).
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous())
}
