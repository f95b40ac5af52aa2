//! The judge against the renderer: the renderer's own images pass (≥ 0.98 at S = 32, all of
//! them at S = 48 and above), and captions that do not match their image are rejected.

use lumina_shapes::caption::{Caption, Color, Named, Place, Relation, Shape, Size};
use lumina_shapes::prompts::{evaluation_prompts, PromptKind};
use lumina_shapes::scene::{sample_caption, sample_scene, CaptionMix};
use lumina_shapes::{judge, render, Fault};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The full grammar, held-out pairs included.
const EVERYTHING: CaptionMix = CaptionMix {
    two_objects: 0.5,
    place: 0.5,
    size_named: 0.5,
    allow_held_out: true,
};

fn accuracy(side: usize, n: usize, seed: u64) -> (f64, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failures = Vec::new();
    for _ in 0..n {
        let caption = sample_caption(&mut rng, &EVERYTHING);
        let scene = sample_scene(&caption, &mut rng);
        let v = judge(&render(&scene, side), &caption);
        if !v.correct() {
            failures.push(format!("{}: {}", caption.text(), v.reason));
        }
    }
    (1.0 - failures.len() as f64 / n as f64, failures)
}

#[test]
fn renderer_images_score_at_least_098_at_side_32() {
    let (acc, failures) = accuracy(32, 2000, 1);
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
        let (acc, failures) = accuracy(side, 1000, 2);
        assert_eq!(
            acc,
            1.0,
            "side {side}: {:?}",
            &failures[..failures.len().min(5)]
        );
    }
}

fn named(size: Option<Size>, color: Color, shape: Shape) -> Named {
    Named { size, color, shape }
}

/// A caption changed in one attribute no longer describes the image.
#[test]
fn captions_that_do_not_match_their_image_are_rejected() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut checked = 0;
    for _ in 0..400 {
        let caption = sample_caption(&mut rng, &EVERYTHING);
        let scene = sample_scene(&caption, &mut rng);
        let image = render(&scene, 48);
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
    let black = lumina_shapes::Image::black(32);
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
    for c in &prompts {
        let image = render(&sample_scene(c, &mut rng), 48);
        assert!(
            judge(&image, c).correct(),
            "{} ({:?})",
            c.text(),
            PromptKind::of(c)
        );
    }
}
