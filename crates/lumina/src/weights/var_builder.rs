//! A candle `VarBuilder` over [`Weights`], so modules from candle-transformers (the VAE) load
//! through the same store: same shape checks and error messages, same key audit, same dtype
//! rule.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{Init, Weights};

struct Backend(Weights);

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self
            .0
            .get(name, s.dims(), Init::Zeros)
            .map_err(candle_core::Error::wrap)?;
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let t = self.0.get_any(name).map_err(candle_core::Error::wrap)?;
        t.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

impl Weights {
    /// A candle `VarBuilder` rooted at this prefix that reads through this store.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(Backend(self.clone())),
            self.dtype(),
            self.device().clone(),
        )
    }
}
