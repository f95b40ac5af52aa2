//! One Next-DiT block: sandwich RMSNorm, tanh-gated adaLN (scales only), self-attention with
//! 2D RoPE plus zero-initialised tanh-gated cross-attention to the caption, SwiGLU.
//!
//! Upstream: diffusers `models/transformers/lumina_nextdit2d.py` `LuminaNextDiTBlock`,
//! `attention_processor.py` `LuminaAttnProcessor2_0`; Lumina-T2X
//! `lumina_next_t2i/models/model.py` `TransformerBlock` / `Attention`.

use candle_core::Tensor;

use super::NextDitConfig;
use crate::error::Result;
use crate::nn::ops::rope_interleaved;
use crate::nn::{attention, FeedForward, KvPool, LayerNorm, Linear, RmsNorm, RmsNormZero};
use crate::weights::{Init, Weights};

/// What every block of one forward shares.
#[derive(Clone, Copy)]
pub(super) struct BlockContext<'a> {
    /// RoPE (cos, sin) of the image tokens, (N, Dh/2) each.
    pub rope: (&'a Tensor, &'a Tensor),
    /// Caption features (B, L, Dcap) and their additive key mask (B, 1, 1, L).
    pub caption: &'a Tensor,
    pub caption_bias: &'a Tensor,
    /// Conditioning vector t_emb + caption embedding, (B, Dc).
    pub temb: &'a Tensor,
    /// Softmax scale of the self-attention (plain or proportional).
    pub self_scale: f64,
    /// Context Drop: the self-attention keys and values pooled over the token grid.
    pub kv_pool: Option<KvPool<'a>>,
}

/// A query projection with its optional LayerNorm over the whole projected width.
struct Query {
    to_q: Linear,
    norm_q: Option<LayerNorm>,
}

/// `(B, N, H·Dh)` → `(B, H, N, Dh)`.
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    Ok(x.reshape((b, n, heads, d / heads))? // (B, N, H, Dh)
        .transpose(1, 2)? // (B, H, N, Dh)
        .contiguous()?)
}

/// Projects, normalises across heads (Lumina's QK-norm is *not* per head), splits heads.
fn project(x: &Tensor, to: &Linear, norm: Option<&LayerNorm>, heads: usize) -> Result<Tensor> {
    let y = to.forward(x)?; // (B, N, H·Dh)
    let y = match norm {
        Some(n) => n.forward(&y)?,
        None => y,
    };
    split_heads(&y, heads) // (B, H, N, Dh)
}

impl Query {
    fn load(w: &Weights, cfg: &NextDitConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            to_q: Linear::load_ternarizable(&w.pp("to_q"), d, d, false, Init::XavierUniform)?,
            norm_q: layer_norm_if(cfg.qk_norm, &w.pp("norm_q"), d)?,
        })
    }

    /// Rotated query heads (B, H, N, Dh).
    fn forward(&self, xn: &Tensor, heads: usize, rope: (&Tensor, &Tensor)) -> Result<Tensor> {
        let q = project(xn, &self.to_q, self.norm_q.as_ref(), heads)?;
        rope_interleaved(&q, rope.0, rope.1)
    }

    fn same_as(&self, other: &Query) -> Result<bool> {
        let norms_equal = match (&self.norm_q, &other.norm_q) {
            (Some(a), Some(b)) => a.params_equal(b)?,
            (None, None) => true,
            _ => false,
        };
        Ok(norms_equal && self.to_q.same_weights(&other.to_q)?)
    }
}

fn layer_norm_if(on: bool, w: &Weights, dim: usize) -> Result<Option<LayerNorm>> {
    on.then(|| LayerNorm::load(w, dim, 1e-5)).transpose()
}

pub struct NextDitBlock {
    heads: usize,
    kv_heads: usize,
    /// Per-head cross-attention gate, zero-initialised: tanh(0) = 0, cross-attention off.
    gate: Tensor,
    // attn1: self-attention (no output projection of its own)
    attn1_query: Query,
    attn1_to_k: Linear,
    attn1_to_v: Linear,
    attn1_norm_k: Option<LayerNorm>,
    /// attn2's query. `None` when the checkpoint stores the same projection twice (every
    /// converted upstream checkpoint: original `wq` maps to both), so it is computed once.
    attn2_query: Option<Query>,
    attn2_to_k: Linear,
    attn2_to_v: Linear,
    attn2_norm_k: Option<LayerNorm>,
    /// The single output projection of self + gated cross attention (`attn2.to_out.0`).
    attn2_to_out: Linear,
    feed_forward: FeedForward,
    norm1: RmsNormZero,
    ffn_norm1: RmsNorm,
    norm2: RmsNorm,
    ffn_norm2: RmsNorm,
    norm1_context: RmsNorm,
}

impl NextDitBlock {
    pub fn load(w: &Weights, cfg: &NextDitConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.norm_eps);
        let kv = cfg.kv_heads() * cfg.head_dim();
        let cap = cfg.cross_attention_dim;
        let a1 = w.pp("attn1");
        let a2 = w.pp("attn2");
        let attn1_query = Query::load(&a1, cfg)?;
        let attn2_query = Query::load(&a2, cfg)?;
        let attn2_query = if attn2_query.same_as(&attn1_query)? {
            None
        } else {
            Some(attn2_query)
        };
        Ok(Self {
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            gate: w.get("gate", &[cfg.num_attention_heads], Init::Zeros)?,
            attn1_query,
            attn1_to_k: Linear::load_ternarizable(
                &a1.pp("to_k"),
                d,
                kv,
                false,
                Init::XavierUniform,
            )?,
            attn1_to_v: Linear::load_ternarizable(
                &a1.pp("to_v"),
                d,
                kv,
                false,
                Init::XavierUniform,
            )?,
            attn1_norm_k: layer_norm_if(cfg.qk_norm, &a1.pp("norm_k"), kv)?,
            attn2_query,
            attn2_to_k: Linear::load_ternarizable(
                &a2.pp("to_k"),
                cap,
                kv,
                false,
                Init::XavierUniform,
            )?,
            attn2_to_v: Linear::load_ternarizable(
                &a2.pp("to_v"),
                cap,
                kv,
                false,
                Init::XavierUniform,
            )?,
            attn2_norm_k: layer_norm_if(cfg.qk_norm, &a2.pp("norm_k"), kv)?,
            attn2_to_out: Linear::load_ternarizable(
                &a2.pp("to_out").pp(0),
                d,
                d,
                false,
                Init::XavierUniform,
            )?,
            feed_forward: FeedForward::load(&w.pp("feed_forward"), d, cfg.ffn_hidden())?,
            norm1: RmsNormZero::load(&w.pp("norm1"), d, cfg.cond_dim(), eps, cfg.modulation_norm)?,
            ffn_norm1: RmsNorm::load(&w.pp("ffn_norm1"), d, eps)?,
            norm2: RmsNorm::load(&w.pp("norm2"), d, eps)?,
            ffn_norm2: RmsNorm::load(&w.pp("ffn_norm2"), d, eps)?,
            norm1_context: RmsNorm::load(&w.pp("norm1_context"), cap, eps)?,
        })
    }

    /// The modulated input of the attention, `norm1(x, temb)` (B, N, D): what step caching
    /// watches on the first block.
    pub(super) fn modulated_input(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        Ok(self.norm1.forward(x, temb)?.0)
    }

    /// `x` (B, N, D) → (B, N, D).
    pub(super) fn forward(&self, x: &Tensor, ctx: &BlockContext) -> Result<Tensor> {
        let (xn, m) = self.norm1.forward(x, ctx.temb)?; // (B, N, D)
        let attn = self.attention(&xn, ctx)?; // (B, N, D)
        let x = self.norm2.gated_residual(x, &m.gate_msa, &attn)?; // (B, N, D)
        let ffn_in = self.ffn_norm1.forward_scaled(&x, &m.scale_mlp)?;
        let ffn = self.feed_forward.forward(&ffn_in)?; // (B, N, D)
        self.ffn_norm2.gated_residual(&x, &m.gate_mlp, &ffn)
    }

    /// Self-attention over image tokens plus tanh-gated cross-attention to the caption, summed
    /// per head before the one shared output projection.
    fn attention(&self, xn: &Tensor, ctx: &BlockContext) -> Result<Tensor> {
        let q = self.attn1_query.forward(xn, self.heads, ctx.rope)?; // (B, H, N, Dh)
        let k = project(
            xn,
            &self.attn1_to_k,
            self.attn1_norm_k.as_ref(),
            self.kv_heads,
        )?;
        let k = rope_interleaved(&k, ctx.rope.0, ctx.rope.1)?; // (B, Hkv, N, Dh)
        let v = split_heads(&self.attn1_to_v.forward(xn)?, self.kv_heads)?;
        let (k, v) = match &ctx.kv_pool {
            Some(pool) => (pool.pool(&k)?, pool.pool(&v)?), // (B, Hkv, N/f², Dh)
            None => (k, v),
        };
        let own_self = attention(&q, &k, &v, None, ctx.self_scale)?; // (B, H, N, Dh)

        // The cross-attention query is the *rotated* query; caption keys get no RoPE and the
        // scale is always the plain 1/sqrt(Dh).
        let q_cross = match &self.attn2_query {
            None => q,
            Some(query) => query.forward(xn, self.heads, ctx.rope)?,
        };
        let caption = self.norm1_context.forward(ctx.caption)?; // (B, L, Dcap)
        let ky = project(
            &caption,
            &self.attn2_to_k,
            self.attn2_norm_k.as_ref(),
            self.kv_heads,
        )?;
        let vy = split_heads(&self.attn2_to_v.forward(&caption)?, self.kv_heads)?; // (B, Hkv, L, Dh)
        let dh = q_cross.dim(3)?;
        let cross = attention(
            &q_cross,
            &ky,
            &vy,
            Some(ctx.caption_bias),
            1.0 / (dh as f64).sqrt(),
        )?;
        let gate = self
            .gate
            .to_dtype(own_self.dtype())?
            .tanh()?
            .reshape((1, self.heads, 1, 1))?;
        let mixed = (own_self + cross.broadcast_mul(&gate)?)?; // (B, H, N, Dh)
        let (b, h, n, dh) = mixed.dims4()?;
        let mixed = mixed.transpose(1, 2)?.reshape((b, n, h * dh))?; // (B, N, D)
        self.attn2_to_out.forward(&mixed)
    }
}
