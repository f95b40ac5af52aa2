//! The VAE decoder's hot operations on the CPU, inference only, each beside a plain reference:
//!
//! - [`conv2d`]: a stride-1 convolution as banded im2col onto the `gemm` crate's kernels, the
//!   output written in place in NCHW (candle 0.11's CPU convolution builds the whole im2col
//!   matrix, multiplies in the transposed layout and copies back, and falls to ~13 GFLOP/s at
//!   512² × 128 channels; it has no bf16 matmul at all);
//! - [`group_norm`]: GroupNorm with its affine, optionally fused with the SiLU that follows it in
//!   every ResNet block (one read and one write instead of candle-nn's six passes);
//! - [`upsample2x_conv2d`]: nearest-neighbour ×2 upsampling read straight into the next
//!   convolution's im2col (the 4× tensor is never stored).
//!
//! Everything computes in f32 (bf16 inputs are upcast), except that a bf16 weight on a CPU with
//! AVX-512 BF16 makes the Winograd products bf16 (see [`conv2d`]); on other devices, or when a
//! gradient is wanted, each falls back to candle's own ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::modulate::applies as fast_path;
use super::storage::contiguous_f32;
use super::{bf16_gemm, winograd};
use crate::error::{Error, Result};

/// im2col values per band (16 MiB of f32): large enough that each GEMM has thousands of
/// columns, small enough that the band stays in cache-friendly bounds at any image size.
const BAND_VALUES: usize = 4 << 20;

fn dims4(l: &Layout, what: &str) -> candle_core::Result<[usize; 4]> {
    match *l.dims() {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref other => candle_core::bail!("{what}: expected (B, C, H, W), got {other:?}"),
    }
}

/// `x` (B, C, H, W) convolved with `w` (O, C, K, K), stride 1, `padding` zeros on every side,
/// plus `bias` (O,): (B, O, H + 2p − K + 1, W + 2p − K + 1), in the dtype of `x`.
///
/// The weight's dtype is the products' precision: a bf16 weight of a wide 3 × 3 convolution
/// multiplies in bf16 (the Winograd products on `vdpbf16ps`, f32 accumulation) where the CPU
/// has AVX-512 BF16, as a bf16 VAE does in diffusers; elsewhere it is widened to f32.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, padding: usize) -> Result<Tensor> {
    conv2d_impl(x, w, bias, padding, false)
}

/// [`conv2d`] of `x` upsampled ×2 by nearest neighbour (diffusers' `Upsample2D`), without
/// materialising the upsampled tensor: the im2col reads each input value for its four copies.
pub fn upsample2x_conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    conv2d_impl(x, w, bias, padding, true)
}

fn conv2d_impl(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    upsample: bool,
) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (h, wd) = if upsample { (2 * h, 2 * wd) } else { (h, wd) };
    let (o, ci, kh, kw) = w.dims4()?;
    if ci != c || kh != kw || kh == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::input(
            "convolution operands",
            format!("a weight (O, {c}, K, K) with K ≤ the padded input {h}×{wd}"),
            format!("{:?} with padding {padding}", w.dims()),
        ));
    }
    if let Some(b) = bias {
        if b.dims() != [o] {
            return Err(Error::input(
                "convolution bias",
                format!("({o},)"),
                format!("{:?}", b.dims()),
            ));
        }
    }
    if !fast_path(&[x, w]) {
        let x = if upsample {
            x.upsample_nearest2d(h, wd)?
        } else {
            x.clone()
        };
        // the weight's dtype sets the products' precision only on the fast path
        let y = x.conv2d(&w.to_dtype(x.dtype())?, padding, 1, 1, 1)?;
        return Ok(match bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?.reshape((1, o, 1, 1))?)?,
            None => y,
        });
    }
    let products = products_for(w, kh, padding, c, o);
    let op = Conv2d {
        padding,
        upsample,
        bias: bias
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?,
        products,
    };
    let f32c = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.contiguous()?) };
    let y = f32c(x)?.apply_op2_no_bwd(&f32c(w)?, &op)?;
    Ok(y.to_dtype(x.dtype())?)
}

/// The Winograd products' precision for this weight: bf16 for a bf16 weight of a Winograd
/// convolution with an even channel count (the kernel's k-pairs) on a CPU with AVX-512 BF16.
fn products_for(w: &Tensor, k: usize, padding: usize, c: usize, o: usize) -> winograd::Products {
    if w.dtype() == DType::BF16
        && c.is_multiple_of(2)
        && bf16_gemm::available()
        && winograd::applies(k, padding, c, o)
    {
        winograd::Products::Bf16
    } else {
        winograd::Products::F32
    }
}

struct Conv2d {
    padding: usize,
    /// The input is read upsampled ×2 (nearest).
    upsample: bool,
    bias: Option<Vec<f32>>,
    /// The Winograd products' precision (chosen from the weight's dtype in `conv2d_impl`).
    products: winograd::Products,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "convolution input")?;
        let w = contiguous_f32(s2, l2, "convolution weight")?;
        let [b, c, h, wd] = dims4(l1, "convolution input")?;
        let [o, _, k, _] = dims4(l2, "convolution weight")?;
        let (p, up) = (self.padding, self.upsample);
        let out = if winograd::applies(k, p, c, o) {
            let dims = [b, c, h, wd];
            winograd::conv3x3(x, w, self.bias.as_deref(), dims, o, up, self.products)
        } else {
            conv2d_f32(x, w, self.bias.as_deref(), [b, c, h, wd], o, k, p, up)
        };
        let f = if up { 2 } else { 1 };
        let (ho, wo) = (f * h + 2 * p + 1 - k, f * wd + 2 * p + 1 - k);
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, o, ho, wo])))
    }
}

/// The banded im2col convolution on slices (see [`conv2d`]); with `up`, of the input
/// upsampled ×2 (the logical input is 2H × 2W, value (y, x) read at (y/2, x/2)).
#[allow(clippy::too_many_arguments)]
fn conv2d_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    [b, c, h, wd]: [usize; 4],
    o: usize,
    k: usize,
    p: usize,
    up: bool,
) -> Vec<f32> {
    // (hs, ws): the stored planes; (h, wd): the logical input the kernel slides over
    let (hs, ws) = (h, wd);
    let (h, wd) = if up { (2 * h, 2 * wd) } else { (h, wd) };
    let (ho, wo) = (h + 2 * p + 1 - k, wd + 2 * p + 1 - k);
    let (plane, kk) = (ho * wo, c * k * k);
    let mut out = vec![0f32; b * o * plane];
    if let Some(bias) = bias {
        out.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(i, dst)| dst.fill(bias[i % o]));
    }
    let add = bias.is_some();
    // a 1×1 convolution without padding multiplies the input planes as they lie
    let direct = k == 1 && p == 0 && !up;
    let band = (BAND_VALUES / (kk * wo).max(1)).clamp(1, ho.max(1));
    let mut cols = if direct {
        Vec::new()
    } else {
        vec![0f32; kk * band * wo]
    };
    for bi in 0..b {
        let xb = &x[bi * c * hs * ws..][..c * hs * ws];
        let ob = &mut out[bi * o * plane..][..o * plane];
        if direct {
            gemm_rows(ob, plane, 0, plane, w, xb, o, c, add);
            continue;
        }
        for r0 in (0..ho).step_by(band) {
            let rows = band.min(ho - r0);
            let n = rows * wo;
            // cols row (ci, ky, kx), column (r, j) = x[ci, r0 + r + ky − p, j + kx − p] or 0
            cols[..kk * n]
                .par_chunks_mut(k * k * n)
                .enumerate()
                .for_each(|(ci, chunk)| {
                    let xp = &xb[ci * hs * ws..][..hs * ws];
                    for ky in 0..k {
                        for kx in 0..k {
                            let row = &mut chunk[(ky * k + kx) * n..][..n];
                            for (rr, dst) in row.chunks_mut(wo).enumerate() {
                                let sy = (r0 + rr + ky) as isize - p as isize;
                                if sy < 0 || sy >= h as isize {
                                    dst.fill(0.0);
                                    continue;
                                }
                                let sy = if up { sy as usize / 2 } else { sy as usize };
                                let src = &xp[sy * ws..][..ws];
                                let shift = kx as isize - p as isize;
                                let j0 = (-shift).clamp(0, wo as isize) as usize;
                                let j1 =
                                    (wd as isize - shift).clamp(j0 as isize, wo as isize) as usize;
                                dst[..j0].fill(0.0);
                                dst[j1..].fill(0.0);
                                let s0 = (j0 as isize + shift) as usize;
                                if up {
                                    for (j, d) in dst[j0..j1].iter_mut().enumerate() {
                                        *d = src[(s0 + j) / 2];
                                    }
                                } else {
                                    dst[j0..j1].copy_from_slice(&src[s0..s0 + (j1 - j0)]);
                                }
                            }
                        }
                    }
                });
            gemm_rows(ob, plane, r0 * wo, n, w, &cols[..kk * n], o, kk, add);
        }
    }
    out
}

/// `dst[i][col0 + j] (+)= Σ_l a[i][l] · bmat[l][j]` for `a` (m × kk), `bmat` (kk × n), `dst`
/// rows `ld` apart: m × n of the output written in place, on all of rayon's threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_rows(
    dst: &mut [f32],
    ld: usize,
    col0: usize,
    n: usize,
    a: &[f32],
    bmat: &[f32],
    m: usize,
    kk: usize,
    add: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.len() >= m * kk && bmat.len() >= kk * n && dst.len() >= (m - 1) * ld + col0 + n,
        "gemm operands smaller than their shapes"
    );
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the assert above keeps every element gemm touches inside the three slices: dst
    // rows i < m at i·ld + col0 + j, j < n; a rows of kk; bmat rows of n. `dst` is borrowed
    // mutably and does not alias `a` or `bmat`.
    unsafe {
        gemm::gemm(
            m,
            n,
            kk,
            dst.as_mut_ptr().add(col0),
            1,
            ld as isize,
            add,
            a.as_ptr(),
            1,
            kk as isize,
            bmat.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The convolution of [`conv2d`] as the definition reads, one output at a time: the reference
/// the kernel is tested against.
pub fn conv2d_reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    [b, c, h, wd]: [usize; 4],
    o: usize,
    k: usize,
    p: usize,
) -> Vec<f32> {
    let (ho, wo) = (h + 2 * p + 1 - k, wd + 2 * p + 1 - k);
    let mut out = vec![0f32; b * o * ho * wo];
    for bi in 0..b {
        for oi in 0..o {
            for y in 0..ho {
                for xx in 0..wo {
                    let mut acc = bias.map_or(0.0, |b| b[oi] as f64);
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (sy, sx) = (y + ky, xx + kx);
                                if sy < p || sx < p || sy - p >= h || sx - p >= wd {
                                    continue;
                                }
                                let xv = x[((bi * c + ci) * h + sy - p) * wd + sx - p];
                                let wv = w[((oi * c + ci) * k + ky) * k + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((bi * o + oi) * ho + y) * wo + xx] = acc as f32;
                }
            }
        }
    }
    out
}

/// `x` (planes, H, W) upsampled ×2 by nearest neighbour: (planes, 2H, 2W), the input the
/// references of the upsampled convolutions convolve.
#[cfg(test)]
pub(crate) fn upsampled_reference(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (hl, wl) = (2 * h, 2 * w);
    (0..planes * hl * wl)
        .map(|i| {
            let (plane, y, xx) = (i / (hl * wl), (i / wl) % hl, i % wl);
            x[plane * h * w + (y / 2) * w + xx / 2]
        })
        .collect()
}

/// GroupNorm of `x` (B, C, H, W) over `groups` channel groups with the per-channel affine
/// `weight`, `bias` (C,), then SiLU when `silu`: diffusers' `GroupNorm` (+ `SiLU`), two-pass
/// statistics accumulated into f64 (`group_norm.rs`), the biased variance as torch takes it.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if groups == 0 || c % groups != 0 || weight.dims() != [c] || bias.dims() != [c] {
        return Err(Error::input(
            "group norm operands",
            format!("channels {c} a multiple of the groups, weight and bias ({c},)"),
            format!(
                "{groups} groups, weight {:?}, bias {:?}",
                weight.dims(),
                bias.dims()
            ),
        ));
    }
    if !fast_path(&[x]) {
        return group_norm_composed(x, groups, weight, bias, eps, silu);
    }
    let vec = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
    let op = GroupNorm {
        groups,
        eps,
        silu,
        weight: vec(weight)?,
        bias: vec(bias)?,
    };
    let y = x
        .to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1_no_bwd(&op)?;
    Ok(y.to_dtype(x.dtype())?)
}

/// [`group_norm`] in candle's tensor ops: the fallback, and the reference the kernel is tested
/// against.
pub fn group_norm_composed(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let dtype = x.dtype();
    let g = x
        .to_dtype(DType::F32)?
        .reshape((b, groups, (c / groups) * h * w))?;
    let mean = g.mean_keepdim(2)?;
    let centered = g.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    let normed = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape((b, c, h, w))?;
    let shape = (1, c, 1, 1);
    let y = normed
        .broadcast_mul(&weight.to_dtype(DType::F32)?.reshape(shape)?)?
        .broadcast_add(&bias.to_dtype(DType::F32)?.reshape(shape)?)?;
    let y = if silu { candle_nn::ops::silu(&y)? } else { y };
    Ok(y.to_dtype(dtype)?)
}

struct GroupNorm {
    groups: usize,
    eps: f64,
    silu: bool,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl CustomOp1 for GroupNorm {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "group norm input")?;
        let [_, c, h, w] = dims4(l, "group norm input")?;
        let (cg, plane) = (c / self.groups, h * w);
        let level = super::Isa::detect().level();
        let mut out = vec![0f32; x.len()];
        // one task per (sample, group): its channels are contiguous in NCHW
        out.par_chunks_mut((cg * plane).max(1))
            .zip(x.par_chunks((cg * plane).max(1)))
            .enumerate()
            .for_each(|(i, (dst, src))| {
                let c0 = (i % self.groups) * cg;
                let p = super::group_norm::Params {
                    plane,
                    weight: &self.weight[c0..c0 + cg],
                    bias: &self.bias[c0..c0 + cg],
                    eps: self.eps,
                    silu: self.silu,
                };
                super::group_norm::group(level, dst, src, &p);
            });
        Ok((CpuStorage::F32(out), Shape::from_dims(l.dims())))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Vec<f32> {
        // a small LCG: deterministic values in [-1, 1) without a tensor round trip
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..shape.iter().product::<usize>())
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn max_rel(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        got.iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale
    }

    /// Every shape the decoder uses (3×3 same, 1×1 shortcut) and odd ones: padding 0 and 2,
    /// a 5×5 kernel, widths that leave partial bands, a batch of two — against the definition
    /// and against candle's convolution.
    #[test]
    fn conv2d_matches_the_definition_and_candle() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            // (b, c, h, w, o, k, p)
            (1, 3, 9, 7, 5, 3, 1),
            (2, 8, 6, 11, 4, 3, 1),
            (1, 6, 5, 5, 7, 1, 0),
            (1, 4, 8, 6, 3, 3, 0),
            (1, 2, 7, 9, 3, 5, 2),
            (2, 5, 4, 4, 6, 1, 1),
        ];
        for (i, &(b, c, h, w, o, k, p)) in cases.iter().enumerate() {
            let x = rand(&[b, c, h, w], i as u64);
            let wt = rand(&[o, c, k, k], 100 + i as u64);
            let bias = rand(&[o], 200 + i as u64);
            let want = conv2d_reference(&x, &wt, Some(&bias), [b, c, h, w], o, k, p);
            let xt = Tensor::from_vec(x, (b, c, h, w), &dev)?;
            let wt = Tensor::from_vec(wt, (o, c, k, k), &dev)?;
            let bt = Tensor::from_vec(bias, o, &dev)?;
            let got = conv2d(&xt, &wt, Some(&bt), p)?;
            let got = got.flatten_all()?.to_vec1::<f32>()?;
            let e = max_rel(&got, &want);
            assert!(
                e < 1e-5,
                "case {i} {:?}: kernel vs definition {e}",
                (b, c, h, w, o, k, p)
            );
            let candle = xt.conv2d(&wt, p, 1, 1, 1)?;
            let candle = candle.broadcast_add(&bt.reshape((1, o, 1, 1))?)?;
            let e = max_rel(&candle.flatten_all()?.to_vec1::<f32>()?, &want);
            assert!(e < 1e-5, "case {i}: candle vs definition {e}");
            // bf16 storage computes in f32 and rounds once
            let got16 = conv2d(&xt.to_dtype(DType::BF16)?, &wt, Some(&bt), p)?;
            assert_eq!(got16.dtype(), DType::BF16);
        }
        Ok(())
    }

    /// A bf16 weight on wide 3 × 3 convolutions (plain and upsampled, several bands, odd
    /// sizes): the products are bf16 where the CPU has AVX-512 BF16 (otherwise the weight is
    /// widened — the portable path — and the same bound holds with room to spare). Against
    /// the definition on the bf16-rounded weight, within the rounding of U and V to bf16
    /// (2⁻⁹ each, on transformed values a few times the outputs'): measured at most 4.1e-3 of
    /// the output's scale on Zen 4, bound 8e-3. An odd channel count takes the f32 products.
    #[test]
    fn bf16_weights_multiply_within_bf16_rounding() -> Result<()> {
        let dev = Device::Cpu;
        let bf16_products = bf16_gemm::available();
        eprintln!("bf16 products on this CPU: {bf16_products}");
        for (i, &(c, h, w, o, up)) in [
            (32, 9, 7, 48, false),
            (64, 5, 6, 32, true),
            (64, 70, 512, 32, false),
            (33, 6, 6, 32, false),
        ]
        .iter()
        .enumerate()
        {
            let x = rand(&[1, c, h, w], 300 + i as u64);
            let wt = Tensor::from_vec(rand(&[o, c, 3, 3], 400 + i as u64), (o, c, 3, 3), &dev)?
                .to_dtype(DType::BF16)?;
            let bias = rand(&[o], 500 + i as u64);
            let chosen = products_for(&wt, 3, 1, c, o);
            let want_products = if bf16_products && c % 2 == 0 {
                winograd::Products::Bf16
            } else {
                winograd::Products::F32
            };
            assert_eq!(chosen, want_products, "case {i}: products chosen");
            let (hl, wl) = if up { (2 * h, 2 * w) } else { (h, w) };
            let xl = if up {
                upsampled_reference(&x, c, h, w)
            } else {
                x.clone()
            };
            let wide = wt.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let want = conv2d_reference(&xl, &wide, Some(&bias), [1, c, hl, wl], o, 3, 1);
            let xt = Tensor::from_vec(x, (1, c, h, w), &dev)?;
            let bt = Tensor::from_vec(bias, o, &dev)?;
            let got = if up {
                upsample2x_conv2d(&xt, &wt, Some(&bt), 1)?
            } else {
                conv2d(&xt, &wt, Some(&bt), 1)?
            };
            assert_eq!(got.dtype(), DType::F32);
            let e = max_rel(&got.flatten_all()?.to_vec1::<f32>()?, &want);
            assert!(
                e < 8e-3,
                "case {i} {:?}: bf16 products vs definition {e}",
                (c, h, w, o, up)
            );
            if chosen == winograd::Products::F32 {
                assert!(e < 1e-5, "case {i}: widened weight vs definition {e}");
            }
        }
        Ok(())
    }

    /// Bands: an image tall enough that the im2col matrix is split into several bands.
    #[test]
    fn conv2d_is_the_same_across_band_boundaries() -> Result<()> {
        let (c, h, w, o) = (64, 70, 128, 4);
        // band = BAND_VALUES / (c·9·w) = 56 rows here, so two bands (56 + 14)
        assert!(BAND_VALUES / (c * 9 * w) < h);
        let x = rand(&[1, c, h, w], 7);
        let wt = rand(&[o, c, 3, 3], 8);
        let want = conv2d_reference(&x, &wt, None, [1, c, h, w], o, 3, 1);
        let got = conv2d_f32(&x, &wt, None, [1, c, h, w], o, 3, 1, false);
        let e = max_rel(&got, &want);
        assert!(e < 1e-5, "banded convolution vs definition: {e}");
        Ok(())
    }

    /// The fused upsample + convolution against upsampling first, then convolving.
    #[test]
    fn upsampled_conv2d_equals_upsampling_then_convolving() -> Result<()> {
        let dev = Device::Cpu;
        for (i, &(c, h, w, o, k, p)) in [(3, 5, 4, 2, 3, 1), (4, 3, 6, 3, 1, 0), (2, 4, 4, 2, 5, 2)]
            .iter()
            .enumerate()
        {
            let x = Tensor::from_vec(rand(&[1, c, h, w], 30 + i as u64), (1, c, h, w), &dev)?;
            let wt = Tensor::from_vec(rand(&[o, c, k, k], 40 + i as u64), (o, c, k, k), &dev)?;
            let bias = Tensor::from_vec(rand(&[o], 50 + i as u64), o, &dev)?;
            let up = x.upsample_nearest2d(2 * h, 2 * w)?;
            let want = conv2d(&up, &wt, Some(&bias), p)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let got = upsample2x_conv2d(&x, &wt, Some(&bias), p)?;
            let e = max_rel(&got.flatten_all()?.to_vec1::<f32>()?, &want);
            assert!(e < 1e-6, "case {i}: fused vs upsample-then-convolve {e}");
        }
        Ok(())
    }

    #[test]
    fn conv2d_names_bad_operands() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev)?;
        let wrong_c = Tensor::zeros((2, 4, 3, 3), DType::F32, &dev)?;
        let Err(e) = conv2d(&x, &wrong_c, None, 1) else {
            panic!("a weight of the wrong channel count was accepted");
        };
        let e = e.to_string();
        assert!(e.contains("convolution operands"), "{e}");
        let w = Tensor::zeros((2, 3, 3, 3), DType::F32, &dev)?;
        let bias = Tensor::zeros(3, DType::F32, &dev)?;
        let Err(e) = conv2d(&x, &w, Some(&bias), 1) else {
            panic!("a bias of the wrong length was accepted");
        };
        let e = e.to_string();
        assert!(e.contains("convolution bias"), "{e}");
        Ok(())
    }

    #[test]
    fn group_norm_matches_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (b, c, h, w) = (2, 12, 5, 7);
        let x = Tensor::from_vec(rand(&[b, c, h, w], 3), (b, c, h, w), &dev)?.affine(4.0, 1.5)?;
        let weight = (Tensor::from_vec(rand(&[c], 4), c, &dev)? + 1.0)?;
        let bias = Tensor::from_vec(rand(&[c], 5), c, &dev)?;
        for groups in [1, 3, 4, 12] {
            for silu in [false, true] {
                let want = group_norm_composed(&x, groups, &weight, &bias, 1e-6, silu)?;
                let got = group_norm(&x, groups, &weight, &bias, 1e-6, silu)?;
                let want = want.flatten_all()?.to_vec1::<f32>()?;
                let e = max_rel(&got.flatten_all()?.to_vec1::<f32>()?, &want);
                assert!(e < 1e-5, "{groups} groups, silu {silu}: {e}");
            }
        }
        // and the composed form is torch's GroupNorm: per-group zero mean, unit variance
        let one = Tensor::ones(c, DType::F32, &dev)?;
        let zero = Tensor::zeros(c, DType::F32, &dev)?;
        let y = group_norm(&x, 3, &one, &zero, 0.0, false)?.reshape((b, 3, 4 * h * w))?;
        let mean = y
            .mean_keepdim(2)?
            .abs()?
            .max_keepdim(2)?
            .flatten_all()?
            .max(0)?;
        let var = y.sqr()?.mean_keepdim(2)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(mean.to_scalar::<f32>()? < 1e-5);
        assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-4), "{var:?}");
        let Err(e) = group_norm(&x, 5, &weight, &bias, 1e-6, true) else {
            panic!("5 groups of 12 channels were accepted");
        };
        assert!(e.to_string().contains("group norm operands"), "{e}");
        Ok(())
    }
}
