//! The project's own pixel-space model folder (`LuminaPixelPipeline`): a Next-DiT on RGB
//! pixels in [−1, 1] (no VAE), a word-level caption encoder, and the sampler settings the model
//! was tuned for.
//!
//! ```text
//! model_index.json            {"_class_name": "LuminaPixelPipeline", …}
//! transformer/                config.json + diffusion_pytorch_model.safetensors (diffusers keys)
//! text_encoder/               config.json + model.safetensors (WordEncoder)
//! tokenizer/vocab.json        WordTokenizer
//! scheduler/scheduler_config.json   {"_class_name": "LuminaFlowSampler", steps, guidance_scale, solver, shift}
//! ```

use std::collections::HashMap;
use std::path::Path;

use crate::config::ConfigFile;
use crate::models::CacheRule;
use crate::models::NextDitConfig;
use crate::nn::ContextDrop;
use crate::sample::{Schedule, Solver};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::word_encoder::{WordEncoderConfig, WordTokenizer};

pub const PIXEL_PIPELINE_CLASS: &str = "LuminaPixelPipeline";
/// The same folder format for a clip model (a transformer with a frame axis).
pub const PIXEL_VIDEO_PIPELINE_CLASS: &str = "LuminaPixelVideoPipeline";
pub const SAMPLER_CLASS: &str = "LuminaFlowSampler";
pub const WORD_ENCODER_CLASS: &str = "WordEncoder";

/// The default generation settings of a pixel model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerDefaults {
    /// Steps and solver on canvases no entry of `canvas_steps` covers.
    pub steps: usize,
    pub guidance_scale: f64,
    /// Guidance only over the first part of the steps, at step i of n iff (i + 1)/n ≤ ratio
    /// (diffusers Lumina2's `cfg_trunc_ratio`); absent: every step. Guidance decides the
    /// layout and, for clips, the motion near the noise end; near the data end it can
    /// sharpen an object's outline into the wrong shape (README, Text to video).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg_trunc_ratio: Option<f64>,
    /// `euler`, `midpoint`, `heun`, `rk4` or `ab2`.
    pub solver: String,
    /// Lumina's time shift of the uniform grid (used when `schedule` is absent).
    pub shift: f64,
    /// The time schedule by name (`uniform`, `shift:S`, `sigmoid[:µ,α,β]`, see
    /// `crate::sample::Schedule`); absent: `shift:{shift}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// What `generate` does beyond the training canvases (an `Extrapolation` name: `none`,
    /// `imax[:SCHEDULE]`, or a RoPE rule), chosen by the judge; absent: `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extrapolation: Option<String>,
    /// The widest aspect ratio (long side / short side) the model trained on at its native
    /// short side; absent: 1 (square only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_aspect: Option<f64>,
    /// Context Drop by default (`F:T`, see `crate::nn::ContextDrop`); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_drop: Option<String>,
    /// Step caching threshold by default; absent or 0: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_threshold: Option<f64>,
    /// The step cache's rescaling polynomial fitted to this model (highest power first), as
    /// `lumina cache-fit` writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_coefficients: Option<Vec<f64>>,
    /// Steps and solver chosen per canvas shape, first match wins; canvases none covers take
    /// `steps` and `solver`. A fast setting that the judge finds as accurate as the slow one
    /// on some canvases can lose on others (the built-in model: 10 Euler steps on squares,
    /// 20 midpoint steps on the 2:1 canvases — README, Fast sampling).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canvas_steps: Vec<CanvasSteps>,
    /// A clip model's default length in frames (its training clips); absent: an image model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<usize>,
    /// How a clip model's frame axis goes past its training length (a RoPE rule name, see
    /// `crate::sample::RopeMethod`); absent: `pi`, position interpolation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_extrapolation: Option<String>,
}

/// Default steps and solver for the canvases up to an aspect ratio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanvasSteps {
    /// Covers canvases whose long side / short side is at most this (1: squares).
    pub max_aspect: f64,
    pub steps: usize,
    /// `euler`, `midpoint`, `heun`, `rk4` or `ab2`.
    pub solver: String,
}

impl CanvasSteps {
    fn check(&self) -> std::result::Result<(), String> {
        if !(self.max_aspect.is_finite() && self.max_aspect >= 1.0) {
            return Err(format!(
                "max_aspect must be a ratio >= 1, got {}",
                self.max_aspect
            ));
        }
        if self.steps == 0 {
            return Err("steps must be at least 1, got 0".into());
        }
        self.solver.parse::<Solver>().map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl SamplerDefaults {
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("scheduler_config.json");
        let file = ConfigFile::read(&path)?;
        let class = file.class_name.clone().unwrap_or_default();
        if class != SAMPLER_CLASS {
            return Err(Error::Config {
                path,
                reason: format!(
                    "unknown scheduler class `{class}` for a pixel pipeline (this build knows: \
                     {SAMPLER_CLASS})"
                ),
            });
        }
        let defaults: SamplerDefaults = file.parse()?;
        defaults.solver()?;
        defaults.schedule().map_err(|e| Error::Config {
            path: path.clone(),
            reason: format!("schedule: {e}"),
        })?;
        defaults.cfg_trunc_ratio().map_err(|reason| Error::Config {
            path: path.clone(),
            reason,
        })?;
        defaults.context_drop().map_err(|e| Error::Config {
            path: path.clone(),
            reason: format!("context_drop: {e}"),
        })?;
        if let Some(t) = defaults.cache_threshold {
            CacheRule::check_threshold(t).map_err(|e| Error::Config {
                path: path.clone(),
                reason: format!("cache_threshold: {e}"),
            })?;
        }
        if let Some(c) = &defaults.cache_coefficients {
            CacheRule::check_coefficients(c).map_err(|e| Error::Config {
                path: path.clone(),
                reason: format!("cache_coefficients: {e}"),
            })?;
        }
        defaults.extrapolation().map_err(|e| Error::Config {
            path: path.clone(),
            reason: format!("extrapolation: {e}"),
        })?;
        if let Some(a) = defaults.max_aspect {
            if !(a.is_finite() && a >= 1.0) {
                return Err(Error::Config {
                    path,
                    reason: format!("max_aspect must be a ratio >= 1, got {a}"),
                });
            }
        }
        defaults.frame_extrapolation().map_err(|e| Error::Config {
            path: path.clone(),
            reason: format!("frame_extrapolation: {e}"),
        })?;
        if defaults.frames == Some(0) {
            return Err(Error::Config {
                path,
                reason: "frames must be at least 1, got 0".into(),
            });
        }
        if defaults.steps == 0 {
            return Err(Error::Config {
                path,
                reason: "steps must be at least 1, got 0".into(),
            });
        }
        for (i, c) in defaults.canvas_steps.iter().enumerate() {
            c.check().map_err(|reason| Error::Config {
                path: path.clone(),
                reason: format!("canvas_steps[{i}]: {reason}"),
            })?;
        }
        Ok(defaults)
    }

    /// The default steps and solver for a `width` × `height` canvas: the first entry of
    /// `canvas_steps` that covers its aspect ratio, else `steps` and `solver`.
    pub fn steps_for(&self, width: usize, height: usize) -> Result<(usize, Solver)> {
        let (short, long) = (width.min(height).max(1), width.max(height));
        let aspect = long as f64 / short as f64;
        match self
            .canvas_steps
            .iter()
            .find(|c| aspect <= c.max_aspect + 1e-9)
        {
            Some(c) => Ok((c.steps, c.solver.parse()?)),
            None => Ok((self.steps, self.solver()?)),
        }
    }

    /// How the frame axis goes past the training clips.
    pub fn frame_extrapolation(&self) -> Result<crate::sample::RopeMethod> {
        self.frame_extrapolation.as_deref().unwrap_or("pi").parse()
    }

    /// The extrapolation beyond the training canvases.
    pub fn extrapolation(&self) -> Result<crate::extrapolation::Extrapolation> {
        self.extrapolation.as_deref().unwrap_or("none").parse()
    }

    /// The default CFG truncation ratio in [0, 1] (1: guidance at every step).
    pub fn cfg_trunc_ratio(&self) -> std::result::Result<f64, String> {
        match self.cfg_trunc_ratio {
            None => Ok(1.0),
            Some(r) if crate::sample::Truncation::step_ratio_in_range(r) => Ok(r),
            Some(r) => Err(format!("cfg_trunc_ratio must be in [0, 1], got {r}")),
        }
    }

    /// The default Context Drop, if any.
    pub fn context_drop(&self) -> Result<Option<ContextDrop>> {
        self.context_drop.as_deref().map(str::parse).transpose()
    }

    /// The time schedule: `schedule` by name, else the shifted uniform grid.
    pub fn schedule(&self) -> Result<Schedule> {
        let schedule = match &self.schedule {
            Some(name) => name.parse()?,
            None => Schedule::Shifted { shift: self.shift },
        };
        schedule.validate()?;
        Ok(schedule)
    }

    pub fn solver(&self) -> Result<Solver> {
        self.solver.parse::<Solver>()
    }
}

/// Everything a pixel model folder holds, as tensors by key.
pub struct PixelModel<'a> {
    pub transformer: &'a NextDitConfig,
    pub transformer_weights: &'a HashMap<String, Tensor>,
    pub encoder: &'a WordEncoderConfig,
    pub encoder_weights: &'a HashMap<String, Tensor>,
    pub tokenizer: &'a WordTokenizer,
    pub defaults: &'a SamplerDefaults,
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn with_class<T: Serialize>(class: &str, value: &T) -> Result<serde_json::Value> {
    let mut v =
        serde_json::to_value(value).map_err(|e| Error::input("config", "serializable", e))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("_class_name".into(), class.into());
    }
    Ok(v)
}

impl PixelModel<'_> {
    /// Writes the folder (creating it); tensors are saved as they are (the caller picks the
    /// dtype).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mkdir = |d: &Path| {
            std::fs::create_dir_all(d).map_err(|e| Error::Write {
                path: d.to_path_buf(),
                reason: e.to_string(),
            })
        };
        for sub in ["transformer", "text_encoder", "tokenizer", "scheduler"] {
            mkdir(&dir.join(sub))?;
        }
        let class = match self.transformer.frame_dim {
            0 => PIXEL_PIPELINE_CLASS,
            _ => PIXEL_VIDEO_PIPELINE_CLASS,
        };
        let index = json!({
            "_class_name": class,
            "_lumina_version": env!("CARGO_PKG_VERSION"),
            "transformer": ["lumina", "LuminaNextDiT2DModel"],
            "text_encoder": ["lumina", WORD_ENCODER_CLASS],
            "tokenizer": ["lumina", "WordTokenizer"],
            "scheduler": ["lumina", SAMPLER_CLASS],
        });
        write_json(&dir.join("model_index.json"), &index)?;
        write_json(
            &dir.join("transformer/config.json"),
            &with_class("LuminaNextDiT2DModel", self.transformer)?,
        )?;
        write_json(
            &dir.join("text_encoder/config.json"),
            &with_class(WORD_ENCODER_CLASS, self.encoder)?,
        )?;
        write_json(
            &dir.join("tokenizer/vocab.json"),
            &serde_json::to_value(self.tokenizer)
                .map_err(|e| Error::input("tokenizer", "serializable", e))?,
        )?;
        write_json(
            &dir.join("scheduler/scheduler_config.json"),
            &with_class(SAMPLER_CLASS, self.defaults)?,
        )?;
        let save = |tensors: &HashMap<String, Tensor>, path: &Path| -> Result<()> {
            crate::weights::ternary::save(tensors, path).map_err(|e| Error::Write {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        };
        save(
            self.transformer_weights,
            &dir.join("transformer/diffusion_pytorch_model.safetensors"),
        )?;
        save(
            self.encoder_weights,
            &dir.join("text_encoder/model.safetensors"),
        )
    }
}

/// Reads `text_encoder/config.json` of a pixel model.
pub fn read_word_encoder_config(dir: &Path) -> Result<WordEncoderConfig> {
    let file = ConfigFile::read_dir(dir)?;
    let class = file.class_name.clone().unwrap_or_default();
    if class != WORD_ENCODER_CLASS {
        return Err(Error::Config {
            path: file.path,
            reason: format!(
                "unknown text encoder class `{class}` for a pixel pipeline (this build knows: \
                 {WORD_ENCODER_CLASS})"
            ),
        });
    }
    let cfg: WordEncoderConfig = file.parse()?;
    cfg.validate(&file.path)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_defaults(
        extra: serde_json::Value,
    ) -> anyhow::Result<(tempfile::TempDir, Result<SamplerDefaults>)> {
        let mut config = json!({
            "_class_name": SAMPLER_CLASS, "steps": 20, "guidance_scale": 3.0,
            "solver": "midpoint", "shift": 2.0,
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let tmp = tempfile::tempdir()?;
        std::fs::write(tmp.path().join("scheduler_config.json"), config.to_string())?;
        let read = SamplerDefaults::read_dir(tmp.path());
        Ok((tmp, read))
    }

    #[test]
    fn canvas_steps_pick_the_first_entry_covering_the_aspect() -> anyhow::Result<()> {
        let (_tmp, d) = write_defaults(json!({"canvas_steps": [
            {"max_aspect": 1.0, "steps": 10, "solver": "euler"},
            {"max_aspect": 1.5, "steps": 12, "solver": "ab2"},
        ]}))?;
        let d = d?;
        assert_eq!(d.steps_for(32, 32)?, (10, Solver::Euler));
        assert_eq!(d.steps_for(96, 96)?, (10, Solver::Euler));
        assert_eq!(d.steps_for(48, 32)?, (12, Solver::Ab2));
        assert_eq!(d.steps_for(32, 48)?, (12, Solver::Ab2));
        assert_eq!(d.steps_for(64, 32)?, (20, Solver::Midpoint));
        // without entries every canvas takes the top-level pair
        let (_tmp, plain) = write_defaults(json!({}))?;
        assert_eq!(plain?.steps_for(32, 32)?, (20, Solver::Midpoint));
        Ok(())
    }

    #[test]
    fn bad_canvas_steps_are_refused_by_entry() -> anyhow::Result<()> {
        for (entry, says) in [
            (
                json!({"max_aspect": 0.5, "steps": 10, "solver": "euler"}),
                "canvas_steps[0]: max_aspect must be a ratio >= 1, got 0.5",
            ),
            (
                json!({"max_aspect": 1.0, "steps": 0, "solver": "euler"}),
                "canvas_steps[0]: steps must be at least 1",
            ),
            (
                json!({"max_aspect": 1.0, "steps": 10, "solver": "leapfrog"}),
                "leapfrog",
            ),
            (json!({"max_aspect": 1.0, "steps": 10}), "solver"),
        ] {
            let (_tmp, read) = write_defaults(json!({ "canvas_steps": [entry] }))?;
            let e = read.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(says), "expected {says:?} in: {e}");
            assert!(e.contains("scheduler_config.json"), "names the file: {e}");
        }
        let (_tmp, read) = write_defaults(json!({ "steps": 0 }))?;
        let e = read.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("steps must be at least 1"), "{e}");
        Ok(())
    }

    #[test]
    fn cfg_truncation_defaults_to_every_step_and_is_checked() -> anyhow::Result<()> {
        let (_tmp, plain) = write_defaults(json!({}))?;
        assert_eq!(plain?.cfg_trunc_ratio(), Ok(1.0));
        let (_tmp, half) = write_defaults(json!({ "cfg_trunc_ratio": 0.5 }))?;
        assert_eq!(half?.cfg_trunc_ratio(), Ok(0.5));
        for bad in [json!(1.5), json!(-0.1)] {
            let (_tmp, read) = write_defaults(json!({ "cfg_trunc_ratio": bad }))?;
            let e = read.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                e.contains("scheduler_config.json")
                    && e.contains(&format!("cfg_trunc_ratio must be in [0, 1], got {bad}")),
                "{e}"
            );
        }
        Ok(())
    }
}
