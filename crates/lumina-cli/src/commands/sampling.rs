//! The sampling flags of `generate` and `eval` (schedule, guidance window, Context Drop, step
//! caching, clip length, proportional attention), applied to a request.

use anyhow::{Context, Result};
use lumina::nn::ContextDrop;
use lumina::sample::{Renorm, RopeMethod, Schedule};
use lumina_pipelines::{Pipeline, Request};

use crate::cli::SamplingArgs;

/// Overrides the request's defaults with whichever flags are given.
pub fn apply(args: &SamplingArgs, r: &mut Request) -> Result<()> {
    if let Some(shift) = args.shift {
        r.schedule = Some(Schedule::Shifted { shift });
    }
    if let Some(name) = &args.schedule {
        r.schedule = Some(name.parse::<Schedule>().context("--schedule")?);
    }
    if let Some(ratio) = args.cfg_trunc_ratio {
        r.cfg_trunc_ratio = ratio;
    }
    if let Some(name) = &args.cfg_renorm {
        r.cfg_renorm = Some(name.parse::<Renorm>().context("--cfg-renorm")?);
    }
    if args.no_cfg_normalization {
        r.cfg_renorm = Some(Renorm::Off);
    }
    if let Some(text) = &args.context_drop {
        r.context_drop = Some(text.parse::<ContextDrop>().context("--context-drop")?);
    }
    if let Some(threshold) = args.cache_threshold {
        r.cache_threshold = Some(threshold);
    }
    if let Some(c) = &args.cache_coefficients {
        r.cache_coefficients = Some(c.clone());
    }
    if let Some(frames) = args.frames {
        r.frames = frames;
    }
    if let Some(name) = &args.frame_rope {
        r.frame_extrapolation = Some(name.parse::<RopeMethod>().context("--frame-rope")?);
    }
    if args.no_proportional_attn {
        r.proportional_attn = false;
    }
    Ok(())
}

/// What the request's schedule, CFG truncation, Context Drop and step cache are, for the
/// metadata and the user: e.g. `shift:2, guidance over 0.5 of the steps`,
/// `sigmoid:0.6,6,20, context drop 2:0.5, cache 0.3`.
pub fn describe(pipeline: &Pipeline, r: &Request) -> String {
    let mut parts = vec![r
        .schedule
        .map_or("the scheduler's grid".into(), |s| s.to_string())];
    if r.guided() && r.cfg_trunc_ratio < 1.0 {
        parts.push(format!("guidance over {} of the steps", r.cfg_trunc_ratio));
    }
    if let Some(c) = pipeline.context_drop(r) {
        parts.push(format!("context drop {c}"));
    }
    if let Some(t) = pipeline.cache_threshold(r) {
        parts.push(format!("cache {t}"));
    }
    parts.join(", ")
}
