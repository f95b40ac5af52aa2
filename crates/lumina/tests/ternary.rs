//! Ternary (TerDiT) checkpoints end to end on the fixture models of both families: which layers
//! are ternary, packing to a file and loading it back, post-training ternarisation at load
//! time, and the int8 activation path against the exact one.
//!
//! One test function: the activation path is process-wide, so its changes must not race.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use lumina::kernels::ternary::{set_activations, Activations};
use lumina::weights::ternary::{pack_layers, save, QUANTIZATION_KEY, TERNARY};
use lumina::weights::{WeightFiles, Weights};
use lumina::{DitInput, Transformer};

use common::{fixture_root, load_tensors, max_abs_diff};

struct Case {
    dir: PathBuf,
    input: [Tensor; 4],
}

fn case(family: &str) -> Result<Case> {
    let dir = fixture_root().join(family).join("tiny_square");
    let io = load_tensors(&dir.join("io.safetensors"))?;
    let get = |k: &str| io[k].clone();
    Ok(Case {
        input: [
            get("hidden_states"),
            get("timestep"),
            get("encoder_hidden_states"),
            get("encoder_mask"),
        ],
        dir,
    })
}

fn forward(dir: &Path, ternary: bool, c: &Case) -> Result<Tensor> {
    let (cfg, w) = Transformer::open_dir(dir, |f| {
        let w = Weights::from_files(f, DType::F32, &Device::Cpu);
        if ternary {
            w.with_ternary()
        } else {
            w
        }
    })?;
    let model = Transformer::load(&cfg, &w)?;
    let [x, t, cap, mask] = &c.input;
    Ok(model.forward(&DitInput::new(x, t, cap, mask))?)
}

fn write(dir: &Path, config_from: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(config_from.join("config.json"), dir.join("config.json"))?;
    save(tensors, &dir.join("diffusion_pytorch_model.safetensors"))?;
    Ok(())
}

#[test]
fn ternary_checkpoints_of_both_families_load_and_agree_across_paths() -> Result<()> {
    for (family, per_block) in [("nextdit", 11), ("lumina2", 8)] {
        let c = case(family)?;
        let dense_dir = c.dir.join("transformer");
        // the layers TerDiT ternarises, found by building the model in audit mode
        let (cfg, audit) = Transformer::open_dir(&dense_dir, |f| {
            Weights::audit(f, &Device::Cpu).with_ternary()
        })?;
        Transformer::load(&cfg, &audit)?;
        let layers = audit.ternary_layers();
        // attention (q, k, v, out; Next-DiT's cross-attention too), SwiGLU, adaLN linear
        let first_block = layers.iter().filter(|l| l.starts_with("layers.0.")).count();
        ensure!(
            first_block == per_block,
            "{family}: {first_block} ternary layers in block 0, expected {per_block}: {layers:?}"
        );
        ensure!(
            !layers
                .iter()
                .any(|l| l.contains("embedder") || l.contains("norm_out")),
            "{family}: embedders and the final layer stay full precision: {layers:?}"
        );

        let dense = load_tensors(&dense_dir.join("diffusion_pytorch_model.safetensors"))?;
        let packed = pack_layers(&dense, &layers)?;
        let tmp = tempfile::tempdir()?;
        let packed_dir = tmp.path().join("transformer");
        write(&packed_dir, &dense_dir, &packed)?;
        let files = WeightFiles::open_dir(&packed_dir)?;
        ensure!(files.metadata().get(QUANTIZATION_KEY).map(String::as_str) == Some(TERNARY));

        set_activations(Activations::Exact);
        let from_file = forward(&packed_dir, false, &c)?;
        let at_load = forward(&dense_dir, true, &c)?;
        let diff = max_abs_diff(&from_file, &at_load)?;
        ensure!(
            diff < 1e-6,
            "{family}: packed file vs ternarised at load: {diff}"
        );

        // the packed model computes α·w exactly as a dense model holding α·w would
        let mut dequantized = dense.clone();
        for layer in &layers {
            let w = &packed[&format!("{layer}.weight_packed")];
            let (rows, _) = w.dims2()?;
            let cols = dense[&format!("{layer}.weight")].dim(1)?;
            let m = lumina::kernels::ternary::TernaryMatrix::from_rows(
                &w.flatten_all()?.to_vec1::<u8>()?,
                rows,
                cols,
                packed[&format!("{layer}.weight_scale")].to_vec1::<f32>()?,
                layer,
            )?;
            dequantized.insert(format!("{layer}.weight"), m.dequantize(&Device::Cpu)?);
        }
        let deq_dir = tmp.path().join("dequantized");
        write(&deq_dir, &dense_dir, &dequantized)?;
        let reference = forward(&deq_dir, false, &c)?;
        let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = max_abs_diff(&from_file, &reference)?;
        ensure!(
            diff <= 1e-5 * scale.max(1.0),
            "{family}: exact path vs dequantized dense: {diff}"
        );

        // int8 activations: close to the exact path, not equal
        set_activations(Activations::Int8);
        let int8 = forward(&packed_dir, false, &c)?;
        set_activations(Activations::Auto);
        let diff = max_abs_diff(&int8, &from_file)?;
        ensure!(
            diff > 0.0 && diff <= 0.05 * scale.max(1.0),
            "{family}: int8 vs exact activations: max diff {diff} (output scale {scale})"
        );

        // the packed folder's every tensor is used, nothing is missing
        let (cfg, audit) = Transformer::open_dir(&packed_dir, |f| Weights::audit(f, &Device::Cpu))?;
        Transformer::load(&cfg, &audit)?;
        ensure!(
            audit.problems().is_empty() && audit.unused_keys().is_empty(),
            "{family}: {:?} {:?}",
            audit.problems(),
            audit.unused_keys()
        );
    }
    Ok(())
}
