//! The upstream Lumina-T2X checkpoint layout of Next-DiT (`consolidated*.safetensors`, keys
//! like `layers.0.attention.wq.weight`), read through one key map into the diffusers-named
//! model, and the config those checkpoints do not carry (upstream keeps it in a pickled
//! `model_args.pth`).
//!
//! Mapping: diffusers `scripts/convert_lumina_to_diffusers.py` and peers.md §1.1.5; upstream
//! names: Lumina-T2X `lumina_next_t2i/models/model.py` (1c60696). The one query projection
//! `attention.wq` serves both `attn1.to_q` and `attn2.to_q`.

use std::sync::Arc;

use super::NextDitConfig;
use crate::error::Result;
use crate::models::layout::{Shapes, UPSTREAM_EMBEDDERS};
use crate::nn::swiglu_hidden;
use crate::weights::key_map::rename;
use crate::weights::{KeyMap, Renamed, WeightFiles};

/// diffusers prefix → upstream prefix, outside the blocks: the patch embedder, then the
/// embedders and final layer both families name alike.
const PATCH_EMBEDDER: [(&str, &str); 1] = [("patch_embedder.proj.", "x_embedder.")];

/// Inside `layers.{i}.`; `ffn_norm1/2` keep their names.
const BLOCK: [(&str, &str); 19] = [
    ("gate", "attention.gate"),
    ("attn1.to_q.", "attention.wq."),
    ("attn2.to_q.", "attention.wq."),
    ("attn1.to_k.", "attention.wk."),
    ("attn1.to_v.", "attention.wv."),
    ("attn2.to_k.", "attention.wk_y."),
    ("attn2.to_v.", "attention.wv_y."),
    ("attn2.to_out.0.", "attention.wo."),
    ("attn1.norm_q.", "attention.q_norm."),
    ("attn2.norm_q.", "attention.q_norm."),
    ("attn1.norm_k.", "attention.k_norm."),
    ("attn2.norm_k.", "attention.ky_norm."),
    ("feed_forward.linear_1.", "feed_forward.w1."),
    ("feed_forward.linear_2.", "feed_forward.w2."),
    ("feed_forward.linear_3.", "feed_forward.w3."),
    ("norm1.norm.", "attention_norm1."),
    ("norm1.linear.", "adaLN_modulation.1."),
    ("norm2.", "attention_norm2."),
    ("norm1_context.", "attention_y_norm."),
];

/// The upstream key under which a diffusers-named Next-DiT parameter is stored.
pub fn original_key(key: &str) -> String {
    if let Some(renamed) = rename(key, &PATCH_EMBEDDER).or_else(|| rename(key, &UPSTREAM_EMBEDDERS))
    {
        return renamed;
    }
    if let Some(rest) = key.strip_prefix("layers.") {
        if let Some((index, inner)) = rest.split_once('.') {
            if let Some(renamed) = rename(inner, &BLOCK) {
                return format!("layers.{index}.{renamed}");
            }
        }
    }
    key.to_string()
}

/// The upstream layout as a key map.
pub fn key_map() -> Arc<dyn KeyMap> {
    Arc::new(Renamed(original_key))
}

/// Whether `files` hold a Next-DiT in the upstream layout, its keys under `prefix`.
pub fn is_original_layout(files: &WeightFiles, prefix: &str) -> bool {
    files.info(&format!("{prefix}x_embedder.weight")).is_some()
        && files
            .info(&format!("{prefix}layers.0.attention.wq.weight"))
            .is_some()
}

/// Reads the configuration off an upstream checkpoint's tensor shapes. Upstream Next-DiT
/// models all take 4-channel (SDXL VAE) latents, which fixes the patch size.
pub fn infer_config(shapes: &Shapes) -> Result<NextDitConfig> {
    let dim_of = |key: &str, axis: usize| shapes.dim(key, axis);
    let cannot = |what: &str| shapes.cannot(what);
    let (dim, patch_in) = (
        dim_of("x_embedder.weight", 0)?,
        dim_of("x_embedder.weight", 1)?,
    ); // (D, p²·C)
    let in_channels = 4;
    let patch_size = (1..=16)
        .find(|p| p * p * in_channels == patch_in)
        .ok_or_else(|| cannot("the patch size"))?;
    let num_layers = shapes.count("layers", "attention.wq.weight");
    let heads = dim_of("layers.0.attention.gate", 0)?;
    if heads == 0 || dim % heads != 0 {
        return Err(cannot("the head count"));
    }
    let kv_heads = dim_of("layers.0.attention.wk.weight", 0)? / (dim / heads);
    let cross_attention_dim = dim_of("layers.0.attention.wk_y.weight", 1)?;
    let final_out = dim_of("final_layer.linear.weight", 0)?;
    let learn_sigma = match final_out / (patch_size * patch_size) {
        c if c == 2 * in_channels => true,
        c if c == in_channels => false,
        _ => return Err(cannot("learn_sigma")),
    };
    let hidden = dim_of("layers.0.feed_forward.w1.weight", 0)?;
    let multiple_of = [256, 128, 64, 32, 16, 8, 1]
        .into_iter()
        .find(|&m| swiglu_hidden(8 * dim / 3, m, None) == hidden)
        .ok_or_else(|| cannot("the feed-forward width (ffn_dim_multiplier)"))?;
    Ok(NextDitConfig {
        sample_size: 128,
        patch_size,
        in_channels,
        hidden_size: dim,
        num_layers,
        num_attention_heads: heads,
        num_kv_heads: Some(kv_heads),
        multiple_of,
        ffn_dim_multiplier: None,
        learn_sigma,
        qk_norm: shapes.has("layers.0.attention.q_norm.weight"),
        cross_attention_dim,
        ..NextDitConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::original_key;

    #[test]
    fn keys_map_to_the_upstream_names() {
        let cases = [
            ("patch_embedder.proj.weight", "x_embedder.weight"),
            (
                "time_caption_embed.timestep_embedder.linear_2.bias",
                "t_embedder.mlp.2.bias",
            ),
            (
                "time_caption_embed.caption_embedder.0.weight",
                "cap_embedder.0.weight",
            ),
            ("layers.3.attn1.to_q.weight", "layers.3.attention.wq.weight"),
            ("layers.3.attn2.to_q.weight", "layers.3.attention.wq.weight"),
            (
                "layers.12.attn2.to_out.0.weight",
                "layers.12.attention.wo.weight",
            ),
            (
                "layers.0.attn2.norm_k.bias",
                "layers.0.attention.ky_norm.bias",
            ),
            ("layers.0.gate", "layers.0.attention.gate"),
            (
                "layers.0.norm1.linear.bias",
                "layers.0.adaLN_modulation.1.bias",
            ),
            ("layers.0.ffn_norm2.weight", "layers.0.ffn_norm2.weight"),
            (
                "layers.0.norm1_context.weight",
                "layers.0.attention_y_norm.weight",
            ),
            ("norm_out.linear_2.weight", "final_layer.linear.weight"),
            ("pad_token", "pad_token"),
        ];
        for (diffusers, upstream) in cases {
            assert_eq!(original_key(diffusers), upstream, "{diffusers}");
        }
    }
}
