//! Transformer parity with diffusers: every case under `<fixtures>/nextdit/*` and
//! `<fixtures>/lumina2/*` (the fixture root is `$LUMINA_FIXTURES`, else `../shared/fixtures`),
//! then the project's own cases in `tests/fixtures/` — load `transformer/`, feed
//! `io.safetensors` with the arguments of `call.json`, compare with `output` at
//! `tolerance_max_abs`.

mod common;

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use lumina::{DitInput, RopeFactors, Transformer};

use common::{all_cases, cases, load_tensors, max_abs_diff, read_json, tensor};

/// Runs one case; `Ok(None)` when it passes, else a report of where it differs.
fn run_case(case: &Path) -> Result<Option<String>> {
    let call = read_json(&case.join("call.json"))?;
    let io = load_tensors(&case.join("io.safetensors"))?;
    let model = Transformer::load_dir(&case.join("transformer"), DType::F32, &Device::Cpu)
        .with_context(|| format!("{}: loading transformer/", case.display()))?;
    let expected_class = call["model"].as_str().unwrap_or_default();
    if !expected_class.is_empty() && expected_class != model.config().class_name() {
        bail!(
            "call.json names {expected_class}, transformer/ holds {}",
            model.config().class_name()
        );
    }
    let number =
        |key: &str, default: f64| call.get(key).and_then(|v| v.as_f64()).unwrap_or(default);
    let rope = RopeFactors::uniform(number("linear_factor", 1.0), number("ntk_factor", 1.0));
    let base = call
        .get("base_sequence_length")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    let tolerance = call["tolerance_max_abs"]
        .as_f64()
        .context("call.json: no tolerance_max_abs")? as f32;

    let latents = tensor(&io, "hidden_states", case)?;
    let timesteps = tensor(&io, "timestep", case)?;
    let caption = tensor(&io, "encoder_hidden_states", case)?;
    let mask = tensor(&io, "encoder_mask", case)?;
    let want = tensor(&io, "output", case)?;
    let input = DitInput::new(latents, timesteps, caption, mask)
        .with_rope(rope)
        .with_base_sequence_length(base);
    let got = model.forward(&input)?;
    let err = max_abs_diff(&got, want)?;
    if err <= tolerance {
        println!(
            "{}: max abs error {err:.2e} (tolerance {tolerance:.0e})",
            case.display()
        );
        return Ok(None);
    }
    // Localise: which sample, and velocity channels vs the learned-σ half.
    let mut report = format!("max abs error {err:.3e} > {tolerance:.0e};");
    let c_in = latents.dim(1)?;
    for b in 0..got.dim(0)? {
        let (g, w) = (got.i(b)?, want.i(b)?);
        let velocity = max_abs_diff(&g.narrow(0, 0, c_in)?, &w.narrow(0, 0, c_in)?)?;
        report += &format!(" sample {b}: velocity channels {velocity:.3e}");
        if g.dim(0)? > c_in {
            let rest = g.dim(0)? - c_in;
            let sigma = max_abs_diff(&g.narrow(0, c_in, rest)?, &w.narrow(0, c_in, rest)?)?;
            report += &format!(", σ channels {sigma:.3e}");
        }
        report += ";";
    }
    Ok(Some(report))
}

fn run_family(family: &str) -> Result<()> {
    let mut failures = Vec::new();
    let found = all_cases(family)?;
    for case in &found {
        match run_case(case) {
            Ok(None) => {}
            Ok(Some(report)) => failures.push(format!("{}: {report}", case.display())),
            Err(e) => failures.push(format!("{}: {e:#}", case.display())),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} {family} cases differ from diffusers:\n{}",
            failures.len(),
            found.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

#[test]
fn next_dit_matches_diffusers() -> Result<()> {
    run_family("nextdit")
}

#[test]
fn lumina2_matches_diffusers() -> Result<()> {
    run_family("lumina2")
}

/// The fixture tensors are f32; the comparison is meaningful only if no input is silently
/// converted from another dtype.
#[test]
fn fixture_inputs_are_f32() -> Result<()> {
    for family in ["nextdit", "lumina2"] {
        for case in cases(family)? {
            let io = load_tensors(&case.join("io.safetensors"))?;
            for key in [
                "hidden_states",
                "timestep",
                "encoder_hidden_states",
                "output",
            ] {
                let t: &Tensor = tensor(&io, key, &case)?;
                assert_eq!(t.dtype(), DType::F32, "{}: {key}", case.display());
            }
        }
    }
    Ok(())
}
