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
    /// Lumina-Next's sigmoid schedule (see [`sigmoid_time`]): small steps at both ends.
    Sigmoid { mu: f64, alpha: f64, beta: f64 },
}

/// The parameters the Lumina-Next paper gives its sigmoid schedule (µ, α, β).
pub const LUMINA_NEXT_SIGMOID: Schedule = Schedule::Sigmoid {
    mu: 0.6,
    alpha: 6.0,
    beta: 20.0,
};

impl Schedule {
    /// The shift factor s of the equivalent rational shift; `None` for the sigmoid schedule,
    /// which is not one.
    pub fn shift(&self) -> Option<f64> {
        match *self {
            Schedule::Uniform => Some(1.0),
            Schedule::Shifted { shift } => Some(shift),
            Schedule::DynamicShift { mu } => Some(mu.exp()),
            Schedule::Sigmoid { .. } => None,
        }
    }

    /// Checks the parameters: a shift finite and > 0; sigmoid µ in (0, 1), α and β > 0.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Sigmoid { mu, alpha, beta } => {
                if !(mu > 0.0 && mu < 1.0) {
                    return Err(Error::input(
                        "sigmoid schedule µ",
                        "in (0, 1)",
                        mu.to_string(),
                    ));
                }
                for (name, v) in [("sigmoid schedule α", alpha), ("sigmoid schedule β", beta)] {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(Error::input(name, "finite and > 0", v.to_string()));
                    }
                }
                Ok(())
            }
            _ => match self.shift() {
                Some(s) if s.is_finite() && s > 0.0 => Ok(()),
                s => Err(Error::input(
                    "time shift",
                    "finite and > 0",
                    format!("{}", s.unwrap_or(f64::NAN)),
                )),
            },
        }
    }

    /// `steps + 1` increasing points from 0 to 1.
    pub fn grid(&self, steps: usize) -> Result<Vec<f64>> {
        if steps == 0 {
            return Err(Error::input("sampling steps", ">= 1", "0"));
        }
        self.validate()?;
        let u = |i: usize| i as f64 / steps as f64;
        Ok(match *self {
            Schedule::Sigmoid { mu, alpha, beta } => (0..=steps)
                .map(|i| sigmoid_time(u(i), mu, alpha, beta))
                .collect(),
            // validated above: every other schedule is a rational shift
            _ => {
                let s = self.shift().unwrap_or(1.0);
                (0..=steps).map(|i| shift_time(u(i), s)).collect()
            }
        })
    }
}

impl std::fmt::Display for Schedule {
    /// The name [`Schedule::from_str`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Schedule::Uniform => write!(f, "uniform"),
            Schedule::Shifted { shift } => write!(f, "shift:{shift}"),
            Schedule::DynamicShift { mu } => write!(f, "shift:{}", mu.exp()),
            Schedule::Sigmoid { mu, alpha, beta } => write!(f, "sigmoid:{mu},{alpha},{beta}"),
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = Error;

    /// `uniform`, `shift:S`, `sigmoid` (the paper's µ = 0.6, α = 6, β = 20) or
    /// `sigmoid:µ,α,β`.
    fn from_str(text: &str) -> Result<Self> {
        let expected = "uniform, shift:S, sigmoid or sigmoid:µ,α,β";
        let bad = || Error::input("time schedule", expected, text);
        let number = |v: &str| v.trim().parse::<f64>().map_err(|_| bad());
        let (name, rest) = match text.trim().split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (text.trim(), None),
        };
        let schedule = match (name.to_ascii_lowercase().as_str(), rest) {
            ("uniform", None) => Schedule::Uniform,
            ("shift" | "shifted", Some(s)) => Schedule::Shifted { shift: number(s)? },
            ("sigmoid", None) => LUMINA_NEXT_SIGMOID,
            ("sigmoid", Some(p)) => {
                let v = p.split(',').map(number).collect::<Result<Vec<_>>>()?;
                let [mu, alpha, beta] = v[..] else {
                    return Err(bad());
                };
                Schedule::Sigmoid { mu, alpha, beta }
            }
            _ => return Err(bad()),
        };
        schedule.validate()?;
        Ok(schedule)
    }
}

/// Lumina-Next's sigmoid time schedule, u ∈ [0, 1] (uniform) → t ∈ [0, 1].
///
/// The paper (Lumina-Next, arXiv 2406.18583, §3 "sigmoid schedule") describes a piecewise
/// sigmoid with small steps at both ends, where Euler's local truncation error on the flow ODE
/// is largest, and gives µ = 0.6, α = 6, β = 20; no released Lumina code has it and its closed
/// form could not be retrieved, so this form is *derived* from that description: two
/// normalised logistic pieces that meet at u = µ, t = µ — slope α on the noise side, β on the
/// data side —
///
/// ```text
/// u ≤ µ:  t = µ · (σ(α(u − µ)) − σ(−αµ)) / (½ − σ(−αµ))
/// u > µ:  t = µ + (1 − µ) · (σ(β(u − µ)) − ½) / (σ(β(1 − µ)) − ½)
/// ```
///
/// continuous, strictly increasing, t(0) = 0, t(1) = 1.
pub fn sigmoid_time(u: f64, mu: f64, alpha: f64, beta: f64) -> f64 {
    let logistic = |x: f64| 1.0 / (1.0 + (-x).exp());
    if u <= mu {
        let lo = logistic(-alpha * mu);
        mu * (logistic(alpha * (u - mu)) - lo) / (0.5 - lo)
    } else {
        let hi = logistic(beta * (1.0 - mu));
        mu + (1.0 - mu) * (logistic(beta * (u - mu)) - 0.5) / (hi - 0.5)
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
    fn sigmoid_grid_is_monotone_from_0_to_1_and_matches_its_formula() -> Result<()> {
        let logistic = |x: f64| 1.0 / (1.0 + (-x).exp());
        for (mu, alpha, beta) in [(0.6, 6.0, 20.0), (0.5, 3.0, 3.0), (0.3, 10.0, 4.0)] {
            let g = Schedule::Sigmoid { mu, alpha, beta }.grid(10)?;
            assert_eq!(g.len(), 11);
            assert!(g[0].abs() < 1e-12 && (g[10] - 1.0).abs() < 1e-12, "{g:?}");
            assert!(g.windows(2).all(|w| w[0] < w[1]), "not increasing: {g:?}");
            for (i, &t) in g.iter().enumerate() {
                let u = i as f64 / 10.0;
                // the two pieces written out independently
                let want = if u <= mu {
                    let (a, b) = (logistic(-alpha * mu), logistic(0.0));
                    mu * (logistic(alpha * (u - mu)) - a) / (b - a)
                } else {
                    let (a, b) = (logistic(0.0), logistic(beta * (1.0 - mu)));
                    mu + (1.0 - mu) * (logistic(beta * (u - mu)) - a) / (b - a)
                };
                assert!((t - want).abs() < 1e-12, "µ {mu} u {u}: {t} vs {want}");
            }
            // small steps at both ends, the largest in between
            let steps: Vec<f64> = g.windows(2).map(|w| w[1] - w[0]).collect();
            let largest = steps.iter().cloned().fold(0.0, f64::max);
            assert!(steps[0] < largest && steps[9] < largest, "{steps:?}");
        }
        // continuous at µ
        let (below, above) = (
            sigmoid_time(0.6 - 1e-9, 0.6, 6.0, 20.0),
            sigmoid_time(0.6 + 1e-9, 0.6, 6.0, 20.0),
        );
        assert!((below - 0.6).abs() < 1e-6 && (above - 0.6).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn schedules_parse_and_print_back() -> Result<()> {
        for text in ["uniform", "shift:2", "sigmoid:0.6,6,20", "sigmoid:0.5,4,8"] {
            let s: Schedule = text.parse()?;
            assert_eq!(s.to_string(), text);
            assert_eq!(s.to_string().parse::<Schedule>()?, s);
        }
        assert_eq!("sigmoid".parse::<Schedule>()?, LUMINA_NEXT_SIGMOID);
        for bad in [
            "sigmoid:1.2,6,20",
            "sigmoid:0.5,-1,2",
            "sigmoid:0.5,1",
            "shift:0",
            "cosine",
            "shift",
        ] {
            let e = bad.parse::<Schedule>().expect_err(bad).to_string();
            assert!(
                e.contains("schedule") || e.contains("shift") || e.contains("sigmoid"),
                "{bad}: {e}"
            );
        }
        Ok(())
    }

    #[test]
    fn bad_grids_are_rejected() {
        assert!(Schedule::Uniform.grid(0).is_err());
        assert!(Schedule::Shifted { shift: -1.0 }.grid(4).is_err());
        assert!(grid_from_sigmas(&[1.0, 0.5, 0.7, 0.0]).is_err());
        assert!(grid_from_sigmas(&[1.0, 0.5, 0.0]).is_ok());
    }
}
