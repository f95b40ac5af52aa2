//! The call arguments of a transformer forward, shared by both model families.

use candle_core::{DType, Tensor};

use super::step_cache::CacheCall;
use crate::error::{Error, Result};
use crate::rope::RopeFactors;

/// One denoiser evaluation. Resolution knobs (`rope`, `base_sequence_length`) are arguments of
/// the call, never model state, so one loaded model serves every size and every solver step.
#[derive(Clone, Copy, Debug)]
pub struct DitInput<'a> {
    /// Noisy latents x_t, (B, C, H, W), or a clip (B, C, F, H, W) for a model that takes clips.
    pub latents: &'a Tensor,
    /// t per sample, (B,), in the project's convention: 0 = pure noise, 1 = data.
    pub timesteps: &'a Tensor,
    /// Caption features, (B, L, Dcap).
    pub caption: &'a Tensor,
    /// (B, L), non-zero = real token. Any dtype.
    pub caption_mask: &'a Tensor,
    /// RoPE extrapolation factors (identity by default).
    pub rope: RopeFactors,
    /// Proportional attention: when set, self-attention over N tokens uses the scale
    /// `sqrt(log_base(N) / Dh)` instead of `1 / sqrt(Dh)` (diffusers `base_sequence_length`).
    pub base_sequence_length: Option<usize>,
    /// I-Max's text duplication, for models whose captions carry RoPE positions
    /// (Lumina-Image-2.0); Next-DiT's cross-attention has none and ignores it.
    pub text_tiles: Option<TextTiles>,
    /// Context Drop: self-attention keys and values of the image tokens average-pooled over
    /// `f × f` windows of the token grid (queries untouched); `None` or 1: off.
    pub kv_pool: Option<usize>,
    /// Step caching (TeaCache) for this evaluation.
    pub cache: Option<CacheCall<'a>>,
}

/// `copies.0 × copies.1` copies of the caption in the joint sequence, copy (a, b) anchored at
/// (a·tile.0, b·tile.1) on the row and column RoPE axes: each native-size tile of a large
/// canvas gets a caption at its origin (`ternary_imax.md` §C.3, "text duplication").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextTiles {
    pub copies: (usize, usize),
    /// The native token grid (rows, cols).
    pub tile: (usize, usize),
}

impl TextTiles {
    /// I-Max's rule for a `rows × cols` token grid over native tiles of `tile` tokens:
    /// r = max(1, ⌊n / tile⌋) per axis; `None` when that is one copy.
    pub fn for_grid((rows, cols): (usize, usize), tile: (usize, usize)) -> Option<Self> {
        let r = |n: usize, t: usize| (n / t.max(1)).max(1);
        let copies = (r(rows, tile.0), r(cols, tile.1));
        (copies != (1, 1)).then_some(Self { copies, tile })
    }
}

impl<'a> DitInput<'a> {
    pub fn new(
        latents: &'a Tensor,
        timesteps: &'a Tensor,
        caption: &'a Tensor,
        caption_mask: &'a Tensor,
    ) -> Self {
        Self {
            latents,
            timesteps,
            caption,
            caption_mask,
            rope: RopeFactors::IDENTITY,
            base_sequence_length: None,
            text_tiles: None,
            kv_pool: None,
            cache: None,
        }
    }

    pub fn with_kv_pool(self, kv_pool: Option<usize>) -> Self {
        Self { kv_pool, ..self }
    }

    pub fn with_cache(self, cache: Option<CacheCall<'a>>) -> Self {
        Self { cache, ..self }
    }

    /// The Context Drop window, when it pools (> 1).
    pub(crate) fn pool_factor(&self) -> Option<usize> {
        self.kv_pool.filter(|&f| f > 1)
    }

    pub fn with_rope(self, rope: RopeFactors) -> Self {
        Self { rope, ..self }
    }

    pub fn with_text_tiles(self, text_tiles: Option<TextTiles>) -> Self {
        Self { text_tiles, ..self }
    }

    pub fn with_base_sequence_length(self, base: Option<usize>) -> Self {
        Self {
            base_sequence_length: base,
            ..self
        }
    }

    /// Checks every argument against the model's expectations; returns (B, H, W).
    pub(crate) fn check(
        &self,
        in_channels: usize,
        patch: usize,
        caption_dim: usize,
    ) -> Result<(usize, usize, usize)> {
        if self.latents.rank() != 4 {
            return Err(Error::input(
                "latents",
                "shape (B, C, H, W) (this model takes images)",
                format!("{:?}", self.latents.dims()),
            ));
        }
        let (b, _, h, w) = self.check_clip(in_channels, (1, patch), caption_dim)?;
        Ok((b, h, w))
    }

    /// [`DitInput::check`] for a model that also takes clips (B, C, F, H, W), F a multiple of
    /// the temporal patch; an image is one frame. Returns (B, F, H, W).
    pub(crate) fn check_clip(
        &self,
        in_channels: usize,
        (frame_patch, patch): (usize, usize),
        caption_dim: usize,
    ) -> Result<(usize, usize, usize, usize)> {
        let dims = self.latents.dims();
        let (b, c, f, h, w) = match *dims {
            [b, c, h, w] => (b, c, 1, h, w),
            [b, c, f, h, w] => (b, c, f, h, w),
            _ => {
                return Err(Error::input(
                    "latents",
                    "shape (B, C, H, W) or (B, C, F, H, W)",
                    format!("{dims:?}"),
                ))
            }
        };
        if f == 0 || !f.is_multiple_of(frame_patch) {
            return Err(Error::input(
                "frames",
                format!("a non-zero multiple of the temporal patch size {frame_patch}"),
                f,
            ));
        }
        if c != in_channels {
            return Err(Error::input(
                "latent channels",
                in_channels.to_string(),
                c.to_string(),
            ));
        }
        if h == 0 || w == 0 || h % patch != 0 || w % patch != 0 {
            return Err(Error::input(
                "latent height and width",
                format!("non-zero multiples of the patch size {patch}"),
                format!("{h}x{w}"),
            ));
        }
        if self.timesteps.dims() != [b] {
            return Err(Error::input(
                "timesteps",
                format!("shape [{b}]"),
                format!("{:?}", self.timesteps.dims()),
            ));
        }
        let cap = self.caption.dims();
        if cap.len() != 3 || cap[0] != b || cap[2] != caption_dim {
            return Err(Error::input(
                "caption features",
                format!("shape [{b}, L, {caption_dim}]"),
                format!("{cap:?}"),
            ));
        }
        if self.caption_mask.dims() != [b, cap[1]] {
            return Err(Error::input(
                "caption mask",
                format!("shape [{b}, {}]", cap[1]),
                format!("{:?}", self.caption_mask.dims()),
            ));
        }
        for (what, t) in [
            ("latents", self.latents),
            ("timesteps", self.timesteps),
            ("caption features", self.caption),
        ] {
            if !t.dtype().is_float() {
                return Err(Error::input(
                    what,
                    "a float tensor",
                    format!("{:?}", t.dtype()),
                ));
            }
        }
        self.rope.validate()?;
        if let Some(base) = self.base_sequence_length {
            if base < 2 {
                return Err(Error::input(
                    "base_sequence_length",
                    ">= 2",
                    base.to_string(),
                ));
            }
        }
        Ok((b, f, h, w))
    }

    /// Real caption tokens per sample (the mask's row sums).
    pub(crate) fn caption_lengths(&self) -> Result<Vec<usize>> {
        let keep = self.caption_mask.ne(0u8)?.to_dtype(DType::U32)?.sum(1)?;
        Ok(keep
            .to_vec1::<u32>()?
            .into_iter()
            .map(|n| n as usize)
            .collect())
    }

    /// Softmax scale of self-attention over `n` tokens of head width `head_dim`.
    pub(crate) fn self_attention_scale(&self, n: usize, head_dim: usize) -> f64 {
        let plain = 1.0 / (head_dim as f64).sqrt();
        match self.base_sequence_length {
            Some(base) => ((n as f64).ln() / (base as f64).ln()).sqrt() * plain,
            None => plain,
        }
    }
}
