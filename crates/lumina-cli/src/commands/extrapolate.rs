//! The extrapolation flags of `generate` and `eval`, applied to a request.

use anyhow::{Context, Result};
use lumina_pipelines::extrapolation::{Extrapolation, Projection};
use lumina_pipelines::{Pipeline, Request};

use crate::cli::ExtrapolationArgs;

/// Sets `r.extrapolation` from the flags: `--extrapolation` picks a method, the other flags
/// adjust it (or, alone, adjust the pipeline's own choice for this size). Returns what the
/// request will run with beyond the training size, to tell the user (`None`: the family's
/// own rule at this size, nothing to say).
pub fn apply(
    args: &ExtrapolationArgs,
    pipeline: &Pipeline,
    r: &mut Request,
) -> Result<Option<String>> {
    if args.any() {
        let mut plan = match &args.extrapolation {
            Some(name) => name.parse::<Extrapolation>().context("--extrapolation")?,
            None => pipeline.extrapolation(r)?.unwrap_or(Extrapolation::NONE),
        };
        if let Some(rope) = &args.rope {
            plan.rope = rope.parse().context("--rope")?;
        }
        if let Some(by) = &args.rope_scale_by {
            plan.scale_by = by.parse().context("--rope-scale-by")?;
        }
        if args.projected_schedule.is_some() || args.haar_level.is_some() {
            let mut p = plan.projected.unwrap_or(Projection {
                schedule: lumina::sample::GuideSchedule::CosineDecay,
                level: 1,
            });
            if let Some(s) = &args.projected_schedule {
                p.schedule = s.parse().context("--projected-schedule")?;
            }
            p.level = args.haar_level.unwrap_or(p.level);
            plan.projected = Some(p);
        }
        plan.time_shift = args.time_shift.unwrap_or(plan.time_shift);
        plan.proportional_attn = args
            .proportional_attention
            .unwrap_or(plan.proportional_attn);
        plan.text_duplication = args.text_duplication.unwrap_or(plan.text_duplication);
        r.extrapolation = Some(plan);
    }
    Ok(pipeline.extrapolation(r)?.map(|p| p.describe()))
}
