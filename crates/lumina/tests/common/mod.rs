//! Shared helpers of the fixture-driven tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// `$LUMINA_FIXTURES`, else `../shared/fixtures` next to the repository.
pub fn fixture_root() -> PathBuf {
    match std::env::var_os("LUMINA_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

/// The project's own extra cases, made by `scripts/make_fixtures.py` with diffusers.
pub fn project_fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Case folders (holding `call.json`) of `family` under `root`, sorted.
fn case_dirs(root: &Path, family: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join(family)) {
        for entry in entries {
            let path = entry?.path();
            if path.join("call.json").is_file() {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Every case of `family` under the fixture root. Fails loudly when there is none: a parity
/// test that checks nothing must not pass.
pub fn cases(family: &str) -> Result<Vec<PathBuf>> {
    let root = fixture_root();
    let found = case_dirs(&root, family)?;
    if found.is_empty() {
        bail!(
            "no fixture case under {} (set LUMINA_FIXTURES to the fixture root)",
            root.join(family).display()
        );
    }
    Ok(found)
}

/// The cases of [`cases`] followed by the project's own (which must exist too).
pub fn all_cases(family: &str) -> Result<Vec<PathBuf>> {
    let mut found = cases(family)?;
    let own = case_dirs(&project_fixture_root(), family)?;
    if own.is_empty() {
        bail!(
            "no project case under {}",
            project_fixture_root().join(family).display()
        );
    }
    found.extend(own);
    Ok(found)
}

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("loading {}", path.display()))
}

pub fn tensor<'a>(io: &'a HashMap<String, Tensor>, key: &str, case: &Path) -> Result<&'a Tensor> {
    io.get(key)
        .with_context(|| format!("{}: io.safetensors has no `{key}`", case.display()))
}

/// Max |a − b| over all elements, after checking the shapes agree.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
    if got.dims() != want.dims() {
        bail!("shape {:?}, expected {:?}", got.dims(), want.dims());
    }
    let d = (got.to_dtype(DType::F32)? - want.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}
