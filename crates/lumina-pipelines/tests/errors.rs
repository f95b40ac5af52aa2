//! A pipeline folder or a request that is wrong gets an error naming the file, the option or
//! the allowed values — checked before any generation work.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use lumina::fixtures::fixture_root;
use lumina_pipelines::{Latents, Pipeline, Request};

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

fn scratch(family: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let case = match family {
        "next" => "pipeline_next/two_prompts/pipeline",
        _ => "pipeline_lumina2/one_prompt/pipeline",
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pipeline");
    copy_dir(&fixture_root().join(case), &dir)?;
    Ok((tmp, dir))
}

fn load_err(dir: &Path) -> String {
    match Pipeline::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit(path: &Path, from: &str, to: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    assert!(text.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, text.replace(from, to))?;
    Ok(())
}

#[test]
fn unknown_or_mismatched_component_classes() -> Result<()> {
    let (_t, dir) = scratch("next")?;
    edit(
        &dir.join("text_encoder/config.json"),
        "\"model_type\": \"gemma\"",
        "\"model_type\": \"llama\"",
    )?;
    let err = load_err(&dir);
    assert!(
        err.contains("text_encoder/config.json") && err.contains("model_type `llama`"),
        "{err}"
    );

    let (_t, dir) = scratch("next")?;
    copy_dir(
        &fixture_root().join("lumina2/tiny_square/transformer"),
        &dir.join("transformer"),
    )?;
    std::fs::remove_file(dir.join("transformer/config.json"))?;
    std::fs::copy(
        fixture_root().join("lumina2/tiny_square/transformer/config.json"),
        dir.join("transformer/config.json"),
    )?;
    let err = load_err(&dir);
    assert!(
        err.contains("unknown transformer for this pipeline `Lumina2Transformer2DModel`")
            && err.contains("LuminaNextDiT2DModel"),
        "{err}"
    );
    Ok(())
}

#[test]
fn unsupported_scheduler_and_vae_options_are_refused() -> Result<()> {
    let (_t, dir) = scratch("lumina2")?;
    edit(
        &dir.join("scheduler/scheduler_config.json"),
        "\"use_karras_sigmas\": false",
        "\"use_karras_sigmas\": true",
    )?;
    let err = load_err(&dir);
    assert!(
        err.contains("scheduler_config.json") && err.contains("use_karras_sigmas"),
        "{err}"
    );

    let (_t, dir) = scratch("lumina2")?;
    edit(
        &dir.join("vae/config.json"),
        "\"mid_block_add_attention\": true",
        "\"mid_block_add_attention\": false",
    )?;
    let err = load_err(&dir);
    assert!(
        err.contains("vae/config.json") && err.contains("without mid-block attention"),
        "{err}"
    );

    let (_t, dir) = scratch("lumina2")?;
    std::fs::remove_file(dir.join("tokenizer/tokenizer.json"))?;
    let err = load_err(&dir);
    assert!(
        err.contains("tokenizer") && err.contains("no tokenizer.json"),
        "{err}"
    );
    Ok(())
}

#[test]
fn bad_requests_name_the_allowed_values() -> Result<()> {
    let pipeline = Pipeline::load(
        &fixture_root().join("pipeline_next/two_prompts/pipeline"),
        DType::F32,
        &Device::Cpu,
    )?;
    let base = || {
        let mut r = Request::new(vec!["a cat".into()]);
        (r.width, r.height, r.steps) = (32, 32, 2);
        r
    };
    let check = |r: Request, want: &str| {
        let err = pipeline
            .validate(&r)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(want), "{want:?} not in {err:?}");
    };
    check(
        Request {
            width: 40,
            ..base()
        },
        "width: expected a positive multiple of 16 (nearest: 32 or 48), got 40",
    );
    check(
        Request {
            height: 0,
            ..base()
        },
        "height: expected a positive multiple of 16",
    );
    check(
        Request { steps: 0, ..base() },
        "steps: expected >= 1, got 0",
    );
    check(
        Request {
            prompts: vec![],
            ..base()
        },
        "prompts: expected at least one",
    );
    check(
        Request {
            negative_prompts: Some(vec![]),
            ..base()
        },
        "negative prompts: expected one per prompt (1), got 0",
    );
    check(
        Request {
            cfg_trunc_ratio: 1.5,
            ..base()
        },
        "cfg truncation ratio: expected in [0, 1]",
    );
    check(
        Request {
            schedule: Some(lumina::sample::Schedule::Shifted { shift: -2.0 }),
            ..base()
        },
        "time shift: expected finite and > 0",
    );
    check(
        Request {
            schedule: Some(lumina::sample::Schedule::Sigmoid {
                mu: 1.5,
                alpha: 6.0,
                beta: 20.0,
            }),
            ..base()
        },
        "sigmoid schedule µ: expected in (0, 1), got 1.5",
    );
    check(
        Request {
            context_drop: Some(lumina::nn::ContextDrop {
                factor: 0,
                until: 0.5,
            }),
            ..base()
        },
        "context drop: expected a window >= 1",
    );
    check(
        Request {
            cache_threshold: Some(-0.1),
            ..base()
        },
        "cache threshold: expected finite and >= 0, got -0.1",
    );
    let wrong = Tensor::zeros((1, 4, 5, 5), DType::F32, &Device::Cpu)?;
    let err = pipeline
        .generate(
            &Request {
                latents: Latents::Given(wrong),
                ..base()
            },
            |_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("initial latents: expected shape [1, 4, 4, 4], got [1, 4, 5, 5]"),
        "{err}"
    );
    Ok(())
}

/// Several images per prompt: each keeps its own prompt's caption and mask (diffusers
/// interleaves the masks of a multi-prompt batch), and image i of prompt p equals a run of
/// that prompt alone with the same starting noise.
#[test]
fn images_per_prompt_keep_their_own_caption() -> Result<()> {
    let pipeline = Pipeline::load(
        &fixture_root().join("pipeline_next/two_prompts/pipeline"),
        DType::F32,
        &Device::Cpu,
    )?;
    let prompts = vec![
        "a red circle above a blue square".to_string(),
        "a cat".to_string(),
    ];
    let mut r = Request::new(prompts.clone());
    (r.width, r.height, r.steps, r.images_per_prompt, r.latents) = (32, 32, 2, 2, Latents::Seed(3));
    let both = pipeline.generate(&r, |_| {})?;
    assert_eq!(both.latents.dim(0)?, 4);
    let masks = both
        .prompt_embeds
        .mask
        .to_dtype(DType::U32)?
        .sum(1)?
        .to_vec1::<u32>()?;
    assert_eq!(
        masks,
        vec![8, 8, 3, 3],
        "prompt-major rows: 7 words + BOS twice, then 2 words + BOS"
    );
    // image 3 = prompt 1, second image, seed 3 + 3
    let mut alone = Request::new(vec![prompts[1].clone()]);
    (alone.width, alone.height, alone.steps, alone.latents) = (32, 32, 2, Latents::Seed(6));
    let one = pipeline.generate(&alone, |_| {})?;
    let d = lumina::fixtures::max_abs_diff(&both.latents.narrow(0, 3, 1)?, &one.latents)?;
    assert!(d < 1e-5, "{d}");
    Ok(())
}
