//! `lumina train`: a from-scratch flow-matching run on the `shapes` task.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use lumina_pipelines::Pipeline;
use lumina_shapes::prompts::{clip_evaluation_prompts, evaluation_prompts};
use lumina_train::eval::{evaluate, evaluate_clips};
use lumina_train::trainer::checkpoint_dir;
use lumina_train::{TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cli::TrainArgs;

/// The evaluation prompt list of a run is fixed by this seed (not the training seed), so that
/// runs are compared on the same prompts.
const EVAL_PROMPT_SEED: u64 = 1234;

/// Threads of candle's elementwise barrier pool during training. Its spinning worker competes
/// with rayon's (matmuls, fused kernels) for this machine's 2 cores: a `shapes` step took
/// 1.62 s with the default pool and 1.51 s with elementwise ops on the calling thread.
const TRAIN_CANDLE_THREADS: &str = "1";

pub fn run(args: &TrainArgs) -> Result<()> {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet; candle reads it when its pool first starts.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", TRAIN_CANDLE_THREADS) };
    }
    let ckpt = checkpoint_dir(&args.out);
    let mut trainer = if args.resume {
        let mut t =
            Trainer::resume(&ckpt).with_context(|| format!("resuming {}", ckpt.display()))?;
        if let Some(steps) = args.steps {
            t.cfg.optim.steps = steps;
        }
        t
    } else {
        let mut cfg = match &args.config {
            Some(path) => TrainConfig::read(path)?,
            None => TrainConfig::preset(&args.preset)?,
        };
        if let Some(steps) = args.steps {
            cfg.optim.steps = steps;
        }
        cfg.validate()?;
        if args.print_config {
            print!("{}", cfg.to_toml()?);
            return Ok(());
        }
        if ckpt.exists() {
            bail!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                args.out.display()
            );
        }
        Trainer::new(cfg)?
    };
    std::fs::create_dir_all(args.out.join("samples"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(args.out.join("config.toml"), trainer.cfg.to_toml()?)?;
    let log_path = args.out.join("log.jsonl");
    // A resumed run redoes the steps after its checkpoint (identically), so their records
    // from the interrupted run go, and its clock goes on from the last kept record.
    let earlier_seconds = if args.resume {
        truncate_log(&log_path, trainer.step_count())?
    } else {
        0.0
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let cfg = trainer.cfg.clone();
    let prompts = evaluation_prompts(
        cfg.eval.prompts_per_kind,
        &mut StdRng::seed_from_u64(EVAL_PROMPT_SEED),
    );
    let clip_prompts = clip_evaluation_prompts(
        cfg.eval.prompts_per_kind,
        &mut StdRng::seed_from_u64(EVAL_PROMPT_SEED),
    );
    eprintln!(
        "training {} parameters, batch {}, {} steps, into {}",
        trainer.parameter_count(),
        cfg.optim.batch_size,
        cfg.optim.steps,
        args.out.display()
    );

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(cfg.optim.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}, {per_sec}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.step_count() as u64);
    let started = Instant::now();
    let mut smoothed: Option<f32> = None;
    let ema_pipeline = |trainer: &Trainer| -> Result<Pipeline> {
        let (model, encoder) = trainer.ema_parts()?;
        Ok(Pipeline::pixel(
            model,
            trainer.tokenizer().clone(),
            encoder,
            trainer.cfg.sampler.clone(),
            &Device::Cpu,
        )?)
    };
    // (accuracy, summary): images by the shapes judge, a clip run's clips by the clip judge
    let judge = |pipeline: &Pipeline, name: &str| -> Result<(f64, String)> {
        let template = pipeline.default_request(vec![]);
        let sheet = args.out.join("samples").join(name);
        let (seeds, none) = (cfg.eval.seeds, |_, _| {});
        Ok(match &cfg.data.clips {
            Some(_) => {
                let r = evaluate_clips(
                    pipeline,
                    &clip_prompts,
                    seeds,
                    0,
                    &template,
                    Some(&sheet),
                    none,
                )?;
                (r.accuracy(), r.summary())
            }
            None => {
                let r = evaluate(pipeline, &prompts, seeds, 0, &template, Some(&sheet), none)?;
                (r.accuracy(), r.summary())
            }
        })
    };
    while trainer.step_count() < cfg.optim.steps {
        let stats = trainer.step()?;
        let s = smoothed.map_or(stats.loss, |s| 0.98 * s + 0.02 * stats.loss);
        smoothed = Some(s);
        bar.set_message(format!(
            "loss {s:.4} |g| {:.2} lr {:.1e}",
            stats.grad_norm, stats.lr
        ));
        bar.inc(1);
        writeln!(
            log,
            "{{\"step\":{},\"loss\":{},\"grad_norm\":{},\"lr\":{},\"seconds\":{:.1}}}",
            stats.step,
            stats.loss,
            stats.grad_norm,
            stats.lr,
            earlier_seconds + started.elapsed().as_secs_f64()
        )?;
        if cfg.checkpoint_every > 0 && stats.step % cfg.checkpoint_every == 0 {
            trainer.save_checkpoint(&ckpt)?;
        }
        if cfg.eval.every > 0 && stats.step % cfg.eval.every == 0 && stats.step < cfg.optim.steps {
            let (accuracy, summary) = judge(
                &ema_pipeline(&trainer)?,
                &format!("step-{:06}.png", stats.step),
            )?;
            let line = format!("step {}: judge accuracy {summary}", stats.step);
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            writeln!(log, "{{\"step\":{},\"accuracy\":{accuracy}}}", stats.step,)?;
        }
    }
    bar.finish_and_clear();
    trainer.save_checkpoint(&ckpt)?;
    let model_dir = args.out.join("model");
    trainer.export(&model_dir, args.export_dtype.into())?;
    // The final verdict is on the model as shipped (its storage dtype), not on the in-memory EMA.
    let exported = Pipeline::load(&model_dir, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading the exported {}", model_dir.display()))?;
    let (accuracy, summary) = judge(&exported, "final.png")?;
    writeln!(
        log,
        "{{\"step\":{},\"accuracy\":{accuracy}}}",
        trainer.step_count(),
    )?;
    eprintln!(
        "done: {} steps in {:.1} min; judge accuracy {}; model in {}",
        trainer.step_count(),
        started.elapsed().as_secs_f64() / 60.0,
        summary,
        model_dir.display()
    );
    Ok(())
}

/// Keeps the records of `log` up to `step` (a checkpoint's) and returns the last kept
/// `seconds`. A line that is not a JSON object with a `step` (the torn last write of a killed
/// run) is dropped with a warning; a missing log is an empty one.
fn truncate_log(log: &Path, step: usize) -> Result<f64> {
    let text = match std::fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0.0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", log.display())),
    };
    let mut kept = String::new();
    let mut seconds = 0.0;
    for (i, line) in text.lines().enumerate() {
        let record: Option<serde_json::Value> = serde_json::from_str(line).ok();
        let Some(record_step) = record.as_ref().and_then(|r| r.get("step")?.as_u64()) else {
            tracing::warn!(file = %log.display(), line = i + 1, "dropping an unreadable log record");
            continue;
        };
        if record_step > step as u64 {
            continue;
        }
        if let Some(s) = record.as_ref().and_then(|r| r.get("seconds")?.as_f64()) {
            seconds = s;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    std::fs::write(log, kept).with_context(|| format!("rewriting {}", log.display()))?;
    Ok(seconds)
}
