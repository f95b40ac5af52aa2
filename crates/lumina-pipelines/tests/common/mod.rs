//! What the pipeline test files share: a fixture case's `call.json` as a [`Request`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use lumina_pipelines::{Latents, Request};
use serde_json::Value;

/// The shared fixture cases of `family`, then the project's own in `tests/fixtures/`; either
/// set missing is an error.
pub fn all_cases(family: &str) -> Result<Vec<PathBuf>> {
    let mut found = lumina::fixtures::cases(family)?;
    let own = lumina::fixtures::case_dirs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        family,
    )?;
    if own.is_empty() {
        bail!("no project {family} case under tests/fixtures");
    }
    found.extend(own);
    Ok(found)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// The diffusers `__call__` arguments of `call.json` as a request; an argument this harness
/// does not know fails the case instead of being ignored.
pub fn request(call: &Value, init_latents: &Tensor) -> Result<Request> {
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
                r.cfg_renorm = Some(match v.as_bool().context("cfg_normalization")? {
                    true => lumina::sample::Renorm::Rows,
                    false => lumina::sample::Renorm::Off,
                })
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
