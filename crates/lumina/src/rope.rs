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

/// Resolution-extrapolation factors of the RoPE frequencies. A call argument, never model
/// state; time-aware scaling picks one per solver evaluation (`sample::RopeSchedule`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeFactors {
    /// Position interpolation: every frequency is divided by this (diffusers `linear_factor`,
    /// upstream `rope_scaling_factor`).
    pub linear_factor: f64,
    /// NTK-style scaling: the base θ is multiplied by this (diffusers `ntk_factor`).
    pub ntk_factor: f64,
}

impl Default for RopeFactors {
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl RopeFactors {
    pub const IDENTITY: Self = Self {
        linear_factor: 1.0,
        ntk_factor: 1.0,
    };

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("linear_factor", self.linear_factor),
            ("ntk_factor", self.ntk_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::input(
                    "RoPE factor",
                    format!("{name} finite and > 0"),
                    v.to_string(),
                ));
            }
        }
        Ok(())
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
    let n_freq = head_dim / 4;
    // diffusers: get_1d_rotary_pos_embed(dim = head_dim / 2) → theta^(-2k/dim) = theta^(-4k/head_dim)
    let axis_dim = (head_dim / 2) as f32;
    let theta = (ROPE_THETA * factors.ntk_factor) as f32;
    let linear = factors.linear_factor as f32;
    let freqs: Vec<f32> = (0..n_freq)
        .map(|k| 1.0 / theta.powf((2 * k) as f32 / axis_dim) / linear)
        .collect();
    let half = head_dim / 2;
    let n = rows * cols;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for r in 0..rows {
        for c in 0..cols {
            for &f in &freqs {
                for pos in [r, c] {
                    let angle = pos as f32 * f;
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
/// `factors` scale the two spatial axes only: caption positions do not depend on resolution.
pub fn lumina2_table(
    positions: &[Vec<Option<Position3>>],
    axes_dim: [usize; 3],
    factors: RopeFactors,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let b = positions.len();
    let n = positions.first().map_or(0, Vec::len);
    let half: usize = axes_dim.iter().sum::<usize>() / 2;
    let axis_freqs: Vec<Vec<f64>> = axes_dim
        .iter()
        .enumerate()
        .map(|(axis, &d)| {
            let (theta, linear) = if axis == 0 {
                (ROPE_THETA, 1.0)
            } else {
                (ROPE_THETA * factors.ntk_factor, factors.linear_factor)
            };
            (0..d / 2)
                .map(|j| 1.0 / theta.powf((2 * j) as f64 / d as f64) / linear)
                .collect()
        })
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
        let pi = RopeFactors {
            linear_factor: 2.0,
            ntk_factor: 1.0,
        };
        let (a, _) = next_dit_table(4, 4, 8, pi, &Device::Cpu)?;
        let (b, _) = next_dit_table(2, 2, 8, RopeFactors::IDENTITY, &Device::Cpu)?;
        // position 2 at linear factor 2 == position 1 unscaled (row 2 col 2 vs row 1 col 1)
        let a = a.to_vec2::<f32>()?;
        let b = b.to_vec2::<f32>()?;
        for (x, y) in a[2 * 4 + 2].iter().zip(&b[3]) {
            assert!((x - y).abs() < 1e-6);
        }
        let ntk = RopeFactors {
            linear_factor: 1.0,
            ntk_factor: 4.0,
        };
        let (c, _) = next_dit_table(2, 2, 8, ntk, &Device::Cpu)?;
        let c = c.to_vec2::<f32>()?;
        // frequency 0 is θ-independent; frequency 1 slows down with a larger base
        assert!((c[3][0] - b[3][0]).abs() < 1e-6);
        assert!(c[3][2] > b[3][2]);
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

    #[test]
    fn bad_factors_are_rejected() {
        let bad = RopeFactors {
            linear_factor: 0.0,
            ntk_factor: 1.0,
        };
        assert!(bad.validate().is_err());
    }
}
