//! Time grids: increasing from t = 0 (noise) to t = 1 (data).
//!
//! A grid of `steps` intervals has `steps + 1` points. Upstream Lumina counts grid *points*
//! (`num_sampling_steps = N` means N − 1 solver steps); diffusers counts steps.

use crate::error::{Error, Result};

/// A family of time grids.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// t_i = i / n.
    Uniform,
    /// Lumina's rational time shift of a uniform grid, `t ↦ t / (s − (s−1)·t)` (Lumina-T2X
    /// `transport/integrators.py`); s > 1 packs steps near the noise end. In σ = 1 − t it is
    /// diffusers' static `shift` (SD3): σ ↦ sσ / (1 + (s−1)σ).
    Shifted { shift: f64 },
    /// diffusers' exponential "dynamic" shift σ ↦ e^μ / (e^μ + 1/σ − 1), which equals the
    /// static shift with s = e^μ. μ comes from the image size, see [`DynamicShift`].
    DynamicShift { mu: f64 },
}

impl Schedule {
    /// The shift factor s of the equivalent rational shift.
    pub fn shift(&self) -> f64 {
        match *self {
            Schedule::Uniform => 1.0,
            Schedule::Shifted { shift } => shift,
            Schedule::DynamicShift { mu } => mu.exp(),
        }
    }

    /// `steps + 1` increasing points from 0 to 1.
    pub fn grid(&self, steps: usize) -> Result<Vec<f64>> {
        if steps == 0 {
            return Err(Error::input("sampling steps", ">= 1", "0"));
        }
        let s = self.shift();
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::input("time shift", "finite and > 0", s.to_string()));
        }
        Ok((0..=steps)
            .map(|i| shift_time(i as f64 / steps as f64, s))
            .collect())
    }
}

/// `t / (s − (s−1)·t)`: fixes 0 and 1, and maps 0.5 to 1/(1+s).
pub fn shift_time(t: f64, s: f64) -> f64 {
    t / (s - (s - 1.0) * t)
}

/// The resolution-dependent μ of diffusers' flow-matching scheduler: linear in the image
/// token count between (`base_seq_len`, `base_shift`) and (`max_seq_len`, `max_shift`)
/// (`calculate_shift` in `pipeline_lumina2.py`; the fields are the scheduler config's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynamicShift {
    pub base_seq_len: usize,
    pub max_seq_len: usize,
    pub base_shift: f64,
    pub max_shift: f64,
}

impl Default for DynamicShift {
    /// `FlowMatchEulerDiscreteScheduler` defaults.
    fn default() -> Self {
        Self {
            base_seq_len: 256,
            max_seq_len: 4096,
            base_shift: 0.5,
            max_shift: 1.15,
        }
    }
}

impl DynamicShift {
    /// μ for a sequence of `seq_len` image tokens.
    pub fn mu(&self, seq_len: usize) -> f64 {
        let slope = (self.max_shift - self.base_shift)
            / (self.max_seq_len as f64 - self.base_seq_len as f64);
        let intercept = self.base_shift - slope * self.base_seq_len as f64;
        seq_len as f64 * slope + intercept
    }

    pub fn schedule(&self, seq_len: usize) -> Schedule {
        Schedule::DynamicShift {
            mu: self.mu(seq_len),
        }
    }
}

/// Converts a decreasing σ list (diffusers `scheduler.sigmas`, terminal 0 included) into our
/// increasing t grid, checking it is a valid grid.
pub fn grid_from_sigmas(sigmas: &[f64]) -> Result<Vec<f64>> {
    let grid: Vec<f64> = sigmas
        .iter()
        .map(|&s| super::time::t_from_sigma(s))
        .collect();
    check_grid(&grid)?;
    Ok(grid)
}

/// At least two points, strictly increasing, inside [0, 1].
pub fn check_grid(grid: &[f64]) -> Result<()> {
    let ok = grid.len() >= 2
        && grid.iter().all(|t| (0.0..=1.0).contains(t))
        && grid.windows(2).all(|w| w[0] < w[1]);
    if !ok {
        return Err(Error::input(
            "time grid",
            "at least 2 strictly increasing points in [0, 1]",
            format!("{grid:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_packs_points_near_noise_and_keeps_the_ends() -> Result<()> {
        let g = Schedule::Shifted { shift: 4.0 }.grid(2)?;
        assert_eq!(g[0], 0.0);
        assert_eq!(g[2], 1.0);
        assert!((g[1] - 0.2).abs() < 1e-12, "s = 4 maps 0.5 to 0.2");
        assert_eq!(Schedule::Uniform.grid(4)?, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        Ok(())
    }

    #[test]
    fn shift_equals_diffusers_sigma_shift() {
        for &(t, s) in &[(0.3, 6.0), (0.9, 3.0), (0.01, 2.5)] {
            let sigma: f64 = 1.0 - t;
            let diffusers = s * sigma / (1.0 + (s - 1.0) * sigma);
            assert!((shift_time(t, s) - (1.0 - diffusers)).abs() < 1e-12);
        }
    }

    #[test]
    fn dynamic_shift_is_static_shift_with_exp_mu() -> Result<()> {
        let mu = DynamicShift::default().mu(1024);
        let exp_form = |sigma: f64| mu.exp() / (mu.exp() + 1.0 / sigma - 1.0);
        let g = Schedule::DynamicShift { mu }.grid(8)?;
        for (i, t) in g.iter().enumerate().take(8) {
            let sigma = 1.0 - i as f64 / 8.0;
            assert!((t - (1.0 - exp_form(sigma))).abs() < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn mu_interpolates_between_the_configured_ends() {
        let d = DynamicShift::default();
        assert!((d.mu(256) - 0.5).abs() < 1e-12);
        assert!((d.mu(4096) - 1.15).abs() < 1e-12);
    }

    #[test]
    fn bad_grids_are_rejected() {
        assert!(Schedule::Uniform.grid(0).is_err());
        assert!(Schedule::Shifted { shift: -1.0 }.grid(4).is_err());
        assert!(grid_from_sigmas(&[1.0, 0.5, 0.7, 0.0]).is_err());
        assert!(grid_from_sigmas(&[1.0, 0.5, 0.0]).is_ok());
    }
}
