//! Rotary position embeddings of the Lumina family: the angle tables and the rotation.
//!
//! Both models rotate **adjacent pairs** `(x[2j], x[2j+1])` as one complex number
//! (Meta/LLaMA "interleaved" style); they differ in how a head's `Dh/2` pairs are assigned to
//! position axes:
//! - Lumina-Next: 2 axes (row, col) **interleaved by frequency** — pair `2k` turns with the row
//!   angle, pair `2k+1` with the column angle, both at frequency `k`
//!   (diffusers `get_2d_rotary_pos_embed_lumina`; Lumina-T2X `NextDiT.precompute_freqs_cis`).
//! - Lumina-Image-2.0: 3 axes (caption index, row, col) as **contiguous blocks** of
//!   `axes_dim[i]/2` pairs (diffusers `Lumina2RotaryPosEmbed`).
//!
//! Tables are returned as `(cos, sin)`, each `(N, Dh/2)` or `(B, N, Dh/2)`.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// The base θ of every Lumina RoPE.
pub const ROPE_THETA: f64 = 10_000.0;

/// How one position axis scales its RoPE frequencies for resolution extrapolation. With
/// `ω⁰_k = θ^(−2k/d)` the unscaled frequency of pair `k` on an axis of `d` dimensions:
///
/// `ω_k = (θ·ntk)^(−2k/d) / linear`, and with a floor, `max(ω_k, ω⁰_k / floor)`.
///
/// `linear` is position interpolation (diffusers `linear_factor`, upstream
/// `rope_scaling_factor`), `ntk` raises the base (diffusers `ntk_factor`), and `floor` keeps
/// every frequency at or above its position-interpolated value (I-Max's `max(ω_NTK, ω_PI)`,
/// and the PI floor of Lumina-Next's frequency- and time-aware rules). Every rule of
/// `sample::RopeSchedule` is one such triple per axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AxisFactors {
    pub linear: f64,
    pub ntk: f64,
    pub floor: Option<f64>,
}

impl AxisFactors {
    pub const IDENTITY: Self = Self {
        linear: 1.0,
        ntk: 1.0,
        floor: None,
    };

    /// Position interpolation by `s`: every frequency divided by `s`.
    pub fn interpolation(s: f64) -> Self {
        Self {
            linear: s,
            ..Self::IDENTITY
        }
    }

    /// NTK scaling of the base by `ntk`, floored by position interpolation by `floor`.
    pub fn ntk_floored(ntk: f64, floor: f64) -> Self {
        Self {
            linear: 1.0,
            ntk,
            floor: Some(floor),
        }
    }

    fn validate(&self, axis: &str) -> Result<()> {
        let floor = self.floor.unwrap_or(1.0);
        for (name, v) in [("linear", self.linear), ("ntk", self.ntk), ("floor", floor)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::input(
                    "RoPE factor",
                    format!("{axis} {name} finite and > 0"),
                    v.to_string(),
                ));
            }
        }
        Ok(())
    }

    /// The `d / 2` frequencies of an axis of `d` dimensions, in f32 as diffusers computes them
    /// (`1 / (θ·ntk)^(2k/d) / linear`), so an unfloored table is bit for bit diffusers'.
    fn frequencies_f32(&self, d: usize) -> Vec<f32> {
        let theta = (ROPE_THETA * self.ntk) as f32;
        let base = ROPE_THETA as f32;
        let linear = self.linear as f32;
        (0..d / 2)
            .map(|k| {
                let e = (2 * k) as f32 / d as f32;
                let f = 1.0 / theta.powf(e) / linear;
                match self.floor {
                    Some(floor) => f.max(1.0 / base.powf(e) / floor as f32),
                    None => f,
                }
            })
            .collect()
    }

    /// The same in f64 (Lumina-Image-2.0 builds its table in complex128).
    fn frequencies_f64(&self, d: usize) -> Vec<f64> {
        let theta = ROPE_THETA * self.ntk;
        (0..d / 2)
            .map(|k| {
                let e = (2 * k) as f64 / d as f64;
                let f = 1.0 / theta.powf(e) / self.linear;
                match self.floor {
                    Some(floor) => f.max(1.0 / ROPE_THETA.powf(e) / floor),
                    None => f,
                }
            })
            .collect()
    }
}

/// Resolution-extrapolation factors of the two spatial RoPE axes. A call argument, never model
/// state; a `sample::RopeSchedule` picks one per solver evaluation. Separate axes let a wide
/// canvas scale only its columns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeFactors {
    pub rows: AxisFactors,
    pub cols: AxisFactors,
    /// The frame axis of a clip model (3-D RoPE), for clips longer than trained.
    pub frames: AxisFactors,
}

impl Default for RopeFactors {
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl RopeFactors {
    pub const IDENTITY: Self = Self {
        rows: AxisFactors::IDENTITY,
        cols: AxisFactors::IDENTITY,
        frames: AxisFactors::IDENTITY,
    };

    /// diffusers' `linear_factor` and `ntk_factor`, the same on both axes.
    pub fn uniform(linear_factor: f64, ntk_factor: f64) -> Self {
        let axis = AxisFactors {
            linear: linear_factor,
            ntk: ntk_factor,
            floor: None,
        };
        Self {
            rows: axis,
            cols: axis,
            frames: AxisFactors::IDENTITY,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.rows.validate("rows")?;
        self.cols.validate("columns")?;
        self.frames.validate("frames")
    }
}

/// Lumina-Next's 2D table for a `rows × cols` token grid (row-major), `(N, Dh/2)` each.
///
/// Computed in f32 exactly as diffusers does (f32 frequencies, f32 angles), so tables agree
/// bit for bit up to the platform's `powf`/`sin`/`cos`.
pub fn next_dit_table(
    rows: usize,
    cols: usize,
    head_dim: usize,
    factors: RopeFactors,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let grid = VideoGrid {
        frames: 1,
        rows,
        cols,
    };
    next_dit_video_table(grid, head_dim, 0, AxisFactors::IDENTITY, factors, device)
}

/// A token grid over time: `frames × rows × cols` tokens, frame-major then row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoGrid {
    pub frames: usize,
    pub rows: usize,
    pub cols: usize,
}

impl VideoGrid {
    pub fn tokens(&self) -> usize {
        self.frames * self.rows * self.cols
    }
}

/// Next-DiT's table with a time axis, `(F·rows·cols, Dh/2)` each: the first `frame_dim / 2`
/// pairs of a head turn with the frame index (a contiguous block, as Lumina-Video's 3-D RoPE
/// concatenates its axes, `models/model.py`), the other `(Dh − frame_dim) / 2` pairs are
/// Lumina-Next's row/column pairs interleaved by frequency over `Dh − frame_dim` dimensions.
///
/// With `frame_dim = 0` and one frame this is [`next_dit_table`] bit for bit, so an image
/// checkpoint is a one-frame video model. `frame_factors` scale the frame axis (clips longer
/// than trained) as `factors` scale the spatial ones.
pub fn next_dit_video_table(
    grid: VideoGrid,
    head_dim: usize,
    frame_dim: usize,
    frame_factors: AxisFactors,
    factors: RopeFactors,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    if !frame_dim.is_multiple_of(4)
        || frame_dim >= head_dim
        || !(head_dim - frame_dim).is_multiple_of(4)
    {
        return Err(Error::input(
            "RoPE frame dimensions",
            format!(
                "a multiple of 4 below the head width {head_dim}, leaving a multiple of 4 for \
                 rows and columns"
            ),
            frame_dim,
        ));
    }
    // diffusers: get_1d_rotary_pos_embed(dim = spatial / 2) → theta^(-2k/dim) per axis
    let axis_dim = (head_dim - frame_dim) / 2;
    let frame_freqs = frame_factors.frequencies_f32(frame_dim);
    let row_freqs = factors.rows.frequencies_f32(axis_dim);
    let col_freqs = factors.cols.frequencies_f32(axis_dim);
    let half = head_dim / 2;
    let n = grid.tokens();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for f in 0..grid.frames {
        for r in 0..grid.rows {
            for c in 0..grid.cols {
                let frame = frame_freqs.iter().map(|&ff| f as f32 * ff);
                let spatial = row_freqs
                    .iter()
                    .zip(&col_freqs)
                    .flat_map(|(&fr, &fc)| [r as f32 * fr, c as f32 * fc]);
                for angle in frame.chain(spatial) {
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

/// One token's position on the three Lumina-Image-2.0 axes (caption index, row, col).
pub type Position3 = [usize; 3];

/// Lumina-Image-2.0's 3-axis table for per-sample position lists, `(B, N, Dh/2)` each.
///
/// `None` entries (padded caption slots) get a zero rotation, as diffusers' zero-filled
/// `cap_freqs_cis` does. Computed in f64 like diffusers' complex128 table, then rounded.
/// `factors` scale the two spatial axes only.
pub fn lumina2_table(
    positions: &[Vec<Option<Position3>>],
    axes_dim: [usize; 3],
    factors: RopeFactors,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let b = positions.len();
    let n = positions.first().map_or(0, Vec::len);
    let half: usize = axes_dim.iter().sum::<usize>() / 2;
    // the caption axis never scales: caption positions do not depend on the resolution
    let axis_freqs: Vec<Vec<f64>> = [AxisFactors::IDENTITY, factors.rows, factors.cols]
        .iter()
        .zip(axes_dim)
        .map(|(f, d)| f.frequencies_f64(d))
        .collect();
    let mut cos = Vec::with_capacity(b * n * half);
    let mut sin = Vec::with_capacity(b * n * half);
    for sample in positions {
        if sample.len() != n {
            return Err(Error::input(
                "RoPE positions",
                format!("{n} positions per sample"),
                sample.len().to_string(),
            ));
        }
        for pos in sample {
            match pos {
                None => {
                    cos.extend(std::iter::repeat_n(0.0f32, half));
                    sin.extend(std::iter::repeat_n(0.0f32, half));
                }
                Some(pos) => {
                    for (axis, freqs) in axis_freqs.iter().enumerate() {
                        for &f in freqs {
                            let angle = pos[axis] as f64 * f;
                            cos.push(angle.cos() as f32);
                            sin.push(angle.sin() as f32);
                        }
                    }
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (b, n, half), device)?,
        Tensor::from_vec(sin, (b, n, half), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_table_interleaves_row_and_column_per_frequency() -> Result<()> {
        let (cos, sin) = next_dit_table(3, 5, 8, RopeFactors::IDENTITY, &Device::Cpu)?;
        assert_eq!(cos.dims(), &[15, 4]);
        let sin = sin.to_vec2::<f32>()?;
        // token (r=2, c=3) is row-major index 13; pairs: [row f0, col f0, row f1, col f1]
        let f1 = 1.0f32 / 10_000f32.powf(0.5);
        let want = [
            2.0f32.sin(),
            3.0f32.sin(),
            (2.0 * f1).sin(),
            (3.0 * f1).sin(),
        ];
        for (got, want) in sin[13].iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn linear_factor_interpolates_positions_and_ntk_raises_the_base() -> Result<()> {
        let pi = RopeFactors::uniform(2.0, 1.0);
        let (a, _) = next_dit_table(4, 4, 8, pi, &Device::Cpu)?;
        let (b, _) = next_dit_table(2, 2, 8, RopeFactors::IDENTITY, &Device::Cpu)?;
        // position 2 at linear factor 2 == position 1 unscaled (row 2 col 2 vs row 1 col 1)
        let a = a.to_vec2::<f32>()?;
        let b = b.to_vec2::<f32>()?;
        for (x, y) in a[2 * 4 + 2].iter().zip(&b[3]) {
            assert!((x - y).abs() < 1e-6);
        }
        let ntk = RopeFactors::uniform(1.0, 4.0);
        let (c, _) = next_dit_table(2, 2, 8, ntk, &Device::Cpu)?;
        let c = c.to_vec2::<f32>()?;
        // frequency 0 is θ-independent; frequency 1 slows down with a larger base
        assert!((c[3][0] - b[3][0]).abs() < 1e-6);
        assert!(c[3][2] > b[3][2]);
        Ok(())
    }

    /// The frequencies of each rule against its formula on a small table: head dim 16, so
    /// each axis has 8 dimensions and 4 frequencies ω⁰_k = θ^(−2k/8).
    #[test]
    fn axis_rules_follow_their_formulas() {
        let w0 = |k: usize| 1.0 / ROPE_THETA.powf(k as f64 / 4.0);
        let close = |got: &[f64], want: &[f64]| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() <= 1e-12 * w.abs().max(1e-300),
                    "{got:?} vs {want:?}"
                );
            }
        };
        let s = 3.0;
        // position interpolation: ω⁰/s
        let pi = AxisFactors::interpolation(s).frequencies_f64(8);
        close(&pi, &(0..4).map(|k| w0(k) / s).collect::<Vec<_>>());
        // NTK: (θ·s)^(−2k/d)
        let ntk = AxisFactors {
            ntk: s,
            ..AxisFactors::IDENTITY
        }
        .frequencies_f64(8);
        close(
            &ntk,
            &(0..4)
                .map(|k| (ROPE_THETA * s).powf(-(k as f64) / 4.0))
                .collect::<Vec<_>>(),
        );
        // NTK floored by PI: max of the two, per frequency
        let kappa = 1e4;
        let both = AxisFactors::ntk_floored(kappa, s).frequencies_f64(8);
        let want: Vec<f64> = (0..4)
            .map(|k| ((ROPE_THETA * kappa).powf(-(k as f64) / 4.0)).max(w0(k) / s))
            .collect();
        close(&both, &want);
        // the floor binds for the low frequencies only
        assert_eq!(both[0], 1.0);
        assert_eq!(both[3], w0(3) / s);
        // the f32 table is the f64 one rounded
        for (a, b) in AxisFactors::ntk_floored(kappa, s)
            .frequencies_f32(8)
            .iter()
            .zip(&both)
        {
            assert!(((*a as f64) - b).abs() <= 1e-6 * b);
        }
    }

    #[test]
    fn axes_scale_separately() -> Result<()> {
        // a wide canvas: only the columns interpolate
        let wide = RopeFactors {
            rows: AxisFactors::IDENTITY,
            cols: AxisFactors::interpolation(2.0),
            ..RopeFactors::IDENTITY
        };
        let (_, sin) = next_dit_table(2, 4, 8, wide, &Device::Cpu)?;
        let sin = sin.to_vec2::<f32>()?;
        // token (r=1, c=2): pairs [row f0, col f0, row f1, col f1]
        let f1 = 1.0f32 / 10_000f32.powf(0.5);
        let want = [1.0f32.sin(), 1.0f32.sin(), f1.sin(), f1.sin()];
        for (got, want) in sin[6].iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn lumina2_table_concatenates_axis_blocks_and_zeroes_padding() -> Result<()> {
        let positions = vec![vec![Some([1, 2, 3]), None]];
        let (cos, sin) = lumina2_table(&positions, [2, 4, 2], RopeFactors::IDENTITY, &Device::Cpu)?;
        assert_eq!(cos.dims(), &[1, 2, 4]);
        let sin = sin.to_vec3::<f32>()?;
        let f = 1.0f64 / 10_000f64.powf(0.5);
        let want = [1.0f64.sin(), 2.0f64.sin(), (2.0 * f).sin(), 3.0f64.sin()];
        for (got, want) in sin[0][0].iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6);
        }
        assert!(sin[0][1].iter().all(|v| *v == 0.0));
        assert!(cos.to_vec3::<f32>()?[0][1].iter().all(|v| *v == 0.0));
        Ok(())
    }

    /// The time axis: frame pairs first at θ^(−2k/frame_dim), then Lumina-Next's interleaved
    /// row/column pairs over the rest; no frame dimensions and one frame is the image table.
    #[test]
    fn video_table_puts_frame_pairs_first_and_reduces_to_the_image_table() -> Result<()> {
        let dev = &Device::Cpu;
        let grid = VideoGrid {
            frames: 3,
            rows: 2,
            cols: 4,
        };
        let (head, frame_dim) = (16, 4);
        let (cos, sin) = next_dit_video_table(
            grid,
            head,
            frame_dim,
            AxisFactors::IDENTITY,
            RopeFactors::IDENTITY,
            dev,
        )?;
        assert_eq!(cos.dims(), &[24, 8]);
        let (cos, sin) = (cos.to_vec2::<f32>()?, sin.to_vec2::<f32>()?);
        // token (f=2, r=1, c=3): index 2·8 + 1·4 + 3 = 23
        let (f, r, c) = (2.0f64, 1.0f64, 3.0f64);
        let frame: Vec<f64> = (0..2)
            .map(|k| f / 1e4f64.powf(2.0 * k as f64 / 4.0))
            .collect();
        let spatial: Vec<f64> = (0..3)
            .flat_map(|k| {
                let w = 1.0 / 1e4f64.powf(2.0 * k as f64 / 6.0);
                [r * w, c * w]
            })
            .collect();
        let want: Vec<f64> = frame.into_iter().chain(spatial).collect();
        for (j, a) in want.iter().enumerate() {
            assert!((cos[23][j] as f64 - a.cos()).abs() < 1e-5, "cos pair {j}");
            assert!((sin[23][j] as f64 - a.sin()).abs() < 1e-5, "sin pair {j}");
        }
        let image = VideoGrid { frames: 1, ..grid };
        let (vc, vs) = next_dit_video_table(
            image,
            head,
            0,
            AxisFactors::IDENTITY,
            RopeFactors::uniform(2.0, 1.5),
            dev,
        )?;
        let (ic, is) = next_dit_table(2, 4, head, RopeFactors::uniform(2.0, 1.5), dev)?;
        assert_eq!(vc.to_vec2::<f32>()?, ic.to_vec2::<f32>()?);
        assert_eq!(vs.to_vec2::<f32>()?, is.to_vec2::<f32>()?);
        for bad in [2, 16, 6] {
            assert!(
                next_dit_video_table(
                    grid,
                    head,
                    bad,
                    AxisFactors::IDENTITY,
                    RopeFactors::IDENTITY,
                    dev
                )
                .is_err(),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn bad_factors_are_rejected() {
        assert!(RopeFactors::uniform(0.0, 1.0).validate().is_err());
        let floored = RopeFactors {
            rows: AxisFactors::ntk_floored(2.0, f64::NAN),
            ..RopeFactors::IDENTITY
        };
        let e = floored.validate().expect_err("NaN floor").to_string();
        assert!(e.contains("rows floor"), "{e}");
    }
}
