//! Objects on a canvas, and how training data is drawn: a caption first, then a scene that
//! satisfies it on a given [`Canvas`]. Everything is deterministic given the RNG.
//!
//! Centres are fractions of the canvas (x of W, y of H); half-extents are fractions of
//! S = min(W, H). Along an axis a half-extent r is r·S/W (or r·S/H) of the canvas, which
//! [`Canvas::kx`]/[`Canvas::ky`] give exactly as 1 on a square: square scenes are version 1's
//! bit for bit.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::canvas::Canvas;
use crate::caption::{is_held_out, Caption, Color, Named, Place, Relation, Shape, Size};

/// One drawn object; the centre is (x / W, y / H), the half-extent in units of S.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    pub color: Color,
    pub shape: Shape,
    pub size: Size,
    pub cx: f64,
    pub cy: f64,
}

impl Object {
    pub fn half_extent(&self) -> f64 {
        self.size.half_extent()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub canvas: Canvas,
    pub objects: Vec<Object>,
}

/// Jitter of a single object's named position, per axis (fractions of that axis).
const JITTER: f64 = 0.05;
/// Two objects: their centres are this far apart along the relation's axis (a fraction of that
/// axis), at least …
const MIN_GAP: f64 = 0.4;
/// … and at most this far apart on the other axis (a fraction of it).
const MAX_OFF_AXIS: f64 = 0.15;
/// Clearance between two objects' bounding boxes along the relation's axis (units of S), so
/// they never touch, even through anti-aliasing.
const CLEARANCE: f64 = 0.03;

/// How captions are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CaptionMix {
    /// Probability of a two-object caption.
    pub two_objects: f64,
    /// Probability that a single object's caption names a position.
    pub place: f64,
    /// Probability that a caption names an object's size.
    pub size_named: f64,
    /// Whether the held-out colour–shape pairs may appear (never in training).
    pub allow_held_out: bool,
}

impl CaptionMix {
    /// The training distribution: half single objects (60 % with a position), half relations,
    /// sizes named half the time, no held-out pair ever.
    pub const TRAINING: CaptionMix = CaptionMix {
        two_objects: 0.5,
        place: 0.6,
        size_named: 0.5,
        allow_held_out: false,
    };
}

pub(crate) fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    *items.choose(rng).expect("non-empty choice")
}

pub(crate) fn sample_named(rng: &mut impl Rng, mix: &CaptionMix) -> Named {
    loop {
        let color = pick(rng, &Color::ALL);
        let shape = pick(rng, &Shape::ALL);
        if mix.allow_held_out || !is_held_out(color, shape) {
            let size = rng.gen_bool(mix.size_named).then(|| pick(rng, &Size::ALL));
            return Named { size, color, shape };
        }
    }
}

pub fn sample_caption(rng: &mut impl Rng, mix: &CaptionMix) -> Caption {
    if rng.gen_bool(mix.two_objects) {
        let a = sample_named(rng, mix);
        let relation = pick(rng, &Relation::ALL);
        let b = sample_named(rng, mix);
        Caption::Two { a, relation, b }
    } else {
        let object = sample_named(rng, mix);
        let place = rng.gen_bool(mix.place).then(|| pick(rng, &Place::ALL));
        Caption::One { object, place }
    }
}

pub(crate) fn realize(named: Named, rng: &mut impl Rng) -> (Color, Shape, Size) {
    (
        named.color,
        named.shape,
        named.size.unwrap_or_else(|| pick(rng, &Size::ALL)),
    )
}

fn object(
    named: Named,
    canvas: Canvas,
    rng: &mut impl Rng,
    place: impl FnOnce((f64, f64), &mut dyn FnMut() -> f64) -> (f64, f64),
) -> Object {
    let (color, shape, size) = realize(named, rng);
    let mut uniform = || rng.gen::<f64>();
    let r = size.half_extent();
    let (cx, cy) = place((r * canvas.kx(), r * canvas.ky()), &mut uniform);
    Object {
        color,
        shape,
        size,
        cx,
        cy,
    }
}

/// A scene on `canvas` that satisfies `caption`, objects fully inside the canvas and never
/// overlapping.
pub fn sample_scene(caption: &Caption, canvas: Canvas, rng: &mut impl Rng) -> Scene {
    match *caption {
        Caption::One {
            object: named,
            place,
        } => {
            let o = object(named, canvas, rng, |(rx, ry), u| match place {
                // named position, jittered, kept inside the canvas
                Some(p) => {
                    let (x, y) = p.centre();
                    let jx = (2.0 * u() - 1.0) * JITTER;
                    let jy = (2.0 * u() - 1.0) * JITTER;
                    ((x + jx).clamp(rx, 1.0 - rx), (y + jy).clamp(ry, 1.0 - ry))
                }
                // anywhere fully inside
                None => (rx + u() * (1.0 - 2.0 * rx), ry + u() * (1.0 - 2.0 * ry)),
            });
            Scene {
                canvas,
                objects: vec![o],
            }
        }
        Caption::Two { a, relation, b } => {
            let (ca, sa, za) = realize(a, rng);
            let (cb, sb, zb) = realize(b, rng);
            // units of S per fraction, along the relation's axis and across it
            let (k_along, k_across) = if relation.vertical() {
                (canvas.ky(), canvas.kx())
            } else {
                (canvas.kx(), canvas.ky())
            };
            let (ra, rb) = (za.half_extent() * k_along, zb.half_extent() * k_along);
            // along the axis: the first-drawn object (smaller coordinate) and the second
            let first_is_a = matches!(relation, Relation::Above | Relation::LeftOf);
            let (r1, r2) = if first_is_a { (ra, rb) } else { (rb, ra) };
            let min_gap = MIN_GAP.max(r1 + r2 + CLEARANCE * k_along);
            let max_gap = 1.0 - r1 - r2;
            let gap = min_gap + rng.gen::<f64>() * (max_gap - min_gap).max(0.0);
            let p1 = r1 + rng.gen::<f64>() * (1.0 - r2 - gap - r1).max(0.0);
            let p2 = p1 + gap;
            let (pa, pb) = if first_is_a { (p1, p2) } else { (p2, p1) };
            // across the axis: a shared line, each within ±MAX_OFF_AXIS/2 of it
            let (ra, rb) = (za.half_extent() * k_across, zb.half_extent() * k_across);
            let rmax = ra.max(rb);
            let base = rmax + rng.gen::<f64>() * (1.0 - 2.0 * rmax);
            let mut off = || (2.0 * rng.gen::<f64>() - 1.0) * MAX_OFF_AXIS / 2.0;
            let (qa, qb) = (
                (base + off()).clamp(ra, 1.0 - ra),
                (base + off()).clamp(rb, 1.0 - rb),
            );
            let place = |p: f64, q: f64| if relation.vertical() { (q, p) } else { (p, q) };
            let (xa, ya) = place(pa, qa);
            let (xb, yb) = place(pb, qb);
            Scene {
                canvas,
                objects: vec![
                    Object {
                        color: ca,
                        shape: sa,
                        size: za,
                        cx: xa,
                        cy: ya,
                    },
                    Object {
                        color: cb,
                        shape: sb,
                        size: zb,
                        cx: xb,
                        cy: yb,
                    },
                ],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn training_draws_never_include_a_held_out_pair_and_scenes_obey_the_geometry() {
        let mut rng = StdRng::seed_from_u64(1);
        let canvases = [
            Canvas::square(32),
            Canvas::new(64, 32),
            Canvas::new(32, 64),
            Canvas::new(96, 32),
            Canvas::new(48, 32),
        ];
        for i in 0..5000 {
            let canvas = canvases[i % canvases.len()];
            let c = sample_caption(&mut rng, &CaptionMix::TRAINING);
            assert!(!c.has_held_out(), "{}", c.text());
            let s = sample_scene(&c, canvas, &mut rng);
            assert_eq!(s.canvas, canvas);
            for o in &s.objects {
                let (rx, ry) = (o.half_extent() * canvas.kx(), o.half_extent() * canvas.ky());
                assert!(
                    o.cx >= rx - 1e-12
                        && o.cx <= 1.0 - rx + 1e-12
                        && o.cy >= ry - 1e-12
                        && o.cy <= 1.0 - ry + 1e-12,
                    "{canvas}: {o:?}"
                );
            }
            if let (Caption::Two { relation, .. }, [a, b]) = (c, s.objects.as_slice()) {
                let (along, across, k) = if relation.vertical() {
                    (b.cy - a.cy, b.cx - a.cx, canvas.ky())
                } else {
                    (b.cx - a.cx, b.cy - a.cy, canvas.kx())
                };
                let along = if matches!(relation, Relation::Above | Relation::LeftOf) {
                    along
                } else {
                    -along
                };
                // apart along the axis by 0.4 of it, and never overlapping (in pixels)
                assert!(
                    along >= MIN_GAP - 1e-12
                        && along >= (a.half_extent() + b.half_extent()) * k - 1e-12,
                    "{canvas}: {along}"
                );
                assert!(across.abs() <= MAX_OFF_AXIS + 1e-12, "{canvas}: {across}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_data() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let c = sample_caption(&mut rng, &CaptionMix::TRAINING);
            (c, sample_scene(&c, Canvas::new(48, 32), &mut rng))
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }
}
