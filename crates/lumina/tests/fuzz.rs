//! Bounded mutation fuzzing of the loaders that read user files: safetensors, GGUF, LoRA and
//! config.json. Each target starts from a valid file of the fixtures (the corpus), applies
//! seeded mutations — bytes overwritten in the header, random truncation, inserted bytes —
//! and must answer every input with `Ok` or an error: a panic is a failure that prints the
//! target, the seed and where the input was written. `LUMINA_FUZZ_ITERATIONS` runs longer
//! than the default (README, Tests).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::DType;
use lumina::config::ConfigFile;
use lumina::lora::LoraFile;
use lumina::weights::WeightFiles;
use lumina::{Transformer, TransformerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::fixture_root;

fn iterations() -> usize {
    std::env::var("LUMINA_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// One seeded mutation of `valid`: most often bytes of the first 4 KiB (headers) overwritten,
/// else a truncation or inserted bytes.
fn mutate(valid: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    match rng.gen_range(0..10) {
        0..=5 => {
            let head = bytes.len().min(4096);
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..head);
                bytes[i] = match rng.gen_range(0..3) {
                    0 => rng.gen(),
                    1 => 0xff,
                    _ => bytes[i].wrapping_add(1),
                };
            }
        }
        6 | 7 => bytes.truncate(rng.gen_range(0..bytes.len())),
        _ => {
            let at = rng.gen_range(0..bytes.len());
            let extra: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
            bytes.splice(at..at, extra);
        }
    }
    bytes
}

/// Runs `target` on mutations of `corpus` written to `name` in a temporary folder.
fn fuzz(name: &str, corpus: &Path, target: impl Fn(&Path)) -> Result<()> {
    let valid = std::fs::read(corpus)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(name);
    for seed in 0..iterations() as u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        std::fs::write(&path, mutate(&valid, &mut rng))?;
        if catch_unwind(AssertUnwindSafe(|| target(&path))).is_err() {
            let kept: PathBuf = std::env::temp_dir().join(format!("lumina-fuzz-{name}-{seed}"));
            std::fs::copy(&path, &kept)?;
            bail!(
                "{name}: mutation seed {seed} of {} panicked; the input is at {}",
                corpus.display(),
                kept.display()
            );
        }
    }
    Ok(())
}

fn formats() -> PathBuf {
    fixture_root().join("lumina2_formats/tiny")
}

#[test]
fn safetensors_and_gguf_readers_never_panic() -> Result<()> {
    let open_and_load = |path: &Path| {
        // the reader, then the model through every key it maps
        if WeightFiles::open(&[path.to_path_buf()]).is_ok() {
            let _ = Transformer::load_path(path, DType::F32, &candle_core::Device::Cpu);
        }
    };
    fuzz(
        "original.safetensors",
        &formats().join("original.safetensors"),
        open_and_load,
    )?;
    fuzz(
        "model.gguf",
        &formats().join("model-Q4_0.gguf"),
        open_and_load,
    )?;
    fuzz(
        "model.gguf",
        &formats().join("model-Q8_0.gguf"),
        open_and_load,
    )
}

#[test]
fn lora_reader_never_panics() -> Result<()> {
    for file in ["lora_kohya.safetensors", "lora_original.safetensors"] {
        fuzz(file, &formats().join(file), |path| {
            let _ = LoraFile::open(path);
        })?;
    }
    Ok(())
}

#[test]
fn config_reader_never_panics() -> Result<()> {
    fuzz(
        "config.json",
        &formats().join("transformer/config.json"),
        |path| {
            if let Ok(file) = ConfigFile::read(path) {
                let _ = TransformerConfig::from_file(&file);
            }
        },
    )
}
