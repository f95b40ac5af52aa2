//! The trainer on a tiny model: the loss falls, a resumed run continues exactly like an
//! uninterrupted one, and the exported folder loads and generates.

use anyhow::Result;
use candle_core::{DType, Device};
use lumina::fixtures::max_abs_diff;
use lumina_pipelines::{Family, Pipeline};
use lumina_shapes::prompts::evaluation_prompts;
use lumina_train::config::AspectBucket;
use lumina_train::eval::evaluate;
use lumina_train::{TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Trains `cfg` for 40 steps: the mean loss of the first and of the last five, and all.
fn first_and_last_losses(mut cfg: TrainConfig) -> Result<(Trainer, f32, f32, Vec<f32>)> {
    cfg.optim.steps = 40;
    let mut trainer = Trainer::new(cfg)?;
    let losses: Vec<f32> = (0..40)
        .map(|_| trainer.step().map(|s| s.loss))
        .collect::<Result<_, _>>()?;
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&losses[..5]), mean(&losses[35..]));
    Ok((trainer, first, last, losses))
}

#[test]
fn loss_falls_on_a_tiny_run() -> Result<()> {
    let (_, first, last, losses) = first_and_last_losses(TrainConfig::tiny())?;
    assert!(
        last < 0.7 * first,
        "loss {first:.3} → {last:.3}: {losses:?}"
    );
    Ok(())
}

#[test]
fn resume_continues_identically() -> Result<()> {
    check_resume(TrainConfig::tiny())
}

/// A run that changes canvas size at step 2 (progressive resolution), checkpointed at step 3
/// past the switch: the resumed run picks the side from the step it restored.
#[test]
fn resume_after_a_resolution_stage_continues_identically() -> Result<()> {
    let mut cfg = TrainConfig::tiny();
    cfg.data.stages = vec![lumina_train::config::ResolutionStage { side: 8, steps: 2 }];
    check_resume(cfg)
}

/// Six steps straight against three, a checkpoint, and three resumed: same losses, weights, EMA.
fn check_resume(cfg: TrainConfig) -> Result<()> {
    let mut straight = Trainer::new(cfg.clone())?;
    let mut straight_losses = Vec::new();
    for _ in 0..6 {
        straight_losses.push(straight.step()?.loss);
    }

    let tmp = tempfile::tempdir()?;
    let ckpt = tmp.path().join("checkpoint");
    let mut first = Trainer::new(cfg)?;
    for _ in 0..3 {
        first.step()?;
    }
    first.save_checkpoint(&ckpt)?;
    drop(first);
    let mut resumed = Trainer::resume(&ckpt)?;
    assert_eq!(resumed.step_count(), 3);
    let mut resumed_losses = Vec::new();
    for _ in 0..3 {
        resumed_losses.push(resumed.step()?.loss);
    }
    assert_eq!(
        &straight_losses[3..],
        resumed_losses.as_slice(),
        "same data, same losses"
    );
    let (a, b) = (straight.weights()?, resumed.weights()?);
    for (name, t) in &a {
        assert_eq!(max_abs_diff(t, &b[name])?, 0.0, "{name}");
    }
    for (name, t) in straight.ema() {
        assert_eq!(max_abs_diff(t, &resumed.ema()[name])?, 0.0, "EMA {name}");
    }
    Ok(())
}

/// Aspect-ratio buckets: each step renders one drawn canvas; a resumed run draws the same
/// canvases.
#[test]
fn resume_with_aspect_buckets_continues_identically() -> Result<()> {
    let mut cfg = TrainConfig::tiny();
    cfg.data.aspects = vec![
        AspectBucket::new(1, 1, 1.0),
        AspectBucket::new(2, 1, 1.0),
        AspectBucket::new(1, 2, 1.0),
    ];
    check_resume(cfg)
}

/// A later stage of a recipe starts from an exported model: its first weights and EMA are the
/// model's, and a model of another architecture is refused by name.
#[test]
fn a_run_starts_from_an_exported_model() -> Result<()> {
    let mut base = Trainer::new(TrainConfig::tiny())?;
    for _ in 0..2 {
        base.step()?;
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    base.export(&dir, DType::F32)?;
    let mut cfg = TrainConfig::tiny();
    cfg.seed = 7;
    cfg.init = Some(dir.clone());
    let next = Trainer::new(cfg)?;
    let (exported, started) = (base.ema(), next.weights()?);
    for (name, t) in exported {
        assert_eq!(max_abs_diff(t, &started[name])?, 0.0, "{name}");
        assert_eq!(max_abs_diff(t, &next.ema()[name])?, 0.0, "EMA {name}");
    }
    let mut wider = TrainConfig::tiny();
    wider.transformer.hidden_size = 48;
    wider.init = Some(dir);
    let e = Trainer::new(wider)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("expects") && e.contains("48"), "{e}");
    Ok(())
}

/// Distillation: a student that starts as its teacher and learns only the teacher's velocity
/// (weight 1) has nothing to learn — its first loss is zero — while plain flow matching from
/// the same start does not; a full-precision model seeds a ternary QAT run, each α starting at
/// mean |W| of the dense weights it takes.
#[test]
fn distillation_targets_the_teachers_velocity() -> Result<()> {
    use lumina_train::config::DistillConfig;
    let mut base = Trainer::new(TrainConfig::tiny())?;
    for _ in 0..3 {
        base.step()?;
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("teacher");
    base.export(&dir, DType::F32)?;
    let student = |weight: f64| -> Result<f32> {
        let mut cfg = TrainConfig::tiny();
        cfg.seed = 3;
        cfg.init = Some(dir.clone());
        cfg.distill = Some(DistillConfig {
            teacher: dir.clone(),
            weight,
        });
        Ok(Trainer::new(cfg)?.step()?.loss)
    };
    let (distilled, plain) = (student(1.0)?, student(0.0)?);
    assert!(
        distilled < 1e-8,
        "the student equals its teacher, yet its loss is {distilled}"
    );
    assert!(plain > 1e-3, "flow-matching loss {plain}");

    let mut qat = TrainConfig::preset("tiny-ternary")?;
    qat.init = Some(dir.clone());
    let trainer = Trainer::new(qat)?;
    let weights = trainer.weights()?;
    let latent = &weights["transformer.layers.0.attn1.to_q.weight"];
    let alpha = weights["transformer.layers.0.attn1.to_q.weight_scale"].to_vec1::<f32>()?[0];
    let gamma = latent.abs()?.mean_all()?.to_scalar::<f32>()?;
    assert_eq!(alpha, gamma);
    let mut bad = TrainConfig::tiny();
    bad.distill = Some(DistillConfig {
        teacher: dir,
        weight: 1.5,
    });
    let e = Trainer::new(bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("distill.weight"), "{e}");
    Ok(())
}

/// A later QAT stage starts from an earlier QAT run's checkpoint: its latents and learnt α come
/// from that run's EMA (the packed export has neither); a dense run's checkpoint has no α and is
/// refused by name.
#[test]
fn a_qat_stage_continues_from_a_checkpoint() -> Result<()> {
    let mut first = Trainer::new(TrainConfig::preset("tiny-ternary")?)?;
    for _ in 0..2 {
        first.step()?;
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("checkpoint");
    first.save_checkpoint(&dir)?;
    let mut cfg = TrainConfig::preset("tiny-ternary")?;
    cfg.seed = 9;
    cfg.init = Some(dir);
    let next = Trainer::new(cfg)?;
    let started = next.weights()?;
    assert!(started.keys().any(|k| k.ends_with(".weight_scale")));
    for (name, t) in first.ema() {
        assert_eq!(max_abs_diff(t, &started[name])?, 0.0, "{name}");
    }

    let dense = Trainer::new(TrainConfig::tiny())?;
    let dense_dir = tmp.path().join("dense");
    dense.save_checkpoint(&dense_dir)?;
    let mut qat = TrainConfig::preset("tiny-ternary")?;
    qat.init = Some(dense_dir);
    let e = Trainer::new(qat)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("weight_scale") && e.contains("ema.safetensors"),
        "{e}"
    );
    Ok(())
}

#[test]
fn an_exported_model_loads_generates_and_is_judged() -> Result<()> {
    let mut trainer = Trainer::new(TrainConfig::tiny())?;
    for _ in 0..3 {
        trainer.step()?;
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    trainer.export(&dir, DType::F32)?;
    let pipeline = Pipeline::load(&dir, DType::F32, &Device::Cpu)?;
    assert_eq!(pipeline.family, Family::Pixel);
    assert_eq!(pipeline.native_size(), 16);
    let template = pipeline.default_request(vec![]);
    assert_eq!((template.steps, template.width), (4, 16));
    let prompts = evaluation_prompts(1, &mut StdRng::seed_from_u64(0));
    let grid = tmp.path().join("grid.png");
    let report = evaluate(&pipeline, &prompts, 2, 0, &template, Some(&grid), |_, _| {})?;
    assert_eq!(report.total, 8);
    assert_eq!(report.per_kind.values().map(|(_, t)| t).sum::<usize>(), 8);
    assert!(grid.is_file());
    // the in-memory EMA pipeline sees the same model
    let live = live_pipeline(&trainer)?;
    let again = evaluate(&live, &prompts, 2, 0, &template, None, |_, _| {})?;
    assert_eq!(again.faults(), report.faults());
    assert_eq!(
        again,
        Report {
            failures: again.failures.clone(),
            ..report.clone()
        }
    );
    Ok(())
}

use lumina_train::eval::Report;

/// The EMA weights and exported tensors are plain values, not autograd nodes: sampling from
/// them must not track (or keep alive) the training graph.
#[test]
fn ema_weights_are_detached_from_the_graph() -> Result<()> {
    let mut trainer = Trainer::new(TrainConfig::tiny())?;
    trainer.step()?;
    trainer.step()?;
    assert!(trainer.ema().values().all(|t| !t.track_op()));
    assert!(trainer.weights()?.values().all(|t| !t.track_op()));
    Ok(())
}

/// TerDiT QAT on the tiny model: the loss falls, the export is a 2-bit ternary checkpoint,
/// and the exported model samples exactly like the trainer's own EMA state.
#[test]
fn ternary_qat_trains_and_exports_a_packed_model() -> Result<()> {
    lumina::kernels::ternary::set_activations(lumina::kernels::ternary::Activations::Exact);
    let (trainer, first, last, losses) =
        first_and_last_losses(TrainConfig::preset("tiny-ternary")?)?;
    assert!(
        last < 0.8 * first,
        "loss {first:.3} → {last:.3}: {losses:?}"
    );

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    trainer.export(&dir, DType::F32)?;
    let files = lumina::weights::WeightFiles::open_dir(&dir.join("transformer"))?;
    assert_eq!(
        files
            .metadata()
            .get(lumina::weights::ternary::QUANTIZATION_KEY)
            .map(String::as_str),
        Some(lumina::weights::ternary::TERNARY)
    );
    let packed: Vec<&str> = files
        .keys()
        .filter(|k| k.ends_with(".weight_packed"))
        .collect();
    // per block: attn1 q/k/v, attn2 q/k/v/out, three SwiGLU linears, the adaLN linear
    assert_eq!(
        packed.len(),
        11 * trainer.cfg.transformer.num_layers,
        "{packed:?}"
    );
    assert!(files
        .keys()
        .any(|k| k.ends_with("norm1.norm_modulation.weight")));

    let pipeline = Pipeline::load(&dir, DType::F32, &Device::Cpu)?;
    let live = live_pipeline(&trainer)?;
    let prompts = evaluation_prompts(1, &mut StdRng::seed_from_u64(0));
    let template = pipeline.default_request(vec![]);
    let a = evaluate(&pipeline, &prompts, 1, 0, &template, None, |_, _| {})?;
    let b = evaluate(&live, &prompts, 1, 0, &template, None, |_, _| {})?;
    assert_eq!(a, b);
    Ok(())
}

/// QAT with one α per output channel (`ternary_scale = "channel"`): every ternary layer learns
/// one α per row, the export stores them as `weight_scale` `(out,)` with each row's codes from
/// its own mean |W|, and the exported model draws the same image as the trainer's EMA state.
#[test]
fn per_channel_qat_exports_one_alpha_per_row_and_samples_as_trained() -> Result<()> {
    use lumina::kernels::ternary::{set_activations, Activations};
    use lumina::nn::TernaryScale;
    set_activations(Activations::Exact);
    let mut cfg = TrainConfig::preset("tiny-ternary")?;
    cfg.ternary_scale = TernaryScale::Channel;
    let mut trainer = Trainer::new(cfg.clone())?;
    for _ in 0..3 {
        trainer.step()?;
    }
    let weights = trainer.weights()?;
    let mut scales = 0;
    for (name, alpha) in weights.iter().filter(|(k, _)| k.ends_with(".weight_scale")) {
        let latent = &weights[&name.replace(".weight_scale", ".weight")];
        assert_eq!(alpha.dims(), [latent.dim(0)?], "{name}");
        scales += 1;
    }
    assert_eq!(scales, 11 * cfg.transformer.num_layers);

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    trainer.export(&dir, DType::F32)?;
    let files = lumina::weights::WeightFiles::open_dir(&dir.join("transformer"))?;
    let per_row = files
        .keys()
        .filter(|k| k.ends_with(".weight_scale"))
        .filter(|k| {
            files
                .info(k)
                .is_some_and(|i| i.shape.len() == 1 && i.shape[0] > 1)
        })
        .count();
    assert_eq!(per_row, scales, "every exported α one per row");

    let pipeline = Pipeline::load(&dir, DType::F32, &Device::Cpu)?;
    let live = live_pipeline(&trainer)?;
    let request = pipeline.default_request(vec!["a red circle".into()]);
    let exported = pipeline.generate(&request, |_| {})?.images;
    let trained = live.generate(&request, |_| {})?.images;
    assert_eq!(max_abs_diff(&exported, &trained)?, 0.0);

    let mut dense = TrainConfig::tiny();
    dense.ternary_scale = TernaryScale::Channel;
    let e = Trainer::new(dense)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("ternary_scale"), "{e}");
    Ok(())
}

/// The trainer's EMA state as a pipeline, without exporting it.
fn live_pipeline(trainer: &Trainer) -> Result<Pipeline> {
    let (model, encoder) = trainer.ema_parts()?;
    Ok(Pipeline::pixel(
        model,
        trainer.tokenizer().clone(),
        encoder,
        trainer.cfg.sampler.clone(),
        &Device::Cpu,
    )?)
}
