//! The decoder half of diffusers' `AutoencoderKL` (latents → pixels) on the project's kernels:
//! convolutions as banded im2col on `gemm`, GroupNorm fused with its SiLU, nearest ×2
//! upsampling read straight into the next convolution (`lumina::kernels::conv`).
//! candle-transformers' decoder spent most of a decode in its convolution's im2col layout, its
//! composed norms and a stored 4× upsampled tensor.
//!
//! Module tree = checkpoint keys: `post_quant_conv`, `decoder.conv_in`,
//! `decoder.mid_block.{resnets.0, attentions.0, resnets.1}`,
//! `decoder.up_blocks.N.{resnets.M, upsamplers.0.conv}`, `decoder.conv_norm_out`,
//! `decoder.conv_out`.
//! The mid-block attention is one head over all channels (512): GEMM-shaped, so it runs as
//! query blocks of candle matmuls (3.6× faster than the portable tiled kernel on an AVX2 CPU at
//! 4096 tokens), each block's score matrix bounded.
//!
//! Upstream: diffusers `models/autoencoders/vae.py::Decoder`, `unets/unet_2d_blocks.py::
//! {UNetMidBlock2D, UpDecoderBlock2D}`, `resnet.py::ResnetBlock2D`, `upsampling.py::Upsample2D`,
//! `attention_processor.py::Attention` (one head over all channels, with its GroupNorm).

use candle_core::{DType, Tensor};
use lumina::kernels::conv::{conv2d, group_norm, upsample2x_conv2d};
use lumina::nn::{ops::softmax_last_dim, Linear};
use lumina::weights::{Init, Weights};

use crate::error::Result;
use crate::vae::VaeConfig;

/// diffusers' `resnet_eps` / attention `eps` in every VAE block.
const EPS: f64 = 1e-6;

/// Query rows per block of the mid-block attention: a block's scores are 1024 × H·W f32
/// (64 MiB at a 1024² image's 16384 positions).
const QUERY_BLOCK: usize = 1024;

struct Conv {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
}

impl Conv {
    /// The weight stays bf16 when the VAE was loaded in bf16 — the products' precision, as in
    /// diffusers' bf16 VAE (see `conv2d`) — and is f32 otherwise; the bias is always f32.
    fn load(w: &Weights, cin: usize, cout: usize, k: usize) -> Result<Self> {
        let dtype = match w.dtype() {
            DType::BF16 => DType::BF16,
            _ => DType::F32,
        };
        Ok(Self {
            weight: w
                .get("weight", &[cout, cin, k, k], Init::XavierUniform)?
                .to_dtype(dtype)?,
            bias: w.get("bias", &[cout], Init::Zeros)?.to_dtype(DType::F32)?,
            padding: k / 2,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv2d(x, &self.weight, Some(&self.bias), self.padding)?)
    }

    /// `Upsample2D`: this convolution of `x` upsampled ×2 (nearest).
    fn forward_upsampled(&self, x: &Tensor) -> Result<Tensor> {
        Ok(upsample2x_conv2d(
            x,
            &self.weight,
            Some(&self.bias),
            self.padding,
        )?)
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

impl Norm {
    fn load(w: &Weights, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            weight: w
                .get("weight", &[channels], Init::Ones)?
                .to_dtype(DType::F32)?,
            bias: w
                .get("bias", &[channels], Init::Zeros)?
                .to_dtype(DType::F32)?,
            groups,
        })
    }

    /// GroupNorm, then SiLU when `silu`.
    fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        Ok(group_norm(
            x,
            self.groups,
            &self.weight,
            &self.bias,
            EPS,
            silu,
        )?)
    }
}

/// `ResnetBlock2D` without a time embedding: `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`,
/// the shortcut a 1×1 convolution where the channel count changes.
struct Resnet {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
}

impl Resnet {
    fn load(w: &Weights, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: Norm::load(&w.pp("norm1"), cin, groups)?,
            conv1: Conv::load(&w.pp("conv1"), cin, cout, 3)?,
            norm2: Norm::load(&w.pp("norm2"), cout, groups)?,
            conv2: Conv::load(&w.pp("conv2"), cout, cout, 3)?,
            conv_shortcut: (cin != cout)
                .then(|| Conv::load(&w.pp("conv_shortcut"), cin, cout, 1))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h, true)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok((shortcut + h)?)
    }
}

/// The mid-block's self-attention: one head over all C channels of the H·W positions.
struct MidAttention {
    group_norm: Norm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    channels: usize,
    /// The projections' weight dtype (the tokens are cast to it and back to f32).
    dtype: DType,
}

impl MidAttention {
    fn load(w: &Weights, channels: usize, groups: usize) -> Result<Self> {
        // diffusers' names; checkpoints saved before its attention refactor use the old ones
        let (q, k, v, out) = if w.contains("query.weight") {
            ("query", "key", "value", "proj_attn")
        } else {
            ("to_q", "to_k", "to_v", "to_out.0")
        };
        let linear =
            |name: &str| Linear::load(&w.pp(name), channels, channels, true, Init::XavierUniform);
        Ok(Self {
            group_norm: Norm::load(&w.pp("group_norm"), channels, groups)?,
            to_q: linear(q)?,
            to_k: linear(k)?,
            to_v: linear(v)?,
            to_out: linear(out)?,
            channels,
            dtype: w.dtype(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x, false)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?
            .to_dtype(self.dtype)?; // (B, HW, C)
        let f32 = |l: &Linear| -> Result<Tensor> { Ok(l.forward(&tokens)?.to_dtype(DType::F32)?) };
        let scale = 1.0 / (self.channels as f64).sqrt();
        let q = (f32(&self.to_q)? * scale)?; // (B, HW, C)
        let kt = f32(&self.to_k)?.t()?.contiguous()?; // (B, C, HW)
        let v = f32(&self.to_v)?;
        let n = h * w;
        let blocks = (0..n)
            .step_by(QUERY_BLOCK)
            .map(|r0| {
                let scores = q.narrow(1, r0, QUERY_BLOCK.min(n - r0))?.matmul(&kt)?;
                Ok(softmax_last_dim(&scores)?.matmul(&v)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let a = Tensor::cat(&blocks, 1)?.to_dtype(self.dtype)?;
        let a = self.to_out.forward(&a)?; // (B, HW, C)
        let a = a
            .transpose(1, 2)?
            .reshape((b, c, h, w))?
            .to_dtype(DType::F32)?;
        Ok((x + a)?)
    }
}

struct UpBlock {
    resnets: Vec<Resnet>,
    upsampler: Option<Conv>,
}

pub struct VaeDecoder {
    post_quant_conv: Option<Conv>,
    conv_in: Conv,
    mid: (Resnet, MidAttention, Resnet),
    up_blocks: Vec<UpBlock>,
    conv_norm_out: Norm,
    conv_out: Conv,
}

impl VaeDecoder {
    /// Builds the decoder from the VAE folder's weights. Activations are f32 whatever their
    /// dtype; bf16 weights make the wide convolutions' products bf16 where the CPU multiplies
    /// bf16 natively (`lumina::kernels::conv::conv2d`).
    pub fn load(config: &VaeConfig, weights: &Weights) -> Result<Self> {
        let dec = weights.pp("decoder");
        let groups = config.norm_num_groups;
        let latent = config.latent_channels;
        let channels: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let top = channels[0];
        let mid = dec.pp("mid_block");
        let up_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let w = dec.pp("up_blocks").pp(i);
                let input = if i > 0 { channels[i - 1] } else { top };
                let resnets = (0..=config.layers_per_block)
                    .map(|j| {
                        let cin = if j == 0 { input } else { out };
                        Resnet::load(&w.pp("resnets").pp(j), cin, out, groups)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let upsampler = (i + 1 < channels.len())
                    .then(|| Conv::load(&w.pp("upsamplers.0.conv"), out, out, 3))
                    .transpose()?;
                Ok(UpBlock { resnets, upsampler })
            })
            .collect::<Result<Vec<_>>>()?;
        let bottom = *channels.last().unwrap_or(&top);
        Ok(Self {
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv::load(&weights.pp("post_quant_conv"), latent, latent, 1))
                .transpose()?,
            conv_in: Conv::load(&dec.pp("conv_in"), latent, top, 3)?,
            mid: (
                Resnet::load(&mid.pp("resnets.0"), top, top, groups)?,
                MidAttention::load(&mid.pp("attentions.0"), top, groups)?,
                Resnet::load(&mid.pp("resnets.1"), top, top, groups)?,
            ),
            up_blocks,
            conv_norm_out: Norm::load(&dec.pp("conv_norm_out"), bottom, groups)?,
            conv_out: Conv::load(&dec.pp("conv_out"), bottom, config.out_channels, 3)?,
        })
    }

    /// Unscaled latents (B, C, h, w) → decoder output (B, 3, 8h, 8w) in about [−1, 1], f32.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(DType::F32)?;
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(&z)?,
            None => z,
        };
        let mut h = self.conv_in.forward(&z)?; // (B, C_top, h, w)
        let (r0, attn, r1) = &self.mid;
        h = r1.forward(&attn.forward(&r0.forward(&h)?)?)?;
        for block in &self.up_blocks {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.upsampler {
                h = conv.forward_upsampled(&h)?; // (B, C, 2h, 2w)
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h, true)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
    use lumina::weights::Weights;

    use super::VaeDecoder;
    use crate::vae::VaeConfig;

    fn config(channels: &[usize], layers: usize, latent: usize, post_quant: bool) -> VaeConfig {
        let blocks = |t: &str| vec![t.to_string(); channels.len()];
        serde_json::from_value(serde_json::json!({
            "down_block_types": blocks("DownEncoderBlock2D"),
            "up_block_types": blocks("UpDecoderBlock2D"),
            "block_out_channels": channels,
            "layers_per_block": layers,
            "latent_channels": latent,
            "norm_num_groups": 8,
            "use_quant_conv": post_quant,
            "use_post_quant_conv": post_quant,
        }))
        .expect("a valid VAE config")
    }

    /// Against candle-transformers' decoder (which matches diffusers, `pipeline_parity`) on the
    /// same random weights, over shapes the fixtures do not cover: three and four blocks, two
    /// ResNets per block, channel changes (1×1 shortcuts), with and without post-quant conv.
    #[test]
    fn decoder_matches_candles_on_random_weights() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let cases = [
            (vec![8, 16, 16], 2, 4, true),
            (vec![16, 16, 24, 32], 1, 16, false),
        ];
        for (i, (channels, layers, latent, post_quant)) in cases.into_iter().enumerate() {
            let cfg = config(&channels, layers, latent, post_quant);
            let varmap = VarMap::new();
            let theirs = AutoEncoderKL::new(
                VarBuilder::from_varmap(&varmap, DType::F32, &dev),
                3,
                3,
                AutoEncoderKLConfig {
                    block_out_channels: channels.clone(),
                    layers_per_block: layers,
                    latent_channels: latent,
                    norm_num_groups: 8,
                    use_quant_conv: post_quant,
                    use_post_quant_conv: post_quant,
                },
            )?;
            // candle initialises norms to 1 and 0 and biases to 0: perturb every tensor so
            // that each parameter matters
            let mut tensors = HashMap::new();
            for (k, var) in varmap.data().lock().expect("varmap lock").iter() {
                let noise = Tensor::randn(0f32, 0.2, var.shape(), &dev)?;
                var.set(&(var.as_tensor() + noise)?)?;
                tensors.insert(k.clone(), var.as_tensor().clone());
            }
            let ours = VaeDecoder::load(&cfg, &Weights::from_tensors(tensors, DType::F32, &dev))?;
            let z = Tensor::randn(0f32, 1.0, (1, latent, 5, 6), &dev)?;
            let want = theirs.decode(&z)?;
            let got = ours.forward(&z)?;
            assert_eq!(got.dims(), want.dims(), "case {i}: output shape");
            let scale = want
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1e-6);
            let e = (got - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                / scale;
            assert!(
                e < 1e-4,
                "case {i} {channels:?}: decoder differs from candle's by {e} (relative)"
            );
        }
        Ok(())
    }

    /// A VAE loaded in bf16 (as a bf16 pipeline loads it) against the same bf16-rounded
    /// weights in f32, seeded: wide enough (32 and 64 channels) that its 3 × 3 convolutions
    /// take the Winograd path, whose products are bf16 on a CPU with AVX-512 BF16 (elsewhere
    /// the weights are widened and the two agree to f32 rounding). Measured 9.3e-3 of the
    /// output's scale on Zen 4 over these latents — a few bf16 ulps (2⁻⁸ = 3.9e-3), what
    /// rounding every product operand once gives after the GroupNorms' gain; bound 2.5e-2, far
    /// below a wrong layout or weight. diffusers' bf16 VAE also rounds every activation.
    #[test]
    fn a_bf16_vae_decodes_within_bf16_rounding_of_f32() -> anyhow::Result<()> {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(29);
        let mut noise = |shape: &[usize], amp: f32| -> anyhow::Result<Tensor> {
            let n = shape.iter().product::<usize>();
            let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-amp..amp)).collect();
            Ok(Tensor::from_vec(v, shape, &dev)?)
        };
        let (channels, latent) = (vec![32, 64], 4);
        let cfg = config(&channels, 1, latent, true);
        let varmap = VarMap::new();
        AutoEncoderKL::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            3,
            3,
            AutoEncoderKLConfig {
                block_out_channels: channels.clone(),
                layers_per_block: 1,
                latent_channels: latent,
                norm_num_groups: 8,
                use_quant_conv: true,
                use_post_quant_conv: true,
            },
        )?;
        let mut tensors = HashMap::new();
        let mut vars: Vec<_> = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .clone()
            .into_iter()
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, var) in vars {
            // candle's init is unseeded: every tensor seeded uniform instead
            let value = noise(var.dims(), 0.3)?
                .to_dtype(DType::BF16)?
                .to_dtype(DType::F32)?;
            tensors.insert(k, value);
        }
        let weights = |dtype| Weights::from_tensors(tensors.clone(), dtype, &dev);
        let f32_vae = VaeDecoder::load(&cfg, &weights(DType::F32))?;
        let bf16_vae = VaeDecoder::load(&cfg, &weights(DType::BF16))?;
        let mut worst = 0f32;
        for _ in 0..4 {
            let z = noise(&[1, latent, 9, 7], 1.5)?;
            let want = f32_vae.forward(&z)?;
            let got = bf16_vae.forward(&z)?;
            assert_eq!(got.dtype(), DType::F32, "activations stay f32");
            let max = |t: &Tensor| -> anyhow::Result<f32> {
                Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
            };
            worst = worst.max(max(&(got - &want)?)? / max(&want)?.max(1e-6));
        }
        eprintln!("bf16 VAE against f32: {worst} (relative)");
        assert!(
            worst < 2.5e-2,
            "bf16 VAE differs from the f32 one by {worst} (relative)"
        );
        Ok(())
    }
}
