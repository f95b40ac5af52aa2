//! The latent ↔ pixel codec: diffusers `AutoencoderKL` (the SDXL VAE of Lumina-Next, the
//! 16-channel Flux VAE of Lumina-Image-2.0), loaded through our weight store: the decoder on
//! the project's kernels (`vae_decoder.rs`), the encoder on candle-transformers' blocks
//! (`vae_encoder.rs`). Scale and shift come from the folder's config.

use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use lumina::config::ConfigFile;
use lumina::weights::Weights;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::vae_decoder::VaeDecoder;
use crate::vae_encoder::VaeEncoder;

/// `vae/config.json` of a diffusers `AutoencoderKL`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub sample_size: Value,
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub latents_mean: Option<Value>,
    pub latents_std: Option<Value>,
    #[serde(default)]
    pub force_upcast: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn silu() -> String {
    "silu".into()
}
fn sd_scale() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

pub struct Vae {
    decoder: VaeDecoder,
    pub config: VaeConfig,
    /// The weights, for the encoder, built on first use (text to image never needs it).
    weights: Weights,
    encoder: Mutex<Option<Arc<VaeEncoder>>>,
}

impl Vae {
    /// Loads a diffusers `vae/` folder, computing in `dtype`.
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let file = ConfigFile::read_dir(dir)?;
        let config: VaeConfig = file.parse()?;
        Self::check(&config, &file.path)?;
        let weights = Weights::from_dir(dir, dtype, device)?;
        Self::load(config, &weights)
    }

    /// Builds the model from `weights` (any source: files, audit, random).
    pub fn load(config: VaeConfig, weights: &Weights) -> Result<Self> {
        Ok(Self {
            decoder: VaeDecoder::load(&config, weights)?,
            config,
            weights: weights.clone(),
            encoder: Mutex::new(None),
        })
    }

    /// What this implementation covers; anything else is an error, not a silent mismatch.
    pub fn check(config: &VaeConfig, path: &Path) -> Result<()> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(t) = config
            .down_block_types
            .iter()
            .chain(&config.up_block_types)
            .find(|t| !matches!(t.as_str(), "DownEncoderBlock2D" | "UpDecoderBlock2D"))
        {
            return Err(unsupported(format!("VAE block type `{t}`")));
        }
        if config.act_fn != "silu" {
            return Err(unsupported(format!("VAE act_fn `{}`", config.act_fn)));
        }
        if !config.mid_block_add_attention {
            return Err(unsupported("VAE without mid-block attention".into()));
        }
        if config.block_out_channels.is_empty()
            || config.norm_num_groups == 0
            || config
                .block_out_channels
                .iter()
                .any(|c| c % config.norm_num_groups != 0)
        {
            return Err(unsupported(format!(
                "block_out_channels {:?} must be non-empty multiples of norm_num_groups {}",
                config.block_out_channels, config.norm_num_groups
            )));
        }
        if !(config.scaling_factor.is_finite() && config.scaling_factor > 0.0) {
            return Err(unsupported(format!(
                "scaling_factor {}",
                config.scaling_factor
            )));
        }
        Ok(())
    }

    /// Pixels per latent cell along each axis (2^(blocks − 1)).
    pub fn downscale(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    fn encoder(&self) -> Result<Arc<VaeEncoder>> {
        let mut slot = self.encoder.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let e = Arc::new(VaeEncoder::load(&self.config, &self.weights)?);
        *slot = Some(e.clone());
        Ok(e)
    }

    /// Images (B, H, W, 3) in [0, 1] → model latents (B, C, H/f, W/f):
    /// `(mean(encode(2x − 1)) − shift) · scale`, the posterior mean (deterministic; diffusers'
    /// `latent_dist.mode()`), one sample at a time like [`Vae::decode`].
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        let encoder = self.encoder()?;
        let x = ((images.to_dtype(DType::F32)?.permute((0, 3, 1, 2))? * 2.0)? - 1.0)?;
        let latents = (0..x.dim(0)?)
            .map(|i| encoder.mean(&x.narrow(0, i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let z = Tensor::cat(&latents, 0)?;
        let z = match self.config.shift_factor {
            Some(shift) => (z - shift)?,
            None => z,
        };
        Ok((z * self.config.scaling_factor)?)
    }

    /// Model latents (B, C, h, w) → images (B, H, W, 3) in [0, 1]:
    /// `decode(z / scale + shift)`, then `(x + 1)/2` clamped; in f32.
    ///
    /// One sample at a time, which bounds the activations at large sizes (a 1024² image's last
    /// block holds 128 × 1024² values per tensor).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents.to_dtype(DType::F32)? / self.config.scaling_factor)?;
        let z = match self.config.shift_factor {
            Some(shift) => (z + shift)?,
            None => z,
        };
        let images = (0..z.dim(0)?)
            .map(|i| {
                let x = self.decoder.forward(&z.narrow(0, i, 1)?)?; // (1, 3, H, W)
                let x = ((x * 0.5)? + 0.5)?.clamp(0f32, 1f32)?;
                Ok(x.permute((0, 2, 3, 1))?) // (1, H, W, 3)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&images, 0)?)
    }
}
