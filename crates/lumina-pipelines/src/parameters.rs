//! The A1111-style `parameters` text of a generated image (prompt, negative prompt, then the
//! settings), which other image tools read back; one writer for `lumina generate` and
//! `lumina serve`, so an image says the same wherever it was made.

use candle_core::DType;

use crate::{Pipeline, Request};

/// What a `parameters` text says beyond the request itself.
pub struct Provenance<'a> {
    /// The model's name as the user gave it (`shapes`, a folder).
    pub model: &'a str,
    /// The compute dtype the pipeline was loaded in.
    pub dtype: DType,
    /// Fields the caller adds before the version (`Extrapolation: …`, `Init image: …`).
    pub extra: Vec<String>,
    /// Per prompt, what truncation dropped (`Output::truncated`): what the text encoder never
    /// saw is part of how the image was made.
    pub truncated: &'a [String],
}

/// The text for image `index` of `r` (prompt-major order): its prompt, negative prompt, seed
/// (`Latents::Seed(s)` gives image i the seed s + i) and every setting that shaped it.
pub fn parameters(
    pipeline: &Pipeline,
    r: &Request,
    seed: u64,
    index: usize,
    provenance: &Provenance,
) -> String {
    let prompt_of = index / r.images_per_prompt.max(1);
    let prompt = r.prompts.get(prompt_of).map_or("", String::as_str);
    let negative = r
        .negative_prompts
        .as_ref()
        .and_then(|n| n.get(prompt_of))
        .map_or("", String::as_str);
    let mut fields = vec![
        format!("Steps: {}", r.steps),
        format!("Sampler: {}", r.solver),
        format!("CFG scale: {}", r.guidance_scale),
        format!("Seed: {}", seed + index as u64),
        format!("Size: {}x{}", r.width, r.height),
        format!("Model: {}", provenance.model),
        format!(
            "Schedule: {}",
            r.schedule.map_or("scheduler".into(), |s| s.to_string())
        ),
        format!("CFG truncation: {}", r.cfg_trunc_ratio),
        format!(
            "CFG renorm: {}",
            r.cfg_renorm
                .map_or("pipeline default".into(), |n| n.to_string())
        ),
        format!(
            "Dtype: {}",
            format!("{:?}", provenance.dtype).to_lowercase()
        ),
        "RNG: lumina StdRng(seed)".to_string(),
    ];
    if let Some(loras) = pipeline.describe_loras() {
        fields.push(format!("LoRA: {loras}"));
    }
    if let Some(c) = pipeline.context_drop(r) {
        fields.push(format!("Context drop: {c}"));
    }
    if let Some(t) = pipeline.cache_threshold(r) {
        fields.push(format!("Step cache: {t}"));
    }
    fields.push(format!("Pipeline: {}", pipeline.family.name()));
    fields.extend(pipeline.family_parameters(r));
    fields.extend(provenance.extra.iter().cloned());
    fields.push(format!("Version: lumina {}", env!("CARGO_PKG_VERSION")));
    if let Some(dropped) = provenance
        .truncated
        .get(prompt_of)
        .filter(|d| !d.is_empty())
    {
        fields.push(format!("Prompt truncated: {dropped:?}"));
    }
    format!(
        "{prompt}\nNegative prompt: {negative}\n{}",
        fields.join(", ")
    )
}
