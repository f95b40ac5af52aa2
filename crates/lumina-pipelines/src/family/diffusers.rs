//! The two diffusers families: Lumina-Next (`LuminaPipeline`) and Lumina-Image-2.0
//! (`Lumina2Pipeline`). Both condition on a Gemma-family encoder and decode through the 8× VAE;
//! they differ in prompt formatting, guidance, the time grid and RoPE within the training size.
//!
//! Upstream: diffusers `pipelines/lumina/pipeline_lumina.py`, `pipelines/lumina2/
//! pipeline_lumina2.py` (58eb52c).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lumina::models::step_cache::{LUMINA2_COEFFICIENTS, LUMINA_NEXT_COEFFICIENTS};
use lumina::sample::{Guidance, Renorm, RopeSchedule};
use lumina::weights::WeightFiles;

use super::{FamilyModel, FamilySpec, LatentCodec};
use crate::error::Result;
use crate::pipeline::{CheckWeights, Request, LUMINA2_SYSTEM_PROMPT};
use crate::scheduler::{linspace, SchedulerConfig, SigmaRequest};
use crate::text_encoder::{EncoderConfig, GemmaEncoder};
use crate::tokenizer::{Padding, PromptTokenizer, Side, Tokens};
use crate::vae::Vae;

const COMPONENTS: &[&str] = &[
    "scheduler",
    "text_encoder",
    "tokenizer",
    "transformer",
    "vae",
];
/// Both diffusers pipelines hard-code an 8× VAE.
const VAE_SCALE: usize = 8;
/// Their sizes must be multiples of this: 8× VAE times patch 2 (before any transformer file,
/// which `--transformer` may replace, is read).
const SIZE_MULTIPLE: usize = 16;

pub(super) static LUMINA_NEXT: FamilySpec = FamilySpec {
    name: "Lumina-Next",
    components: COMPONENTS,
    latent_scale: VAE_SCALE,
    size_multiple: Some(SIZE_MULTIPLE),
    transformer_class: "LuminaNextDiT2DModel",
    load: |dir, dtype, device, check| {
        Ok(Box::new(LuminaNextFamily(GemmaParts::load(
            dir, dtype, device, check,
        )?)))
    },
};

pub(super) static LUMINA2: FamilySpec = FamilySpec {
    name: "Lumina-Image-2.0",
    components: COMPONENTS,
    latent_scale: VAE_SCALE,
    size_multiple: Some(SIZE_MULTIPLE),
    transformer_class: "Lumina2Transformer2DModel",
    load: |dir, dtype, device, check| {
        Ok(Box::new(Lumina2Family(GemmaParts::load(
            dir, dtype, device, check,
        )?)))
    },
};

/// The components both diffusers families hold.
pub struct GemmaParts {
    tokenizer: PromptTokenizer,
    encoder: GemmaEncoder,
    vae: Vae,
    scheduler: SchedulerConfig,
}

impl GemmaParts {
    fn load(dir: &Path, dtype: DType, device: &Device, check: CheckWeights) -> Result<Self> {
        let encoder_dir = dir.join("text_encoder");
        let cfg = EncoderConfig::read(&encoder_dir.join("config.json"))?;
        let weights = check.weights(WeightFiles::open_dir(&encoder_dir)?, dtype, device);
        Ok(Self {
            scheduler: SchedulerConfig::read_dir(&dir.join("scheduler"))?,
            tokenizer: PromptTokenizer::load(&dir.join("tokenizer"))?,
            encoder: GemmaEncoder::load(&cfg, &weights)?,
            // in the pipeline's dtype, as diffusers loads it: a bf16 VAE's convolutions
            // multiply in bf16 (activations stay f32, see `VaeDecoder::load`)
            vae: Vae::load_dir(&dir.join("vae"), dtype, device)?,
        })
    }

    fn prompt_overflow(&self, prompt: &str, max: usize, device: &Device) -> Result<String> {
        let padding = Padding::Longest { multiple_of: 8 };
        let side = self.tokenizer.default_side();
        let one = [prompt.to_string()];
        let tokens = self.tokenizer.encode(&one, padding, side, max, device)?;
        Ok(tokens.truncated.into_iter().next().unwrap_or_default())
    }
}

impl LatentCodec for Vae {
    fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        Vae::encode(self, images)
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Vae::decode(self, latents)
    }

    /// The widest decoder stage at full resolution, a few maps at a time.
    fn decoder_bytes(&self, pixels: u64, _batch: u64) -> u64 {
        let widest = self.config.block_out_channels.iter().max().copied();
        4 * widest.unwrap_or(0) as u64 * pixels * 4
    }
}

/// Lumina-Next: Gemma-2B captions, CFG on the first three latent channels, time-aware RoPE and
/// proportional attention at every size.
pub struct LuminaNextFamily(GemmaParts);

impl FamilyModel for LuminaNextFamily {
    fn prompt_overflow(&self, prompt: &str, max: usize, device: &Device) -> Result<String> {
        self.0.prompt_overflow(prompt, max, device)
    }

    fn tokenize(&self, r: &Request, device: &Device) -> Result<(Tokens, Option<Tokens>)> {
        let negatives = &r.negatives();
        let tokenizer = &self.0.tokenizer;
        // clean_caption without bs4/ftfy: lower-case and strip (diffusers
        // `_text_preprocessing`); the negative prompt is used as given
        let prompts: Vec<String> = r
            .prompts
            .iter()
            .map(|p| p.to_lowercase().trim().to_string())
            .collect();
        let side = tokenizer.default_side();
        let padding = Padding::Longest { multiple_of: 8 };
        let cond = tokenizer.encode(&prompts, padding, side, r.max_sequence_length, device)?;
        let len = cond.ids.dim(1)?;
        let uncond = r
            .guided()
            .then(|| tokenizer.encode(negatives, Padding::Fixed(len), side, len, device))
            .transpose()?;
        Ok((cond, uncond))
    }

    fn encode_tokens(&self, t: &Tokens) -> Result<Tensor> {
        self.0.encoder.encode(&t.ids, &t.mask)
    }

    fn grid(&self, steps: usize, _latent_channels: usize) -> Result<Vec<f64>> {
        self.0.scheduler.grid(&SigmaRequest::Default(steps))
    }

    fn guidance(&self, scale: f64) -> Guidance {
        Guidance::first_channels(scale, 3)
    }

    // diffusers LuminaPipeline: time-aware scaling at every size, proportional attention
    fn native_rope(
        &self,
        r: &Request,
        native: usize,
        native_tokens: usize,
    ) -> Result<(RopeSchedule, Option<usize>)> {
        Ok((
            RopeSchedule::time_aware(r.width, r.height, native, r.scaling_watershed)?,
            r.proportional_attn.then_some(native_tokens),
        ))
    }

    fn cache_coefficients(&self) -> Result<Vec<f64>> {
        Ok(LUMINA_NEXT_COEFFICIENTS.to_vec())
    }

    fn codec(&self) -> &dyn LatentCodec {
        &self.0.vae
    }

    fn parameters(&self, r: &Request) -> Vec<String> {
        vec![
            format!(
                "Proportional attention: {}",
                if r.proportional_attn { "on" } else { "off" }
            ),
            format!("Scaling watershed: {}", r.scaling_watershed),
        ]
    }
}

/// Lumina-Image-2.0: Gemma-2 captions after a system prompt, full CFG with row renormalisation,
/// plain RoPE within the training size.
pub struct Lumina2Family(GemmaParts);

impl FamilyModel for Lumina2Family {
    fn prompt_overflow(&self, prompt: &str, max: usize, device: &Device) -> Result<String> {
        self.0.prompt_overflow(prompt, max, device)
    }

    fn tokenize(&self, r: &Request, device: &Device) -> Result<(Tokens, Option<Tokens>)> {
        let negatives = &r.negatives();
        let tokenizer = &self.0.tokenizer;
        let max = r.max_sequence_length;
        let system = r.system_prompt.as_deref().unwrap_or(LUMINA2_SYSTEM_PROMPT);
        let prompts: Vec<String> = r
            .prompts
            .iter()
            .map(|p| format!("{system} <Prompt Start> {p}"))
            .collect();
        let encode = |texts: &[String]| {
            tokenizer.encode(texts, Padding::Fixed(max), Side::Right, max, device)
        };
        let cond = encode(&prompts)?;
        let uncond = r.guided().then(|| encode(negatives)).transpose()?;
        Ok((cond, uncond))
    }

    fn encode_tokens(&self, t: &Tokens) -> Result<Tensor> {
        self.0.encoder.encode(&t.ids, &t.mask)
    }

    fn grid(&self, steps: usize, latent_channels: usize) -> Result<Vec<f64>> {
        // diffusers passes the latents' *channel* count as the sequence length
        // (huggingface/diffusers#12913); kept for parity, inert when dynamic shifting is off
        self.0.scheduler.grid(&SigmaRequest::Given {
            sigmas: linspace(1.0, 1.0 / steps as f64, steps),
            mu: self.0.scheduler.mu(latent_channels),
        })
    }

    // diffusers Lumina2Pipeline `cfg_normalization=True`
    fn default_renorm(&self) -> Renorm {
        Renorm::Rows
    }

    fn duplicates_text(&self) -> bool {
        true
    }

    fn cache_coefficients(&self) -> Result<Vec<f64>> {
        Ok(LUMINA2_COEFFICIENTS.to_vec())
    }

    fn codec(&self) -> &dyn LatentCodec {
        &self.0.vae
    }
}
