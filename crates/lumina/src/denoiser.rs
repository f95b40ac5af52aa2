//! A transformer and its conditioning, seen as a velocity field: what the samplers integrate.
//!
//! Per evaluation it picks the RoPE factors for t (time-aware scaling), runs the conditional
//! and — when guidance is active — the unconditional caption as one batch, keeps the velocity
//! channels (dropping a learned σ), and combines them with the guidance rule. The model is only
//! read; every per-call knob travels in the [`DitInput`] — Context Drop's window for t, and
//! the step cache with the row groups of the batch and whether this step must compute.

use std::ops::Range;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::models::{CacheCall, DitInput, StepCache, TextTiles, Transformer};
use crate::nn::ContextDrop;
use crate::rope::{AxisFactors, RopeFactors};
use crate::sample::{FrameRope, Guidance, RopeSchedule, TimePoint, VelocityField};

/// Caption features (B, L, Dcap) and their mask (B, L), non-zero = real token.
#[derive(Clone, Debug)]
pub struct Caption {
    pub features: Tensor,
    pub mask: Tensor,
}

impl Caption {
    pub fn new(features: Tensor, mask: Tensor) -> Result<Self> {
        let (b, l, _) = features.dims3()?;
        if mask.dims() != [b, l] {
            return Err(Error::input(
                "caption mask",
                format!("shape [{b}, {l}]"),
                format!("{:?}", mask.dims()),
            ));
        }
        Ok(Self { features, mask })
    }

    /// Right-pads with masked zero tokens to `len` tokens.
    fn padded_to(&self, len: usize) -> Result<Self> {
        let l = self.features.dim(1)?;
        if l >= len {
            return Ok(self.clone());
        }
        Ok(Self {
            features: self.features.pad_with_zeros(1, 0, len - l)?,
            mask: self
                .mask
                .to_dtype(DType::U8)?
                .pad_with_zeros(1, 0, len - l)?,
        })
    }

    /// Stacks two captions along the batch, padding the shorter.
    fn stack(a: &Caption, b: &Caption) -> Result<Caption> {
        let len = a.features.dim(1)?.max(b.features.dim(1)?);
        let (a, b) = (a.padded_to(len)?, b.padded_to(len)?);
        Ok(Caption {
            features: Tensor::cat(&[&a.features, &b.features.to_dtype(a.features.dtype())?], 0)?,
            mask: Tensor::cat(
                &[&a.mask.to_dtype(DType::U8)?, &b.mask.to_dtype(DType::U8)?],
                0,
            )?,
        })
    }
}

/// The denoiser of one generation: model, conditioning and the per-evaluation rules.
pub struct Denoiser<'a> {
    pub model: &'a Transformer,
    pub cond: Caption,
    /// The negative / empty caption; required when `guidance` is not [`Guidance::NONE`].
    pub uncond: Option<Caption>,
    pub guidance: Guidance,
    pub rope: RopeSchedule,
    /// The frame axis of a clip longer than trained; `None` keeps it as trained.
    pub frame_rope: Option<FrameRope>,
    /// Proportional attention (see [`DitInput::base_sequence_length`]).
    pub base_sequence_length: Option<usize>,
    /// I-Max's text duplication (see [`DitInput::text_tiles`]).
    pub text_tiles: Option<TextTiles>,
    /// Lumina-Next's time-aware Context Drop (see [`DitInput::kv_pool`]).
    pub context_drop: Option<ContextDrop>,
    /// Step caching (TeaCache). The cache is the one piece of state a denoiser carries: it
    /// belongs to one solve (build a fresh one per solve), and the model stays untouched.
    pub cache: Option<&'a StepCache>,
}

impl Denoiser<'_> {
    /// One transformer call on a batch of conditional rows, followed by as many unconditional
    /// ones when guidance is active. Every row keeps its own step cache (row i is group i:
    /// conditional image i, or the unconditional twin of image i − b), so caching decides per
    /// image and per half, and a result never depends on which images share a batch.
    fn forward(&self, x: &Tensor, at: TimePoint, caption: &Caption) -> Result<Tensor> {
        let b = x.dim(0)?;
        let groups: Vec<(usize, Range<usize>)> = match self.cache {
            Some(_) => (0..b).map(|i| (i, i..i + 1)).collect(),
            None => Vec::new(),
        };
        let groups = &groups[..];
        let ts = Tensor::full(at.t as f32, b, x.device())?;
        let cache = self.cache.map(|cache| CacheCall {
            cache,
            groups,
            // TeaCache always computes the first and the last step
            force: at.step == 0 || at.step + 1 >= at.steps,
        });
        let input = DitInput::new(x, &ts, &caption.features, &caption.mask)
            .with_rope(RopeFactors {
                frames: self
                    .frame_rope
                    .map_or(AxisFactors::IDENTITY, |f| f.at(at.t)),
                ..self.rope.at(at.t)
            })
            .with_base_sequence_length(self.base_sequence_length)
            .with_text_tiles(self.text_tiles)
            .with_kv_pool(self.context_drop.and_then(|c| c.at(at.t)))
            .with_cache(cache);
        let v = self.model.forward(&input)?;
        // keep the velocity; a learn_sigma model appends σ channels after it. In the state's
        // dtype: a bf16 model may drive an f32 state (the solver then integrates in f32).
        Ok(v.narrow(1, 0, x.dim(1)?)?.to_dtype(x.dtype())?)
    }
}

impl VelocityField for Denoiser<'_> {
    fn velocity(&self, x: &Tensor, at: TimePoint) -> Result<Tensor> {
        let b = x.dim(0)?;
        if self.cond.features.dim(0)? != b {
            return Err(Error::input(
                "caption batch",
                b.to_string(),
                self.cond.features.dim(0)?.to_string(),
            ));
        }
        if !self.guidance.active(at) {
            return self.forward(x, at, &self.cond);
        }
        let uncond = self.uncond.as_ref().ok_or_else(|| {
            Error::input("unconditional caption", "one, since guidance is on", "none")
        })?;
        // One batch of 2B: [x; x] with [cond; uncond], as upstream does.
        let both = Caption::stack(&self.cond, uncond)?;
        let v = self.forward(&Tensor::cat(&[x, x], 0)?, at, &both)?;
        self.guidance
            .combine(&v.narrow(0, 0, b)?, &v.narrow(0, b, b)?)
    }
}
