//! The training loop: flow-matching MSE on the velocity, in the project's time convention.
//!
//! One step: draw scenes and captions (some dropped), noise x0 and times t; form
//! x_t = t·x1 + (1−t)·x0 and the target v = x1 − x0 (`lumina::sample::time`); encode the
//! captions with the word encoder and predict with the *same* `NextDit` code that runs real
//! Lumina checkpoints; MSE; backward; clip; AdamW; EMA.
//!
//! Everything random comes from one seeded ChaCha8 stream whose position is checkpointed,
//! so a resumed run continues exactly as an uninterrupted one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use lumina::models::{DitInput, NextDit, NextDitConfig, Transformer, TransformerConfig};
use lumina::pixel_model::{read_word_encoder_config, PixelModel, SamplerDefaults};
use lumina::sample::{noise, shift_time, time};
use lumina::weights::Weights;
use lumina::word_encoder::{WordEncoder, WordTokenizer};
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::config::{ClipData, TimeSampling, TrainConfig};
use crate::data::{batch, clip_batch, vocabulary};
use crate::error::{Error, Result};
use crate::inplace;
use crate::optim::{clip_grad_norm, learning_rate, AdamW};

const TRANSFORMER: &str = "transformer.";
const TEXT_ENCODER: &str = "text_encoder.";
/// The run config written beside an exported model.
pub const TRAIN_CONFIG_FILE: &str = "train_config.toml";

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Steps done, this one included.
    pub step: usize,
    pub loss: f32,
    /// Gradient L2 norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Samples in the step's batch, and the frames of each for a clip step (None: images).
    pub batch: usize,
    pub frames: Option<usize>,
}

/// Where the RNG stream stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RngState {
    seed: Vec<u8>,
    stream: u64,
    /// u128 as a decimal string (JSON numbers are doubles).
    word_pos: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    optimizer_updates: usize,
    rng: RngState,
    lumina_version: String,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    device: Device,
    model: NextDit,
    encoder: WordEncoder,
    tokenizer: WordTokenizer,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
    ema: HashMap<String, Tensor>,
    rng: ChaCha8Rng,
    step: usize,
    /// One single-thread pool per shard (see `OptimConfig::shards`).
    pools: Vec<rayon::ThreadPool>,
    /// The transformer's QAT layers (key prefixes), packed on export.
    ternary_layers: Vec<String>,
    /// The model distilled from (`TrainConfig::distill`).
    teacher: Option<Teacher>,
}

/// A trained model whose velocity joins the target.
struct Teacher {
    model: Transformer,
    encoder: WordEncoder,
    weight: f64,
}

impl Teacher {
    fn load(cfg: &crate::config::DistillConfig, device: &Device) -> Result<Self> {
        let dir = &cfg.teacher;
        let fail = |e: &dyn std::fmt::Display| Error::Checkpoint {
            path: dir.clone(),
            reason: format!("distillation teacher: {e}"),
        };
        let model = Transformer::load_dir(&dir.join("transformer"), DType::F32, device)
            .map_err(|e| fail(&e))?;
        let encoder_dir = dir.join("text_encoder");
        let encoder_cfg = read_word_encoder_config(&encoder_dir).map_err(|e| fail(&e))?;
        let weights = Weights::from_dir(&encoder_dir, DType::F32, device).map_err(|e| fail(&e))?;
        let encoder = WordEncoder::load(&encoder_cfg, &weights).map_err(|e| fail(&e))?;
        Ok(Self {
            model,
            encoder,
            weight: cfg.weight,
        })
    }

    /// `w·v_teacher(x_t, t, caption) + (1 − w)·target`.
    fn mix(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        xt: &Tensor,
        t: &Tensor,
        target: Tensor,
    ) -> Result<Tensor> {
        let caption = self.encoder.encode(ids, mask)?;
        let v = self
            .model
            .forward(&DitInput::new(xt, t, &caption, mask))?
            .detach();
        Ok(((v * self.weight)? + (target * (1.0 - self.weight))?)?)
    }
}

fn with_prefix(prefix: &str, vars: Vec<(String, Var)>) -> Vec<(String, Var)> {
    vars.into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// The tensors under `prefix`, with it stripped.
fn component(all: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    all.iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
        .collect()
}

impl Trainer {
    /// A fresh run: upstream initialisation (zero adaLN, gates, final layer), seeded.
    pub fn new(cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let device = Device::Cpu;
        let tw = Weights::init(cfg.seed, DType::F32, &device);
        let tw = if cfg.ternary {
            tw.with_ternary_scale(cfg.ternary_scale)
        } else {
            tw
        };
        let ew = Weights::init(cfg.seed.wrapping_add(1), DType::F32, &device);
        let model = NextDit::load(&cfg.transformer, &tw)?;
        let ternary_layers = tw.ternary_layers();
        let encoder = WordEncoder::load(&cfg.text_encoder, &ew)?;
        let mut vars = with_prefix(TRANSFORMER, tw.vars());
        vars.extend(with_prefix(TEXT_ENCODER, ew.vars()));
        if let Some(dir) = &cfg.init {
            init_from_model(dir, &vars, &cfg, &device)?;
        }
        let teacher = cfg
            .distill
            .as_ref()
            .map(|d| Teacher::load(d, &device))
            .transpose()?;
        // detached copies: an EMA that stayed on the autograd graph would chain every update to the
        // previous one, and sampling from it would drag the whole history along
        let ema = vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        let pools = (0..cfg.optim.shards)
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("lumina-shard-{i}"))
                    .build()
                    .map_err(|e| Error::Config(format!("starting shard thread {i}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tokenizer: vocabulary(&cfg.data),
            optimizer: AdamW::new(&cfg.optim),
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            device,
            model,
            encoder,
            vars,
            ema,
            step: 0,
            pools,
            ternary_layers,
            teacher,
        })
    }

    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.vars
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }

    fn sample_times(&mut self, n: usize) -> Result<Tensor> {
        let ts: Vec<f32> = (0..n)
            .map(|_| {
                let t = match self.cfg.time_sampling {
                    TimeSampling::Uniform => self.rng.gen::<f64>(),
                    TimeSampling::LogitNormal { mean, std } => {
                        let u: f64 = StandardNormal.sample(&mut self.rng);
                        1.0 / (1.0 + (-(mean + std * u)).exp())
                    }
                    TimeSampling::Shifted { shift } => shift_time(self.rng.gen::<f64>(), shift),
                };
                t as f32
            })
            .collect();
        Ok(Tensor::from_vec(ts, n, &self.device)?)
    }

    /// Whether a clip run's step draws images (no draw when it never does, so a clips-only
    /// run's random stream is its own).
    fn draws_images(&mut self, image_fraction: f64) -> bool {
        image_fraction > 0.0 && self.rng.gen_bool(image_fraction)
    }

    /// A clip step's length and batch size: one of `lengths` by its share, else the model's
    /// length (no draw when there are no other lengths, so such a run's random stream is the
    /// one it always was).
    fn clip_length(&mut self, clips: &ClipData) -> (usize, usize) {
        let b = self.cfg.optim.batch_size;
        if clips.lengths.is_empty() {
            return (clips.frames, b);
        }
        let mut u: f64 = self.rng.gen();
        for l in &clips.lengths {
            if u < l.share {
                return (l.frames, l.batch_size.unwrap_or(b));
            }
            u -= l.share;
        }
        (clips.frames, b)
    }

    /// One optimisation step.
    pub fn step(&mut self) -> Result<StepStats> {
        let canvas = self.cfg.data.canvas_at(self.step, &mut self.rng);
        let clips = self.cfg.data.clips.clone();
        let data = match clips {
            Some(clips) if !self.draws_images(clips.image_fraction) => {
                let (frames, b) = self.clip_length(&clips);
                clip_batch(
                    &self.cfg.data,
                    frames,
                    canvas,
                    b,
                    &mut self.rng,
                    &self.device,
                )?
            }
            _ => batch(
                &self.cfg.data,
                canvas,
                self.cfg.optim.batch_size,
                &mut self.rng,
                &self.device,
            )?,
        };
        let b = data.captions.len();
        let frames = (data.images.rank() == 5)
            .then(|| data.images.dim(2))
            .transpose()?;
        let (ids, mask, _) = self.tokenizer.encode(&data.captions, &self.device)?;
        let x1 = data.images; // (B, 3, H, W) or (B, 3, F, H, W)
        let x0 = noise::gaussian(x1.dims(), DType::F32, &self.device, &mut self.rng)?;
        let t = self.sample_times(b)?; // (B,)
        let xt = time::interpolate(&x0, &x1, &t)?;
        let target = time::velocity_target(&x0, &x1)?;
        let target = match &self.teacher {
            Some(teacher) => teacher.mix(&ids, &mask, &xt, &t, target)?,
            None => target,
        };
        let whole = Shard {
            ids,
            mask,
            xt,
            t,
            target,
        };
        let (loss_value, mut grads) = self.sharded_gradients(&whole)?;
        if !loss_value.is_finite() {
            return Err(Error::Diverged {
                step: self.step + 1,
                loss: loss_value,
            });
        }
        let grad_norm = clip_grad_norm(&mut grads, &self.vars, self.cfg.optim.grad_clip)?;
        let lr = learning_rate(&self.cfg.optim, self.step);
        self.optimizer.step(&grads, &self.vars, lr)?;
        self.update_ema()?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss: loss_value,
            grad_norm,
            lr,
            batch: b,
            frames,
        })
    }

    /// The whole batch's mean loss and its gradients, computed shard by shard at the same time
    /// (`optim.shards`, one single-thread pool each). Each shard's loss is weighted by its share
    /// of the batch, so the summed gradients are those of the batch mean.
    fn sharded_gradients(&self, whole: &Shard) -> Result<(f32, GradStore)> {
        let b = whole.len()?;
        if self.cfg.optim.shards == 1 {
            return self.shard_gradients(whole, 1.0);
        }
        let shards = whole.split(self.cfg.optim.shards, b)?;
        let results: Vec<Result<(f32, GradStore)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = shards
                .iter()
                .zip(&self.pools)
                .map(|(shard, pool)| {
                    let weight = shard.len()? as f64 / b as f64;
                    Ok(scope.spawn(move || pool.install(|| self.shard_gradients(shard, weight))))
                })
                .collect::<Result<_>>()?;
            Ok::<_, Error>(
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Config("a shard thread panicked".into()))
                        })
                    })
                    .collect(),
            )
        })?;
        let mut results = results.into_iter();
        let (mut loss, mut grads) = results
            .next()
            .ok_or_else(|| Error::Config("no shard".into()))??;
        for result in results {
            let (l, g) = result?;
            loss += l;
            for (_, var) in &self.vars {
                let summed = match (grads.get(var.as_tensor()), g.get(var.as_tensor())) {
                    (Some(a), Some(b)) => (a + b)?,
                    (None, Some(b)) => b.clone(),
                    _ => continue,
                };
                grads.insert(var.as_tensor(), summed);
            }
        }
        Ok((loss, grads))
    }

    /// `weight` × the shard's mean loss, and its gradients.
    fn shard_gradients(&self, shard: &Shard, weight: f64) -> Result<(f32, GradStore)> {
        let caption = self.encoder.encode(&shard.ids, &shard.mask)?; // (b, L, Dcap)
        let v = self
            .model
            .forward(&DitInput::new(&shard.xt, &shard.t, &caption, &shard.mask))?; // (b, 3, [F,] H, W)
        let loss = ((v - &shard.target)?.sqr()?.mean_all()? * weight)?;
        Ok((loss.to_scalar::<f32>()?, loss.backward()?))
    }

    fn update_ema(&mut self) -> Result<()> {
        let k = self.step as f64;
        let decay = self.cfg.ema_decay.min((1.0 + k) / (10.0 + k));
        for (name, var) in &self.vars {
            let current = var.as_tensor().detach();
            match self.ema.get(name) {
                // the same bits as `(e * decay)? + (current * (1.0 - decay))?`, in one pass
                Some(e) if inplace::applies(&[e, &current]) => inplace::moment(e, &current, decay)?,
                Some(e) => {
                    let next = ((e * decay)? + (current * (1.0 - decay))?)?;
                    self.ema.insert(name.clone(), next);
                }
                None => {
                    self.ema.insert(name.clone(), current.copy()?);
                }
            }
        }
        Ok(())
    }

    /// The live parameters, by prefixed name (detached copies).
    pub fn weights(&self) -> Result<HashMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
            .collect()
    }

    /// The EMA weights by prefixed name: live tensors, updated in place at every step.
    pub fn ema(&self) -> &HashMap<String, Tensor> {
        &self.ema
    }

    /// The EMA model as a transformer and an encoder, for sampling.
    pub fn ema_parts(&self) -> Result<(Transformer, WordEncoder)> {
        let tw = Weights::from_tensors(component(&self.ema, TRANSFORMER), DType::F32, &self.device);
        // a QAT state (latent + α) samples as the ternary model it exports to
        let tw = if self.cfg.ternary {
            tw.with_ternary_scale(self.cfg.ternary_scale)
        } else {
            tw
        };
        let ew =
            Weights::from_tensors(component(&self.ema, TEXT_ENCODER), DType::F32, &self.device);
        let model = Transformer::load(
            &TransformerConfig::NextDit(self.cfg.transformer.clone()),
            &tw,
        )?;
        Ok((model, WordEncoder::load(&self.cfg.text_encoder, &ew)?))
    }

    pub fn tokenizer(&self) -> &WordTokenizer {
        &self.tokenizer
    }

    /// Writes the EMA weights as a pixel-model folder, in `dtype`, with the run's config beside
    /// them as `train_config.toml` (its provenance; the loaders do not read it).
    pub fn export(&self, dir: &Path, dtype: DType) -> Result<()> {
        // packed codes stay u8 and ternary scales f32 whatever the export dtype
        let cast = |m: HashMap<String, Tensor>| -> Result<HashMap<String, Tensor>> {
            m.into_iter()
                .map(|(k, t)| {
                    let keep = t.dtype() == DType::U8 || k.ends_with(lumina::nn::SCALE_KEY);
                    Ok((k, if keep { t } else { t.to_dtype(dtype)? }))
                })
                .collect()
        };
        let transformer = component(&self.ema, TRANSFORMER);
        let transformer = if self.cfg.ternary {
            lumina::weights::ternary::pack_layers(&transformer, &self.ternary_layers)?
        } else {
            transformer
        };
        PixelModel {
            transformer: &self.cfg.transformer,
            transformer_weights: &cast(transformer)?,
            encoder: &self.cfg.text_encoder,
            encoder_weights: &cast(component(&self.ema, TEXT_ENCODER))?,
            tokenizer: &self.tokenizer,
            defaults: &SamplerDefaults {
                // the model says which canvases it trained on, so `generate` knows when it
                // extrapolates
                max_aspect: self.cfg.sampler.max_aspect.or(self.cfg.data.max_aspect()),
                // and a clip model its clip length
                frames: self
                    .cfg
                    .sampler
                    .frames
                    .or(self.cfg.data.clips.as_ref().map(|c| c.frames)),
                ..self.cfg.sampler.clone()
            },
        }
        .save(dir)?;
        let path = dir.join(TRAIN_CONFIG_FILE);
        std::fs::write(&path, self.cfg.to_toml()?).map_err(|e| Error::Checkpoint {
            path,
            reason: e.to_string(),
        })
    }

    // ------------------------------------------------------------------ checkpoints

    /// Saves everything a resume needs into `dir` (replacing it atomically).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let tmp = dir.with_extension("tmp");
        let fail = |reason: String| Error::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| fail(e.to_string()))?;
        let save = |name: &str, tensors: &HashMap<String, Tensor>| -> Result<()> {
            candle_core::safetensors::save(tensors, tmp.join(name)).map_err(|e| fail(e.to_string()))
        };
        save("weights.safetensors", &self.weights()?)?;
        save("ema.safetensors", &self.ema)?;
        save("optimizer.safetensors", &self.optimizer.state()?)?;
        let state = TrainerState {
            step: self.step,
            optimizer_updates: self.optimizer.t,
            rng: RngState {
                seed: self.rng.get_seed().to_vec(),
                stream: self.rng.get_stream(),
                word_pos: self.rng.get_word_pos().to_string(),
            },
            lumina_version: env!("CARGO_PKG_VERSION").into(),
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| fail(e.to_string()))?;
        std::fs::write(tmp.join("state.json"), json).map_err(|e| fail(e.to_string()))?;
        std::fs::write(tmp.join("config.toml"), self.cfg.to_toml()?)
            .map_err(|e| fail(e.to_string()))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(|e| fail(e.to_string()))
    }

    /// Continues a run from a checkpoint folder written by [`Trainer::save_checkpoint`].
    pub fn resume(dir: &Path) -> Result<Self> {
        let fail = |reason: String| Error::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let cfg = TrainConfig::read(&dir.join("config.toml"))?;
        let text = std::fs::read_to_string(dir.join("state.json"))
            .map_err(|e| fail(format!("state.json: {e}")))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| fail(format!("state.json: {e}")))?;
        let mut trainer = Self::new(cfg)?;
        let load = |name: &str| -> Result<HashMap<String, Tensor>> {
            candle_core::safetensors::load(dir.join(name), &trainer.device)
                .map_err(|e| fail(format!("{name}: {e}")))
        };
        let weights = load("weights.safetensors")?;
        for (name, var) in &trainer.vars {
            let t = weights
                .get(name)
                .ok_or_else(|| fail(format!("weights.safetensors has no `{name}`")))?;
            set_param(dir, "the checkpoint", name, var, t)?;
        }
        trainer.ema = load("ema.safetensors")?;
        trainer
            .optimizer
            .restore(load("optimizer.safetensors")?, state.optimizer_updates);
        let seed: [u8; 32] = state
            .rng
            .seed
            .as_slice()
            .try_into()
            .map_err(|_| fail("rng seed is not 32 bytes".into()))?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(state.rng.stream);
        rng.set_word_pos(
            state
                .rng
                .word_pos
                .parse()
                .map_err(|_| fail("rng word_pos".into()))?,
        );
        trainer.rng = rng;
        trainer.step = state.step;
        Ok(trainer)
    }
}

/// Sets every parameter from an exported pixel-model folder or a run's checkpoint folder (see
/// `TrainConfig::init`).
fn init_from_model(
    dir: &Path,
    vars: &[(String, Var)],
    cfg: &TrainConfig,
    device: &Device,
) -> Result<()> {
    let fail = |reason: String| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    if dir.join("ema.safetensors").is_file() {
        return init_from_checkpoint(dir, vars, device);
    }
    let mut stored = HashMap::new();
    for (prefix, file) in [
        (
            TRANSFORMER,
            "transformer/diffusion_pytorch_model.safetensors",
        ),
        (TEXT_ENCODER, "text_encoder/model.safetensors"),
    ] {
        let tensors = candle_core::safetensors::load(dir.join(file), device)
            .map_err(|e| fail(format!("{file}: {e}")))?;
        stored.extend(
            tensors
                .into_iter()
                .map(|(k, t)| (format!("{prefix}{k}"), t)),
        );
    }
    // a full-precision model seeds a QAT run: its latents take the dense weights, each α
    // restarts at mean |W| of them and TerDiT's modulation norm at its initialisation
    let scale_suffix = format!(".{}", lumina::nn::SCALE_KEY);
    let qat_only = |name: &str| name.ends_with(&scale_suffix) || name.contains(".norm_modulation.");
    let kin = cfg.init_word_ids();
    let mut alphas = Vec::new();
    for (name, var) in vars {
        let t = match stored.remove(name) {
            Some(t) => t,
            None if qat_only(name) => {
                if let Some(layer) = name.strip_suffix(&scale_suffix) {
                    alphas.push((format!("{layer}.weight"), var));
                }
                continue;
            }
            None => {
                return Err(fail(format!(
                "no `{name}` (a packed ternary model or another architecture cannot seed this run)"
            )))
            }
        };
        let t = grown_vocabulary(name, var, t, &kin)?;
        let t = inflated_frames(name, var, t, &cfg.transformer)?;
        set_param(dir, "the model", name, var, &t)?;
    }
    no_other_params(dir, &stored)?;
    for (latent, alpha) in alphas {
        let w = vars
            .iter()
            .find(|(n, _)| *n == latent)
            .ok_or_else(|| fail(format!("no latent `{latent}` for its α")))?;
        // one α, or one per output channel: each row's own mean |W|
        let start = if alpha.elem_count() == 1 {
            vec![lumina::nn::initial_alpha(w.1.as_tensor())?]
        } else {
            lumina::nn::initial_row_alphas(w.1.as_tensor())?
        };
        alpha.set(&Tensor::from_vec(start, alpha.dims(), device)?)?;
    }
    Ok(())
}

/// A caption encoder seeding a run whose vocabulary has words appended (an image model seeding a
/// clip model): its token embeddings fill the first rows; each new word in `kin` (new id, image
/// id; `TrainConfig::init_words`) starts as a copy of its image word's trained row, the others
/// keep their initialisation. Any other shape is left to `set_param` to refuse.
fn grown_vocabulary(
    name: &str,
    var: &Var,
    stored: Tensor,
    kin: &[(usize, usize)],
) -> Result<Tensor> {
    let current = var.as_tensor();
    let (rows, width) = (current.dim(0)?, current.dims().get(1).copied());
    let grows = name == format!("{TEXT_ENCODER}embed_tokens.weight")
        && stored.rank() == 2
        && stored.dim(0)? < rows
        && Some(stored.dim(1)?) == width;
    if !grows {
        return Ok(stored);
    }
    let old = stored.dim(0)?;
    let stored = stored.to_dtype(DType::F32)?;
    let added = (old..rows)
        .map(|id| match kin.iter().find(|(new, _)| *new == id) {
            Some(&(_, image)) if image < old => Ok(stored.narrow(0, image, 1)?),
            Some(&(_, image)) => Err(Error::Config(format!(
                "init_words: the image word of id {image} is outside the {old} stored embeddings"
            ))),
            None => Ok(current.narrow(0, id, 1)?.detach()),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&[&[stored], added.as_slice()].concat(), 0)?)
}

/// An image model seeding a clip model with temporal patches (`frame_patch_size` pf > 1), as
/// video models are inflated from image ones: each frame of a patch gets the image patch
/// embedding divided by pf, and each frame of an output patch the image's output projection,
/// so a still clip starts out embedded and predicted as its image. Other tensors pass as they
/// are.
fn inflated_frames(name: &str, var: &Var, stored: Tensor, cfg: &NextDitConfig) -> Result<Tensor> {
    let pf = cfg.frame_patch_size;
    let want = var.as_tensor().dims();
    if pf == 1 || stored.dims() == want {
        return Ok(stored);
    }
    let patch = cfg.patch_size * cfg.patch_size;
    let (c_in, c_out) = (cfg.in_channels, cfg.out_channels());
    let stored = stored.to_dtype(DType::F32)?;
    let embedder = format!("{TRANSFORMER}patch_embedder.proj.weight");
    let output = format!("{TRANSFORMER}norm_out.linear_2.");
    if name == embedder && stored.dims() == [want[0], c_in * patch] {
        // patch vectors are (c, pf, py, px): one image copy per frame, averaged
        let d = want[0];
        let w = stored.reshape((d, c_in, 1, patch))?.repeat((1, 1, pf, 1))?;
        return Ok((w.reshape((d, c_in * pf * patch))? / pf as f64)?);
    }
    if name.starts_with(&output) && stored.dim(0)? == patch * c_out && want[0] == pf * patch * c_out
    {
        // output vectors are (pf, py, px, c): the image rows once per frame
        let reps: Vec<usize> = std::iter::once(pf)
            .chain(stored.dims()[1..].iter().map(|_| 1))
            .collect();
        return Ok(stored.repeat(reps)?);
    }
    Ok(stored)
}

/// A later stage that starts from an earlier run's checkpoint takes its EMA, the weights that run
/// exported: for a QAT run these are the latent weights and the learnt α, which the packed 2-bit
/// export no longer holds. The optimizer starts fresh, as from a model folder.
fn init_from_checkpoint(dir: &Path, vars: &[(String, Var)], device: &Device) -> Result<()> {
    let fail = |reason: String| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let mut stored = candle_core::safetensors::load(dir.join("ema.safetensors"), device)
        .map_err(|e| fail(format!("ema.safetensors: {e}")))?;
    for (name, var) in vars {
        let t = stored.remove(name).ok_or_else(|| {
            fail(format!(
                "ema.safetensors has no `{name}` (a run of another architecture, or full precision \
                 seeding a ternary run: use its exported model folder)"
            ))
        })?;
        set_param(dir, "the checkpoint", name, var, &t)?;
    }
    no_other_params(dir, &stored)
}

/// Sets parameter `name` to a stored tensor (in f32), refusing another shape; `source` says
/// what `dir` is in the message.
fn set_param(dir: &Path, source: &str, name: &str, var: &Var, t: &Tensor) -> Result<()> {
    if t.dims() != var.as_tensor().dims() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!(
                "`{name}`: this config expects {:?}, {source} has {:?}",
                var.as_tensor().dims(),
                t.dims()
            ),
        });
    }
    var.set(&t.to_dtype(DType::F32)?)?;
    Ok(())
}

/// Refuses stored tensors left over once every parameter took its own.
fn no_other_params(dir: &Path, left: &HashMap<String, Tensor>) -> Result<()> {
    match left.keys().next() {
        Some(extra) => Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("`{extra}` is not a parameter of this config's model"),
        }),
        None => Ok(()),
    }
}

/// One slice of a step's batch: everything the loss of those samples needs.
struct Shard {
    ids: Tensor,
    mask: Tensor,
    xt: Tensor,
    t: Tensor,
    target: Tensor,
}

impl Shard {
    fn len(&self) -> Result<usize> {
        Ok(self.t.dim(0)?)
    }

    /// `n` contiguous slices of a batch of `b` samples, the first `b % n` one sample longer.
    fn split(&self, n: usize, b: usize) -> Result<Vec<Shard>> {
        let mut out = Vec::with_capacity(n);
        let mut start = 0;
        for i in 0..n {
            let len = b / n + usize::from(i < b % n);
            let cut = |t: &Tensor| t.narrow(0, start, len);
            out.push(Shard {
                ids: cut(&self.ids)?,
                mask: cut(&self.mask)?,
                xt: cut(&self.xt)?,
                t: cut(&self.t)?,
                target: cut(&self.target)?,
            });
            start += len;
        }
        Ok(out)
    }
}

/// The checkpoint folder of a run folder.
pub fn checkpoint_dir(run: &Path) -> PathBuf {
    run.join("checkpoint")
}
