//! Training data for the `shapes` task: fresh scenes every step, rendered to RGB in [−1, 1],
//! with their captions (some dropped for classifier-free guidance).

use candle_core::{DType, Device, Tensor};
use lumina::word_encoder::WordTokenizer;
use lumina_shapes::caption::{Color, Place, Relation, Shape, Size};
use lumina_shapes::scene::{sample_caption, sample_scene, CaptionMix};
use lumina_shapes::{render, Canvas, Image};
use rand::Rng;

use crate::config::DataConfig;
use crate::error::Result;

/// The longest caption, "a small yellow triangle to the right of a small yellow triangle",
/// is 12 words; with `<bos>` and room to spare.
pub const MAX_CAPTION_TOKENS: usize = 16;

/// Every word of the caption grammar.
pub fn vocabulary() -> WordTokenizer {
    let mut words: Vec<&str> = vec!["a", "an"];
    words.extend(Size::ALL.iter().map(|s| s.word()));
    words.extend(Color::ALL.iter().map(|c| c.word()));
    words.extend(Shape::ALL.iter().map(|s| s.word()));
    let phrases = Place::ALL
        .iter()
        .map(|p| p.phrase())
        .chain(Relation::ALL.iter().map(|r| r.phrase()));
    for phrase in phrases {
        for w in phrase.split(' ') {
            if !words.contains(&w) {
                words.push(w);
            }
        }
    }
    WordTokenizer::new(&words, MAX_CAPTION_TOKENS)
}

/// A batch: images (B, 3, H, W) in [−1, 1] and captions ("" when dropped).
pub struct Batch {
    pub images: Tensor,
    pub captions: Vec<String>,
}

/// Images (B, 3, H, W) in [−1, 1] from RGB bytes, all of one canvas.
pub fn to_tensor(images: &[Image], device: &Device) -> Result<Tensor> {
    let canvas = images.first().map_or(Canvas::square(0), Image::canvas);
    if let Some(other) = images.iter().find(|i| i.canvas() != canvas) {
        return Err(crate::error::Error::Config(format!(
            "a batch holds one canvas size: {canvas} and {}",
            other.canvas()
        )));
    }
    let data: Vec<u8> = images.iter().flat_map(|i| i.rgb.iter().copied()).collect();
    let t = Tensor::from_vec(data, (images.len(), canvas.height, canvas.width, 3), device)?
        .to_dtype(DType::F32)?
        .permute((0, 3, 1, 2))? // (B, 3, H, W)
        .affine(2.0 / 255.0, -1.0)?;
    Ok(t.contiguous()?)
}

/// An image (H, W, 3) in [0, 1] as RGB bytes, rounded like a PNG writer.
pub fn to_image(t: &Tensor) -> Result<Image> {
    let (height, width, _) = t.dims3()?;
    let rgb = (t.to_dtype(DType::F32)?.clamp(0f32, 1f32)? * 255.0)?
        .round()?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    Ok(Image { width, height, rgb })
}

/// `size` fresh samples on `canvas`.
pub fn batch(
    cfg: &DataConfig,
    canvas: Canvas,
    size: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<Batch> {
    let mut images = Vec::with_capacity(size);
    let mut captions = Vec::with_capacity(size);
    let mix = CaptionMix {
        two_objects: cfg.two_objects,
        ..CaptionMix::TRAINING
    };
    for _ in 0..size {
        let caption = sample_caption(rng, &mix);
        let scene = sample_scene(&caption, canvas, rng);
        images.push(render(&scene));
        let dropped = rng.gen_bool(cfg.caption_dropout);
        captions.push(if dropped {
            String::new()
        } else {
            caption.text()
        });
    }
    Ok(Batch {
        images: to_tensor(&images, device)?,
        captions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumina_shapes::prompts::evaluation_prompts;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn every_grammar_word_is_in_the_vocabulary() -> Result<()> {
        let vocab = vocabulary();
        for c in evaluation_prompts(50, &mut StdRng::seed_from_u64(0)) {
            let (ids, _, dropped) = vocab.encode(&[c.text()], &Device::Cpu)?;
            assert!(dropped[0].is_empty());
            assert!(
                ids.flatten_all()?
                    .to_vec1::<u32>()?
                    .iter()
                    .all(|&id| id != lumina::word_encoder::UNK),
                "{}",
                c.text()
            );
        }
        Ok(())
    }

    #[test]
    fn images_round_trip_through_tensors() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(1);
        let b = batch(
            &DataConfig {
                side: 16,
                caption_dropout: 0.5,
                two_objects: 0.5,
                stages: Vec::new(),
                aspects: Vec::new(),
            },
            Canvas::new(24, 16),
            4,
            &mut rng,
            &Device::Cpu,
        )?;
        assert_eq!(b.images.dims(), &[4, 3, 16, 24]);
        let first = ((b.images.narrow(0, 0, 1)?.squeeze(0)?.permute((1, 2, 0))? + 1.0)? * 0.5)?;
        let image = to_image(&first)?;
        let again = to_tensor(&[image], &Device::Cpu)?;
        assert!(lumina::fixtures::max_abs_diff(&again, &b.images.narrow(0, 0, 1)?)? < 1e-6);
        Ok(())
    }
}
