//! Next-DiT, the Lumina-Next transformer (diffusers `LuminaNextDiT2DModel`).
//!
//! Upstream: diffusers `models/transformers/lumina_nextdit2d.py` (58eb52c); Lumina-T2X
//! `lumina_next_t2i/models/model.py` `NextDiT` (1c60696). Reference: lumina_reference.md §3.

mod block;
mod config;
pub mod original;

use candle_core::{DType, Tensor};

pub use block::NextDitBlock;
pub use config::NextDitConfig;

use super::input::DitInput;
use super::patch::{patchify_video, unpatchify_video, PatchOrder};
use super::step_cache::{select_rows, StepCache};
use crate::config::Validate;
use crate::error::{Error, Result};
use crate::nn::{
    clip_time_features, coordinate_features, key_bias, KvPool, LayerNorm, Linear, NormOut,
    TimestepEmbedder,
};
use crate::rope::{next_dit_video_table, VideoGrid};
use crate::weights::{Init, Weights};

/// `time_caption_embed`: t embedding plus an embedding of the masked-mean caption.
struct TimeCaptionEmbed {
    timestep_embedder: TimestepEmbedder,
    caption_norm: LayerNorm,
    caption_proj: Linear,
}

impl TimeCaptionEmbed {
    fn load(w: &Weights, cfg: &NextDitConfig) -> Result<Self> {
        let (cap, cond) = (cfg.cross_attention_dim, cfg.cond_dim());
        let c = w.pp("caption_embedder");
        Ok(Self {
            timestep_embedder: TimestepEmbedder::load(&w.pp("timestep_embedder"), cond)?,
            caption_norm: LayerNorm::load(&c.pp(0), cap, 1e-5)?,
            // zero-initialised upstream: the caption enters the adaLN vector gradually
            caption_proj: Linear::load(&c.pp(1), cap, cond, true, Init::Zeros)?,
        })
    }

    /// (B,), (B, L, Dcap), (B, L) → (B, Dc).
    fn forward(&self, t: &Tensor, caption: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let time = self.timestep_embedder.forward(t, caption.dtype())?; // (B, Dc)
        let m = mask.ne(0u8)?.to_dtype(DType::F32)?.unsqueeze(2)?; // (B, L, 1)
        let sum = caption.to_dtype(DType::F32)?.broadcast_mul(&m)?.sum(1)?; // (B, Dcap)
        let pooled = sum.broadcast_div(&m.sum(1)?)?.to_dtype(caption.dtype())?; // (B, Dcap)
        let cap = self
            .caption_proj
            .forward(&self.caption_norm.forward(&pooled)?)?; // (B, Dc)
        Ok((time + cap)?)
    }
}

/// The Lumina-Next diffusion transformer.
pub struct NextDit {
    cfg: NextDitConfig,
    dtype: DType,
    patch_embedder: Linear,
    time_caption_embed: TimeCaptionEmbed,
    layers: Vec<NextDitBlock>,
    norm_out: NormOut,
}

impl NextDit {
    pub fn load(cfg: &NextDitConfig, w: &Weights) -> Result<Self> {
        cfg.validate()?;
        let (d, p, pf) = (cfg.hidden_size, cfg.patch_size, cfg.frame_patch_size);
        // Upstream pads variable-size batches with this token; the diffusers forward never
        // does. Checked so the checkpoint audit is exact.
        w.get("pad_token", &[d], Init::Normal { std: 0.02 })?;
        let patch_in = pf * p * p * cfg.in_channels;
        let layers = (0..cfg.num_layers)
            .map(|i| NextDitBlock::load(&w.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            dtype: w.dtype(),
            patch_embedder: Linear::load(
                &w.pp("patch_embedder").pp("proj"),
                patch_in,
                d,
                true,
                Init::XavierUniform,
            )?,
            time_caption_embed: TimeCaptionEmbed::load(&w.pp("time_caption_embed"), cfg)?,
            layers,
            norm_out: NormOut::load(
                &w.pp("norm_out"),
                d,
                cfg.cond_dim(),
                pf * p * p * cfg.out_channels(),
                w.dtype(),
            )?,
        })
    }

    pub fn config(&self) -> &NextDitConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The velocity (and, with `learn_sigma`, the unused σ channels after it):
    /// (B, C, H, W) → (B, C_out, H, W), or for a clip (B, C, F, H, W) → (B, C_out, F, H, W).
    /// An image is a one-frame clip: the same tokens, RoPE and output.
    pub fn forward(&self, inp: &DitInput) -> Result<Tensor> {
        self.forward_observed(inp, |_| {})
    }

    /// [`NextDit::forward`], calling `after_layer(i)` as soon as block `i` is done (benchmarks
    /// time the blocks of a real forward with it).
    pub fn forward_observed(
        &self,
        inp: &DitInput,
        mut after_layer: impl FnMut(usize),
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (p, pf) = (cfg.patch_size, cfg.frame_patch_size);
        let (_, frames, h, w) =
            inp.check_clip(cfg.in_channels, (pf, p), cfg.cross_attention_dim)?;
        let clip = inp.latents.rank() == 5;
        if let Some(row) = inp.caption_lengths()?.iter().position(|&n| n == 0) {
            return Err(Error::input(
                "caption mask",
                "at least one real token per row",
                format!("row {row} is all padding"),
            ));
        }
        let latents = inp.latents.to_dtype(self.dtype)?;
        let latents = if clip { latents } else { latents.unsqueeze(2)? }; // (B, C, F, H, W)
        let caption = inp.caption.to_dtype(self.dtype)?;
        let grid = VideoGrid {
            frames: frames / pf,
            rows: h / p,
            cols: w / p,
        };
        let n = grid.tokens();

        let x = self.patch_embedder.forward(&patchify_video(
            &latents,
            pf,
            p,
            PatchOrder::ChannelFirst,
        )?)?; // (B, N, D)
        let x = match cfg.coordinate_embedding {
            true => {
                let native = cfg.sample_size / p;
                let coords =
                    coordinate_features(h / p, w / p, cfg.hidden_size, native, x.device())?; // (rows·cols, D)
                let coords = coords.repeat((grid.frames, 1))?; // (N, D): the same in every frame
                x.broadcast_add(&coords.to_dtype(x.dtype())?)?
            }
            false => x,
        };
        let x = match cfg.clip_time_embedding {
            true => {
                let native = (cfg.sample_frames / pf).max(1);
                let times = clip_time_features(grid.frames, cfg.hidden_size, native, x.device())?; // (F', D)
                let per_token = times
                    .unsqueeze(1)?
                    .repeat((1, grid.rows * grid.cols, 1))?
                    .reshape((n, cfg.hidden_size))?; // (N, D): the same within a frame
                x.broadcast_add(&per_token.to_dtype(x.dtype())?)?
            }
            false => x,
        };
        let (cos, sin) = next_dit_video_table(
            grid,
            cfg.head_dim(),
            cfg.frame_dim,
            inp.rope.frames,
            inp.rope,
            latents.device(),
        )?; // (N, Dh/2)
        if grid.frames > 1 && inp.pool_factor().is_some() {
            return Err(Error::input(
                "Context Drop",
                "images (its key pooling works on one frame's grid)",
                format!("a clip of {frames} frames"),
            ));
        }
        let temb = self
            .time_caption_embed
            .forward(inp.timesteps, &caption, inp.caption_mask)?; // (B, Dc)
        let caption_bias = key_bias(inp.caption_mask)?; // (B, 1, 1, L)
        let ctx = block::BlockContext {
            rope: (&cos, &sin),
            caption: &caption,
            caption_bias: &caption_bias,
            temb: &temb,
            self_scale: inp.self_attention_scale(n, cfg.head_dim()),
            kv_pool: inp.pool_factor().map(|factor| KvPool {
                factor,
                grid: (h / p, w / p),
                starts: &[],
            }),
        };
        let mut blocks = |mut x: Tensor, rows: Option<&[u32]>| -> Result<Tensor> {
            // a step cache may run only some rows: their conditioning and caption alike
            let (caption, caption_bias, temb) = (
                select_rows(ctx.caption, rows)?,
                select_rows(ctx.caption_bias, rows)?,
                select_rows(ctx.temb, rows)?,
            );
            let ctx = block::BlockContext {
                caption: &caption,
                caption_bias: &caption_bias,
                temb: &temb,
                ..ctx
            };
            for (i, layer) in self.layers.iter().enumerate() {
                x = layer.forward(&x, &ctx)?; // (B, N, D)
                after_layer(i);
            }
            Ok(x)
        };
        let x = match (&inp.cache, self.layers.first()) {
            (Some(call), Some(first)) => {
                let modulated = first.modulated_input(&x, &temb)?;
                StepCache::run(call, &x, &modulated, |x, rows| blocks(x.clone(), rows))?
                // (B, N, D)
            }
            _ => blocks(x, None)?, // (B, N, D)
        };
        let x = self.norm_out.forward(&x, &temb)?; // (B, N, pf·p·p·C_out)
        let out = unpatchify_video(&x, (frames, h, w), pf, p)?; // (B, C_out, F, H, W)
        Ok(if clip { out } else { out.squeeze(2)? }) // (B, C_out, [F,] H, W)
    }
}
