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

/// (B, C, H, W) → (B, N, C·p·p), tokens row-major over (H/p, W/p): a one-frame
/// [`patchify_video`].
pub fn patchify(x: &Tensor, p: usize, order: PatchOrder) -> Result<Tensor> {
    patchify_video(&x.unsqueeze(2)?, 1, p, order)
}

/// (B, N, p·p·C) in (py, px, c) order → (B, C, H, W): a one-frame [`unpatchify_video`].
pub fn unpatchify(x: &Tensor, h: usize, w: usize, p: usize) -> Result<Tensor> {
    Ok(unpatchify_video(x, (1, h, w), 1, p)?.squeeze(2)?)
}

/// (B, C, F, H, W) → (B, N, C·pf·p·p) with temporal patch `pf` and spatial patch `p`, tokens
/// frame-major then row-major over (F/pf, H/p, W/p); a patch vector is (c, pf, py, px) or
/// (pf, py, px, c) as `order` says.
pub fn patchify_video(x: &Tensor, pf: usize, p: usize, order: PatchOrder) -> Result<Tensor> {
    let (b, c, f, h, w) = x.dims5()?;
    let (fp, hp, wp) = (f / pf, h / p, w / p);
    let x = x.reshape(&[b, c, fp, pf, hp, p, wp, p][..])?; // (B, C, F/pf, pf, H/p, py, W/p, px)
    let x = match order {
        // (B, F/pf, H/p, W/p, C, pf, py, px)
        PatchOrder::ChannelFirst => x.permute(&[0, 2, 4, 6, 1, 3, 5, 7][..])?,
        // (B, F/pf, H/p, W/p, pf, py, px, C)
        PatchOrder::ChannelLast => x.permute(&[0, 2, 4, 6, 3, 5, 7, 1][..])?,
    };
    Ok(x.contiguous()?.reshape((b, fp * hp * wp, c * pf * p * p))?) // (B, N, C·pf·p·p)
}

/// (B, N, pf·p·p·C) in (pf, py, px, c) order → (B, C, F, H, W) for a clip of `(F, H, W)`.
pub fn unpatchify_video(
    x: &Tensor,
    (f, h, w): (usize, usize, usize),
    pf: usize,
    p: usize,
) -> Result<Tensor> {
    let (b, _, d) = x.dims3()?;
    let c = d / (pf * p * p);
    let x = x.reshape(&[b, f / pf, h / p, w / p, pf, p, p, c][..])?; // (B, F/pf, H/p, W/p, pf, py, px, C)
    let x = x.permute(&[0, 7, 1, 4, 2, 5, 3, 6][..])?; // (B, C, F/pf, pf, H/p, py, W/p, px)
    Ok(x.contiguous()?.reshape((b, c, f, h, w))?)
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

    /// A clip's tokens are frame-major; a temporal patch gathers frames; both orders round
    /// trip through the output order's inverse.
    #[test]
    fn video_patches_are_frame_major_and_round_trip() -> Result<()> {
        let (b, c, f, h, w) = (2, 3, 4, 4, 6);
        let n = (b * c * f * h * w) as f64;
        let x = Tensor::arange(0f32, n as f32, &Device::Cpu)?.reshape((b, c, f, h, w))?;
        let t = patchify_video(&x, 2, 2, PatchOrder::ChannelLast)?;
        assert_eq!(t.dims(), &[2, 12, 24]);
        let v = t.to_vec3::<f32>()?;
        // token 6 of sample 0 = (frame patch 1, row 0, col 0); entry (pf, py, px, c) = (1, 0, 1, 2)
        // → x[0, 2, 2·1 + 1, 0, 1]
        let at = |c: usize, f: usize, y: usize, xx: usize| (((c * 4 + f) * 4 + y) * 6 + xx) as f32;
        // ((pf·2 + py)·2 + px)·3 + c = ((2 + 0)·2 + 1)·3 + 2
        assert_eq!(v[0][6][17], at(2, 3, 0, 1));
        let back = unpatchify_video(&t, (f, h, w), 2, 2)?;
        assert_eq!((back - &x)?.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        let first = patchify_video(&x, 1, 2, PatchOrder::ChannelFirst)?.to_vec3::<f32>()?;
        // ChannelFirst, pf = 1: token (f=1, r=0, c=0) is index 6; entry (c, py, px) = (1, 1, 0)
        // (c·2 + py)·2 + px = (2 + 1)·2 + 0
        assert_eq!(first[0][6][6], at(1, 1, 1, 0));
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
