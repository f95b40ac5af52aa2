//! Going past the training size on every pipeline fixture (both families, shared and project
//! cases): every extrapolation method at twice the case's size, img2img and upscaling, and the
//! errors of bad requests.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use lumina::fixtures::max_abs_diff;
use lumina_pipelines::extrapolation::Extrapolation;
use lumina_pipelines::pipeline::InitImage;
use lumina_pipelines::{Latents, Pipeline, Request};
use serde_json::Value;

mod common;
use common::{all_cases, request};

const METHODS: [&str; 10] = [
    "none",
    "pi",
    "ntk",
    "watershed:0.3",
    "time-aware",
    "frequency-aware",
    "ntk-pi",
    "imax:cosine_decay",
    "imax:cosine_shift",
    "imax:constant",
];

/// A case's pipeline and its request, seeded instead of given latents, with few steps.
fn load(case: &Path) -> Result<(Pipeline, Request)> {
    let call: Value = serde_json::from_str(&std::fs::read_to_string(case.join("call.json"))?)?;
    let io: HashMap<String, Tensor> =
        candle_core::safetensors::load(case.join("io.safetensors"), &Device::Cpu)?;
    let init = io.get("init_latents").context("no init_latents")?;
    let pipeline = Pipeline::load(&case.join("pipeline"), DType::F32, &Device::Cpu)?;
    let mut r = request(&call, init)?;
    r.latents = Latents::Seed(5);
    r.steps = r.steps.min(3);
    Ok((pipeline, r))
}

fn check_images(images: &Tensor, r: &Request) -> Result<()> {
    let want = [r.prompts.len() * r.images_per_prompt, r.height, r.width, 3];
    if images.dims() != want {
        bail!("images {:?}, expected {want:?}", images.dims());
    }
    let v = images.flatten_all()?.to_vec1::<f32>()?;
    if v.iter().any(|x| !x.is_finite() || *x < 0.0 || *x > 1.0) {
        bail!("images not finite in [0, 1]");
    }
    Ok(())
}

fn every_method_at_twice_the_size(family: &str) -> Result<()> {
    let cases = all_cases(family)?;
    let mut failures = Vec::new();
    for case in &cases {
        let (pipeline, base) = load(case)?;
        for method in METHODS {
            let mut r = base.clone();
            (r.width, r.height) = (2 * base.width, 2 * base.height);
            r.extrapolation = Some(method.parse::<Extrapolation>()?);
            let run = pipeline
                .generate(&r, |_| {})
                .map_err(anyhow::Error::from)
                .and_then(|out| check_images(&out.images, &r));
            if let Err(e) = run {
                failures.push(format!("{} / {method}: {e:#}", case.display()));
            }
        }
    }
    if !failures.is_empty() {
        bail!("{} failures:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

#[test]
fn lumina_next_runs_every_method_at_twice_its_size() -> Result<()> {
    every_method_at_twice_the_size("pipeline_next")
}

#[test]
fn lumina2_runs_every_method_at_twice_its_size() -> Result<()> {
    every_method_at_twice_the_size("pipeline_lumina2")
}

/// A deterministic picture of the request's size, (H, W, 3) in [0, 1].
fn picture(h: usize, w: usize) -> Result<Tensor> {
    let v: Vec<f32> = (0..h * w * 3)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    Ok(Tensor::from_vec(v, (h, w, 3), &Device::Cpu)?)
}

#[test]
fn img2img_at_strength_one_is_text_to_image_and_lower_strengths_run() -> Result<()> {
    for family in ["pipeline_next", "pipeline_lumina2"] {
        let case = &all_cases(family)?[0];
        let (pipeline, r) = load(case)?;
        let plain = pipeline.generate(&r, |_| {})?;
        let mut with_image = r.clone();
        with_image.init_image = Some(InitImage {
            image: picture(r.height, r.width)?,
            strength: 1.0,
        });
        let same = pipeline.generate(&with_image, |_| {})?;
        assert_eq!(
            max_abs_diff(&same.latents, &plain.latents)?,
            0.0,
            "{family}: strength 1 must be text to image"
        );
        // strength 0.5: the solve starts half-way, from the noised picture
        let mut steps_seen = 0;
        with_image.steps = 4;
        with_image.init_image.as_mut().context("init")?.strength = 0.5;
        let half = pipeline.generate(&with_image, |_| steps_seen += 1)?;
        assert_eq!(steps_seen, 2, "{family}: 4 steps at strength 0.5 run 2");
        check_images(&half.images, &with_image)?;
        // upscaling: a picture half the size guides the target pass
        let mut up = r.clone();
        up.init_image = Some(InitImage {
            image: picture(r.height / 2, r.width / 2)?,
            strength: 1.0,
        });
        check_images(&pipeline.generate(&up, |_| {})?.images, &up)?;
    }
    Ok(())
}

#[test]
fn bad_strengths_images_and_sizes_are_named() -> Result<()> {
    let case = &all_cases("pipeline_next")?[0];
    let (pipeline, r) = load(case)?;
    for strength in [0.0, 1.5, f64::NAN] {
        let mut bad = r.clone();
        bad.init_image = Some(InitImage {
            image: picture(r.height, r.width)?,
            strength,
        });
        let e = pipeline.validate(&bad).expect_err("strength").to_string();
        assert!(e.contains("strength") && e.contains("(0, 1]"), "{e}");
    }
    let mut grey = r.clone();
    grey.init_image = Some(InitImage {
        image: Tensor::zeros((8, 8, 1), DType::F32, &Device::Cpu)?,
        strength: 1.0,
    });
    let e = pipeline.validate(&grey).expect_err("channels").to_string();
    assert!(e.contains("init image") && e.contains("[8, 8, 1]"), "{e}");
    let mut huge = r.clone();
    (huge.width, huge.height) = (100_000, 100_000);
    let e = pipeline.validate(&huge).expect_err("memory").to_string();
    assert!(
        e.contains("estimated peak") && e.contains("largest square"),
        "{e}"
    );
    Ok(())
}
