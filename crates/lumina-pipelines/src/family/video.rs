//! Text to video in pixel space (`LuminaPixelVideoPipeline`): the pixel family's caption
//! encoder and RGB codec around a Next-DiT with a frame axis (3-D RoPE, temporal patches,
//! clip-time features). What it adds is the clip's rules: its default length, and how the
//! frame axis goes past the training length. The transformer, solvers and guidance are the
//! image ones; an image is a one-frame clip.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lumina::pixel_model::SamplerDefaults;
use lumina::sample::RopeMethod;

use super::{ClipRules, FamilyModel, FamilySpec, LatentCodec, PixelFamily};
use crate::error::Result;
use crate::pipeline::{CheckWeights, Request};
use crate::tokenizer::Tokens;

pub(super) static PIXEL_VIDEO: FamilySpec = FamilySpec {
    name: "Lumina pixel-space video",
    components: &["scheduler", "text_encoder", "tokenizer", "transformer"],
    latent_scale: 1,
    size_multiple: None,
    transformer_class: "LuminaNextDiT2DModel",
    load: |dir, dtype, device, check| Ok(Box::new(VideoFamily::load(dir, dtype, device, check)?)),
};

/// When a clip model's folder names no length: Lumina-Video's shortest clips are this long
/// and the `shapes-video` judge needs at least 4 frames.
const FALLBACK_FRAMES: usize = 8;

pub struct VideoFamily {
    pixel: PixelFamily,
    rules: ClipRules,
}

impl VideoFamily {
    /// Around a pixel family whose defaults carry the clip length.
    pub fn new(pixel: PixelFamily) -> Result<Self> {
        let rules = clip_rules(pixel.defaults())?;
        Ok(Self { pixel, rules })
    }

    fn load(dir: &Path, dtype: DType, device: &Device, check: CheckWeights) -> Result<Self> {
        Self::new(PixelFamily::load(dir, dtype, device, check)?)
    }
}

fn clip_rules(d: &SamplerDefaults) -> Result<ClipRules> {
    Ok(ClipRules {
        frames: d.frames.unwrap_or(FALLBACK_FRAMES),
        frame_rope: d.frame_extrapolation()?,
    })
}

impl FamilyModel for VideoFamily {
    fn apply_defaults(&self, r: &mut Request) {
        self.pixel.apply_defaults(r);
        r.frames = self.rules.frames;
    }

    fn sampler_defaults(&self) -> Option<&SamplerDefaults> {
        self.pixel.sampler_defaults()
    }

    fn clip_rules(&self) -> Option<ClipRules> {
        Some(self.rules)
    }

    fn prompt_overflow(&self, prompt: &str, max: usize, device: &Device) -> Result<String> {
        self.pixel.prompt_overflow(prompt, max, device)
    }

    fn tokenize(&self, r: &Request, device: &Device) -> Result<(Tokens, Option<Tokens>)> {
        self.pixel.tokenize(r, device)
    }

    fn encode_tokens(&self, tokens: &Tokens) -> Result<Tensor> {
        self.pixel.encode_tokens(tokens)
    }

    fn grid(&self, steps: usize, latent_channels: usize) -> Result<Vec<f64>> {
        self.pixel.grid(steps, latent_channels)
    }

    fn cache_coefficients(&self) -> Result<Vec<f64>> {
        self.pixel.cache_coefficients()
    }

    fn codec(&self) -> &dyn LatentCodec {
        self.pixel.codec()
    }

    fn parameters(&self, r: &Request) -> Vec<String> {
        let mut p = vec![format!("Frames: {}", r.frames)];
        if let Some(m) = r.frame_extrapolation {
            p.push(format!("Frame RoPE: {}", m.name()));
        }
        if r.frames > self.rules.frames {
            // past the training length the pipeline scales attention unless told not to
            let on = if r.proportional_attn { "on" } else { "off" };
            p.push(format!("Proportional attention: {on}"));
        }
        p
    }
}

/// The rule a request's frame axis runs with beyond the training length.
pub(crate) fn frame_method(rules: ClipRules, r: &Request) -> RopeMethod {
    r.frame_extrapolation.unwrap_or(rules.frame_rope)
}
