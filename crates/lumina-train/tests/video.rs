//! The video path of the trainer and the pipeline on the `tiny-video` preset: an image model
//! seeds a clip model (vocabulary grown, temporal patches inflated), a clip model exports as
//! the video family, generates clips of its length and longer ones, and its clips are judged.

use anyhow::Result;
use candle_core::{DType, Device, IndexOp};
use lumina::fixtures::max_abs_diff;
use lumina_pipelines::{Family, Pipeline};
use lumina_shapes::prompts::{clip_evaluation_prompts, ClipKind};
use lumina_train::eval::evaluate_clips;
use lumina_train::{TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn an_image_model_seeds_a_clip_model() -> Result<()> {
    let mut image = Trainer::new(TrainConfig::tiny())?;
    image.step()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    image.export(&dir, DType::F32)?;
    let mut cfg = TrainConfig::tiny_video();
    cfg.init = Some(dir.clone());
    let mut video = Trainer::new(cfg.clone())?;
    let (from, to) = (image.ema(), video.weights()?);

    // the image words keep their embeddings; the clip words are appended
    let key = "text_encoder.embed_tokens.weight";
    let rows = from[key].dim(0)?;
    assert!(to[key].dim(0)? > rows);
    assert_eq!(max_abs_diff(&from[key], &to[key].narrow(0, 0, rows)?)?, 0.0);

    // `init_words`: a named clip word starts as its image word's row, the others as before
    let words = &lumina_train::data::vocabulary(&cfg.data).words;
    let id = |w: &str| words.iter().position(|v| v == w).expect(w);
    let mut seeded = cfg.clone();
    seeded.init_words = [("up", "top"), ("down", "bottom")]
        .map(|(w, k)| (w.to_string(), k.to_string()))
        .into();
    let kin = Trainer::new(seeded)?.weights()?;
    for (word, image_word) in [("up", "top"), ("down", "bottom")] {
        let row = kin[key].narrow(0, id(word), 1)?;
        let image_row = from[key].narrow(0, id(image_word), 1)?;
        assert_eq!(
            max_abs_diff(&row, &image_row)?,
            0.0,
            "{word} from {image_word}"
        );
        assert!(
            max_abs_diff(&row, &to[key].narrow(0, id(word), 1)?)? > 0.0,
            "{word}"
        );
    }
    let moving = |w: &candle_core::Tensor| w.narrow(0, id("moving"), 1);
    assert_eq!(max_abs_diff(&moving(&kin[key])?, &moving(&to[key])?)?, 0.0);

    // each frame of a temporal patch embeds as the image patch / pf: a still clip of two
    // frames embeds exactly as its image
    let key = "transformer.patch_embedder.proj.weight";
    let (d, image_in) = from[key].dims2()?;
    let w = to[key].reshape((d, 3, 2, image_in / 3))?;
    for f in 0..2 {
        let frame = (w.i((.., .., f, ..))?.reshape((d, image_in))? * 2.0)?;
        assert!(max_abs_diff(&frame, &from[key])? < 1e-6, "frame {f}");
    }
    // each frame of an output patch is the image's output projection
    for key in [
        "transformer.norm_out.linear_2.weight",
        "transformer.norm_out.linear_2.bias",
    ] {
        let n = from[key].dim(0)?;
        for f in 0..2 {
            assert_eq!(
                max_abs_diff(&to[key].narrow(0, f * n, n)?, &from[key])?,
                0.0,
                "{key} frame {f}"
            );
        }
    }
    assert!(video.step()?.loss.is_finite());
    Ok(())
}

#[test]
fn init_words_must_pair_an_appended_word_with_an_image_word() {
    let mut cfg = TrainConfig::tiny_video();
    let pair = |w: &str, k: &str| [(w.to_string(), k.to_string())].into();
    cfg.init_words = pair("up", "top");
    let e = cfg.validate().expect_err("no init").to_string();
    assert!(
        e.contains("init_words") && e.contains("needs `init`"),
        "{e}"
    );
    cfg.init = Some("models/shapes".into());
    assert!(cfg.validate().is_ok());
    for (word, kin, says) in [
        ("top", "bottom", "not a word this run appends"),
        ("up", "upward", "not an image word"),
        ("up", "down", "not an image word"),
    ] {
        cfg.init_words = pair(word, kin);
        let e = cfg.validate().expect_err(word).to_string();
        assert!(e.contains(says) && e.contains(word), "{word} = {kin}: {e}");
    }
}

#[test]
fn clip_steps_draw_their_lengths_by_share() -> Result<()> {
    use lumina_train::config::ClipLength;
    let mut cfg = TrainConfig::tiny_video();
    cfg.transformer.sample_frames = 8;
    let clips = cfg.data.clips.as_mut().expect("clips");
    clips.lengths = vec![ClipLength {
        frames: 8,
        share: 0.5,
        batch_size: Some(2),
    }];
    let mut trainer = Trainer::new(cfg.clone())?;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..12 {
        let s = trainer.step()?;
        assert!(s.loss.is_finite());
        *seen.entry((s.frames, s.batch)).or_insert(0) += 1;
    }
    let keys: Vec<_> = seen.keys().copied().collect();
    assert_eq!(keys, vec![(Some(4), 4), (Some(8), 2)], "{seen:?}");

    // every length must lie within the frame positions the model trains on, and the shares
    // leave room for the model's own length
    let bad = |edit: &dyn Fn(&mut TrainConfig), says: &str| {
        let mut c = cfg.clone();
        edit(&mut c);
        let e = c.validate().expect_err(says).to_string();
        assert!(e.contains(says), "{says}: {e}");
    };
    fn lengths(c: &mut TrainConfig) -> &mut Vec<ClipLength> {
        &mut c.data.clips.as_mut().expect("clips").lengths
    }
    bad(
        &|c| c.transformer.sample_frames = 6,
        "data.clips.lengths[0]: frames 8",
    );
    bad(
        &|c| lengths(c)[0].frames = 5,
        "multiple of transformer.frame_patch_size 2",
    );
    bad(&|c| lengths(c)[0].share = 0.0, "share 0 must be in (0, 1]");
    bad(
        &|c| {
            lengths(c).push(ClipLength {
                frames: 6,
                share: 0.75,
                batch_size: None,
            })
        },
        "add up to 1.25",
    );
    bad(
        &|c| c.transformer.sample_frames = 2,
        "data.clips.frames: frames 4 must be >= 2, a multiple of transformer.frame_patch_size 2 \
         and at most transformer.sample_frames 2",
    );
    bad(
        &|c| c.data.clips.as_mut().expect("clips").frames = 3,
        "data.clips.frames: frames 3",
    );
    Ok(())
}

#[test]
fn a_clip_model_generates_clips_of_any_length_and_is_judged() -> Result<()> {
    let mut cfg = TrainConfig::tiny_video();
    // the run's sampler settings are the exported model's defaults, CFG truncation included
    cfg.sampler.cfg_trunc_ratio = Some(2.0);
    let e = cfg.validate().expect_err("a ratio above 1").to_string();
    assert!(
        e.contains("sampler.cfg_trunc_ratio must be in [0, 1], got 2"),
        "{e}"
    );
    cfg.sampler.cfg_trunc_ratio = Some(0.5);
    let mut trainer = Trainer::new(cfg)?;
    for _ in 0..2 {
        assert!(trainer.step()?.loss.is_finite());
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    trainer.export(&dir, DType::F32)?;
    let pipeline = Pipeline::load(&dir, DType::F32, &Device::Cpu)?;
    assert_eq!(pipeline.family, Family::PixelVideo);
    assert!(pipeline.makes_clips());
    let template = pipeline.default_request(vec![]);
    assert_eq!(template.frames, 4, "the training length is the default");
    assert_eq!(template.cfg_trunc_ratio, 0.5);

    let mut r = pipeline.default_request(vec!["a red circle moving up".into()]);
    let clip = pipeline.generate(&r, |_| {})?.images;
    assert_eq!(clip.dims(), &[1, 4, 16, 16, 3]);
    // twice the length: the frame axis interpolates (its rule is in the parameters)
    r.frames = 8;
    let long = pipeline.generate(&r, |_| {})?.images;
    assert_eq!(long.dims(), &[1, 8, 16, 16, 3]);
    assert!(pipeline
        .family_parameters(&r)
        .contains(&"Frames: 8".to_string()));
    // the same request again is the same clip
    assert_eq!(
        max_abs_diff(&long, &pipeline.generate(&r, |_| {})?.images)?,
        0.0
    );
    // past the training length attention is proportional unless the request turns it off;
    // at the training length the flag changes nothing
    let params = pipeline.family_parameters(&r);
    assert!(
        params.contains(&"Proportional attention: on".to_string()),
        "{params:?}"
    );
    let mut plain = r.clone();
    plain.proportional_attn = false;
    assert!(max_abs_diff(&long, &pipeline.generate(&plain, |_| {})?.images)? > 0.0);
    assert!(pipeline
        .family_parameters(&plain)
        .contains(&"Proportional attention: off".to_string()));
    plain.frames = 4;
    assert_eq!(
        max_abs_diff(&clip, &pipeline.generate(&plain, |_| {})?.images)?,
        0.0
    );
    assert!(!pipeline
        .family_parameters(&plain)
        .iter()
        .any(|p| p.starts_with("Proportional")));

    for (frames, what) in [(3, "frames"), (0, "frames")] {
        r.frames = frames;
        let e = pipeline.validate(&r).expect_err("bad length").to_string();
        assert!(e.contains(what) && e.contains("temporal patch 2"), "{e}");
    }
    // a clip too long for this machine's memory is refused with the longest that fits (a
    // whole number of temporal patches): half of it passes, twice it is refused (the memory
    // available moves between two reads, so the length itself is not asked to pass); where
    // not even one patch fits, the message names the size
    if lumina_pipelines::memory::available_bytes().is_some() {
        r.frames = 1 << 24;
        let e = pipeline.validate(&r).expect_err("too long").to_string();
        let longest: usize = e
            .split("the longest clip with these settings is about ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no longest clip in: {e}"));
        assert!(
            e.starts_with("clip length:")
                && e.contains("16777216 frames of 16x16 × 1 clip(s), estimated peak"),
            "{e}"
        );
        assert!(longest > 0 && longest < r.frames && longest % 2 == 0, "{e}");
        r.frames = longest / 4 * 2;
        pipeline.validate(&r)?;
        r.frames = longest * 2;
        assert!(pipeline.validate(&r).is_err(), "{} frames", r.frames);
        (r.frames, r.images_per_prompt) = (4, 1 << 24);
        let e = pipeline.validate(&r).expect_err("too many").to_string();
        assert!(
            e.starts_with("image size:")
                && e.contains("16x16 × 4 frames × 16777216 clip(s)")
                && e.contains("largest square"),
            "{e}"
        );
        r.images_per_prompt = 1;
    }
    r.frames = 4;
    r.context_drop = Some("2".parse()?);
    let e = pipeline
        .validate(&r)
        .expect_err("Context Drop on a clip")
        .to_string();
    assert!(e.contains("Context Drop") && e.contains("4 frames"), "{e}");

    let prompts = clip_evaluation_prompts(1, &mut StdRng::seed_from_u64(0));
    let sheet = tmp.path().join("sheet.png");
    let report = evaluate_clips(
        &pipeline,
        &prompts,
        2,
        0,
        &template,
        Some(&sheet),
        |_, _| {},
    )?;
    assert_eq!(report.total, 2 * ClipKind::ALL.len());
    // 16-pixel clips are below the judge's 32: every clip is unjudgeable, none passes
    assert_eq!(report.correct, 0);
    assert!(sheet.is_file());
    Ok(())
}

#[test]
fn an_image_model_makes_only_images() -> Result<()> {
    let mut trainer = Trainer::new(TrainConfig::tiny())?;
    trainer.step()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    trainer.export(&dir, DType::F32)?;
    let pipeline = Pipeline::load(&dir, DType::F32, &Device::Cpu)?;
    assert!(!pipeline.makes_clips());
    let mut r = pipeline.default_request(vec!["a red circle".into()]);
    assert_eq!(r.frames, 1);
    r.frames = 4;
    let e = pipeline
        .validate(&r)
        .expect_err("clip from an image model")
        .to_string();
    assert!(e.contains("frames") && e.contains("makes images"), "{e}");
    Ok(())
}
