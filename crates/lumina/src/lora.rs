//! LoRA files in the three layouts Lumina users download, matched to a loaded model's layers:
//!
//! - upstream (Lumina-Image-2.0 / Lumina-T2X trainers): `diffusion_model.<upstream module>.
//!   lora_A/lora_B.weight`; a fused `attention.qkv` has one A shared by q, k, v and a B whose
//!   rows split like the weight's;
//! - diffusers / peft: `transformer.<diffusers module>.lora_A/lora_B.weight`;
//! - kohya (sd-scripts): `lora_unet_<upstream module, dots as underscores>.lora_down/lora_up.
//!   weight` and `.alpha`.
//!
//! Every update is ΔW = scale · (alpha / rank, when the file stores alpha) · B · A. Layouts:
//! `../shared/fixtures/README.md` (`lumina2_formats`); peft `tuners/lora/layer.py` (scaling =
//! alpha / r); kohya sd-scripts `networks/lora.py`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::nn::lora::{AdaptableLayer, Adapters, LoraDelta, LoraMode, LoraSlot};
use crate::weights::{FusedRows, KeyMap};

/// How a LoRA file names the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraLayout {
    /// Upstream module names (`attention.qkv`, `feed_forward.w1` …).
    Upstream,
    /// diffusers module names (`attn.to_q` …).
    Diffusers,
    /// kohya: upstream names with dots as underscores, `lora_down`/`lora_up` and `alpha`.
    Kohya,
    /// No prefix says: each module is looked up under both naming schemes.
    Unprefixed,
}

/// One layer's update as stored.
#[derive(Clone, Debug)]
struct Entry {
    /// The module name with the layout's prefix removed.
    module: String,
    /// The stored key of A, for messages.
    key: String,
    down: Tensor,
    up: Tensor,
    alpha: Option<f64>,
}

/// A layer's A (with its key), B and alpha as they are found.
type Halves = (Option<(String, Tensor)>, Option<Tensor>, Option<f64>);

/// A LoRA file, read and checked.
#[derive(Clone, Debug)]
pub struct LoraFile {
    path: PathBuf,
    layout: LoraLayout,
    entries: Vec<Entry>,
}

/// Key prefixes of each layout; the first match names the layout.
const PREFIXES: [(&str, LoraLayout); 7] = [
    ("lora_unet_", LoraLayout::Kohya),
    ("lora_transformer_", LoraLayout::Kohya),
    ("model.diffusion_model.", LoraLayout::Upstream),
    ("diffusion_model.", LoraLayout::Upstream),
    ("base_model.model.", LoraLayout::Diffusers),
    ("transformer.", LoraLayout::Diffusers),
    ("", LoraLayout::Unprefixed),
];

/// (suffix, is A) of the A/B tensors; `alpha` is separate.
const SUFFIXES: [(&str, bool); 4] = [
    (".lora_A.weight", true),
    (".lora_B.weight", false),
    (".lora_down.weight", true),
    (".lora_up.weight", false),
];

impl LoraFile {
    /// Reads a LoRA safetensors file.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut halves: BTreeMap<String, Halves> = BTreeMap::new();
        for (key, t) in &tensors {
            if key.starts_with("lora_te") || key.starts_with("text_encoder") {
                return Err(bad(format!(
                    "`{key}` updates a text encoder; lumina applies LoRA to the transformer only"
                )));
            }
            if let Some(stem) = key.strip_suffix(".alpha") {
                let alpha = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                let [alpha] = alpha[..] else {
                    return Err(bad(format!("`{key}` is not a single number")));
                };
                halves.entry(stem.to_string()).or_default().2 = Some(alpha);
                continue;
            }
            let Some((stem, is_a)) = SUFFIXES
                .iter()
                .find_map(|(suffix, is_a)| Some((key.strip_suffix(suffix)?, *is_a)))
            else {
                return Err(bad(format!(
                    "`{key}` is not a LoRA tensor (expected `*.lora_A.weight`, `*.lora_B.weight`, \
                     `*.lora_down.weight`, `*.lora_up.weight` or `*.alpha`)"
                )));
            };
            if t.rank() != 2 {
                return Err(bad(format!(
                    "`{key}` has shape {:?}; expected a matrix",
                    t.dims()
                )));
            }
            let slot = halves.entry(stem.to_string()).or_default();
            if is_a {
                slot.0 = Some((key.clone(), t.clone()));
            } else {
                slot.1 = Some(t.clone());
            }
        }
        if halves.is_empty() {
            return Err(bad("holds no LoRA tensors".into()));
        }
        let first = halves.keys().next().cloned().unwrap_or_default();
        let (prefix, layout) = PREFIXES
            .iter()
            .find(|(p, _)| first.starts_with(p))
            .copied()
            .unwrap_or(("", LoraLayout::Unprefixed));
        let mut entries = Vec::with_capacity(halves.len());
        for (stem, (a, b, alpha)) in halves {
            let (Some((key, down)), Some(up)) = (a, b) else {
                return Err(bad(format!(
                    "`{stem}` lacks its A (down) or its B (up) matrix"
                )));
            };
            let Some(module) = stem.strip_prefix(prefix) else {
                return Err(bad(format!(
                    "`{stem}` does not share the `{prefix}` prefix of the other layers"
                )));
            };
            let (rank, up_rank) = (down.dim(0)?, up.dim(1)?);
            if rank != up_rank || rank == 0 {
                return Err(bad(format!(
                    "`{stem}`: A has rank {rank} ({:?}) but B has {up_rank} ({:?})",
                    down.dims(),
                    up.dims()
                )));
            }
            entries.push(Entry {
                module: module.to_string(),
                key,
                down,
                up,
                alpha,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            layout,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> LoraLayout {
        self.layout
    }

    /// Layers the file updates.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The largest rank among its layers.
    pub fn rank(&self) -> usize {
        self.entries
            .iter()
            .filter_map(|e| e.down.dim(0).ok())
            .max()
            .unwrap_or(0)
    }
}

/// A registered layer, with the rows of a fused upstream tensor it is.
#[derive(Clone)]
struct Target {
    layer: AdaptableLayer,
    rows: Option<FusedRows>,
}

/// The model's layers under every name a LoRA file may use.
struct Names {
    diffusers: HashMap<String, Vec<Target>>,
    upstream: HashMap<String, Vec<Target>>,
    kohya: HashMap<String, Vec<Target>>,
}

fn layer_key(layer: &AdaptableLayer) -> String {
    match layer {
        AdaptableLayer::Slot(slot) => slot.key(),
        AdaptableLayer::Ternary(key) => key.clone(),
    }
}

impl Names {
    fn new(adapters: &Adapters, upstream: &dyn KeyMap) -> Self {
        let mut names = Self {
            diffusers: HashMap::new(),
            upstream: HashMap::new(),
            kohya: HashMap::new(),
        };
        for layer in adapters.layers() {
            let key = layer_key(&layer);
            let stored = upstream.locate(&format!("{key}.weight"));
            let module = stored
                .key
                .strip_suffix(".weight")
                .unwrap_or(&stored.key)
                .to_string();
            let rows = stored.rows;
            let whole = Target {
                layer: layer.clone(),
                rows: None,
            };
            let part = Target { layer, rows };
            names
                .diffusers
                .entry(key.clone())
                .or_default()
                .push(whole.clone());
            names
                .kohya
                .entry(key.replace('.', "_"))
                .or_default()
                .push(whole);
            names
                .kohya
                .entry(module.replace('.', "_"))
                .or_default()
                .push(part.clone());
            names.upstream.entry(module).or_default().push(part);
        }
        names
    }

    fn find(&self, layout: LoraLayout, module: &str) -> Option<&Vec<Target>> {
        match layout {
            LoraLayout::Upstream => self.upstream.get(module),
            LoraLayout::Diffusers => self.diffusers.get(module),
            LoraLayout::Kohya => self.kohya.get(module),
            LoraLayout::Unprefixed => self
                .upstream
                .get(module)
                .or_else(|| self.diffusers.get(module)),
        }
    }
}

/// A hint at the model a LoRA was made for, from the names it uses.
fn family_hint(module: &str) -> &'static str {
    if module.contains("attention.wq") || module.contains("attention_wq") {
        " (its names are Lumina-Next's)"
    } else if module.contains("attention.qkv") || module.contains("attention_qkv") {
        " (its names are Lumina-Image-2.0's)"
    } else if module.contains("down_blocks") || module.contains("double_blocks") {
        " (its names are a UNet's or Flux's)"
    } else {
        ""
    }
}

/// Replaces the LoRA updates of the model whose layers registered with `adapters` by `loras`
/// (file, scale; a negative scale subtracts), applied in `mode`; an empty list restores the
/// base model bit for bit. `upstream` is the model family's upstream key map (how upstream and
/// kohya files name the layers). Every layer of every file must match a layer of the model
/// with matching shapes; nothing changes on an error.
pub fn apply(
    adapters: &Adapters,
    upstream: &dyn KeyMap,
    loras: &[(Arc<LoraFile>, f64)],
    mode: LoraMode,
) -> Result<()> {
    let names = Names::new(adapters, upstream);
    let mut deltas: HashMap<*const LoraSlot, (Arc<LoraSlot>, Vec<LoraDelta>)> = HashMap::new();
    for (file, scale) in loras {
        if !scale.is_finite() {
            return Err(Error::input(
                "LoRA scale",
                "a finite number",
                scale.to_string(),
            ));
        }
        let bad = |reason: String| Error::Config {
            path: file.path.clone(),
            reason,
        };
        let matched = file
            .entries
            .iter()
            .filter(|e| names.find(file.layout, &e.module).is_some())
            .count();
        for entry in &file.entries {
            let Some(targets) = names.find(file.layout, &entry.module) else {
                let what = if matched == 0 {
                    format!(
                        "none of its {} layers matches a layer of this model (first: `{}`); it is a LoRA for another model{}",
                        file.entries.len(),
                        entry.key,
                        family_hint(&entry.module)
                    )
                } else {
                    format!(
                        "`{}` matches no layer of this model{}",
                        entry.key,
                        family_hint(&entry.module)
                    )
                };
                return Err(bad(what));
            };
            let rank = entry.down.dim(0)?;
            let factor = scale * entry.alpha.map_or(1.0, |a| a / rank as f64);
            for target in targets {
                let slot = match &target.layer {
                    AdaptableLayer::Slot(slot) => slot,
                    AdaptableLayer::Ternary(layer) => {
                        return Err(bad(format!(
                            "`{}` targets `{layer}`, a ternary layer: a low-rank update would make \
                             it dense again; merge the LoRA into the full-precision checkpoint and \
                             ternarise that (lumina quantize)",
                            entry.key
                        )))
                    }
                };
                let in_dim = entry.down.dim(1)?;
                if in_dim != slot.in_dim() {
                    return Err(bad(format!(
                        "`{}` has shape {:?}; layer `{}` takes {} inputs",
                        entry.key,
                        entry.down.dims(),
                        slot.key(),
                        slot.in_dim()
                    )));
                }
                let up_rows = entry.up.dim(0)?;
                let (rows, fused) = match &target.rows {
                    Some(f) => (f.range.clone(), f.total),
                    None => (0..up_rows, up_rows),
                };
                if up_rows != fused || rows.len() != slot.out_dim() {
                    return Err(bad(format!(
                        "the B (up) matrix of `{}` has {up_rows} rows; layer `{}` has {} outputs{}",
                        entry.module,
                        slot.key(),
                        slot.out_dim(),
                        match &target.rows {
                            Some(f) => format!(" (rows {:?} of a fused {})", f.range, f.total),
                            None => String::new(),
                        }
                    )));
                }
                let delta = LoraDelta {
                    down: entry.down.clone(),
                    up: entry.up.narrow(0, rows.start, rows.len())?,
                    scale: factor,
                };
                deltas
                    .entry(Arc::as_ptr(slot))
                    .or_insert_with(|| (slot.clone(), Vec::new()))
                    .1
                    .push(delta);
            }
        }
    }
    for layer in adapters.layers() {
        if let AdaptableLayer::Slot(slot) = layer {
            let updates = deltas
                .remove(&Arc::as_ptr(&slot))
                .map(|(_, d)| d)
                .unwrap_or_default();
            slot.set(updates, mode)?;
        }
    }
    Ok(())
}
