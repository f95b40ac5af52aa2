//! Fused CPU kernels *with backward* for the ops a training step runs most: RMSNorm,
//! LayerNorm, softmax and interleaved RoPE, on contiguous f32 tensors.
//!
//! Written as candle custom ops. Their composed forms in `ops.rs` are the reference: the
//! tests check both values and gradients against them. A composed RMSNorm is nine tensor
//! ops forward and more backward, each a full pass over memory with a fresh allocation; these
//! are one pass forward and one or two backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::kernels::math::inv_rms as rsqrt_mean_sq;
use crate::kernels::storage::contiguous_f32 as slice;

type CResult<T> = candle_core::Result<T>;

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// Rows per rayon task: enough work per task to amortise scheduling.
fn rows_per_task(d: usize) -> usize {
    (16_384 / d.max(1)).max(1)
}

/// Sums per-row contributions `f(row_index, out)` into one `d`-vector, in parallel.
fn column_sums(rows: usize, d: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let chunk = rows_per_task(d).max(rows / (4 * rayon::current_num_threads()).max(1));
    (0..rows)
        .into_par_iter()
        .chunks(chunk.max(1))
        .map(|idx| {
            let mut acc = vec![0f32; d];
            for r in idx {
                f(r, &mut acc);
            }
            acc
        })
        .reduce(
            || vec![0f32; d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

// ----------------------------------------------------------------------------- RMSNorm

/// `y = x · rsqrt(mean(x²) + eps) · w` over the last axis.
struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, "rms_norm x")?, slice(s2, l2, "rms_norm w")?);
        let d = last_dim(l1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let r = rsqrt_mean_sq(x, self.eps);
            for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let gx = x.apply_op3_no_bwd(w, &g, &RmsNormGradX { eps: self.eps })?;
        let gw = x.apply_op2_no_bwd(&g, &RmsNormGradW { eps: self.eps })?;
        Ok((Some(gx), Some(gw)))
    }
}

/// dx = r·(w⊙g) − x·r³·mean(w⊙g⊙x).
struct RmsNormGradX {
    eps: f32,
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, w, g) = (
            slice(s1, l1, "x")?,
            slice(s2, l2, "w")?,
            slice(s3, l3, "grad")?,
        );
        let d = last_dim(l1);
        let mut gx = vec![0f32; x.len()];
        gx.par_chunks_mut(d)
            .zip(x.par_chunks(d).zip(g.par_chunks(d)))
            .for_each(|(gx, (x, g))| {
                let r = rsqrt_mean_sq(x, self.eps);
                let dot = x
                    .iter()
                    .zip(g)
                    .zip(w)
                    .map(|((x, g), w)| w * g * x)
                    .sum::<f32>()
                    / d as f32;
                let c = r * r * r * dot;
                for (i, out) in gx.iter_mut().enumerate() {
                    *out = r * w[i] * g[i] - x[i] * c;
                }
            });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

/// dw = Σ_rows g⊙x·r.
struct RmsNormGradW {
    eps: f32,
}

impl CustomOp2 for RmsNormGradW {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, "x")?, slice(s2, l2, "grad")?);
        let d = last_dim(l1);
        let gw = column_sums(x.len() / d, d, |row, acc| {
            let (x, g) = (&x[row * d..(row + 1) * d], &g[row * d..(row + 1) * d]);
            let r = rsqrt_mean_sq(x, self.eps);
            for ((a, x), g) in acc.iter_mut().zip(x).zip(g) {
                *a += g * x * r;
            }
        });
        Ok((CpuStorage::F32(gw), Shape::from(d)))
    }
}

// ----------------------------------------------------------------------------- LayerNorm

/// `y = (x − μ)·rsqrt(σ² + eps)·w + b` over the last axis.
struct LayerNorm {
    eps: f32,
}

fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mu = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / n;
    (mu, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, w, b) = (
            slice(s1, l1, "x")?,
            slice(s2, l2, "w")?,
            slice(s3, l3, "b")?,
        );
        let d = last_dim(l1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let (mu, r) = moments(x, self.eps);
            for i in 0..d {
                y[i] = (x[i] - mu) * r * w[i] + b[i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let gx = x.apply_op3_no_bwd(w, &g, &LayerNormGradX { eps: self.eps })?;
        let gwb = x.apply_op2_no_bwd(&g, &LayerNormGradWB { eps: self.eps })?; // (2, D)
        Ok((Some(gx), Some(gwb.get(0)?), Some(gwb.get(1)?)))
    }
}

/// dx = r·(w⊙g − mean(w⊙g) − x̂·mean(w⊙g⊙x̂)).
struct LayerNormGradX {
    eps: f32,
}

impl CustomOp3 for LayerNormGradX {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, w, g) = (
            slice(s1, l1, "x")?,
            slice(s2, l2, "w")?,
            slice(s3, l3, "grad")?,
        );
        let d = last_dim(l1);
        let n = d as f32;
        let mut gx = vec![0f32; x.len()];
        gx.par_chunks_mut(d)
            .zip(x.par_chunks(d).zip(g.par_chunks(d)))
            .for_each(|(gx, (x, g))| {
                let (mu, r) = moments(x, self.eps);
                let (mut m1, mut m2) = (0f32, 0f32);
                for i in 0..d {
                    let wg = w[i] * g[i];
                    m1 += wg;
                    m2 += wg * (x[i] - mu) * r;
                }
                let (m1, m2) = (m1 / n, m2 / n);
                for i in 0..d {
                    gx[i] = r * (w[i] * g[i] - m1 - (x[i] - mu) * r * m2);
                }
            });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

/// [dw; db] = [Σ_rows g⊙x̂; Σ_rows g], as a (2, D) tensor.
struct LayerNormGradWB {
    eps: f32,
}

impl CustomOp2 for LayerNormGradWB {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad-wb"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, "x")?, slice(s2, l2, "grad")?);
        let d = last_dim(l1);
        let sums = column_sums(x.len() / d, 2 * d, |row, acc| {
            let (x, g) = (&x[row * d..(row + 1) * d], &g[row * d..(row + 1) * d]);
            let (mu, r) = moments(x, self.eps);
            for i in 0..d {
                acc[i] += g[i] * (x[i] - mu) * r;
                acc[d + i] += g[i];
            }
        });
        Ok((CpuStorage::F32(sums), Shape::from((2, d))))
    }
}

// ----------------------------------------------------------------------------- softmax

/// Softmax over the last axis.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, "softmax x")?;
        let d = last_dim(l);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
            let mut sum = 0f32;
            for (y, x) in y.iter_mut().zip(x) {
                *y = (x - max).exp();
                sum += *y;
            }
            let inv = 1.0 / sum;
            y.iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad)?))
    }
}

/// dx = y⊙(g − Σ g⊙y).
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (y, g) = (slice(s1, l1, "y")?, slice(s2, l2, "grad")?);
        let d = last_dim(l1);
        let mut gx = vec![0f32; y.len()];
        gx.par_chunks_mut(d)
            .zip(y.par_chunks(d).zip(g.par_chunks(d)))
            .for_each(|(gx, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for i in 0..d {
                    gx[i] = y[i] * (g[i] - dot);
                }
            });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

// ----------------------------------------------------------------------------- RoPE

/// Rotates adjacent pairs of `x` (B, H, N, Dh) by angles given as cos/sin `(N, Dh/2)` or
/// `(B, N, Dh/2)`. Its gradient is the rotation by the opposite angles: the same kernel with
/// `sin` negated.
struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, cos, sin) = (
            slice(s1, l1, "x")?,
            slice(s2, l2, "cos")?,
            slice(s3, l3, "sin")?,
        );
        let &[b, h, n, dh] = l1.dims() else {
            candle_core::bail!("rope: x must be (B, H, N, Dh)")
        };
        let half = dh / 2;
        let per_batch = l2.dims().len() == 3;
        let mut y = vec![0f32; x.len()];
        // one task per (batch, head)
        y.par_chunks_mut(n * dh)
            .zip(x.par_chunks(n * dh))
            .enumerate()
            .for_each(|(bh, (y, x))| {
                let table = if per_batch { (bh / h) * n * half } else { 0 };
                for t in 0..n {
                    let (c, s) = (
                        &cos[table + t * half..][..half],
                        &sin[table + t * half..][..half],
                    );
                    let (xr, yr) = (&x[t * dh..(t + 1) * dh], &mut y[t * dh..(t + 1) * dh]);
                    for j in 0..half {
                        let (x0, x1) = (xr[2 * j], xr[2 * j + 1]);
                        yr[2 * j] = x0 * c[j] - x1 * s[j];
                        yr[2 * j + 1] = x0 * s[j] + x1 * c[j];
                    }
                }
            });
        let _ = b;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = g
            .contiguous()?
            .apply_op3_no_bwd(cos, &sin.neg()?.contiguous()?, &Rope)?;
        Ok((Some(gx), None, None))
    }
}

// ----------------------------------------------------------------------------- SwiGLU

/// SiLU as candle computes it (`v / (1 + e^−v)`), so fused and composed agree bit for bit.
#[inline(always)]
fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// SiLU on the vectorisable `math::exp2` (`e^−v = 2^(−v·log₂e)`), within a few ulp of
/// [`silu`]: the inference form. `silu` calls libm's scalar `expf` and is kept for training,
/// whose arithmetic the shipped models' run configs reproduce exactly.
#[inline(always)]
fn silu_fast(v: f32) -> f32 {
    v / (1.0 + crate::kernels::math::exp2(-v * std::f32::consts::LOG2_E))
}

/// `y = silu(a) ⊙ b`, the SwiGLU gate; `fast` picks [`silu_fast`] (set where nothing is
/// differentiated).
struct SwiGlu {
    fast: bool,
}

impl SwiGlu {
    #[inline(always)]
    fn gate(y: &mut [f32], a: &[f32], b: &[f32], silu: impl Fn(f32) -> f32) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = silu(a) * b;
        }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (a, b) = (slice(s1, l1, "swiglu a")?, slice(s2, l2, "swiglu b")?);
        same_len("swiglu", a.len(), b.len())?;
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(
                a.par_chunks(ELEMENTS_PER_TASK)
                    .zip(b.par_chunks(ELEMENTS_PER_TASK)),
            )
            .for_each(|(y, (a, b))| {
                if self.fast {
                    Self::gate(y, a, b, silu_fast)
                } else {
                    Self::gate(y, a, b, silu)
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let ga = a.apply_op3_no_bwd(b, &g, &SwiGluGradA)?;
        let gb = a.apply_op2_no_bwd(&g, &SwiGluGradB)?;
        Ok((Some(ga), Some(gb)))
    }
}

/// da = g ⊙ b ⊙ σ(a)·(1 + a·(1 − σ(a))).
struct SwiGluGradA;

impl CustomOp3 for SwiGluGradA {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad-a"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (a, b, g) = (
            slice(s1, l1, "a")?,
            slice(s2, l2, "b")?,
            slice(s3, l3, "grad")?,
        );
        same_len("swiglu grad", a.len(), b.len())?;
        same_len("swiglu grad", a.len(), g.len())?;
        let mut ga = vec![0f32; a.len()];
        let n = ELEMENTS_PER_TASK;
        ga.par_chunks_mut(n)
            .zip(a.par_chunks(n).zip(b.par_chunks(n).zip(g.par_chunks(n))))
            .for_each(|(ga, (a, (b, g)))| {
                for (i, out) in ga.iter_mut().enumerate() {
                    let s = 1.0 / (1.0 + (-a[i]).exp());
                    *out = g[i] * b[i] * s * (1.0 + a[i] * (1.0 - s));
                }
            });
        Ok((CpuStorage::F32(ga), l1.shape().clone()))
    }
}

/// db = g ⊙ silu(a).
struct SwiGluGradB;

impl CustomOp2 for SwiGluGradB {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad-b"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (a, g) = (slice(s1, l1, "a")?, slice(s2, l2, "grad")?);
        same_len("swiglu grad", a.len(), g.len())?;
        let mut gb = vec![0f32; a.len()];
        let n = ELEMENTS_PER_TASK;
        gb.par_chunks_mut(n)
            .zip(a.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(|(gb, (a, g))| {
                for ((out, &a), &g) in gb.iter_mut().zip(a).zip(g) {
                    *out = g * silu(a);
                }
            });
        Ok((CpuStorage::F32(gb), l1.shape().clone()))
    }
}

/// Elements per rayon task of the elementwise kernels.
const ELEMENTS_PER_TASK: usize = 1 << 14;

fn same_len(what: &str, a: usize, b: usize) -> CResult<()> {
    if a != b {
        candle_core::bail!("{what}: operands of {a} and {b} elements")
    }
    Ok(())
}

// ----------------------------------------------------------------------------- entry points

/// Whether the fused kernels apply: f32 on the CPU.
pub(crate) fn applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.dtype() == candle_core::DType::F32 && t.device().is_cpu())
}

/// `fast`: inference arithmetic (see [`silu_fast`]).
pub(crate) fn swiglu(a: &Tensor, b: &Tensor, fast: bool) -> Result<Tensor> {
    Ok(a.contiguous()?
        .apply_op2(&b.contiguous()?, SwiGlu { fast })?)
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })?)
}

pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )?)
}

pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

pub(crate) fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)?)
}
