//! A transformer's parameters under its family's upstream names, whatever layout it was read
//! from: what GGUF files store (ComfyUI-GGUF keeps upstream names), fused tensors such as
//! Lumina-Image-2.0's `attention.qkv` put back together from their parts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Tensor};

use super::{Transformer, TransformerConfig};
use crate::error::{Error, Result};
use crate::weights::{KeyMap, Stored, Weights};

/// A key map that remembers every model key asked for: the model's own parameter list.
struct Recording {
    inner: Option<Arc<dyn KeyMap>>,
    seen: Mutex<Vec<String>>,
}

impl KeyMap for Recording {
    fn locate(&self, key: &str) -> Stored {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key.to_string());
        match &self.inner {
            Some(inner) => inner.locate(key),
            None => Stored::whole(key),
        }
    }
}

/// The transformer at `path` (a folder or a file, any layout) as (upstream name, tensor) pairs
/// in the stored dtypes (block-quantised ones dequantised), sorted by name, with its config.
pub fn upstream_tensors(path: &Path) -> Result<(TransformerConfig, Vec<(String, Tensor)>)> {
    let dev = Device::Cpu;
    let (cfg, audit) = Transformer::open_dir(path, |f| Weights::audit(f, &dev))?;
    let recording = Arc::new(Recording {
        inner: audit.key_map().cloned(),
        seen: Mutex::default(),
    });
    Transformer::load(&cfg, &audit.clone().with_key_map(recording.clone()))?;
    let mut keys = std::mem::take(
        &mut *recording
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    // the loader also asks after keys that are absent (is this layer stored ternary?)
    keys.retain(|k| audit.contains(k));
    keys.dedup();
    if let Some(packed) = keys.iter().find(|k| k.ends_with(crate::nn::PACKED_KEY)) {
        return Err(Error::input(
            "checkpoint to export",
            "full-precision weights",
            format!("a ternary checkpoint (`{packed}`); export the model it was quantised from"),
        ));
    }
    let (_, weights) = Transformer::open_dir(path, |f| Weights::from_files(f, DType::F32, &dev))?;
    let upstream = cfg.upstream_key_map();
    // upstream key → its parts by first row (one part for an unfused tensor)
    let mut parts: BTreeMap<String, (usize, BTreeMap<usize, Tensor>)> = BTreeMap::new();
    for key in keys {
        let target = upstream.locate(&key);
        let (start, total) = target
            .rows
            .as_ref()
            .map_or((0, 0), |r| (r.range.start, r.total));
        let entry = parts
            .entry(target.key.clone())
            .or_insert((total, BTreeMap::new()));
        if entry.1.contains_key(&start) {
            continue; // one upstream tensor read twice (Lumina-Next's shared `wq`)
        }
        entry.1.insert(start, weights.get_any(&key)?);
    }
    let mut out = Vec::with_capacity(parts.len());
    for (key, (total, pieces)) in parts {
        let pieces: Vec<Tensor> = pieces.into_values().collect();
        let tensor = if pieces.len() == 1 {
            pieces
                .into_iter()
                .next()
                .ok_or_else(|| Error::MissingTensor {
                    key: key.clone(),
                    files: path.display().to_string(),
                })?
        } else {
            Tensor::cat(&pieces, 0)?
        };
        if total != 0 && tensor.dim(0)? != total {
            return Err(Error::TensorShape {
                key,
                file: path.to_path_buf(),
                expected: vec![total],
                got: tensor.dims().to_vec(),
            });
        }
        out.push((key, tensor));
    }
    Ok((cfg, out))
}
