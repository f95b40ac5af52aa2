//! The Hugging Face `config.json` of a Gemma or Gemma-2 text encoder, reduced to what the
//! forward needs. Options that would change the maths but are not implemented are errors.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// How a query row whose every key is masked (a left-padding position, or a padding position
/// outside Gemma-2's sliding window) comes out. Only padding positions are affected — the
/// transformer masks them — but `prompt_embeds` is compared there too, so we follow the
/// attention implementation transformers 5 picks for each model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyRows {
    /// Gemma runs on torch SDPA, which returns zeros for such rows.
    Zero,
    /// Gemma-2 runs the eager path: an additive `finfo.min` mask makes every score of the row
    /// equal, hence a uniform average over all keys.
    UniformAll,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    pub gemma2: bool,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub rope_theta: f64,
    pub attention_bias: bool,
    /// Attention score scale: `query_pre_attn_scalar^-1/2` (Gemma-2) or `head_dim^-1/2`.
    pub attention_scale: f64,
    /// Gemma-2: scores become `tanh(s/cap)·cap` before masking.
    pub attn_logit_softcapping: Option<f64>,
    /// Per layer: the sliding window size, or `None` for full causal attention.
    pub windows: Vec<Option<usize>>,
    pub empty_rows: EmptyRows,
}

#[derive(Deserialize)]
struct Raw {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    rms_norm_eps: f64,
    vocab_size: usize,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    use_bidirectional_attention: Option<bool>,
}

/// Activations HF Gemma maps to the tanh-approximated GELU (`"gelu"` is a legacy spelling of
/// it in Gemma configs; transformers rewrites it).
const TANH_GELU: [&str; 3] = ["gelu_pytorch_tanh", "gelu", "gelu_new"];

impl EncoderConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            Error::Core(lumina::Error::Io {
                path: path.to_path_buf(),
                source,
            })
        })?;
        Self::parse(&text, path)
    }

    /// A `config.json` given as text; `path` names where it came from in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Unsupported {
            path: path.to_path_buf(),
            reason,
        };
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| bad(format!("not a Gemma config: {e}")))?;
        let gemma2 = match raw.model_type.as_str() {
            "gemma" => false,
            "gemma2" => true,
            other => {
                return Err(bad(format!(
                    "text encoder model_type `{other}`; expected gemma or gemma2"
                )))
            }
        };
        let act = if gemma2 {
            raw.hidden_activation.clone().or(raw.hidden_act.clone())
        } else {
            raw.hidden_act.clone().or(raw.hidden_activation.clone())
        };
        if let Some(act) = act.filter(|a| !TANH_GELU.contains(&a.as_str())) {
            return Err(bad(format!(
                "activation `{act}`; Gemma encoders use the tanh GELU"
            )));
        }
        if raw.use_bidirectional_attention == Some(true) {
            return Err(bad(
                "use_bidirectional_attention = true is not supported".into()
            ));
        }
        let rope_theta = rope_theta(&raw).map_err(bad)?;
        let windows = (0..raw.num_hidden_layers)
            .map(|i| {
                if !gemma2 {
                    return Ok(None);
                }
                // transformers 4 had no layer_types: even layers slide
                let sliding = match &raw.layer_types {
                    Some(types) => types.get(i).map(String::as_str) == Some("sliding_attention"),
                    None => i % 2 == 0,
                };
                match (sliding, raw.sliding_window) {
                    (false, _) => Ok(None),
                    (true, Some(w)) => Ok(Some(w)),
                    (true, None) => Err(bad(format!(
                        "layer {i} slides but no sliding_window is set"
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if raw.num_attention_heads == 0
            || raw.num_key_value_heads == 0
            || !raw
                .num_attention_heads
                .is_multiple_of(raw.num_key_value_heads)
        {
            return Err(bad(format!(
                "num_attention_heads {} must be a non-zero multiple of num_key_value_heads {}",
                raw.num_attention_heads, raw.num_key_value_heads
            )));
        }
        let scale_base = if gemma2 {
            raw.query_pre_attn_scalar.unwrap_or(raw.head_dim as f64)
        } else {
            raw.head_dim as f64
        };
        Ok(Self {
            gemma2,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads,
            head_dim: raw.head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            vocab_size: raw.vocab_size,
            rope_theta,
            attention_bias: raw.attention_bias,
            attention_scale: scale_base.powf(-0.5),
            attn_logit_softcapping: if gemma2 {
                raw.attn_logit_softcapping
            } else {
                None
            },
            windows,
            empty_rows: if gemma2 {
                EmptyRows::UniformAll
            } else {
                EmptyRows::Zero
            },
        })
    }
}

/// `rope_theta` (transformers 4) or `rope_parameters.rope_theta` (transformers 5); only plain
/// RoPE is supported.
fn rope_theta(raw: &Raw) -> std::result::Result<f64, String> {
    let scaled = |v: &Value| {
        v.get("rope_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "default")
    };
    if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null())
        || raw.rope_parameters.as_ref().is_some_and(scaled)
    {
        return Err(
            "scaled RoPE (rope_scaling / rope_type other than default) is not supported".into(),
        );
    }
    raw.rope_parameters
        .as_ref()
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(raw.rope_theta)
        .ok_or_else(|| "no rope_theta".to_string())
}
