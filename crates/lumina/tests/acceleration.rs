//! Cheaper steps on real (tiny) models of both families: Context Drop pools the keys and values
//! of self-attention and nothing else; step caching skips the blocks only where its rule says,
//! and with threshold 0 changes nothing.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use lumina::models::{CacheCall, CacheRule, StepCache};
use lumina::nn::{attention, ContextDrop, KvPool};
use lumina::sample::{noise, sample, Guidance, RopeSchedule, Schedule, Solver};
use lumina::{Caption, Denoiser, DitInput, Transformer};
use rand::rngs::StdRng;
use rand::SeedableRng;

use common::max_abs_diff;

const FAMILIES: [&str; 2] = ["nextdit", "lumina2"];

fn model(family: &str) -> Result<Transformer> {
    common::tiny_model(family)
}

fn gaussian(shape: &[usize], seed: u64) -> Result<Tensor> {
    Ok(noise::gaussian(
        shape,
        DType::F32,
        &Device::Cpu,
        &mut StdRng::seed_from_u64(seed),
    )?)
}

fn caption(lens: &[usize], seed: u64) -> Result<Caption> {
    common::random_caption(lens, seed)
}

fn forward(m: &Transformer, x: &Tensor, c: &Caption, pool: Option<usize>) -> Result<Tensor> {
    let ts = Tensor::full(0.3f32, x.dim(0)?, x.device())?;
    Ok(m.forward(&DitInput::new(x, &ts, &c.features, &c.mask).with_kv_pool(pool))?)
}

#[test]
fn context_drop_of_one_is_plain_attention_bit_for_bit() -> Result<()> {
    for family in FAMILIES {
        let m = model(family)?;
        let (x, c) = (gaussian(&[2, 4, 8, 8], 1)?, caption(&[5, 2], 2)?);
        let plain = forward(&m, &x, &c, None)?;
        assert_eq!(
            max_abs_diff(&forward(&m, &x, &c, Some(1))?, &plain)?,
            0.0,
            "{family}"
        );
        let dropped = forward(&m, &x, &c, Some(2))?;
        assert_eq!(dropped.dims(), plain.dims(), "{family}");
        assert!(
            max_abs_diff(&dropped, &plain)? > 1e-6,
            "{family}: pooling must matter"
        );
        assert!(dropped
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite()));
    }
    Ok(())
}

#[test]
fn context_drop_keeps_rows_of_different_caption_lengths_independent() -> Result<()> {
    // Lumina-Image-2.0 puts each row's image tokens after its own caption: the pooled span and
    // the pooled key mask must follow each row
    for family in FAMILIES {
        let m = model(family)?;
        let (x, c) = (gaussian(&[2, 4, 8, 8], 3)?, caption(&[6, 2], 4)?);
        let both = forward(&m, &x, &c, Some(2))?;
        for (row, len) in [(0, 6), (1, 2)] {
            let alone = Caption::new(
                c.features.narrow(0, row, 1)?.narrow(1, 0, len)?,
                c.mask.narrow(0, row, 1)?.narrow(1, 0, len)?,
            )?;
            let one = forward(&m, &x.narrow(0, row, 1)?, &alone, Some(2))?;
            let diff = max_abs_diff(&both.narrow(0, row, 1)?, &one)?;
            assert!(diff < 1e-5, "{family} row {row}: {diff}");
        }
    }
    Ok(())
}

#[test]
fn pooled_attention_equals_attention_over_explicitly_pooled_keys_and_values() -> Result<()> {
    let (b, h, hkv, rows, cols, dh, f) = (2, 4, 2, 5, 6, 8, 2);
    let n = rows * cols;
    let q = gaussian(&[b, h, n, dh], 5)?;
    let k = gaussian(&[b, hkv, n, dh], 6)?;
    let v = gaussian(&[b, hkv, n, dh], 7)?;
    let pool = KvPool {
        factor: f,
        grid: (rows, cols),
        starts: &[],
    };
    let scale = 0.3;
    // the fast path (the tiled kernel on the CPU) over the pooled keys and values
    let got = attention(&q, &pool.pool(&k)?, &pool.pool(&v)?, None, scale)?;
    // the definition with loops: window means, then softmax(q·kᵀ·scale)·v per head
    let (qv, kv, vv) = (flat(&q)?, flat(&k)?, flat(&v)?);
    let windows: Vec<Vec<usize>> = (0..rows)
        .step_by(f)
        .flat_map(|i| {
            (0..cols).step_by(f).map(move |j| {
                (i..(i + f).min(rows))
                    .flat_map(|r| (j..(j + f).min(cols)).map(move |c| r * cols + c))
                    .collect()
            })
        })
        .collect();
    let mean = |data: &[f32], bi: usize, hk: usize, w: &[usize], d: usize| -> f64 {
        w.iter()
            .map(|&t| data[((bi * hkv + hk) * n + t) * dh + d] as f64)
            .sum::<f64>()
            / w.len() as f64
    };
    let got = flat(&got)?;
    let mut worst = 0.0f64;
    for bi in 0..b {
        for hi in 0..h {
            let hk = hi / (h / hkv);
            let pk: Vec<Vec<f64>> = windows
                .iter()
                .map(|w| (0..dh).map(|d| mean(&kv, bi, hk, w, d)).collect())
                .collect();
            let pv: Vec<Vec<f64>> = windows
                .iter()
                .map(|w| (0..dh).map(|d| mean(&vv, bi, hk, w, d)).collect())
                .collect();
            for t in 0..n {
                let qrow = &qv[((bi * h + hi) * n + t) * dh..][..dh];
                let scores: Vec<f64> = pk
                    .iter()
                    .map(|kr| qrow.iter().zip(kr).map(|(a, b)| *a as f64 * b).sum::<f64>() * scale)
                    .collect();
                let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dh {
                    let want: f64 = e.iter().zip(&pv).map(|(p, vr)| p * vr[d]).sum::<f64>() / z;
                    let have = got[((bi * h + hi) * n + t) * dh + d] as f64;
                    worst = worst.max((want - have).abs());
                }
            }
        }
    }
    assert!(worst < 1e-5, "pooled attention off by {worst}");
    Ok(())
}

/// A tensor's values in row-major order.
fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn denoiser<'a>(
    m: &'a Transformer,
    cache: Option<&'a StepCache>,
    drop: Option<ContextDrop>,
) -> Result<Denoiser<'a>> {
    Ok(Denoiser {
        model: m,
        cond: caption(&[6], 8)?,
        uncond: Some(caption(&[1], 9)?),
        guidance: Guidance::full(3.0),
        rope: RopeSchedule::default(),
        frame_rope: None,
        base_sequence_length: None,
        text_tiles: None,
        context_drop: drop,
        cache,
    })
}

#[test]
fn a_cache_with_threshold_zero_computes_every_step_and_changes_nothing() -> Result<()> {
    let grid = Schedule::Shifted { shift: 2.0 }.grid(6)?;
    for family in FAMILIES {
        let m = model(family)?;
        let x0 = gaussian(&[1, 4, 8, 8], 10)?;
        let plain = sample(
            &denoiser(&m, None, None)?,
            x0.clone(),
            &grid,
            Solver::Midpoint,
        )?;
        let cache = StepCache::new(CacheRule::new(0.0, vec![1.0, 0.0])?);
        let cached = sample(
            &denoiser(&m, Some(&cache), None)?,
            x0,
            &grid,
            Solver::Midpoint,
        )?;
        assert_eq!(max_abs_diff(&cached, &plain)?, 0.0, "{family}");
        let s = cache.stats();
        // 6 midpoint steps, 2 evaluations each, a conditional and an unconditional group
        assert_eq!((s.computed, s.skipped), (24, 0), "{family}");
    }
    Ok(())
}

#[test]
fn a_high_threshold_skips_all_but_the_first_and_last_steps() -> Result<()> {
    let grid = Schedule::Shifted { shift: 2.0 }.grid(6)?;
    for family in FAMILIES {
        let m = model(family)?;
        let x0 = gaussian(&[1, 4, 8, 8], 11)?;
        let cache = StepCache::new(CacheRule::new(1e9, vec![1.0, 0.0])?);
        let cached = sample(
            &denoiser(&m, Some(&cache), None)?,
            x0.clone(),
            &grid,
            Solver::Euler,
        )?;
        let s = cache.stats();
        // Euler: one evaluation per step; steps 0 and 5 compute, 1–4 reuse, per group
        assert_eq!((s.computed, s.skipped), (4, 8), "{family}");
        let plain = sample(&denoiser(&m, None, None)?, x0, &grid, Solver::Euler)?;
        let diff = max_abs_diff(&cached, &plain)?;
        assert!(
            diff > 0.0 && diff.is_finite(),
            "{family}: skipping must change the result"
        );
    }
    Ok(())
}

#[test]
fn recording_pairs_each_evaluation_after_the_first_per_group() -> Result<()> {
    let grid = Schedule::Uniform.grid(5)?;
    let m = model("nextdit")?;
    let cache = StepCache::recording();
    sample(
        &denoiser(
            &m,
            Some(&cache),
            Some(ContextDrop {
                factor: 2,
                until: 0.5,
            }),
        )?,
        gaussian(&[1, 4, 8, 8], 12)?,
        &grid,
        Solver::Euler,
    )?;
    let pairs = cache.recorded();
    assert_eq!(pairs.len(), 2 * 4, "{pairs:?}");
    assert!(pairs
        .iter()
        .all(|(r, o)| r.is_finite() && *r > 0.0 && o.is_finite() && *o > 0.0));
    Ok(())
}

#[test]
fn rows_that_skip_reuse_their_residual_while_the_others_compute() -> Result<()> {
    // two images with captions of different lengths, each its own cache group: at the second
    // call image 0 moved (r ≈ 1 ≥ 0.5, computes), image 1 did not (r = 0, reuses)
    for family in FAMILIES {
        let m = model(family)?;
        let c = caption(&[6, 2], 13)?;
        let ts = Tensor::full(0.3f32, 2, &Device::Cpu)?;
        let cache = StepCache::new(CacheRule::new(0.5, vec![1.0, 0.0])?);
        let groups = [(0, 0..1), (1, 1..2)];
        let call = |x: &Tensor| -> Result<Tensor> {
            let input = DitInput::new(x, &ts, &c.features, &c.mask)
                .with_kv_pool(Some(2))
                .with_cache(Some(CacheCall {
                    cache: &cache,
                    groups: &groups,
                    force: false,
                }));
            Ok(m.forward(&input)?)
        };
        let first_x = gaussian(&[2, 4, 8, 8], 14)?;
        let first = call(&first_x)?;
        let moved = gaussian(&[1, 4, 8, 8], 15)?;
        let second_x = Tensor::cat(&[moved, first_x.narrow(0, 1, 1)?], 0)?;
        let second = call(&second_x)?;
        assert_eq!(cache.stats().computed, 3, "{family}");
        assert_eq!(cache.stats().skipped, 1, "{family}");
        let plain = forward(&m, &second_x, &c, Some(2))?;
        let d0 = max_abs_diff(&second.narrow(0, 0, 1)?, &plain.narrow(0, 0, 1)?)?;
        assert!(
            d0 < 1e-5,
            "{family}: the computing row is a plain forward ({d0})"
        );
        let d1 = max_abs_diff(&second.narrow(0, 1, 1)?, &first.narrow(0, 1, 1)?)?;
        assert!(
            d1 < 1e-5,
            "{family}: the skipping row reuses its residual ({d1})"
        );
    }
    Ok(())
}
