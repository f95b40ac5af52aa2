//! Elementary ops with two implementations: candle's fused kernels for inference, and composed
//! differentiable forms whenever autograd is tracking an input.
//!
//! candle-nn's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and `rope_i` are built with
//! `apply_op*_no_bwd`: backward silently yields **no gradient** through them
//! (reference/framework_bench.md §5). Dispatching on [`Tensor::track_op`] keeps one model
//! code path that is fast at inference and correct in training.

use candle_core::{DType, Tensor, D};

use super::fused;
use crate::error::Result;

/// Use the composed form: autograd is tracking an input, or the dtype is f64, which candle's
/// fused kernels do not all cover.
fn tracks(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op() || t.dtype() == DType::F64)
}

/// Computation dtype of the numerically sensitive parts: f32 for half-precision inputs.
fn upcast(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// Softmax over the last axis.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match (tracks(&[x]), fused::applies(&[x])) {
        (false, _) => Ok(candle_nn::ops::softmax_last_dim(x)?),
        (true, true) => fused::softmax_last_dim(x),
        (true, false) => softmax_composed(x),
    }
}

/// The reference softmax, from differentiable elementary ops.
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// RMSNorm over the last axis: `x · rsqrt(mean(x²) + eps) · w`, statistics in f32
/// (diffusers `RMSNorm`).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    match (tracks(&[x, weight]), fused::applies(&[x, weight])) {
        (false, _) => Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            weight,
            eps as f32,
        )?),
        (true, true) => fused::rms_norm(x, weight, eps),
        (true, false) => rms_norm_composed(x, weight, eps),
    }
}

/// The reference RMSNorm, from differentiable elementary ops.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(upcast(dtype))?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_mul(&(ms + eps)?.sqrt()?.recip()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(weight)?)
}

/// LayerNorm over the last axis with an affine weight and bias, statistics in f32.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    match (
        tracks(&[x, weight, bias]),
        fused::applies(&[x, weight, bias]),
    ) {
        (false, _) => Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            weight,
            bias,
            eps as f32,
        )?),
        (true, true) => fused::layer_norm(x, weight, bias, eps),
        (true, false) => layer_norm_composed(x, weight, bias, eps),
    }
}

/// The reference LayerNorm, from differentiable elementary ops.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(upcast(dtype))?;
    let centered = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    Ok(normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)?)
}

/// SiLU computed in f32 and cast back (diffusers `FP32SiLU`).
pub fn silu_f32(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    Ok(x.to_dtype(upcast(dtype))?.silu()?.to_dtype(dtype)?)
}

/// The SwiGLU gate `silu(a) ⊙ b`, SiLU in f32. Same-shaped operands.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused::applies(&[a, b]) && a.dims() == b.dims() {
        fused::swiglu(a, b, !(a.track_op() || b.track_op()))
    } else {
        swiglu_composed(a, b)
    }
}

/// The reference SwiGLU gate, from differentiable elementary ops.
pub fn swiglu_composed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((silu_f32(a)? * b)?)
}

/// Rotates adjacent pairs of `x` (B, H, N, Dh) by angles whose cosine and sine are `cos`,
/// `sin`: `(N, Dh/2)` shared by the batch or `(B, N, Dh/2)` per sample. In f32, cast back.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(upcast(dtype))?;
    let (cos, sin) = (cos.to_dtype(xf.dtype())?, sin.to_dtype(xf.dtype())?);
    let out = match (tracks(&[x]), fused::applies(&[&xf])) {
        (false, _) => candle_nn::rotary_emb::rope_i(
            &xf.contiguous()?,
            &cos.contiguous()?,
            &sin.contiguous()?,
        )?,
        (true, true) => fused::rope_interleaved(&xf, &cos, &sin)?,
        (true, false) => rope_composed(&xf, &cos, &sin)?,
    };
    Ok(out.to_dtype(dtype)?)
}

/// The reference RoPE, from differentiable elementary ops.
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, n, dh) = x.dims4()?;
    // (N, Dh/2) or (B, N, Dh/2) -> (B|1, 1, N, Dh/2, 1)
    let lead = if cos.rank() == 3 { b } else { 1 };
    let cos = cos.reshape((lead, 1, n, dh / 2, 1))?;
    let sin = sin.reshape((lead, 1, n, dh / 2, 1))?;
    let pairs = x.contiguous()?.reshape((b, h, n, dh / 2, 2))?; // (B, H, N, Dh/2, 2)
    let x0 = pairs.narrow(D::Minus1, 0, 1)?;
    let x1 = pairs.narrow(D::Minus1, 1, 1)?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Ok(Tensor::cat(&[y0, y1], D::Minus1)?.reshape((b, h, n, dh))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) -> Result<()> {
        let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(d < tol, "max abs diff {d}");
        Ok(())
    }

    /// The fused and composed forms agree, and the composed one carries gradients.
    #[test]
    fn fused_and_composed_forms_agree() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev)?;
        let w = Tensor::randn(1f32, 0.1, 8, &dev)?;
        let b = Tensor::randn(0f32, 0.1, 8, &dev)?;
        let cos = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let cos_b = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev)?;
        let sin_b = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev)?;
        let xv = Var::from_tensor(&x)?;
        let xt = xv.as_tensor();
        close(&softmax_last_dim(&x)?, &softmax_last_dim(xt)?, 1e-6)?;
        close(&rms_norm(&x, &w, 1e-5)?, &rms_norm(xt, &w, 1e-5)?, 1e-5)?;
        close(
            &layer_norm(&x, &w, &b, 1e-5)?,
            &layer_norm(xt, &w, &b, 1e-5)?,
            1e-5,
        )?;
        close(
            &rope_interleaved(&x, &cos, &sin)?,
            &rope_interleaved(xt, &cos, &sin)?,
            1e-5,
        )?;
        close(
            &rope_interleaved(&x, &cos_b, &sin_b)?,
            &rope_interleaved(xt, &cos_b, &sin_b)?,
            1e-5,
        )?;
        Ok(())
    }

    /// Finite-difference gradient check of every composed op used in training.
    #[test]
    fn composed_forms_have_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f64, 1.0, (1, 2, 3, 4), &dev)?;
        let w = Tensor::randn(1f64, 0.1, 4, &dev)?;
        let b = Tensor::randn(0f64, 0.1, 4, &dev)?;
        let cos = Tensor::randn(0f64, 1.0, (3, 2), &dev)?;
        let sin = Tensor::randn(0f64, 1.0, (3, 2), &dev)?;
        let probe = Tensor::randn(0f64, 1.0, (1, 2, 3, 4), &dev)?;
        type Op<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
        let ops: Vec<(&str, Op)> = vec![
            ("softmax", Box::new(softmax_last_dim)),
            ("rms_norm", Box::new(|x| rms_norm(x, &w, 1e-5))),
            ("layer_norm", Box::new(|x| layer_norm(x, &w, &b, 1e-5))),
            ("rope", Box::new(|x| rope_interleaved(x, &cos, &sin))),
            ("silu", Box::new(silu_f32)),
            ("swiglu", Box::new(|x| swiglu(x, &(x * 0.7)?.sin()?))),
        ];
        for (name, op) in ops {
            // a Var input selects the composed form, the one being checked
            let loss = |x: &Tensor| -> Result<f64> {
                let x = Var::from_tensor(x)?;
                Ok((op(x.as_tensor())? * &probe)?
                    .sum_all()?
                    .to_scalar::<f64>()?)
            };
            let var = Var::from_tensor(&x0)?;
            let l = (op(var.as_tensor())? * &probe)?.sum_all()?;
            let grads = l.backward()?;
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .flatten_all()?
                .to_vec1::<f64>()?;
            let flat = x0.flatten_all()?.to_vec1::<f64>()?;
            let eps = 1e-6;
            for i in 0..flat.len() {
                let mut plus = flat.clone();
                plus[i] += eps;
                let mut minus = flat.clone();
                minus[i] -= eps;
                let fd = (loss(&Tensor::from_vec(plus, x0.shape(), &dev)?)?
                    - loss(&Tensor::from_vec(minus, x0.shape(), &dev)?)?)
                    / (2.0 * eps);
                assert!(
                    (fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{name}: d/dx[{i}] analytic {} vs numeric {fd}",
                    g[i]
                );
            }
        }
        Ok(())
    }

    /// The fused training kernels (f32 with autograd) give the composed reference's values and
    /// gradients, for the input and for every weight.
    #[test]
    fn fused_kernels_match_the_composed_reference_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 7, 10), &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 7, 10), &dev)?;
        let (w, b) = (
            Tensor::randn(1f32, 0.1, 10, &dev)?,
            Tensor::randn(0f32, 0.1, 10, &dev)?,
        );
        let (cos, sin) = (
            Tensor::randn(0f32, 1.0, (7, 5), &dev)?,
            Tensor::randn(0f32, 1.0, (7, 5), &dev)?,
        );
        let (cos_b, sin_b) = (
            Tensor::randn(0f32, 1.0, (2, 7, 5), &dev)?,
            Tensor::randn(0f32, 1.0, (2, 7, 5), &dev)?,
        );
        type Op<'a> = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + 'a>;
        let pairs: Vec<(&str, Op, Op)> = vec![
            (
                "softmax",
                Box::new(|x, _, _| softmax_last_dim(x)),
                Box::new(|x, _, _| softmax_composed(x)),
            ),
            (
                "rms_norm",
                Box::new(|x, w, _| rms_norm(x, w, 1e-5)),
                Box::new(|x, w, _| rms_norm_composed(x, w, 1e-5)),
            ),
            (
                "layer_norm",
                Box::new(|x, w, b| layer_norm(x, w, b, 1e-5)),
                Box::new(|x, w, b| layer_norm_composed(x, w, b, 1e-5)),
            ),
            (
                "rope",
                Box::new(|x, _, _| rope_interleaved(x, &cos, &sin)),
                Box::new(|x, _, _| rope_composed(x, &cos, &sin)),
            ),
            (
                "rope per sample",
                Box::new(|x, _, _| rope_interleaved(x, &cos_b, &sin_b)),
                Box::new(|x, _, _| rope_composed(x, &cos_b, &sin_b)),
            ),
            (
                // both operands depend on x, so both gradients are exercised
                "swiglu",
                Box::new(|x, _, _| swiglu(x, &(x * 0.7)?.sin()?)),
                Box::new(|x, _, _| swiglu_composed(x, &(x * 0.7)?.sin()?)),
            ),
        ];
        for (name, fused_op, reference) in pairs {
            let run = |op: &Op| -> Result<(Tensor, Vec<Option<Tensor>>)> {
                let vars = [
                    Var::from_tensor(&x)?,
                    Var::from_tensor(&w)?,
                    Var::from_tensor(&b)?,
                ];
                let y = op(
                    vars[0].as_tensor(),
                    vars[1].as_tensor(),
                    vars[2].as_tensor(),
                )?;
                let grads = (&y * &probe)?.sum_all()?.backward()?;
                Ok((
                    y,
                    vars.iter()
                        .map(|v| grads.get(v.as_tensor()).cloned())
                        .collect(),
                ))
            };
            let (y1, g1) = run(&fused_op)?;
            let (y2, g2) = run(&reference)?;
            close(&y1, &y2, 1e-5)
                .map_err(|e| crate::Error::input("values", name, e.to_string()))?;
            for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
                        let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                        assert!(
                            d < 1e-4 * scale,
                            "{name}: gradient of argument {i} differs by {d}"
                        );
                    }
                    (None, None) => {}
                    _ => panic!("{name}: gradient of argument {i} present in one form only"),
                }
            }
        }
        Ok(())
    }

    /// The inference SwiGLU (vectorised exp) against the composed one, over the range where
    /// SiLU bends and far into both tails.
    #[test]
    fn inference_swiglu_matches_the_composed_form() -> Result<()> {
        let dev = Device::Cpu;
        let a = (Tensor::randn(0f32, 1.0, (7, 1000), &dev)? * 12.0)?;
        let b = Tensor::randn(0f32, 1.0, (7, 1000), &dev)?;
        let got = swiglu(&a, &b)?.flatten_all()?.to_vec1::<f32>()?;
        let want = swiglu_composed(&a, &b)?.flatten_all()?.to_vec1::<f32>()?;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{g} against {w}");
        }
        Ok(())
    }
}
