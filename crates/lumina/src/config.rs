//! Reading a diffusers `config.json` strictly: every key must be one this build understands
//! (keys starting with `_` are diffusers metadata), every value in its allowed range.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A model folder's parsed `config.json`.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// `_class_name`, e.g. `LuminaNextDiT2DModel`.
    pub class_name: Option<String>,
    /// Every key, metadata included, as written.
    pub raw: Map<String, Value>,
}

impl ConfigFile {
    /// Reads `dir/config.json`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(Error::MissingConfig {
                dir: dir.to_path_buf(),
            });
        }
        Self::read(&path)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("invalid JSON: {e}"),
        })?;
        Self::from_value(path, value)
    }

    /// A config given as JSON rather than read from a file (a built-in preset); `path` names
    /// where it came from in errors.
    pub fn from_value(path: &Path, value: Value) -> Result<Self> {
        let Value::Object(raw) = value else {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: "expected a JSON object".into(),
            });
        };
        let class_name = raw
            .get("_class_name")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Self {
            path: path.to_path_buf(),
            class_name,
            raw,
        })
    }

    /// Deserializes the non-metadata keys into `T` (which denies unknown fields); the error
    /// names the file and the offending key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        let fields: Map<String, Value> = self
            .raw
            .iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
            let path = e.path().to_string();
            let reason = if path == "." {
                e.inner().to_string()
            } else {
                format!("`{path}`: {}", e.inner())
            };
            Error::Config {
                path: self.path.clone(),
                reason,
            }
        })
    }

    /// Parses and validates: a value out of range is reported against this file.
    pub fn parse_valid<T: DeserializeOwned + Validate>(&self) -> Result<T> {
        let cfg: T = self.parse()?;
        cfg.validate().map_err(|e| Error::Config {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        Ok(cfg)
    }
}

/// Range checks of a configuration.
pub trait Validate {
    fn validate(&self) -> Result<()>;
}

/// The sizes both transformer families share, checked in one place.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DitDims {
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_kv_heads: usize,
    pub multiple_of: usize,
    pub ffn_dim_multiplier: Option<f64>,
    pub norm_eps: f64,
}

impl DitDims {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Width of the timestep/caption conditioning vector: min(hidden, 1024).
    pub fn cond_dim(&self) -> usize {
        self.hidden_size.min(1024)
    }

    pub fn validate(&self) -> Result<()> {
        at_least("sample_size", self.sample_size, 1)?;
        at_least("patch_size", self.patch_size, 1)?;
        at_least("in_channels", self.in_channels, 1)?;
        at_least("num_attention_heads", self.num_attention_heads, 1)?;
        at_least("hidden_size", self.hidden_size, 1)?;
        divisible(
            "hidden_size",
            self.hidden_size,
            self.num_attention_heads,
            "num_attention_heads",
        )?;
        at_least("num_kv_heads", self.num_kv_heads, 1)?;
        divisible(
            "num_attention_heads",
            self.num_attention_heads,
            self.num_kv_heads,
            "num_kv_heads",
        )?;
        at_least("multiple_of", self.multiple_of, 1)?;
        if let Some(m) = self.ffn_dim_multiplier {
            positive("ffn_dim_multiplier", m)?;
        }
        positive("norm_eps", self.norm_eps)
    }
}

/// `value >= min` or an [`Error::InvalidConfig`] naming `field`.
pub(crate) fn at_least(field: &'static str, value: usize, min: usize) -> Result<()> {
    if value < min {
        return Err(Error::invalid_config(
            field,
            value,
            format!("must be >= {min}"),
        ));
    }
    Ok(())
}

/// A finite, strictly positive float.
fn positive(field: &'static str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::invalid_config(
            field,
            value,
            "must be finite and > 0",
        ));
    }
    Ok(())
}

/// `value % divisor == 0`.
fn divisible(field: &'static str, value: usize, divisor: usize, by: &str) -> Result<()> {
    if divisor == 0 || !value.is_multiple_of(divisor) {
        return Err(Error::invalid_config(
            field,
            value,
            format!("must be a multiple of {by} ({divisor})"),
        ));
    }
    Ok(())
}
