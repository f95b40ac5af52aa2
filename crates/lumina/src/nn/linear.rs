//! The linear layer. Weight stored `(out, in)` like every PyTorch checkpoint.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::kernels::bf16_gemm;
use crate::weights::{Init, Weights};

#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` (out, in) and, when `bias`, `bias` (out,) under `w`.
    pub fn load(
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        init: Init,
    ) -> Result<Self> {
        let weight = w.get("weight", &[out_dim, in_dim], init)?;
        let bias = if bias {
            Some(w.get("bias", &[out_dim], Init::Zeros)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `(.., in)` -> `(.., out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some((&in_dim, lead)) = x.dims().split_last() else {
            return Err(Error::input("linear input", "rank >= 1", "a scalar"));
        };
        let rows: usize = lead.iter().product();
        // Parameters may be stored narrower than the activations (a bf16 checkpoint computed
        // in f32): widen one matrix at a time instead of holding a wide copy of the model.
        let w = self.weight.to_dtype(x.dtype())?;
        let x = x.reshape((rows, in_dim))?; // (M, in)
        let y = if use_bf16_kernel(&x, &w) {
            crate::kernels::bf16_gemm::bf16_linear(&x, &w)?
        } else {
            x.matmul(&w.t()?)?
        }; // (M, out)
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(self.out_dim());
        Ok(y.reshape(out_dims)?)
    }
}

/// bf16 inference on a CPU with AVX-512 BF16 runs the `vdpbf16ps` kernel; training (inputs
/// that track gradients), other dtypes and other CPUs take candle's matmul.
fn use_bf16_kernel(x: &Tensor, w: &Tensor) -> bool {
    x.dtype() == DType::BF16
        && w.dtype() == DType::BF16
        && x.device().is_cpu()
        && !(x.track_op() || w.track_op())
        && bf16_gemm::available()
}
