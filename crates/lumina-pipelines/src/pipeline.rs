//! Text to image from a model folder: diffusers `LuminaPipeline` (Lumina-Next) and
//! `Lumina2Pipeline` (Lumina-Image-2.0), step for step, and the project's own pixel-space
//! `LuminaPixelPipeline` (see [`lumina::pixel_model`]). What each family does around the
//! transformer is its own type ([`crate::family`]); this file is what they share: request
//! checks, the solve, I-Max's passes, step caching.
//!
//! Upstream: diffusers `pipelines/lumina/pipeline_lumina.py`, `pipelines/lumina2/
//! pipeline_lumina2.py` (58eb52c). What differs on purpose is listed on [`Request`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Tensor};
use lumina::config::ConfigFile;
use lumina::lora::LoraFile;
use lumina::models::{CacheRule, CacheStats, StepCache, Transformer, TransformerConfig};
use lumina::nn::lora::{Adapters, LoraMode};
use lumina::nn::ContextDrop;
use lumina::sample::{
    noise, sample_with, shift_time, FiniteState, FrameRope, Guidance, HookRef, ProjectedFlow,
    Renorm, RopeMethod, RopeSchedule, Schedule, Solver, StepDone, StepHook, Truncation,
};
use lumina::weights::{WeightFiles, Weights};
use lumina::{Caption, Denoiser, TextTiles};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::extrapolation::{native_canvas, Extrapolation};
use crate::family::{frame_method, FamilyModel, PixelFamily, VideoFamily};
use crate::pixel_model::{SamplerDefaults, PIXEL_PIPELINE_CLASS, PIXEL_VIDEO_PIPELINE_CLASS};
use crate::text_encoder::{WordEncoder, WordTokenizer};
use crate::tokenizer::Tokens;

/// diffusers pipeline classes (and their deprecated aliases) this build runs.
pub const PIPELINE_CLASSES: [(&str, Family); 6] = [
    ("LuminaPipeline", Family::LuminaNext),
    ("LuminaText2ImgPipeline", Family::LuminaNext),
    ("Lumina2Pipeline", Family::Lumina2),
    ("Lumina2Text2ImgPipeline", Family::Lumina2),
    (PIXEL_PIPELINE_CLASS, Family::Pixel),
    (PIXEL_VIDEO_PIPELINE_CLASS, Family::PixelVideo),
];

/// Lumina-Image-2.0's default system prompt (diffusers `Lumina2Pipeline.system_prompt`).
pub const LUMINA2_SYSTEM_PROMPT: &str = "You are an assistant designed to generate superior images with the superior degree of image-text alignment based on textual prompts or user prompts.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    LuminaNext,
    Lumina2,
    /// Next-DiT on RGB pixels with a word-level encoder: the project's own models.
    Pixel,
    /// The same with a frame axis: text to video.
    PixelVideo,
}

/// Where the starting noise comes from.
#[derive(Clone, Debug)]
pub enum Latents {
    /// Image i (in output order) starts from N(0, I) drawn by `StdRng::seed_from_u64(seed + i)`,
    /// so any one image of a batch can be regenerated alone.
    Seed(u64),
    /// Given starting latents (B·images_per_prompt, C, h, w), like diffusers' `latents=`.
    Given(Tensor),
}

/// One text-to-image call. [`Request::new`] gives the diffusers defaults of the pipeline.
///
/// On purpose unlike diffusers: with several prompts *and* several images per prompt, each
/// image gets its own prompt's mask (diffusers repeats embeddings per prompt but masks
/// interleaved, a known mismatch); `shift` switches to Lumina's own shifted uniform grid.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompts: Vec<String>,
    /// One per prompt; `None` means "" (diffusers' default).
    pub negative_prompts: Option<Vec<String>>,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// Classifier-free guidance scale; guidance is off at ≤ 1 (diffusers).
    pub guidance_scale: f64,
    /// diffusers steps with Euler; higher-order solvers use the same grid.
    pub solver: Solver,
    /// `None`: the σ grid diffusers builds from `scheduler_config.json` (a pixel model: its
    /// own schedule). `Some`: that schedule — Lumina's rational time shift t/(s − (s−1)t) of a
    /// uniform grid (upstream's `t_shift`), the uniform grid, or Lumina-Next's sigmoid one.
    pub schedule: Option<Schedule>,
    pub images_per_prompt: usize,
    pub latents: Latents,
    pub max_sequence_length: usize,
    /// Lumina-Next: time-aware RoPE switches from interpolation to NTK at this t (diffusers
    /// default 1.0, upstream demo 0.3).
    pub scaling_watershed: f64,
    /// Lumina-Next: proportional attention (diffusers default on).
    pub proportional_attn: bool,
    /// CFG only for steps with (i+1)/n ≤ ratio (diffusers Lumina2's `cfg_trunc_ratio`; every
    /// family).
    pub cfg_trunc_ratio: f64,
    /// Renormalisation of the guided velocity. `None`: the family's own — diffusers Lumina2's
    /// `cfg_normalization` (rows) for Lumina-Image-2.0, none for the others.
    pub cfg_renorm: Option<Renorm>,
    /// Lumina2: prepended to every prompt as "<system> <Prompt Start> <prompt>".
    pub system_prompt: Option<String>,
    /// Going past the training size. `None`: the pipeline's own rule — the model's measured
    /// default for a pixel model beyond its training canvases, diffusers' for Lumina-Next
    /// (`scaling_watershed`, `proportional_attn`) and Lumina-Image-2.0 (nothing). `Some` applies
    /// at any size (scales below 1 count as 1).
    pub extrapolation: Option<Extrapolation>,
    /// img2img (an image of the request's size) or upscaling (any other size: the image,
    /// resized, guides I-Max's projected flow).
    pub init_image: Option<InitImage>,
    /// Lumina-Next's time-aware Context Drop. `None`: the model's default (a pixel model's
    /// sampler settings), else off; a window of 1 is off.
    pub context_drop: Option<ContextDrop>,
    /// Step caching (TeaCache) threshold. `None`: the model's default, else off; 0 is off.
    pub cache_threshold: Option<f64>,
    /// The cache's rescaling polynomial (highest power first). `None`: TeaCache's for
    /// Lumina-Next and Lumina-Image-2.0, the fitted one a pixel model carries.
    pub cache_coefficients: Option<Vec<f64>>,
    /// Compute every step and record (input change, output change) pairs of the block stack
    /// into [`Output::cache_pairs`], to fit a rescaling polynomial (`lumina cache-fit`).
    pub record_cache: bool,
    /// Frames of each output: 1 for an image family; a clip family's default is its training
    /// length.
    pub frames: usize,
    /// How a clip model's frame axis goes past its training length. `None`: the model's
    /// default (position interpolation unless its folder says otherwise).
    pub frame_extrapolation: Option<RopeMethod>,
}

/// The starting picture of img2img and upscaling.
#[derive(Clone, Debug)]
pub struct InitImage {
    /// (H, W, 3) in [0, 1]; the same image for every prompt.
    pub image: Tensor,
    /// In (0, 1]: how much of the schedule runs. The grid loses its first ⌊steps·(1 −
    /// strength)⌋ points and the solve starts from the image noised to the first remaining
    /// time (Lumina-Next mini's `sample_img2img.py`); 1 starts from pure noise.
    pub strength: f64,
}

impl Request {
    pub fn new(prompts: Vec<String>) -> Self {
        Self {
            prompts,
            negative_prompts: None,
            width: 1024,
            height: 1024,
            steps: 30,
            guidance_scale: 4.0,
            solver: Solver::Euler,
            schedule: None,
            images_per_prompt: 1,
            latents: Latents::Seed(0),
            max_sequence_length: 256,
            scaling_watershed: 1.0,
            proportional_attn: true,
            cfg_trunc_ratio: 1.0,
            cfg_renorm: None,
            system_prompt: None,
            extrapolation: None,
            init_image: None,
            context_drop: None,
            cache_threshold: None,
            cache_coefficients: None,
            record_cache: false,
            frames: 1,
            frame_extrapolation: None,
        }
    }

    fn batch(&self) -> usize {
        self.prompts.len() * self.images_per_prompt
    }

    /// Whether classifier-free guidance runs (diffusers: scale > 1).
    pub fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }

    /// The negative prompts, "" for each prompt when none are given.
    pub fn negatives(&self) -> Vec<String> {
        self.negative_prompts
            .clone()
            .unwrap_or_else(|| vec![String::new(); self.prompts.len()])
    }
}

/// The result of a call, in output order (prompt-major: all images of prompt 0 first).
pub struct Output {
    /// Final latents (B, C, h, w), f32.
    pub latents: Tensor,
    /// Images (B, H, W, 3) in [0, 1], f32; a clip model's frames (B, F, H, W, 3).
    pub images: Tensor,
    /// The conditional caption features and mask the transformer saw.
    pub prompt_embeds: Caption,
    /// Per prompt, what truncation dropped (empty when nothing).
    pub truncated: Vec<String>,
    /// With step caching: evaluations of the block stack computed and skipped (per row group).
    pub cache_stats: Option<CacheStats>,
    /// With [`Request::record_cache`]: the recorded (input change, output change) pairs.
    pub cache_pairs: Vec<(f64, f64)>,
}

pub struct Pipeline {
    pub family: Family,
    pub dir: PathBuf,
    /// The family's components and rules around the transformer.
    model: Box<dyn FamilyModel>,
    transformer: Transformer,
    /// The transformer's adaptable layers (`None` for a model built in memory).
    adapters: Option<Arc<Adapters>>,
    /// The LoRA files applied now, with their scales and mode.
    loras: Mutex<Vec<(Arc<LoraFile>, f64)>>,
    device: Device,
}

/// When loading checks weights for NaN and infinite values (one pass over each tensor).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckWeights {
    /// Components whose files hold at most [`CHECKED_BYTES`]: a few percent of their load.
    #[default]
    Small,
    /// Every component (`--check-weights`): seconds more for a 2B model.
    All,
}

/// The largest component [`CheckWeights::Small`] checks.
pub const CHECKED_BYTES: u64 = 512 << 20;

impl CheckWeights {
    /// `files` as weights in `dtype`, checked when this says so.
    pub(crate) fn weights(self, files: WeightFiles, dtype: DType, device: &Device) -> Weights {
        let bytes: u64 = files
            .keys()
            .filter_map(|k| files.info(k))
            .map(|i| i.bytes())
            .sum();
        let on = self == Self::All || bytes <= CHECKED_BYTES;
        Weights::from_files(files, dtype, device).with_finite_check(on)
    }
}

/// The family named by a folder's `model_index.json`.
pub fn pipeline_family(dir: &Path) -> Result<Family> {
    if dir.is_file() {
        return Err(single_file_model(dir));
    }
    let index = dir.join("model_index.json");
    if !index.is_file() {
        return Err(lumina::Error::Config {
            path: index,
            reason: "no model_index.json: not a diffusers pipeline folder".into(),
        }
        .into());
    }
    let file = ConfigFile::read(&index)?;
    let class = file.class_name.clone().unwrap_or_default();
    PIPELINE_CLASSES
        .iter()
        .find(|(name, _)| *name == class)
        .map(|(_, family)| *family)
        .ok_or_else(|| Error::UnknownClass {
            path: index,
            what: "pipeline",
            class,
            known: PIPELINE_CLASSES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The error for a weights file given where a pipeline folder belongs: what the file is, and
/// how to use it.
fn single_file_model(path: &Path) -> Error {
    let what = match lumina::weights::WeightFiles::open(&[path.to_path_buf()]) {
        Err(e) => return e.into(),
        Ok(files) => {
            let layout = lumina::models::layout::Layout::detect(&files);
            match layout.describe_other_parts() {
                Some(parts) => format!(
                    "an all-in-one checkpoint (a transformer under `{}`, and a {parts}); lumina \
                     reads its transformer only",
                    layout.prefix
                ),
                None => "a single weights file".to_string(),
            }
        }
    };
    lumina::Error::Config {
        path: path.to_path_buf(),
        reason: format!(
            "{what}, not a pipeline folder: pass it as `--transformer FILE` with `--model` a \
             pipeline folder that gives the text encoder, tokenizer, VAE and scheduler"
        ),
    }
    .into()
}

/// The multiple widths and heights must be of, read off a pipeline folder without loading it.
pub fn size_multiple(dir: &Path) -> Result<usize> {
    let spec = pipeline_family(dir)?.spec();
    if let Some(m) = spec.size_multiple {
        return Ok(m);
    }
    let patch = match TransformerConfig::read_dir(&dir.join("transformer"))? {
        TransformerConfig::NextDit(c) => c.patch_size,
        TransformerConfig::Lumina2(c) => c.patch_size,
    };
    Ok(spec.latent_scale * patch)
}

impl Pipeline {
    /// Loads every component of a pipeline folder in `dtype` (the VAE decoder's activations
    /// stay f32; in bf16 its convolutions multiply in bf16, see `VaeDecoder::load`).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with_transformer(dir, None, dtype, device)
    }

    /// [`Pipeline::load`], with the transformer taken from `transformer` instead of the folder's
    /// `transformer/`: another diffusers folder, or a single safetensors file such as an
    /// upstream Lumina-Next `consolidated_ema.00-of-01.safetensors`.
    pub fn load_with_transformer(
        dir: &Path,
        transformer: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_checked(dir, transformer, dtype, device, CheckWeights::Small)
    }

    /// [`Pipeline::load_with_transformer`], checking the text encoder's and the transformer's
    /// weights for NaN and infinite values as `check` says.
    pub fn load_checked(
        dir: &Path,
        transformer: Option<&Path>,
        dtype: DType,
        device: &Device,
        check: CheckWeights,
    ) -> Result<Self> {
        let family = pipeline_family(dir)?;
        let spec = family.spec();
        for component in spec.components {
            if !dir.join(component).is_dir() {
                return Err(Error::MissingComponent {
                    dir: dir.to_path_buf(),
                    component: component.to_string(),
                });
            }
        }
        let model = (spec.load)(dir, dtype, device, check)?;
        let transformer_path =
            transformer.map_or_else(|| dir.join("transformer"), Path::to_path_buf);
        // every dense or quantised layer registers, so LoRA can be set after loading
        let adapters = Adapters::new();
        let registry = adapters.clone();
        let (cfg, weights) = Transformer::open_dir(&transformer_path, |files| {
            check.weights(files, dtype, device).with_adapters(registry)
        })?;
        let transformer = Transformer::load(&cfg, &weights)?;
        if transformer.config().class_name() != spec.transformer_class {
            return Err(Error::UnknownClass {
                path: transformer_path,
                what: "transformer for this pipeline",
                class: transformer.config().class_name().into(),
                known: spec.transformer_class.into(),
            });
        }
        Ok(Self {
            family,
            dir: dir.to_path_buf(),
            model,
            transformer,
            adapters: Some(adapters),
            loras: Mutex::default(),
            device: device.clone(),
        })
    }

    /// A pixel-family pipeline from components in memory (a model being trained): the video
    /// family when the transformer has a frame axis.
    pub fn pixel(
        transformer: Transformer,
        tokenizer: WordTokenizer,
        encoder: WordEncoder,
        defaults: SamplerDefaults,
        device: &Device,
    ) -> Result<Self> {
        let pixel = PixelFamily::new(tokenizer, encoder, defaults);
        let clip = matches!(transformer.config(), TransformerConfig::NextDit(c) if c.frame_dim > 0);
        let (family, model): (Family, Box<dyn FamilyModel>) = match clip {
            true => (Family::PixelVideo, Box::new(VideoFamily::new(pixel)?)),
            false => (Family::Pixel, Box::new(pixel)),
        };
        Ok(Self {
            family,
            dir: PathBuf::new(),
            model,
            transformer,
            adapters: None,
            loras: Mutex::default(),
            device: device.clone(),
        })
    }

    /// Whether outputs are clips (B, F, H, W, 3) rather than images (B, H, W, 3).
    pub fn makes_clips(&self) -> bool {
        self.model.clip_rules().is_some()
    }

    /// The transformer's frame axis: (frames per token, training length, head dimensions).
    fn frame_axis(&self) -> (usize, usize, usize) {
        match self.transformer.config() {
            TransformerConfig::NextDit(c) => (c.frame_patch_size, c.sample_frames, c.frame_dim),
            TransformerConfig::Lumina2(_) => (1, 1, 0),
        }
    }

    /// A request with this pipeline's defaults at its training size: diffusers' for its
    /// pipelines, the model's own for a pixel model.
    pub fn default_request(&self, prompts: Vec<String>) -> Request {
        let native = self.native_size();
        self.default_request_at(prompts, native, native)
    }

    /// A request with this pipeline's defaults for a `width` × `height` canvas: a pixel
    /// model's steps and solver can depend on the canvas (`SamplerDefaults::canvas_steps`).
    pub fn default_request_at(&self, prompts: Vec<String>, width: usize, height: usize) -> Request {
        let mut r = Request::new(prompts);
        (r.width, r.height) = (width, height);
        self.model.apply_defaults(&mut r);
        r
    }

    /// Pixels per latent cell: 8 through a VAE, 1 in pixel space.
    fn latent_scale(&self) -> usize {
        self.family.spec().latent_scale
    }

    /// Width and height must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        self.latent_scale() * self.patch_size()
    }

    fn patch_size(&self) -> usize {
        match self.transformer.config() {
            TransformerConfig::NextDit(c) => c.patch_size,
            TransformerConfig::Lumina2(c) => c.patch_size,
        }
    }

    /// Replaces the transformer's LoRA updates by `loras` (file, scale; empty: none) in `mode`:
    /// merged into the weights, or kept apart so that the next call switches them at no cost.
    /// Removing them restores the weights bit for bit. Errors name the file and the key;
    /// nothing changes on an error.
    pub fn set_loras(&self, loras: Vec<(Arc<LoraFile>, f64)>, mode: LoraMode) -> Result<()> {
        let Some(adapters) = &self.adapters else {
            return Err(lumina::Error::input(
                "LoRA",
                "a pipeline loaded from files",
                "a model built in memory",
            )
            .into());
        };
        let upstream = self.transformer.config().upstream_key_map();
        lumina::lora::apply(adapters, &*upstream, &loras, mode)?;
        *self.loras.lock().unwrap_or_else(PoisonError::into_inner) = loras;
        Ok(())
    }

    /// The LoRA files applied now, with their scales.
    pub fn loras(&self) -> Vec<(Arc<LoraFile>, f64)> {
        self.loras
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The LoRAs applied now as `file:scale, …` (file names only), or `None`.
    pub fn describe_loras(&self) -> Option<String> {
        let parts: Vec<String> = self
            .loras()
            .iter()
            .map(|(f, scale)| {
                let path = f.path();
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                format!("{name}:{scale}")
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    pub fn transformer(&self) -> &Transformer {
        &self.transformer
    }

    /// Training resolution of the transformer, in pixels (`sample_size` latent cells).
    pub fn native_size(&self) -> usize {
        let sample = match self.transformer.config() {
            TransformerConfig::NextDit(c) => c.sample_size,
            TransformerConfig::Lumina2(c) => c.sample_size,
        };
        sample * self.latent_scale()
    }

    fn latent_channels(&self) -> usize {
        match self.transformer.config() {
            TransformerConfig::NextDit(c) => c.in_channels,
            TransformerConfig::Lumina2(c) => c.in_channels,
        }
    }

    /// Checks a request before any work: sizes, steps, counts, ranges.
    pub fn validate(&self, r: &Request) -> Result<()> {
        if r.prompts.is_empty() {
            return Err(Error::request("prompts", "at least one", 0));
        }
        let m = self.size_multiple();
        for (what, v) in [("width", r.width), ("height", r.height)] {
            if v == 0 || v % m != 0 {
                let lo = (v / m).max(1) * m;
                return Err(Error::request(
                    what,
                    format!("a positive multiple of {m} (nearest: {lo} or {})", lo + m),
                    v,
                ));
            }
        }
        if r.steps == 0 {
            return Err(Error::request("steps", ">= 1", 0));
        }
        if r.images_per_prompt == 0 {
            return Err(Error::request("images per prompt", ">= 1", 0));
        }
        self.validate_frames(r)?;
        if let Some(neg) = &r.negative_prompts {
            if neg.len() != r.prompts.len() {
                return Err(Error::request(
                    "negative prompts",
                    format!("one per prompt ({})", r.prompts.len()),
                    neg.len(),
                ));
            }
        }
        if !r.guidance_scale.is_finite() {
            return Err(Error::request(
                "guidance scale",
                "a finite number",
                r.guidance_scale,
            ));
        }
        if let Some(s) = r.schedule {
            s.validate()?;
        }
        if let Some(c) = r.context_drop {
            c.validate()?;
        }
        if let Some(t) = r.cache_threshold {
            if !CacheRule::threshold_in_range(t) {
                return Err(Error::request("cache threshold", "finite and >= 0", t));
            }
        }
        if !Truncation::step_ratio_in_range(r.cfg_trunc_ratio) {
            return Err(Error::request(
                "cfg truncation ratio",
                "in [0, 1]",
                r.cfg_trunc_ratio,
            ));
        }
        if r.max_sequence_length == 0 {
            return Err(Error::request("max sequence length", ">= 1", 0));
        }
        if let Some(init) = &r.init_image {
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return Err(Error::request("strength", "in (0, 1]", init.strength));
            }
            let dims = init.image.dims();
            if dims.len() != 3 || dims[2] != 3 || dims[0] == 0 || dims[1] == 0 {
                return Err(Error::request(
                    "init image",
                    "(H, W, 3) RGB pixels",
                    format!("{dims:?}"),
                ));
            }
        }
        self.check_memory(r)
    }

    /// Clip length against the model: image families make one frame; a clip model's length
    /// is a multiple of its temporal patch; what works on one frame's grid is refused.
    fn validate_frames(&self, r: &Request) -> Result<()> {
        if !self.makes_clips() {
            return match r.frames {
                1 => Ok(()),
                n => Err(Error::request(
                    "frames",
                    format!("1: the {} family makes images", self.family.name()),
                    n,
                )),
            };
        }
        let (pf, _, _) = self.frame_axis();
        if r.frames == 0 || !r.frames.is_multiple_of(pf) {
            return Err(Error::request(
                "frames",
                format!("a positive multiple of the model's temporal patch {pf}"),
                r.frames,
            ));
        }
        let refuse = |what: &'static str| {
            Err(Error::request(
                what,
                "images only (it works on one frame's grid)",
                format!("a clip of {} frames", r.frames),
            ))
        };
        if r.init_image.is_some() {
            return refuse("init image");
        }
        if self.context_drop(r).is_some() {
            return refuse("Context Drop");
        }
        if self
            .extrapolation(r)?
            .is_some_and(|p| p.projected.is_some())
        {
            return refuse("I-Max's projected flow (choose a RoPE rule with --extrapolate)");
        }
        Ok(())
    }

    /// Grid points img2img drops at `strength` (Lumina-Next mini: ⌊N·(1 − strength)⌋); below
    /// `steps` for any strength > 0, so at least one step runs.
    fn skipped_points(&self, steps: usize, strength: f64) -> usize {
        (steps as f64 * (1.0 - strength)).floor() as usize
    }

    /// Refuses a request whose estimated peak memory exceeds what the machine has available,
    /// before anything is allocated.
    fn check_memory(&self, r: &Request) -> Result<()> {
        let Some(available) = crate::memory::available_bytes() else {
            return Ok(());
        };
        let need = self.estimate_bytes(r, r.width, r.height);
        if need <= available {
            return Ok(());
        }
        let gib = crate::memory::gib(available);
        let peak = crate::memory::gib(need);
        // a clip too long for its size: the longest that fits is the actionable number
        if r.frames > 1 {
            if let Some(frames) = self.longest_clip(r, available, need) {
                return Err(Error::request(
                    "clip length",
                    format!(
                        "a request that fits in the {gib:.1} GiB of memory available (at {}x{} \
                         the longest clip with these settings is about {frames} frames)",
                        r.width, r.height
                    ),
                    format!(
                        "{} frames of {}x{} × {} clip(s), estimated peak {peak:.1} GiB",
                        r.frames,
                        r.width,
                        r.height,
                        r.batch()
                    ),
                ));
            }
        }
        // the estimate grows with the pixel count: the largest square of this request that fits
        let side = (r.width * r.height) as f64 * available as f64 / need as f64;
        let m = self.size_multiple();
        let fits = ((side.sqrt() as usize) / m * m).max(m);
        let (frames, unit) = match (r.frames, self.makes_clips()) {
            (1, false) => (String::new(), "image(s)"),
            (n, _) => (format!(" × {n} frames"), "clip(s)"),
        };
        Err(Error::request(
            "image size",
            format!(
                "a request that fits in the {gib:.1} GiB of memory available (the largest square \
                 with these settings is about {fits}x{fits})"
            ),
            format!(
                "{}x{}{frames} × {} {unit}, estimated peak {peak:.1} GiB",
                r.width,
                r.height,
                r.batch(),
            ),
        ))
    }

    /// The most frames (whole temporal patches) that fit in `available` bytes at the request's
    /// size, from the estimate `need` of the request's own length; `None` when not even one
    /// patch does. The estimate is proportional to the frame count (every term counts
    /// pixels or tokens of all frames), so the ratio gives it, as the ratio of pixel counts
    /// gives the largest square.
    fn longest_clip(&self, r: &Request, available: u64, need: u64) -> Option<usize> {
        let (pf, _, _) = self.frame_axis();
        let frames = (r.frames as f64 * available as f64 / need as f64) as usize / pf * pf;
        (frames > 0).then_some(frames)
    }

    /// A rough upper estimate of the peak bytes of a request at `width × height`: the
    /// transformer's activations for the guided batch (f32: residual stream, attention and
    /// SwiGLU temporaries, RoPE tables), the state and the solver's stage copies, and the VAE
    /// decoder's feature maps for one image. Weights are already resident.
    pub fn estimate_bytes(&self, r: &Request, width: usize, height: usize) -> u64 {
        let m = self.size_multiple() as u64;
        let frames = r.frames.max(1) as u64;
        let tokens = (width as u64 / m).max(1) * (height as u64 / m).max(1) * frames;
        let (hidden, head_dim) = match self.transformer.config() {
            TransformerConfig::NextDit(c) => (c.hidden_size, c.head_dim()),
            TransformerConfig::Lumina2(c) => (c.hidden_size, c.head_dim()),
        };
        let guided = if r.guided() { 2 } else { 1 };
        let batch = (r.batch() * guided) as u64;
        // ~16 live (N, D) tensors per block (norms, q/k/v/out, residuals) and the SwiGLU's
        // three ~8/3·D-wide ones, plus cos/sin tables
        let per_token = 16 * hidden as u64 + 8 * hidden as u64 + 2 * head_dim as u64;
        let transformer = batch * tokens * per_token * 4;
        let pixels = (width * height) as u64 * frames;
        let state = 8 * r.batch() as u64 * pixels * self.latent_channels() as u64 * 4
            / (self.latent_scale() * self.latent_scale()) as u64;
        let decoder = self.model.codec().decoder_bytes(pixels, r.batch() as u64);
        transformer + state + decoder
    }

    /// What of `prompt` its text encoder would not read with `max_sequence_length` tokens
    /// ("" when all of it): tokenization only, so a server can refuse a prompt before queueing
    /// it. Words outside a word-level model's vocabulary are an error, as in [`Self::encode`].
    /// For Lumina-Image-2.0 the count is of the prompt alone; a system prompt comes on top.
    pub fn prompt_overflow(&self, prompt: &str, max_sequence_length: usize) -> Result<String> {
        self.model
            .prompt_overflow(prompt, max_sequence_length, &self.device)
    }

    /// Conditional (and, with guidance, unconditional) caption features, one row per prompt.
    pub fn encode(&self, r: &Request) -> Result<(Caption, Option<Caption>, Vec<String>)> {
        let (cond, uncond) = self.model.tokenize(r, &self.device)?;
        self.embed(cond, uncond, |t| self.model.encode_tokens(t))
    }

    /// Runs the encoder on the conditional and unconditional tokens; warns about truncation.
    fn embed(
        &self,
        cond: Tokens,
        uncond: Option<Tokens>,
        encode: impl Fn(&Tokens) -> Result<Tensor>,
    ) -> Result<(Caption, Option<Caption>, Vec<String>)> {
        for (prompt, dropped) in cond
            .truncated
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_empty())
        {
            tracing::warn!(prompt, dropped = %dropped, "prompt truncated to the text encoder's limit");
        }
        let run = |t: &Tokens| -> Result<Caption> {
            let features = encode(t)?;
            if !lumina::error::all_finite(&features)? {
                return Err(lumina::Error::NonFinite {
                    what: "the text encoder's caption features".into(),
                    hint: ": its weights may be broken (check them with --check-weights)".into(),
                }
                .into());
            }
            Ok(Caption::new(features, t.mask.clone())?)
        };
        Ok((
            run(&cond)?,
            uncond.as_ref().map(run).transpose()?,
            cond.truncated,
        ))
    }

    /// The starting latents (B, C, h, w), or (B, C, F, h, w) for a clip model.
    fn initial_latents(&self, r: &Request) -> Result<Tensor> {
        let frames = self.makes_clips().then_some(r.frames);
        let shape: Vec<usize> = [r.batch(), self.latent_channels()]
            .into_iter()
            .chain(frames)
            .chain([
                r.height / self.latent_scale(),
                r.width / self.latent_scale(),
            ])
            .collect();
        match &r.latents {
            Latents::Given(t) => {
                if t.dims() != shape {
                    return Err(Error::request(
                        "initial latents",
                        format!("shape {shape:?}"),
                        format!("{:?}", t.dims()),
                    ));
                }
                Ok(t.to_dtype(DType::F32)?.to_device(&self.device)?)
            }
            Latents::Seed(seed) => {
                let one = &shape[1..];
                let samples = (0..r.batch())
                    .map(|i| {
                        noise::gaussian(
                            one,
                            DType::F32,
                            &self.device,
                            &mut StdRng::seed_from_u64(seed.wrapping_add(i as u64)),
                        )
                    })
                    .collect::<lumina::Result<Vec<_>>>()?;
                Ok(Tensor::stack(&samples, 0)?)
            }
        }
    }

    /// The time grid of a request (see [`Request::schedule`]).
    pub fn grid(&self, r: &Request) -> Result<Vec<f64>> {
        if let Some(schedule) = r.schedule {
            return Ok(schedule.grid(r.steps)?);
        }
        self.model.grid(r.steps, self.latent_channels())
    }

    /// The extrapolation a request runs with; `None` keeps the family's own rule (see
    /// [`Request::extrapolation`]).
    pub fn extrapolation(&self, r: &Request) -> Result<Option<Extrapolation>> {
        if r.extrapolation.is_some() {
            return Ok(r.extrapolation);
        }
        let Some(d) = self.model.sampler_defaults() else {
            return Ok(None);
        };
        let native = self.native_size();
        let (short, long) = (r.width.min(r.height), r.width.max(r.height));
        let aspect = long as f64 / short as f64;
        let beyond = short > native || aspect > d.max_aspect.unwrap_or(1.0) + 1e-9;
        Ok(if beyond {
            Some(d.extrapolation()?)
        } else {
            None
        })
    }

    /// The per-evaluation rules of a request: guidance, RoPE schedule, proportional attention,
    /// text duplication.
    fn rules(&self, r: &Request, plan: Option<&Extrapolation>) -> Result<Rules> {
        let guided = r.guided();
        let native = self.native_size();
        let m = self.size_multiple();
        // tokens at the training resolution: the base of proportional attention
        let native_side = native / m;
        let native_tokens = native_side.pow(2);
        let guidance = if guided {
            self.model.guidance(r.guidance_scale)
        } else {
            Guidance::NONE
        }
        .truncated(Truncation::StepRatio(r.cfg_trunc_ratio))
        .renormed(r.cfg_renorm.unwrap_or_else(|| self.model.default_renorm()));
        if let Some(plan) = plan {
            let head_dim = match self.transformer.config() {
                TransformerConfig::NextDit(c) => c.head_dim(),
                TransformerConfig::Lumina2(c) => c.head_dim(),
            };
            let grid = (r.height / m, r.width / m);
            let text_tiles = (plan.text_duplication && self.model.duplicates_text())
                .then(|| TextTiles::for_grid(grid, (native_side, native_side)))
                .flatten();
            return Ok(Rules {
                guidance,
                frame_rope: self.frame_rope(r)?,
                rope: plan.rope_schedule((r.width, r.height), native, native_side, head_dim)?,
                base_sequence_length: plan
                    .proportional_attn
                    .then(|| self.trained_tokens(native_tokens)),
                text_tiles,
            });
        }
        let (rope, base_sequence_length) = self.model.native_rope(r, native, native_tokens)?;
        let base_sequence_length =
            base_sequence_length.or_else(|| self.longer_clip_base(r, native_tokens));
        Ok(Rules {
            guidance,
            rope,
            frame_rope: self.frame_rope(r)?,
            base_sequence_length,
            text_tiles: None,
        })
    }

    /// Tokens of a training sample: the canvas's `native_tokens` times the training clip's
    /// frame tokens (one for an image model): the base of proportional attention.
    fn trained_tokens(&self, native_tokens: usize) -> usize {
        let (pf, trained, _) = self.frame_axis();
        native_tokens * (trained / pf).max(1)
    }

    /// Proportional attention for a clip longer than the training clips (unless the request
    /// turns it off): Lumina-Next's rule for larger canvases, sqrt(log N / log N_train), where
    /// the longer clip's N grows through its frames. Each token then attends over twice as
    /// many tokens at 2× length, and the sharper softmax keeps its attention as peaked as in
    /// training.
    fn longer_clip_base(&self, r: &Request, native_tokens: usize) -> Option<usize> {
        let (_, trained, _) = self.frame_axis();
        (self.makes_clips() && r.proportional_attn && r.frames > trained)
            .then(|| self.trained_tokens(native_tokens))
    }

    /// The frame axis's rule for a clip longer than the model's training clips.
    fn frame_rope(&self, r: &Request) -> Result<Option<FrameRope>> {
        let Some(rules) = self.model.clip_rules() else {
            return Ok(None);
        };
        let (pf, trained, frame_dim) = self.frame_axis();
        Ok(FrameRope::for_clip(
            frame_method(rules, r),
            r.frames / pf,
            (trained / pf).max(1),
            frame_dim,
        )?)
    }

    /// Runs a whole call; `on_step` sees every finished solver step (of I-Max's native pass
    /// too, which comes first).
    pub fn generate(&self, r: &Request, on_step: impl FnMut(StepDone)) -> Result<Output> {
        self.generate_with(r, on_step)
    }

    /// [`Pipeline::generate`] with a hook that sees every finished step and may stop the call
    /// with an error between two steps (a server's cancelled job: `lumina::Error::Cancelled`).
    pub fn generate_with(&self, r: &Request, mut on_step: impl StepHook) -> Result<Output> {
        self.validate(r)?;
        let plan = self.extrapolation(r)?;
        let (cond, uncond, truncated) = self.encode(r)?;
        let repeat = |c: Caption| -> Result<Caption> { repeat_rows(c, r.images_per_prompt) };
        let cond = repeat(cond)?;
        let uncond = uncond.map(repeat).transpose()?;
        let rules = self.rules(r, plan.as_ref())?;
        let (guide, init) = self.guide_and_start(r, plan.as_ref(), &mut on_step)?;
        // one cache per solve (the native pass of I-Max has its own)
        let cache = self.step_cache(r)?;
        let denoiser = Denoiser {
            model: &self.transformer,
            cond: cond.clone(),
            uncond,
            guidance: rules.guidance,
            rope: rules.rope,
            frame_rope: rules.frame_rope,
            base_sequence_length: rules.base_sequence_length,
            text_tiles: rules.text_tiles,
            context_drop: self.context_drop(r),
            cache: cache.as_ref(),
        };
        let mut grid = self.grid(r)?;
        if plan.is_some_and(|p| p.time_shift) {
            // composing rational shifts multiplies them: base shift a becomes a·s
            let s = crate::extrapolation::ScaleBy::ShortSide
                .scales(r.width, r.height, self.native_size())
                .0;
            grid = grid.into_iter().map(|t| shift_time(t, s)).collect();
        }
        let noise = self.initial_latents(r)?;
        let (grid, x0) = match (&init, &r.init_image) {
            (Some(x1), Some(i)) if i.strength < 1.0 => {
                let grid = grid[self.skipped_points(r.steps, i.strength)..].to_vec();
                let t0 = grid[0];
                // x_t0 = t0·x1 + (1 − t0)·noise: the image noised to the first remaining time
                let x = ((x1 * t0)? + (noise * (1.0 - t0))?)?;
                (grid, x)
            }
            _ => (grid, noise),
        };
        let hook = guide.map(|guide| {
            let p = plan
                .and_then(|p| p.projected)
                .unwrap_or(crate::extrapolation::Projection {
                    schedule: lumina::sample::GuideSchedule::CosineDecay,
                    level: 1,
                });
            ProjectedFlow {
                guide,
                schedule: p.schedule,
                level: p.level,
            }
        });
        let hooks = (hook, (FiniteState, on_step));
        let latents = sample_with(&denoiser, x0, &grid, r.solver, hooks)?.to_dtype(DType::F32)?;
        let images = self.decode(&latents)?;
        if !lumina::error::all_finite(&images)? {
            return Err(lumina::Error::NonFinite {
                what: "the decoded images".into(),
                hint: ": the VAE's weights may be broken (check them with --check-weights)".into(),
            }
            .into());
        }
        Ok(Output {
            latents,
            images,
            prompt_embeds: cond,
            truncated,
            cache_stats: cache.as_ref().map(|c| c.stats()),
            cache_pairs: cache.map(|c| c.recorded()).unwrap_or_default(),
        })
    }

    /// The Context Drop of a request: its own, else the model's default; `None` when off.
    pub fn context_drop(&self, r: &Request) -> Option<ContextDrop> {
        let model_default = self
            .model
            .sampler_defaults()
            .and_then(|d| d.context_drop().ok().flatten());
        r.context_drop.or(model_default).filter(|c| c.factor > 1)
    }

    /// The step cache threshold of a request: its own, else the model's default; `None` when
    /// off (0 turns a model's default off).
    pub fn cache_threshold(&self, r: &Request) -> Option<f64> {
        let model_default = self
            .model
            .sampler_defaults()
            .and_then(|d| d.cache_threshold);
        r.cache_threshold.or(model_default).filter(|&t| t > 0.0)
    }

    /// The step cache of one solve, when the request (or the model's default) turns it on.
    fn step_cache(&self, r: &Request) -> Result<Option<StepCache>> {
        if r.record_cache {
            return Ok(Some(StepCache::recording()));
        }
        let Some(threshold) = self.cache_threshold(r) else {
            return Ok(None);
        };
        let coefficients = match &r.cache_coefficients {
            Some(c) => c.clone(),
            None => self.model.cache_coefficients()?,
        };
        Ok(Some(StepCache::new(CacheRule::new(
            threshold,
            coefficients,
        )?)))
    }

    /// I-Max's guide (latents of the request's shape) and img2img's clean start, if any:
    /// - an init image of the request's size is the start (img2img);
    /// - one of another size, resized (bicubic), is the guide and, below strength 1, the start;
    /// - without an init image, a plan with projected flow runs the native-size pass first and
    ///   upsamples its images (bicubic in pixels, re-encoded through the VAE) into the guide.
    fn guide_and_start(
        &self,
        r: &Request,
        plan: Option<&Extrapolation>,
        on_step: &mut dyn StepHook,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let b = r.batch();
        let to_latents = |images: &Tensor| -> Result<Tensor> {
            // (B, H, W, 3) in [0, 1], any size → latents of the request's size
            let x = images.permute((0, 3, 1, 2))?.contiguous()?;
            let x = lumina::resize::bicubic(&x, r.height, r.width)?.clamp(0f32, 1f32)?;
            self.encode_images(&x.permute((0, 2, 3, 1))?.contiguous()?)
        };
        if let Some(init) = &r.init_image {
            let image = init.image.to_device(&self.device)?.unsqueeze(0)?; // (1, H, W, 3)
            let latents = to_latents(&image)?.repeat((b, 1, 1, 1))?;
            let (h, w) = (init.image.dim(0)?, init.image.dim(1)?);
            let guide = ((h, w) != (r.height, r.width)).then(|| latents.clone());
            return Ok((guide, Some(latents)));
        }
        let Some(_) = plan.and_then(|p| p.projected) else {
            return Ok((None, None));
        };
        let Some((w, h)) = native_canvas(
            (r.width, r.height),
            self.native_size(),
            self.size_multiple(),
        ) else {
            return Ok((None, None));
        };
        let native = Request {
            width: w,
            height: h,
            extrapolation: None,
            init_image: None,
            latents: match &r.latents {
                Latents::Seed(seed) => Latents::Seed(*seed),
                // given target-size noise has no native-size counterpart
                Latents::Given(_) => Latents::Seed(0),
            },
            ..r.clone()
        };
        // through `dyn`: a generic hook would instantiate `generate` without end
        let first = self.generate_with(&native, HookRef(on_step))?;
        Ok((Some(to_latents(&first.images)?), None))
    }

    /// The family's own settings of a request, for the `parameters` text.
    pub fn family_parameters(&self, r: &Request) -> Vec<String> {
        self.model.parameters(r)
    }

    /// Images (B, H, W, 3) in [0, 1] → the model's latents.
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        self.model.codec().encode_images(images)
    }

    /// Final latents (B, C, h, w) → images (B, H, W, 3) in [0, 1]; a clip's (B, C, F, h, w)
    /// → frames (B, F, H, W, 3), each frame decoded as an image.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        if latents.rank() != 5 {
            return self.model.codec().decode(latents);
        }
        let (b, c, f, h, w) = latents.dims5()?;
        let frames = latents
            .permute((0, 2, 1, 3, 4))?
            .reshape((b * f, c, h, w))?; // (B·F, C, h, w)
        let images = self.model.codec().decode(&frames)?; // (B·F, H, W, 3)
        let (_, hh, ww, ch) = images.dims4()?;
        Ok(images.reshape((b, f, hh, ww, ch))?)
    }
}

/// The per-evaluation rules of a request.
struct Rules {
    guidance: Guidance,
    rope: RopeSchedule,
    frame_rope: Option<FrameRope>,
    base_sequence_length: Option<usize>,
    text_tiles: Option<TextTiles>,
}

/// Each row repeated `n` times in place (prompt-major), embeddings and mask alike.
fn repeat_rows(c: Caption, n: usize) -> Result<Caption> {
    if n == 1 {
        return Ok(c);
    }
    let b = c.features.dim(0)?;
    let index: Vec<u32> = (0..b as u32)
        .flat_map(|i| std::iter::repeat_n(i, n))
        .collect();
    let index = Tensor::new(index.as_slice(), c.features.device())?;
    Ok(Caption::new(
        c.features.index_select(&index, 0)?,
        c.mask.index_select(&index, 0)?,
    )?)
}
