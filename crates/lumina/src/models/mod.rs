//! The Lumina transformers and how to load them from a diffusers model folder.

pub mod export;
mod input;
pub mod layout;
pub mod lumina2;
pub mod next_dit;
mod patch;
pub mod step_cache;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use input::{DitInput, TextTiles};
pub use lumina2::{Lumina2Config, Lumina2Dit};
pub use next_dit::{NextDit, NextDitConfig};
pub use patch::{patchify, unpatchify, PatchOrder};
pub use step_cache::{CacheCall, CacheRule, CacheStats, StepCache};

use crate::config::ConfigFile;
use crate::error::{Error, Result};
use crate::weights::{KeyMap, WeightFiles, Weights};
use layout::{Layout, LayoutKind};

/// diffusers class names this build can load, and the family each belongs to.
pub const KNOWN_CLASSES: [(&str, Family); 2] = [
    ("LuminaNextDiT2DModel", Family::NextDit),
    ("Lumina2Transformer2DModel", Family::Lumina2),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    NextDit,
    Lumina2,
}

/// A transformer's configuration, tagged by family.
#[derive(Clone, Debug, PartialEq)]
pub enum TransformerConfig {
    NextDit(NextDitConfig),
    Lumina2(Lumina2Config),
}

impl TransformerConfig {
    /// Reads and validates `dir/config.json`, dispatching on `_class_name`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&ConfigFile::read_dir(dir)?)
    }

    pub fn from_file(file: &ConfigFile) -> Result<Self> {
        let known = || {
            KNOWN_CLASSES
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(class) = &file.class_name else {
            return Err(Error::Config {
                path: file.path.clone(),
                reason: format!(
                    "no `_class_name`; cannot tell which transformer this is (known: {})",
                    known()
                ),
            });
        };
        match KNOWN_CLASSES.iter().find(|(name, _)| name == class) {
            Some((_, Family::NextDit)) => Ok(Self::NextDit(file.parse_valid()?)),
            Some((_, Family::Lumina2)) => Ok(Self::Lumina2(file.parse_valid()?)),
            None => Err(Error::UnknownModelClass {
                path: file.path.clone(),
                class: class.clone(),
                known: known(),
            }),
        }
    }

    /// The config as diffusers writes it (`config.json`, with `_class_name`).
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let mut value = match self {
            Self::NextDit(c) => serde_json::to_value(c),
            Self::Lumina2(c) => serde_json::to_value(c),
        }
        .map_err(|e| Error::input("config", "a serialisable config", e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("_class_name".into(), self.class_name().into());
        }
        Ok(value)
    }

    /// How the family's upstream checkpoints name this model's parameters: the names upstream
    /// and kohya LoRA files use, whatever layout the model itself was loaded from.
    pub fn upstream_key_map(&self) -> Arc<dyn KeyMap> {
        match self {
            Self::NextDit(_) => next_dit::original::key_map(),
            Self::Lumina2(c) => lumina2::original::key_map(c),
        }
    }

    pub fn class_name(&self) -> &'static str {
        match self {
            Self::NextDit(_) => KNOWN_CLASSES[0].0,
            Self::Lumina2(_) => KNOWN_CLASSES[1].0,
        }
    }
}

/// The metadata key under which files `lumina quantize` writes carry the model's config.json.
pub const EMBEDDED_CONFIG: &str = "lumina.config";

/// A loaded Lumina transformer of either family.
pub enum Transformer {
    NextDit(NextDit),
    Lumina2(Lumina2Dit),
}

impl Transformer {
    /// Builds the model for `cfg` from `weights`.
    pub fn load(cfg: &TransformerConfig, weights: &Weights) -> Result<Self> {
        Ok(match cfg {
            TransformerConfig::NextDit(c) => Self::NextDit(NextDit::load(c, weights)?),
            TransformerConfig::Lumina2(c) => Self::Lumina2(Lumina2Dit::load(c, weights)?),
        })
    }

    /// Loads a transformer folder, computing in `dtype`: a diffusers folder (`config.json` +
    /// safetensors), or upstream weights (see [`Transformer::load_path`]).
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_path(dir, dtype, device)
    }

    /// Loads a transformer from a folder or from one weights file, in any layout
    /// [`layout::Layout`] recognises: diffusers, upstream Lumina-Next or Lumina-Image-2.0
    /// names (safetensors or GGUF), ComfyUI's prefixed and all-in-one files. The config is the
    /// `config.json` in the folder or beside the file, else, for upstream names, inferred from
    /// the tensor shapes.
    pub fn load_path(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg, weights) = Self::open(path, |files| Weights::from_files(files, dtype, device))?;
        Self::load(&cfg, &weights)
    }

    /// The config of a transformer folder or file and its weights, built by `make` from its
    /// files with the key map the layout needs.
    pub fn open_dir(
        dir: &Path,
        make: impl FnOnce(WeightFiles) -> Weights,
    ) -> Result<(TransformerConfig, Weights)> {
        Self::open(dir, make)
    }

    /// [`Transformer::open_dir`] for a folder or a single weights file.
    fn open(
        path: &Path,
        make: impl FnOnce(WeightFiles) -> Weights,
    ) -> Result<(TransformerConfig, Weights)> {
        let (config_dir, files) = if path.is_file() {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                WeightFiles::open(&[path.to_path_buf()])?,
            )
        } else {
            (path.to_path_buf(), WeightFiles::open_dir(path)?)
        };
        let layout = Layout::detect(&files);
        if let Some(parts) = layout.describe_other_parts() {
            tracing::info!(path = %path.display(), "an all-in-one checkpoint: reading its transformer (under `{}`), not its {parts}", layout.prefix);
        }
        let embedded = files.metadata().get(EMBEDDED_CONFIG).cloned();
        let cfg = match TransformerConfig::read_dir(&config_dir) {
            Ok(cfg) => cfg,
            Err(Error::MissingConfig { .. }) if embedded.is_some() => {
                let text = embedded.unwrap_or_default();
                let bad = |reason: String| Error::Config {
                    path: path.to_path_buf(),
                    reason: format!("metadata `{EMBEDDED_CONFIG}`: {reason}"),
                };
                let json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                TransformerConfig::from_file(&ConfigFile::from_value(path, json)?)?
            }
            Err(Error::MissingConfig { .. }) if layout.is_upstream() => {
                let cfg = layout.infer_config(&files)?;
                tracing::info!(path = %path.display(), ?cfg, "no config.json: config inferred from the upstream checkpoint's shapes");
                cfg
            }
            Err(e) => return Err(e),
        };
        let key_map = layout.key_map(&cfg, &files)?;
        let weights = make(files);
        let weights = match key_map {
            Some(map) => weights.with_key_map(map),
            None => weights,
        };
        if layout.kind == LayoutKind::Lumina2Original {
            // upstream defines a final RMSNorm that its forward never calls (peers.md §4)
            weights.skip("norm_final");
        }
        for (_, prefix, _) in &layout.other_parts {
            weights.skip_stored_prefix(prefix);
        }
        Ok((cfg, weights))
    }

    pub fn forward(&self, inp: &DitInput) -> Result<Tensor> {
        match self {
            Self::NextDit(m) => m.forward(inp),
            Self::Lumina2(m) => m.forward(inp),
        }
    }

    pub fn config(&self) -> TransformerConfig {
        match self {
            Self::NextDit(m) => TransformerConfig::NextDit(m.config().clone()),
            Self::Lumina2(m) => TransformerConfig::Lumina2(m.config().clone()),
        }
    }
}
