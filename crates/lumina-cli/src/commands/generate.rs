//! `lumina generate`: prompt in, PNG out (an animated PNG or GIF from a video model).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, IndexOp};
use indicatif::{ProgressBar, ProgressStyle};

use lumina_pipelines::input::load_png;
use lumina_pipelines::output::{check_target, numbered, save_clip, save_png};
use lumina_pipelines::parameters::{parameters, Provenance};
use lumina_pipelines::pipeline::size_multiple;
use lumina_pipelines::pipeline::InitImage;
use lumina_pipelines::{Latents, Pipeline, Request};

use crate::cli::GenerateArgs;
use crate::commands::{load_pipeline, model_dir};

pub fn run(args: &GenerateArgs) -> Result<()> {
    let model = model_dir(args.load.model.as_deref())?;
    let (dir, model_name) = (&model.dir, model.name.as_str());
    check_args(args, dir)?;
    let dtype = DType::from(args.load.dtype);
    let loaded = Instant::now();
    let pipeline = load_pipeline(&args.load, &model)?;
    tracing::info!(seconds = loaded.elapsed().as_secs_f64(), "pipeline loaded");
    check_target(&args.output, args.num_images, pipeline.makes_clips())?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut request = request(args, &pipeline, seed)?;
    let plan = super::extrapolate::apply(&args.extrapolation, &pipeline, &mut request)?;
    if let Some(plan) = &plan {
        let native = pipeline.native_size();
        eprintln!(
            "{}x{} is beyond the model's {native}x{native} training size: {plan}",
            request.width, request.height
        );
    }
    pipeline.validate(&request)?;

    let bar = progress(args.quiet, request.steps);
    let started = Instant::now();
    let out = pipeline.generate(&request, |step| {
        // a native-size pass (I-Max) runs first: the bar follows each pass
        bar.set_length(step.steps as u64);
        bar.set_position(step.step as u64 + 1)
    })?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();

    let mut extra = Vec::new();
    if let Some(plan) = &plan {
        extra.push(format!("Extrapolation: {plan}"));
    }
    if let (Some(init), Some(path)) = (&request.init_image, &args.init_image) {
        extra.push(format!("Init image: {}", path.display()));
        extra.push(format!("Denoising strength: {}", init.strength));
    }
    let provenance = Provenance {
        model: model_name,
        dtype,
        extra,
        truncated: &out.truncated,
    };
    for i in 0..args.num_images {
        let path = numbered(&args.output, i, args.num_images);
        let params = parameters(&pipeline, &request, seed, i, &provenance);
        match pipeline.makes_clips() {
            true => save_clip(&path, &out.images.i(i)?, &params)?,
            false => save_png(&path, &out.images.i(i)?, &params)?,
        }
        println!("{}", path.display());
    }
    let cache = out.cache_stats.map_or(String::new(), |s| {
        format!(
            "; step cache computed {} and skipped {} block-stack evaluations",
            s.computed, s.skipped
        )
    });
    let what = match pipeline.makes_clips() {
        true => format!("clip(s) of {} frames", request.frames),
        false => "image(s)".to_string(),
    };
    eprintln!(
        "{} {what} {}x{}, {} steps ({}; {}) in {elapsed:.1} s, seed {seed}{cache}",
        args.num_images,
        request.width,
        request.height,
        request.steps,
        request.solver,
        super::sampling::describe(&pipeline, &request)
    );
    Ok(())
}

/// Cheap checks before any weight is read.
fn check_args(args: &GenerateArgs, dir: &std::path::Path) -> Result<()> {
    let m = size_multiple(dir)?;
    for (name, v) in [("width", args.width), ("height", args.height)] {
        if let Some(v) = v {
            if v == 0 || v % m != 0 {
                let lo = (v / m).max(1) * m;
                bail!(
                    "--{name} {v} is not a positive multiple of {m}; try {lo} or {}",
                    lo + m
                );
            }
        }
    }
    if args.steps == Some(0) {
        bail!("--steps must be at least 1");
    }
    if args.num_images == 0 {
        bail!("--num-images must be at least 1");
    }
    if args.prompt.trim().is_empty() {
        bail!("--prompt is empty");
    }
    Ok(())
}

fn request(args: &GenerateArgs, pipeline: &Pipeline, seed: u64) -> Result<Request> {
    let image = match &args.init_image {
        Some(path) => Some(load_png(path, &Device::Cpu)?),
        None if args.strength.is_some() => bail!("--strength needs --init-image"),
        None => None,
    };
    // the canvas: the flags, else the init image's size, else the model's own
    let (w, h) = match &image {
        Some(image) => (image.dim(1)?, image.dim(0)?),
        None => (pipeline.native_size(), pipeline.native_size()),
    };
    let (width, height) = (args.width.unwrap_or(w), args.height.unwrap_or(h));
    let mut r = pipeline.default_request_at(vec![args.prompt.clone()], width, height);
    r.negative_prompts = Some(vec![args.negative_prompt.clone()]);
    if let Some(image) = image {
        let upscaling = (width, height) != (w, h);
        r.init_image = Some(InitImage {
            image,
            strength: args
                .strength
                .unwrap_or(if upscaling { 1.0 } else { IMG2IMG_STRENGTH }),
        });
    }
    r.steps = args.steps.unwrap_or(r.steps);
    r.guidance_scale = args.guidance.unwrap_or(r.guidance_scale);
    if let Some(solver) = args.solver {
        r.solver = solver.into();
    }
    super::sampling::apply(&args.sampling, &mut r)?;
    r.images_per_prompt = args.num_images;
    r.latents = Latents::Seed(seed);
    r.max_sequence_length = args.max_sequence_length;
    r.system_prompt = args.system_prompt.clone();
    r.scaling_watershed = args.scaling_watershed;
    Ok(r)
}

/// Lumina-Next's img2img script default (`lumina_reference.md` §4.1).
const IMG2IMG_STRENGTH: f64 = 0.6;

fn progress(quiet: bool, steps: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    let style = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}, {per_sec}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
