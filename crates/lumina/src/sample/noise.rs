//! The starting noise x0 ~ N(0, I), from an explicitly passed, seeded RNG.

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::error::Result;

/// Standard normal noise of `shape`, drawn in f32 from `rng` then cast to `dtype`. The same
/// RNG state gives the same tensor on every platform.
pub fn gaussian(
    shape: &[usize],
    dtype: DType,
    device: &Device,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
}
