//! I-Max's projected flow (arXiv 2410.07536; PRIS-CV/I-Max `pipeline_flux_imax.py`,
//! `ternary_imax.md` §C.2): at the target resolution, the low-frequency part of the model's
//! velocity is pulled toward the straight path to a guide — the native-resolution result,
//! upsampled — while the high frequencies (details) stay the model's.
//!
//! In the project's convention (t = 0 noise → 1 data) the straight path from the state x at
//! time t to the guide x_g has the velocity `v_proj = (x_g − x) / (1 − t)`: if
//! x = t·x_g + (1 − t)·x0 then v_proj = x_g − x0. (I-Max writes the same in σ = 1 − t as
//! (x − x_g)/σ for its ε − x₀ velocity.)

use std::str::FromStr;

use candle_core::Tensor;

use super::field::TimePoint;
use super::solver::StepHook;
use crate::error::{Error, Result};

/// The guard I-Max adds to σ = 1 − t before dividing.
const SIGMA_GUARD: f64 = 1e-6;

/// How strongly step i of N follows the guide; w_i = ½·(1 + cos(π·i/N)) decays from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuideSchedule {
    /// I-Max's README default: v + w_i·(LP(v_proj) − LP(v)).
    CosineDecay,
    /// I-Max's function default: v + w_i·(v_proj − v) + (1 − w_i)·(LP(v_proj) − LP(v)) —
    /// early steps follow the guide in every band, later ones only in the low band.
    CosineShift,
    /// v + LP(v_proj) − LP(v) at every step: the low band lands on the guide's.
    Constant,
}

impl GuideSchedule {
    pub const ALL: [GuideSchedule; 3] = [
        GuideSchedule::CosineDecay,
        GuideSchedule::CosineShift,
        GuideSchedule::Constant,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GuideSchedule::CosineDecay => "cosine_decay",
            GuideSchedule::CosineShift => "cosine_shift",
            GuideSchedule::Constant => "constant",
        }
    }
}

impl FromStr for GuideSchedule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        GuideSchedule::ALL
            .into_iter()
            .find(|g| g.name() == s.to_ascii_lowercase().replace('-', "_"))
            .ok_or_else(|| {
                Error::input(
                    "projected-flow schedule",
                    "one of cosine_decay, cosine_shift, constant",
                    s,
                )
            })
    }
}

/// I-Max's cosine weight of step `step` of `steps`.
pub fn cosine_weight(step: usize, steps: usize) -> f64 {
    0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps.max(1) as f64).cos())
}

/// One level of the Haar approximation: the mean of each 2×2 block of the last two axes. An
/// odd edge is padded by repeating its last row or column (pywt's `symmetric` mode for one
/// element), so its block is the mean of the values it has.
fn pool2(x: &Tensor) -> Result<Tensor> {
    let rank = x.rank();
    let (h, w) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
    let pad = |x: Tensor, axis: usize, n: usize| -> Result<Tensor> {
        Ok(match n % 2 {
            1 => Tensor::cat(&[&x, &x.narrow(axis, n - 1, 1)?], axis)?,
            _ => x,
        })
    };
    let x = pad(pad(x.clone(), rank - 2, h)?, rank - 1, w)?;
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let mut shape = x.dims()[..rank - 2].to_vec();
    shape.extend([h2, 2, w2, 2]);
    Ok(x.reshape(shape)?.mean(rank + 1)?.mean(rank - 1)?)
}

/// Each value of the last two axes repeated 2×2, cut to `h × w`.
fn unpool2(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let rank = x.rank();
    let (ph, pw) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
    let lead = &x.dims()[..rank - 2];
    let shape = |dims: [usize; 4]| -> Vec<usize> { lead.iter().copied().chain(dims).collect() };
    let mut out = lead.to_vec();
    out.extend([2 * ph, 2 * pw]);
    Ok(x.reshape(shape([ph, 1, pw, 1]))?
        .broadcast_as(shape([ph, 2, pw, 2]))?
        .contiguous()?
        .reshape(out)?
        .narrow(rank - 2, 0, h)?
        .narrow(rank - 1, 0, w)?)
}

/// The Haar low-pass of the last two axes at `level`: decompose `level` times, zero every
/// detail band, reconstruct — the mean over each 2^level × 2^level block, spread over the
/// block. Level 0 is the identity.
pub fn haar_lowpass(x: &Tensor, level: usize) -> Result<Tensor> {
    let rank = x.rank();
    if rank < 2 {
        return Err(Error::input(
            "Haar low-pass input",
            "at least 2 axes",
            format!("{:?}", x.dims()),
        ));
    }
    let mut sizes = Vec::with_capacity(level);
    let mut low = x.clone();
    for _ in 0..level {
        let (h, w) = (low.dim(rank - 2)?, low.dim(rank - 1)?);
        if h == 1 && w == 1 {
            break;
        }
        sizes.push((h, w));
        low = pool2(&low)?;
    }
    for &(h, w) in sizes.iter().rev() {
        low = unpool2(&low, h, w)?;
    }
    Ok(low)
}

/// The projected-flow hook of the target-resolution pass.
#[derive(Clone, Debug)]
pub struct ProjectedFlow {
    /// The upsampled native result, in the state's space and shape (B, C, h, w).
    pub guide: Tensor,
    pub schedule: GuideSchedule,
    /// Haar levels of the low band (I-Max's default 1).
    pub level: usize,
}

impl ProjectedFlow {
    /// The velocity of the straight path from `x` at `t` to the guide.
    fn projected(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let sigma = (1.0 - t).max(0.0) + SIGMA_GUARD;
        Ok(((&self.guide - x)? / sigma)?)
    }
}

impl StepHook for ProjectedFlow {
    fn velocity(&self, x: &Tensor, v: Tensor, at: TimePoint) -> Result<Tensor> {
        if self.guide.dims() != x.dims() {
            return Err(Error::input(
                "projected-flow guide",
                format!("the state's shape {:?}", x.dims()),
                format!("{:?}", self.guide.dims()),
            ));
        }
        let guide_dtype = v.dtype();
        let v32 = v.to_dtype(self.guide.dtype())?;
        let proj = self.projected(x, at.t)?;
        // the low band of (v_proj − v): LP is linear
        let low = haar_lowpass(&(&proj - &v32)?, self.level)?;
        let w = cosine_weight(at.step, at.steps);
        let out = match self.schedule {
            GuideSchedule::Constant => (v32 + low)?,
            GuideSchedule::CosineDecay => (v32 + (low * w)?)?,
            GuideSchedule::CosineShift => {
                let all = ((proj - &v32)? * w)?;
                ((v32 + all)? + (low * (1.0 - w))?)?
            }
        };
        Ok(out.to_dtype(guide_dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{sample_with, Schedule, Solver};
    use candle_core::{DType, Device};

    fn ramp(shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 / 17.0 - 3.0)
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    #[test]
    fn level_one_is_the_mean_of_each_two_by_two_block() -> Result<()> {
        let x = ramp(&[2, 3, 4, 6])?;
        let got = haar_lowpass(&x, 1)?;
        assert_eq!(got.dims(), x.dims());
        let (g, v) = (
            got.reshape((6, 24))?.to_vec2::<f32>()?,
            x.reshape((6, 24))?.to_vec2::<f32>()?,
        );
        for (gb, vb) in g.iter().zip(&v) {
            for y in 0..4 {
                for xx in 0..6 {
                    let (by, bx) = (y / 2 * 2, xx / 2 * 2);
                    let at = |yy: usize, xc: usize| vb[yy * 6 + xc];
                    let mean =
                        (at(by, bx) + at(by, bx + 1) + at(by + 1, bx) + at(by + 1, bx + 1)) / 4.0;
                    assert!((gb[y * 6 + xx] - mean).abs() < 1e-6);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn levels_are_block_means_and_odd_edges_average_what_they_have() -> Result<()> {
        // level 2 on 8×8: 4×4 block means
        let x = ramp(&[1, 1, 8, 8])?;
        let got = haar_lowpass(&x, 2)?.flatten_all()?.to_vec1::<f32>()?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let block = |by: usize, bx: usize| -> f32 {
            (0..4)
                .flat_map(|i| (0..4).map(move |j| (i, j)))
                .map(|(i, j)| v[(by + i) * 8 + bx + j])
                .sum::<f32>()
                / 16.0
        };
        for y in 0..8 {
            for xx in 0..8 {
                assert!((got[y * 8 + xx] - block(y / 4 * 4, xx / 4 * 4)).abs() < 1e-5);
            }
        }
        // 3×3 at level 1: the last row and column are blocks of their own values
        let x = ramp(&[1, 1, 3, 3])?;
        let got = haar_lowpass(&x, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        assert!((got[8] - v[8]).abs() < 1e-6);
        assert!((got[2] - (v[2] + v[5]) / 2.0).abs() < 1e-6);
        assert!((got[0] - (v[0] + v[1] + v[3] + v[4]) / 4.0).abs() < 1e-6);
        // level 0 is the identity
        assert_eq!(haar_lowpass(&x, 0)?.flatten_all()?.to_vec1::<f32>()?, v);
        Ok(())
    }

    /// The straight path to the guide, as a velocity field: its exact answer is the guide.
    fn to_guide(guide: &Tensor) -> impl Fn(&Tensor, TimePoint) -> Result<Tensor> + '_ {
        move |x, at| Ok(((guide - x)? / (1.0 - at.t).max(1e-9))?)
    }

    #[test]
    fn every_schedule_lands_on_a_guide_equal_to_the_exact_answer() -> Result<()> {
        let guide = ramp(&[1, 3, 8, 8])?;
        let x0 = (ramp(&[1, 3, 8, 8])?.sin()? * 2.0)?;
        let grid = Schedule::Shifted { shift: 2.0 }.grid(12)?;
        for schedule in GuideSchedule::ALL {
            for solver in [Solver::Euler, Solver::Midpoint, Solver::Ab2] {
                let hook = ProjectedFlow {
                    guide: guide.clone(),
                    schedule,
                    level: 1,
                };
                let field = to_guide(&guide);
                let end = sample_with(&field, x0.clone(), &grid, solver, hook)?;
                let err = crate::fixtures::max_abs_diff(&end, &guide)?;
                assert!(err < 1e-4, "{} / {solver}: {err}", schedule.name());
            }
        }
        Ok(())
    }

    #[test]
    fn constant_schedule_takes_the_low_band_from_the_guide_and_details_from_the_model() -> Result<()>
    {
        // the model heads for another picture; the guide differs from it in both bands
        let target = ramp(&[1, 2, 8, 8])?;
        let guide = (target.cos()? * 3.0)?;
        let x0 = (ramp(&[1, 2, 8, 8])?.sin()? * 2.0)?;
        let grid = Schedule::Uniform.grid(10)?;
        let field = to_guide(&target);
        let hook = ProjectedFlow {
            guide: guide.clone(),
            schedule: GuideSchedule::Constant,
            level: 1,
        };
        let low = |x: &Tensor| haar_lowpass(x, 1);
        let high = |x: &Tensor| -> Result<Tensor> { Ok((x - haar_lowpass(x, 1)?)?) };
        // Ab2 too: the hook's pull towards the guide is applied once, not extrapolated
        for solver in [Solver::Euler, Solver::Ab2] {
            let end = sample_with(&field, x0.clone(), &grid, solver, hook.clone())?;
            let lo = crate::fixtures::max_abs_diff(&low(&end)?, &low(&guide)?)?;
            let hi = crate::fixtures::max_abs_diff(&high(&end)?, &high(&target)?)?;
            assert!(lo < 1e-4, "{solver}: low band off the guide by {lo}");
            assert!(
                hi < 1e-4,
                "{solver}: high band off the model's answer by {hi}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_weight_decays_from_one_and_a_wrong_guide_is_an_error() -> Result<()> {
        assert_eq!(cosine_weight(0, 10), 1.0);
        assert!((cosine_weight(5, 10) - 0.5).abs() < 1e-12);
        assert!(cosine_weight(9, 10) < 0.03);
        let hook = ProjectedFlow {
            guide: Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu)?,
            schedule: GuideSchedule::CosineDecay,
            level: 1,
        };
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu)?;
        let at = TimePoint {
            t: 0.0,
            step: 0,
            steps: 1,
        };
        let e = hook
            .velocity(&x, x.clone(), at)
            .expect_err("shape")
            .to_string();
        assert!(
            e.contains("[1, 3, 8, 8]") && e.contains("[1, 3, 4, 4]"),
            "{e}"
        );
        assert_eq!(
            "cosine-shift".parse::<GuideSchedule>()?,
            GuideSchedule::CosineShift
        );
        assert!("linear".parse::<GuideSchedule>().is_err());
        Ok(())
    }
}
