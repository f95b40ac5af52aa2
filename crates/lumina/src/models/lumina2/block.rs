//! One Lumina-Image-2.0 block: per-head RMSNorm QK-norm, 3-axis RoPE, GQA self-attention over
//! a joint sequence, sandwich RMSNorm, tanh-gated adaLN — or, in the caption refiner, no
//! modulation at all.
//!
//! Upstream: diffusers `models/transformers/transformer_lumina2.py` `Lumina2TransformerBlock`,
//! `Lumina2AttnProcessor2_0` (58eb52c); Lumina-Image-2.0 `models/model.py` `JointTransformerBlock`.

use candle_core::Tensor;

use super::Lumina2Config;
use crate::error::Result;
use crate::nn::ops::rope_interleaved;
use crate::nn::{attention, FeedForward, KvPool, Linear, RmsNorm, RmsNormZero};
use crate::weights::{Init, Weights};

/// What one block call needs besides its input.
pub(super) struct BlockInput<'a> {
    /// Additive key mask (B, 1, 1, N) — of the pooled keys under Context Drop — or `None`
    /// when every token is real.
    pub bias: Option<&'a Tensor>,
    /// Context Drop: the keys and values of the image tokens pooled over their grid.
    pub kv_pool: Option<KvPool<'a>>,
    /// Per-sample RoPE (cos, sin), (B, N, Dh/2) each.
    pub rope: (&'a Tensor, &'a Tensor),
    /// Conditioning vector (B, Dc); ignored by unmodulated blocks.
    pub temb: &'a Tensor,
    pub scale: f64,
}

enum Norm1 {
    /// `norm1` = adaLN linear + RMSNorm (noise refiner and main layers).
    Modulated(RmsNormZero),
    /// `norm1` = plain RMSNorm (context refiner).
    Plain(RmsNorm),
}

pub struct Lumina2Block {
    heads: usize,
    kv_heads: usize,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    to_out: Linear,
    feed_forward: FeedForward,
    norm1: Norm1,
    ffn_norm1: RmsNorm,
    norm2: RmsNorm,
    ffn_norm2: RmsNorm,
}

/// `(B, N, H·Dh)` → per-head RMSNorm (if any) → `(B, H, N, Dh)`.
fn heads(x: &Tensor, n_heads: usize, norm: Option<&RmsNorm>) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let x = x.reshape((b, n, n_heads, d / n_heads))?; // (B, N, H, Dh)
    let x = match norm {
        Some(norm) => norm.forward(&x)?,
        None => x,
    };
    Ok(x.transpose(1, 2)?.contiguous()?) // (B, H, N, Dh)
}

impl Lumina2Block {
    pub fn load(w: &Weights, cfg: &Lumina2Config, modulated: bool) -> Result<Self> {
        let (d, dh, eps) = (cfg.hidden_size, cfg.head_dim(), cfg.norm_eps);
        let kv = cfg.num_kv_heads * dh;
        let a = w.pp("attn");
        let norm1 = if modulated {
            Norm1::Modulated(RmsNormZero::load(
                &w.pp("norm1"),
                d,
                cfg.cond_dim(),
                eps,
                false,
            )?)
        } else {
            Norm1::Plain(RmsNorm::load(&w.pp("norm1"), d, eps)?)
        };
        Ok(Self {
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_kv_heads,
            to_q: Linear::load_ternarizable(&a.pp("to_q"), d, d, false, Init::XavierUniform)?,
            to_k: Linear::load_ternarizable(&a.pp("to_k"), d, kv, false, Init::XavierUniform)?,
            to_v: Linear::load_ternarizable(&a.pp("to_v"), d, kv, false, Init::XavierUniform)?,
            norm_q: RmsNorm::load(&a.pp("norm_q"), dh, 1e-5)?,
            norm_k: RmsNorm::load(&a.pp("norm_k"), dh, 1e-5)?,
            to_out: Linear::load_ternarizable(
                &a.pp("to_out").pp(0),
                d,
                d,
                false,
                Init::XavierUniform,
            )?,
            feed_forward: FeedForward::load(&w.pp("feed_forward"), d, cfg.ffn_hidden())?,
            norm1,
            ffn_norm1: RmsNorm::load(&w.pp("ffn_norm1"), d, eps)?,
            norm2: RmsNorm::load(&w.pp("norm2"), d, eps)?,
            ffn_norm2: RmsNorm::load(&w.pp("ffn_norm2"), d, eps)?,
        })
    }

    /// The modulated input of the attention, `norm1(x, temb)` (B, N, D): what step caching
    /// watches on the first main block.
    pub(super) fn modulated_input(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        match &self.norm1 {
            Norm1::Modulated(norm1) => Ok(norm1.forward(x, temb)?.0),
            Norm1::Plain(norm1) => norm1.forward(x),
        }
    }

    /// `x` (B, N, D) → (B, N, D).
    pub(super) fn forward(&self, x: &Tensor, inp: &BlockInput) -> Result<Tensor> {
        match &self.norm1 {
            Norm1::Modulated(norm1) => {
                let (xn, m) = norm1.forward(x, inp.temb)?; // (B, N, D)
                let attn = self.attention(&xn, inp)?; // (B, N, D)
                let x = self.norm2.gated_residual(x, &m.gate_msa, &attn)?;
                let ffn_in = self.ffn_norm1.forward_scaled(&x, &m.scale_mlp)?;
                let ffn = self.feed_forward.forward(&ffn_in)?; // (B, N, D)
                self.ffn_norm2.gated_residual(&x, &m.gate_mlp, &ffn)
            }
            Norm1::Plain(norm1) => {
                let attn = self.attention(&norm1.forward(x)?, inp)?;
                let x = (x + self.norm2.forward(&attn)?)?;
                let ffn = self.feed_forward.forward(&self.ffn_norm1.forward(&x)?)?;
                Ok((&x + self.ffn_norm2.forward(&ffn)?)?)
            }
        }
    }

    fn attention(&self, xn: &Tensor, inp: &BlockInput) -> Result<Tensor> {
        let (cos, sin) = inp.rope;
        let q = heads(&self.to_q.forward(xn)?, self.heads, Some(&self.norm_q))?; // (B, H, N, Dh)
        let k = heads(&self.to_k.forward(xn)?, self.kv_heads, Some(&self.norm_k))?; // (B, Hkv, N, Dh)
        let v = heads(&self.to_v.forward(xn)?, self.kv_heads, None)?; // (B, Hkv, N, Dh)
        let q = rope_interleaved(&q, cos, sin)?;
        let k = rope_interleaved(&k, cos, sin)?;
        let (k, v) = match &inp.kv_pool {
            Some(pool) => (pool.pool(&k)?, pool.pool(&v)?), // (B, Hkv, N', Dh)
            None => (k, v),
        };
        let o = attention(&q, &k, &v, inp.bias, inp.scale)?; // (B, H, N, Dh)
        let (b, h, n, dh) = o.dims4()?;
        self.to_out
            .forward(&o.transpose(1, 2)?.reshape((b, n, h * dh))?) // (B, N, D)
    }
}
