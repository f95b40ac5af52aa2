//! Patchify and unpatchify. The order of a patch vector's entries differs between models
//! and between the two directions (reference §1, peers.md pitfall 4).

use candle_core::Tensor;

use crate::error::Result;

/// The order of the `C·p·p` entries of one patch vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchOrder {
    /// (c, py, px), channel slowest: Lumina-Next's input (`LuminaPatchEmbed`).
    ChannelFirst,
    /// (py, px, c), channel fastest: Lumina-Next's output, Lumina-Image-2.0 both ways.
    ChannelLast,
}

/// (B, C, H, W) → (B, N, C·p·p), tokens row-major over (H/p, W/p).
pub fn patchify(x: &Tensor, p: usize, order: PatchOrder) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (hp, wp) = (h / p, w / p);
    let x = x.reshape((b, c, hp, p, wp, p))?; // (B, C, H/p, py, W/p, px)
    let x = match order {
        PatchOrder::ChannelFirst => x.permute((0, 2, 4, 1, 3, 5))?, // (B, H/p, W/p, C, py, px)
        PatchOrder::ChannelLast => x.permute((0, 2, 4, 3, 5, 1))?,  // (B, H/p, W/p, py, px, C)
    };
    Ok(x.contiguous()?.reshape((b, hp * wp, c * p * p))?) // (B, N, C·p·p)
}

/// (B, N, p·p·C) in (py, px, c) order → (B, C, H, W).
pub fn unpatchify(x: &Tensor, h: usize, w: usize, p: usize) -> Result<Tensor> {
    let (b, _, d) = x.dims3()?;
    let c = d / (p * p);
    let x = x.reshape((b, h / p, w / p, p, p, c))?; // (B, H/p, W/p, py, px, C)
    let x = x.permute((0, 5, 1, 3, 2, 4))?; // (B, C, H/p, py, W/p, px)
    Ok(x.contiguous()?.reshape((b, c, h, w))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn channel_last_round_trips_and_orders_channel_fastest() -> Result<()> {
        let x = Tensor::arange(0f32, 2. * 3. * 4. * 6., &Device::Cpu)?.reshape((2, 3, 4, 6))?;
        let t = patchify(&x, 2, PatchOrder::ChannelLast)?;
        assert_eq!(t.dims(), &[2, 6, 12]);
        // token 0 of sample 0: (py, px, c) -> x[0, c, py, px]
        let v = t.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        assert_eq!(&v[0][0][..4], &[0.0, 24.0, 48.0, 1.0]);
        let back = unpatchify(&t, 4, 6, 2)?;
        let diff = (back - &x)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn channel_first_orders_channel_slowest() -> Result<()> {
        let x = Tensor::arange(0f32, 3. * 2. * 2., &Device::Cpu)?.reshape((1, 3, 2, 2))?;
        let t = patchify(&x, 2, PatchOrder::ChannelFirst)?.to_vec3::<f32>()?;
        let want: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(t[0][0], want);
        Ok(())
    }
}
