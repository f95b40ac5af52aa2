//! The linear layer. Weight stored `(out, in)` like every PyTorch checkpoint.

use candle_core::Tensor;

use crate::error::{Error, Result};
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
        let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?; // (M, out)
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(self.out_dim());
        Ok(y.reshape(out_dims)?)
    }
}
