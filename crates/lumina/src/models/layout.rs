//! Which checkpoint layout a set of weight files is in, so that one model reads them all: a
//! diffusers folder, upstream Lumina-Next (`consolidated*.safetensors`), upstream
//! Lumina-Image-2.0, each possibly under ComfyUI's `model.diffusion_model.` prefix, and
//! ComfyUI's all-in-one checkpoints that hold the text encoder and VAE beside the transformer.
//!
//! Detection keys: diffusers `loaders/single_file_utils.py` (`CHECKPOINT_KEY_NAMES["lumina2"]`
//! = `cap_embedder.0.weight`), peers.md §1.2 and §4.

use std::sync::Arc;

use super::{lumina2, next_dit, TransformerConfig};
use crate::error::{Error, Result};
use crate::weights::key_map::prefixed;
use crate::weights::{KeyMap, WeightFiles};

/// diffusers prefix → upstream prefix of the embedders and the final layer, named alike by
/// Lumina-T2X and Lumina-Image-2.0 (`t_embedder`, `cap_embedder`, `final_layer`).
pub(crate) const UPSTREAM_EMBEDDERS: [(&str, &str); 5] = [
    (
        "time_caption_embed.timestep_embedder.linear_1.",
        "t_embedder.mlp.0.",
    ),
    (
        "time_caption_embed.timestep_embedder.linear_2.",
        "t_embedder.mlp.2.",
    ),
    ("time_caption_embed.caption_embedder.", "cap_embedder."),
    ("norm_out.linear_1.", "final_layer.adaLN_modulation.1."),
    ("norm_out.linear_2.", "final_layer.linear."),
];

/// Key prefixes under which single-file checkpoints keep the transformer.
const TRANSFORMER_PREFIXES: [&str; 3] = ["", "model.diffusion_model.", "diffusion_model."];

/// The other parts of ComfyUI all-in-one checkpoints, by key prefix.
const OTHER_PARTS: [(&str, &str); 5] = [
    ("text_encoders.", "text encoder"),
    ("cond_stage_model.", "text encoder"),
    ("conditioner.", "text encoder"),
    ("first_stage_model.", "VAE"),
    ("vae.", "VAE"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// diffusers names: the model's own.
    Diffusers,
    /// Lumina-T2X `lumina_next_t2i` names.
    NextDitOriginal,
    /// Lumina-Image-2.0 `models/model.py` names (fused `attention.qkv`).
    Lumina2Original,
}

/// The layout of a set of weight files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub kind: LayoutKind,
    /// The key prefix of the transformer's tensors (`model.diffusion_model.` in ComfyUI files).
    pub prefix: String,
    /// Other models in the same files (an all-in-one checkpoint): (what, key prefix, tensors).
    pub other_parts: Vec<(&'static str, &'static str, usize)>,
}

impl Layout {
    pub fn detect(files: &WeightFiles) -> Self {
        let has = |key: String| files.info(&key).is_some();
        let found = TRANSFORMER_PREFIXES.iter().find_map(|p| {
            if has(format!("{p}layers.0.attention.qkv.weight"))
                && has(format!("{p}x_embedder.weight"))
            {
                Some((LayoutKind::Lumina2Original, *p))
            } else if next_dit::original::is_original_layout(files, p) {
                Some((LayoutKind::NextDitOriginal, *p))
            } else if !p.is_empty() && has(format!("{p}x_embedder.weight")) {
                Some((LayoutKind::Diffusers, *p))
            } else {
                None
            }
        });
        let (kind, prefix) = found.unwrap_or((LayoutKind::Diffusers, ""));
        let other_parts = OTHER_PARTS
            .iter()
            .filter_map(|&(p, what)| {
                let n = files.keys().filter(|k| k.starts_with(p)).count();
                (n > 0).then_some((what, p, n))
            })
            .collect();
        Self {
            kind,
            prefix: prefix.to_string(),
            other_parts,
        }
    }

    /// Whether the files carry no config of their own: the config is read off the shapes.
    pub fn is_upstream(&self) -> bool {
        self.kind != LayoutKind::Diffusers
    }

    /// The configuration an upstream checkpoint implies (they carry none).
    pub fn infer_config(&self, files: &WeightFiles) -> Result<TransformerConfig> {
        let shapes = Shapes {
            files,
            prefix: &self.prefix,
        };
        match self.kind {
            LayoutKind::NextDitOriginal => Ok(TransformerConfig::NextDit(
                next_dit::original::infer_config(&shapes)?,
            )),
            LayoutKind::Lumina2Original => Ok(TransformerConfig::Lumina2(
                lumina2::original::infer_config(&shapes)?,
            )),
            LayoutKind::Diffusers => Err(Error::Config {
                path: shapes.first_path(),
                reason: "diffusers-named weights carry no shapes to infer a config from; \
                         put their config.json next to them"
                    .into(),
            }),
        }
    }

    /// The key map that reads these files for a model of `cfg`, or an error when the files
    /// hold the other family.
    pub fn key_map(
        &self,
        cfg: &TransformerConfig,
        files: &WeightFiles,
    ) -> Result<Option<Arc<dyn KeyMap>>> {
        let inner = match (self.kind, cfg) {
            (LayoutKind::Diffusers, _) => None,
            (LayoutKind::NextDitOriginal, TransformerConfig::NextDit(_)) => {
                Some(next_dit::original::key_map())
            }
            (LayoutKind::Lumina2Original, TransformerConfig::Lumina2(c)) => {
                Some(lumina2::original::key_map(c))
            }
            (kind, cfg) => {
                return Err(Error::Config {
                    path: files.paths().next().map(Into::into).unwrap_or_default(),
                    reason: format!(
                        "the weights are an upstream {} checkpoint but the config is a {}",
                        match kind {
                            LayoutKind::NextDitOriginal => "Lumina-Next",
                            _ => "Lumina-Image-2.0",
                        },
                        cfg.class_name()
                    ),
                })
            }
        };
        Ok(prefixed(&self.prefix, inner))
    }

    /// The other parts of an all-in-one file, for messages: "text encoder (283 tensors under
    /// `text_encoders.`), VAE (244 under `first_stage_model.`)".
    pub fn describe_other_parts(&self) -> Option<String> {
        if self.other_parts.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .other_parts
            .iter()
            .map(|(what, prefix, n)| format!("{what} ({n} tensors under `{prefix}`)"))
            .collect();
        Some(parts.join(", "))
    }
}

/// Tensor shapes of an upstream checkpoint, its keys under a prefix: what configs are inferred
/// from.
pub struct Shapes<'a> {
    files: &'a WeightFiles,
    prefix: &'a str,
}

impl Shapes<'_> {
    pub fn get(&self, key: &str) -> Result<Vec<usize>> {
        let full = format!("{}{key}", self.prefix);
        self.files
            .info(&full)
            .map(|i| i.shape.clone())
            .ok_or_else(|| Error::MissingTensor {
                key: full,
                files: self.files.describe(),
            })
    }

    /// The length of `key`'s axis `axis`, or an error naming the key and the shape it has.
    pub fn dim(&self, key: &str, axis: usize) -> Result<usize> {
        let shape = self.get(key)?;
        shape.get(axis).copied().ok_or_else(|| Error::Config {
            path: self.first_path(),
            reason: format!(
                "tensor `{}{key}` has shape {shape:?}; expected at least {} axes",
                self.prefix,
                axis + 1
            ),
        })
    }

    pub fn has(&self, key: &str) -> bool {
        self.files.info(&format!("{}{key}", self.prefix)).is_some()
    }

    /// How many consecutive `i` from 0 have `{stem}.{i}.{leaf}`.
    pub fn count(&self, stem: &str, leaf: &str) -> usize {
        (0..)
            .take_while(|i| self.has(&format!("{stem}.{i}.{leaf}")))
            .count()
    }

    pub fn first_path(&self) -> std::path::PathBuf {
        self.files
            .paths()
            .next()
            .map(Into::into)
            .unwrap_or_default()
    }

    /// "cannot infer X" with the way out.
    pub fn cannot(&self, what: &str) -> Error {
        Error::Config {
            path: self.first_path(),
            reason: format!(
                "cannot infer {what} from the tensor shapes; put a diffusers config.json next to the weights"
            ),
        }
    }
}
