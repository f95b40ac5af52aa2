//! The folder's `scheduler/scheduler_config.json` (diffusers `FlowMatchEulerDiscreteScheduler`)
//! turned into a time grid in our convention, exactly as each pipeline asks the scheduler for
//! one.

use std::path::Path;

use lumina::config::ConfigFile;
use lumina::sample::{check_grid, time::t_from_sigma};
use serde::Deserialize;

use crate::error::{Error, Result};

pub const SCHEDULER_CLASSES: [&str; 1] = ["FlowMatchEulerDiscreteScheduler"];

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "unit")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "base_shift")]
    pub base_shift: f64,
    #[serde(default = "max_shift")]
    pub max_shift: f64,
    #[serde(default = "base_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "max_len")]
    pub max_image_seq_len: usize,
    #[serde(default)]
    pub invert_sigmas: bool,
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default = "exponential")]
    pub time_shift_type: String,
    #[serde(default)]
    pub stochastic_sampling: bool,
}

fn thousand() -> usize {
    1000
}
fn unit() -> f64 {
    1.0
}
fn base_shift() -> f64 {
    0.5
}
fn max_shift() -> f64 {
    1.15
}
fn base_len() -> usize {
    256
}
fn max_len() -> usize {
    4096
}
fn exponential() -> String {
    "exponential".into()
}

/// The σ values the pipeline hands the scheduler.
pub enum SigmaRequest {
    /// None: the scheduler spaces `n` points between its own σ_max and σ_min (LuminaPipeline).
    Default(usize),
    /// Explicit σ values and the dynamic-shift μ (Lumina2Pipeline).
    Given { sigmas: Vec<f64>, mu: f64 },
}

impl SchedulerConfig {
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("scheduler_config.json");
        if !path.is_file() {
            return Err(lumina::Error::MissingConfig {
                dir: dir.to_path_buf(),
            }
            .into());
        }
        let file = ConfigFile::read(&path)?;
        let class = file.class_name.clone().unwrap_or_default();
        if !SCHEDULER_CLASSES.contains(&class.as_str()) {
            return Err(Error::UnknownClass {
                path,
                what: "scheduler",
                class,
                known: SCHEDULER_CLASSES.join(", "),
            });
        }
        let cfg: SchedulerConfig = file.parse()?;
        cfg.check(&path)?;
        Ok(cfg)
    }

    /// Options that change the σ grid in ways not implemented are refused.
    fn check(&self, path: &Path) -> Result<()> {
        let unsupported = [
            (self.invert_sigmas, "invert_sigmas"),
            (self.shift_terminal.is_some(), "shift_terminal"),
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.stochastic_sampling, "stochastic_sampling"),
            (
                !matches!(self.time_shift_type.as_str(), "exponential" | "linear"),
                "time_shift_type",
            ),
        ];
        if let Some((_, name)) = unsupported.iter().find(|(on, _)| *on) {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                reason: format!("scheduler option `{name}` is not supported"),
            });
        }
        if !(self.shift.is_finite() && self.shift > 0.0) || self.num_train_timesteps == 0 {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "shift {} / num_train_timesteps {}",
                    self.shift, self.num_train_timesteps
                ),
            });
        }
        Ok(())
    }

    /// μ of the dynamic shift for `seq_len` (diffusers `calculate_shift`).
    pub fn mu(&self, seq_len: usize) -> f64 {
        lumina::sample::DynamicShift {
            base_seq_len: self.base_image_seq_len,
            max_seq_len: self.max_image_seq_len,
            base_shift: self.base_shift,
            max_shift: self.max_shift,
        }
        .mu(seq_len)
    }

    /// The static shift σ ↦ sσ / (1 + (s−1)σ).
    fn static_shift(&self, sigma: f64) -> f64 {
        self.shift * sigma / (1.0 + (self.shift - 1.0) * sigma)
    }

    fn dynamic_shift(&self, mu: f64, sigma: f64) -> f64 {
        match self.time_shift_type.as_str() {
            "linear" => mu / (mu + (1.0 / sigma - 1.0)),
            _ => mu.exp() / (mu.exp() + (1.0 / sigma - 1.0)),
        }
    }

    /// The increasing t grid (terminal t = 1 included) diffusers' `set_timesteps` builds, with
    /// σ rounded to f32 where diffusers stores them in f32.
    pub fn grid(&self, request: &SigmaRequest) -> Result<Vec<f64>> {
        let n_train = self.num_train_timesteps as f64;
        let sigmas: Vec<f64> = match request {
            SigmaRequest::Default(n) => {
                if self.use_dynamic_shifting {
                    return Err(Error::request(
                        "scheduler",
                        "a static shift (this pipeline passes no μ)",
                        "use_dynamic_shifting = true",
                    ));
                }
                // training σ = t/1000 for t = 1000…1; shifted at init
                let sigma_max = f32r(self.static_shift(1.0));
                let sigma_min = f32r(self.static_shift(1.0 / n_train));
                let (hi, lo) = (sigma_max * n_train, sigma_min * n_train);
                linspace(hi, lo, *n)
                    .into_iter()
                    .map(|t| f32r(self.static_shift(t / n_train)))
                    .collect()
            }
            SigmaRequest::Given { sigmas, mu } => sigmas
                .iter()
                .map(|&s| {
                    let s = f32r(s);
                    f32r(if self.use_dynamic_shifting {
                        self.dynamic_shift(*mu, s)
                    } else {
                        self.static_shift(s)
                    })
                })
                .collect(),
        };
        let mut grid: Vec<f64> = sigmas.into_iter().map(t_from_sigma).collect();
        grid.push(1.0);
        check_grid(&grid)?;
        Ok(grid)
    }
}

/// numpy's `linspace(a, b, n)`.
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => (0..n)
            .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
            .collect(),
    }
}

/// Round through f32, where diffusers keeps σ in float32.
fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(shift: f64, dynamic: bool) -> SchedulerConfig {
        serde_json::from_value(
            serde_json::json!({ "shift": shift, "use_dynamic_shifting": dynamic }),
        )
        .expect("valid")
    }

    #[test]
    fn default_request_spaces_sigma_from_one_to_a_thousandth() -> Result<()> {
        let g = cfg(1.0, false).grid(&SigmaRequest::Default(4))?;
        assert_eq!(g.len(), 5);
        assert_eq!(g[0], 0.0);
        assert!((g[3] - 0.999).abs() < 1e-6 && g[4] == 1.0);
        Ok(())
    }

    #[test]
    fn given_sigmas_take_the_static_or_dynamic_shift() -> Result<()> {
        let sigmas = linspace(1.0, 0.25, 4);
        let g = cfg(6.0, false).grid(&SigmaRequest::Given {
            sigmas: sigmas.clone(),
            mu: 0.0,
        })?;
        let s = 0.5f64;
        assert!((g[2] - (1.0 - 6.0 * s / (1.0 + 5.0 * s))).abs() < 1e-6);
        let mu = 0.7f64;
        let g = cfg(1.0, true).grid(&SigmaRequest::Given { sigmas, mu })?;
        assert!((g[2] - (1.0 - mu.exp() / (mu.exp() + 1.0))).abs() < 1e-6);
        Ok(())
    }
}
