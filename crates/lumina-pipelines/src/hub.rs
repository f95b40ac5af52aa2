//! Resolving `--model` offline: a folder, or a Hugging Face repo id already in the local cache
//! (`models--org--name/snapshots/<commit>/…`). Nothing is ever downloaded.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// The hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (huggingface_hub's order).
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(dir.into());
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(Path::new(&home).join("hub"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/huggingface/hub"))
}

/// A model folder for `spec`: an existing path as is; else `org/name[@revision]` looked up in
/// the cache (the snapshot folder holding `model_index.json`, or `config.json` for a bare
/// model repo).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (spec, None),
    };
    let looks_like_repo = id.split('/').count() == 2
        && !id.starts_with('.')
        && !id.starts_with('/')
        && !id.contains('\\');
    if !looks_like_repo {
        return Err(lumina::Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or folder (nor an org/name repo id)",
            ),
        }
        .into());
    }
    let cache = cache_dir().ok_or_else(|| Error::NotCached {
        repo: spec.to_string(),
        cache: PathBuf::from("(no HOME, HF_HOME or HF_HUB_CACHE set)"),
    })?;
    let repo = match revision {
        Some(rev) => Repo::with_revision(id.to_string(), RepoType::Model, rev.to_string()),
        None => Repo::new(id.to_string(), RepoType::Model),
    };
    let cached = Cache::new(cache.clone()).repo(repo);
    ["model_index.json", "config.json"]
        .iter()
        .find_map(|f| cached.get(f))
        .and_then(|file| file.parent().map(Path::to_path_buf))
        .ok_or(Error::NotCached {
            repo: spec.to_string(),
            cache,
        })
}
