//! The image operations of img2img and I-Max against their references, on the project's
//! fixture `tests/fixtures/imaging/encode_resize_haar` (made by `scripts/make_fixtures.py
//! imaging` with diffusers 0.42.1 / torch 2.15 / PyWavelets 1.8):
//! - the VAE encoder's posterior mean, shifted and scaled (diffusers `latent_dist.mode()`);
//! - bicubic resizing up and down (PyTorch `F.interpolate(mode="bicubic")`);
//! - the Haar low-pass at levels 1–3 (PyWavelets: decompose, zero the details, reconstruct).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use lumina::fixtures::max_abs_diff;
use lumina::resize::bicubic;
use lumina::sample::haar_lowpass;
use lumina_pipelines::vae::Vae;

fn case() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imaging/encode_resize_haar")
}

fn io() -> Result<HashMap<String, Tensor>> {
    let path = case().join("io.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))
}

fn get<'a>(io: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor> {
    io.get(key)
        .with_context(|| format!("io.safetensors has no `{key}`"))
}

/// In f32, and loaded in bf16 as a bf16 pipeline loads its VAE: the encoder still computes
/// in f32 (candle's CPU backend has no bf16 matmul), on the weights rounded to bf16: 4.6e-3
/// from diffusers' f32 latents when measured, bound 1.5e-2.
#[test]
fn vae_encoder_mean_matches_diffusers() -> Result<()> {
    let io = io()?;
    for (dtype, tolerance) in [(DType::F32, 1e-4), (DType::BF16, 1.5e-2)] {
        let vae = Vae::load_dir(&case().join("vae"), dtype, &Device::Cpu)?;
        let got = vae.encode(get(&io, "image")?)?;
        let want = get(&io, "latents")?;
        assert_eq!(got.dims(), want.dims());
        assert_eq!(got.dtype(), DType::F32, "{dtype:?}: latents in f32");
        let err = max_abs_diff(&got, want)?;
        assert!(
            err < tolerance,
            "VAE encode loaded in {dtype:?}: max abs error {err:.2e} against diffusers"
        );
    }
    Ok(())
}

#[test]
fn bicubic_matches_torch_up_and_down() -> Result<()> {
    let io = io()?;
    let small = get(&io, "small")?;
    for (key, (h, w)) in [("bicubic_up", (20, 30)), ("bicubic_down", (5, 7))] {
        let got = bicubic(small, h, w)?;
        let err = max_abs_diff(&got.to_dtype(DType::F64)?, get(&io, key)?)?;
        assert!(err < 1e-5, "{key}: max abs error {err:.2e} against torch");
    }
    Ok(())
}

#[test]
fn haar_lowpass_matches_pywavelets() -> Result<()> {
    let io = io()?;
    let field = get(&io, "field")?;
    for level in 1..=3 {
        let got = haar_lowpass(field, level)?;
        let err = max_abs_diff(&got, get(&io, &format!("haar_{level}"))?)?;
        assert!(
            err < 1e-9,
            "Haar level {level}: max abs error {err:.2e} against pywt"
        );
    }
    Ok(())
}
