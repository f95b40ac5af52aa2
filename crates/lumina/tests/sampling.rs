//! The sampling library on closed-form fields: exact end points, observed convergence order,
//! the exact quadrature weights of each solver, and the guidance modes.

use std::cell::RefCell;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use lumina::sample::{
    noise, sample, Guidance, Renorm, Schedule, Solver, TimePoint, Truncation, VelocityField,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn scalar(x: &Tensor) -> Result<f64> {
    Ok(x.flatten_all()?.to_vec1::<f64>()?[0])
}

fn x0() -> Result<Tensor> {
    Ok(Tensor::new(&[1.0f64], &Device::Cpu)?)
}

/// v = c: every solver lands exactly on x0 + c·(t_end − t_start), on any grid.
#[test]
fn constant_field_end_point_is_exact() -> Result<()> {
    let c = Tensor::new(&[0.7f64, -2.0, 3.5], &Device::Cpu)?;
    let field = |_: &Tensor, _: TimePoint| -> lumina::Result<Tensor> { Ok(c.clone()) };
    let start = Tensor::new(&[1.0f64, 2.0, 3.0], &Device::Cpu)?;
    for schedule in [Schedule::Uniform, Schedule::Shifted { shift: 6.0 }] {
        let grid = schedule.grid(7)?;
        for solver in Solver::ALL {
            let end = sample(&field, start.clone(), &grid, solver)?.to_vec1::<f64>()?;
            for (got, want) in end.iter().zip([1.7, 0.0, 6.5]) {
                assert!(
                    (got - want).abs() < 1e-12,
                    "{solver} on {schedule:?}: {got} vs {want}"
                );
            }
        }
    }
    Ok(())
}

/// dx/dt = (1 + t)·x has x(1) = x(0)·e^1.5; halving the step divides the error by 2^order.
#[test]
fn observed_convergence_order_matches_each_solver() -> Result<()> {
    let field = |x: &Tensor, at: TimePoint| -> lumina::Result<Tensor> { Ok((x * (1.0 + at.t))?) };
    let exact = 1.5f64.exp();
    for (solver, coarse) in [
        (Solver::Euler, 64),
        (Solver::Midpoint, 32),
        (Solver::Heun, 32),
        (Solver::Rk4, 8),
        (Solver::Ab2, 32),
    ] {
        let err = |steps: usize| -> Result<f64> {
            let grid = Schedule::Uniform.grid(steps)?;
            Ok((scalar(&sample(&field, x0()?, &grid, solver)?)? - exact).abs())
        };
        let order = (err(coarse)? / err(2 * coarse)?).log2();
        let want = solver.order() as f64;
        assert!(
            (order - want).abs() < 0.15,
            "{solver}: observed order {order:.3}, expected {want}"
        );
    }
    Ok(())
}

/// On a field of t alone one step is a quadrature rule; the weights identify the method:
/// midpoint f(½); Heun the trapezoid; rk4 Simpson's 3/8 rule (torchdiffeq), not Simpson's.
#[test]
fn one_step_quadrature_identifies_each_method() -> Result<()> {
    let t4 = |x: &Tensor, at: TimePoint| -> lumina::Result<Tensor> {
        Ok(x.ones_like()?.affine(at.t.powi(4), 0.0)?)
    };
    let grid = [0.0, 1.0];
    let one_step = |solver| -> Result<f64> {
        scalar(&sample(
            &t4,
            Tensor::new(&[0.0f64], &Device::Cpu)?,
            &grid,
            solver,
        )?)
    };
    assert!((one_step(Solver::Euler)? - 0.0).abs() < 1e-15);
    assert!((one_step(Solver::Midpoint)? - 0.0625).abs() < 1e-15);
    assert!((one_step(Solver::Heun)? - 0.5).abs() < 1e-15);
    // (0 + 3·(1/3)⁴ + 3·(2/3)⁴ + 1)/8 = 11/54; classic RK4 would give 1.25/6
    assert!((one_step(Solver::Rk4)? - 11.0 / 54.0).abs() < 1e-15);
    // no history on the first step: Euler's rule
    assert!((one_step(Solver::Ab2)? - 0.0).abs() < 1e-15);
    Ok(())
}

/// Each evaluation is told its time (intermediate stages included) and its step.
#[test]
fn evaluations_see_stage_times_and_step_indices() -> Result<()> {
    struct Recorder(RefCell<Vec<(f64, usize, usize)>>);
    impl VelocityField for Recorder {
        fn velocity(&self, x: &Tensor, at: TimePoint) -> lumina::Result<Tensor> {
            self.0.borrow_mut().push((at.t, at.step, at.steps));
            Ok(x.zeros_like()?)
        }
    }
    let rec = Recorder(RefCell::default());
    sample(&rec, x0()?, &[0.0, 0.5, 1.0], Solver::Midpoint)?;
    assert_eq!(
        *rec.0.borrow(),
        vec![(0.0, 0, 2), (0.25, 0, 2), (0.5, 1, 2), (0.75, 1, 2)]
    );
    let rec = Recorder(RefCell::default());
    sample(&rec, x0()?, &[0.0, 0.3], Solver::Rk4)?;
    let times: Vec<f64> = rec.0.borrow().iter().map(|r| r.0).collect();
    for (got, want) in times.iter().zip([0.0, 0.1, 0.2, 0.3]) {
        assert!((got - want).abs() < 1e-15);
    }
    assert_eq!(Solver::Heun.evaluations(), 2);
    Ok(())
}

fn velocities() -> Result<(Tensor, Tensor)> {
    let dev = Device::Cpu;
    let cond = Tensor::randn(0f32, 1.0, (2, 4, 3, 5), &dev)?;
    let uncond = Tensor::randn(0f32, 1.0, (2, 4, 3, 5), &dev)?;
    Ok((cond, uncond))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn guidance_modes_combine_as_specified() -> Result<()> {
    let (c, u) = velocities()?;
    let standard = (&u + ((&c - &u)? * 4.0)?)?;
    let full = Guidance::full(4.0).combine(&c, &u)?;
    assert!(max_diff(&full, &standard)? < 1e-6);

    // Lumina-Next: channels 0..3 guided, channel 3 conditional
    let quirk = Guidance::first_channels(4.0, 3).combine(&c, &u)?;
    assert!(max_diff(&quirk.narrow(1, 0, 3)?, &standard.narrow(1, 0, 3)?)? < 1e-6);
    assert_eq!(max_diff(&quirk.narrow(1, 3, 1)?, &c.narrow(1, 3, 1)?)?, 0.0);

    // diffusers renormalisation: each (b, c, row) has the conditional row norm
    let rows = Guidance::full(4.0)
        .truncated(Truncation::Never)
        .renormed(Renorm::Rows)
        .combine(&c, &u)?;
    let row_norm = |x: &Tensor| -> Result<Tensor> { Ok(x.sqr()?.sum_keepdim(3)?.sqrt()?) };
    assert!(max_diff(&row_norm(&rows)?, &row_norm(&c)?)? < 1e-5);

    // original clamp: ‖guided‖ ≤ k‖cond‖ per sample, and untouched when already below
    let clamp = Guidance::full(4.0)
        .truncated(Truncation::Never)
        .renormed(Renorm::Clamp(1.0))
        .combine(&c, &u)?;
    let norm = |x: &Tensor| -> Result<Vec<f32>> {
        Ok(x.reshape((2, ()))?
            .sqr()?
            .sum(1)?
            .sqrt()?
            .to_vec1::<f32>()?)
    };
    for (g, c) in norm(&clamp)?.iter().zip(norm(&c)?) {
        assert!(*g <= c * 1.0001, "{g} > {c}");
    }
    let loose = Guidance::full(4.0)
        .truncated(Truncation::Never)
        .renormed(Renorm::Clamp(1e6))
        .combine(&c, &u)?;
    assert!(max_diff(&loose, &standard)? < 1e-6);
    Ok(())
}

#[test]
fn truncation_limits_guidance_to_the_noisy_phase() {
    let at = |t, step| TimePoint { t, step, steps: 8 };
    let steps = Guidance::full(4.0)
        .truncated(Truncation::StepRatio(0.25))
        .renormed(Renorm::Off);
    let active: Vec<bool> = (0..8)
        .map(|i| steps.active(at(i as f64 / 8.0, i)))
        .collect();
    assert_eq!(
        active,
        [true, true, false, false, false, false, false, false]
    );
    let time = Guidance::full(4.0)
        .truncated(Truncation::Time(0.3))
        .renormed(Renorm::Off);
    assert!(time.active(at(0.29, 5)) && !time.active(at(0.3, 0)));
    assert!(!Guidance::full(1.0).active(at(0.0, 0)));
    assert!(!Guidance::NONE.active(at(0.0, 0)));
    // every family takes truncation and renormalisation: Lumina-Next's channel rule too
    let next = Guidance::first_channels(4.0, 3)
        .truncated(Truncation::StepRatio(0.5))
        .renormed(Renorm::Clamp(1.0));
    assert!(next.active(at(0.0, 3)) && !next.active(at(0.5, 4)));
}

#[test]
fn noise_is_reproducible_from_the_seed() -> Result<()> {
    let draw = |seed| -> Result<Tensor> {
        Ok(noise::gaussian(
            &[4, 8, 8],
            DType::F32,
            &Device::Cpu,
            &mut StdRng::seed_from_u64(seed),
        )?)
    };
    assert_eq!(max_diff(&draw(7)?, &draw(7)?)?, 0.0);
    assert!(max_diff(&draw(7)?, &draw(8)?)? > 0.1);
    let big = noise::gaussian(
        &[100_000],
        DType::F32,
        &Device::Cpu,
        &mut StdRng::seed_from_u64(1),
    )?;
    let mean = big.mean_all()?.to_scalar::<f32>()?;
    let var = big.sqr()?.mean_all()?.to_scalar::<f32>()?;
    assert!(
        mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
        "mean {mean}, var {var}"
    );
    Ok(())
}
