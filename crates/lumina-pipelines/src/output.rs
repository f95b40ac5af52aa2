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
    encode_frames(&image.unsqueeze(0)?, 0, parameters)
}

/// A clip (F, H, W, 3) in [0, 1] as an animated PNG (APNG: lossless, every frame the whole
/// canvas, looping), each frame shown `frame_ms` milliseconds, with `parameters` as a tEXt
/// chunk. Viewers without APNG show the first frame.
pub fn encode_apng(frames: &Tensor, frame_ms: u16, parameters: &str) -> Result<Vec<u8>> {
    if frames.dims().len() != 4 || frames.dim(0)? == 0 {
        return Err(Error::request(
            "clip",
            "(frames, height, width, 3) with at least one frame",
            format!("{:?}", frames.dims()),
        ));
    }
    encode_frames(frames, frame_ms, parameters)
}

/// How long each frame of a clip shows: 8 frames a second, so the default 8-frame clip lasts a
/// second.
pub const FRAME_MS: u16 = 125;

/// Writes a clip (F, H, W, 3) in [0, 1]: an animated GIF when `path` ends in `.gif`
/// (case-insensitive), else an APNG; both loop and carry `parameters`.
pub fn save_clip(path: &Path, frames: &Tensor, parameters: &str) -> Result<()> {
    let gif = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gif"));
    let bytes = match gif {
        true => encode_gif(frames, FRAME_MS, parameters)?,
        false => encode_apng(frames, FRAME_MS, parameters)?,
    };
    std::fs::write(path, bytes).map_err(|e| Error::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A clip (F, H, W, 3) in [0, 1] as a looping animated GIF, `parameters` in a comment
/// extension. GIF keeps 256 colours a frame (each frame gets its own palette): lossy where
/// APNG is not.
pub fn encode_gif(frames: &Tensor, frame_ms: u16, parameters: &str) -> Result<Vec<u8>> {
    let fail = |reason: String| Error::Output {
        path: PathBuf::from("<GIF in memory>"),
        reason,
    };
    if frames.dims().len() != 4 || frames.dim(0)? == 0 {
        return Err(Error::request(
            "clip",
            "(frames, height, width, 3) with at least one frame",
            format!("{:?}", frames.dims()),
        ));
    }
    let rgb = (0..frames.dim(0)?)
        .map(|k| to_rgb8(&frames.get(k)?))
        .collect::<Result<Vec<_>>>()?;
    let (w, h) = (rgb[0].0, rgb[0].1);
    let (w16, h16) = match (u16::try_from(w), u16::try_from(h)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => {
            return Err(Error::request(
                "GIF size",
                "at most 65535 pixels a side",
                format!("{w}x{h}"),
            ))
        }
    };
    let mut bytes = Vec::new();
    {
        let mut encoder =
            gif::Encoder::new(&mut bytes, w16, h16, &[]).map_err(|e| fail(e.to_string()))?;
        encoder
            .set_repeat(gif::Repeat::Infinite)
            .map_err(|e| fail(e.to_string()))?;
        // the Comment Extension (0xFE) is GIF's place for free text
        encoder
            .write_raw_extension(
                gif::Extension::Comment.into(),
                &[latin1(parameters).as_bytes()],
            )
            .map_err(|e| fail(e.to_string()))?;
        for (_, _, data) in &rgb {
            // speed 10: NeuQuant's balance of palette quality and time (the crate's advice)
            let mut frame = gif::Frame::from_rgb_speed(w16, h16, data, 10);
            frame.delay = frame_ms / 10; // GIF counts hundredths of a second
            encoder
                .write_frame(&frame)
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(bytes)
}

/// One writer for stills and clips: one frame is a plain PNG, several an APNG.
fn encode_frames(frames: &Tensor, frame_ms: u16, parameters: &str) -> Result<Vec<u8>> {
    let fail = |reason: String| Error::Output {
        path: PathBuf::from("<PNG in memory>"),
        reason,
    };
    let count = frames.dim(0)?;
    let rgb = (0..count)
        .map(|k| to_rgb8(&frames.get(k)?))
        .collect::<Result<Vec<_>>>()?;
    let (w, h) = (rgb[0].0, rgb[0].1);
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(BufWriter::new(&mut bytes), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .add_text_chunk(PARAMETERS_KEY.to_string(), latin1(parameters))
        .map_err(|e| fail(e.to_string()))?;
    if count > 1 {
        // 0 plays: loop for ever; the first frame is also the still image
        encoder
            .set_animated(count as u32, 0)
            .and_then(|()| encoder.set_frame_delay(frame_ms, 1000))
            .map_err(|e| fail(e.to_string()))?;
    }
    let mut writer = encoder.write_header().map_err(|e| fail(e.to_string()))?;
    for (_, _, data) in &rgb {
        writer
            .write_image_data(data)
            .map_err(|e| fail(e.to_string()))?;
    }
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

/// Checks where `count` outputs named after `path` (see [`numbered`]) will go, before any
/// step runs, so a finished image is never lost to the name: a `.png` file (a clip model's
/// also `.apng` or `.gif`: [`save_clip`]), not a folder, in a folder that exists. PNG is what
/// carries the `parameters` chunk, so another extension is refused rather than written as a
/// PNG under a name that says otherwise.
pub fn check_target(path: &Path, count: usize, clip: bool) -> Result<()> {
    let fail = |path: &Path, reason: String| Error::Output {
        path: path.to_path_buf(),
        reason,
    };
    let allowed: &[&str] = match clip {
        true => &["png", "apng", "gif"],
        false => &["png"],
    };
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    if !ext.as_deref().is_some_and(|e| allowed.contains(&e)) {
        let what = match clip {
            true => "a clip model writes an animated PNG (.png, .apng) or GIF (.gif)",
            false => "images are written as PNG with their generation parameters",
        };
        return Err(fail(
            path,
            format!(
                "expected a file name ending in .{} ({what})",
                allowed.join(", .")
            ),
        ));
    }
    for i in 0..count {
        let file = numbered(path, i, count);
        if file.is_dir() {
            return Err(fail(&file, "it is a folder; name a file in it".into()));
        }
        let folder = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !folder.is_dir() {
            return Err(fail(
                &file,
                format!("the folder {} does not exist", folder.display()),
            ));
        }
    }
    Ok(())
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
    fn an_output_is_a_png_in_a_folder_that_exists() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::request("tempdir", "ok", e))?;
        let at = |name: &str| dir.path().join(name);
        check_target(&at("out.png"), 1, false)?;
        check_target(&at("OUT.PNG"), 3, false)?;
        for name in ["clip.png", "clip.apng", "clip.GIF"] {
            check_target(&at(name), 2, true)?;
        }
        check_target(Path::new("relative.png"), 1, false)?;
        let refused = |path: &Path, count: usize, clip: bool| -> String {
            match check_target(path, count, clip) {
                Ok(()) => panic!("{} was taken", path.display()),
                Err(e) => e.to_string(),
            }
        };
        let e = refused(&at("out.jpg"), 1, false);
        assert!(
            e.contains("out.jpg") && e.contains("expected a file name ending in .png ("),
            "{e}"
        );
        let e = refused(&at("clip.gif"), 1, false);
        assert!(e.contains("ending in .png ("), "{e}");
        let e = refused(&at("clip.mp4"), 1, true);
        assert!(e.contains("ending in .png, .apng, .gif ("), "{e}");
        assert!(refused(&at("noext"), 1, false).contains("ending in .png"));
        // the folder must exist; a name that is a folder is refused, for any of the numbered
        let e = refused(&at("missing/out.png"), 1, false);
        assert!(
            e.contains("the folder") && e.contains("does not exist"),
            "{e}"
        );
        std::fs::create_dir(at("taken-1.png")).map_err(|e| Error::request("mkdir", "ok", e))?;
        check_target(&at("taken.png"), 1, false)?;
        let e = refused(&at("taken.png"), 2, false);
        assert!(
            e.contains("taken-1.png") && e.contains("it is a folder"),
            "{e}"
        );
        Ok(())
    }

    /// A clip written as APNG reads back frame by frame, with its frame count, delay and
    /// parameters, and as its first frame in a reader that ignores animation.
    #[test]
    fn apng_round_trips_every_frame() -> Result<()> {
        let frames = Tensor::arange(0f32, 4. * 2. * 3. * 3., &Device::Cpu)?
            .reshape((4, 2, 3, 3))?
            .affine(1.0 / 72.0, 0.0)?; // (F, H, W, 3) in [0, 1)
        let bytes = encode_apng(&frames, 125, "a red circle moving up\nFrames: 4")?;
        let png_err = |e: png::DecodingError| Error::request("png", "ok", e);
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .map_err(png_err)?;
        let info = reader.info();
        let absent = |chunk| Error::request("APNG chunk", "present", chunk);
        let actl = info.animation_control.ok_or_else(|| absent("acTL"))?;
        assert_eq!((actl.num_frames, actl.num_plays), (4, 0));
        let text = info
            .uncompressed_latin1_text
            .first()
            .map(|t| t.text.clone());
        assert_eq!(text.as_deref(), Some("a red circle moving up\nFrames: 4"));
        let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
        for k in 0..4 {
            reader.next_frame(&mut buf).map_err(png_err)?;
            let fctl = reader.info().frame_control.ok_or_else(|| absent("fcTL"))?;
            assert_eq!((fctl.delay_num, fctl.delay_den), (125, 1000), "frame {k}");
            let (_, _, want) = to_rgb8(&frames.get(k)?)?;
            assert_eq!(buf, want, "frame {k}");
        }
        let one = encode_apng(&frames.narrow(0, 0, 1)?, 125, "")?;
        let still = png::Decoder::new(std::io::Cursor::new(one))
            .read_info()
            .map_err(png_err)?;
        assert!(
            still.info().animation_control.is_none(),
            "one frame is a plain PNG"
        );
        assert!(encode_apng(&frames.get(0)?, 125, "").is_err());
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
