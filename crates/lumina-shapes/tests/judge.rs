//! The judge against the renderer: the renderer's own images pass (≥ 0.98 at S = 32, all of
//! them at S = 48 and above, on squares and rectangles alike), and captions that do not match
//! their image are rejected.

use lumina_shapes::caption::{Caption, Color, Named, Place, Relation, Shape, Size};
use lumina_shapes::prompts::{evaluation_prompts, PromptKind};
use lumina_shapes::scene::{sample_caption, sample_scene, CaptionMix};
use lumina_shapes::{judge, render, Canvas, Fault};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The full grammar, held-out pairs included.
const EVERYTHING: CaptionMix = CaptionMix {
    two_objects: 0.5,
    place: 0.5,
    size_named: 0.5,
    allow_held_out: true,
};

fn accuracy(canvas: Canvas, n: usize, seed: u64) -> (f64, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failures = Vec::new();
    for _ in 0..n {
        let caption = sample_caption(&mut rng, &EVERYTHING);
        let scene = sample_scene(&caption, canvas, &mut rng);
        let v = judge(&render(&scene), &caption);
        if !v.correct() {
            failures.push(format!("{}: {}", caption.text(), v.reason));
        }
    }
    (1.0 - failures.len() as f64 / n as f64, failures)
}

#[test]
fn renderer_images_score_at_least_098_at_side_32() {
    let (acc, failures) = accuracy(Canvas::square(32), 2000, 1);
    println!("side 32: accuracy {acc:.4}; failures: {failures:#?}");
    assert!(
        acc >= 0.98,
        "accuracy {acc}; e.g. {:?}",
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn renderer_images_all_pass_at_side_48_and_64() {
    for side in [48, 64] {
        let (acc, failures) = accuracy(Canvas::square(side), 1000, 2);
        assert_eq!(
            acc,
            1.0,
            "side {side}: {:?}",
            &failures[..failures.len().min(5)]
        );
    }
}

/// Version 2: wide and tall canvases, x relative to W, y to H, lengths to min(W, H).
#[test]
fn renderer_images_pass_on_rectangles() {
    for (canvas, floor) in [
        (Canvas::new(64, 32), 0.98),
        (Canvas::new(32, 64), 0.98),
        (Canvas::new(96, 32), 0.98),
        (Canvas::new(48, 32), 0.98),
        (Canvas::new(96, 48), 1.0),
        (Canvas::new(64, 128), 1.0),
    ] {
        let (acc, failures) = accuracy(canvas, 600, 6);
        assert!(
            acc >= floor,
            "{canvas}: accuracy {acc} < {floor}; e.g. {:?}",
            &failures[..failures.len().min(5)]
        );
    }
}

/// On a wide canvas a shape keeps its proportions: a circle is as tall as it is wide, in
/// pixels, and its size is read against the shorter side.
#[test]
fn shapes_are_not_stretched_on_a_rectangle() {
    let caption = Caption::parse("a big red circle on the left").expect("grammar");
    let canvas = Canvas::new(128, 64);
    let scene = sample_scene(&caption, canvas, &mut StdRng::seed_from_u64(1));
    let image = render(&scene);
    let found = lumina_shapes::judge::detect(&image);
    assert_eq!(found.len(), 1);
    let d = found[0];
    assert_eq!(d.shape, Some(Shape::Circle), "fill {}", d.fill);
    assert_eq!(d.size, Size::Big);
    assert!(d.cx < 0.4, "x relative to the width: {}", d.cx);
    // the disc spans 2·0.22·64 ≈ 28 px each way: count the red pixels of its middle row/column
    let o = scene.objects[0];
    let (px, py) = ((o.cx * 128.0) as usize, (o.cy * 64.0) as usize);
    let red = |x: usize, y: usize| image.pixel(x, y)[0] > 115;
    let across = (0..128).filter(|&x| red(x, py)).count() as i64;
    let down = (0..64).filter(|&y| red(px, y)).count() as i64;
    assert!((across - down).abs() <= 1, "{across} wide, {down} tall");
    assert!((across - 28).abs() <= 1, "{across}");
}

fn named(size: Option<Size>, color: Color, shape: Shape) -> Named {
    Named { size, color, shape }
}

/// A caption changed in one attribute no longer describes the image.
#[test]
fn captions_that_do_not_match_their_image_are_rejected() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut checked = 0;
    for i in 0..400 {
        let caption = sample_caption(&mut rng, &EVERYTHING);
        // squares and both orientations of rectangle
        let canvas = [Canvas::square(48), Canvas::new(96, 48), Canvas::new(48, 72)][i % 3];
        let scene = sample_scene(&caption, canvas, &mut rng);
        let image = render(&scene);
        let truth = scene.objects[0];
        let other_color = Color::ALL
            .into_iter()
            .find(|&c| c != truth.color && scene.objects.iter().all(|o| o.color != c))
            .expect("a free colour");
        // each wrong caption with the fault the judge must name
        let wrong: Vec<(Caption, Fault)> = match caption {
            Caption::One { object, place } => {
                let other_shape = Shape::ALL
                    .into_iter()
                    .find(|&s| s != object.shape)
                    .expect("another shape");
                let other_size = if truth.size == Size::Small {
                    Size::Big
                } else {
                    Size::Small
                };
                let opposite = match place {
                    Some(Place::Left) => Some(Place::Right),
                    Some(Place::Right) => Some(Place::Left),
                    Some(Place::Top) => Some(Place::Bottom),
                    Some(Place::Bottom) => Some(Place::Top),
                    Some(Place::Center) | None => None,
                };
                let mut v = vec![
                    (
                        Caption::One {
                            object: named(object.size, other_color, object.shape),
                            place,
                        },
                        Fault::Color,
                    ),
                    (
                        Caption::One {
                            object: named(object.size, object.color, other_shape),
                            place,
                        },
                        Fault::Shape,
                    ),
                    (
                        Caption::One {
                            object: named(Some(other_size), object.color, object.shape),
                            place,
                        },
                        Fault::Size,
                    ),
                    // two objects named, one drawn
                    (
                        Caption::Two {
                            a: object,
                            relation: Relation::Above,
                            b: named(None, other_color, Shape::Circle),
                        },
                        Fault::Count,
                    ),
                ];
                if let Some(p) = opposite {
                    v.push((
                        Caption::One {
                            object,
                            place: Some(p),
                        },
                        Fault::Place,
                    ));
                }
                v
            }
            Caption::Two { a, relation, b } => {
                let flipped = match relation {
                    Relation::Above => Relation::Below,
                    Relation::Below => Relation::Above,
                    Relation::LeftOf => Relation::RightOf,
                    Relation::RightOf => Relation::LeftOf,
                };
                let mut v = vec![
                    (
                        Caption::Two {
                            a: named(a.size, other_color, a.shape),
                            relation,
                            b,
                        },
                        Fault::Color,
                    ),
                    (
                        Caption::One {
                            object: a,
                            place: None,
                        },
                        Fault::Count,
                    ),
                ];
                // swapping the objects or the relation is wrong unless both objects look alike
                if (a.color, a.shape) != (b.color, b.shape) {
                    v.push((
                        Caption::Two {
                            a,
                            relation: flipped,
                            b,
                        },
                        Fault::Order,
                    ));
                    v.push((
                        Caption::Two {
                            a: b,
                            relation,
                            b: a,
                        },
                        Fault::Order,
                    ));
                }
                // the colours trade places between two different shapes
                if a.color != b.color && a.shape != b.shape {
                    v.push((
                        Caption::Two {
                            a: named(a.size, b.color, a.shape),
                            relation,
                            b: named(b.size, a.color, b.shape),
                        },
                        Fault::Binding,
                    ));
                }
                v
            }
        };
        assert!(
            judge(&image, &caption).correct(),
            "the true caption {:?}",
            caption.text()
        );
        for (w, fault) in wrong {
            let v = judge(&image, &w);
            assert!(
                !v.correct(),
                "{:?} accepted for an image of {:?}",
                w.text(),
                caption.text()
            );
            assert_eq!(
                v.fault,
                Some(fault),
                "{:?} for an image of {:?}: {}",
                w.text(),
                caption.text(),
                v.reason
            );
            checked += 1;
        }
    }
    assert!(checked > 1000);
}

#[test]
fn an_empty_or_noisy_canvas_is_rejected() {
    let caption = Caption::parse("a red circle").expect("grammar");
    let black = lumina_shapes::Image::black(Canvas::square(32));
    assert_eq!(judge(&black, &caption).fault, Some(Fault::Count));
    // a few stray red pixels are noise, not an object
    let mut speck = black.clone();
    for i in 0..4 {
        speck.rgb[3 * (100 + i)] = 230;
    }
    assert!(lumina_shapes::judge::detect(&speck).is_empty());
}

#[test]
fn evaluation_lists_are_judged_correct_when_rendered() {
    let prompts = evaluation_prompts(25, &mut StdRng::seed_from_u64(4));
    let mut rng = StdRng::seed_from_u64(5);
    for (i, c) in prompts.iter().enumerate() {
        let image = render(&sample_scene(
            c,
            Canvas::new(48 + 16 * (i % 3), 48),
            &mut rng,
        ));
        assert!(
            judge(&image, c).correct(),
            "{} ({:?})",
            c.text(),
            PromptKind::of(c)
        );
    }
}
