//! Writing images: 8-bit RGB PNG with the generation parameters in a `parameters` tEXt chunk,
//! the key other image tools (A1111, ComfyUI, Civitai, stable-diffusion.cpp) read.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// The tEXt keyword of the generation parameters.
pub const PARAMETERS_KEY: &str = "parameters";

/// `image` (H, W, 3) in [0, 1] → 8-bit RGB, rounded like diffusers' `numpy_to_pil`.
pub fn to_rgb8(image: &Tensor) -> Result<(u32, u32, Vec<u8>)> {
    let (h, w, c) = image.dims3()?;
    if c != 3 {
        return Err(Error::request("image channels", "3 (RGB)", c));
    }
    let pixels = (image.to_dtype(DType::F32)?.clamp(0f32, 1f32)? * 255.0)?
        .round()?
        .to_dtype(DType::U8)?;
    let data = pixels.flatten_all()?.to_vec1::<u8>()?;
    Ok((w as u32, h as u32, data))
}

/// Writes `image` (H, W, 3) in [0, 1] to `path`, with `parameters` as a tEXt chunk.
pub fn save_png(path: &Path, image: &Tensor, parameters: &str) -> Result<()> {
    let fail = |reason: String| Error::Output {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = encode_png(image, parameters)?;
    std::fs::write(path, bytes).map_err(|e| fail(e.to_string()))
}

/// `image` (H, W, 3) in [0, 1] as the bytes of an 8-bit RGB PNG with `parameters` as a tEXt
/// chunk (what `save_png` writes; the server sends it as base64).
pub fn encode_png(image: &Tensor, parameters: &str) -> Result<Vec<u8>> {
    let fail = |reason: String| Error::Output {
        path: PathBuf::from("<PNG in memory>"),
        reason,
    };
    let (w, h, data) = to_rgb8(image)?;
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(BufWriter::new(&mut bytes), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .add_text_chunk(PARAMETERS_KEY.to_string(), latin1(parameters))
        .map_err(|e| fail(e.to_string()))?;
    let mut writer = encoder.write_header().map_err(|e| fail(e.to_string()))?;
    writer
        .write_image_data(&data)
        .map_err(|e| fail(e.to_string()))?;
    writer.finish().map_err(|e| fail(e.to_string()))?;
    Ok(bytes)
}

/// tEXt is Latin-1: characters outside it become '?' (an iTXt chunk would keep them, but
/// readers look for tEXt `parameters`).
fn latin1(s: &str) -> String {
    s.chars()
        .map(|c| if (c as u32) < 256 { c } else { '?' })
        .collect()
}

/// `out.png` for one image; `out-0.png` … `out-{n-1}.png` for several.
pub fn numbered(path: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    path.with_file_name(name)
}

/// The `parameters` text of a PNG, if any.
pub fn read_parameters(path: &Path) -> Result<Option<String>> {
    let fail = |reason: String| Error::Output {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| fail(e.to_string()))?;
    Ok(reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == PARAMETERS_KEY)
        .map(|t| t.text.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn png_round_trips_pixels_and_parameters() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::request("tempdir", "ok", e))?;
        let path = dir.path().join("x.png");
        let image = Tensor::new(&[[[0f32, 0.5, 1.0], [0.25, 0.75, 0.1]]], &Device::Cpu)?; // (1, 2, 3)
        save_png(&path, &image, "a red circle\nSteps: 3, Seed: 7")?;
        assert_eq!(
            read_parameters(&path)?.as_deref(),
            Some("a red circle\nSteps: 3, Seed: 7")
        );
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&path).map_err(|e| Error::request("open", "ok", e))?,
        ));
        let mut reader = decoder
            .read_info()
            .map_err(|e| Error::request("png", "ok", e))?;
        let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
        reader
            .next_frame(&mut buf)
            .map_err(|e| Error::request("png", "ok", e))?;
        assert_eq!(&buf[..6], &[0, 128, 255, 64, 191, 26]);
        Ok(())
    }

    #[test]
    fn several_images_get_numbered_names() {
        assert_eq!(
            numbered(Path::new("out.png"), 0, 1),
            PathBuf::from("out.png")
        );
        assert_eq!(
            numbered(Path::new("dir/out.png"), 2, 3),
            PathBuf::from("dir/out-2.png")
        );
    }
}
