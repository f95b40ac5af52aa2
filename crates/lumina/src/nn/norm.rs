//! RMSNorm and LayerNorm as the diffusers Lumina modules use them.

use candle_core::{DType, Tensor};

use super::{gated_residual, ops, scale};
use crate::error::Result;
use crate::kernels::modulate;
use crate::weights::{Init, Weights};

/// RMSNorm with a learnable weight (diffusers `RMSNorm`, elementwise_affine).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[dim], Init::Ones)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight.to_dtype(x.dtype())?, self.eps)
    }

    /// `RMSNorm(x)·(1 + s)` for `x` (B, N, D) and `s` (B, D): adaLN scaling, one fused pass
    /// at inference.
    pub fn forward_scaled(&self, x: &Tensor, s: &Tensor) -> Result<Tensor> {
        if modulate::applies(&[x, s]) && !self.weight.track_op() {
            modulate::rms_scale(x, &self.weight, s, self.eps)
        } else {
            scale(&self.forward(x)?, s)
        }
    }

    /// `x + tanh(g)·RMSNorm(y)` for `x`, `y` (B, N, D) and `g` (B, D): the gated residual of a
    /// sandwich-normed branch, one fused pass at inference.
    pub fn gated_residual(&self, x: &Tensor, g: &Tensor, y: &Tensor) -> Result<Tensor> {
        if modulate::applies(&[x, y, g]) && !self.weight.track_op() {
            modulate::rms_gated_residual(x, y, &self.weight, g, self.eps)
        } else {
            gated_residual(x, g, &self.forward(y)?)
        }
    }
}

/// LayerNorm over the last axis; affine (weight, bias) or not.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Affine LayerNorm loading `weight` and `bias`.
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[dim], Init::Ones)?,
            bias: w.get("bias", &[dim], Init::Zeros)?,
            eps,
        })
    }

    /// LayerNorm without learnable parameters (`elementwise_affine=False`).
    pub fn plain(dim: usize, eps: f64, dtype: DType, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(dim, dtype, device)?,
            bias: Tensor::zeros(dim, dtype, device)?,
            eps,
        })
    }

    /// Same weight, bias and eps.
    pub fn params_equal(&self, other: &Self) -> Result<bool> {
        Ok(self.eps == other.eps
            && super::same_values(&self.weight, &other.weight)?
            && super::same_values(&self.bias, &other.bias)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        ops::layer_norm(
            x,
            &self.weight.to_dtype(dtype)?,
            &self.bias.to_dtype(dtype)?,
            self.eps,
        )
    }
}
