//! Whole text-to-image calls against diffusers: every case in `<fixtures>/pipeline_next/*` and
//! `<fixtures>/pipeline_lumina2/*` — load `pipeline/`, start from `init_latents`, run the call
//! of `call.json`, and compare `prompt_embeds` (≤ 1e-4, mask exact), the final `latents`
//! (≤ 1e-3) and `image` (≤ 2e-3, in [0, 1]). Then the project's own cases in `tests/fixtures/`
//! (made by `scripts/make_fixtures.py pipelines`): negative prompts, non-square sizes, prompts
//! of different lengths, guidance off, CFG truncation, renormalisation off, shifted schedulers.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use lumina::fixtures::{case_dirs, cases, max_abs_diff};
use lumina_pipelines::{Latents, Pipeline, Request};
use serde_json::Value;

const EMBEDS_TOL: f32 = 1e-4;
const LATENTS_TOL: f32 = 1e-3;
const IMAGE_TOL: f32 = 2e-3;

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// The diffusers `__call__` arguments of `call.json` as a request; an argument this harness
/// does not know fails the case instead of being ignored.
fn request(call: &Value, init_latents: &Tensor) -> Result<Request> {
    let obj = call.as_object().context("call.json is not an object")?;
    let prompts = strings(&call["prompt"]).context("call.json: prompt")?;
    let mut r = Request::new(prompts.clone());
    r.latents = Latents::Given(init_latents.clone());
    for (key, v) in obj {
        let num = || {
            v.as_f64()
                .with_context(|| format!("call.json: {key} is not a number"))
        };
        match key.as_str() {
            "prompt" => {}
            "negative_prompt" => {
                r.negative_prompts = match v {
                    Value::Null => None,
                    Value::String(s) => Some(vec![s.clone(); prompts.len()]),
                    _ => strings(v),
                }
            }
            "height" => r.height = num()? as usize,
            "width" => r.width = num()? as usize,
            "num_inference_steps" => r.steps = num()? as usize,
            "guidance_scale" => r.guidance_scale = num()?,
            "cfg_trunc_ratio" => r.cfg_trunc_ratio = num()?,
            "cfg_normalization" => {
                r.cfg_normalization = v.as_bool().context("cfg_normalization")?
            }
            "num_images_per_prompt" => r.images_per_prompt = num()? as usize,
            "max_sequence_length" => r.max_sequence_length = num()? as usize,
            "scaling_watershed" => r.scaling_watershed = num()?,
            "proportional_attn" => {
                r.proportional_attn = v.as_bool().context("proportional_attn")?
            }
            "system_prompt" => r.system_prompt = v.as_str().map(str::to_string),
            other => bail!("call.json argument `{other}` is not handled by this harness"),
        }
    }
    Ok(r)
}

fn run_case(case: &Path) -> Result<Vec<String>> {
    let call: Value = serde_json::from_str(&std::fs::read_to_string(case.join("call.json"))?)?;
    let io: HashMap<String, Tensor> =
        candle_core::safetensors::load(case.join("io.safetensors"), &Device::Cpu)?;
    let get = |k: &str| {
        io.get(k)
            .with_context(|| format!("io.safetensors has no `{k}`"))
    };
    let pipeline = Pipeline::load(&case.join("pipeline"), DType::F32, &Device::Cpu)?;
    let req = request(&call, get("init_latents")?)?;
    let out = pipeline.generate(&req, |_| {})?;

    let mut failures = Vec::new();
    let embeds = max_abs_diff(&out.prompt_embeds.features, get("prompt_embeds")?)?;
    if embeds > EMBEDS_TOL {
        failures.push(format!(
            "prompt_embeds max abs error {embeds:.3e} > {EMBEDS_TOL:.0e}"
        ));
    }
    let mask = out.prompt_embeds.mask.to_dtype(DType::I64)?;
    if max_abs_diff(&mask, get("prompt_attention_mask")?)? != 0.0 {
        failures.push(format!(
            "prompt_attention_mask differs: got {:?}, expected {:?}",
            mask.to_vec2::<i64>()?,
            get("prompt_attention_mask")?.to_vec2::<i64>()?
        ));
    }
    let latents = max_abs_diff(&out.latents, get("latents")?)?;
    if latents > LATENTS_TOL {
        failures.push(format!(
            "latents max abs error {latents:.3e} > {LATENTS_TOL:.0e}"
        ));
    }
    let image = max_abs_diff(&out.images, get("image")?)?;
    if image > IMAGE_TOL {
        failures.push(format!("image max abs error {image:.3e} > {IMAGE_TOL:.0e}"));
    }
    let (lo, hi) = (
        out.images.flatten_all()?.min(0)?.to_scalar::<f32>()?,
        out.images.flatten_all()?.max(0)?.to_scalar::<f32>()?,
    );
    if lo < 0.0 || hi > 1.0 {
        failures.push(format!("image outside [0, 1]: [{lo}, {hi}]"));
    }
    println!(
        "{}: prompt_embeds {embeds:.2e}, latents {latents:.2e}, image {image:.2e}",
        case.display()
    );
    Ok(failures)
}

fn run_family(family: &str) -> Result<()> {
    let mut found = cases(family)?;
    let own = case_dirs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        family,
    )?;
    if own.is_empty() {
        bail!("no project {family} case under tests/fixtures");
    }
    found.extend(own);
    let mut report = Vec::new();
    for case in &found {
        match run_case(case) {
            Ok(f) if f.is_empty() => {}
            Ok(f) => report.push(format!("{}: {}", case.display(), f.join("; "))),
            Err(e) => report.push(format!("{}: {e:#}", case.display())),
        }
    }
    if !report.is_empty() {
        bail!(
            "{} of {} {family} cases differ from diffusers:\n{}",
            report.len(),
            found.len(),
            report.join("\n")
        );
    }
    Ok(())
}

#[test]
fn lumina_next_pipeline_matches_diffusers() -> Result<()> {
    run_family("pipeline_next")
}

#[test]
fn lumina2_pipeline_matches_diffusers() -> Result<()> {
    run_family("pipeline_lumina2")
}
