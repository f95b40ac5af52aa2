//! Next-DiT over clips (issue 21, item 2): an image is a one-frame video — an image model run
//! on a (B, C, 1, H, W) clip gives its image output bit for bit — and a video model's frames
//! attend to each other, with a temporal patch gathering frames into tokens.

use candle_core::{DType, Device, Tensor};
use lumina::models::DitInput;
use lumina::{NextDit, NextDitConfig, Weights};

type Result<T> = anyhow::Result<T>;

fn inputs(dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let t = Tensor::new(&[0.3f32, 0.8], dev)?;
    let cap = Tensor::randn(0f32, 1.0, (2, 5, 32), dev)?;
    let mask = Tensor::new(&[[1u8, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dev)?;
    Ok((t, cap, mask))
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn an_image_model_takes_a_one_frame_clip_bit_for_bit() -> Result<()> {
    let dev = Device::Cpu;
    let (t, cap, mask) = inputs(&dev)?;
    for coordinate_embedding in [false, true] {
        let cfg = NextDitConfig {
            coordinate_embedding,
            ..NextDitConfig::tiny()
        };
        let model = NextDit::load(&cfg, &Weights::random(5, DType::F32, &dev))?;
        let image = Tensor::randn(0f32, 1.0, (2, 4, 8, 12), &dev)?;
        let want = model.forward(&DitInput::new(&image, &t, &cap, &mask))?;
        let clip = image.unsqueeze(2)?; // (B, C, 1, H, W)
        let got = model.forward(&DitInput::new(&clip, &t, &cap, &mask))?;
        assert_eq!(got.dims(), &[2, 8, 1, 8, 12]);
        assert_eq!(
            max_abs(&got.squeeze(2)?, &want)?,
            0.0,
            "coordinate embedding {coordinate_embedding}"
        );
    }
    Ok(())
}

#[test]
fn a_video_model_attends_across_frames_and_patches_time() -> Result<()> {
    let dev = Device::Cpu;
    let (t, cap, mask) = inputs(&dev)?;
    // head dim 16: 4 dimensions turn with the frame, 12 with rows and columns
    for frame_patch_size in [1, 2] {
        let cfg = NextDitConfig {
            frame_dim: 4,
            frame_patch_size,
            ..NextDitConfig::tiny()
        };
        let model = NextDit::load(&cfg, &Weights::random(6, DType::F32, &dev))?;
        let clip = Tensor::randn(0f32, 1.0, (2, 4, 4, 8, 8), &dev)?;
        let v = model.forward(&DitInput::new(&clip, &t, &cap, &mask))?;
        assert_eq!(v.dims(), &[2, 8, 4, 8, 8]);
        // change the last frame only: the first frame's output moves too (attention over time)
        let last = Tensor::zeros((2, 4, 1, 8, 8), DType::F32, &dev)?;
        let edited = Tensor::cat(&[clip.narrow(2, 0, 3)?, last], 2)?;
        let w = model.forward(&DitInput::new(&edited, &t, &cap, &mask))?;
        let first = max_abs(&v.narrow(2, 0, 1)?, &w.narrow(2, 0, 1)?)?;
        assert!(
            first > 1e-6,
            "pf {frame_patch_size}: frame 0 ignores frame 3"
        );
    }
    // a clip whose length the temporal patch does not divide, and a bad frame_dim
    let cfg = NextDitConfig {
        frame_dim: 4,
        frame_patch_size: 2,
        ..NextDitConfig::tiny()
    };
    let model = NextDit::load(&cfg, &Weights::random(6, DType::F32, &dev))?;
    let odd = Tensor::randn(0f32, 1.0, (2, 4, 3, 8, 8), &dev)?;
    let e = model
        .forward(&DitInput::new(&odd, &t, &cap, &mask))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("frames") && e.contains('3'), "{e}");
    let bad = NextDitConfig {
        frame_dim: 6,
        ..NextDitConfig::tiny()
    };
    let e = NextDit::load(&bad, &Weights::random(6, DType::F32, &dev))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("frame_dim"), "{e}");
    Ok(())
}
