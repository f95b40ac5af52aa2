//! The Lumina transformers and how to load them from a diffusers model folder.

mod input;
pub mod lumina2;
pub mod next_dit;
mod patch;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use input::DitInput;
pub use lumina2::{Lumina2Config, Lumina2Dit};
pub use next_dit::{NextDit, NextDitConfig};
pub use patch::{patchify, unpatchify, PatchOrder};

use crate::config::ConfigFile;
use crate::error::{Error, Result};
use crate::weights::Weights;

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

    pub fn class_name(&self) -> &'static str {
        match self {
            Self::NextDit(_) => KNOWN_CLASSES[0].0,
            Self::Lumina2(_) => KNOWN_CLASSES[1].0,
        }
    }
}

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

    /// Loads a diffusers transformer folder (`config.json` + safetensors), computing in `dtype`.
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = TransformerConfig::read_dir(dir)?;
        Self::load(&cfg, &Weights::from_dir(dir, dtype, device)?)
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
