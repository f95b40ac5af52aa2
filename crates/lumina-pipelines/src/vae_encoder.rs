//! The encoder half of diffusers' `AutoencoderKL`, for img2img and I-Max's guide (pixels →
//! latents).
//!
//! Built from candle-transformers' public blocks (`DownEncoderBlock2D`, `UNetMidBlock2D`) with
//! the same wiring as its private `vae::Encoder`: candle's `AutoEncoderKL::encode` only offers
//! a posterior *sample* drawn from an unseeded RNG, and a seeded pipeline needs the posterior
//! mean (diffusers `latent_dist.mode()`), which is what this returns.
//! Upstream: diffusers `models/autoencoders/vae.py::Encoder`, `autoencoder_kl.py::encode`.

use candle_core::{DType, Module, Tensor};
use candle_nn as nn;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};
use lumina::weights::Weights;

use crate::error::Result;
use crate::vae::VaeConfig;

pub struct VaeEncoder {
    conv_in: nn::Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
    quant_conv: Option<nn::Conv2d>,
    latent_channels: usize,
}

impl VaeEncoder {
    pub fn load(config: &VaeConfig, weights: &Weights) -> Result<Self> {
        // f32 whatever the weights' dtype: candle's CPU backend has no bf16 matmul, and an
        // image is encoded once per request (the decoder is the one on the hot path)
        let vs = weights.var_builder().set_dtype(DType::F32);
        let enc = vs.pp("encoder");
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let padded = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = nn::conv2d(
            config.in_channels,
            channels[0],
            3,
            padded,
            enc.pp("conv_in"),
        )?;
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let cfg = DownEncoderBlock2DConfig {
                    num_layers: config.layers_per_block,
                    resnet_eps: 1e-6,
                    resnet_groups: groups,
                    add_downsample: i + 1 < channels.len(),
                    downsample_padding: 0,
                    ..Default::default()
                };
                let input = if i > 0 { channels[i - 1] } else { channels[0] };
                DownEncoderBlock2D::new(enc.pp("down_blocks").pp(i), input, out, cfg)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let last = *channels.last().unwrap_or(&channels[0]);
        let mid_cfg = UNetMidBlock2DConfig {
            resnet_eps: 1e-6,
            output_scale_factor: 1.,
            attn_num_head_channels: None,
            resnet_groups: Some(groups),
            ..Default::default()
        };
        let mid_block = UNetMidBlock2D::new(enc.pp("mid_block"), last, None, mid_cfg)?;
        let conv_norm_out = nn::group_norm(groups, last, 1e-6, enc.pp("conv_norm_out"))?;
        let z2 = 2 * config.latent_channels;
        let conv_out = nn::conv2d(last, z2, 3, padded, enc.pp("conv_out"))?;
        let quant_conv = config
            .use_quant_conv
            .then(|| nn::conv2d(z2, z2, 1, Default::default(), vs.pp("quant_conv")))
            .transpose()?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
            quant_conv,
            latent_channels: config.latent_channels,
        })
    }

    /// Images (1, 3, H, W) in [−1, 1] → the posterior mean (1, C, H/f, W/f), unscaled.
    pub fn mean(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(&x.to_dtype(DType::F32)?)?;
        for block in &self.down_blocks {
            h = block.forward(&h)?;
        }
        let h = self.mid_block.forward(&h, None)?;
        let h = nn::ops::silu(&self.conv_norm_out.forward(&h)?)?;
        let h = self.conv_out.forward(&h)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h)?,
            None => h,
        };
        Ok(moments
            .narrow(1, 0, self.latent_channels)?
            .to_dtype(DType::F32)?)
    }
}
