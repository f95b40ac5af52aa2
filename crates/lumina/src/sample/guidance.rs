//! Classifier-free guidance: how a conditional and an unconditional velocity combine.
//!
//! Pure tensor maths on velocities (B, C, H, W). The quirks of each upstream pipeline are
//! named modes, so parity runs can reproduce them and everything else can avoid them.

use candle_core::{Tensor, D};

use super::field::TimePoint;
use crate::error::{Error, Result};

/// When guidance is in effect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Truncation {
    /// At every evaluation.
    Never,
    /// diffusers `Lumina2Pipeline` `cfg_trunc_ratio`: at step i of n iff (i + 1)/n ≤ ratio.
    StepRatio(f64),
    /// Lumina-Image-2.0 `forward_with_cfg` `cfg_trunc`: while t < threshold (the noisy phase).
    Time(f64),
}

/// Rescaling of the guided velocity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Renorm {
    Off,
    /// diffusers `cfg_normalization`: rescale to the conditional velocity's L2 norm, taken
    /// along the last axis (per sample, channel and latent row).
    Rows,
    /// Lumina-Image-2.0 `renorm_cfg = k`: per sample, if ‖guided‖ ≥ k·‖cond‖ (norms over all
    /// non-batch axes), scale guided down to k·‖cond‖.
    Clamp(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Guidance {
    /// The conditional velocity alone.
    None,
    /// Standard CFG, `u + w·(c − u)` on every channel.
    Full { scale: f64 },
    /// Lumina-Next's inherited DiT quirk: only the first `channels` (3) latent channels are
    /// guided, the rest carry the conditional velocity (upstream `forward_with_cfg`, kept by
    /// diffusers `LuminaPipeline` "for exact reproducibility"; facebookresearch/DiT#41).
    FirstChannels { scale: f64, channels: usize },
    /// Lumina-Image-2.0: standard CFG within a truncation window, then renormalised; the
    /// conditional velocity outside the window.
    Lumina2 {
        scale: f64,
        truncation: Truncation,
        renorm: Renorm,
    },
}

impl Guidance {
    /// Whether this evaluation needs the unconditional velocity.
    pub fn active(&self, at: TimePoint) -> bool {
        match *self {
            Guidance::None => false,
            Guidance::Full { scale } | Guidance::FirstChannels { scale, .. } => scale != 1.0,
            Guidance::Lumina2 {
                scale, truncation, ..
            } => {
                scale != 1.0
                    && match truncation {
                        Truncation::Never => true,
                        Truncation::StepRatio(r) => (at.step + 1) as f64 / at.steps as f64 <= r,
                        Truncation::Time(threshold) => at.t < threshold,
                    }
            }
        }
    }

    /// The guided velocity from `cond` and `uncond`, both (B, C, …). Call only when
    /// [`Guidance::active`]; otherwise the result is `cond`.
    pub fn combine(&self, cond: &Tensor, uncond: &Tensor) -> Result<Tensor> {
        if cond.dims() != uncond.dims() {
            return Err(Error::input(
                "unconditional velocity",
                format!("shape {:?}", cond.dims()),
                format!("{:?}", uncond.dims()),
            ));
        }
        let cfg = |c: &Tensor, u: &Tensor, w: f64| -> Result<Tensor> { Ok((u + ((c - u)? * w)?)?) };
        match *self {
            Guidance::None => Ok(cond.clone()),
            Guidance::Full { scale } => cfg(cond, uncond, scale),
            Guidance::FirstChannels { scale, channels } => {
                let c = cond.dim(1)?;
                let k = channels.min(c);
                let guided = cfg(&cond.narrow(1, 0, k)?, &uncond.narrow(1, 0, k)?, scale)?;
                if k == c {
                    return Ok(guided);
                }
                Ok(Tensor::cat(&[guided, cond.narrow(1, k, c - k)?], 1)?)
            }
            Guidance::Lumina2 { scale, renorm, .. } => {
                let guided = cfg(cond, uncond, scale)?;
                match renorm {
                    Renorm::Off => Ok(guided),
                    Renorm::Rows => {
                        let norm = |x: &Tensor| -> candle_core::Result<Tensor> {
                            x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()
                        };
                        Ok(guided.broadcast_mul(&(norm(cond)? / norm(&guided)?)?)?)
                    }
                    Renorm::Clamp(k) => {
                        let b = cond.dim(0)?;
                        let norm = |x: &Tensor| -> candle_core::Result<Tensor> {
                            x.reshape((b, ()))?.sqr()?.sum(1)?.sqrt()
                        };
                        let max_norm = (norm(cond)? * k)?;
                        let norm_g = norm(&guided)?;
                        // factor = max_norm/‖g‖ where ‖g‖ ≥ max_norm, else 1
                        let over = norm_g.ge(&max_norm)?;
                        let factor =
                            over.where_cond(&(max_norm / &norm_g)?, &norm_g.ones_like()?)?;
                        let mut shape = vec![1; cond.rank()];
                        shape[0] = b;
                        Ok(guided.broadcast_mul(&factor.reshape(shape)?)?)
                    }
                }
            }
        }
    }
}
