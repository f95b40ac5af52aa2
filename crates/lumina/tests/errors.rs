//! Bad input gets a clear error naming the problem — the file, the tensor key, the expected and
//! the actual shape, the allowed range — never a panic. One test per failure mode.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use lumina::{DitInput, Transformer, TransformerConfig};

use common::fixture_root;

/// A private copy of a fixture transformer folder, to break.
fn scratch_model(family: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let src = fixture_root().join(family).join("tiny_square/transformer");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("transformer");
    std::fs::create_dir(&dir)?;
    for entry in std::fs::read_dir(&src)? {
        let path = entry?.path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap_or_default()))?;
    }
    Ok((tmp, dir))
}

fn weights_file(dir: &Path) -> PathBuf {
    dir.join("diffusion_pytorch_model.safetensors")
}

fn load_err(dir: &Path) -> String {
    match Transformer::load_dir(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => {
            println!("{e}");
            e.to_string()
        }
    }
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> Result<()> {
    let path = weights_file(dir);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(())
}

fn edit_config(
    dir: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<()> {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    edit(cfg.as_object_mut().expect("config is an object"));
    std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
    Ok(())
}

#[test]
fn folder_without_config_json() -> Result<()> {
    let (_tmp, dir) = scratch_model("nextdit")?;
    std::fs::remove_file(dir.join("config.json"))?;
    let err = load_err(&dir);
    assert!(
        err.contains("no config.json") && err.contains(&dir.display().to_string()),
        "{err}"
    );
    Ok(())
}

#[test]
fn folder_without_weights() -> Result<()> {
    let (_tmp, dir) = scratch_model("nextdit")?;
    std::fs::remove_file(weights_file(&dir))?;
    let err = load_err(&dir);
    assert!(
        err.contains("has no weights") && err.contains("safetensors"),
        "{err}"
    );
    Ok(())
}

#[test]
fn missing_tensor_names_key_and_file() -> Result<()> {
    for family in ["nextdit", "lumina2"] {
        let (_tmp, dir) = scratch_model(family)?;
        let key = "layers.1.feed_forward.linear_2.weight";
        rewrite_weights(&dir, |t| {
            t.remove(key);
        })?;
        let err = load_err(&dir);
        assert!(
            err.contains(key)
                && err.contains("missing")
                && err.contains("diffusion_pytorch_model.safetensors"),
            "{err}"
        );
    }
    Ok(())
}

#[test]
fn wrong_shape_names_key_file_expected_and_got() -> Result<()> {
    let (_tmp, dir) = scratch_model("nextdit")?;
    let key = "layers.0.attn1.to_k.weight";
    rewrite_weights(&dir, |t| {
        let w = t[key].clone();
        t.insert(key.into(), w.narrow(0, 0, 32).expect("narrow"));
    })?;
    let err = load_err(&dir);
    assert!(
        err.contains(key) && err.contains("[64, 64]") && err.contains("[32, 64]"),
        "{err}"
    );
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    Ok(())
}

#[test]
fn truncated_safetensors_names_the_file() -> Result<()> {
    let (_tmp, dir) = scratch_model("lumina2")?;
    let path = weights_file(&dir);
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let err = load_err(&dir);
    assert!(
        err.contains("not a valid safetensors file") && err.contains(&path.display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("truncated") && err.contains(&format!("the file has {}", bytes.len() / 2)),
        "{err}"
    );
    // a header cut short is reported the same way
    std::fs::write(&path, &bytes[..20])?;
    let err = load_err(&dir);
    assert!(
        err.contains("not a valid safetensors file") && err.contains("truncated"),
        "{err}"
    );
    // and so is garbage
    std::fs::write(&path, b"this is not a checkpoint at all")?;
    let err = load_err(&dir);
    assert!(err.contains("not a valid safetensors file"), "{err}");
    Ok(())
}

#[test]
fn unknown_config_key_is_named() -> Result<()> {
    let (_tmp, dir) = scratch_model("lumina2")?;
    edit_config(&dir, |c| {
        c.insert("rope_theta".into(), 256.into());
    })?;
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("rope_theta") && err.contains("unknown field"),
        "{err}"
    );
    Ok(())
}

#[test]
fn invalid_config_values_name_field_and_range() -> Result<()> {
    let (_tmp, dir) = scratch_model("nextdit")?;
    edit_config(&dir, |c| {
        c.insert("num_attention_heads".into(), 5.into());
    })?;
    let err = load_err(&dir);
    assert!(
        err.contains("hidden_size") && err.contains("multiple of num_attention_heads"),
        "{err}"
    );

    edit_config(&dir, |c| {
        c.insert("num_attention_heads".into(), 4.into());
        c.insert("num_kv_heads".into(), 3.into());
    })?;
    let err = load_err(&dir);
    assert!(
        err.contains("num_attention_heads = 4") && err.contains("num_kv_heads"),
        "{err}"
    );

    edit_config(&dir, |c| {
        c.insert("num_kv_heads".into(), 4.into());
        c.insert("hidden_size".into(), "wide".into());
    })?;
    let err = load_err(&dir);
    assert!(
        err.contains("`hidden_size`") && err.contains("invalid type"),
        "{err}"
    );

    let (_tmp2, dir2) = scratch_model("lumina2")?;
    edit_config(&dir2, |c| {
        c.insert("axes_dim_rope".into(), serde_json::json!([4, 4, 4]));
    })?;
    let err = load_err(&dir2);
    assert!(
        err.contains("axes_dim_rope") && err.contains("sum to the head dim 16"),
        "{err}"
    );
    Ok(())
}

#[test]
fn unknown_model_class_lists_the_known_ones() -> Result<()> {
    let (_tmp, dir) = scratch_model("nextdit")?;
    edit_config(&dir, |c| {
        c.insert("_class_name".into(), "SD3Transformer2DModel".into());
    })?;
    let err = load_err(&dir);
    assert!(
        err.contains("SD3Transformer2DModel") && err.contains("LuminaNextDiT2DModel"),
        "{err}"
    );
    edit_config(&dir, |c| {
        c.remove("_class_name");
    })?;
    assert!(TransformerConfig::read_dir(&dir).is_err());
    Ok(())
}

#[test]
fn bad_call_arguments_are_reported_not_panicked() -> Result<()> {
    let dev = Device::Cpu;
    for family in ["nextdit", "lumina2"] {
        let (_tmp, dir) = scratch_model(family)?;
        let model = Transformer::load_dir(&dir, DType::F32, &dev)?;
        let t = Tensor::new(&[0.5f32, 0.5], &dev)?;
        let cap = Tensor::zeros((2, 5, 32), DType::F32, &dev)?;
        let mask = Tensor::ones((2, 5), DType::I64, &dev)?;
        let run = |x: &Tensor, t: &Tensor, cap: &Tensor, mask: &Tensor| -> String {
            match model.forward(&DitInput::new(x, t, cap, mask)) {
                Ok(_) => panic!("{family}: forward should fail"),
                Err(e) => e.to_string(),
            }
        };
        let channels = Tensor::zeros((2, 3, 8, 8), DType::F32, &dev)?;
        assert!(run(&channels, &t, &cap, &mask).contains("latent channels: expected 4, got 3"));
        let odd = Tensor::zeros((2, 4, 7, 8), DType::F32, &dev)?;
        assert!(run(&odd, &t, &cap, &mask).contains("7x8"));
        let x = Tensor::zeros((2, 4, 8, 8), DType::F32, &dev)?;
        let wide = Tensor::zeros((2, 5, 16), DType::F32, &dev)?;
        assert!(run(&x, &t, &wide, &mask).contains("[2, L, 32]"));
        let short_mask = Tensor::ones((2, 4), DType::I64, &dev)?;
        assert!(run(&x, &t, &cap, &short_mask).contains("caption mask"));
        let one_t = Tensor::new(&[0.5f32], &dev)?;
        assert!(run(&x, &one_t, &cap, &mask).contains("timesteps"));
    }
    // Next-DiT pools the caption: a row without any real token has no mean.
    let (_tmp, dir) = scratch_model("nextdit")?;
    let model = Transformer::load_dir(&dir, DType::F32, &dev)?;
    let x = Tensor::zeros((2, 4, 8, 8), DType::F32, &dev)?;
    let t = Tensor::new(&[0.5f32, 0.5], &dev)?;
    let cap = Tensor::zeros((2, 5, 32), DType::F32, &dev)?;
    let mask = Tensor::new(&[[1i64, 1, 0, 0, 0], [0, 0, 0, 0, 0]], &dev)?;
    let err = model
        .forward(&DitInput::new(&x, &t, &cap, &mask))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("row 1 is all padding"), "{err}");
    Ok(())
}
