//! Pipeline families: one type each, owning the components around the transformer (tokenizer,
//! caption encoder, decoder, time grid) and the family's rules (prompt formatting, guidance,
//! RoPE within the training canvas, step-cache polynomial). [`crate::Pipeline`] runs any of them
//! through [`FamilyModel`]; a new modality is a new type here, not a match arm in the pipeline.

mod diffusers;
mod pixel;
mod video;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lumina::pixel_model::SamplerDefaults;
use lumina::sample::{Guidance, Renorm, RopeMethod, RopeSchedule};

pub use diffusers::{Lumina2Family, LuminaNextFamily};
pub use pixel::PixelFamily;
pub(crate) use video::frame_method;
pub use video::VideoFamily;

use crate::error::Result;
use crate::pipeline::{CheckWeights, Family, Request};
use crate::tokenizer::Tokens;

/// What one family does around the shared transformer and solvers.
pub trait FamilyModel: Send + Sync {
    /// Applies the family's own defaults to a request for its canvas (a pixel model's steps,
    /// solver, guidance and schedule); diffusers' families keep [`Request::new`]'s.
    fn apply_defaults(&self, _r: &mut Request) {}

    /// The model's sampler defaults, where its folder has them (pixel models): extrapolation,
    /// Context Drop and step-cache defaults come from there.
    fn sampler_defaults(&self) -> Option<&SamplerDefaults> {
        None
    }

    /// A clip family's rules (`None`: an image family, whose outputs are single frames).
    fn clip_rules(&self) -> Option<ClipRules> {
        None
    }

    /// What of `prompt` the caption encoder would not read with `max` tokens ("" when all).
    fn prompt_overflow(&self, prompt: &str, max: usize, device: &Device) -> Result<String>;

    /// The conditional tokens of the request's prompts and, when it is guided, the
    /// unconditional ones of its negative prompts, each formatted as the family does.
    fn tokenize(&self, r: &Request, device: &Device) -> Result<(Tokens, Option<Tokens>)>;

    /// Caption features (B, L, Dcap) of tokens.
    fn encode_tokens(&self, tokens: &Tokens) -> Result<Tensor>;

    /// The time grid when the request names no schedule; `latent_channels` for diffusers'
    /// Lumina-Image-2.0 μ (see [`LuminaNextFamily`]).
    fn grid(&self, steps: usize, latent_channels: usize) -> Result<Vec<f64>>;

    /// Classifier-free guidance at `scale` > 1 (which channels it applies to).
    fn guidance(&self, scale: f64) -> Guidance {
        Guidance::full(scale)
    }

    /// The guidance renormalisation when the request names none.
    fn default_renorm(&self) -> Renorm {
        Renorm::Off
    }

    /// RoPE schedule and proportional-attention base within the training canvas (no
    /// extrapolation plan): `native` pixels a side, `native_tokens` tokens there.
    fn native_rope(
        &self,
        _r: &Request,
        _native: usize,
        _native_tokens: usize,
    ) -> Result<(RopeSchedule, Option<usize>)> {
        Ok((RopeSchedule::default(), None))
    }

    /// Whether an extrapolation plan's text duplication applies (Lumina-Image-2.0's joint
    /// text-image sequence).
    fn duplicates_text(&self) -> bool {
        false
    }

    /// The step cache's rescaling polynomial when the request gives none.
    fn cache_coefficients(&self) -> Result<Vec<f64>>;

    /// Between images and the transformer's latents: the VAE, or the identity of pixel space.
    fn codec(&self) -> &dyn LatentCodec;

    /// The family's own settings of a request for the `parameters` text (`Name: value`).
    fn parameters(&self, _r: &Request) -> Vec<String> {
        Vec::new()
    }
}

/// What a clip family adds to an image one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipRules {
    /// The default clip length (the model's training clips).
    pub frames: usize,
    /// How the frame axis goes past the training length, when the request names no rule.
    pub frame_rope: RopeMethod,
}

/// Images ↔ latents.
pub trait LatentCodec: Send + Sync {
    /// Images (B, H, W, 3) in [0, 1] → latents (B, C, h, w).
    fn encode_images(&self, images: &Tensor) -> Result<Tensor>;

    /// Final latents (B, C, h, w) → images (B, H, W, 3) in [0, 1].
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;

    /// A rough upper estimate of the peak bytes of decoding `batch` images of `pixels`.
    fn decoder_bytes(&self, pixels: u64, batch: u64) -> u64;
}

/// Loads a family's components (all but the transformer) from a pipeline folder.
pub type LoadFamily = fn(&Path, DType, &Device, CheckWeights) -> Result<Box<dyn FamilyModel>>;

/// What a family is before loading: its name, folder components, latent scale, transformer
/// class, and how its components load.
pub struct FamilySpec {
    pub name: &'static str,
    /// The sub-folders its pipeline folder holds.
    pub components: &'static [&'static str],
    /// Pixels per latent cell: 8 through a VAE, 1 in pixel space.
    pub latent_scale: usize,
    /// The multiple widths and heights must be of, when the family fixes it whatever the
    /// transformer file (`None`: the latent scale times the transformer's patch size).
    pub size_multiple: Option<usize>,
    /// The transformer class it runs.
    pub transformer_class: &'static str,
    /// Loads the components (all but the transformer) from a pipeline folder.
    pub load: LoadFamily,
}

impl Family {
    /// This family's description and loader.
    pub fn spec(self) -> &'static FamilySpec {
        match self {
            Family::LuminaNext => &diffusers::LUMINA_NEXT,
            Family::Lumina2 => &diffusers::LUMINA2,
            Family::Pixel => &pixel::PIXEL,
            Family::PixelVideo => &video::PIXEL_VIDEO,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }
}
