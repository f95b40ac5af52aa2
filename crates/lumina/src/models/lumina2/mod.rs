//! The Lumina-Image-2.0 transformer ("Unified Next-DiT"; diffusers `Lumina2Transformer2DModel`).
//!
//! Caption tokens and image tokens are refined separately (a caption refiner without
//! modulation, a noise refiner with it), then joined into one sequence — the real caption
//! tokens first, then the image — over which every main block attends with 3-axis RoPE.
//!
//! Upstream: diffusers `models/transformers/transformer_lumina2.py` (58eb52c); Lumina-Image-2.0
//! `models/model.py` `NextDiT`. Reference: peers.md §1.2.

mod block;
mod config;
pub mod original;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, IndexOp, Tensor};

pub use block::Lumina2Block;
pub use config::Lumina2Config;

use super::input::{DitInput, TextTiles};
use super::patch::{patchify, unpatchify, PatchOrder};
use super::step_cache::{select_rows, StepCache};
use crate::config::Validate;
use crate::error::Result;
use crate::nn::{key_bias, KvPool, Linear, NormOut, RmsNorm, TimestepEmbedder};
use crate::rope::{lumina2_table, Position3, RopeFactors};
use crate::weights::{Init, Weights};

/// The Lumina-Image-2.0 diffusion transformer.
pub struct Lumina2Dit {
    cfg: Lumina2Config,
    dtype: DType,
    x_embedder: Linear,
    timestep_embedder: TimestepEmbedder,
    caption_norm: RmsNorm,
    caption_proj: Linear,
    context_refiner: Vec<Lumina2Block>,
    noise_refiner: Vec<Lumina2Block>,
    layers: Vec<Lumina2Block>,
    norm_out: NormOut,
    warned_positions: AtomicBool,
}

/// RoPE positions of one batch: caption slots, image tokens, and the joint sequence.
struct Positions {
    caption: Vec<Vec<Option<Position3>>>,
    image: Vec<Vec<Option<Position3>>>,
    joint: Vec<Vec<Option<Position3>>>,
}

/// Caption token `j` sits at (j, 0, 0); every image token at (caption length, row, col);
/// padding of the joint sequence at the origin (masked anyway); padded caption slots get no
/// rotation at all (diffusers' zero `cap_freqs_cis`). With text tiles, the joint sequence holds
/// one caption copy per tile, copy (a, b) at (j, a·tile rows, b·tile cols).
fn positions(
    lens: &[usize],
    caption_slots: usize,
    rows: usize,
    cols: usize,
    tiles: Option<TextTiles>,
) -> Positions {
    let image_len = rows * cols;
    let anchors: Vec<(usize, usize)> = match tiles {
        None => vec![(0, 0)],
        Some(t) => (0..t.copies.0)
            .flat_map(|a| (0..t.copies.1).map(move |b| (a * t.tile.0, b * t.tile.1)))
            .collect(),
    };
    let copies = anchors.len();
    let joint_len = lens.iter().max().copied().unwrap_or(0) * copies + image_len;
    let image_at =
        |len: usize| (0..rows).flat_map(move |r| (0..cols).map(move |c| Some([len, r, c])));
    let caption_at = |len: usize, (r, c): (usize, usize)| (0..len).map(move |j| Some([j, r, c]));
    Positions {
        caption: lens
            .iter()
            .map(|&len| {
                caption_at(len, (0, 0))
                    .chain(std::iter::repeat_n(None, caption_slots - len))
                    .collect()
            })
            .collect(),
        image: lens.iter().map(|&len| image_at(len).collect()).collect(),
        joint: lens
            .iter()
            .map(|&len| {
                let pad = joint_len - len * copies - image_len;
                anchors
                    .iter()
                    .flat_map(|&at| caption_at(len, at))
                    .chain(image_at(len))
                    .chain(std::iter::repeat_n(Some([0, 0, 0]), pad))
                    .collect()
            })
            .collect(),
    }
}

impl Lumina2Dit {
    pub fn load(cfg: &Lumina2Config, w: &Weights) -> Result<Self> {
        cfg.validate()?;
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        let blocks = |name: &str, n: usize, modulated: bool| {
            (0..n)
                .map(|i| Lumina2Block::load(&w.pp(name).pp(i), cfg, modulated))
                .collect::<Result<Vec<_>>>()
        };
        let tc = w.pp("time_caption_embed");
        let cap = tc.pp("caption_embedder");
        Ok(Self {
            cfg: cfg.clone(),
            dtype: w.dtype(),
            x_embedder: Linear::load(
                &w.pp("x_embedder"),
                p * p * cfg.in_channels,
                d,
                true,
                Init::XavierUniform,
            )?,
            timestep_embedder: TimestepEmbedder::load(&tc.pp("timestep_embedder"), cfg.cond_dim())?,
            caption_norm: RmsNorm::load(&cap.pp(0), cfg.cap_feat_dim, cfg.norm_eps)?,
            caption_proj: Linear::load(&cap.pp(1), cfg.cap_feat_dim, d, true, Init::XavierUniform)?,
            context_refiner: blocks("context_refiner", cfg.num_refiner_layers, false)?,
            noise_refiner: blocks("noise_refiner", cfg.num_refiner_layers, true)?,
            layers: blocks("layers", cfg.num_layers, true)?,
            norm_out: NormOut::load(
                &w.pp("norm_out"),
                d,
                cfg.cond_dim(),
                p * p * cfg.out_channels(),
                w.dtype(),
            )?,
            warned_positions: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &Lumina2Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The velocity: (B, C, H, W) → (B, C_out, H, W).
    ///
    /// Only the first `sum(mask)` caption tokens of a row join the image tokens — right
    /// padding is assumed, as in diffusers (its pipeline pads captions on the right).
    pub fn forward(&self, inp: &DitInput) -> Result<Tensor> {
        let cfg = &self.cfg;
        let p = cfg.patch_size;
        let (b, h, w) = inp.check(cfg.in_channels, p, cfg.cap_feat_dim)?;
        let lens = inp.caption_lengths()?;
        let (rows, cols) = (h / p, w / p);
        let slots = inp.caption.dim(1)?;
        self.warn_beyond_axes_lens(&lens, rows, cols);
        let latents = inp.latents.to_dtype(self.dtype)?;
        let dev = latents.device();
        let pos = positions(&lens, slots, rows, cols, inp.text_tiles);
        let copies = inp.text_tiles.map_or(1, |t| t.copies.0 * t.copies.1);
        let rope = |p: &[Vec<Option<Position3>>], f| lumina2_table(p, cfg.axes_dim_rope, f, dev);
        let (cap_cos, cap_sin) = rope(&pos.caption, RopeFactors::IDENTITY)?; // (B, L, Dh/2)
        let (img_cos, img_sin) = rope(&pos.image, inp.rope)?; // (B, N_img, Dh/2)
        let (cos, sin) = rope(&pos.joint, inp.rope)?; // (B, S, Dh/2)

        let temb = self.timestep_embedder.forward(inp.timesteps, self.dtype)?; // (B, Dc)
        let caption = inp.caption.to_dtype(self.dtype)?;
        let mut cap = self
            .caption_proj
            .forward(&self.caption_norm.forward(&caption)?)?; // (B, L, D)
        let mut x = self
            .x_embedder
            .forward(&patchify(&latents, p, PatchOrder::ChannelLast)?)?; // (B, N_img, D)

        let head_dim = cfg.head_dim();
        let cap_bias = key_bias(inp.caption_mask)?; // (B, 1, 1, L)
        let refine_caption = block::BlockInput {
            bias: Some(&cap_bias),
            kv_pool: None,
            rope: (&cap_cos, &cap_sin),
            temb: &temb,
            scale: inp.self_attention_scale(slots, head_dim),
        };
        for layer in &self.context_refiner {
            cap = layer.forward(&cap, &refine_caption)?; // (B, L, D)
        }
        let image_pool = |starts| {
            inp.pool_factor().map(|factor| KvPool {
                factor,
                grid: (rows, cols),
                starts,
            })
        };
        let refine_image = block::BlockInput {
            bias: None,
            kv_pool: image_pool(&[]),
            rope: (&img_cos, &img_sin),
            temb: &temb,
            scale: inp.self_attention_scale(rows * cols, head_dim),
        };
        for layer in &self.noise_refiner {
            x = layer.forward(&x, &refine_image)?; // (B, N_img, D)
        }

        let (joint, joint_bias) = join(&cap, &x, &lens, copies)?; // (B, S, D)
        let joint_len = joint.dim(1)?;
        // the image span of each row starts after its caption copies
        let starts: Vec<usize> = lens.iter().map(|&l| l * copies).collect();
        let joint_pool = image_pool(&starts);
        let key_bias = match (&joint_pool, &joint_bias) {
            (Some(pool), Some(bias)) => Some(pool.pool_bias(bias)?), // (B, 1, 1, S')
            _ => joint_bias,
        };
        let main = block::BlockInput {
            bias: key_bias.as_ref(),
            kv_pool: joint_pool,
            rope: (&cos, &sin),
            temb: &temb,
            scale: inp.self_attention_scale(joint_len, head_dim),
        };
        let blocks = |mut joint: Tensor, rows: Option<&[u32]>| -> Result<Tensor> {
            // a step cache may run only some rows: their masks, RoPE and conditioning alike
            let pick = |t: Option<&Tensor>| t.map(|t| select_rows(t, rows)).transpose();
            let (bias, cos, sin, temb) = (
                pick(main.bias)?,
                select_rows(main.rope.0, rows)?,
                select_rows(main.rope.1, rows)?,
                select_rows(main.temb, rows)?,
            );
            let starts: Vec<usize> = match rows {
                Some(rows) => rows.iter().map(|&i| starts[i as usize]).collect(),
                None => starts.clone(),
            };
            let inp = block::BlockInput {
                bias: bias.as_ref(),
                kv_pool: main.kv_pool.map(|p| KvPool {
                    starts: &starts,
                    ..p
                }),
                rope: (&cos, &sin),
                temb: &temb,
                scale: main.scale,
            };
            for layer in &self.layers {
                joint = layer.forward(&joint, &inp)?; // (B, S, D)
            }
            Ok(joint)
        };
        let joint = match (&inp.cache, self.layers.first()) {
            (Some(call), Some(first)) => {
                let modulated = first.modulated_input(&joint, &temb)?;
                StepCache::run(call, &joint, &modulated, |j, rows| blocks(j.clone(), rows))?
                // (B, S, D)
            }
            _ => blocks(joint, None)?, // (B, S, D)
        };
        let out = self.norm_out.forward(&joint, &temb)?; // (B, S, p·p·C_out)
        let image = (0..b)
            .map(|i| out.i(i)?.narrow(0, lens[i] * copies, rows * cols))
            .collect::<candle_core::Result<Vec<_>>>()?;
        unpatchify(&Tensor::stack(&image, 0)?, h, w, p) // (B, C_out, H, W)
    }

    /// Upstream only tabulates `axes_lens` positions per axis and fails beyond them; the RoPE
    /// formula extends naturally, so we extrapolate — and say so once.
    fn warn_beyond_axes_lens(&self, lens: &[usize], rows: usize, cols: usize) {
        let [l0, l1, l2] = self.cfg.axes_lens;
        let max_len = lens.iter().max().copied().unwrap_or(0);
        if (max_len >= l0 || rows > l1 || cols > l2)
            && !self.warned_positions.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                caption_tokens = max_len, rows, cols, axes_lens = ?self.cfg.axes_lens,
                "RoPE positions beyond the trained table (axes_lens); extrapolating"
            );
        }
    }
}

/// Per sample `[its real caption tokens (× copies), its image tokens]`, zero-padded to the
/// longest; plus a key mask when lengths differ (diffusers passes none when they are all equal).
fn join(
    cap: &Tensor,
    x: &Tensor,
    lens: &[usize],
    copies: usize,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, n_img, d) = x.dims3()?;
    let longest = lens.iter().max().copied().unwrap_or(0) * copies;
    let total = longest + n_img;
    let mut rows = Vec::with_capacity(b);
    let mut keep = Vec::with_capacity(b * total);
    for (i, &len) in lens.iter().enumerate() {
        let len = len * copies;
        let mut parts = Vec::with_capacity(copies + 2);
        if len > 0 {
            let caption = cap.i(i)?.narrow(0, 0, len / copies)?; // (len, D)
            parts.extend(std::iter::repeat_n(caption, copies));
        }
        parts.push(x.i(i)?); // (N_img, D)
        if len < longest {
            parts.push(Tensor::zeros((longest - len, d), x.dtype(), x.device())?);
        }
        rows.push(Tensor::cat(&parts, 0)?); // (S, D)
        keep.extend((0..total).map(|s| u8::from(s < len + n_img)));
    }
    let joint = Tensor::stack(&rows, 0)?; // (B, S, D)
    let uniform = lens.iter().all(|&l| l == longest);
    let bias = if uniform {
        None
    } else {
        Some(key_bias(&Tensor::from_vec(keep, (b, total), x.device())?)?) // (B, 1, 1, S)
    };
    Ok((joint, bias))
}
