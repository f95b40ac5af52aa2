//! Lumina-Image-2.0 configuration, with diffusers' `Lumina2Transformer2DModel` field names and
//! defaults.

use serde::{Deserialize, Serialize};

use crate::config::{at_least, DitDims, Validate};
use crate::error::{Error, Result};
use crate::nn::swiglu_hidden;

/// The `config.json` of a diffusers `Lumina2Transformer2DModel`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lumina2Config {
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    /// `None` means `in_channels`.
    pub out_channels: Option<usize>,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// Blocks of the caption (context) refiner and of the image (noise) refiner, each.
    pub num_refiner_layers: usize,
    pub num_attention_heads: usize,
    pub num_kv_heads: usize,
    pub multiple_of: usize,
    pub ffn_dim_multiplier: Option<f64>,
    pub norm_eps: f64,
    /// Stored by diffusers, unused by the forward.
    pub scaling_factor: f64,
    /// RoPE widths of the (caption index, row, col) axes; they sum to the head dim.
    pub axes_dim_rope: [usize; 3],
    /// Table lengths upstream precomputes per axis; positions beyond them are an error there.
    pub axes_lens: [usize; 3],
    /// Caption feature width. The diffusers default (1024) is *not* the released model's
    /// (2304, Gemma-2-2B): always read it from the config.
    pub cap_feat_dim: usize,
}

impl Default for Lumina2Config {
    /// diffusers' constructor defaults (`transformer_lumina2.py`).
    fn default() -> Self {
        Self {
            sample_size: 128,
            patch_size: 2,
            in_channels: 16,
            out_channels: None,
            hidden_size: 2304,
            num_layers: 26,
            num_refiner_layers: 2,
            num_attention_heads: 24,
            num_kv_heads: 8,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            norm_eps: 1e-5,
            scaling_factor: 1.0,
            axes_dim_rope: [32, 32, 32],
            axes_lens: [300, 512, 512],
            cap_feat_dim: 1024,
        }
    }
}

impl Lumina2Config {
    /// Lumina-Image-2.0 (hub `Alpha-VLLM/Lumina-Image-2.0/transformer/config.json`).
    pub fn lumina_image_2() -> Self {
        Self {
            cap_feat_dim: 2304,
            ..Self::default()
        }
    }

    /// A tiny model for tests: 64 wide, 4 heads of 16, 2 kv heads, 1 refiner block each.
    pub fn tiny() -> Self {
        Self {
            sample_size: 16,
            in_channels: 4,
            hidden_size: 64,
            num_layers: 2,
            num_refiner_layers: 1,
            num_attention_heads: 4,
            num_kv_heads: 2,
            multiple_of: 16,
            axes_dim_rope: [4, 6, 6],
            axes_lens: [64, 64, 64],
            cap_feat_dim: 32,
            ..Self::default()
        }
    }

    pub(crate) fn dims(&self) -> DitDims {
        DitDims {
            sample_size: self.sample_size,
            patch_size: self.patch_size,
            in_channels: self.in_channels,
            hidden_size: self.hidden_size,
            num_attention_heads: self.num_attention_heads,
            num_kv_heads: self.num_kv_heads,
            multiple_of: self.multiple_of,
            ffn_dim_multiplier: self.ffn_dim_multiplier,
            norm_eps: self.norm_eps,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.dims().head_dim()
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    pub fn cond_dim(&self) -> usize {
        self.dims().cond_dim()
    }

    /// SwiGLU hidden width: 4·dim, times the multiplier, rounded up to `multiple_of`.
    pub fn ffn_hidden(&self) -> usize {
        swiglu_hidden(
            4 * self.hidden_size,
            self.multiple_of,
            self.ffn_dim_multiplier,
        )
    }
}

impl Validate for Lumina2Config {
    fn validate(&self) -> Result<()> {
        self.dims().validate()?;
        at_least("out_channels", self.out_channels(), 1)?;
        at_least("cap_feat_dim", self.cap_feat_dim, 1)?;
        let axes = || format!("{:?}", self.axes_dim_rope);
        if self.axes_dim_rope.iter().sum::<usize>() != self.head_dim() {
            let reason = format!("must sum to the head dim {}", self.head_dim());
            return Err(Error::invalid_config("axes_dim_rope", axes(), reason));
        }
        if self.axes_dim_rope.iter().any(|d| d % 2 != 0) {
            let reason = "every axis width must be even (RoPE rotates pairs)";
            return Err(Error::invalid_config("axes_dim_rope", axes(), reason));
        }
        if self.axes_lens.contains(&0) {
            return Err(Error::invalid_config(
                "axes_lens",
                format!("{:?}", self.axes_lens),
                "must be >= 1",
            ));
        }
        Ok(())
    }
}
