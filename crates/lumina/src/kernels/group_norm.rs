//! One GroupNorm group (the body of `conv::group_norm`'s op), vectorised: its statistics and
//! the normalisation with the affine and the optional SiLU, compiled per ISA level.
//!
//! The scalar form summed in f64 one value at a time and called libm's `expf` per SiLU: in a
//! 512² VAE decode that was ~10 % of the time under `perf`. Here the sums run in 16 f32 lanes
//! over blocks of [`BLOCK`] values, each block's lanes added into f64 (so the error is that
//! of a 256-term f32 sum per lane, ~1e-7 relative, then f64), two passes as torch does
//! (mean, then the biased variance about it); SiLU is `y·σ(y)` on the vector [`math::exp2`].

use super::math;

/// f32 lanes of the partial sums.
const LANES: usize = 16;
/// Values per block whose lane sums are added into f64.
const BLOCK: usize = LANES * 256;

/// `Σ f(v)` over `v` in f32 lanes per block, f64 across blocks.
#[inline(always)]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in v.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += f(x);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
        total += acc.iter().map(|&a| f64::from(a)).sum::<f64>() + f64::from(tail);
    }
    total
}

/// What normalises one group: its channels' planes of `plane` values, their `weight` and
/// `bias`, `eps`, and whether SiLU follows.
pub(super) struct Params<'a> {
    pub plane: usize,
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub eps: f64,
    pub silu: bool,
}

/// Per channel, `scale` and `shift` such that `x·scale + shift = (x − mean)/√(var + eps)·weight
/// + bias`, applied (then SiLU).
#[inline(always)]
fn body(dst: &mut [f32], src: &[f32], p: &Params) {
    let Params {
        plane,
        weight,
        bias,
        eps,
        silu,
    } = *p;
    let n = src.len().max(1) as f64;
    let mean = lane_sum(src, |x| x) / n;
    let m32 = mean as f32;
    // deviations from the f32 mean (vectorisable), then exact about the f64 one:
    // Σ(x − mean)² / n = Σ(x − m32)² / n − (mean − m32)²
    let var = lane_sum(src, |x| (x - m32) * (x - m32)) / n - (mean - f64::from(m32)).powi(2);
    let inv = 1.0 / (var.max(0.0) + eps).sqrt();
    for (j, (d, s)) in dst.chunks_mut(plane).zip(src.chunks(plane)).enumerate() {
        // the shift uses the rounded scale, so that x·scale + shift cancels at x = m32 exactly
        let scale = (inv * f64::from(weight[j])) as f32;
        let shift =
            bias[j] - m32 * scale - ((mean - f64::from(m32)) * inv * f64::from(weight[j])) as f32;
        if silu {
            const K: f32 = -std::f32::consts::LOG2_E;
            for (d, &s) in d.iter_mut().zip(s) {
                let y = s * scale + shift;
                *d = y / (1.0 + math::exp2(K * y));
            }
        } else {
            for (d, &s) in d.iter_mut().zip(s) {
                *d = s * scale + shift;
            }
        }
    }
}

at_level! {
    /// Normalises one group `src` (its channels' planes, contiguous) into `dst` as `p` says;
    /// `body` at `level`'s width.
    pub(super) fn group(dst: &mut [f32], src: &[f32], p: &Params) => body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level against the f64 definition (two-pass statistics, exact SiLU), on a group
    /// with a large common offset (where a one-pass or f32 variance loses digits), ragged
    /// planes and both saturated SiLU tails.
    #[test]
    fn group_matches_the_f64_definition_at_every_level() {
        let (channels, plane) = (3, 4_099);
        let src: Vec<f32> = (0..channels * plane)
            .map(|i| 40.0 + ((i * 7919) % 1000) as f32 * 0.01)
            .collect();
        let weight = [30.0f32, -1.5, 0.25];
        let bias = [0.5f32, -2.0, 100.0];
        let eps = 1e-6;
        let n = src.len() as f64;
        let mean = src.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = src
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let inv = 1.0 / (var + eps).sqrt();
        for silu in [false, true] {
            let want: Vec<f64> = src
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let y = (f64::from(v) - mean) * inv * f64::from(weight[i / plane])
                        + f64::from(bias[i / plane]);
                    if silu {
                        y / (1.0 + (-y).exp())
                    } else {
                        y
                    }
                })
                .collect();
            for level in crate::kernels::test_levels() {
                let mut got = vec![0f32; src.len()];
                let p = Params {
                    plane,
                    weight: &weight,
                    bias: &bias,
                    eps,
                    silu,
                };
                group(level, &mut got, &src, &p);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(g) - w).abs() <= 2e-5 * w.abs().max(1.0),
                        "{} silu {silu} at {i}: {g} against {w}",
                        level.name()
                    );
                }
            }
        }
    }
}
