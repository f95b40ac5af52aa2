//! The shipped `shapes` model (`models/shapes/` in the repository), compiled into the binary so
//! that `lumina generate` works with no download and no checkout. The loaders read folders, so
//! the files are written once to a cache folder named by their content hash and reused.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Relative path and bytes of every file of the shipped pipeline folder.
const FILES: &[(&str, &[u8])] = &[
    (
        "model_index.json",
        include_bytes!("../../../models/shapes/model_index.json"),
    ),
    (
        "transformer/config.json",
        include_bytes!("../../../models/shapes/transformer/config.json"),
    ),
    (
        "transformer/diffusion_pytorch_model.safetensors",
        include_bytes!("../../../models/shapes/transformer/diffusion_pytorch_model.safetensors"),
    ),
    (
        "text_encoder/config.json",
        include_bytes!("../../../models/shapes/text_encoder/config.json"),
    ),
    (
        "text_encoder/model.safetensors",
        include_bytes!("../../../models/shapes/text_encoder/model.safetensors"),
    ),
    (
        "tokenizer/vocab.json",
        include_bytes!("../../../models/shapes/tokenizer/vocab.json"),
    ),
    (
        "scheduler/scheduler_config.json",
        include_bytes!("../../../models/shapes/scheduler/scheduler_config.json"),
    ),
    (
        "train_config.toml",
        include_bytes!("../../../models/shapes/train_config.toml"),
    ),
];

/// Written last: a folder without it is an interrupted extraction and is redone.
const COMPLETE_MARKER: &str = ".complete";

/// The folder holding the shipped model, extracting it on first use.
pub fn dir() -> Result<PathBuf> {
    let root = cache_root();
    let dir = root.join(format!("shapes-{:016x}", content_hash()));
    if dir.join(COMPLETE_MARKER).is_file() {
        return Ok(dir);
    }
    extract(&root, &dir).with_context(|| {
        format!(
            "writing the built-in model to {} (set LUMINA_CACHE_DIR to another folder)",
            dir.display()
        )
    })?;
    tracing::info!(path = %dir.display(), "built-in model extracted");
    Ok(dir)
}

/// `$LUMINA_CACHE_DIR`, else `$XDG_CACHE_HOME/lumina`, else `~/.cache/lumina`, else the
/// system temporary folder.
fn cache_root() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("LUMINA_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("lumina");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".cache").join("lumina");
    }
    std::env::temp_dir().join("lumina")
}

/// Writes into a private temporary folder, then renames it into place, so that concurrent
/// first runs never see a half-written model.
fn extract(root: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(root)?;
    let staging = root.join(format!(
        ".staging-{}-{}",
        std::process::id(),
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    for (name, bytes) in FILES {
        let path = staging.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes).with_context(|| path.display().to_string())?;
    }
    std::fs::write(staging.join(COMPLETE_MARKER), b"")?;
    if dir.exists() {
        // An interrupted extraction (no marker) or a concurrent one that just finished.
        if dir.join(COMPLETE_MARKER).is_file() {
            std::fs::remove_dir_all(&staging)?;
            return Ok(());
        }
        std::fs::remove_dir_all(dir)?;
    }
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.join(COMPLETE_MARKER).is_file() => Ok(std::fs::remove_dir_all(&staging)?),
        Err(e) => Err(e.into()),
    }
}

/// FNV-1a over names and contents: a new model gets a new folder.
fn content_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, bytes) in FILES {
        eat(name.as_bytes());
        eat(&(bytes.len() as u64).to_le_bytes());
        eat(bytes);
    }
    h
}
