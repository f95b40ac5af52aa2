//! `lumina quantize`: a transformer checkpoint to GGUF block quantisation, or ternarised after
//! training.
//!
//! GGUF: the parameters under the family's upstream names (`models::export`), as ComfyUI-GGUF
//! stores them, with the config in the file's metadata so that no config.json is needed.
//!
//! Ternary:
//! Which layers become ternary is decided by the model code itself: the transformer is built
//! in audit mode (no weight read) with ternary layers requested, and every layer that asks
//! for it (`Linear::load_ternarizable`: attention, SwiGLU and adaLN linears of each block) is
//! packed; embedders, the final layer and norms stay as stored.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use lumina::models::export::upstream_tensors;
use lumina::models::EMBEDDED_CONFIG;
use lumina::weights::ternary::{pack_layers, save};
use lumina::weights::{gguf, WeightFiles, Weights};
use lumina::{Transformer, TransformerConfig};

use crate::cli::QuantizeArgs;
use crate::format;

const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

pub fn run(args: &QuantizeArgs) -> Result<()> {
    if let Some(kind) = args.to.strip_prefix("gguf-") {
        return to_gguf(args, kind);
    }
    if args.to != "ternary" {
        bail!(
            "--to {}: expected `ternary` or `gguf-` followed by one of {}",
            args.to,
            gguf_kinds()
        );
    }
    if args.output.exists() {
        bail!(
            "{} already exists: choose a new --output folder",
            args.output.display()
        );
    }
    let pipeline = args.input.join("model_index.json").is_file();
    let (source, target) = if pipeline {
        copy_tree(&args.input, &args.output, &args.input.join("transformer"))?;
        (
            args.input.join("transformer"),
            args.output.join("transformer"),
        )
    } else {
        (args.input.clone(), args.output.clone())
    };
    if !source.join("config.json").is_file() {
        bail!(
            "{} has no config.json: expected a diffusers pipeline folder or a transformer folder",
            source.display()
        );
    }
    let (cfg, audit) =
        Transformer::open_dir(&source, |f| Weights::audit(f, &Device::Cpu).with_ternary())
            .with_context(|| format!("reading {}", source.display()))?;
    Transformer::load(&cfg, &audit)?;
    let layers = audit.ternary_layers();
    let files = WeightFiles::open_dir(&source)?;
    if let Some(layer) = layers.iter().find(|l| {
        files.info(&format!("{l}.weight")).is_none()
            && files
                .info(&format!("{l}.{}", lumina::nn::PACKED_KEY))
                .is_none()
    }) {
        bail!(
            "{}: no `{layer}.weight`; quantize reads checkpoints in diffusers key layout",
            source.display()
        );
    }
    let dense_bytes: u64 = files
        .keys()
        .filter_map(|k| files.info(k))
        .map(|i| i.shape.iter().product::<usize>() as u64 * i.dtype.size_in_bytes() as u64)
        .sum();
    let tensors: HashMap<String, Tensor> = files
        .keys()
        .map(|k| Ok((k.to_string(), files.load(k, &Device::Cpu)?)))
        .collect::<Result<_>>()?;
    eprintln!(
        "ternarising {} layers of {}…",
        layers.len(),
        source.display()
    );
    let packed = pack_layers(&tensors, &layers)?;
    drop(tensors);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    std::fs::copy(source.join("config.json"), target.join("config.json"))?;
    let out = target.join(WEIGHTS_FILE);
    save(&packed, &out)?;
    let written = std::fs::metadata(&out)?.len();
    println!(
        "{}: {} ternary layers; weights {} → {}",
        args.output.display(),
        layers.len(),
        format::bytes(dense_bytes),
        format::bytes(written)
    );
    Ok(())
}

fn gguf_kinds() -> String {
    gguf::WRITABLE
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--to gguf-KIND`: one `.gguf` file of the input's transformer.
fn to_gguf(args: &QuantizeArgs, kind: &str) -> Result<()> {
    let Some(&(_, target)) = gguf::WRITABLE.iter().find(|(name, _)| *name == kind) else {
        bail!(
            "--to gguf-{kind}: unknown type; expected gguf- followed by one of {}",
            gguf_kinds()
        );
    };
    if args.output.exists() {
        bail!(
            "{} already exists: choose a new --output file",
            args.output.display()
        );
    }
    let source = if args.input.join("model_index.json").is_file() {
        args.input.join("transformer")
    } else {
        args.input.clone()
    };
    let (cfg, tensors) =
        upstream_tensors(&source).with_context(|| format!("reading {}", source.display()))?;
    let config = serde_json::to_string(&cfg.to_json()?)?;
    let architecture = match cfg {
        TransformerConfig::NextDit(_) => "lumina_next",
        TransformerConfig::Lumina2(_) => "lumina2",
    };
    let metadata = [
        ("general.architecture", architecture.to_string()),
        (
            "general.quantized_by",
            format!("lumina {}", env!("CARGO_PKG_VERSION")),
        ),
        (EMBEDDED_CONFIG, config),
    ];
    let dense_bytes: u64 = tensors
        .iter()
        .map(|(_, t)| t.elem_count() as u64 * t.dtype().size_in_bytes() as u64)
        .sum();
    let name = gguf::type_name(target);
    eprintln!("writing {} tensors as {name}…", tensors.len());
    gguf::write(&args.output, &tensors, target, &metadata)?;
    let written = std::fs::metadata(&args.output)?.len();
    println!(
        "{}: {} tensors, {name}; weights {} → {}",
        args.output.display(),
        tensors.len(),
        format::bytes(dense_bytes),
        format::bytes(written)
    );
    Ok(())
}

/// Copies `from` into `to` recursively, leaving out `skip` (the folder rewritten).
fn copy_tree(from: &Path, to: &Path, skip: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        if path == skip {
            continue;
        }
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &dest, skip)?;
        } else {
            std::fs::copy(&path, &dest)
                .with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
        }
    }
    Ok(())
}
