//! Shared helpers of the fixture-driven tests.

#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use lumina::fixtures::case_dirs;

pub use lumina::fixtures::{fixture_root, max_abs_diff};

/// The project's own extra cases, made by `scripts/make_fixtures.py` with diffusers.
pub fn project_fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every case of `family` under the fixture root (an error when there is none).
pub fn cases(family: &str) -> Result<Vec<PathBuf>> {
    Ok(lumina::fixtures::cases(family)?)
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

/// The tiny fixture transformer of `family` (`nextdit`, `lumina2`), in f32 on the CPU.
pub fn tiny_model(family: &str) -> Result<lumina::Transformer> {
    Ok(lumina::Transformer::load_dir(
        &fixture_root().join(family).join("tiny_square/transformer"),
        candle_core::DType::F32,
        &Device::Cpu,
    )?)
}

/// A seeded random caption of `lens[i]` real tokens per row (width 32), right-padded to the
/// longest.
pub fn random_caption(lens: &[usize], seed: u64) -> Result<lumina::Caption> {
    use rand::SeedableRng;
    let longest = lens.iter().copied().max().unwrap_or(0);
    let features = lumina::sample::noise::gaussian(
        &[lens.len(), longest, 32],
        candle_core::DType::F32,
        &Device::Cpu,
        &mut rand::rngs::StdRng::seed_from_u64(seed),
    )?;
    let mask: Vec<u8> = lens
        .iter()
        .flat_map(|&n| (0..longest).map(move |j| u8::from(j < n)))
        .collect();
    Ok(lumina::Caption::new(
        features,
        Tensor::from_vec(mask, (lens.len(), longest), &Device::Cpu)?,
    )?)
}
