//! What a model folder or file holds: for a diffusers pipeline folder (`model_index.json`), a
//! single model folder (`config.json`) or one weights file, each component's class, config,
//! parameter count, stored dtypes, and — for the models this build implements — the tensors
//! it lacks, misshapes or leaves unused. Nothing is computed and no weight data is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;
use serde_json::{Map, Value};

use lumina::config::ConfigFile;
use lumina::models::layout::{Layout, LayoutKind};
use lumina::models::{Family, Transformer, EMBEDDED_CONFIG, KNOWN_CLASSES};
use lumina::weights::{WeightFiles, Weights};

use crate::error::Result;
use crate::pixel_model::{read_word_encoder_config, WORD_ENCODER_CLASS};
use crate::text_encoder::{EncoderConfig, GemmaEncoder, WordEncoder};
use crate::vae::Vae;

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    /// `_class_name` of `model_index.json`, for a pipeline folder.
    pub pipeline_class: Option<String>,
    pub components: Vec<Component>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Component {
    /// The component's name in `model_index.json` (`transformer`, `vae`, …), or the folder name.
    pub name: String,
    pub path: PathBuf,
    /// The library `model_index.json` names (`diffusers`, `transformers`).
    pub library: Option<String>,
    pub class_name: Option<String>,
    /// The component's config file, as written.
    pub config: Option<Map<String, Value>>,
    pub weights: Option<WeightSummary>,
    /// Present when this build implements the class.
    pub keys: Option<KeyAudit>,
    /// What could not be looked at, and why.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WeightSummary {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
    /// Parameters stored in each dtype (ternary weights under `ternary`, 4 per packed byte;
    /// GGUF block quantisations under their names, `q8_0` …).
    pub dtypes: BTreeMap<String, u64>,
    /// Ternary (2-bit packed) layers, when the file has any.
    pub ternary: Option<TernarySummary>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TernarySummary {
    pub layers: usize,
    /// Ternary weights (the dense matrices' element count, padding included).
    pub weights: u64,
    /// Bytes of the packed codes.
    pub packed_bytes: u64,
    /// What the same matrices would take in bf16.
    pub bf16_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KeyAudit {
    pub missing: Vec<String>,
    /// (key, expected shape, stored shape).
    pub misshapen: Vec<(String, Vec<usize>, Vec<usize>)>,
    pub unused: Vec<String>,
}

impl Component {
    /// A component with nothing looked at yet.
    fn new(name: String, path: &Path, library: Option<&str>) -> Self {
        Self {
            name,
            path: path.to_path_buf(),
            library: library.map(str::to_string),
            class_name: None,
            config: None,
            weights: None,
            keys: None,
            notes: Vec::new(),
        }
    }
}

impl KeyAudit {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.misshapen.is_empty() && self.unused.is_empty()
    }
}

/// Config files a diffusers/transformers component folder may hold, in lookup order.
const CONFIG_FILES: [&str; 3] = [
    "config.json",
    "scheduler_config.json",
    "tokenizer_config.json",
];

/// Inspects a pipeline folder, a model folder, or one weights file.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    if dir.is_file() {
        return inspect_file(dir);
    }
    let index = dir.join("model_index.json");
    if index.is_file() {
        return inspect_pipeline(dir, &index);
    }
    if dir.join("config.json").is_file() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(Inspection {
            path: dir.to_path_buf(),
            pipeline_class: None,
            components: vec![inspect_component(&name, dir, None)],
        });
    }
    if !dir.is_dir() {
        return Err(lumina::Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        }
        .into());
    }
    Err(lumina::Error::MissingConfig {
        dir: dir.to_path_buf(),
    }
    .into())
}

/// One weights file (safetensors or GGUF): its tensors summarised, its class and config from
/// a `config.json` beside it, and the key audit where this build implements the class — or,
/// for an upstream Lumina checkpoint without a config (ComfyUI's included), the one the loader
/// infers.
fn inspect_file(path: &Path) -> Result<Inspection> {
    let files = WeightFiles::open(&[path.to_path_buf()])?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut component = Component::new(name, path, None);
    component.weights = Some(summarize(&files));
    read_config(&mut component, dir);
    if files.keys().any(|k| k.contains(".lora_")) {
        match lumina::lora::LoraFile::open(path) {
            Ok(lora) => component.notes.push(format!(
                "a LoRA in the {:?} layout: {} layers, rank {}; apply it with `generate --lora`",
                lora.layout(),
                lora.len(),
                lora.rank()
            )),
            Err(e) => component.notes.push(format!("not a usable LoRA: {e}")),
        }
        return Ok(Inspection {
            path: path.to_path_buf(),
            pipeline_class: None,
            components: vec![component],
        });
    }
    let layout = Layout::detect(&files);
    if let Some(parts) = layout.describe_other_parts() {
        component.notes.push(format!(
            "an all-in-one checkpoint: the transformer is under `{}`; it also holds a {parts}, \
             which lumina does not read from it",
            layout.prefix
        ));
    }
    if let (None, Some(text)) = (&component.class_name, files.metadata().get(EMBEDDED_CONFIG)) {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(raw)) => {
                component.class_name = raw
                    .get("_class_name")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                component.config = Some(raw);
                component.notes.push(format!(
                    "config from the file's `{EMBEDDED_CONFIG}` metadata"
                ));
            }
            _ => component
                .notes
                .push(format!("metadata `{EMBEDDED_CONFIG}` is not a JSON object")),
        }
    }
    if component.class_name.is_none() && layout.is_upstream() {
        let (family, name) = match layout.kind {
            LayoutKind::NextDitOriginal => (Family::NextDit, "Lumina-Next"),
            _ => (Family::Lumina2, "Lumina-Image-2.0"),
        };
        component.class_name = KNOWN_CLASSES
            .iter()
            .find(|(_, f)| *f == family)
            .map(|(class, _)| (*class).to_string());
        let prefix = match layout.prefix.as_str() {
            "" => String::new(),
            p => format!(" under `{p}`"),
        };
        component.notes.push(format!(
            "upstream {name} layout{prefix} without config.json: the config is inferred from \
             the tensor shapes"
        ));
    }
    match component.class_name.clone() {
        Some(class) => audit_keys(&mut component, &class, files, dir),
        None => component.notes.push(format!(
            "no key audit: no config.json beside the file in {} names its model class",
            dir.display()
        )),
    }
    Ok(Inspection {
        path: path.to_path_buf(),
        pipeline_class: None,
        components: vec![component],
    })
}

fn inspect_pipeline(dir: &Path, index: &Path) -> Result<Inspection> {
    let file = ConfigFile::read(index)?;
    let mut components = Vec::new();
    for (name, value) in &file.raw {
        if name.starts_with('_') {
            continue;
        }
        // `"vae": ["diffusers", "AutoencoderKL"]`; `[null, null]` marks an absent component.
        let Some([library, class]) = value
            .as_array()
            .and_then(|a| <&[Value; 2]>::try_from(a.as_slice()).ok())
        else {
            continue;
        };
        let (Some(library), Some(class)) = (library.as_str(), class.as_str()) else {
            continue;
        };
        let path = dir.join(name);
        let mut component = inspect_component(name, &path, Some(library));
        component.class_name = Some(class.to_string());
        components.push(component);
    }
    Ok(Inspection {
        path: dir.to_path_buf(),
        pipeline_class: file.class_name,
        components,
    })
}

fn inspect_component(name: &str, path: &Path, library: Option<&str>) -> Component {
    let mut component = Component::new(name.to_string(), path, library);
    if !path.is_dir() {
        component
            .notes
            .push(format!("missing folder {}", path.display()));
        return component;
    }
    read_config(&mut component, path);
    let has_safetensors = std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        })
        .unwrap_or(false);
    if !has_safetensors {
        let has_bin = std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".bin"))
            })
            .unwrap_or(false);
        if has_bin {
            component
                .notes
                .push("weights only as PyTorch .bin; convert them to safetensors".into());
        }
        return component;
    }
    match WeightFiles::open_dir(path) {
        Ok(files) => {
            component.weights = Some(summarize(&files));
            if let Some(class) = component.class_name.clone() {
                audit_keys(&mut component, &class, files, path);
            }
        }
        Err(e) => component.notes.push(e.to_string()),
    }
    component
}

/// The component's class and config from the first config file in `dir`.
fn read_config(component: &mut Component, dir: &Path) {
    let config = CONFIG_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .map(|p| ConfigFile::read(&p));
    match config {
        Some(Ok(file)) => {
            // diffusers writes `_class_name`, transformers `architectures`
            let architecture = file
                .raw
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(Value::as_str)
                .map(str::to_string);
            component.class_name = file.class_name.clone().or(architecture);
            component.config = Some(file.raw);
        }
        Some(Err(e)) => component.notes.push(e.to_string()),
        None => {}
    }
}

fn summarize(files: &WeightFiles) -> WeightSummary {
    let mut summary = WeightSummary {
        files: files.paths().map(Path::to_path_buf).collect(),
        tensors: 0,
        parameters: 0,
        bytes: 0,
        dtypes: BTreeMap::new(),
        ternary: None,
    };
    let mut ternary = TernarySummary::default();
    for key in files.keys() {
        let Some(info) = files.info(key) else {
            continue;
        };
        let n: u64 = info.shape.iter().map(|&d| d as u64).product();
        let bytes = info.bytes();
        summary.tensors += 1;
        summary.bytes += bytes;
        let (params, dtype) = if key.ends_with(lumina::nn::PACKED_KEY) {
            ternary.layers += 1;
            ternary.weights += 4 * n;
            ternary.packed_bytes += bytes;
            ternary.bf16_bytes += 8 * n;
            (4 * n, "ternary".to_string())
        } else {
            (n, info.format().to_lowercase())
        };
        summary.parameters += params;
        *summary.dtypes.entry(dtype).or_default() += params;
    }
    if ternary.layers > 0 {
        summary.ternary = Some(ternary);
    }
    summary
}

/// Text-encoder classes whose keys the Gemma encoder audits.
const ENCODER_CLASSES: [&str; 4] = [
    "GemmaModel",
    "GemmaForCausalLM",
    "Gemma2Model",
    "Gemma2ForCausalLM",
];
const VAE_CLASSES: [&str; 1] = ["AutoencoderKL"];

/// Builds the component's model in audit mode: every tensor it asks for is checked against
/// the files, and what it never asks for is unused. `config_dir` holds its config file.
fn audit_keys(component: &mut Component, class: &str, files: WeightFiles, config_dir: &Path) {
    let path = component.path.clone();
    let built: Result<Weights> = if KNOWN_CLASSES.iter().any(|(known, _)| *known == class) {
        // through the loader, so upstream layouts get their key map
        Transformer::open_dir(&path, |f| Weights::audit(f, &Device::Cpu))
            .map_err(Into::into)
            .and_then(|(cfg, w)| Ok(Transformer::load(&cfg, &w).map(|_| w)?))
    } else if ENCODER_CLASSES.contains(&class) {
        let weights = Weights::audit(files, &Device::Cpu);
        EncoderConfig::read(&config_dir.join("config.json"))
            .and_then(|cfg| GemmaEncoder::load(&cfg, &weights).map(|_| weights))
    } else if class == WORD_ENCODER_CLASS {
        let weights = Weights::audit(files, &Device::Cpu);
        read_word_encoder_config(config_dir)
            .and_then(|cfg| WordEncoder::load(&cfg, &weights).map(|_| weights))
            .map_err(Into::into)
    } else if VAE_CLASSES.contains(&class) {
        let weights = Weights::audit(files, &Device::Cpu);
        ConfigFile::read_dir(config_dir)
            .map_err(Into::into)
            .and_then(|file| {
                let cfg: crate::vae::VaeConfig = file.parse()?;
                Vae::check(&cfg, &file.path)?;
                Ok(cfg)
            })
            .and_then(|cfg| Vae::load(cfg, &weights).map(|_| weights))
    } else {
        component.notes.push(format!(
            "no key audit: this build does not implement {class}"
        ));
        return;
    };
    let weights = match built {
        Ok(w) => w,
        Err(e) => {
            component
                .notes
                .push(format!("building the model failed: {e}"));
            return;
        }
    };
    let mut audit = KeyAudit::default();
    for p in weights.problems() {
        match p.got {
            None => audit.missing.push(p.key),
            Some(got) => audit.misshapen.push((p.key, p.expected, got)),
        }
    }
    audit.unused = weights.unused_keys();
    component.keys = Some(audit);
}
