//! adaLN modulation of the Lumina blocks and the final layer.

use candle_core::{DType, Tensor};

use super::{LayerNorm, Linear, RmsNorm};
use crate::error::Result;
use crate::weights::{Init, Weights};

/// The four modulation vectors of a block, each (B, D).
pub struct Modulation {
    pub scale_msa: Tensor,
    pub gate_msa: Tensor,
    pub scale_mlp: Tensor,
    pub gate_mlp: Tensor,
}

/// `norm1` of a modulated block (diffusers `LuminaRMSNormZero`): an adaLN linear that gives
/// (scale_msa, gate_msa, scale_mlp, gate_mlp) — no shifts — and the pre-attention RMSNorm.
#[derive(Clone, Debug)]
pub struct RmsNormZero {
    linear: Linear,
    /// TerDiT's RMSNorm on the modulation (`NextDitConfig::modulation_norm`).
    norm_modulation: Option<RmsNorm>,
    norm: RmsNorm,
}

impl RmsNormZero {
    /// The adaLN linear is zero-initialised upstream: every residual branch starts closed.
    pub fn load(
        w: &Weights,
        dim: usize,
        cond_dim: usize,
        eps: f64,
        modulation_norm: bool,
    ) -> Result<Self> {
        let linear =
            Linear::load_ternarizable(&w.pp("linear"), cond_dim, 4 * dim, true, Init::Zeros)?;
        let norm_modulation = modulation_norm
            .then(|| RmsNorm::load(&w.pp("norm_modulation"), 4 * dim, eps))
            .transpose()?;
        Ok(Self {
            linear,
            norm_modulation,
            norm: RmsNorm::load(&w.pp("norm"), dim, eps)?,
        })
    }

    /// `x` (B, N, D), `temb` (B, Dc) → (`RMSNorm(x)·(1 + scale_msa)`, modulation).
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<(Tensor, Modulation)> {
        let emb = self.linear.forward(&temb.silu()?)?; // (B, 4D)
        let emb = match &self.norm_modulation {
            Some(norm) => norm.forward(&emb)?,
            None => emb,
        };
        let chunks = emb.chunk(4, 1)?;
        let m = Modulation {
            scale_msa: chunks[0].clone(),
            gate_msa: chunks[1].clone(),
            scale_mlp: chunks[2].clone(),
            gate_mlp: chunks[3].clone(),
        };
        let xn = self.norm.forward_scaled(x, &m.scale_msa)?;
        Ok((xn, m))
    }
}

/// `x · (1 + s)` with `x` (B, N, D) and `s` (B, D).
pub fn scale(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(s + 1.0)?.unsqueeze(1)?)?)
}

/// `x + tanh(g) · y` with `x`, `y` (B, N, D) and the gate `g` (B, D).
pub fn gated_residual(x: &Tensor, g: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok((x + y.broadcast_mul(&g.tanh()?.unsqueeze(1)?)?)?)
}

/// The final layer (diffusers `LuminaLayerNormContinuous` with `out_dim`): LayerNorm without
/// affine (eps 1e-6), scale by `1 + linear_1(silu(temb))` (no shift), project to patch pixels.
#[derive(Clone, Debug)]
pub struct NormOut {
    linear_1: Linear,
    norm: LayerNorm,
    linear_2: Linear,
}

impl NormOut {
    pub fn load(
        w: &Weights,
        dim: usize,
        cond_dim: usize,
        out_dim: usize,
        dtype: DType,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(&w.pp("linear_1"), cond_dim, dim, true, Init::Zeros)?,
            norm: LayerNorm::plain(dim, 1e-6, dtype, w.device())?,
            linear_2: Linear::load(&w.pp("linear_2"), dim, out_dim, true, Init::Zeros)?,
        })
    }

    /// `x` (B, N, D), `temb` (B, Dc) → (B, N, out).
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let s = self.linear_1.forward(&temb.silu()?)?; // (B, D)
        self.linear_2.forward(&scale(&self.norm.forward(x)?, &s)?)
    }
}
