//! Fuzz targets for every loader that reads a user's file: safetensors files and sharded
//! indexes, GGUF, config.json and the other JSON configs of a model folder, LoRA files (read
//! and mapped onto a model's layers), PNG/APNG input and `lumina serve`'s request bodies. Each target takes arbitrary bytes,
//! puts them where its loader looks, and must answer with `Ok` or an error — a panic is the
//! bug. Two drivers run the same targets over the corpus in `fuzz/corpus/<target>/`:
//! `tests/bounded.rs` (seeded mutations, a few seconds per target in `cargo test`) and
//! cargo-fuzz (`fuzz/`, libFuzzer, for long runs; README, Fuzzing). A crash input found by
//! either is kept under `fuzz/regressions/<target>/`, which the bounded run replays.

mod scratch;
mod targets;

use std::path::{Path, PathBuf};

pub use targets::{Outcome, TARGETS};

/// One loader under fuzzing.
pub struct Target {
    /// The name of its corpus folder and cargo-fuzz target.
    pub name: &'static str,
    /// The file name its bytes are written under (loaders dispatch on names).
    pub file_name: &'static str,
    run: fn(&Path) -> Outcome,
}

impl Target {
    /// Runs the loader on `data` and returns its answer; it panics only where the loader does.
    pub fn run(&self, data: &[u8]) -> Outcome {
        let path = scratch::write(self.name, self.file_name, data);
        (self.run)(&path)
    }

    /// The seed inputs of this target in the repository, sorted by name.
    pub fn corpus(&self) -> std::io::Result<Vec<PathBuf>> {
        files_in(&repo_fuzz_dir().join("corpus").join(self.name))
    }

    /// The crash inputs found so far (each fixed; replayed as regression tests).
    pub fn regressions(&self) -> std::io::Result<Vec<PathBuf>> {
        let dir = repo_fuzz_dir().join("regressions").join(self.name);
        if dir.is_dir() {
            files_in(&dir)
        } else {
            Ok(Vec::new())
        }
    }
}

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// `fuzz/` at the repository root.
pub fn repo_fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    files.retain(|p| p.is_file());
    files.sort();
    Ok(files)
}
