//! The project's own pixel-space family (`LuminaPixelPipeline`, see [`lumina::pixel_model`]):
//! a word-level caption encoder over a closed vocabulary, Next-DiT on RGB in [−1, 1], and the
//! model's own sampler defaults.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lumina::pixel_model::{read_word_encoder_config, SamplerDefaults};
use lumina::sample::Solver;
use lumina::weights::WeightFiles;
use lumina::word_encoder::{WordEncoder, WordTokenizer};

use super::{FamilyModel, FamilySpec, LatentCodec};
use crate::error::{Error, Result};
use crate::pipeline::{CheckWeights, Request};
use crate::tokenizer::Tokens;

pub(super) static PIXEL: FamilySpec = FamilySpec {
    name: "Lumina pixel-space",
    components: &["scheduler", "text_encoder", "tokenizer", "transformer"],
    latent_scale: 1,
    size_multiple: None,
    transformer_class: "LuminaNextDiT2DModel",
    load: |dir, dtype, device, check| Ok(Box::new(PixelFamily::load(dir, dtype, device, check)?)),
};

pub struct PixelFamily {
    tokenizer: WordTokenizer,
    encoder: WordEncoder,
    defaults: SamplerDefaults,
}

impl PixelFamily {
    /// From components in memory (a model being trained).
    pub fn new(tokenizer: WordTokenizer, encoder: WordEncoder, defaults: SamplerDefaults) -> Self {
        Self {
            tokenizer,
            encoder,
            defaults,
        }
    }

    pub(super) fn load(
        dir: &Path,
        dtype: DType,
        device: &Device,
        check: CheckWeights,
    ) -> Result<Self> {
        let encoder_dir = dir.join("text_encoder");
        let cfg = read_word_encoder_config(&encoder_dir)?;
        let weights = check.weights(WeightFiles::open_dir(&encoder_dir)?, dtype, device);
        Ok(Self {
            defaults: SamplerDefaults::read_dir(&dir.join("scheduler"))?,
            tokenizer: WordTokenizer::read(&dir.join("tokenizer/vocab.json"))?,
            encoder: WordEncoder::load(&cfg, &weights)?,
        })
    }

    pub(super) fn defaults(&self) -> &SamplerDefaults {
        &self.defaults
    }

    /// An error naming the words of `prompt` outside the vocabulary: such a word would be drawn
    /// as noise.
    fn known_words(&self, prompt: &str) -> Result<()> {
        let unknown = self.tokenizer.unknown_words(prompt);
        if unknown.is_empty() {
            return Ok(());
        }
        Err(Error::request(
            "prompt words",
            format!(
                "words of the model's vocabulary: {}",
                self.tokenizer.vocabulary().join(" ")
            ),
            format!("{:?} in {:?}", unknown.join(" "), excerpt(prompt)),
        ))
    }

    fn tokens(&self, texts: &[String], device: &Device) -> Result<Tokens> {
        let (ids, mask, truncated) = self.tokenizer.encode(texts, device)?;
        Ok(Tokens {
            ids,
            mask,
            truncated,
        })
    }
}

/// A prompt for a message: whole up to 80 characters, else its start and its length.
fn excerpt(prompt: &str) -> String {
    let n = prompt.chars().count();
    if n <= 80 {
        return prompt.to_string();
    }
    let start: String = prompt.chars().take(77).collect();
    format!("{start}… ({n} characters)")
}

impl FamilyModel for PixelFamily {
    fn apply_defaults(&self, r: &mut Request) {
        let d = &self.defaults;
        // the defaults were checked when the folder was read
        (r.steps, r.solver) = d
            .steps_for(r.width, r.height)
            .unwrap_or((d.steps, Solver::Euler));
        r.guidance_scale = d.guidance_scale;
        r.cfg_trunc_ratio = d.cfg_trunc_ratio().unwrap_or(1.0);
        r.schedule = d.schedule().ok();
    }

    fn sampler_defaults(&self) -> Option<&SamplerDefaults> {
        Some(&self.defaults)
    }

    // the word tokenizer reads a fixed number of words; `max` is the Gemma families' limit
    fn prompt_overflow(&self, prompt: &str, _max: usize, device: &Device) -> Result<String> {
        self.known_words(prompt)?;
        let tokens = self.tokens(&[prompt.to_string()], device)?;
        Ok(tokens.truncated.into_iter().next().unwrap_or_default())
    }

    fn tokenize(&self, r: &Request, device: &Device) -> Result<(Tokens, Option<Tokens>)> {
        let negatives = &r.negatives();
        // a word-level model knows only its vocabulary: an unknown word would be drawn as
        // noise, so it is an error
        for prompt in r.prompts.iter().chain(negatives) {
            self.known_words(prompt)?;
        }
        let cond = self.tokens(&r.prompts, device)?;
        let uncond = r
            .guided()
            .then(|| self.tokens(negatives, device))
            .transpose()?;
        Ok((cond, uncond))
    }

    fn encode_tokens(&self, t: &Tokens) -> Result<Tensor> {
        Ok(self.encoder.encode(&t.ids, &t.mask)?)
    }

    fn grid(&self, steps: usize, _latent_channels: usize) -> Result<Vec<f64>> {
        Ok(self.defaults.schedule()?.grid(steps)?)
    }

    fn cache_coefficients(&self) -> Result<Vec<f64>> {
        self.defaults.cache_coefficients.clone().ok_or_else(|| {
            Error::request(
                "step cache coefficients",
                "a polynomial fitted to this model (`lumina cache-fit` writes one into its \
                 scheduler config), or --cache-coefficients",
                "none in the model folder",
            )
        })
    }

    fn codec(&self) -> &dyn LatentCodec {
        &Rgb
    }
}

/// Pixel space: the latents are RGB in [−1, 1].
struct Rgb;

impl LatentCodec for Rgb {
    fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        Ok(((images.permute((0, 3, 1, 2))?.to_dtype(DType::F32)? * 2.0)? - 1.0)?)
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let x = ((latents.to_dtype(DType::F32)? * 0.5)? + 0.5)?.clamp(0f32, 1f32)?;
        Ok(x.permute((0, 2, 3, 1))?.contiguous()?) // (B, H, W, 3)
    }

    fn decoder_bytes(&self, pixels: u64, batch: u64) -> u64 {
        pixels * 3 * 4 * batch
    }
}
