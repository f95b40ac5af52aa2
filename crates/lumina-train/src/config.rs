//! What a training run does, as one serializable value: a TOML file or a named preset.

use std::collections::BTreeMap;
use std::path::Path;

use lumina::config::Validate;
use lumina::models::NextDitConfig;
use lumina::nn::TernaryScale;
use lumina::pixel_model::SamplerDefaults;
use lumina::word_encoder::WordEncoderConfig;
use lumina_shapes::Canvas;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Leaves a field at its default out of a written run config.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// How training times t (0 = noise, 1 = data) are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeSampling {
    /// t ~ U(0, 1) (upstream T2I default).
    Uniform,
    /// t = sigmoid(u), u ~ N(mean, std²) (upstream ImageNet runs, SD3).
    LogitNormal { mean: f64, std: f64 },
    /// t = u / (s − (s−1)u), u ~ U(0, 1): the sampling grid's shift, s > 1 favours the noisy end.
    Shifted { shift: f64 },
}

/// Learning-rate schedule after the linear warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrDecay {
    Constant,
    /// Cosine from the peak down to `final_fraction` of it at the last step.
    Cosine {
        final_fraction: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub decay: LrDecay,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay on matrices (not on norms, biases, gates, embeddings' rows).
    pub weight_decay: f64,
    /// Global gradient L2 norm is clipped to this (upstream: 2.0).
    pub grad_clip: f64,
    /// The batch is cut into this many shards whose forward and backward passes run at the
    /// same time, one thread each, and whose gradients are summed: the same update as the whole
    /// batch at once, but candle's elementwise ops (single-threaded per call) keep every core
    /// busy. Part of the run's arithmetic (summation order), so fixed by the config rather
    /// than by the machine's core count.
    #[serde(default = "one_shard")]
    pub shards: usize,
}

fn one_shard() -> usize {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Canvas side S of the `shapes` images, in pixels.
    pub side: usize,
    /// Probability that a caption is replaced by the empty one (for classifier-free guidance).
    pub caption_dropout: f64,
    /// Probability that a training caption names two objects and their relation (the
    /// shipped recipe: an even split; 0.65 traded position accuracy for relation accuracy at
    /// equal overall accuracy in a 5200-step run).
    #[serde(default = "even_split")]
    pub two_objects: f64,
    /// Progressive resolution, as Lumina trains (256 → 512 → 1024 px): the first steps run at
    /// the lower sides listed here, in order, each for its `steps`; the rest at `side`. The
    /// transformer's coordinates are relative to the canvas, so layout, colour and binding
    /// learnt on small canvases carry over, at a fraction of the cost per sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<ResolutionStage>,
    /// Aspect-ratio buckets, as Lumina trains on resolution buckets: each step draws one
    /// (by weight) and renders its batch on a canvas whose shorter side is the step's side
    /// and whose longer side follows the ratio (`[3, 2]` at side 32: 48 × 32). Empty: every
    /// canvas is square.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aspects: Vec<AspectBucket>,
    /// The `shapes-video` task: steps draw clips (`shared/spec/shapes_video.md`) of
    /// `clips.frames` frames on the step's canvas, some of them images instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clips: Option<ClipData>,
}

/// Clip training, as Lumina-Video trains a video model: clips of the model's length, optionally
/// mixed with clips of other lengths and with images (one-frame clips) to keep what the
/// picture model knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipData {
    /// Frames per training clip (the model's default length).
    pub frames: usize,
    /// Share of steps whose batch is images (one-frame clips, needs `frame_patch_size = 1`)
    /// instead of clips.
    #[serde(default)]
    pub image_fraction: f64,
    /// Other clip lengths, as Lumina-Video trains at several durations: a clip step draws one
    /// of these by its `share`, and `frames` with the share left over. Every length lies
    /// within `transformer.sample_frames`, the frame positions the model is trained on, so a
    /// generation at any trained length needs no extrapolation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lengths: Vec<ClipLength>,
}

/// A clip length `frames` drawn by a clip step with probability `share`, in batches of
/// `batch_size` clips (default `optim.batch_size`: a longer clip's step can then be made to
/// cost about what a default one does).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipLength {
    pub frames: usize,
    pub share: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// A canvas shape `ratio = [width, height]` drawn with relative probability `weight`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AspectBucket {
    pub ratio: [usize; 2],
    #[serde(default = "unit_weight")]
    pub weight: f64,
}

fn unit_weight() -> f64 {
    1.0
}

impl AspectBucket {
    pub fn new(width: usize, height: usize, weight: f64) -> Self {
        Self {
            ratio: [width, height],
            weight,
        }
    }

    /// The canvas at shorter side `side`; `None` when the longer side is not a whole number of
    /// pixels.
    pub fn canvas(&self, side: usize) -> Option<Canvas> {
        let [w, h] = self.ratio;
        let (short, long) = (w.min(h), w.max(h));
        if short == 0 || !(side * long).is_multiple_of(short) {
            return None;
        }
        let long_side = side * long / short;
        Some(if w >= h {
            Canvas::new(long_side, side)
        } else {
            Canvas::new(side, long_side)
        })
    }
}

/// `steps` optimisation steps on canvases of side `side`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolutionStage {
    pub side: usize,
    pub steps: usize,
}

impl DataConfig {
    /// The canvas side of step `step` (0-based).
    pub fn side_at(&self, step: usize) -> usize {
        let mut end = 0;
        for stage in &self.stages {
            end += stage.steps;
            if step < end {
                return stage.side;
            }
        }
        self.side
    }

    /// The widest aspect ratio (long / short side) of the buckets; `None` without buckets.
    pub fn max_aspect(&self) -> Option<f64> {
        self.aspects
            .iter()
            .map(|a| a.ratio[0].max(a.ratio[1]) as f64 / a.ratio[0].min(a.ratio[1]).max(1) as f64)
            .reduce(f64::max)
    }

    /// The canvas of step `step`: square at its side, or — with aspect buckets — one bucket
    /// drawn from `rng` by weight (no draw without buckets, so square recipes keep their
    /// random stream).
    pub fn canvas_at(&self, step: usize, rng: &mut impl Rng) -> Canvas {
        let side = self.side_at(step);
        if self.aspects.is_empty() {
            return Canvas::square(side);
        }
        let total: f64 = self.aspects.iter().map(|a| a.weight).sum();
        let mut u = rng.gen::<f64>() * total;
        let mut chosen = self.aspects[self.aspects.len() - 1];
        for a in &self.aspects {
            if u < a.weight {
                chosen = *a;
                break;
            }
            u -= a.weight;
        }
        // validated: every bucket has a canvas at every side
        chosen.canvas(side).unwrap_or(Canvas::square(side))
    }
}

fn even_split() -> f64 {
    lumina_shapes::scene::CaptionMix::TRAINING.two_objects
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Steps between sample grids and judge evaluations (0: only at the end).
    pub every: usize,
    /// Prompts per kind (single, position, relation, held-out pair).
    pub prompts_per_kind: usize,
    /// Seeds per prompt.
    pub seeds: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub transformer: NextDitConfig,
    pub text_encoder: WordEncoderConfig,
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub time_sampling: TimeSampling,
    /// EMA decay of the weights that get exported (warmed up as min(decay, (1+k)/(10+k))).
    pub ema_decay: f64,
    /// How the exported model samples by default.
    pub sampler: SamplerDefaults,
    pub eval: EvalConfig,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: usize,
    pub seed: u64,
    /// Quantisation-aware training as TerDiT does it: the layers TerDiT ternarises (attention,
    /// feed-forward and adaLN linears of every block) train as absmean-ternarised latent
    /// weights with a learnable α and a straight-through gradient; the model exports 2-bit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ternary: bool,
    /// With `ternary`: one α per layer (`tensor`, TerDiT's) or one per output channel
    /// (`channel`, each row ternarised by its own mean |W|; see `lumina::nn::TernaryScale`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub ternary_scale: TernaryScale,
    /// Start from an exported model folder (`<run>/model`) or a run's checkpoint folder
    /// (`<run>/checkpoint`, whose EMA is taken — for a QAT run the latents and α the packed export
    /// lacks) instead of the upstream initialisation: a later stage of a recipe, as Lumina
    /// continues a trained model on resolution buckets. Its transformer and text encoder must
    /// match this config's; the optimizer starts fresh and the EMA from these weights. A relative
    /// path is taken from the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
    /// With `init` from an image model into a clip run: the words the clip vocabulary appends
    /// (`moving`, `up`, `down`) start from the trained embedding of the image word named here
    /// (`up = "top"`) instead of a fresh one. Words left out start fresh.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub init_words: BTreeMap<String, String>,
    /// Distillation: mix a trained model's velocity into the target (TerDiT trained on the
    /// flow-matching target alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

/// A teacher whose velocity prediction the student learns, on the same x_t, t and caption.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// An exported pixel-model folder with the same text encoder vocabulary (`models/shapes`).
    /// A relative path is taken from the working directory.
    pub teacher: std::path::PathBuf,
    /// The teacher's share of the target: `w·v_teacher + (1 − w)·(x1 − x0)`; 1 is pure
    /// distillation, 0 plain flow matching.
    pub weight: f64,
}

impl TrainConfig {
    /// The recipe of the shipped `shapes` model.
    pub fn shapes() -> Self {
        Self {
            transformer: NextDitConfig {
                sample_size: 32,
                patch_size: 4,
                in_channels: 3,
                hidden_size: 192,
                num_layers: 8,
                num_attention_heads: 4,
                num_kv_heads: Some(4),
                multiple_of: 32,
                ffn_dim_multiplier: None,
                norm_eps: 1e-5,
                learn_sigma: false,
                qk_norm: true,
                cross_attention_dim: 128,
                scaling_factor: 1.0,
                coordinate_embedding: true,
                modulation_norm: false,
                ..NextDitConfig::default()
            },
            text_encoder: WordEncoderConfig {
                vocab_size: crate::data::image_vocabulary().words.len(),
                max_length: crate::data::MAX_CAPTION_TOKENS,
                hidden_size: 128,
                num_layers: 2,
                num_attention_heads: 4,
                norm_eps: 1e-5,
            },
            data: DataConfig {
                side: 32,
                caption_dropout: 0.1,
                two_objects: 0.5,
                // layout, colour and binding on 16 px canvases (0.34 s a step against 1.15 s),
                // then the last 3600 steps at the judged 32 px
                stages: vec![ResolutionStage {
                    side: 16,
                    steps: 7200,
                }],
                aspects: Vec::new(),
                clips: None,
            },
            optim: OptimConfig {
                steps: 10800,
                batch_size: 64,
                lr: 1e-3,
                warmup_steps: 200,
                decay: LrDecay::Cosine {
                    final_fraction: 0.1,
                },
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
                grad_clip: 2.0,
                shards: 2,
            },
            time_sampling: TimeSampling::LogitNormal {
                mean: 0.0,
                std: 1.0,
            },
            ema_decay: 0.999,
            sampler: SamplerDefaults {
                steps: 20,
                guidance_scale: 3.0,
                cfg_trunc_ratio: None,
                solver: "midpoint".into(),
                shift: 2.0,
                schedule: None,
                // beyond the training canvas: I-Max's projected flow with the constant
                // schedule, the method the README's study measured best on this task
                extrapolation: Some("imax:constant".into()),
                max_aspect: None,
                context_drop: None,
                cache_threshold: None,
                cache_coefficients: None,
                canvas_steps: Vec::new(),
                frames: None,
                frame_extrapolation: None,
            },
            eval: EvalConfig {
                every: 1200,
                prompts_per_kind: 10,
                seeds: 1,
            },
            checkpoint_every: 500,
            seed: 0,
            ternary: false,
            ternary_scale: TernaryScale::Tensor,
            init: None,
            init_words: BTreeMap::new(),
            distill: None,
        }
    }

    /// The `shapes` recipe with TerDiT's quantisation-aware training and its RMSNorm on the
    /// adaLN modulation.
    /// The recipe of the shipped `shapes-ternary` model: its committed run config, so the
    /// preset and `--config models/shapes-ternary/train_config.toml` are one recipe (QAT from
    /// `models/shapes`, distilled from it; both paths relative to the repository root).
    pub fn shapes_ternary() -> Result<Self> {
        const SHIPPED: &str = include_str!("../../../models/shapes-ternary/train_config.toml");
        let cfg: TrainConfig = toml::from_str(SHIPPED)
            .map_err(|e| Error::Config(format!("models/shapes-ternary/train_config.toml: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A minute-sized run for tests.
    pub fn tiny() -> Self {
        let mut c = Self::shapes();
        c.transformer.patch_size = 2;
        c.transformer.hidden_size = 32;
        c.transformer.num_layers = 2;
        c.transformer.num_attention_heads = 2;
        c.transformer.num_kv_heads = Some(1);
        c.transformer.multiple_of = 16;
        c.transformer.cross_attention_dim = 32;
        c.text_encoder.hidden_size = 32;
        c.text_encoder.num_layers = 1;
        c.text_encoder.num_attention_heads = 2;
        c.data.side = 16;
        c.data.stages.clear();
        c.transformer.sample_size = 16;
        c.optim.steps = 30;
        c.optim.batch_size = 8;
        c.optim.warmup_steps = 5;
        c.optim.lr = 2e-3;
        c.eval = EvalConfig {
            every: 0,
            prompts_per_kind: 2,
            seeds: 1,
        };
        c.sampler.steps = 4;
        c.checkpoint_every = 0;
        c
    }

    /// `tiny` on 4-frame clips (temporal patch 2, frame RoPE on 4 of 16 head dimensions):
    /// a smoke test of the video path.
    pub fn tiny_video() -> Self {
        let mut c = Self::tiny();
        c.data.clips = Some(ClipData {
            frames: 4,
            image_fraction: 0.0,
            lengths: Vec::new(),
        });
        c.transformer.frame_dim = 4;
        c.transformer.frame_patch_size = 2;
        c.transformer.sample_frames = 4;
        c.transformer.clip_time_embedding = true;
        c.text_encoder.vocab_size = crate::data::vocabulary(&c.data).words.len();
        c.optim.batch_size = 4;
        c
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "shapes" => Ok(Self::shapes()),
            "shapes-ternary" => Self::shapes_ternary(),
            "tiny" => Ok(Self::tiny()),
            "tiny-ternary" => {
                let mut c = Self::tiny();
                c.ternary = true;
                c.transformer.modulation_norm = true;
                Ok(c)
            }
            "tiny-video" => Ok(Self::tiny_video()),
            other => Err(Error::Config(format!(
                "unknown preset `{other}` (known: shapes, shapes-ternary, tiny, tiny-ternary, tiny-video)"
            ))),
        }
    }

    /// `init_words` maps appended words to image words, and only when an image model seeds the
    /// run: any other pairing would take a row the stored embedding does not have.
    fn validate_init_words(&self) -> Result<()> {
        let Some((word, kin)) = self.init_words.iter().next() else {
            return Ok(());
        };
        if self.init.is_none() {
            return Err(Error::Config(format!(
                "init_words: `{word}` = `{kin}` needs `init` (a model whose embeddings seed the words)"
            )));
        }
        let image = crate::data::image_vocabulary();
        let run = crate::data::vocabulary(&self.data);
        let appended = &run.vocabulary()[image.vocabulary().len()..];
        for (word, kin) in &self.init_words {
            if !appended.iter().any(|w| w == word) {
                return Err(Error::Config(format!(
                    "init_words: `{word}` is not a word this run appends to the image vocabulary \
                     (appended: {appended:?})"
                )));
            }
            if !image.vocabulary().iter().any(|w| w == kin) {
                return Err(Error::Config(format!(
                    "init_words: `{word}` = `{kin}`, but `{kin}` is not an image word"
                )));
            }
        }
        Ok(())
    }

    /// Per `init_words`, the id of each appended word and of the image word it starts from.
    pub fn init_word_ids(&self) -> Vec<(usize, usize)> {
        let run = crate::data::vocabulary(&self.data);
        let id = |w: &str| run.words.iter().position(|v| v == w);
        self.init_words
            .iter()
            .filter_map(|(word, kin)| Some((id(word)?, id(kin)?)))
            .collect()
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let cfg: TrainConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))
    }

    /// Every training clip length fits the frame axis the model is trained on and the patch;
    /// the other lengths' shares leave `frames` a share of its own (or none) and their
    /// batches can be split into the run's shards.
    fn validate_clip_lengths(&self, clips: &ClipData) -> Result<()> {
        let (pf, trained) = (
            self.transformer.frame_patch_size,
            self.transformer.sample_frames,
        );
        // One rule for every length a step can draw: a clip (two frames or more), whole
        // temporal patches, and frame positions the model is trained on.
        let length_fits = |what: &str, frames: usize| {
            if frames < 2 || !frames.is_multiple_of(pf) || frames > trained {
                return Err(Error::Config(format!(
                    "{what}: frames {frames} must be >= 2, a multiple of \
                     transformer.frame_patch_size {pf} and at most transformer.sample_frames \
                     {trained}"
                )));
            }
            Ok(())
        };
        length_fits("data.clips.frames", clips.frames)?;
        let shards = self.optim.shards;
        for (i, l) in clips.lengths.iter().enumerate() {
            let batch_fits = l.batch_size.is_none_or(|b| b >= shards);
            length_fits(&format!("data.clips.lengths[{i}]"), l.frames)?;
            if !(l.share > 0.0 && l.share <= 1.0) || !batch_fits {
                return Err(Error::Config(format!(
                    "data.clips.lengths[{i}]: share {} must be in (0, 1] and batch_size {:?} at \
                     least optim.shards {shards}",
                    l.share, l.batch_size
                )));
            }
        }
        let total: f64 = clips.lengths.iter().map(|l| l.share).sum();
        if total > 1.0 + 1e-9 {
            return Err(Error::Config(format!(
                "data.clips.lengths: the shares add up to {total}, more than 1"
            )));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, reason: &str| Err(Error::Config(format!("{what}: {reason}")));
        self.transformer
            .validate()
            .map_err(|e| Error::Config(format!("transformer: {e}")))?;
        self.text_encoder
            .validate(Path::new("text_encoder"))
            .map_err(|e| Error::Config(e.to_string()))?;
        if !self.ternary && self.ternary_scale != TernaryScale::Tensor {
            return bad(
                "ternary_scale",
                "per-channel α needs `ternary = true` (a dense run has no α)",
            );
        }
        self.validate_init_words()?;
        if let Some(d) = &self.distill {
            if !(0.0..=1.0).contains(&d.weight) {
                return bad("distill.weight", "must be in [0, 1]");
            }
        }
        if self.transformer.learn_sigma {
            return bad(
                "transformer.learn_sigma",
                "must be false: the loss trains velocity only",
            );
        }
        if self.transformer.in_channels != 3 {
            return bad(
                "transformer.in_channels",
                "must be 3: the model works on RGB pixels",
            );
        }
        if self.transformer.cross_attention_dim != self.text_encoder.hidden_size {
            return bad(
                "transformer.cross_attention_dim",
                "must equal text_encoder.hidden_size",
            );
        }
        if let Some(clips) = &self.data.clips {
            let pf = self.transformer.frame_patch_size;
            if !(0.0..=1.0).contains(&clips.image_fraction)
                || (clips.image_fraction > 0.0 && pf != 1)
            {
                return Err(Error::Config(format!(
                    "data.clips.image_fraction: {} must be in [0, 1], and 0 unless \
                     transformer.frame_patch_size is 1 (an image is one frame)",
                    clips.image_fraction
                )));
            }
            if self.transformer.frame_dim == 0 {
                return bad(
                    "transformer.frame_dim",
                    "must be > 0 for clips: frames need their RoPE axis",
                );
            }
            self.validate_clip_lengths(clips)?;
        }
        if self.text_encoder.vocab_size < crate::data::vocabulary(&self.data).words.len() {
            return bad(
                "text_encoder.vocab_size",
                "smaller than the task's vocabulary",
            );
        }
        let patch = self.transformer.patch_size;
        let fits_patches = |side: usize| side > 0 && side.is_multiple_of(patch);
        if !fits_patches(self.data.side) {
            return bad("data.side", "must be a positive multiple of the patch size");
        }
        for (i, stage) in self.data.stages.iter().enumerate() {
            if !fits_patches(stage.side) || stage.steps == 0 {
                return Err(Error::Config(format!(
                    "data.stages[{i}]: side {} must be a positive multiple of the patch size {patch} \
                     and steps {} at least 1",
                    stage.side, stage.steps
                )));
            }
        }
        let sides = self
            .data
            .stages
            .iter()
            .map(|s| s.side)
            .chain([self.data.side]);
        for side in sides {
            for (i, a) in self.data.aspects.iter().enumerate() {
                let fits = a
                    .canvas(side)
                    .is_some_and(|c| fits_patches(c.width) && fits_patches(c.height));
                if !(fits && a.weight.is_finite() && a.weight > 0.0) {
                    return Err(Error::Config(format!(
                        "data.aspects[{i}]: ratio {}:{} must give whole canvases that are multiples \
                         of the patch size {patch} at side {side}, and weight {} must be > 0",
                        a.ratio[0], a.ratio[1], a.weight
                    )));
                }
            }
        }
        let staged: usize = self.data.stages.iter().map(|s| s.steps).sum();
        if staged >= self.optim.steps {
            return Err(Error::Config(format!(
                "data.stages: {staged} steps leave none of optim.steps = {} at data.side",
                self.optim.steps
            )));
        }
        if !(0.0..1.0).contains(&self.data.caption_dropout) {
            return bad("data.caption_dropout", "must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.data.two_objects) {
            return bad("data.two_objects", "must be in [0, 1]");
        }
        let o = &self.optim;
        if o.steps == 0 || o.batch_size == 0 {
            return bad("optim", "steps and batch_size must be >= 1");
        }
        if o.shards == 0 || o.shards > o.batch_size {
            return bad("optim.shards", "must be in 1..=batch_size");
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let ranges_ok = positive(o.lr)
            && (0.0..1.0).contains(&o.beta1)
            && (0.0..1.0).contains(&o.beta2)
            && positive(o.eps)
            && o.weight_decay >= 0.0;
        if !ranges_ok {
            return bad(
                "optim",
                "lr > 0, betas in [0, 1), eps > 0, weight_decay >= 0",
            );
        }
        if !positive(o.grad_clip) {
            return bad("optim.grad_clip", "must be > 0");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("ema_decay", "must be in [0, 1)");
        }
        match self.time_sampling {
            TimeSampling::LogitNormal { std, .. } if std <= 0.0 => {
                return bad("time_sampling.std", "must be > 0")
            }
            TimeSampling::Shifted { shift } if shift <= 0.0 => {
                return bad("time_sampling.shift", "must be > 0")
            }
            _ => {}
        }
        self.sampler
            .solver()
            .map_err(|e| Error::Config(format!("sampler.solver: {e}")))?;
        self.sampler
            .schedule()
            .map_err(|e| Error::Config(format!("sampler.schedule: {e}")))?;
        self.sampler
            .cfg_trunc_ratio()
            .map_err(|e| Error::Config(format!("sampler.{e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stages_run_in_order_then_the_full_side() -> Result<()> {
        let mut c = TrainConfig::shapes();
        c.data.stages = vec![
            ResolutionStage { side: 16, steps: 3 },
            ResolutionStage { side: 24, steps: 2 },
        ];
        c.validate()?;
        let sides: Vec<usize> = (0..7).map(|s| c.data.side_at(s)).collect();
        assert_eq!(sides, [16, 16, 16, 24, 24, 32, 32]);
        Ok(())
    }

    #[test]
    fn aspect_buckets_draw_canvases_by_weight_at_each_side() -> Result<()> {
        use rand::SeedableRng;
        let mut c = TrainConfig::shapes();
        c.data.aspects = vec![
            AspectBucket::new(1, 1, 2.0),
            AspectBucket::new(3, 2, 1.0),
            AspectBucket::new(1, 2, 1.0),
        ];
        c.validate()?;
        assert_eq!(c.data.max_aspect(), Some(2.0));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..4000 {
            *seen.entry(c.data.canvas_at(9000, &mut rng)).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3);
        let share = |w, h| seen[&Canvas::new(w, h)] as f64 / 4000.0;
        assert!((share(32, 32) - 0.5).abs() < 0.03);
        assert!((share(48, 32) - 0.25).abs() < 0.03);
        assert!((share(32, 64) - 0.25).abs() < 0.03);
        // the 16 px stage draws the same shapes at its side
        assert_eq!(c.data.canvas_at(0, &mut rng).min_side(), 16);
        // without buckets: square, and no draw from the stream
        let square = TrainConfig::shapes();
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(square.data.canvas_at(9000, &mut a), Canvas::square(32));
        assert_eq!(
            a.gen::<u64>(),
            rand_chacha::ChaCha8Rng::seed_from_u64(1).gen::<u64>()
        );
        Ok(())
    }

    #[test]
    fn aspect_buckets_that_do_not_fit_the_patches_are_named() {
        let mut c = TrainConfig::shapes();
        c.data.aspects = vec![AspectBucket::new(5, 3, 1.0)];
        let e = c.validate().expect_err("16·5/3").to_string();
        assert!(e.contains("data.aspects[0]") && e.contains("5:3"), "{e}");
        c.data.aspects = vec![AspectBucket::new(2, 1, 0.0)];
        assert!(c.validate().is_err());
    }

    #[test]
    fn every_preset_is_valid() -> Result<()> {
        for name in [
            "shapes",
            "shapes-ternary",
            "tiny",
            "tiny-ternary",
            "tiny-video",
        ] {
            TrainConfig::preset(name)?.validate()?;
        }
        Ok(())
    }

    #[test]
    fn bad_resolution_stages_are_named() {
        let mut c = TrainConfig::shapes();
        c.data.stages = vec![ResolutionStage { side: 18, steps: 3 }];
        let e = c.validate().expect_err("invalid stages").to_string();
        assert!(e.contains("data.stages[0]") && e.contains("18"), "{e}");
        c.data.stages = vec![ResolutionStage {
            side: 16,
            steps: c.optim.steps,
        }];
        let e = c.validate().expect_err("invalid stages").to_string();
        assert!(e.contains("data.stages") && e.contains("none"), "{e}");
    }
}
