//! Training data for the `shapes` task: fresh scenes every step, rendered to RGB in [−1, 1],
//! with their captions (some dropped for classifier-free guidance).

use candle_core::{DType, Device, Tensor};
use lumina::word_encoder::WordTokenizer;
use lumina_shapes::caption::{Color, Place, Relation, Shape, Size};
use lumina_shapes::clip::{sample_clip, sample_clip_caption, Direction};
use lumina_shapes::scene::{sample_caption, sample_scene, CaptionMix};
use lumina_shapes::{render, Canvas, Image};
use rand::Rng;

use crate::config::DataConfig;
use crate::error::Result;

/// The longest caption, "a small yellow triangle to the right of a small yellow triangle",
/// is 12 words; with `<bos>` and room to spare.
pub const MAX_CAPTION_TOKENS: usize = 16;

/// Every word of a run's captions: the image grammar's, then for clips the motion words
/// appended, so an image model's token ids stay those of the clip model it seeds.
pub fn vocabulary(data: &DataConfig) -> WordTokenizer {
    let mut words = image_words();
    if data.clips.is_some() {
        let motion = Direction::ALL.iter().map(|d| d.phrase());
        for w in std::iter::once("moving").chain(motion.flat_map(|p| p.split(' '))) {
            if !words.contains(&w) {
                words.push(w);
            }
        }
    }
    WordTokenizer::new(&words, MAX_CAPTION_TOKENS)
}

/// Every word of the image caption grammar.
pub fn image_vocabulary() -> WordTokenizer {
    WordTokenizer::new(&image_words(), MAX_CAPTION_TOKENS)
}

fn image_words() -> Vec<&'static str> {
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
    words
}

/// A batch: images (B, 3, H, W) or clips (B, 3, F, H, W) in [−1, 1], and captions ("" when
/// dropped).
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
        captions.push(maybe_dropped(cfg, caption.text(), rng));
    }
    Ok(Batch {
        images: to_tensor(&images, device)?,
        captions,
    })
}

/// The caption, or "" with probability `caption_dropout` (for classifier-free guidance).
fn maybe_dropped(cfg: &DataConfig, caption: String, rng: &mut impl Rng) -> String {
    match rng.gen_bool(cfg.caption_dropout) {
        true => String::new(),
        false => caption,
    }
}

/// `size` fresh clips of `frames` frames on `canvas`: (B, 3, F, H, W).
pub fn clip_batch(
    cfg: &DataConfig,
    frames: usize,
    canvas: Canvas,
    size: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<Batch> {
    let mut clips = Vec::with_capacity(size);
    let mut captions = Vec::with_capacity(size);
    for _ in 0..size {
        let caption = sample_clip_caption(rng, &CaptionMix::TRAINING);
        let scene = sample_clip(&caption, canvas, rng);
        let frames = to_tensor(&scene.render(frames), device)?; // (F, 3, H, W)
        clips.push(frames.transpose(0, 1)?); // (3, F, H, W)
        captions.push(maybe_dropped(cfg, caption.text(), rng));
    }
    Ok(Batch {
        images: Tensor::stack(&clips, 0)?.contiguous()?,
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
        let vocab = image_vocabulary();
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
    fn clip_words_come_after_the_image_words() -> Result<()> {
        let image = image_vocabulary();
        let clips = crate::TrainConfig::tiny_video();
        let video = vocabulary(&clips.data);
        assert_eq!(video.words[..image.words.len()], image.words[..]);
        assert_eq!(video.words[image.words.len()..], ["moving", "up", "down"]);
        assert_eq!(vocabulary(&crate::TrainConfig::tiny().data), image);
        Ok(())
    }

    #[test]
    fn clips_move_and_keep_their_object() -> Result<()> {
        let cfg = crate::TrainConfig::tiny_video().data;
        let mut rng = StdRng::seed_from_u64(3);
        let b = clip_batch(&cfg, 4, Canvas::new(24, 16), 3, &mut rng, &Device::Cpu)?;
        assert_eq!(b.images.dims(), &[3, 3, 4, 16, 24]);
        for (i, caption) in b.captions.iter().enumerate() {
            let clip = b.images.get(i)?; // (3, F, H, W)
            let (first, last) = (clip.narrow(1, 0, 1)?, clip.narrow(1, 3, 1)?);
            assert!(
                lumina::fixtures::max_abs_diff(&first, &last)? > 0.5,
                "clip {i} ({caption:?}) does not move"
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
                clips: None,
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
