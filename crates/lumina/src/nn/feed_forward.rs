//! SwiGLU feed-forward (diffusers `LuminaFeedForward`; Lumina-T2X `FeedForward`).

use candle_core::Tensor;

use super::{ops, Linear};
use crate::error::Result;
use crate::weights::{Init, Weights};

/// Hidden width of the SwiGLU: `mult·inner` if a multiplier is set, rounded **up** to
/// `multiple_of`. Next-DiT passes `inner = int(8·dim/3)`, Lumina-Image-2.0 `inner = 4·dim`.
pub fn swiglu_hidden(inner: usize, multiple_of: usize, ffn_dim_multiplier: Option<f64>) -> usize {
    let inner = match ffn_dim_multiplier {
        Some(m) => (m * inner as f64) as usize,
        None => inner,
    };
    inner.div_ceil(multiple_of) * multiple_of
}

#[derive(Clone, Debug)]
pub struct FeedForward {
    linear_1: Linear,
    linear_2: Linear,
    linear_3: Linear,
}

impl FeedForward {
    pub fn load(w: &Weights, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load_ternarizable(
                &w.pp("linear_1"),
                dim,
                hidden,
                false,
                Init::XavierUniform,
            )?,
            linear_2: Linear::load_ternarizable(
                &w.pp("linear_2"),
                hidden,
                dim,
                false,
                Init::XavierUniform,
            )?,
            linear_3: Linear::load_ternarizable(
                &w.pp("linear_3"),
                dim,
                hidden,
                false,
                Init::XavierUniform,
            )?,
        })
    }

    /// `linear_2(silu(linear_1 x) ⊙ linear_3 x)`, SiLU in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.linear_1.forward(x)?;
        let up = self.linear_3.forward(x)?;
        self.linear_2.forward(&ops::swiglu(&gate, &up)?)
    }
}

#[cfg(test)]
mod tests {
    use super::swiglu_hidden;

    #[test]
    fn hidden_width_matches_upstream() {
        // Lumina-Next 2B: int(8·2304/3) = 6144; Lumina-Image-2.0: 4·2304 = 9216
        assert_eq!(swiglu_hidden(8 * 2304 / 3, 256, None), 6144);
        assert_eq!(swiglu_hidden(4 * 2304, 256, None), 9216);
        // tiny fixture: int(8·64/3) = 170 -> 176 with multiple_of 16
        assert_eq!(swiglu_hidden(170, 16, None), 176);
        // multiplier applies before rounding: int(1.3·170) = 221 -> 224
        assert_eq!(swiglu_hidden(170, 16, Some(1.3)), 224);
    }
}
