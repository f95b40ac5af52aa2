//! Fixed-grid ODE solvers for `dx/dt = v(x, t)`, stepping exactly on the grid like
//! torchdiffeq's fixed-grid methods (which upstream Lumina calls through `odeint`).

use std::str::FromStr;

use candle_core::Tensor;

use super::field::{TimePoint, VelocityField};
use super::schedule::check_grid;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// First order; one evaluation per step.
    Euler,
    /// Explicit midpoint, second order; two evaluations (the second at the half step).
    Midpoint,
    /// Heun (explicit trapezoid), second order; two evaluations.
    Heun,
    /// Fourth order, torchdiffeq's `rk4` — Kutta's **3/8 rule** (`rk4_alt_step_func`), not the
    /// classic RK4; four evaluations.
    Rk4,
}

impl Solver {
    pub const ALL: [Solver; 4] = [Solver::Euler, Solver::Midpoint, Solver::Heun, Solver::Rk4];

    pub fn name(&self) -> &'static str {
        match self {
            Solver::Euler => "euler",
            Solver::Midpoint => "midpoint",
            Solver::Heun => "heun",
            Solver::Rk4 => "rk4",
        }
    }

    /// Velocity evaluations per step.
    pub fn evaluations(&self) -> usize {
        match self {
            Solver::Euler => 1,
            Solver::Midpoint | Solver::Heun => 2,
            Solver::Rk4 => 4,
        }
    }

    pub fn order(&self) -> usize {
        match self {
            Solver::Euler => 1,
            Solver::Midpoint | Solver::Heun => 2,
            Solver::Rk4 => 4,
        }
    }

    /// One step from `t0` to `t1`; `step`/`steps` locate it in the solve.
    pub fn step(
        &self,
        field: &impl VelocityField,
        x: &Tensor,
        (t0, t1): (f64, f64),
        (step, steps): (usize, usize),
    ) -> Result<Tensor> {
        let h = t1 - t0;
        let v = |x: &Tensor, t: f64| field.velocity(x, TimePoint { t, step, steps });
        // x + h·Σ cᵢ·kᵢ
        let advance = |terms: &[(f64, &Tensor)]| -> Result<Tensor> {
            let mut acc = x.clone();
            for (c, k) in terms {
                acc = (acc + (*k * (h * c))?)?;
            }
            Ok(acc)
        };
        match self {
            Solver::Euler => advance(&[(1.0, &v(x, t0)?)]),
            Solver::Midpoint => {
                let k1 = v(x, t0)?;
                let k2 = v(&advance(&[(0.5, &k1)])?, t0 + 0.5 * h)?;
                advance(&[(1.0, &k2)])
            }
            Solver::Heun => {
                let k1 = v(x, t0)?;
                let k2 = v(&advance(&[(1.0, &k1)])?, t1)?;
                advance(&[(0.5, &k1), (0.5, &k2)])
            }
            Solver::Rk4 => {
                let third = 1.0 / 3.0;
                let k1 = v(x, t0)?;
                let k2 = v(&advance(&[(third, &k1)])?, t0 + h * third)?;
                let k3 = v(
                    &advance(&[(-third, &k1), (1.0, &k2)])?,
                    t0 + h * 2.0 * third,
                )?;
                let k4 = v(&advance(&[(1.0, &k1), (-1.0, &k2), (1.0, &k3)])?, t1)?;
                advance(&[(0.125, &k1), (0.375, &k2), (0.375, &k3), (0.125, &k4)])
            }
        }
    }
}

impl FromStr for Solver {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Solver::ALL
            .into_iter()
            .find(|solver| solver.name() == s.to_ascii_lowercase())
            .ok_or_else(|| Error::input("solver", "one of euler, midpoint, heun, rk4", s))
    }
}

impl std::fmt::Display for Solver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Progress of a solve, reported after each step.
#[derive(Clone, Copy, Debug)]
pub struct StepDone {
    pub step: usize,
    pub steps: usize,
    pub t: f64,
}

/// Integrates from `grid[0]` to the last grid point and returns the final state.
pub fn sample(
    field: &impl VelocityField,
    x: Tensor,
    grid: &[f64],
    solver: Solver,
) -> Result<Tensor> {
    sample_with(field, x, grid, solver, |_| {})
}

/// [`sample`], calling `on_step` after every step (progress bars, previews).
pub fn sample_with(
    field: &impl VelocityField,
    mut x: Tensor,
    grid: &[f64],
    solver: Solver,
    mut on_step: impl FnMut(StepDone),
) -> Result<Tensor> {
    check_grid(grid)?;
    let steps = grid.len() - 1;
    for (step, w) in grid.windows(2).enumerate() {
        x = solver.step(field, &x, (w[0], w[1]), (step, steps))?;
        on_step(StepDone {
            step,
            steps,
            t: w[1],
        });
    }
    Ok(x)
}
