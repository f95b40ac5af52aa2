//! Layers shared by the Lumina transformers. Each mirrors a diffusers module and loads from the
//! same checkpoint keys.

mod attention;
pub mod context_drop;
mod embedding;
mod feed_forward;
mod fused;
mod linear;
pub mod lora;
mod modulation;
mod norm;
pub mod ops;

pub use attention::{attention, key_bias};
pub use context_drop::{ContextDrop, KvPool};
pub use embedding::{
    clip_time_features, coordinate_features, timestep_features, TimestepEmbedder, TIMESTEP_FEATURES,
};
pub use feed_forward::{swiglu_hidden, FeedForward};
pub use linear::{
    initial_alpha, initial_row_alphas, qat_weight, quantized_path, set_quantized_path, Linear,
    QuantizedPath, TernaryScale, PACKED_KEY, SCALE_KEY,
};
pub use modulation::{gated_residual, scale, Modulation, NormOut, RmsNormZero};
pub use norm::{LayerNorm, RmsNorm};

use candle_core::{DType, Tensor};

/// Whether two tensors hold exactly the same values (used to detect weights a checkpoint
/// stores twice).
pub(crate) fn same_values(a: &Tensor, b: &Tensor) -> crate::error::Result<bool> {
    if a.dims() != b.dims() {
        return Ok(false);
    }
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?;
    Ok(diff.to_dtype(DType::F32)?.to_scalar::<f32>()? == 0.0)
}
