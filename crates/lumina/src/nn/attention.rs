//! Scaled dot-product attention with grouped key/value heads and a key-padding mask.

use candle_core::{DType, Tensor};

use super::ops;
use crate::error::{Error, Result};

/// Added to the scores of masked keys. Finite, so a row with every key masked yields a
/// uniform average instead of NaN (such rows are padding whose output nobody reads).
const MASKED: f64 = -1e30;

/// Additive key bias (B, 1, 1, M) in f32 from a mask (B, M) of any dtype, non-zero = attend.
pub fn key_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, m) = mask.dims2()?;
    let keep = mask.ne(0u8)?.to_dtype(DType::F32)?; // 1 = attend, 0 = masked
    Ok(((keep - 1.0)? * -MASKED)?.reshape((b, 1, 1, m))?)
}

/// `softmax(q kᵀ · scale + bias) v` for `q` (B, H, N, Dh) and `k`, `v` (B, Hkv, M, Dh).
///
/// Query head `h` reads key/value head `h / (H/Hkv)`: each kv head serves consecutive query
/// heads, like diffusers' `unsqueeze(3).repeat(…).flatten(2, 3)`. The grouping is done by
/// folding the query heads of a group into the sequence axis, so K and V are never copied.
/// Scores and softmax are computed in f32. Returns (B, H, N, Dh).
///
/// On the CPU, when no input needs a gradient, this runs [`crate::kernels::flash_attention`];
/// otherwise the composed, differentiable form below.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, n, dh) = q.dims4()?;
    let (_, h_kv, _, _) = k.dims4()?;
    if h_kv == 0 || h % h_kv != 0 {
        return Err(Error::input(
            "attention heads",
            format!("query heads a multiple of kv heads ({h_kv})"),
            h.to_string(),
        ));
    }
    if q.device().is_cpu() && !(q.track_op() || k.track_op() || v.track_op()) {
        // inference: tiled online softmax, no (N, M) score matrix
        let bias = bias.map(|t| t.flatten_all()).transpose()?;
        return crate::kernels::flash_attention(q, k, v, bias.as_ref(), scale);
    }
    let rep = h / h_kv;
    let dtype = q.dtype();
    // the scale goes on the queries: N·Dh multiplications instead of N·M
    let q = (q * scale)?.contiguous()?.reshape((b, h_kv, rep * n, dh))?; // (B, Hkv, rep·N, Dh)
    let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?; // (B, Hkv, rep·N, M)
    let scores = match bias {
        Some(bias) => scores.broadcast_add(bias)?,
        None => scores,
    };
    let probs = ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    let out = probs.matmul(&v.contiguous()?)?; // (B, Hkv, rep·N, Dh)
    Ok(out.reshape((b, h, n, dh))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// Reference: repeat every kv head for its query heads, then plain attention per head.
    #[test]
    fn grouped_heads_match_repeated_kv() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, h_kv, n, m, dh) = (2, 6, 2, 5, 7, 4);
        let q = Tensor::randn(0f32, 1.0, (b, h, n, dh), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, h_kv, m, dh), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, h_kv, m, dh), &dev)?;
        let mask = Tensor::new(&[[1u8, 1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], &dev)?;
        let got = attention(&q, &k, &v, Some(&key_bias(&mask)?), 0.5)?;
        // a variable query takes the composed, differentiable path instead of the fused one
        let q_var = candle_core::Var::from_tensor(&q)?;
        let composed = attention(q_var.as_tensor(), &k, &v, Some(&key_bias(&mask)?), 0.5)?;
        let rep = h / h_kv;
        let k_rep = k
            .unsqueeze(2)?
            .repeat((1, 1, rep, 1, 1))?
            .reshape((b, h, m, dh))?;
        let v_rep = v
            .unsqueeze(2)?
            .repeat((1, 1, rep, 1, 1))?
            .reshape((b, h, m, dh))?;
        let bias = key_bias(&mask)?;
        let p = candle_nn::ops::softmax(
            &(q.matmul(&k_rep.t()?)? * 0.5)?.broadcast_add(&bias)?,
            D::Minus1,
        )?;
        let want = p.matmul(&v_rep)?;
        for (path, got) in [("fused", got), ("composed", composed)] {
            let diff = (got - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{path}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn masked_keys_do_not_contribute() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 1, 3, 4), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 1, 2, 4), &dev)?;
        let v = Tensor::new(&[[[[1f32, 1., 1., 1.], [100., 100., 100., 100.]]]], &dev)?;
        let mask = Tensor::new(&[[1i64, 0]], &dev)?;
        let out = attention(&q, &k, &v, Some(&key_bias(&mask)?), 1.0)?;
        let max = out.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!((max - 1.0).abs() < 1e-6);
        Ok(())
    }
}
