//! Prompt tokenization with the padding and truncation rules of each pipeline, through the
//! `tokenizers` crate and the folder's `tokenizer.json`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// Which side padding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// How a batch of prompts is padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// To the longest prompt, rounded up to a multiple (transformers `padding=True,
    /// pad_to_multiple_of=m`).
    Longest { multiple_of: usize },
    /// To exactly this many tokens (`padding="max_length"`).
    Fixed(usize),
}

/// Token ids (B, L) and attention mask (B, L) of a batch.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub ids: Tensor,
    pub mask: Tensor,
    /// Per prompt, the text dropped by truncation (empty when nothing was).
    pub truncated: Vec<String>,
}

pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    pad_id: u32,
    pad_token: String,
    /// The side transformers would pad on with this folder's config.
    default_side: Side,
}

impl PromptTokenizer {
    /// Loads `dir/tokenizer.json`; `tokenizer_config.json` gives the pad token and side.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bad = |reason: String| Error::Tokenizer {
            path: path.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(bad(
                "no tokenizer.json (only the `tokenizers` format is supported)".into(),
            ));
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()))?;
        let config: Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let pad_token =
            token_string(config.get("pad_token")).unwrap_or_else(|| "<pad>".to_string());
        let pad_id = tokenizer
            .token_to_id(&pad_token)
            .ok_or_else(|| bad(format!("pad token `{pad_token}` is not in the vocabulary")))?;
        // transformers' Gemma tokenizer classes pad on the left unless the config says
        // otherwise (the fixture README's first trap); other classes on the right.
        let class = config
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .unwrap_or("");
        let default_side = match config.get("padding_side").and_then(Value::as_str) {
            Some("left") => Side::Left,
            Some("right") => Side::Right,
            _ if class.starts_with("Gemma") => Side::Left,
            _ => Side::Right,
        };
        Ok(Self {
            tokenizer,
            path,
            pad_id,
            pad_token,
            default_side,
        })
    }

    pub fn default_side(&self) -> Side {
        self.default_side
    }

    /// Tokenizes `prompts` as transformers would with `truncation=True, max_length`.
    pub fn encode(
        &self,
        prompts: &[String],
        padding: Padding,
        side: Side,
        max_length: usize,
        device: &Device,
    ) -> Result<Tokens> {
        let bad = |e: tokenizers::Error| Error::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let mut tok = self.tokenizer.clone();
        let (strategy, pad_to_multiple_of) = match padding {
            Padding::Longest { multiple_of } => (PaddingStrategy::BatchLongest, Some(multiple_of)),
            Padding::Fixed(n) => (PaddingStrategy::Fixed(n), None),
        };
        tok.with_padding(Some(PaddingParams {
            strategy,
            direction: match side {
                Side::Left => PaddingDirection::Left,
                Side::Right => PaddingDirection::Right,
            },
            pad_to_multiple_of,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }));
        tok.with_truncation(Some(TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(bad)?;
        let inputs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let encodings = tok.encode_batch(inputs.clone(), true).map_err(bad)?;
        // what truncation dropped: the untruncated tokens past the kept ones (the kept tokens
        // are a prefix: truncation cuts on the right)
        let mut plain = self.tokenizer.clone();
        plain.with_padding(None);
        plain.with_truncation(None).map_err(bad)?;
        let truncated = inputs
            .iter()
            .zip(&encodings)
            .map(|(text, e)| {
                let kept = e.get_attention_mask().iter().filter(|&&m| m != 0).count();
                let full = plain.encode(*text, true).map_err(bad)?;
                let dropped = full.get_ids().get(kept..).unwrap_or_default();
                Ok(self.tokenizer.decode(dropped, true).unwrap_or_default())
            })
            .collect::<Result<Vec<String>>>()?;
        let b = encodings.len();
        let l = encodings.first().map_or(0, |e| e.get_ids().len());
        let ids: Vec<u32> = encodings
            .iter()
            .flat_map(|e| e.get_ids().to_vec())
            .collect();
        let mask: Vec<u32> = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        Ok(Tokens {
            ids: Tensor::from_vec(ids, (b, l), device)?,
            mask: Tensor::from_vec(mask, (b, l), device)?,
            truncated,
        })
    }
}

/// A special token given as `"<pad>"` or as `{"content": "<pad>", …}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}
