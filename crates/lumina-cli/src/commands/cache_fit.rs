//! `lumina cache-fit`: fit the step cache's rescaling polynomial to a model from its own runs.
//!
//! TeaCache's polynomials for Lumina-Next and Lumina-Image-2.0 were fitted to those models; a
//! model of ours needs its own. Every evaluation of a normal sampling run (every step
//! computed) records r = relative L1 change of the first block's modulated input and o = the
//! relative L1 change of the block stack's output since the previous evaluation of the same
//! image and half; the least-squares polynomial o ≈ P(r) is what the cache then accumulates.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use lumina::models::step_cache::fit_polynomial;
use lumina_pipelines::{Latents, Pipeline};
use lumina_shapes::Caption;

use crate::cli::CacheFitArgs;
use crate::commands::eval::load_prompts;
use crate::commands::model_dir;

pub fn run(args: &CacheFitArgs) -> Result<()> {
    let prompts = load_prompts(args.prompts.as_deref(), args.per_kind, args.prompt_seed)?;
    if prompts.is_empty() || args.seeds == 0 {
        bail!("nothing to sample: no prompt or --seeds 0");
    }
    let model = model_dir(args.model.as_deref())?;
    let pipeline = Pipeline::load(&model.dir, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading {}", model.dir.display()))?;
    let native = pipeline.native_size();
    let (width, height) = (args.width.unwrap_or(native), args.height.unwrap_or(native));
    let mut template = pipeline.default_request_at(vec![], width, height);
    super::sampling::apply(&args.sampling, &mut template)?;
    template.record_cache = true;
    template.cache_threshold = None;

    let mut pairs = Vec::new();
    for (i, caption) in prompts.iter().enumerate() {
        let mut r = template.clone();
        r.prompts = vec![Caption::text(caption)];
        r.images_per_prompt = args.seeds;
        r.latents = Latents::Seed((i * args.seeds) as u64);
        let out = pipeline.generate(&r, |_| {})?;
        pairs.extend(out.cache_pairs);
        eprint!(
            "\r{}/{} prompts, {} pairs",
            i + 1,
            prompts.len(),
            pairs.len()
        );
    }
    eprintln!();
    if let Some(path) = &args.pairs {
        std::fs::write(path, serde_json::to_string(&pairs)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let coefficients = fit_polynomial(&pairs, args.degree)?;
    let residual = (pairs
        .iter()
        .map(|&(r, o)| {
            let p = coefficients.iter().fold(0.0, |acc, c| acc * r + c);
            (p - o).powi(2)
        })
        .sum::<f64>()
        / pairs.len() as f64)
        .sqrt();
    let (lo, hi) = pairs
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &(r, _)| {
            (lo.min(r), hi.max(r))
        });
    println!(
        "{}",
        serde_json::json!({
            "cache_coefficients": coefficients,
            "pairs": pairs.len(),
            "input_change_range": [lo, hi],
            "rms_residual": residual,
            "steps": template.steps,
            "solver": template.solver.name(),
        })
    );
    if args.write {
        let path = model.dir.join("scheduler/scheduler_config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut config: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let Some(object) = config.as_object_mut() else {
            bail!("{}: not a JSON object", path.display());
        };
        object.insert("cache_coefficients".into(), coefficients.into());
        std::fs::write(&path, serde_json::to_string_pretty(&config)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote cache_coefficients into {}", path.display());
    }
    Ok(())
}
