//! Going past the training resolution without tuning: which RoPE rule, which attention scale,
//! which time shift, and whether I-Max's projected flow guides the pass with a native-size
//! image. A [`Extrapolation`] is a plain value of a request; the pipeline turns it into the
//! pure sampling pieces of `crate::sample` (a `RopeSchedule`, a grid, a `ProjectedFlow` hook).
//!
//! References: `ternary_imax.md` §C (I-Max, Lumina-Next's scaled RoPE), `lumina_reference.md`
//! §4.3 (Lumina-Next's released rules).

use std::str::FromStr;

use crate::sample::{GuideSchedule, RopeMethod, RopeSchedule};

use crate::error::{Error, Result};

/// How an axis's RoPE scale s is measured against the training canvas (square, `native`
/// pixels a side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleBy {
    /// Lumina-Next and diffusers: s = sqrt(W·H)/native on both axes.
    Area,
    /// s = min(W, H)/native on both axes: content whose size follows the shorter side (the
    /// `shapes` task's geometry) keeps its size in RoPE units, and a wide canvas at the native
    /// height is not scaled at all.
    ShortSide,
    /// Each axis its own ratio, W/native and H/native: a wide canvas scales only its columns.
    PerAxis,
}

impl ScaleBy {
    pub const ALL: [ScaleBy; 3] = [ScaleBy::Area, ScaleBy::ShortSide, ScaleBy::PerAxis];

    pub fn name(self) -> &'static str {
        match self {
            ScaleBy::Area => "area",
            ScaleBy::ShortSide => "short-side",
            ScaleBy::PerAxis => "per-axis",
        }
    }

    /// (row scale, column scale) of a `width × height` canvas, never below 1.
    pub fn scales(self, width: usize, height: usize, native: usize) -> (f64, f64) {
        let n = native as f64;
        let (w, h) = (width as f64 / n, height as f64 / n);
        let (rows, cols) = match self {
            ScaleBy::Area => ((w * h).sqrt(), (w * h).sqrt()),
            ScaleBy::ShortSide => (w.min(h), w.min(h)),
            ScaleBy::PerAxis => (h, w),
        };
        (rows.max(1.0), cols.max(1.0))
    }
}

impl FromStr for ScaleBy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ScaleBy::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| Error::input("RoPE scale", "area, short-side or per-axis", s))
    }
}

/// I-Max's projected flow: the guide is the native-size result upsampled (bicubic in pixels;
/// through the VAE for latent models).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Projection {
    pub schedule: GuideSchedule,
    /// Haar levels of the low band the guide fixes.
    pub level: usize,
}

/// What a request does when its canvas exceeds the training size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Extrapolation {
    pub rope: RopeMethod,
    pub scale_by: ScaleBy,
    /// Proportional attention: self-attention scaled by sqrt(log_{N_train} N).
    pub proportional_attn: bool,
    /// Multiply the time shift by the RoPE scale s (more steps near noise at higher
    /// resolution, where neighbouring pixels are more alike: SD3's and I-Max's time shifting).
    pub time_shift: bool,
    /// Lumina-Image-2.0: one copy of the caption per native-size tile of the canvas, each
    /// anchored at its tile in RoPE space (I-Max's text duplication).
    pub text_duplication: bool,
    pub projected: Option<Projection>,
}

impl Extrapolation {
    /// Nothing: the model sees the larger grid as it is.
    pub const NONE: Extrapolation = Extrapolation {
        rope: RopeMethod::None,
        scale_by: ScaleBy::ShortSide,
        proportional_attn: false,
        time_shift: false,
        text_duplication: false,
        projected: None,
    };

    /// A RoPE rule with the rest of the tuning-free toolkit (proportional attention).
    pub fn rope(rope: RopeMethod) -> Self {
        Extrapolation {
            rope,
            proportional_attn: true,
            ..Self::NONE
        }
    }

    /// I-Max: projected flow from a native-size pass, NTK floored by interpolation,
    /// proportional attention, time shifting and text duplication.
    pub fn imax(schedule: GuideSchedule) -> Self {
        Extrapolation {
            rope: RopeMethod::NtkInterpolation {
                ntk: crate::sample::IMAX_NTK_FACTOR,
            },
            scale_by: ScaleBy::ShortSide,
            proportional_attn: true,
            time_shift: true,
            text_duplication: true,
            projected: Some(Projection { schedule, level: 1 }),
        }
    }

    /// The RoPE schedule for a `rows × cols` token grid whose canvas is `width × height`
    /// pixels, from a model trained on `native × native` pixels with `native_tokens` a side.
    pub fn rope_schedule(
        &self,
        (width, height): (usize, usize),
        native: usize,
        native_tokens: usize,
        head_dim: usize,
    ) -> Result<RopeSchedule> {
        let (rows, cols) = self.scale_by.scales(width, height, native);
        Ok(RopeSchedule::Scaled {
            method: self.rope,
            rows: crate::sample::AxisScale {
                scale: rows,
                train_tokens: native_tokens as f64,
            },
            cols: crate::sample::AxisScale {
                scale: cols,
                train_tokens: native_tokens as f64,
            },
            head_dim,
        })
    }

    /// A one-line description for logs and PNG metadata.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!(
            "rope {} by {}",
            self.rope.name(),
            self.scale_by.name()
        )];
        if let RopeMethod::Watershed { tau } = self.rope {
            parts[0] = format!("rope watershed {tau} by {}", self.scale_by.name());
        }
        if let RopeMethod::NtkInterpolation { ntk } = self.rope {
            parts[0] = format!("rope ntk-pi (κ {ntk}) by {}", self.scale_by.name());
        }
        if self.proportional_attn {
            parts.push("proportional attention".into());
        }
        if self.time_shift {
            parts.push("time shift × s".into());
        }
        if self.text_duplication {
            parts.push("text duplication".into());
        }
        if let Some(p) = self.projected {
            parts.push(format!(
                "projected flow ({}, Haar level {})",
                p.schedule.name(),
                p.level
            ));
        }
        parts.join(", ")
    }
}

impl FromStr for Extrapolation {
    type Err = Error;

    /// `none`, `imax` (I-Max with `cosine_decay`), `imax:SCHEDULE`, or a RoPE rule name
    /// (`pi`, `ntk`, `time-aware`, `frequency-aware`, `ntk-pi[:κ]`, `watershed[:τ]`) for that
    /// rule with proportional attention.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        if lower == "none" {
            return Ok(Self::NONE);
        }
        if let Some(rest) = lower.strip_prefix("imax") {
            let schedule = match rest.strip_prefix(':') {
                Some(name) => name.parse()?,
                None if rest.is_empty() => GuideSchedule::CosineDecay,
                None => return Err(bad_method(s)),
            };
            return Ok(Self::imax(schedule));
        }
        match lower.parse::<RopeMethod>() {
            Ok(RopeMethod::None) => Ok(Self::NONE),
            Ok(m) => Ok(Self::rope(m)),
            Err(_) => Err(bad_method(s)),
        }
    }
}

fn bad_method(s: &str) -> Error {
    Error::input(
        "extrapolation",
        format!(
            "none, imax[:cosine_decay|cosine_shift|constant], or a RoPE rule: {}",
            RopeMethod::NAMES[1..].join(", ")
        ),
        s,
    )
}

/// The canvas of I-Max's native pass: the target divided by s = min(W, H)/native, rounded down
/// to `multiple`, so its shorter side is the training size. I-Max divides by ⌊s + ½⌋ instead
/// (`ternary_imax.md` §C.2), which at s = 1.5 would run the native pass at 0.75× the training
/// size. `None` when that is not smaller than the target (nothing to project from).
pub fn native_canvas(
    (width, height): (usize, usize),
    native: usize,
    multiple: usize,
) -> Option<(usize, usize)> {
    let s = width.min(height) as f64 / native as f64;
    if s <= 1.0 {
        return None;
    }
    let fit = |v: usize| (((v as f64 / s) as usize / multiple).max(1) * multiple).min(v);
    let (w, h) = (fit(width), fit(height));
    (w < width || h < height).then_some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_follow_their_rule_and_never_shrink() {
        assert_eq!(ScaleBy::Area.scales(64, 32, 32), (2f64.sqrt(), 2f64.sqrt()));
        assert_eq!(ScaleBy::ShortSide.scales(64, 32, 32), (1.0, 1.0));
        assert_eq!(ScaleBy::PerAxis.scales(64, 32, 32), (1.0, 2.0));
        assert_eq!(ScaleBy::PerAxis.scales(32, 96, 32), (3.0, 1.0));
        assert_eq!(ScaleBy::ShortSide.scales(16, 16, 32), (1.0, 1.0));
    }

    #[test]
    fn native_pass_divides_by_the_rounded_ratio() {
        assert_eq!(native_canvas((64, 64), 32, 4), Some((32, 32)));
        assert_eq!(native_canvas((96, 96), 32, 4), Some((32, 32)));
        assert_eq!(native_canvas((128, 64), 32, 4), Some((64, 32)));
        assert_eq!(native_canvas((48, 48), 32, 4), Some((32, 32)));
        assert_eq!(native_canvas((96, 64), 32, 4), Some((48, 32)));
        assert_eq!(native_canvas((64, 32), 32, 4), None);
        assert_eq!(native_canvas((2048, 2048), 1024, 16), Some((1024, 1024)));
    }

    #[test]
    fn methods_parse_and_bad_ones_list_the_choices() -> Result<()> {
        assert_eq!("none".parse::<Extrapolation>()?, Extrapolation::NONE);
        let imax: Extrapolation = "imax:constant".parse()?;
        assert_eq!(
            imax.projected.map(|p| p.schedule),
            Some(GuideSchedule::Constant)
        );
        let pi: Extrapolation = "pi".parse()?;
        assert_eq!(pi.rope, RopeMethod::Interpolation);
        assert!(pi.proportional_attn && pi.projected.is_none());
        let e = "imax:wiggle"
            .parse::<Extrapolation>()
            .expect_err("bad")
            .to_string();
        assert!(e.contains("wiggle"), "{e}");
        let e = "bogus"
            .parse::<Extrapolation>()
            .expect_err("bad")
            .to_string();
        assert!(e.contains("imax") && e.contains("time-aware"), "{e}");
        Ok(())
    }
}
