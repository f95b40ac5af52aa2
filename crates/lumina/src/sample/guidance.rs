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

impl Truncation {
    /// Whether a `StepRatio` is in its range, [0, 1] (0: no step guided, 1: every step); the
    /// one rule for a request's ratio and a model's default.
    pub fn step_ratio_in_range(ratio: f64) -> bool {
        (0.0..=1.0).contains(&ratio)
    }
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

impl std::str::FromStr for Renorm {
    type Err = Error;

    /// `off`, `rows` or `clamp:K`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            Error::input(
                "guidance renormalisation",
                "off, rows or clamp:K (K > 0)",
                text,
            )
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(Renorm::Off),
            "rows" => Ok(Renorm::Rows),
            t => {
                let k: f64 = t
                    .strip_prefix("clamp:")
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(bad)?;
                if !(k.is_finite() && k > 0.0) {
                    return Err(bad());
                }
                Ok(Renorm::Clamp(k))
            }
        }
    }
}

impl std::fmt::Display for Renorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Renorm::Off => write!(f, "off"),
            Renorm::Rows => write!(f, "rows"),
            Renorm::Clamp(k) => write!(f, "clamp:{k}"),
        }
    }
}

/// Which channels guidance acts on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Channels {
    /// Standard CFG, on every channel.
    All,
    /// Lumina-Next's inherited DiT quirk: only the first `n` (3) latent channels are guided,
    /// the rest carry the conditional velocity (upstream `forward_with_cfg`, kept by diffusers
    /// `LuminaPipeline` "for exact reproducibility"; facebookresearch/DiT#41).
    First(usize),
}

/// Classifier-free guidance `u + w·(c − u)`, on some channels, within a truncation window,
/// then renormalised; the conditional velocity outside the window. Every family takes every
/// option: Lumina-Image-2.0's defaults are truncation by step ratio and row renormalisation,
/// Lumina-Video's a time window and a clamp (`sampling_speed.md` §4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guidance {
    /// The scale w; guidance is off at exactly 1.
    pub scale: f64,
    pub channels: Channels,
    pub truncation: Truncation,
    pub renorm: Renorm,
}

impl Guidance {
    /// No guidance: the conditional velocity alone, no unconditional pass.
    pub const NONE: Guidance = Guidance::full(1.0);

    /// Standard CFG on every channel, at every evaluation, not renormalised.
    pub const fn full(scale: f64) -> Self {
        Self {
            scale,
            channels: Channels::All,
            truncation: Truncation::Never,
            renorm: Renorm::Off,
        }
    }

    /// Lumina-Next's CFG on the first `channels` channels (see [`Channels::First`]).
    pub const fn first_channels(scale: f64, channels: usize) -> Self {
        Self {
            channels: Channels::First(channels),
            ..Self::full(scale)
        }
    }

    pub const fn truncated(self, truncation: Truncation) -> Self {
        Self { truncation, ..self }
    }

    pub const fn renormed(self, renorm: Renorm) -> Self {
        Self { renorm, ..self }
    }

    /// Whether this evaluation needs the unconditional velocity.
    pub fn active(&self, at: TimePoint) -> bool {
        self.scale != 1.0
            && match self.truncation {
                Truncation::Never => true,
                Truncation::StepRatio(r) => (at.step + 1) as f64 / at.steps as f64 <= r,
                Truncation::Time(threshold) => at.t < threshold,
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
        let guided = match self.channels {
            Channels::All => cfg(cond, uncond, self.scale)?,
            Channels::First(n) => {
                let c = cond.dim(1)?;
                let k = n.min(c);
                let guided = cfg(&cond.narrow(1, 0, k)?, &uncond.narrow(1, 0, k)?, self.scale)?;
                if k == c {
                    guided
                } else {
                    Tensor::cat(&[guided, cond.narrow(1, k, c - k)?], 1)?
                }
            }
        };
        match self.renorm {
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
                let factor = over.where_cond(&(max_norm / &norm_g)?, &norm_g.ones_like()?)?;
                let mut shape = vec![1; cond.rank()];
                shape[0] = b;
                Ok(guided.broadcast_mul(&factor.reshape(shape)?)?)
            }
        }
    }
}
