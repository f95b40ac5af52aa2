//! Every layout Lumina-Image-2.0 users download, against diffusers: each case under
//! `<fixtures>/lumina2_formats/*` (the fixture root is `$LUMINA_FIXTURES`, else
//! `../shared/fixtures`) names in `call.json` the checkpoints that must give `output`, the LoRA
//! combinations that must give theirs, and the GGUF files that must give theirs — all on the
//! inputs of `io.safetensors`. Finding no case is a failure; a failure names the case, the
//! layout and the error.

mod common;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use lumina::lora::{self, LoraFile};
use lumina::nn::lora::{Adapters, LoraMode};
use lumina::nn::{set_quantized_path, QuantizedPath};
use lumina::{DitInput, Transformer, Weights};

use common::{cases, load_tensors, max_abs_diff, read_json, tensor};

/// The quantised-domain product rounds every activation row to 8-bit blocks (Q8_0 for the
/// legacy types, Q8_K for the K-quants) before the integer dot products: its output may differ
/// from the exactly dequantised forward by this fraction of the output's largest magnitude
/// (measured on the tiny case: 1.1e-2 for Q4_0, 1.3e-2 for Q8_0; more layers add to it).
const QUANTIZED_DOMAIN_TOLERANCE: f32 = 3e-2;

struct Case<'a> {
    dir: &'a Path,
    call: serde_json::Value,
    io: std::collections::HashMap<String, Tensor>,
    tolerance: f32,
}

impl Case<'_> {
    fn input(&self) -> Result<DitInput<'_>> {
        let t = |k: &str| tensor(&self.io, k, self.dir);
        Ok(DitInput::new(
            t("hidden_states")?,
            t("timestep")?,
            t("encoder_hidden_states")?,
            t("encoder_mask")?,
        ))
    }

    /// The (file, scale) pairs of a `call.json` LoRA combination.
    fn lora_files(&self, files: &serde_json::Value) -> Result<Vec<(Arc<LoraFile>, f64)>> {
        let mut loras = Vec::new();
        for pair in files.as_array().context("loras: not a list")? {
            let file = pair[0].as_str().context("loras: no file name")?;
            let scale = pair[1].as_f64().context("loras: no scale")?;
            loras.push((Arc::new(LoraFile::open(&self.dir.join(file))?), scale));
        }
        Ok(loras)
    }

    /// The output with `loras` applied in `mode`; then the LoRAs are removed again, which must
    /// give back `base` bit for bit.
    fn with_loras(
        &self,
        model: &Transformer,
        adapters: &Adapters,
        loras: &[(Arc<LoraFile>, f64)],
        mode: LoraMode,
        base: &Tensor,
        what: &str,
    ) -> Result<Tensor> {
        let upstream = model.config().upstream_key_map();
        lora::apply(adapters, &*upstream, loras, mode).with_context(|| what.to_string())?;
        let adapted = model.forward(&self.input()?)?;
        lora::apply(adapters, &*upstream, &[], mode)?;
        if max_abs_diff(&model.forward(&self.input()?)?, base)? != 0.0 {
            bail!("{what}: removing the LoRA did not restore the base output bit for bit");
        }
        Ok(adapted)
    }

    /// Max |got − `key`|, or an error saying by how much it misses `tolerance`.
    fn check(&self, got: &Tensor, key: &str, tolerance: f32, what: &str) -> Result<f32> {
        let want = tensor(&self.io, key, self.dir)?;
        let err = max_abs_diff(got, want)?;
        println!(
            "{}: {what}: max abs error {err:.2e} against `{key}`",
            self.dir.display()
        );
        if err > tolerance {
            bail!("{what}: max abs error {err:.3e} against `{key}` > {tolerance:.0e}");
        }
        Ok(err)
    }
}

/// Loads `path` (any layout) with an adapter registry, in f32 on the CPU.
fn load(path: &Path) -> Result<(Transformer, Arc<Adapters>)> {
    let adapters = Adapters::new();
    let registry = adapters.clone();
    let (cfg, weights) = Transformer::open_dir(path, move |files| {
        Weights::from_files(files, DType::F32, &Device::Cpu).with_adapters(registry)
    })
    .with_context(|| format!("opening {}", path.display()))?;
    let model =
        Transformer::load(&cfg, &weights).with_context(|| format!("loading {}", path.display()))?;
    Ok((model, adapters))
}

fn checkpoints(case: &Case) -> Result<usize> {
    let map = case.call["checkpoints"]
        .as_object()
        .context("call.json: no `checkpoints` object")?;
    let mut n = 0;
    for (key, layouts) in map {
        for layout in layouts.as_array().context("checkpoints: not a list")? {
            let name = layout.as_str().context("checkpoints: not a file name")?;
            let (model, _) = load(&case.dir.join(name))?;
            let got = model.forward(&case.input()?)?;
            case.check(&got, key, case.tolerance, &format!("layout {name}"))
                .with_context(|| format!("layout {name}"))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Every LoRA combination, merged into the diffusers folder's weights and kept apart on the
/// upstream single file; then removed again, which must restore the base output bit for bit.
fn loras(case: &Case) -> Result<usize> {
    let Some(map) = case.call["loras"].as_object() else {
        return Ok(0);
    };
    let mut n = 0;
    for (layout, mode) in [
        ("transformer", LoraMode::Merged),
        ("original.safetensors", LoraMode::Unmerged),
    ] {
        let (model, adapters) = load(&case.dir.join(layout))?;
        let base = model.forward(&case.input()?)?;
        for (key, files) in map {
            let loras = case.lora_files(files)?;
            let what = format!("{key} on {layout}, {mode:?}");
            let got = case.with_loras(&model, &adapters, &loras, mode, &base, &what)?;
            case.check(&got, key, case.tolerance, &what)
                .with_context(|| what.clone())?;
            n += 1;
        }
    }
    Ok(n)
}

fn ggufs(case: &Case) -> Result<usize> {
    let Some(map) = case.call["gguf"].as_object() else {
        return Ok(0);
    };
    let mut n = 0;
    for (key, file) in map {
        let name = file.as_str().context("gguf: not a file name")?;
        let (model, _) = load(&case.dir.join(name))?;
        let exact = model.forward(&case.input()?)?;
        case.check(&exact, key, case.tolerance, &format!("{name}, dequantised"))?;
        set_quantized_path(QuantizedPath::Quantized);
        let quantized = model.forward(&case.input()?);
        set_quantized_path(QuantizedPath::Dequantize);
        let scale = exact.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let what = format!("{name}, quantised domain (output scale {scale:.2})");
        case.check(&quantized?, key, QUANTIZED_DOMAIN_TOLERANCE * scale, &what)?;
        n += 1;
    }
    Ok(n)
}

/// Max |got − want| as a fraction of max |want|.
fn relative_error(got: &Tensor, want: &Tensor) -> Result<f32> {
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(max_abs_diff(got, want)? / scale.max(f32::MIN_POSITIVE))
}

/// How far a forward through weights written as `name` may be from the unquantised one, as a
/// fraction of the output's largest magnitude: the quantisation error of the weights, about
/// twice what the tiny case measures (Q8_0 7.9e-3, Q6_K 1.7e-2, Q5_K 2.4e-2, Q4_K 4.0e-2,
/// Q5_1 6.5e-2, Q5_0 7.9e-2, Q4_0 1.3e-1, Q4_1 1.7e-1; its rows of 64 leave the K-quants
/// partly Q8_0).
fn written_tolerance(name: &str) -> f32 {
    match name {
        "q8_0" => 2e-2,
        "q6_k" => 4e-2,
        "q5_k" => 5e-2,
        "q4_k" => 1e-1,
        "q5_0" | "q5_1" => 1.5e-1,
        _ => 3e-1,
    }
}

/// `lumina quantize --to gguf-*` for every type it writes: the case's diffusers folder
/// exported under upstream names, written, read back (config from the file's metadata), and
/// run; each within its type's quantisation error of `output`.
fn written_ggufs(case: &Case) -> Result<usize> {
    use lumina::models::export::upstream_tensors;
    use lumina::models::EMBEDDED_CONFIG;
    use lumina::weights::gguf;
    let (cfg, tensors) = upstream_tensors(&case.dir.join("transformer"))?;
    let config = serde_json::to_string(&cfg.to_json()?)?;
    let dir = tempfile::tempdir()?;
    let want = tensor(&case.io, "output", case.dir)?;
    for (name, target) in gguf::WRITABLE {
        let path = dir.path().join(format!("{name}.gguf"));
        gguf::write(
            &path,
            &tensors,
            target,
            &[(EMBEDDED_CONFIG, config.clone())],
        )?;
        let (model, _) = load(&path)?;
        if model.config() != cfg {
            bail!("written {name}: the config read back differs");
        }
        let got = model.forward(&case.input()?)?;
        let err = relative_error(&got, want)?;
        println!(
            "{}: written {name}: relative error {err:.1e}",
            case.dir.display()
        );
        // where gguf-py wrote the same type, the same quantisation: its output to 1e-4
        let reference = format!("output_gguf_{}", gguf::type_name(target));
        if case.io.contains_key(&reference) {
            case.check(&got, &reference, case.tolerance, &format!("written {name}"))?;
        }
        if err > written_tolerance(name) {
            bail!(
                "written {name}: relative error {err:.2e} > {:.0e}",
                written_tolerance(name)
            );
        }
    }
    Ok(gguf::WRITABLE.len())
}

/// LoRA on a block-quantised model is kept apart from its weights (even when merging is
/// asked for); it changes the output and its removal restores the base bit for bit.
fn lora_on_gguf(case: &Case) -> Result<usize> {
    let (Some(ggufs), Some(loras)) = (
        case.call["gguf"].as_object(),
        case.call["loras"].as_object(),
    ) else {
        return Ok(0);
    };
    let (Some(gguf), Some(files)) = (ggufs.values().next(), loras.values().next()) else {
        return Ok(0);
    };
    let gguf_name = gguf.as_str().context("gguf: not a file name")?;
    let (model, adapters) = load(&case.dir.join(gguf_name))?;
    let base = model.forward(&case.input()?)?;
    let loras = case.lora_files(files)?;
    let adapted = case.with_loras(
        &model,
        &adapters,
        &loras,
        LoraMode::Merged,
        &base,
        gguf_name,
    )?;
    if max_abs_diff(&adapted, &base)? == 0.0 {
        bail!("{gguf_name}: the LoRA changed nothing");
    }
    Ok(1)
}

#[test]
fn every_layout_matches_diffusers() -> Result<()> {
    let found = cases("lumina2_formats")?;
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in &found {
        let run = || -> Result<usize> {
            let call = read_json(&dir.join("call.json"))?;
            let tolerance = call["tolerance_max_abs"]
                .as_f64()
                .context("call.json: no tolerance_max_abs")? as f32;
            let case = Case {
                dir,
                io: load_tensors(&dir.join("io.safetensors"))?,
                call,
                tolerance,
            };
            Ok(checkpoints(&case)?
                + loras(&case)?
                + ggufs(&case)?
                + written_ggufs(&case)?
                + lora_on_gguf(&case)?)
        };
        match run() {
            Ok(n) => checked += n,
            Err(e) => failures.push(format!("{}: {e:#}", dir.display())),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} format cases failed:\n{}",
            failures.len(),
            found.len(),
            failures.join("\n")
        );
    }
    if checked == 0 {
        bail!("the format cases name no checkpoint, LoRA or GGUF file to check");
    }
    Ok(())
}
