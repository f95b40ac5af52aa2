//! The shipped models (`models/shapes/`, `models/shapes-ternary/` and `models/shapes-video/` in
//! the repository),
//! compiled into the binary so that `lumina generate` works with no download and no checkout.
//! The loaders read folders, so the files are written once to a cache folder named by their
//! content hash and reused.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Relative path and bytes of every file of a shipped pipeline folder under `models/`.
macro_rules! pipeline_files {
    ($name:literal) => {
        &[
            pipeline_files!(@file $name, "model_index.json"),
            pipeline_files!(@file $name, "transformer/config.json"),
            pipeline_files!(@file $name, "transformer/diffusion_pytorch_model.safetensors"),
            pipeline_files!(@file $name, "text_encoder/config.json"),
            pipeline_files!(@file $name, "text_encoder/model.safetensors"),
            pipeline_files!(@file $name, "tokenizer/vocab.json"),
            pipeline_files!(@file $name, "scheduler/scheduler_config.json"),
            pipeline_files!(@file $name, "train_config.toml"),
        ]
    };
    (@file $name:literal, $file:literal) => {
        (
            $file,
            include_bytes!(concat!("../../../models/", $name, "/", $file)),
        )
    };
}

/// The models compiled into the binary, selected by name with `--model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltIn {
    /// The full-precision `shapes` model, the default.
    Shapes,
    /// The same task trained with TerDiT's ternary QAT and stored 2-bit packed.
    ShapesTernary,
    /// Text to video on the `shapes-video` task: 8-frame clips of one moving object.
    ShapesVideo,
}

impl BuiltIn {
    pub const ALL: [Self; 3] = [Self::Shapes, Self::ShapesTernary, Self::ShapesVideo];

    /// The `--model` name, also the folder under `models/` in the repository.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shapes => "shapes",
            Self::ShapesTernary => "shapes-ternary",
            Self::ShapesVideo => "shapes-video",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// What the generation metadata calls the model.
    pub fn display_name(self) -> String {
        format!("lumina built-in {}", self.name())
    }

    fn files(self) -> &'static [(&'static str, &'static [u8])] {
        match self {
            Self::Shapes => pipeline_files!("shapes"),
            Self::ShapesTernary => pipeline_files!("shapes-ternary"),
            Self::ShapesVideo => pipeline_files!("shapes-video"),
        }
    }

    /// The folder holding the model, extracting it on first use.
    pub fn dir(self) -> Result<PathBuf> {
        let root = cache_root();
        let dir = root.join(format!(
            "{}-{:016x}",
            self.name(),
            content_hash(self.files())
        ));
        if dir.join(COMPLETE_MARKER).is_file() {
            return Ok(dir);
        }
        extract(self.files(), &root, &dir).with_context(|| {
            format!(
                "writing the built-in model to {} (set LUMINA_CACHE_DIR to another folder)",
                dir.display()
            )
        })?;
        tracing::info!(path = %dir.display(), "built-in model extracted");
        Ok(dir)
    }
}

/// Written last: a folder without it is an interrupted extraction and is redone.
const COMPLETE_MARKER: &str = ".complete";

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
fn extract(files: &[(&str, &[u8])], root: &Path, dir: &Path) -> Result<()> {
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
    for (name, bytes) in files {
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
fn content_hash(files: &[(&str, &[u8])]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, bytes) in files {
        eat(name.as_bytes());
        eat(&(bytes.len() as u64).to_le_bytes());
        eat(bytes);
    }
    h
}
