//! Next-DiT configuration, with diffusers' `LuminaNextDiT2DModel` field names and defaults.

use serde::{Deserialize, Serialize};

use crate::config::{at_least, DitDims, Validate};
use crate::error::{Error, Result};
use crate::nn::swiglu_hidden;

/// The `config.json` of a diffusers `LuminaNextDiT2DModel`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NextDitConfig {
    /// Latent side at training resolution (pipelines derive the native image size from it).
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); `None` means one per query head.
    pub num_kv_heads: Option<usize>,
    pub multiple_of: usize,
    pub ffn_dim_multiplier: Option<f64>,
    pub norm_eps: f64,
    /// The final layer predicts 2·C channels; the second half (a learned σ) is unused.
    pub learn_sigma: bool,
    /// LayerNorm over the whole projected query/key width, before the head split.
    pub qk_norm: bool,
    /// Caption feature width (Gemma-2B hidden size for the released model).
    pub cross_attention_dim: usize,
    /// Stored by diffusers, unused by the forward.
    pub scaling_factor: f64,
    /// Lumina extension, off in every upstream model: add fixed sin-cos features of each image
    /// token's *normalised* canvas coordinates after the patch embedder
    /// ([`crate::nn::coordinate_features`]). RoPE alone tells tokens only their offsets to
    /// one another; this tells them where on the canvas they are, at any resolution.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub coordinate_embedding: bool,
    /// TerDiT's change for ternary models, off upstream: an RMSNorm (learnable weight, over
    /// all 4·D values) on each block's adaLN modulation output before it is split into
    /// scales and gates (`norm1.norm_modulation.weight`). A ternary adaLN linear produces far
    /// larger modulations than a full-precision one; this brings them back in range.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub modulation_norm: bool,
    /// Head dimensions that turn with the frame index (3-D RoPE over frames, rows, columns;
    /// Lumina-Video gives frames 2/8 of the head). 0: an image model, whose one frame is the
    /// image RoPE exactly.
    #[serde(skip_serializing_if = "is_zero")]
    pub frame_dim: usize,
    /// Frames per token (Lumina-Video's `f_patch_size`); 1 for image models.
    #[serde(skip_serializing_if = "is_one")]
    pub frame_patch_size: usize,
    /// Clip length at training (frames), as `sample_size` is its canvas: the base of the
    /// frame axis's RoPE scaling and of the clip-time features. 1 for image models.
    #[serde(skip_serializing_if = "is_one")]
    pub sample_frames: usize,
    /// Lumina extension for clips: add fixed sin-cos features of each token's *normalised*
    /// clip time after the patch embedder ([`crate::nn::clip_time_features`]), as
    /// `coordinate_embedding` does for canvas coordinates. The frame axis's RoPE tells tokens
    /// how far apart their frames are; this tells them where in the clip they are, so "moving
    /// to the right" starts on the left at any clip length.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub clip_time_embedding: bool,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Default for NextDitConfig {
    /// diffusers' constructor defaults (`lumina_nextdit2d.py`).
    fn default() -> Self {
        Self {
            sample_size: 128,
            patch_size: 2,
            in_channels: 4,
            hidden_size: 2304,
            num_layers: 32,
            num_attention_heads: 32,
            num_kv_heads: None,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            norm_eps: 1e-5,
            learn_sigma: true,
            qk_norm: true,
            cross_attention_dim: 2048,
            scaling_factor: 1.0,
            coordinate_embedding: false,
            modulation_norm: false,
            frame_dim: 0,
            frame_patch_size: 1,
            sample_frames: 1,
            clip_time_embedding: false,
        }
    }
}

impl NextDitConfig {
    /// Lumina-Next-SFT / Lumina-Next-T2I 2B (`NextDiT_2B_GQA_patch2`; diffusers
    /// `scripts/convert_lumina_to_diffusers.py`): 24 layers, 2304 wide, 32 heads, 8 kv heads.
    pub fn next_dit_2b() -> Self {
        Self {
            num_layers: 24,
            num_kv_heads: Some(8),
            ..Self::default()
        }
    }

    /// A tiny model for tests: 2 layers, 64 wide, 4 heads of 16, 2 kv heads.
    pub fn tiny() -> Self {
        Self {
            sample_size: 16,
            hidden_size: 64,
            num_layers: 2,
            num_attention_heads: 4,
            num_kv_heads: Some(2),
            multiple_of: 16,
            cross_attention_dim: 32,
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
            num_kv_heads: self.kv_heads(),
            multiple_of: self.multiple_of,
            ffn_dim_multiplier: self.ffn_dim_multiplier,
            norm_eps: self.norm_eps,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.dims().head_dim()
    }

    pub fn kv_heads(&self) -> usize {
        self.num_kv_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Width of the timestep/caption conditioning vector: min(hidden, 1024).
    pub fn cond_dim(&self) -> usize {
        self.dims().cond_dim()
    }

    /// SwiGLU hidden width: int(8·dim/3), times the multiplier, rounded up to `multiple_of`.
    pub fn ffn_hidden(&self) -> usize {
        swiglu_hidden(
            8 * self.hidden_size / 3,
            self.multiple_of,
            self.ffn_dim_multiplier,
        )
    }
}

impl Validate for NextDitConfig {
    fn validate(&self) -> Result<()> {
        self.dims().validate()?;
        if self.coordinate_embedding && !self.hidden_size.is_multiple_of(4) {
            return Err(Error::invalid_config(
                "hidden_size",
                self.hidden_size,
                "the coordinate embedding needs a width divisible by 4",
            ));
        }
        if !self.head_dim().is_multiple_of(4) {
            let reason = format!(
                "2D RoPE needs a head dim divisible by 4, got {}",
                self.head_dim()
            );
            return Err(Error::invalid_config(
                "hidden_size",
                self.hidden_size,
                reason,
            ));
        }
        at_least("frame_patch_size", self.frame_patch_size, 1)?;
        at_least("sample_frames", self.sample_frames, 1)?;
        if self.clip_time_embedding && !self.hidden_size.is_multiple_of(2) {
            return Err(Error::invalid_config(
                "hidden_size",
                self.hidden_size,
                "the clip-time embedding needs an even width",
            ));
        }
        let head = self.head_dim();
        if !self.frame_dim.is_multiple_of(4) || self.frame_dim >= head {
            return Err(Error::invalid_config(
                "frame_dim",
                self.frame_dim,
                format!("a multiple of 4 below the head dim {head}"),
            ));
        }
        at_least("cross_attention_dim", self.cross_attention_dim, 1)
    }
}
