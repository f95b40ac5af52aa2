//! The upstream Lumina-Image-2.0 checkpoint layout (the released single file, ComfyUI's
//! repackaged files and GGUF quantisations), read through one key map into the diffusers-named
//! model, and the config those files do not carry.
//!
//! Mapping: diffusers `loaders/single_file_utils.py` `convert_lumina2_to_diffusers` and
//! peers.md §1.2. Unlike diffusers, which splits the fused `attention.qkv` at the 2B model's
//! sizes (2304/768/768), the rows are split by the config's head counts, so any size loads.

use std::sync::Arc;

use super::Lumina2Config;
use crate::error::Result;
use crate::models::layout::{Shapes, UPSTREAM_EMBEDDERS};
use crate::nn::swiglu_hidden;
use crate::weights::key_map::rename;
use crate::weights::{FusedRows, KeyMap, Stored};

/// Inside `{layers,noise_refiner,context_refiner}.{i}.`, first match wins; `ffn_norm1/2` keep
/// their names. The caption refiner's `norm1` is a plain RMSNorm, the others' `norm1.norm`.
const BLOCK: [(&str, &str); 10] = [
    ("attn.to_out.0.", "attention.out."),
    ("attn.norm_q.", "attention.q_norm."),
    ("attn.norm_k.", "attention.k_norm."),
    ("feed_forward.linear_1.", "feed_forward.w1."),
    ("feed_forward.linear_2.", "feed_forward.w2."),
    ("feed_forward.linear_3.", "feed_forward.w3."),
    ("norm1.linear.", "adaLN_modulation.1."),
    ("norm1.norm.", "attention_norm1."),
    ("norm1.", "attention_norm1."),
    ("norm2.", "attention_norm2."),
];

const BLOCK_GROUPS: [&str; 3] = ["layers", "noise_refiner", "context_refiner"];

/// The upstream layout of one Lumina-Image-2.0 configuration: the q, k, v row split of the
/// fused projection depends on its head counts.
pub struct Original {
    q_rows: usize,
    kv_rows: usize,
}

/// The upstream layout for a model of `cfg`.
pub fn key_map(cfg: &Lumina2Config) -> Arc<dyn KeyMap> {
    Arc::new(Original {
        q_rows: cfg.num_attention_heads * cfg.head_dim(),
        kv_rows: cfg.num_kv_heads * cfg.head_dim(),
    })
}

impl KeyMap for Original {
    fn locate(&self, key: &str) -> Stored {
        // outside the blocks (`x_embedder` keeps its name)
        if let Some(renamed) = rename(key, &UPSTREAM_EMBEDDERS) {
            return Stored::whole(renamed);
        }
        for group in BLOCK_GROUPS {
            let Some((index, inner)) = key
                .strip_prefix(group)
                .and_then(|r| r.strip_prefix('.'))
                .and_then(|r| r.split_once('.'))
            else {
                continue;
            };
            let block = format!("{group}.{index}.");
            let (q, kv) = (self.q_rows, self.kv_rows);
            let part = match inner {
                "attn.to_q.weight" => Some(0..q),
                "attn.to_k.weight" => Some(q..q + kv),
                "attn.to_v.weight" => Some(q + kv..q + 2 * kv),
                _ => None,
            };
            if let Some(range) = part {
                return Stored {
                    key: format!("{block}attention.qkv.weight"),
                    rows: Some(FusedRows {
                        range,
                        total: q + 2 * kv,
                    }),
                };
            }
            if let Some(renamed) = rename(inner, &BLOCK) {
                return Stored::whole(format!("{block}{renamed}"));
            }
        }
        Stored::whole(key)
    }
}

/// RoPE widths of (caption index, row, column) for head dim `dh`: equal thirds when they are
/// even (Lumina-Image-2.0's 96 = 32 + 32 + 32), else 4 for the caption axis and the rest split
/// between rows and columns (what the tiny diffusers test models use: 16 = 4 + 6 + 6).
/// Upstream files do not store it; a config.json beside the file overrides it.
fn axes_dim_rope(dh: usize) -> Option<[usize; 3]> {
    if dh.is_multiple_of(6) {
        return Some([dh / 3; 3]);
    }
    let rest = dh.checked_sub(4)?;
    (rest % 4 == 0 && rest > 0).then_some([4, rest / 2, rest / 2])
}

/// Reads the configuration off an upstream checkpoint's tensor shapes. The patch is 2×2 as in
/// every Lumina model; table lengths and ε are the released model's.
pub fn infer_config(shapes: &Shapes) -> Result<Lumina2Config> {
    let dim = |key: &str, axis: usize| shapes.dim(key, axis);
    let hidden = dim("x_embedder.weight", 0)?;
    let patch_in = dim("x_embedder.weight", 1)?; // p²·C
    let patch_size = 2;
    if patch_in % (patch_size * patch_size) != 0 {
        return Err(shapes.cannot("the latent channels (x_embedder is not 2×2 patches)"));
    }
    let out = dim("final_layer.linear.weight", 0)? / (patch_size * patch_size);
    let in_channels = patch_in / (patch_size * patch_size);
    let head_dim = dim("layers.0.attention.q_norm.weight", 0)?;
    if head_dim == 0 || hidden % head_dim != 0 {
        return Err(shapes.cannot("the head count (q_norm width does not divide the width)"));
    }
    let heads = hidden / head_dim;
    let qkv = dim("layers.0.attention.qkv.weight", 0)?;
    let kv_rows = qkv
        .checked_sub(hidden)
        .filter(|r| r % (2 * head_dim) == 0 && *r > 0)
        .ok_or_else(|| shapes.cannot("the kv head count (qkv rows)"))?;
    let ffn = dim("layers.0.feed_forward.w1.weight", 0)?;
    let multiple_of = [256, 128, 64, 32, 16, 8, 4, 2, 1]
        .into_iter()
        .find(|&m| swiglu_hidden(4 * hidden, m, None) == ffn);
    let (multiple_of, ffn_dim_multiplier) = match multiple_of {
        Some(m) => (m, None),
        None => (1, Some(ffn as f64 / (4 * hidden) as f64)),
    };
    let cfg = Lumina2Config {
        patch_size,
        in_channels,
        out_channels: (out != in_channels).then_some(out),
        hidden_size: hidden,
        num_layers: shapes.count("layers", "attention.qkv.weight"),
        num_refiner_layers: shapes.count("noise_refiner", "attention.qkv.weight"),
        num_attention_heads: heads,
        num_kv_heads: kv_rows / (2 * head_dim),
        multiple_of,
        ffn_dim_multiplier,
        axes_dim_rope: axes_dim_rope(head_dim)
            .ok_or_else(|| shapes.cannot("the RoPE axis widths"))?,
        axes_lens: [300, 512, 512],
        cap_feat_dim: dim("cap_embedder.0.weight", 0)?,
        ..Lumina2Config::default()
    };
    if cfg.ffn_hidden() != ffn {
        return Err(shapes.cannot("the feed-forward width"));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_the_upstream_names() {
        let map = key_map(&Lumina2Config::tiny()); // q 64 rows, k and v 32 each
        let whole = |k: &str| Stored::whole(k);
        let fused = |block: &str, a: usize, b: usize| Stored {
            key: format!("{block}.attention.qkv.weight"),
            rows: Some(FusedRows {
                range: a..b,
                total: 128,
            }),
        };
        let cases = [
            ("layers.1.attn.to_q.weight", fused("layers.1", 0, 64)),
            (
                "noise_refiner.0.attn.to_k.weight",
                fused("noise_refiner.0", 64, 96),
            ),
            (
                "context_refiner.0.attn.to_v.weight",
                fused("context_refiner.0", 96, 128),
            ),
            (
                "layers.0.attn.to_out.0.weight",
                whole("layers.0.attention.out.weight"),
            ),
            (
                "layers.0.attn.norm_k.weight",
                whole("layers.0.attention.k_norm.weight"),
            ),
            (
                "layers.0.norm1.linear.bias",
                whole("layers.0.adaLN_modulation.1.bias"),
            ),
            (
                "layers.0.norm1.norm.weight",
                whole("layers.0.attention_norm1.weight"),
            ),
            (
                "context_refiner.0.norm1.weight",
                whole("context_refiner.0.attention_norm1.weight"),
            ),
            (
                "layers.0.norm2.weight",
                whole("layers.0.attention_norm2.weight"),
            ),
            (
                "layers.0.ffn_norm2.weight",
                whole("layers.0.ffn_norm2.weight"),
            ),
            (
                "layers.0.feed_forward.linear_2.weight",
                whole("layers.0.feed_forward.w2.weight"),
            ),
            (
                "time_caption_embed.caption_embedder.1.bias",
                whole("cap_embedder.1.bias"),
            ),
            (
                "time_caption_embed.timestep_embedder.linear_2.weight",
                whole("t_embedder.mlp.2.weight"),
            ),
            (
                "norm_out.linear_1.weight",
                whole("final_layer.adaLN_modulation.1.weight"),
            ),
            ("x_embedder.weight", whole("x_embedder.weight")),
        ];
        for (diffusers, upstream) in cases {
            assert_eq!(map.locate(diffusers), upstream, "{diffusers}");
        }
    }

    #[test]
    fn rope_axes_follow_the_head_dim() {
        assert_eq!(axes_dim_rope(96), Some([32, 32, 32]));
        assert_eq!(axes_dim_rope(16), Some([4, 6, 6]));
        assert_eq!(axes_dim_rope(8), Some([4, 2, 2]));
        assert_eq!(axes_dim_rope(3), None);
    }
}
