//! The `shapes-video` task (spec: `shared/spec/shapes_video.md`, version 1): clips of the
//! `shapes` world in which one object moves along one axis at constant speed, their captions
//! ("a red circle moving to the right"), and the clip judge. Frame k of F is at clip time
//! τ = k / (F − 1); every frame is drawn by the image renderer.

use rand::Rng;

use crate::canvas::Canvas;
use crate::caption::{parse_named, Named};
use crate::judge::{detect, Detected};
use crate::render::{render, Image};
use crate::scene::{pick, realize, sample_named, CaptionMix, Object, Scene};
use crate::{Error, Result};

/// Which way the object moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Left,
    Right,
    Up,
    Down,
}

/// Jitter of the start and end points along the motion axis (fractions of that axis).
const JITTER: f64 = 0.05;

impl Direction {
    pub const ALL: [Direction; 4] = [
        Direction::Left,
        Direction::Right,
        Direction::Up,
        Direction::Down,
    ];

    pub fn phrase(self) -> &'static str {
        match self {
            Direction::Left => "to the left",
            Direction::Right => "to the right",
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }

    /// Motion along y (up, down) rather than x.
    pub fn vertical(self) -> bool {
        matches!(self, Direction::Up | Direction::Down)
    }

    /// d of the spec: +1 towards larger coordinates (right, down), −1 otherwise.
    pub fn sign(self) -> f64 {
        match self {
            Direction::Right | Direction::Down => 1.0,
            Direction::Left | Direction::Up => -1.0,
        }
    }

    /// Nominal start and end along the motion axis, before jitter.
    fn path(self) -> (f64, f64) {
        if self.sign() > 0.0 {
            (0.25, 0.75)
        } else {
            (0.75, 0.25)
        }
    }
}

/// `a [SIZE ]COLOR SHAPE moving DIRECTION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClipCaption {
    pub object: Named,
    pub direction: Direction,
}

impl ClipCaption {
    pub fn text(&self) -> String {
        format!(
            "{} moving {}",
            self.object.phrase(),
            self.direction.phrase()
        )
    }

    /// Parses a caption of the clip grammar.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Grammar {
            caption: text.to_string(),
            reason: reason.to_string(),
        };
        let words: Vec<&str> = text.split(' ').collect();
        let (object, rest) =
            parse_named(&words).ok_or_else(|| bad("expected `a [size] color shape` first"))?;
        let motion = match rest.split_first() {
            Some((&"moving", motion)) => motion.join(" "),
            _ => return Err(bad("expected `moving` after the object")),
        };
        let direction = Direction::ALL
            .into_iter()
            .find(|d| d.phrase() == motion)
            .ok_or_else(|| bad("expected `to the left`, `to the right`, `up` or `down`"))?;
        Ok(Self { object, direction })
    }
}

/// A caption for a training or evaluation clip; `mix.size_named` and `mix.allow_held_out` as
/// for images (the held-out pairs never appear in training).
pub fn sample_clip_caption(rng: &mut impl Rng, mix: &CaptionMix) -> ClipCaption {
    let object = sample_named(rng, mix);
    let direction = pick(rng, &Direction::ALL);
    ClipCaption { object, direction }
}

/// One moving object: where it is at the first and the last frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipScene {
    pub canvas: Canvas,
    /// The object at τ = 0.
    pub object: Object,
    /// Its centre at τ = 1, (x / W, y / H).
    pub end: (f64, f64),
}

impl ClipScene {
    /// The scene at clip time τ in [0, 1]: the centre moved linearly.
    pub fn at(&self, tau: f64) -> Scene {
        let o = self.object;
        let lerp = |a: f64, b: f64| a + (b - a) * tau;
        Scene {
            canvas: self.canvas,
            objects: vec![Object {
                cx: lerp(o.cx, self.end.0),
                cy: lerp(o.cy, self.end.1),
                ..o
            }],
        }
    }

    /// F frames, frame k at τ = k / (F − 1) (one frame: τ = 0).
    pub fn render(&self, frames: usize) -> Vec<Image> {
        let last = frames.saturating_sub(1).max(1) as f64;
        (0..frames)
            .map(|k| render(&self.at(k as f64 / last)))
            .collect()
    }
}

/// A clip scene for `caption` on `canvas`: start and end along the motion axis jittered by up
/// to ±0.05 then clipped to keep the object inside, the other coordinate constant anywhere
/// inside.
pub fn sample_clip(caption: &ClipCaption, canvas: Canvas, rng: &mut impl Rng) -> ClipScene {
    let (color, shape, size) = realize(caption.object, rng);
    let r = size.half_extent();
    let (rx, ry) = (r * canvas.kx(), r * canvas.ky());
    let (r_along, r_across) = if caption.direction.vertical() {
        (ry, rx)
    } else {
        (rx, ry)
    };
    let (a, b) = caption.direction.path();
    let mut jitter =
        |p: f64| (p + (2.0 * rng.gen::<f64>() - 1.0) * JITTER).clamp(r_along, 1.0 - r_along);
    let (start, end) = (jitter(a), jitter(b));
    let across = r_across + rng.gen::<f64>() * (1.0 - 2.0 * r_across);
    let (p0, p1) = if caption.direction.vertical() {
        ((across, start), (across, end))
    } else {
        ((start, across), (end, across))
    };
    ClipScene {
        canvas,
        object: Object {
            color,
            shape,
            size,
            cx: p0.0,
            cy: p0.1,
        },
        end: p1,
    }
}

/// What kind of mistake a wrong clip makes: the first check of the spec that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClipFault {
    /// Fewer than 4 frames, or a canvas under 32 px a side: outside what the judge reads.
    Unjudgeable,
    /// A frame without exactly one object.
    Count,
    /// A frame whose object is not of the named colour.
    Color,
    /// The named shape in fewer than ⌈3F/4⌉ frames.
    Shape,
    /// The named size in fewer than ⌈3F/4⌉ frames.
    Size,
    /// It travels less than 0.3 the named way.
    Distance,
    /// One step goes back by more than 0.05.
    Backstep,
    /// The other coordinate drifts by more than 0.1.
    Drift,
}

impl ClipFault {
    pub fn name(self) -> &'static str {
        match self {
            ClipFault::Unjudgeable => "unjudgeable",
            ClipFault::Count => "count",
            ClipFault::Color => "color",
            ClipFault::Shape => "shape",
            ClipFault::Size => "size",
            ClipFault::Distance => "distance",
            ClipFault::Backstep => "backstep",
            ClipFault::Drift => "drift",
        }
    }
}

/// The clip judge's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipVerdict {
    /// What the image judge saw in each frame.
    pub frames: Vec<Vec<Detected>>,
    pub fault: Option<ClipFault>,
    /// Why it is wrong (empty when correct).
    pub reason: String,
}

impl ClipVerdict {
    pub fn correct(&self) -> bool {
        self.fault.is_none()
    }
}

/// Is `frames` a correct clip of `caption`? (spec: "The judge", steps 1–4)
pub fn judge_clip(frames: &[Image], caption: &ClipCaption) -> ClipVerdict {
    let detected: Vec<Vec<Detected>> = frames.iter().map(detect).collect();
    let (fault, reason) = match clip_fault(frames, &detected, caption) {
        Ok(()) => (None, String::new()),
        Err((f, why)) => (Some(f), format!("{}: {why}", f.name())),
    };
    ClipVerdict {
        frames: detected,
        fault,
        reason,
    }
}

fn clip_fault(
    frames: &[Image],
    detected: &[Vec<Detected>],
    caption: &ClipCaption,
) -> std::result::Result<(), (ClipFault, String)> {
    let f = frames.len();
    let small = frames
        .iter()
        .map(|i| i.canvas().min_side())
        .min()
        .unwrap_or(0);
    if f < 4 || small < 32 {
        return Err((
            ClipFault::Unjudgeable,
            format!("{f} frames, smallest side {small} (the judge needs >= 4 and >= 32)"),
        ));
    }
    if let Some((k, d)) = detected.iter().enumerate().find(|(_, d)| d.len() != 1) {
        return Err((
            ClipFault::Count,
            format!("frame {k} shows {} objects", d.len()),
        ));
    }
    let objects: Vec<&Detected> = detected.iter().map(|d| &d[0]).collect();
    let named = caption.object;
    if let Some((k, o)) = objects
        .iter()
        .enumerate()
        .find(|(_, o)| o.color != named.color)
    {
        return Err((ClipFault::Color, format!("frame {k} is {:?}", o.color)));
    }
    let quorum = (3 * f).div_ceil(4);
    let shapes = objects
        .iter()
        .filter(|o| o.shape == Some(named.shape))
        .count();
    if shapes < quorum {
        return Err((
            ClipFault::Shape,
            format!(
                "{:?} in {shapes} of {f} frames (needs {quorum})",
                named.shape
            ),
        ));
    }
    if let Some(size) = named.size {
        let sized = objects.iter().filter(|o| o.size == size).count();
        if sized < quorum {
            return Err((
                ClipFault::Size,
                format!("{size:?} in {sized} of {f} frames (needs {quorum})"),
            ));
        }
    }
    let vertical = caption.direction.vertical();
    let (along, across): (Vec<f64>, Vec<f64>) = objects
        .iter()
        .map(|o| if vertical { (o.cy, o.cx) } else { (o.cx, o.cy) })
        .unzip();
    let d = caption.direction.sign();
    let travel = d * (along[f - 1] - along[0]);
    if travel < 0.3 {
        return Err((
            ClipFault::Distance,
            format!(
                "travels {travel:.2} {} (needs >= 0.3)",
                caption.direction.phrase()
            ),
        ));
    }
    if let Some(k) = (0..f - 1).find(|&k| d * (along[k + 1] - along[k]) < -0.05) {
        return Err((
            ClipFault::Backstep,
            format!(
                "frame {k} → {}: {:.2} back",
                k + 1,
                d * (along[k] - along[k + 1])
            ),
        ));
    }
    let lo = across.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = across.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hi - lo > 0.1 {
        return Err((
            ClipFault::Drift,
            format!("the other coordinate spans {:.2} (at most 0.1)", hi - lo),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::{Color, Shape};

    const EVAL: CaptionMix = CaptionMix {
        two_objects: 0.0,
        place: 0.0,
        size_named: 0.5,
        allow_held_out: true,
    };

    #[test]
    fn captions_round_trip_and_bad_ones_are_named() -> Result<()> {
        let c = ClipCaption {
            object: Named {
                size: None,
                color: Color::Orange,
                shape: Shape::Triangle,
            },
            direction: Direction::Up,
        };
        assert_eq!(c.text(), "an orange triangle moving up");
        assert_eq!(ClipCaption::parse(&c.text())?, c);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let c = sample_clip_caption(&mut rng, &EVAL);
            assert_eq!(ClipCaption::parse(&c.text())?, c);
        }
        for bad in [
            "a red circle",
            "a red circle moving sideways",
            "a red circle running up",
            "a red circle moving up fast",
        ] {
            assert!(ClipCaption::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn training_captions_never_hold_out_pairs() {
        let mut rng = StdRng::seed_from_u64(2);
        let train = CaptionMix {
            allow_held_out: false,
            ..EVAL
        };
        for _ in 0..500 {
            assert!(!sample_clip_caption(&mut rng, &train).object.is_held_out());
        }
    }

    /// The spec's first check: the renderer's own clips score 1.0, at several lengths and on
    /// square and oblong canvases.
    #[test]
    fn the_renderer_scores_one_on_its_own_clips() {
        let mut rng = StdRng::seed_from_u64(3);
        for (w, h) in [(32, 32), (48, 32), (32, 64), (64, 64)] {
            for frames in [4, 8, 16] {
                for _ in 0..12 {
                    let caption = sample_clip_caption(&mut rng, &EVAL);
                    let clip = sample_clip(&caption, Canvas::new(w, h), &mut rng).render(frames);
                    let v = judge_clip(&clip, &caption);
                    assert!(
                        v.correct(),
                        "{w}x{h} F={frames} {:?}: {}",
                        caption.text(),
                        v.reason
                    );
                }
            }
        }
    }

    /// Reversed clips move the wrong way; recoloured, reshaped or re-directed captions do not
    /// match; too few frames or too small a canvas cannot be judged.
    #[test]
    fn wrong_clips_are_rejected_with_their_fault() {
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..20 {
            let caption = sample_clip_caption(&mut rng, &EVAL);
            let clip = sample_clip(&caption, Canvas::square(32), &mut rng).render(8);
            let reversed: Vec<Image> = clip.iter().rev().cloned().collect();
            let fault = |frames: &[Image], c: &ClipCaption| judge_clip(frames, c).fault;
            assert_eq!(fault(&reversed, &caption), Some(ClipFault::Distance));
            let other_color = Color::ALL
                .into_iter()
                .find(|&c| c != caption.object.color)
                .unwrap_or(Color::Red);
            let recoloured = ClipCaption {
                object: Named {
                    color: other_color,
                    ..caption.object
                },
                ..caption
            };
            assert_eq!(fault(&clip, &recoloured), Some(ClipFault::Color));
            let other_axis = ClipCaption {
                direction: if caption.direction.vertical() {
                    Direction::Right
                } else {
                    Direction::Down
                },
                ..caption
            };
            assert_eq!(fault(&clip, &other_axis), Some(ClipFault::Distance));
            assert_eq!(fault(&clip[..3], &caption), Some(ClipFault::Unjudgeable));
        }
        let caption =
            ClipCaption::parse("a red square moving down").unwrap_or_else(|e| panic!("{e}"));
        let still = vec![render(&sample_clip(&caption, Canvas::square(32), &mut rng).at(0.0)); 8];
        assert_eq!(
            judge_clip(&still, &caption).fault,
            Some(ClipFault::Distance)
        );
        let small = sample_clip(&caption, Canvas::square(16), &mut rng).render(8);
        assert_eq!(
            judge_clip(&small, &caption).fault,
            Some(ClipFault::Unjudgeable)
        );
    }
}
