//! Reading an image a user gives (img2img, upscaling): a PNG file → (H, W, 3) in [0, 1].

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// The largest side accepted, in pixels: a guard against a header that claims a size whose
/// buffer would not fit in memory.
pub const MAX_SIDE: u32 = 16384;

/// Reads an RGB PNG (8 or 16 bits, or palette-indexed, which expands to RGB) as (H, W, 3) in
/// [0, 1]. Grey, grey + alpha and RGBA images are errors that say how many channels the file
/// has: the models draw RGB, and dropping an alpha channel would silently change the picture.
pub fn load_png(path: &Path, device: &Device) -> Result<Tensor> {
    let fail = |reason: String| Error::Input {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| fail(format!("not a readable PNG: {e}")))?;
    let (width, height) = (reader.info().width, reader.info().height);
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(fail(format!(
            "{width}x{height} pixels: each side must be in 1..={MAX_SIDE}"
        )));
    }
    let (color, _) = reader.output_color_type();
    let channels = color.samples();
    if color != png::ColorType::Rgb {
        return Err(fail(format!(
            "{channels} channel(s) ({color:?}); expected 3 (RGB) — convert it to RGB first"
        )));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| fail("image too large to decode".into()))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| fail(format!("corrupt image data: {e}")))?;
    buf.truncate(frame.buffer_size());
    let (h, w) = (height as usize, width as usize);
    if buf.len() != h * w * 3 {
        return Err(fail(format!("decoded {} bytes for {w}x{h} RGB", buf.len())));
    }
    let t = Tensor::from_vec(buf, (h, w, 3), device)?.to_dtype(candle_core::DType::F32)?;
    Ok((t / 255.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::save_png;

    fn write(path: &Path, color: png::ColorType, w: u32, h: u32, data: &[u8]) {
        let file = std::fs::File::create(path).expect("create");
        let mut e = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        e.set_color(color);
        e.set_depth(png::BitDepth::Eight);
        let mut writer = e.write_header().expect("header");
        writer.write_image_data(data).expect("data");
    }

    #[test]
    fn reads_back_what_save_png_wrote() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::request("tempdir", "ok", e))?;
        let path = dir.path().join("x.png");
        let image = Tensor::new(&[[[0f32, 0.5, 1.0], [0.25, 0.75, 0.1]]], &Device::Cpu)?; // (1, 2, 3)
        save_png(&path, &image, "")?;
        let back = load_png(&path, &Device::Cpu)?;
        assert_eq!(back.dims(), &[1, 2, 3]);
        let diff = lumina::fixtures::max_abs_diff(&back, &image)?;
        assert!(diff <= 0.5 / 255.0 + 1e-6, "{diff}");
        Ok(())
    }

    #[test]
    fn wrong_channel_counts_and_broken_files_are_named() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::request("tempdir", "ok", e))?;
        let rgba = dir.path().join("rgba.png");
        write(&rgba, png::ColorType::Rgba, 2, 1, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let e = load_png(&rgba, &Device::Cpu).expect_err("rgba").to_string();
        assert!(e.contains("rgba.png") && e.contains("4 channel"), "{e}");
        let grey = dir.path().join("grey.png");
        write(&grey, png::ColorType::Grayscale, 2, 2, &[0, 1, 2, 3]);
        let e = load_png(&grey, &Device::Cpu).expect_err("grey").to_string();
        assert!(e.contains("1 channel"), "{e}");
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"not a png").map_err(|e| Error::request("write", "ok", e))?;
        let e = load_png(&junk, &Device::Cpu).expect_err("junk").to_string();
        assert!(
            e.contains("junk.png") && e.contains("not a readable PNG"),
            "{e}"
        );
        let e = load_png(&dir.path().join("absent.png"), &Device::Cpu)
            .expect_err("absent")
            .to_string();
        assert!(e.contains("absent.png"), "{e}");
        Ok(())
    }
}
