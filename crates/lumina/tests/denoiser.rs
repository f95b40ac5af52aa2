//! A transformer driven by the sampler: the denoiser's velocity is the model's, guidance sees
//! the same numbers as separate cond/uncond calls, RoPE factors follow the schedule.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use lumina::rope::RopeFactors;
use lumina::sample::{
    noise, sample, Guidance, RopeSchedule, Schedule, Solver, TimePoint, VelocityField,
};
use lumina::{Caption, Denoiser, DitInput, Transformer};
use rand::rngs::StdRng;
use rand::SeedableRng;

use common::max_abs_diff;

const FAMILIES: [&str; 2] = ["nextdit", "lumina2"];

fn model(family: &str) -> Result<Transformer> {
    common::tiny_model(family)
}

fn caption(lens: &[usize], seed: u64) -> Result<Caption> {
    common::random_caption(lens, seed)
}

fn latents(b: usize) -> Result<Tensor> {
    Ok(noise::gaussian(
        &[b, 4, 8, 8],
        DType::F32,
        &Device::Cpu,
        &mut StdRng::seed_from_u64(9),
    )?)
}

fn forward(m: &Transformer, x: &Tensor, t: f32, c: &Caption, rope: RopeFactors) -> Result<Tensor> {
    let ts = Tensor::full(t, x.dim(0)?, x.device())?;
    let v = m.forward(&DitInput::new(x, &ts, &c.features, &c.mask).with_rope(rope))?;
    Ok(v.narrow(1, 0, 4)?)
}

fn at(t: f64) -> TimePoint {
    TimePoint {
        t,
        step: 0,
        steps: 10,
    }
}

#[test]
fn guided_velocity_equals_separate_cond_and_uncond_calls() -> Result<()> {
    for family in FAMILIES {
        let m = model(family)?;
        let (cond, uncond) = (caption(&[5, 3], 1)?, caption(&[1, 1], 2)?);
        let guidance = Guidance::full(4.0);
        let d = Denoiser {
            model: &m,
            cond: cond.clone(),
            uncond: Some(uncond.clone()),
            guidance,
            rope: RopeSchedule::default(),
            frame_rope: None,
            base_sequence_length: None,
            text_tiles: None,
            context_drop: None,
            cache: None,
        };
        let x = latents(2)?;
        let got = d.velocity(&x, at(0.4))?;
        let c = forward(&m, &x, 0.4, &cond, RopeFactors::IDENTITY)?;
        let u = forward(&m, &x, 0.4, &uncond, RopeFactors::IDENTITY)?;
        let want = guidance.combine(&c, &u)?;
        assert!(max_abs_diff(&got, &want)? < 1e-5, "{family}");
        // without guidance the velocity is the conditional one, velocity channels only
        let plain = Denoiser {
            guidance: Guidance::NONE,
            uncond: None,
            ..d
        };
        assert_eq!(
            max_abs_diff(&plain.velocity(&x, at(0.4))?, &c)?,
            0.0,
            "{family}"
        );
    }
    Ok(())
}

#[test]
fn time_aware_rope_switches_factors_per_evaluation() -> Result<()> {
    let m = model("nextdit")?;
    let cond = caption(&[4], 3)?;
    // 32² latents from a 16² model: s = 2
    let rope = RopeSchedule::time_aware(32, 32, 16, 0.5)?;
    let d = Denoiser {
        model: &m,
        cond: cond.clone(),
        uncond: None,
        guidance: Guidance::NONE,
        rope,
        frame_rope: None,
        base_sequence_length: None,
        text_tiles: None,
        context_drop: None,
        cache: None,
    };
    let x = latents(1)?;
    let early = forward(&m, &x, 0.2, &cond, RopeFactors::uniform(2.0, 1.0))?;
    let late = forward(&m, &x, 0.7, &cond, RopeFactors::uniform(1.0, 2.0))?;
    assert_eq!(max_abs_diff(&d.velocity(&x, at(0.2))?, &early)?, 0.0);
    assert_eq!(max_abs_diff(&d.velocity(&x, at(0.7))?, &late)?, 0.0);
    let unscaled = forward(&m, &x, 0.2, &cond, RopeFactors::IDENTITY)?;
    assert!(
        max_abs_diff(&early, &unscaled)? > 1e-4,
        "the factors must matter"
    );
    Ok(())
}

#[test]
fn sampling_a_real_model_is_seeded_and_reproducible() -> Result<()> {
    for family in FAMILIES {
        let m = model(family)?;
        let d = Denoiser {
            model: &m,
            cond: caption(&[6], 4)?,
            uncond: Some(caption(&[1], 5)?),
            guidance: Guidance::first_channels(4.0, 3),
            rope: RopeSchedule::default(),
            frame_rope: None,
            base_sequence_length: Some(16),
            text_tiles: None,
            context_drop: None,
            cache: None,
        };
        let grid = Schedule::Shifted { shift: 4.0 }.grid(4)?;
        let run = |seed| -> Result<Tensor> {
            let x0 = noise::gaussian(
                &[1, 4, 8, 8],
                DType::F32,
                &Device::Cpu,
                &mut StdRng::seed_from_u64(seed),
            )?;
            Ok(sample(&d, x0, &grid, Solver::Midpoint)?)
        };
        let a = run(11)?;
        assert_eq!(
            max_abs_diff(&a, &run(11)?)?,
            0.0,
            "{family}: same seed, same sample"
        );
        assert!(
            max_abs_diff(&a, &run(12)?)? > 1e-3,
            "{family}: another seed, another sample"
        );
        assert!(a
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite()));
    }
    Ok(())
}

#[test]
fn guidance_without_an_unconditional_caption_is_an_error() -> Result<()> {
    let m = model("lumina2")?;
    let d = Denoiser {
        model: &m,
        cond: caption(&[3], 1)?,
        uncond: None,
        guidance: Guidance::full(3.0),
        rope: RopeSchedule::default(),
        frame_rope: None,
        base_sequence_length: None,
        text_tiles: None,
        context_drop: None,
        cache: None,
    };
    let err = d
        .velocity(&latents(1)?, at(0.1))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("unconditional caption"), "{err}");
    Ok(())
}
