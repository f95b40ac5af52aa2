//! Timestep embedding shared by Next-DiT and Lumina-Image-2.0.

use candle_core::{DType, Tensor};

use super::Linear;
use crate::error::{Error, Result};
use crate::weights::{Init, Weights};

/// Width of the sinusoidal timestep features.
pub const TIMESTEP_FEATURES: usize = 256;
const MAX_PERIOD: f32 = 10_000.0;

/// Sinusoidal features of `t` (B,) → (B, 256), **cos half first**, t used as is (no ×1000):
/// f_k = exp(−ln(10000)·k/128). Computed in f32 like diffusers' `Timesteps(256,
/// flip_sin_to_cos=True, downscale_freq_shift=0)`, then cast to `dtype`.
pub fn timestep_features(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let ts = t
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()
        .map_err(|_| Error::input("timesteps", "a 1-D tensor (B,)", format!("{:?}", t.dims())))?;
    let half = TIMESTEP_FEATURES / 2;
    let neg_log = -MAX_PERIOD.ln();
    let freqs: Vec<f32> = (0..half)
        .map(|k| (neg_log * k as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(ts.len() * TIMESTEP_FEATURES);
    for &t in &ts {
        out.extend(freqs.iter().map(|f| (t * f).cos()));
        out.extend(freqs.iter().map(|f| (t * f).sin()));
    }
    Ok(Tensor::from_vec(out, (ts.len(), TIMESTEP_FEATURES), t.device())?.to_dtype(dtype)?)
}

/// Fixed sin-cos features of normalised canvas coordinates for an `rows × cols` token grid:
/// (rows·cols, dim), row-major like the patch sequence. Token (i, j) sits at u = (j + ½)/cols,
/// v = (i + ½)/rows; with n = dim/4 frequencies f_k = g^(k/(n−1)) from 1 to `grid` g (the
/// training grid's side), its features are [sin πf·u, cos πf·u, sin πf·v, cos πf·v]. Being a
/// function of u, v, "the left third" means the same at every resolution.
pub fn coordinate_features(
    rows: usize,
    cols: usize,
    dim: usize,
    grid: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let n = dim / 4;
    let freqs = frequency_ladder(n, grid);
    let mut out = Vec::with_capacity(rows * cols * dim);
    for i in 0..rows {
        let v = (i as f64 + 0.5) / rows as f64;
        for j in 0..cols {
            let u = (j as f64 + 0.5) / cols as f64;
            for axis in [u, v] {
                out.extend(freqs.iter().map(|f| (f * axis).sin() as f32));
                out.extend(freqs.iter().map(|f| (f * axis).cos() as f32));
            }
        }
    }
    Ok(Tensor::from_vec(out, (rows * cols, 4 * n), device)?)
}

/// π·g^(k/(n−1)) for k < n: from one half-turn over the whole axis to one per token of a
/// training grid of `grid` tokens.
fn frequency_ladder(n: usize, grid: usize) -> Vec<f64> {
    let g = grid.max(1) as f64;
    (0..n)
        .map(|k| match n {
            1 => 1.0,
            _ => g.powf(k as f64 / (n - 1) as f64),
        })
        .map(|f| std::f64::consts::PI * f)
        .collect()
}

/// Fixed sin-cos features of normalised clip time for `frames` frame tokens: (frames, dim).
/// Frame token j sits at τ = (j + ½)/frames; with n = dim/2 frequencies from the same ladder
/// as [`coordinate_features`] (`grid`: frame tokens at training), its features are
/// [sin πf·τ, cos πf·τ]. A function of τ, so the first and last frames mean the same at any
/// clip length.
pub fn clip_time_features(
    frames: usize,
    dim: usize,
    grid: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let freqs = frequency_ladder(dim / 2, grid);
    let mut out = Vec::with_capacity(frames * dim);
    for j in 0..frames {
        let tau = (j as f64 + 0.5) / frames as f64;
        out.extend(freqs.iter().map(|f| (f * tau).sin() as f32));
        out.extend(freqs.iter().map(|f| (f * tau).cos() as f32));
    }
    Ok(Tensor::from_vec(out, (frames, 2 * (dim / 2)), device)?)
}

/// `linear_2(silu(linear_1(features(t))))` (diffusers `TimestepEmbedding`).
#[derive(Clone, Debug)]
pub struct TimestepEmbedder {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedder {
    /// Upstream initialises both linears N(0, 0.02) (reference §2.9).
    pub fn load(w: &Weights, dim: usize) -> Result<Self> {
        let init = Init::Normal { std: 0.02 };
        Ok(Self {
            linear_1: Linear::load(&w.pp("linear_1"), TIMESTEP_FEATURES, dim, true, init)?,
            linear_2: Linear::load(&w.pp("linear_2"), dim, dim, true, init)?,
        })
    }

    /// `t` (B,) → (B, Dc).
    pub fn forward(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        let feats = timestep_features(t, dtype)?; // (B, 256)
        self.linear_2
            .forward(&self.linear_1.forward(&feats)?.silu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn features_are_cos_then_sin_of_unscaled_t() -> Result<()> {
        let t = Tensor::new(&[0.5f32], &Device::Cpu)?;
        let f = timestep_features(&t, DType::F32)?.to_vec2::<f32>()?;
        assert!((f[0][0] - 0.5f32.cos()).abs() < 1e-7);
        assert!((f[0][128] - 0.5f32.sin()).abs() < 1e-7);
        let f1 = (-(10_000f32.ln()) / 128.0).exp();
        assert!((f[0][129] - (0.5 * f1).sin()).abs() < 1e-7);
        Ok(())
    }
}
