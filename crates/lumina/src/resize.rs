//! Bicubic resizing of image-like tensors (B, C, H, W), as PyTorch's
//! `F.interpolate(mode="bicubic", align_corners=False)` computes it: Keys' cubic convolution
//! with a = −0.75, source coordinate (i + ½)·in/out − ½, border indices clamped. I-Max
//! upsamples the native-resolution image this way before re-encoding it as the guide
//! (`ternary_imax.md` §C.2).
//!
//! Each axis is one matrix product with a (out × in) weight matrix, so it runs on any device.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// PyTorch's `upsample_bicubic2d` coefficient.
const A: f64 = -0.75;

fn near(x: f64) -> f64 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn far(x: f64) -> f64 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// The (out × in) matrix that resizes one axis.
pub fn bicubic_matrix(input: usize, output: usize) -> Vec<f64> {
    let scale = input as f64 / output as f64;
    let mut m = vec![0.0; output * input];
    for i in 0..output {
        let src = (i as f64 + 0.5) * scale - 0.5;
        let x0 = src.floor();
        let t = src - x0;
        let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, w) in weights.into_iter().enumerate() {
            let j = (x0 as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            m[i * input + j] += w;
        }
    }
    m
}

/// `x` (B, C, H, W) resized to (B, C, height, width), in `x`'s dtype (computed in f32).
pub fn bicubic(x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().map_err(|_| {
        Error::input(
            "image to resize",
            "shape (B, C, H, W)",
            format!("{:?}", x.dims()),
        )
    })?;
    if height == 0 || width == 0 || h == 0 || w == 0 {
        return Err(Error::input(
            "resize",
            "non-zero sizes",
            format!("{h}x{w} → {height}x{width}"),
        ));
    }
    let matrix = |input: usize, output: usize| -> Result<Tensor> {
        let m: Vec<f32> = bicubic_matrix(input, output)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        // transposed: (input, output), so that rows · matrix resizes the last axis
        Ok(Tensor::from_vec(m, (output, input), x.device())?.t()?)
    };
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let x = x.broadcast_matmul(&matrix(w, width)?)?; // (B, C, H, width)
    let x = x
        .transpose(2, 3)?
        .contiguous()?
        .broadcast_matmul(&matrix(h, height)?)?; // (B, C, width, height)
    Ok(x.transpose(2, 3)?.contiguous()?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_of_the_matrix_sum_to_one_and_same_size_is_identity() -> Result<()> {
        for (i, o) in [(4, 8), (8, 3), (5, 5), (32, 96)] {
            let m = bicubic_matrix(i, o);
            for row in m.chunks(i) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape((1, 2, 3, 4))?;
        let same = bicubic(&x, 3, 4)?;
        assert!(crate::fixtures::max_abs_diff(&same, &x)? < 1e-6);
        Ok(())
    }

    /// `F.interpolate(torch.arange(4.).view(1,1,1,4), size=(1,8), mode="bicubic")`, worked by
    /// hand: output 0 sits at source −0.25 (x0 = −1, t = 0.75), its taps (−2, −1, 0, 1) clamp
    /// to (0, 0, 0, 1), so it is the last tap's weight far(2 − t) = far(1.25) = −0.10546875;
    /// output 3 (source 1.25, no clamping) is 0·w0 + 1·w1 + 2·w2 + 3·w3 = 1.296875.
    #[test]
    fn doubling_a_ramp_gives_the_worked_values() -> Result<()> {
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu)?.reshape((1, 1, 1, 4))?;
        let got = bicubic(&x, 1, 8)?.flatten_all()?.to_vec1::<f32>()?;
        assert!((got[0] + 0.10546875).abs() < 1e-7, "{got:?}");
        assert!((got[3] - 1.296875).abs() < 1e-6, "{got:?}");
        // the ramp is odd about its middle, and so is its resize
        for i in 0..4 {
            assert!((got[i] + got[7 - i] - 3.0).abs() < 1e-5, "{got:?}");
        }
        Ok(())
    }

    #[test]
    fn a_constant_image_stays_constant_at_any_size() -> Result<()> {
        let x = Tensor::full(0.3f32, (2, 3, 5, 7), &Device::Cpu)?;
        let y = bicubic(&x, 16, 9)?;
        assert_eq!(y.dims(), &[2, 3, 16, 9]);
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        assert!(v.iter().all(|a| (a - 0.3).abs() < 1e-6));
        assert!(bicubic(&x, 0, 4).is_err());
        Ok(())
    }
}
