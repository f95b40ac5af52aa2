//! The time convention of this project, written down once.
//!
//! **t = 0 is pure noise, t = 1 is data.** The linear path between a noise sample x0 and a
//! data sample x1 is `x_t = t·x1 + (1−t)·x0`; along it the velocity is `v = x1 − x0`, which is
//! what every model here predicts. Sampling integrates `dx/dt = v(x, t)` from 0 to 1.
//!
//! This is Lumina's own convention (Lumina-T2X `transport/path.py` `ICPlan`). diffusers'
//! flow-matching schedulers count σ = 1 − t (1 = noise), timesteps as 1000·σ, and step with the
//! negated velocity; convert with [`t_from_sigma`] / [`sigma_from_t`] and nowhere else.

use candle_core::Tensor;

use crate::error::Result;

/// diffusers/SD3/Flux σ (1 = noise, 0 = data) → t.
pub fn t_from_sigma(sigma: f64) -> f64 {
    1.0 - sigma
}

/// t → σ (1 = noise, 0 = data).
pub fn sigma_from_t(t: f64) -> f64 {
    1.0 - t
}

/// `t` (B,) as a tensor broadcastable against `like` (B, …): (B, 1, …, 1).
fn per_sample(t: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; like.rank()];
    shape[0] = t.elem_count();
    Ok(t.to_dtype(like.dtype())?.reshape(shape)?)
}

/// `x_t = t·x1 + (1−t)·x0` with one t per sample, `t` (B,) and `x0`, `x1` (B, …).
pub fn interpolate(x0: &Tensor, x1: &Tensor, t: &Tensor) -> Result<Tensor> {
    let t = per_sample(t, x1)?;
    Ok((x1.broadcast_mul(&t)? + x0.broadcast_mul(&t.affine(-1.0, 1.0)?)?)?)
}

/// The velocity of the linear path, `x1 − x0`: the training target.
pub fn velocity_target(x0: &Tensor, x1: &Tensor) -> Result<Tensor> {
    Ok((x1 - x0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn path_ends_are_noise_and_data() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (2, 3), &dev)?;
        let x1 = Tensor::randn(0f32, 1.0, (2, 3), &dev)?;
        let t = Tensor::new(&[0f32, 1.0], &dev)?;
        let xt = interpolate(&x0, &x1, &t)?.to_vec2::<f32>()?;
        assert_eq!(xt[0], x0.to_vec2::<f32>()?[0]);
        assert_eq!(xt[1], x1.to_vec2::<f32>()?[1]);
        assert_eq!(t_from_sigma(sigma_from_t(0.25)), 0.25);
        Ok(())
    }
}
