//! Ternary weight matrices (TerDiT, BitNet b1.58): every weight is α·w with w ∈ {−1, 0, +1}
//! and α one scale per tensor or per output channel, stored at 2 bits per weight.
//!
//! Two layouts of the same codes c = w + 1 ∈ {0, 1, 2} (3 is invalid):
//! - **file layout** ([`TernaryMatrix::to_rows`]): row-major `(out, ⌈in/4⌉)` bytes, weight
//!   `(m, k)` in byte `k/4` of row `m` at bits `2·(k mod 4)`; what checkpoints store.
//! - **panel layout** (in memory): [`PANEL`] output channels × 4 inputs per 64-byte block,
//!   byte `j` of block (panel `p`, quad `q`) holding channel `64p + 16c + j/4`, input
//!   `4q + j mod 4` at bits `2c` for c = 0..3 — so one 64-byte load expands, with three shifts
//!   and four masks, into the four u8 operands of `vpdpbusd` (16 channels × 4 inputs each).
//!   Padding slots hold code 1 (a zero weight).
//!
//! Three ways to multiply, each tested against the next one up:
//! - [`reference_linear`]: plain loops over the decoded values; the definition.
//! - [`exact_linear`]: f32 / bf16 activations × the decoded {−1, 0, 1} matrix through the usual
//!   GEMM, then α: the trained model's own numerics (ternary values are exact in bf16).
//! - [`int8::int8_linear`]: activations quantised per token to int8, int32 dot products with
//!   the 2-bit weights on AVX-512 VNNI (`vpdpbusd`) or AVX2 (`vpmaddubsw`), scale/bias
//!   epilogue; its plain integer reference gives the same bits.

pub mod int8;

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// How ternary layers treat their activations at inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// int8 on CPUs with an int8 SIMD kernel (AVX-512 VNNI, AVX2), exact elsewhere.
    Auto,
    /// Full-precision activations: the trained model's own numerics.
    Exact,
    /// Per-token int8 activations everywhere (plain loops without AVX2: slow, but the same
    /// bits as the SIMD kernels).
    Int8,
}

static ACTIVATIONS: AtomicU8 = AtomicU8::new(0);

/// Chooses the ternary activation path for this process (a CLI flag; the default is
/// [`Activations::Auto`]). Like the kernels' ISA detection it is process-wide: a ternary
/// layer has no other state that would carry the choice.
pub fn set_activations(mode: Activations) {
    let v = match mode {
        Activations::Auto => 0,
        Activations::Exact => 1,
        Activations::Int8 => 2,
    };
    ACTIVATIONS.store(v, Ordering::Relaxed);
}

/// The path [`set_activations`] chose.
pub fn activations() -> Activations {
    match ACTIVATIONS.load(Ordering::Relaxed) {
        1 => Activations::Exact,
        2 => Activations::Int8,
        _ => Activations::Auto,
    }
}

/// Whether ternary layers quantise activations to int8 now.
pub fn int8_activations() -> bool {
    match activations() {
        Activations::Auto => int8::available(),
        Activations::Exact => false,
        Activations::Int8 => true,
    }
}

/// Output channels per panel: four 512-bit vectors of 16 int32 lanes.
pub const PANEL: usize = 64;
/// Bytes per (panel, input quad) block.
const BLOCK: usize = PANEL;
/// The code of a zero weight, used for padding.
const ZERO_CODE: u8 = 1;
/// Every 2-bit slot of a byte holding [`ZERO_CODE`].
const ZERO_BYTE: u8 = 0b0101_0101;

/// A ternary matrix `(out, in)` with its scales, in the panel layout.
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryMatrix {
    out_dim: usize,
    in_dim: usize,
    panels: Vec<u8>,
    /// α: one value, or one per output channel.
    scale: Vec<f32>,
}

impl TernaryMatrix {
    /// Builds the matrix from a code function `code(m, k) ∈ {0, 1, 2}` (= w + 1).
    pub fn from_codes(
        out_dim: usize,
        in_dim: usize,
        scale: Vec<f32>,
        code: impl Fn(usize, usize) -> u8 + Sync,
    ) -> Result<Self> {
        check_scale(&scale, out_dim)?;
        let quads = in_dim.div_ceil(4);
        let mut panels = vec![ZERO_BYTE; out_dim.div_ceil(PANEL) * quads * BLOCK];
        if quads > 0 {
            panels
                .par_chunks_mut(quads * BLOCK)
                .enumerate()
                .for_each(|(p, panel)| {
                    for (q, block) in panel.chunks_mut(BLOCK).enumerate() {
                        for (j, byte) in block.iter_mut().enumerate() {
                            let k = 4 * q + j % 4;
                            let mut b = 0u8;
                            for c in 0..4 {
                                let m = PANEL * p + 16 * c + j / 4;
                                let v = if m < out_dim && k < in_dim {
                                    code(m, k) & 3
                                } else {
                                    ZERO_CODE
                                };
                                b |= v << (2 * c);
                            }
                            *byte = b;
                        }
                    }
                });
        }
        Ok(Self {
            out_dim,
            in_dim,
            panels,
            scale,
        })
    }

    /// From the file layout (see the module docs). `what` names the tensor in errors.
    pub fn from_rows(
        rows: &[u8],
        out_dim: usize,
        in_dim: usize,
        scale: Vec<f32>,
        what: &str,
    ) -> Result<Self> {
        let stride = in_dim.div_ceil(4);
        if rows.len() != out_dim * stride {
            return Err(Error::Ternary {
                key: what.into(),
                expected: format!("{out_dim} × {stride} bytes for a ({out_dim}, {in_dim}) matrix"),
                got: format!("{} bytes", rows.len()),
            });
        }
        if let Some(pos) = rows.iter().position(|&b| has_invalid_code(b)) {
            return Err(Error::Ternary {
                key: what.into(),
                expected: "2-bit codes 0, 1, 2 (weights −1, 0, +1)".into(),
                got: format!(
                    "code 3 in byte {pos} (row {}, byte {})",
                    pos / stride.max(1),
                    pos % stride.max(1)
                ),
            });
        }
        let code = |m: usize, k: usize| (rows[m * stride + k / 4] >> (2 * (k % 4))) & 3;
        Self::from_codes(out_dim, in_dim, scale, code)
    }

    /// Ternarizes a dense `(out, in)` f32 matrix by absmean (TerDiT / BitNet b1.58): with
    /// γ = mean |W|, w = RoundClip(W / (γ + ε), −1, 1), round half to even. The scale is
    /// `alpha` when given (a QAT layer's trained α), else the least-squares α for those codes
    /// (mean |W| over the non-zero ones), the best single α for a matrix not trained ternary.
    /// An `alpha` of one value per output channel (`out` > 1 of them) is per-channel
    /// ternarisation: each row takes its own γ, as QAT trained it (`nn::qat_weight`).
    pub fn absmean(
        w: &[f32],
        out_dim: usize,
        in_dim: usize,
        alpha: Option<Vec<f32>>,
    ) -> Result<Self> {
        if w.len() != out_dim * in_dim {
            return Err(Error::input(
                "dense weight",
                format!("{} values for ({out_dim}, {in_dim})", out_dim * in_dim),
                w.len().to_string(),
            ));
        }
        let per_row = out_dim > 1 && alpha.as_ref().is_some_and(|a| a.len() == out_dim);
        let gammas: Vec<f32> = if per_row {
            w.chunks(in_dim.max(1)).map(absmean_gamma).collect()
        } else {
            vec![absmean_gamma(w)]
        };
        let gamma = |m: usize| gammas[if per_row { m } else { 0 }];
        let code = |m: usize, k: usize| ternary_code(w[m * in_dim + k], gamma(m));
        let alpha = match alpha {
            Some(alpha) => alpha,
            None => vec![fitted_alpha(w, gammas[0])],
        };
        Self::from_codes(out_dim, in_dim, alpha, code)
    }

    /// Per-channel post-training ternarisation's α: each row's least-squares α for the codes
    /// of its own γ (see [`Self::absmean`]).
    pub fn fitted_row_scales(w: &[f32], out_dim: usize, in_dim: usize) -> Vec<f32> {
        w.chunks(in_dim.max(1))
            .take(out_dim)
            .map(|row| fitted_alpha(row, absmean_gamma(row)))
            .collect()
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// α: one value, or one per output channel.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// α of output channel `m`.
    pub fn alpha(&self, m: usize) -> f32 {
        if self.scale.len() == 1 {
            self.scale[0]
        } else {
            self.scale[m]
        }
    }

    fn quads(&self) -> usize {
        self.in_dim.div_ceil(4)
    }

    /// The packed bytes of panel `p` (quads × 64).
    pub(crate) fn panel(&self, p: usize) -> &[u8] {
        let len = self.quads() * BLOCK;
        &self.panels[p * len..(p + 1) * len]
    }

    pub(crate) fn panel_count(&self) -> usize {
        self.out_dim.div_ceil(PANEL)
    }

    /// Bytes held in memory: the packed codes and the scales.
    pub fn bytes(&self) -> usize {
        self.panels.len() + 4 * self.scale.len()
    }

    /// The code (w + 1) of weight `(m, k)`.
    pub fn code(&self, m: usize, k: usize) -> u8 {
        let (p, c, lane) = (m / PANEL, (m % PANEL) / 16, m % 16);
        let byte = (p * self.quads() + k / 4) * BLOCK + lane * 4 + k % 4;
        (self.panels[byte] >> (2 * c)) & 3
    }

    /// The weight `(m, k)` ∈ {−1, 0, 1}, without α.
    pub fn value(&self, m: usize, k: usize) -> i8 {
        self.code(m, k) as i8 - 1
    }

    /// The file layout (see the module docs).
    pub fn to_rows(&self) -> Vec<u8> {
        let stride = self.quads();
        let mut rows = vec![ZERO_BYTE; self.out_dim * stride];
        rows.par_chunks_mut(stride.max(1))
            .enumerate()
            .for_each(|(m, row)| {
                for (b, byte) in row.iter_mut().enumerate() {
                    let mut v = 0u8;
                    for s in 0..4 {
                        let k = 4 * b + s;
                        let c = if k < self.in_dim {
                            self.code(m, k)
                        } else {
                            ZERO_CODE
                        };
                        v |= c << (2 * s);
                    }
                    *byte = v;
                }
            });
        rows
    }

    /// The decoded values {−1, 0, 1} as a dense `(out, in)` tensor, without α.
    pub fn signs(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut v = vec![0f32; self.out_dim * self.in_dim];
        v.par_chunks_mut(self.in_dim.max(1))
            .enumerate()
            .for_each(|(m, row)| {
                for (k, x) in row.iter_mut().enumerate() {
                    *x = self.value(m, k) as f32;
                }
            });
        Ok(Tensor::from_vec(v, (self.out_dim, self.in_dim), device)?.to_dtype(dtype)?)
    }

    /// α·w as a dense f32 `(out, in)` tensor.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let signs = self.signs(DType::F32, device)?;
        Ok(signs.broadcast_mul(&self.scale_column(DType::F32, device)?)?)
    }

    /// α as an `(out, 1)` or `(1, 1)` column, to scale rows of a `(…, out)` result's transpose;
    /// see [`Self::scale_row`] for outputs.
    fn scale_column(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = self.scale.len();
        Ok(Tensor::from_slice(&self.scale, (n, 1), device)?.to_dtype(dtype)?)
    }

    /// α as a `(1, out)` or `(1, 1)` row that broadcasts over a `(rows, out)` output.
    fn scale_row(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = self.scale.len();
        Ok(Tensor::from_slice(&self.scale, (1, n), device)?.to_dtype(dtype)?)
    }
}

fn has_invalid_code(b: u8) -> bool {
    (0..4).any(|s| (b >> (2 * s)) & 3 == 3)
}

fn check_scale(scale: &[f32], out_dim: usize) -> Result<()> {
    if scale.len() != 1 && scale.len() != out_dim {
        return Err(Error::input(
            "ternary scale",
            format!("1 or {out_dim} values (per tensor or per output channel)"),
            scale.len().to_string(),
        ));
    }
    if let Some(bad) = scale.iter().find(|a| !a.is_finite()) {
        return Err(Error::input(
            "ternary scale",
            "finite values",
            bad.to_string(),
        ));
    }
    Ok(())
}

/// The least-squares α of the codes `ternary_code(·, gamma)`: mean |W| over the weights whose
/// code is not zero (0 when all are).
fn fitted_alpha(w: &[f32], gamma: f32) -> f32 {
    let (sum, count) = w.iter().fold((0f64, 0usize), |(s, n), &v| {
        if ternary_code(v, gamma) != ZERO_CODE {
            (s + v.abs() as f64, n + 1)
        } else {
            (s, n)
        }
    });
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

/// γ = mean |W| (TerDiT `layers.py`, per tensor; per row for per-channel α).
pub fn absmean_gamma(w: &[f32]) -> f32 {
    if w.is_empty() {
        return 0.0;
    }
    (w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len() as f64) as f32
}

/// The code (w + 1) of one weight: RoundClip(v / (γ + 1e-6), −1, 1) + 1, ties to even as
/// `torch.round`.
pub fn ternary_code(v: f32, gamma: f32) -> u8 {
    ((v / (gamma + 1e-6)).round_ties_even().clamp(-1.0, 1.0) + 1.0) as u8
}

/// The definition: `y[n, m] = α_m · Σ_k x[n, k]·w[m, k] + b[m]` with f64 sums, for `x`
/// `(rows, in)` row-major f32.
pub fn reference_linear(
    x: &[f32],
    rows: usize,
    w: &TernaryMatrix,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (k_dim, m_dim) = (w.in_dim, w.out_dim);
    let mut y = Vec::with_capacity(rows * m_dim);
    for n in 0..rows {
        for m in 0..m_dim {
            let dot: f64 = (0..k_dim)
                .map(|k| x[n * k_dim + k] as f64 * w.value(m, k) as f64)
                .sum();
            let b = bias.map_or(0.0, |b| b[m] as f64);
            y.push((dot * w.alpha(m) as f64 + b) as f32);
        }
    }
    y
}

/// `x (rows, in) · (α·w)ᵀ` without touching the activations' precision: the {−1, 0, 1}
/// matrix is decoded into `x`'s dtype for this call only (exact: ternary values are exact in
/// bf16 and f32), multiplied by the GEMM that dtype uses (`mm`), then scaled by α.
pub fn exact_linear(
    x: &Tensor,
    w: &TernaryMatrix,
    mm: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let signs = w.signs(x.dtype(), x.device())?; // (out, in)
    let y = mm(x, &signs)?; // (rows, out)
    let scale = w.scale_row(DType::F32, x.device())?;
    Ok(y.to_dtype(DType::F32)?
        .broadcast_mul(&scale)?
        .to_dtype(x.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    pub(super) fn random_matrix(
        rng: &mut StdRng,
        out: usize,
        inp: usize,
        per_channel: bool,
    ) -> TernaryMatrix {
        let codes: Vec<u8> = (0..out * inp).map(|_| rng.gen_range(0..3)).collect();
        let scale = if per_channel {
            (0..out).map(|_| rng.gen_range(0.01..0.2)).collect()
        } else {
            vec![rng.gen_range(0.01..0.2)]
        };
        TernaryMatrix::from_codes(out, inp, scale, |m, k| codes[m * inp + k]).expect("valid")
    }

    #[test]
    fn both_layouts_hold_the_same_codes_over_ragged_shapes() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(5);
        for (out, inp) in [(1, 1), (3, 5), (64, 4), (65, 7), (130, 129), (16, 0)] {
            let codes: Vec<u8> = (0..out * inp).map(|_| rng.gen_range(0..3)).collect();
            let w = TernaryMatrix::from_codes(out, inp, vec![0.5], |m, k| codes[m * inp + k])?;
            for m in 0..out {
                for k in 0..inp {
                    assert_eq!(
                        w.code(m, k),
                        codes[m * inp + k],
                        "({out}, {inp}) at ({m}, {k})"
                    );
                }
            }
            let again = TernaryMatrix::from_rows(&w.to_rows(), out, inp, vec![0.5], "w")?;
            assert_eq!(
                again, w,
                "({out}, {inp}) round trip through the file layout"
            );
            assert_eq!(w.to_rows().len(), out * inp.div_ceil(4));
        }
        Ok(())
    }

    #[test]
    fn invalid_codes_and_sizes_are_named() {
        let err = TernaryMatrix::from_rows(&[0b1100_0000], 1, 4, vec![1.0], "layers.0.w")
            .expect_err("code 3");
        assert!(
            err.to_string().contains("layers.0.w") && err.to_string().contains("code 3"),
            "{err}"
        );
        let err = TernaryMatrix::from_rows(&[0; 3], 2, 4, vec![1.0], "w").expect_err("short");
        assert!(err.to_string().contains("2 × 1 bytes"), "{err}");
        let err = TernaryMatrix::from_codes(2, 2, vec![1.0; 3], |_, _| 1).expect_err("scale");
        assert!(err.to_string().contains("1 or 2 values"), "{err}");
    }

    #[test]
    fn absmean_matches_the_terdit_rule() -> Result<()> {
        let w = [0.9f32, -0.05, 0.3, -1.2, 0.0, 0.45];
        let gamma = absmean_gamma(&w); // 0.4833
        let t = TernaryMatrix::absmean(&w, 2, 3, None)?;
        let values: Vec<i8> = (0..2)
            .flat_map(|m| (0..3).map(move |k| (m, k)))
            .map(|(m, k)| t.value(m, k))
            .collect();
        // 0.9/γ = 1.86 → 1, −0.05/γ → 0, 0.3/γ = 0.62 → 1, −1.2/γ → −1, 0 → 0, 0.45/γ = 0.93 → 1
        assert_eq!(values, [1, 0, 1, -1, 0, 1]);
        let alpha = (0.9 + 0.3 + 1.2 + 0.45) / 4.0;
        assert!((t.alpha(0) - alpha).abs() < 1e-6 && gamma > 0.48 && gamma < 0.49);
        Ok(())
    }

    /// Per-channel α: each row's codes from its own mean |W| (the small first row keeps its
    /// codes; the matrix's γ = 0.296 would zero it), the given α per row, and the fitted α per
    /// row the mean |W| of that row's non-zero codes.
    #[test]
    fn per_channel_absmean_takes_each_rows_gamma() -> Result<()> {
        let w = [0.09f32, -0.005, 0.03, -1.2, 0.0, 0.45];
        let values = |t: &TernaryMatrix| -> Vec<i8> {
            (0..2)
                .flat_map(|m| (0..3).map(move |k| (m, k)))
                .map(|(m, k)| t.value(m, k))
                .collect()
        };
        let t = TernaryMatrix::absmean(&w, 2, 3, Some(vec![0.07, 0.6]))?;
        assert_eq!(values(&t), [1, 0, 1, -1, 0, 1]);
        assert_eq!(t.scale(), [0.07, 0.6]);
        let per_tensor = TernaryMatrix::absmean(&w, 2, 3, Some(vec![0.5]))?;
        assert_eq!(values(&per_tensor), [0, 0, 0, -1, 0, 1]);
        let fitted = TernaryMatrix::fitted_row_scales(&w, 2, 3);
        let want = [(0.09 + 0.03) / 2.0, (1.2 + 0.45) / 2.0];
        assert!(
            fitted.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{fitted:?}"
        );
        Ok(())
    }

    #[test]
    fn exact_path_matches_the_reference_over_ragged_shapes() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(6);
        let dev = Device::Cpu;
        for (rows, out, inp, per_channel) in
            [(1, 1, 1, false), (5, 65, 7, true), (33, 130, 129, false)]
        {
            let w = random_matrix(&mut rng, out, inp, per_channel);
            let x: Vec<f32> = (0..rows * inp).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let want = reference_linear(&x, rows, &w, None);
            let xt = Tensor::from_slice(&x, (rows, inp), &dev)?;
            let got = exact_linear(&xt, &w, |a, b| Ok(a.matmul(&b.t()?)?))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                    "({rows}, {out}, {inp}) element {i}: {g} vs {r}"
                );
            }
        }
        Ok(())
    }
}
