//! `lumina eval`: generate images (or clips, for a video model) for a prompt list and score
//! them with the `shapes` (or `shapes-video`) judge.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use lumina_pipelines::{Pipeline, Request};
use lumina_shapes::clip::ClipCaption;
use lumina_shapes::prompts::{clip_evaluation_prompts, evaluation_prompts, ClipKind, PromptKind};
use lumina_shapes::Caption;
use lumina_train::eval::{evaluate, evaluate_clips, Label, Report};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cli::EvalArgs;
use crate::commands::model_dir;

/// Captions from a file (one per line) or, without one, the generated evaluation list.
pub fn load_prompts(
    path: Option<&std::path::Path>,
    per_kind: usize,
    prompt_seed: u64,
) -> Result<Vec<Caption>> {
    read_or_generate(path, Caption::parse, || {
        evaluation_prompts(per_kind, &mut StdRng::seed_from_u64(prompt_seed))
    })
}

/// Clip captions from a file (one per line) or, without one, the generated clip list.
pub fn load_clip_prompts(
    path: Option<&std::path::Path>,
    per_kind: usize,
    prompt_seed: u64,
) -> Result<Vec<ClipCaption>> {
    read_or_generate(path, ClipCaption::parse, || {
        clip_evaluation_prompts(per_kind, &mut StdRng::seed_from_u64(prompt_seed))
    })
}

fn read_or_generate<C>(
    path: Option<&std::path::Path>,
    parse: impl Fn(&str) -> lumina_shapes::Result<C>,
    generate: impl FnOnce() -> Vec<C>,
) -> Result<Vec<C>> {
    let Some(path) = path else {
        return Ok(generate());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse(l.trim()).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let dir = model_dir(args.model.as_deref())?.dir;
    let pipeline = Pipeline::load(&dir, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading {}", dir.display()))?;
    let side = args.size.unwrap_or(pipeline.native_size());
    let (width, height) = (args.width.unwrap_or(side), args.height.unwrap_or(side));
    let mut template = pipeline.default_request_at(vec![], width, height);
    let plan = super::extrapolate::apply(&args.extrapolation, &pipeline, &mut template)?;
    if let Some(plan) = &plan {
        eprintln!("extrapolation: {plan}");
    }
    template.steps = args.steps.unwrap_or(template.steps);
    template.guidance_scale = args.guidance.unwrap_or(template.guidance_scale);
    if let Some(solver) = args.solver {
        template.solver = solver.into();
    }
    super::sampling::apply(&args.sampling, &mut template)?;
    pipeline.validate(&lumina_pipelines::Request {
        prompts: vec!["x".into()],
        ..template.clone()
    })?;

    let clips = pipeline.makes_clips();
    let count = match clips {
        true => load_clip_prompts(args.prompts.as_deref(), args.per_kind, args.prompt_seed)?.len(),
        false => load_prompts(args.prompts.as_deref(), args.per_kind, args.prompt_seed)?.len(),
    };
    if count == 0 || args.seeds == 0 {
        bail!("nothing to evaluate: no prompt or --seeds 0");
    }
    let bar = ProgressBar::new(count as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} prompts [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = |done: usize, _| bar.set_position(done as u64);
    let grid = args.grid.as_deref();
    if clips {
        let prompts = load_clip_prompts(args.prompts.as_deref(), args.per_kind, args.prompt_seed)?;
        let report = evaluate_clips(
            &pipeline, &prompts, args.seeds, args.seed, &template, grid, progress,
        )?;
        bar.finish_and_clear();
        return print(
            args,
            &pipeline,
            &template,
            plan,
            &report,
            ClipKind::ALL,
            "clips",
        );
    }
    let prompts = load_prompts(args.prompts.as_deref(), args.per_kind, args.prompt_seed)?;
    let report = evaluate(
        &pipeline, &prompts, args.seeds, args.seed, &template, grid, progress,
    )?;
    bar.finish_and_clear();
    print(
        args,
        &pipeline,
        &template,
        plan,
        &report,
        PromptKind::ALL,
        "images",
    )
}

/// The report as one JSON object or as text, and with `--failures` every wrong sample.
fn print<K: Label, F: Label>(
    args: &EvalArgs,
    pipeline: &Pipeline,
    template: &Request,
    plan: Option<String>,
    report: &Report<K, F>,
    kinds: impl IntoIterator<Item = K>,
    what: &str,
) -> Result<()> {
    let prompts = report.total / args.seeds.max(1);

    if args.json {
        let per_kind: serde_json::Map<String, serde_json::Value> = report
            .per_kind
            .iter()
            .map(|(k, &(c, t))| (k.label().to_string(), serde_json::json!({"correct": c, "total": t, "accuracy": c as f64 / t.max(1) as f64})))
            .collect();
        let faults: serde_json::Map<String, serde_json::Value> = report
            .faults()
            .iter()
            .map(|(f, &n)| (f.label().to_string(), n.into()))
            .collect();
        let json = serde_json::json!({
            "accuracy": report.accuracy(), "correct": report.correct, "total": report.total, "per_kind": per_kind, "faults": faults,
            "steps": template.steps, "guidance": template.guidance_scale, "solver": template.solver.name(), "shift": template.schedule.and_then(|s| s.shift()), "schedule": template.schedule.map(|s| s.to_string()),
            "cfg_trunc_ratio": template.cfg_trunc_ratio, "context_drop": pipeline.context_drop(template).map(|c| c.to_string()), "cache_threshold": pipeline.cache_threshold(template),
            "width": template.width, "height": template.height, "extrapolation": plan,
            "frames": pipeline.makes_clips().then_some(template.frames),
            "frame_rope": template.frame_extrapolation.map(|m| m.name()),
        });
        println!("{json}");
    } else {
        let frames = match pipeline.makes_clips() {
            true => format!(" of {} frames", template.frames),
            false => String::new(),
        };
        println!(
            "{} {what}{frames} ({prompts} prompts × {} seeds), {} steps, {} solver, guidance {}, {}",
            report.total,
            args.seeds,
            template.steps,
            template.solver,
            template.guidance_scale,
            super::sampling::describe(pipeline, template)
        );
        println!(
            "accuracy  {:.3}  ({}/{})",
            report.accuracy(),
            report.correct,
            report.total
        );
        for kind in kinds {
            if let Some(&(c, t)) = report.per_kind.get(&kind) {
                println!(
                    "  {:<14} {:.3}  ({c}/{t})",
                    kind.label(),
                    c as f64 / t.max(1) as f64
                );
            }
        }
        if !report.failures.is_empty() {
            let faults: Vec<String> = report
                .faults()
                .iter()
                .map(|(f, n)| format!("{} {n}", f.label()))
                .collect();
            println!("wrong by    {}", faults.join(", "));
        }
    }
    if args.failures {
        for f in &report.failures {
            eprintln!("wrong: {:?} seed {}: {}", f.caption, f.seed, f.reason);
        }
    }
    Ok(())
}
