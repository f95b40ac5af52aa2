//! A word-level caption encoder for small closed vocabularies, such as the `shapes` task: word
//! and learned position embeddings, a few bidirectional pre-norm transformer layers, a final
//! RMSNorm. Trained with the diffusion transformer, from scratch; with a few dozen words, a
//! pretrained LLM would be all cost and no help.
//!
//! Keys: `embed_tokens.weight`, `embed_positions.weight`, `layers.{i}.{norm1, attn.{to_q,
//! to_k, to_v, to_out.0}, norm2, feed_forward.linear_{1,2,3}}`, `norm.weight`.

use std::path::Path;

use crate::nn::{attention, key_bias, swiglu_hidden, FeedForward, Linear, RmsNorm};
use crate::weights::{Init, Weights};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordEncoderConfig {
    pub vocab_size: usize,
    pub max_length: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "eps")]
    pub norm_eps: f64,
}

fn eps() -> f64 {
    1e-5
}

impl WordEncoderConfig {
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        if self.vocab_size == 0
            || self.max_length == 0
            || self.hidden_size == 0
            || self.num_attention_heads == 0
        {
            return Err(bad(
                "vocab_size, max_length, hidden_size and num_attention_heads must be >= 1".into(),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(format!(
                "hidden_size {} must be a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    fn ffn_hidden(&self) -> usize {
        swiglu_hidden(8 * self.hidden_size / 3, 16, None)
    }
}

struct Layer {
    norm1: RmsNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm2: RmsNorm,
    feed_forward: FeedForward,
}

pub struct WordEncoder {
    cfg: WordEncoderConfig,
    dtype: DType,
    embed_tokens: Tensor,
    embed_positions: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
}

impl WordEncoder {
    pub fn load(cfg: &WordEncoderConfig, w: &Weights) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = Init::Normal { std: 0.02 };
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let l = w.pp("layers").pp(i);
                let a = l.pp("attn");
                let lin = |name: &str| Linear::load(&a.pp(name), d, d, false, Init::XavierUniform);
                Ok(Layer {
                    norm1: RmsNorm::load(&l.pp("norm1"), d, cfg.norm_eps)?,
                    to_q: lin("to_q")?,
                    to_k: lin("to_k")?,
                    to_v: lin("to_v")?,
                    to_out: Linear::load(&a.pp("to_out").pp(0), d, d, false, Init::XavierUniform)?,
                    norm2: RmsNorm::load(&l.pp("norm2"), d, cfg.norm_eps)?,
                    feed_forward: FeedForward::load(&l.pp("feed_forward"), d, cfg.ffn_hidden())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            dtype: w.dtype(),
            embed_tokens: w.get("embed_tokens.weight", &[cfg.vocab_size, d], emb)?,
            embed_positions: w.get("embed_positions.weight", &[cfg.max_length, d], emb)?,
            layers,
            norm: RmsNorm::load(&w.pp("norm"), d, cfg.norm_eps)?,
        })
    }

    pub fn config(&self) -> &WordEncoderConfig {
        &self.cfg
    }

    /// `ids` (B, L) and `mask` (B, L) → caption features (B, L, D).
    pub fn encode(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if l > self.cfg.max_length {
            return Err(Error::input(
                "caption tokens",
                format!("at most {}", self.cfg.max_length),
                l,
            ));
        }
        let d = self.cfg.hidden_size;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let words = self
            .embed_tokens
            .to_dtype(self.dtype)?
            .index_select(&flat, 0)?
            .reshape((b, l, d))?; // (B, L, D)
        let positions = self.embed_positions.to_dtype(self.dtype)?.narrow(0, 0, l)?; // (L, D)
        let mut x = words.broadcast_add(&positions)?;
        let bias = key_bias(mask)?; // (B, 1, 1, L)
        let heads = self.cfg.num_attention_heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, d / heads))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        for layer in &self.layers {
            let h = layer.norm1.forward(&x)?;
            let q = split(layer.to_q.forward(&h)?)?;
            let k = split(layer.to_k.forward(&h)?)?;
            let v = split(layer.to_v.forward(&h)?)?;
            let o = attention(&q, &k, &v, Some(&bias), 1.0 / ((d / heads) as f64).sqrt())?; // (B, H, L, Dh)
            let o = layer
                .to_out
                .forward(&o.transpose(1, 2)?.reshape((b, l, d))?)?;
            x = (x + o)?;
            x = (&x + layer.feed_forward.forward(&layer.norm2.forward(&x)?)?)?;
        }
        self.norm.forward(&x)
    }
}

/// Word-level tokenization over a fixed vocabulary: lower-case, split on spaces, `<bos>`
/// first, unknown words as `<unk>`, right-padded with `<pad>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WordTokenizer {
    /// Word of each id; ids 0, 1, 2 are `<pad>`, `<bos>`, `<unk>`.
    pub words: Vec<String>,
    pub max_length: usize,
}

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const UNK: u32 = 2;

impl WordTokenizer {
    /// A tokenizer whose vocabulary is the special tokens followed by `words`.
    pub fn new(words: &[&str], max_length: usize) -> Self {
        let specials = ["<pad>", "<bos>", "<unk>"];
        Self {
            words: specials
                .iter()
                .chain(words)
                .map(|w| w.to_string())
                .collect(),
            max_length,
        }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let tok: WordTokenizer = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("tokenizer: {e}"),
        })?;
        if tok.words.len() < 3
            || tok.words[..3] != ["<pad>", "<bos>", "<unk>"]
            || tok.max_length < 2
        {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: "tokenizer: the vocabulary must start with <pad>, <bos>, <unk> and \
                         max_length be >= 2"
                    .into(),
            });
        }
        Ok(tok)
    }

    /// The words of `text` outside the vocabulary (they would all read as `<unk>`).
    pub fn unknown_words(&self, text: &str) -> Vec<String> {
        let mut unknown: Vec<String> = Vec::new();
        for w in text.to_lowercase().split_whitespace() {
            if !self.words[3..].iter().any(|v| v == w) && !unknown.iter().any(|u| u == w) {
                unknown.push(w.to_string());
            }
        }
        unknown
    }

    /// The vocabulary's words, special tokens left out.
    pub fn vocabulary(&self) -> &[String] {
        &self.words[3..]
    }

    /// Ids (B, L) and mask (B, L) padded to the longest caption (at most `max_length`), and
    /// per caption the words truncation dropped.
    pub fn encode(
        &self,
        texts: &[String],
        device: &Device,
    ) -> Result<(Tensor, Tensor, Vec<String>)> {
        let mut rows = Vec::with_capacity(texts.len());
        let mut dropped = Vec::with_capacity(texts.len());
        for text in texts {
            let lower = text.to_lowercase();
            let words: Vec<&str> = lower.split_whitespace().collect();
            let keep = words.len().min(self.max_length - 1);
            let ids: Vec<u32> = std::iter::once(BOS)
                .chain(words[..keep].iter().map(|w| {
                    self.words
                        .iter()
                        .position(|v| v == w)
                        .map_or(UNK, |i| i as u32)
                }))
                .collect();
            dropped.push(words[keep..].join(" "));
            rows.push(ids);
        }
        let l = rows.iter().map(Vec::len).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(rows.len() * l);
        let mut mask = Vec::with_capacity(rows.len() * l);
        for row in &rows {
            ids.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(PAD, l - row.len())),
            );
            mask.extend((0..l).map(|i| u8::from(i < row.len())));
        }
        let b = rows.len();
        Ok((
            Tensor::from_vec(ids, (b, l), device)?,
            Tensor::from_vec(mask, (b, l), device)?,
            dropped,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_pads_right_and_marks_unknown_words() -> Result<()> {
        let tok = WordTokenizer::new(&["a", "red", "circle"], 4);
        let (ids, mask, dropped) = tok.encode(
            &[
                "A red CIRCLE".into(),
                "a dog".into(),
                "a red circle circle".into(),
            ],
            &Device::Cpu,
        )?;
        assert_eq!(
            ids.to_vec2::<u32>()?,
            vec![vec![1, 3, 4, 5], vec![1, 3, 2, 0], vec![1, 3, 4, 5]]
        );
        assert_eq!(
            mask.to_vec2::<u8>()?,
            vec![vec![1, 1, 1, 1], vec![1, 1, 1, 0], vec![1, 1, 1, 1]]
        );
        assert_eq!(dropped, vec!["", "", "circle"]);
        // each unknown word once, in order
        assert_eq!(
            tok.unknown_words("a dog and a DOG and a cat"),
            ["dog", "and", "cat"]
        );
        Ok(())
    }

    #[test]
    fn encoder_features_depend_on_word_order_and_ignore_padding() -> Result<()> {
        let cfg = WordEncoderConfig {
            vocab_size: 8,
            max_length: 6,
            hidden_size: 16,
            num_layers: 2,
            num_attention_heads: 2,
            norm_eps: 1e-5,
        };
        let enc = WordEncoder::load(&cfg, &Weights::random(0, DType::F32, &Device::Cpu))?;
        let run = |ids: &[u32], pad: usize| -> Result<Tensor> {
            let row: Vec<u32> = ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, pad))
                .collect();
            let mask: Vec<u8> = (0..row.len()).map(|i| u8::from(i < ids.len())).collect();
            let n = row.len();
            enc.encode(
                &Tensor::from_vec(row, (1, n), &Device::Cpu)?,
                &Tensor::from_vec(mask, (1, n), &Device::Cpu)?,
            )
        };
        let a = run(&[1, 3, 4], 0)?;
        let padded = run(&[1, 3, 4], 3)?.narrow(1, 0, 3)?;
        assert!(crate::fixtures::max_abs_diff(&a, &padded)? < 1e-5);
        let swapped = run(&[1, 4, 3], 0)?;
        assert!(crate::fixtures::max_abs_diff(&a, &swapped)? > 1e-3);
        Ok(())
    }
}
