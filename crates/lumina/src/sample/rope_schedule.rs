//! Which RoPE factors a solver evaluation uses: the tuning-free resolution-extrapolation rules
//! of Lumina-Next and I-Max, as pure functions of the time and the canvas.
//!
//! References: `ternary_imax.md` §C.3–C.4 (I-Max's NTK floored by PI; Lumina-Next's frequency-
//! and time-aware scaled RoPE, `lumina_next_t2i/models/model.py`), `lumina_reference.md` §4.3
//! (the released watershed switch, diffusers `LuminaPipeline.scaling_watershed`).

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::rope::{AxisFactors, RopeFactors, ROPE_THETA};

/// A RoPE extrapolation rule. `s` is an axis's length ratio (target tokens / training tokens),
/// `D` the head dimension, `ω⁰` the unscaled frequencies; see [`AxisFactors`] for the form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeMethod {
    /// No scaling: tokens past the training grid get positions the model never saw.
    None,
    /// Position interpolation: ω⁰ / s (Chen et al. 2023; upstream `rope_scaling_factor`).
    Interpolation,
    /// NTK-aware scaling as Lumina-Next's code does it: the base θ becomes θ·s.
    Ntk,
    /// Lumina-Next's released time-aware switch (`forward_with_cfg`, diffusers
    /// `scaling_watershed`): interpolation while t < τ (the noisy phase that lays out the
    /// composition), NTK from τ on (details).
    Watershed { tau: f64 },
    /// Lumina-Next's time-aware scaled RoPE (paper §2.3; `ternary_imax.md` §C.4): the base
    /// θ·s^(D/(t·D+1)), floored by interpolation — pure interpolation near noise, NTK (θ·s)
    /// at t = 1.
    TimeAware,
    /// Lumina-Next's frequency-aware scaled RoPE: the base θ·s^(D/d_target), floored by
    /// interpolation, where d_target = D·log_θ(L/2π) is the dimension whose wavelength equals
    /// the training length L; every frequency that completed a period in training keeps NTK,
    /// the rest interpolate.
    FrequencyAware,
    /// I-Max's rule (`transformer_flux.py::rope`): NTK with base factor `ntk`, floored by
    /// interpolation, ω = max(ω_NTK, ω_PI).
    NtkInterpolation { ntk: f64 },
}

/// I-Max's NTK factor at the target resolution (`ternary_imax.md` §C.3: κ = 10 in stage 2).
pub const IMAX_NTK_FACTOR: f64 = 10.0;

impl RopeMethod {
    /// The names `--rope` takes.
    pub const NAMES: [&'static str; 7] = [
        "none",
        "pi",
        "ntk",
        "watershed",
        "time-aware",
        "frequency-aware",
        "ntk-pi",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            RopeMethod::None => "none",
            RopeMethod::Interpolation => "pi",
            RopeMethod::Ntk => "ntk",
            RopeMethod::Watershed { .. } => "watershed",
            RopeMethod::TimeAware => "time-aware",
            RopeMethod::FrequencyAware => "frequency-aware",
            RopeMethod::NtkInterpolation { .. } => "ntk-pi",
        }
    }

    fn validate(&self) -> Result<()> {
        match *self {
            RopeMethod::Watershed { tau } if !(0.0..=1.0).contains(&tau) => Err(Error::input(
                "RoPE watershed",
                "a time in [0, 1]",
                tau.to_string(),
            )),
            RopeMethod::NtkInterpolation { ntk } if !(ntk.is_finite() && ntk >= 1.0) => Err(
                Error::input("I-Max NTK factor", "finite and >= 1", ntk.to_string()),
            ),
            _ => Ok(()),
        }
    }

    /// One axis's factors at time `t`, for length ratio `s`, training length `train_tokens`
    /// and head dimension `head_dim`.
    pub fn axis(&self, t: f64, s: f64, train_tokens: f64, head_dim: usize) -> AxisFactors {
        let d = head_dim as f64;
        // a base so large that every frequency but the first is ~0 is the interpolation floor
        // already; keep the factor finite
        let capped = |exponent: f64| s.powf(exponent.min(1e3)).min(1e30);
        match *self {
            RopeMethod::None => AxisFactors::IDENTITY,
            RopeMethod::Interpolation => AxisFactors::interpolation(s),
            RopeMethod::Ntk => AxisFactors {
                ntk: s,
                ..AxisFactors::IDENTITY
            },
            RopeMethod::Watershed { tau } if t < tau => AxisFactors::interpolation(s),
            RopeMethod::Watershed { .. } => AxisFactors {
                ntk: s,
                ..AxisFactors::IDENTITY
            },
            RopeMethod::TimeAware => AxisFactors::ntk_floored(capped(d / (t * d + 1.0)), s),
            RopeMethod::FrequencyAware => {
                // the exponent e* = 2k/d of the frequency whose wavelength 2π·θ^e* is L
                let e = (train_tokens / (2.0 * std::f64::consts::PI)).ln() / ROPE_THETA.ln();
                if e <= 0.0 {
                    // not even the fastest frequency turned once in training
                    AxisFactors::interpolation(s)
                } else {
                    AxisFactors::ntk_floored(capped(1.0 / e), s)
                }
            }
            RopeMethod::NtkInterpolation { .. } if s <= 1.0 => AxisFactors::IDENTITY,
            RopeMethod::NtkInterpolation { ntk } => AxisFactors::ntk_floored(ntk, s),
        }
    }
}

impl FromStr for RopeMethod {
    type Err = Error;

    /// `none`, `pi`, `ntk`, `watershed[:τ]` (0.3 by default, the upstream demo's),
    /// `time-aware`, `frequency-aware`, `ntk-pi[:κ]` (I-Max's 10 by default).
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let number = |default: f64| -> Result<f64> {
            arg.map_or(Ok(default), |a| {
                a.parse()
                    .map_err(|_| Error::input("RoPE method argument", "a number", a))
            })
        };
        let method = match (name.to_ascii_lowercase().as_str(), arg) {
            ("none", None) => RopeMethod::None,
            ("pi", None) => RopeMethod::Interpolation,
            ("ntk", None) => RopeMethod::Ntk,
            ("watershed", _) => RopeMethod::Watershed { tau: number(0.3)? },
            ("time-aware", None) => RopeMethod::TimeAware,
            ("frequency-aware", None) => RopeMethod::FrequencyAware,
            ("ntk-pi", _) => RopeMethod::NtkInterpolation {
                ntk: number(IMAX_NTK_FACTOR)?,
            },
            _ => {
                return Err(Error::input(
                    "RoPE method",
                    format!(
                        "one of {} (watershed and ntk-pi take :NUMBER)",
                        Self::NAMES.join(", ")
                    ),
                    s,
                ))
            }
        };
        method.validate()?;
        Ok(method)
    }
}

/// One axis of a canvas against the training canvas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AxisScale {
    /// Length ratio s of this axis: target tokens / training tokens.
    pub scale: f64,
    /// Tokens along this axis at the training resolution.
    pub train_tokens: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeSchedule {
    /// The same factors at every evaluation (identity at the native resolution).
    Fixed(RopeFactors),
    /// A rule evaluated per solver evaluation (midpoints and intermediate stages included).
    Scaled {
        method: RopeMethod,
        rows: AxisScale,
        cols: AxisScale,
        head_dim: usize,
    },
}

impl Default for RopeSchedule {
    fn default() -> Self {
        RopeSchedule::Fixed(RopeFactors::IDENTITY)
    }
}

impl RopeSchedule {
    /// diffusers `LuminaPipeline`'s rule: one scale s = sqrt(w·h)/native for both axes (below
    /// 1 too, at sizes under the training size), interpolation before the watershed and NTK
    /// from it on.
    pub fn time_aware(width: usize, height: usize, native: usize, watershed: f64) -> Result<Self> {
        if native == 0 || width == 0 || height == 0 {
            return Err(Error::input(
                "image size",
                "non-zero sizes",
                format!("{width}x{height} (native {native})"),
            ));
        }
        let method = RopeMethod::Watershed { tau: watershed };
        method.validate()?;
        let axis = AxisScale {
            scale: ((width * height) as f64).sqrt() / native as f64,
            train_tokens: 0.0,
        };
        Ok(RopeSchedule::Scaled {
            method,
            rows: axis,
            cols: axis,
            head_dim: 0,
        })
    }

    /// `method` for a `rows × cols` token grid generated by a model trained on
    /// `train_rows × train_cols` tokens: each axis scales by its own ratio, and only when it
    /// grew (a wide canvas leaves its rows alone).
    pub fn per_axis(
        method: RopeMethod,
        (rows, cols): (usize, usize),
        (train_rows, train_cols): (usize, usize),
        head_dim: usize,
    ) -> Result<Self> {
        method.validate()?;
        if train_rows == 0 || train_cols == 0 || rows == 0 || cols == 0 {
            return Err(Error::input(
                "token grid",
                "non-zero sizes",
                format!("{rows}x{cols} (trained on {train_rows}x{train_cols})"),
            ));
        }
        let axis = |n: usize, train: usize| AxisScale {
            scale: (n as f64 / train as f64).max(1.0),
            train_tokens: train as f64,
        };
        Ok(RopeSchedule::Scaled {
            method,
            rows: axis(rows, train_rows),
            cols: axis(cols, train_cols),
            head_dim,
        })
    }

    /// The factors at time `t`.
    pub fn at(&self, t: f64) -> RopeFactors {
        match *self {
            RopeSchedule::Fixed(f) => f,
            RopeSchedule::Scaled {
                method,
                rows,
                cols,
                head_dim,
            } => RopeFactors {
                rows: method.axis(t, rows.scale, rows.train_tokens, head_dim),
                cols: method.axis(t, cols.scale, cols.train_tokens, head_dim),
                frames: AxisFactors::IDENTITY,
            },
        }
    }
}

/// The frame axis of a clip longer than the model's training clips: `method` at the clip's
/// length ratio, evaluated per solver evaluation like the spatial rules (Lumina-Next's
/// time-aware rule turns with t here too). The axis has `frame_dim` head dimensions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameRope {
    pub method: RopeMethod,
    pub axis: AxisScale,
    pub frame_dim: usize,
}

impl FrameRope {
    /// `method` for a clip of `frames` frame tokens from a model trained on `train_frames`;
    /// `None` when the clip is no longer than trained (its frame axis is as trained).
    pub fn for_clip(
        method: RopeMethod,
        frames: usize,
        train_frames: usize,
        frame_dim: usize,
    ) -> Result<Option<Self>> {
        method.validate()?;
        if frames == 0 || train_frames == 0 {
            return Err(Error::input(
                "clip length",
                "non-zero frame counts",
                format!("{frames} frame tokens (trained on {train_frames})"),
            ));
        }
        Ok(
            (frames > train_frames && frame_dim > 0).then_some(FrameRope {
                method,
                axis: AxisScale {
                    scale: frames as f64 / train_frames as f64,
                    train_tokens: train_frames as f64,
                },
                frame_dim,
            }),
        )
    }

    pub fn at(&self, t: f64) -> AxisFactors {
        self.method
            .axis(t, self.axis.scale, self.axis.train_tokens, self.frame_dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_axis_scales_only_past_its_training_length() -> Result<()> {
        let pi = RopeMethod::Interpolation;
        assert_eq!(FrameRope::for_clip(pi, 4, 4, 8)?, None);
        assert_eq!(FrameRope::for_clip(pi, 2, 4, 8)?, None);
        // an image model has no frame axis to scale
        assert_eq!(FrameRope::for_clip(pi, 8, 4, 0)?, None);
        let twice = FrameRope::for_clip(pi, 8, 4, 8)?.expect("longer than trained");
        assert_eq!(twice.at(0.5), AxisFactors::interpolation(2.0));
        // the time-aware rule turns with t on the frame axis too: interpolation at noise,
        // NTK by the length ratio at the data end
        let aware = FrameRope::for_clip(RopeMethod::TimeAware, 16, 4, 8)?.expect("longer");
        assert_eq!(aware.at(0.0).ntk, 4f64.powf(8.0));
        assert!((aware.at(1.0).ntk - 4f64.powf(8.0 / 9.0)).abs() < 1e-12);
        assert_eq!(aware.at(1.0).floor, Some(4.0));
        assert!(FrameRope::for_clip(pi, 0, 4, 8).is_err());
        Ok(())
    }

    #[test]
    fn switches_from_interpolation_to_ntk_at_the_watershed() -> Result<()> {
        let s = RopeSchedule::time_aware(2048, 2048, 1024, 0.3)?;
        assert_eq!(s.at(0.1), RopeFactors::uniform(2.0, 1.0));
        assert_eq!(s.at(0.3), RopeFactors::uniform(1.0, 2.0));
        assert_eq!(RopeSchedule::default().at(0.5), RopeFactors::IDENTITY);
        Ok(())
    }

    #[test]
    fn time_aware_moves_from_interpolation_to_ntk() {
        let (s, d) = (2.0, 48);
        // t = 0: base θ·s^D: every frequency but the first falls to the interpolation floor
        let early = RopeMethod::TimeAware.axis(0.0, s, 8.0, d);
        assert_eq!(early.floor, Some(s));
        assert!((early.ntk - s.powf(48.0)).abs() < 1e-3 * s.powf(48.0));
        // t = 1: base θ·s^(D/(D+1)) ≈ θ·s
        let late = RopeMethod::TimeAware.axis(1.0, s, 8.0, d);
        assert!((late.ntk - s.powf(48.0 / 49.0)).abs() < 1e-12);
        // the formula at t = 0.5: θ·s^(D/(D/2+1))
        let mid = RopeMethod::TimeAware.axis(0.5, s, 8.0, d);
        assert!((mid.ntk - s.powf(48.0 / 25.0)).abs() < 1e-12);
    }

    #[test]
    fn frequency_aware_interpolates_exactly_the_training_wavelength() {
        // Lumina-Next 2B: L = 64 tokens, D = 72 → d_target = 72·log_θ(64/2π) ≈ 18.14
        let (s, d, l) = (2.0, 72, 64.0);
        let f = RopeMethod::FrequencyAware.axis(0.4, s, l, d);
        let e = (l / (2.0 * std::f64::consts::PI)).ln() / ROPE_THETA.ln();
        assert!((f.ntk - s.powf(1.0 / e)).abs() < 1e-9 * f.ntk);
        assert!((72.0 * e - 18.144).abs() < 1e-3, "{}", 72.0 * e);
        // the frequency with exponent e is divided by exactly s
        let w = (ROPE_THETA * f.ntk).powf(-e);
        assert!((w - ROPE_THETA.powf(-e) / s).abs() < 1e-12);
        // a training length shorter than one turn of the fastest frequency: interpolation
        assert_eq!(
            RopeMethod::FrequencyAware.axis(0.4, s, 4.0, d),
            AxisFactors::interpolation(s)
        );
    }

    #[test]
    fn only_the_axis_that_grew_is_scaled() -> Result<()> {
        let wide = RopeSchedule::per_axis(RopeMethod::Interpolation, (8, 16), (8, 8), 48)?;
        let f = wide.at(0.5);
        assert_eq!(f.rows, AxisFactors::IDENTITY);
        assert_eq!(f.cols, AxisFactors::interpolation(2.0));
        // I-Max's rule on the axis that grew, nothing on the other
        let imax = RopeSchedule::per_axis(
            RopeMethod::NtkInterpolation { ntk: 10.0 },
            (24, 8),
            (8, 8),
            48,
        )?;
        let f = imax.at(0.9);
        assert_eq!(f.rows, AxisFactors::ntk_floored(10.0, 3.0));
        assert_eq!(f.cols, AxisFactors::IDENTITY);
        // smaller than trained: nothing scales
        let small = RopeSchedule::per_axis(RopeMethod::Ntk, (4, 4), (8, 8), 48)?;
        assert_eq!(small.at(0.5), RopeFactors::IDENTITY);
        Ok(())
    }

    #[test]
    fn methods_parse_and_bad_ones_are_named() -> Result<()> {
        assert_eq!("pi".parse::<RopeMethod>()?, RopeMethod::Interpolation);
        assert_eq!(
            "watershed".parse::<RopeMethod>()?,
            RopeMethod::Watershed { tau: 0.3 }
        );
        assert_eq!(
            "ntk-pi:4".parse::<RopeMethod>()?,
            RopeMethod::NtkInterpolation { ntk: 4.0 }
        );
        for name in RopeMethod::NAMES {
            assert_eq!(name.parse::<RopeMethod>()?.name(), name);
        }
        let e = "yarn"
            .parse::<RopeMethod>()
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("frequency-aware") && e.contains("yarn"), "{e}");
        assert!("watershed:1.5".parse::<RopeMethod>().is_err());
        assert!("ntk-pi:x".parse::<RopeMethod>().is_err());
        Ok(())
    }
}
