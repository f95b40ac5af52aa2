//! Gemma (Lumina-Next) and Gemma-2 (Lumina-Image-2.0) as caption encoders: token ids and a
//! padding mask in, `hidden_states[-2]` out — the output of the second-to-last decoder layer,
//! before the last layer and the final norm (diffusers `pipeline_lumina.py`,
//! `pipeline_lumina2.py`).
//!
//! Written here rather than reused from candle-transformers: its Gemma models return the last
//! layer only, hide their layers, take a causal mask without padding, and cannot reproduce what
//! transformers computes at padding positions (see [`EmptyRows`]). Numerics follow
//! transformers 5.23 `modeling_gemma.py` / `modeling_gemma2.py`.

use candle_core::{DType, Tensor};
use lumina::kernels::{gate, softcap};
use lumina::nn::Linear;
use lumina::weights::{Init, Weights};

use super::config::{EmptyRows, EncoderConfig};
use crate::error::{Error, Result};

/// Gemma's RMSNorm: `x / rms(x) · (1 + w)`, all in f32, cast back.
struct GemmaRmsNorm {
    /// `1 + w` in f32, as HF forms it on every call.
    scale: Tensor,
    eps: f64,
}

impl GemmaRmsNorm {
    fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        let weight = w.get("weight", &[dim], Init::Zeros)?;
        Ok(Self {
            scale: (weight.to_dtype(DType::F32)? + 1.0)?,
            eps,
        })
    }

    /// candle's fused RMSNorm on the f32 widening: three passes where the composed form took
    /// nine (1.5 % of a Gemma-2 2B bf16 encoding).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xf = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&xf, &self.scale, self.eps as f32)?.to_dtype(x.dtype())?)
    }
}

struct Layer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    input_layernorm: GemmaRmsNorm,
    post_attention_layernorm: GemmaRmsNorm,
    /// Gemma-2 only: norms around the MLP.
    feedforward_norms: Option<(GemmaRmsNorm, GemmaRmsNorm)>,
    window: Option<usize>,
}

impl Layer {
    fn load(w: &Weights, cfg: &EncoderConfig, window: Option<usize>) -> Result<Self> {
        let (d, f, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        let (q, kv) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let a = w.pp("self_attn");
        let m = w.pp("mlp");
        let linear = |w: &Weights, i, o, bias| Linear::load(w, i, o, bias, Init::XavierUniform);
        let feedforward_norms = if cfg.gemma2 {
            Some((
                GemmaRmsNorm::load(&w.pp("pre_feedforward_layernorm"), d, eps)?,
                GemmaRmsNorm::load(&w.pp("post_feedforward_layernorm"), d, eps)?,
            ))
        } else {
            None
        };
        Ok(Self {
            q_proj: linear(&a.pp("q_proj"), d, q, cfg.attention_bias)?,
            k_proj: linear(&a.pp("k_proj"), d, kv, cfg.attention_bias)?,
            v_proj: linear(&a.pp("v_proj"), d, kv, cfg.attention_bias)?,
            o_proj: linear(&a.pp("o_proj"), q, d, cfg.attention_bias)?,
            gate_proj: linear(&m.pp("gate_proj"), d, f, false)?,
            up_proj: linear(&m.pp("up_proj"), d, f, false)?,
            down_proj: linear(&m.pp("down_proj"), f, d, false)?,
            input_layernorm: GemmaRmsNorm::load(&w.pp("input_layernorm"), d, eps)?,
            post_attention_layernorm: GemmaRmsNorm::load(
                &w.pp("post_attention_layernorm"),
                d,
                eps,
            )?,
            feedforward_norms,
            window,
        })
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        // GELU, tanh approximation (`gelu_pytorch_tanh`)
        let gated = if gate::applies(&gate, &up) {
            gate::gelu_tanh_gate(&gate, &up)?
        } else {
            (gate.gelu()? * up)?
        };
        Ok(self.down_proj.forward(&gated)?)
    }
}

/// Additive masks and "has a visible key" flags for one attention pattern.
struct Mask {
    bias: Tensor,    // (B, 1, 1, L, L) f32: 0 or f32::MIN
    any_key: Tensor, // (B, 1, 1, L, 1) f32: 1 or 0
}

impl Mask {
    /// Causal (and, with a window, sliding) attention restricted to real keys.
    fn new(
        keep: &[Vec<bool>],
        window: Option<usize>,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let (b, l) = (keep.len(), keep.first().map_or(0, Vec::len));
        let mut bias = Vec::with_capacity(b * l * l);
        let mut any = Vec::with_capacity(b * l);
        for row in keep {
            for i in 0..l {
                let mut seen = false;
                for (j, &real) in row.iter().enumerate() {
                    let visible = real && j <= i && window.is_none_or(|w| j + w > i);
                    seen |= visible;
                    // HF's eager mask value: adding it to a score rounds to exactly f32::MIN
                    bias.push(if visible { 0.0 } else { f32::MIN });
                }
                any.push(if seen { 1.0f32 } else { 0.0 });
            }
        }
        Ok(Self {
            bias: Tensor::from_vec(bias, (b, 1, 1, l, l), device)?,
            any_key: Tensor::from_vec(any, (b, 1, 1, l, 1), device)?,
        })
    }
}

pub struct GemmaEncoder {
    cfg: EncoderConfig,
    dtype: DType,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
}

impl GemmaEncoder {
    /// Loads the layers up to `hidden_states[-2]` from a `GemmaModel`/`Gemma2Model` checkpoint
    /// (keys `embed_tokens`, `layers.N`) or a `…ForCausalLM` one (the same under `model.`).
    pub fn load(cfg: &EncoderConfig, w: &Weights) -> Result<Self> {
        let w = if w.contains("model.embed_tokens.weight") {
            w.pp("model")
        } else {
            w.clone()
        };
        let n = cfg.num_hidden_layers;
        if n == 0 {
            return Err(Error::request("text encoder layers", ">= 1", 0));
        }
        let embed_tokens = w.get(
            "embed_tokens.weight",
            &[cfg.vocab_size, cfg.hidden_size],
            Init::Normal { std: 0.02 },
        )?;
        let layers = (0..n - 1)
            .map(|i| Layer::load(&w.pp("layers").pp(i), cfg, cfg.windows[i]))
            .collect::<Result<Vec<_>>>()?;
        // Read by the full model but not by Lumina: the last layer and the final norm.
        w.skip(&format!("layers.{}", n - 1));
        w.skip("norm");
        w.skip("lm_head");
        Ok(Self {
            cfg: cfg.clone(),
            dtype: w.dtype(),
            embed_tokens,
            layers,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// `ids` (B, L) token ids, `mask` (B, L) 1 = real token → (B, L, D) = `hidden_states[-2]`.
    pub fn encode(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let dev = ids.device();
        let keep: Vec<Vec<bool>> = mask
            .ne(0u8)?
            .to_dtype(DType::U8)?
            .to_vec2::<u8>()?
            .into_iter()
            .map(|row| row.into_iter().map(|m| m != 0).collect())
            .collect();
        if let Some(bad) = ids
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(Error::request(
                "token id",
                format!("< vocab size {}", self.cfg.vocab_size),
                bad,
            ));
        }
        let d = self.cfg.hidden_size;
        let table = self.embed_tokens.to_dtype(self.dtype)?;
        let x = table
            .index_select(&ids.flatten_all()?.to_dtype(DType::U32)?, 0)?
            .reshape((b, l, d))?; // (B, L, D)
                                  // HF scales by sqrt(D) rounded to the embedding dtype
        let normalizer = Tensor::new((d as f32).sqrt(), dev)?.to_dtype(self.dtype)?;
        let mut x = x.broadcast_mul(&normalizer)?;
        let (cos, sin) = self.rope(l, dev)?;
        let full = Mask::new(&keep, None, dev)?;
        let sliding = self
            .cfg
            .windows
            .iter()
            .flatten()
            .next()
            .map(|&w| Mask::new(&keep, Some(w), dev))
            .transpose()?;
        for layer in &self.layers {
            let mask = match (layer.window, &sliding) {
                (Some(_), Some(s)) => s,
                _ => &full,
            };
            let attn = self.attention(
                layer,
                &layer.input_layernorm.forward(&x)?,
                (&cos, &sin),
                mask,
            )?;
            x = match &layer.feedforward_norms {
                Some((pre, post)) => {
                    let x = (&x + layer.post_attention_layernorm.forward(&attn)?)?;
                    let m = post.forward(&layer.mlp(&pre.forward(&x)?)?)?;
                    (x + m)?
                }
                None => {
                    let x = (&x + attn)?;
                    let m = layer.mlp(&layer.post_attention_layernorm.forward(&x)?)?;
                    (x + m)?
                }
            };
        }
        Ok(x)
    }

    /// Half-split RoPE tables (L, Dh/2) in f32, as the attention computes (see
    /// [`Self::attention`]).
    fn rope(&self, l: usize, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let dh = self.cfg.head_dim;
        let theta = self.cfg.rope_theta as f32;
        let inv: Vec<f32> = (0..dh / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / dh as f32))
            .collect();
        let angles: Vec<f32> = (0..l)
            .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (l, dh / 2), dev)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: &Mask,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, l, _) = h.dims3()?;
        let (heads, kv_heads, dh) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        // The attention itself runs in f32 whatever the weights' dtype: HF rounds q, k, the
        // RoPE products, the scores and the probabilities to bf16 in a bf16 model; here only
        // the projections are bf16. Its products are ~1 % of an encoding's FLOPs, and candle's
        // bf16 RoPE (scalar widening per element) was 2.5 % of a Gemma-2 2B bf16 encoding.
        let split = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.to_dtype(DType::F32)?
                .reshape((b, l, n, dh))?
                .transpose(1, 2)?
                .contiguous()?) // (B, n, L, Dh) f32
        };
        let q = split(layer.q_proj.forward(h)?, heads)?;
        let k = split(layer.k_proj.forward(h)?, kv_heads)?;
        let v = split(layer.v_proj.forward(h)?, kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let rep = heads / kv_heads;
        // query heads of a group folded next to each other: kv head j serves heads j·rep…
        let q = q.reshape((b, kv_heads, rep * l, dh))?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match cfg.attn_logit_softcapping {
            Some(cap) if softcap::applies(&scores) => {
                softcap::softcap(&scores, cfg.attention_scale, cap)?
            }
            Some(cap) => (((scores * cfg.attention_scale)? / cap)?.tanh()? * cap)?,
            None => (scores * cfg.attention_scale)?,
        };
        let scores = scores
            .reshape((b, kv_heads, rep, l, l))?
            .broadcast_add(&mask.bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let probs = match cfg.empty_rows {
            EmptyRows::Zero => probs.broadcast_mul(&mask.any_key)?,
            EmptyRows::UniformAll => probs,
        };
        let probs = probs.reshape((b, kv_heads, rep * l, l))?;
        let out = probs.matmul(&v)?.reshape((b, heads, l, dh))?; // (B, H, L, Dh)
        let out = out
            .transpose(1, 2)?
            .reshape((b, l, heads * dh))?
            .to_dtype(h.dtype())?;
        Ok(layer.o_proj.forward(&out)?)
    }
}
