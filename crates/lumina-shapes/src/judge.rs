//! The spec's judge (version 2): given an image of W × H pixels, S = min(W, H) ≥ 32, and its
//! caption, correct or not.
//!
//! 1. Label each pixel with the nearest palette colour or black; farther than 60 from all of
//!    them, it stays unlabelled.
//! 2. Per colour, 4-connected components; fewer than 0.008·S² pixels is noise.
//! 3. Coverage by colour c in the component's box grown by 1: clip(p·c / c·c, 0, 1), 0 on
//!    pixels of another palette colour; mass, width (sum of column maxima), height.
//! 4. Shape by fill = mass / (width·height), aspect in [0.6, 1.6]: square ≥ 0.91, circle
//!    ≥ 0.69, triangle below.
//! 5. Size: max(width, height)/(2S) < 0.175 is small.
//! 6. Centroid: coverage-weighted mean of pixel centres, x over W and y over H.
//! 7. Positions and relations with the spec's thresholds.
//! 8. Correct when the object count matches and the named objects match distinct detected ones
//!    (colour, shape, size when named) with the position or relation holding.

use crate::caption::{Caption, Color, Named, Place, Relation, Shape, Size};
use crate::render::Image;

const UNLABELLED_DISTANCE: f64 = 60.0;
const NOISE_FRACTION: f64 = 0.008;

/// What a pixel is labelled as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Palette(Color),
    Black,
    Unlabelled,
}

/// An object the judge found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detected {
    pub color: Color,
    /// `None` when the aspect ratio rules a shape out.
    pub shape: Option<Shape>,
    pub size: Size,
    /// Centroid as (x / W, y / H).
    pub cx: f64,
    pub cy: f64,
    pub fill: f64,
}

/// The judge's answer, with what it saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub detected: Vec<Detected>,
    /// The kind of mistake (`None` when correct).
    pub fault: Option<Fault>,
    /// Why it is wrong (empty when correct).
    pub reason: String,
}

impl Verdict {
    pub fn correct(&self) -> bool {
        self.fault.is_none()
    }
}

/// What kind of mistake a wrong image makes: the first check of this list that fails. For
/// two objects each attribute is compared under both pairings of named and detected objects,
/// so an attribute drawn on the other object is a binding fault, not a missing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// More or fewer objects than named.
    Count,
    /// A named colour is not drawn.
    Color,
    /// A named shape is not drawn (or reads as none).
    Shape,
    /// A named size is not drawn.
    Size,
    /// Every named colour, shape and size is drawn, but not on the same objects.
    Binding,
    /// The objects are right and the relation holds the other way round.
    Order,
    /// The objects are right; the position or relation does not hold.
    Place,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Count,
        Fault::Color,
        Fault::Shape,
        Fault::Size,
        Fault::Binding,
        Fault::Order,
        Fault::Place,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Count => "count",
            Fault::Color => "color",
            Fault::Shape => "shape",
            Fault::Size => "size",
            Fault::Binding => "binding",
            Fault::Order => "order",
            Fault::Place => "place",
        }
    }
}

fn label(p: [u8; 3]) -> Label {
    let dist = |c: [u8; 3]| -> f64 {
        p.iter()
            .zip(c)
            .map(|(&a, b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let mut best = (Label::Black, dist([0, 0, 0]));
    for color in Color::ALL {
        let d = dist(color.rgb());
        if d < best.1 {
            best = (Label::Palette(color), d);
        }
    }
    if best.1 > UNLABELLED_DISTANCE {
        Label::Unlabelled
    } else {
        best.0
    }
}

/// Every object in `image`.
pub fn detect(image: &Image) -> Vec<Detected> {
    let (w, h) = (image.width, image.height);
    let s = w.min(h);
    let labels: Vec<Label> = (0..w * h)
        .map(|i| label(image.pixel(i % w, i / w)))
        .collect();
    let min_pixels = NOISE_FRACTION * (s * s) as f64;
    let mut seen = vec![false; w * h];
    let mut found = Vec::new();
    for start in 0..w * h {
        let Label::Palette(color) = labels[start] else {
            continue;
        };
        if seen[start] {
            continue;
        }
        // 4-connected flood fill
        let mut component = vec![start];
        seen[start] = true;
        let mut i = 0;
        while i < component.len() {
            let p = component[i];
            i += 1;
            let (x, y) = (p % w, p / w);
            let mut visit = |q: usize| {
                if !seen[q] && labels[q] == Label::Palette(color) {
                    seen[q] = true;
                    component.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < w {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - w);
            }
            if y + 1 < h {
                visit(p + w);
            }
        }
        if (component.len() as f64) < min_pixels {
            continue;
        }
        if let Some(d) = measure(image, &labels, &component, color) {
            found.push(d);
        }
    }
    found
}

fn measure(image: &Image, labels: &[Label], component: &[usize], color: Color) -> Option<Detected> {
    let (cw, ch) = (image.width, image.height);
    let s = cw.min(ch);
    let (mut x0, mut y0, mut x1, mut y1) = (cw, ch, 0, 0);
    for &p in component {
        let (x, y) = (p % cw, p / cw);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    // grown by 1 pixel, clipped to the canvas
    let (x0, y0, x1, y1) = (
        x0.saturating_sub(1),
        y0.saturating_sub(1),
        (x1 + 1).min(cw - 1),
        (y1 + 1).min(ch - 1),
    );
    let c = color.rgb().map(f64::from);
    let cc: f64 = c.iter().map(|v| v * v).sum();
    let coverage = |x: usize, y: usize| -> f64 {
        match labels[y * cw + x] {
            Label::Palette(other) if other != color => 0.0,
            _ => {
                let p = image.pixel(x, y).map(f64::from);
                (p.iter().zip(&c).map(|(a, b)| a * b).sum::<f64>() / cc).clamp(0.0, 1.0)
            }
        }
    };
    let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
    let mut cols = vec![0f64; w];
    let mut rows = vec![0f64; h];
    let (mut mass, mut mx, mut my) = (0.0, 0.0, 0.0);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let v = coverage(x, y);
            mass += v;
            mx += v * (x as f64 + 0.5);
            my += v * (y as f64 + 0.5);
            cols[x - x0] = cols[x - x0].max(v);
            rows[y - y0] = rows[y - y0].max(v);
        }
    }
    let (width, height): (f64, f64) = (cols.iter().sum(), rows.iter().sum());
    if mass <= 0.0 || width <= 0.0 || height <= 0.0 {
        return None;
    }
    let fill = mass / (width * height);
    let aspect = width / height;
    let by_fill = match fill {
        f if f >= 0.91 => Shape::Square,
        f if f >= 0.69 => Shape::Circle,
        _ => Shape::Triangle,
    };
    let shape = (0.6..=1.6).contains(&aspect).then_some(by_fill);
    let size = if width.max(height) / (2.0 * s as f64) < 0.175 {
        Size::Small
    } else {
        Size::Big
    };
    Some(Detected {
        color,
        shape,
        size,
        cx: mx / mass / cw as f64,
        cy: my / mass / ch as f64,
        fill,
    })
}

fn color_matches(named: &Named, d: &Detected) -> bool {
    named.color == d.color
}

fn shape_matches(named: &Named, d: &Detected) -> bool {
    Some(named.shape) == d.shape
}

fn size_matches(named: &Named, d: &Detected) -> bool {
    named.size.is_none_or(|s| s == d.size)
}

/// Does a detected object have a named object's attribute?
type AttributeCheck = fn(&Named, &Detected) -> bool;

/// The attribute checks in the order faults are reported.
const ATTRIBUTES: [(AttributeCheck, Fault); 3] = [
    (color_matches, Fault::Color),
    (shape_matches, Fault::Shape),
    (size_matches, Fault::Size),
];

fn matches(named: &Named, d: &Detected) -> bool {
    ATTRIBUTES.iter().all(|(check, _)| check(named, d))
}

fn place_holds(place: Place, d: &Detected) -> bool {
    match place {
        Place::Left => d.cx < 0.4,
        Place::Right => d.cx > 0.6,
        Place::Top => d.cy < 0.4,
        Place::Bottom => d.cy > 0.6,
        Place::Center => (d.cx - 0.5).abs() < 0.15 && (d.cy - 0.5).abs() < 0.15,
    }
}

fn relation_holds(relation: Relation, a: &Detected, b: &Detected) -> bool {
    match relation {
        Relation::Above => a.cy < b.cy - 0.1,
        Relation::Below => a.cy > b.cy + 0.1,
        Relation::LeftOf => a.cx < b.cx - 0.1,
        Relation::RightOf => a.cx > b.cx + 0.1,
    }
}

/// Is `image` a correct picture of `caption`?
pub fn judge(image: &Image, caption: &Caption) -> Verdict {
    let detected = detect(image);
    let named = caption.objects();
    let fault = if detected.len() != named.len() {
        Some(Fault::Count)
    } else {
        fault(caption, &detected)
    };
    let reason = match fault {
        None => String::new(),
        Some(Fault::Count) => format!(
            "{} object(s) detected, {} named",
            detected.len(),
            named.len()
        ),
        Some(f) => {
            let seen: Vec<String> = detected
                .iter()
                .map(|d| {
                    format!(
                        "{:?} {:?} {:?} at ({:.2}, {:.2}) fill {:.2}",
                        d.size, d.color, d.shape, d.cx, d.cy, d.fill
                    )
                })
                .collect();
            format!("{}: saw {}", f.name(), seen.join("; "))
        }
    };
    Verdict {
        detected,
        fault,
        reason,
    }
}

/// The fault of an image with as many objects as `caption` names (`None`: correct).
fn fault(caption: &Caption, detected: &[Detected]) -> Option<Fault> {
    match *caption {
        Caption::One { object, place } => {
            let d = &detected[0];
            ATTRIBUTES
                .iter()
                .find(|(check, _)| !check(&object, d))
                .map(|&(_, f)| f)
                .or_else(|| match place {
                    Some(p) if !place_holds(p, d) => Some(Fault::Place),
                    _ => None,
                })
        }
        Caption::Two { a, relation, b } => {
            // (index of a's object, index of b's object)
            const PAIRINGS: [(usize, usize); 2] = [(0, 1), (1, 0)];
            let pairs = |check: AttributeCheck, (i, j): (usize, usize)| {
                check(&a, &detected[i]) && check(&b, &detected[j])
            };
            let objects_right: Vec<(usize, usize)> = PAIRINGS
                .into_iter()
                .filter(|&p| pairs(matches, p))
                .collect();
            if objects_right
                .iter()
                .any(|&(i, j)| relation_holds(relation, &detected[i], &detected[j]))
            {
                None
            } else if objects_right
                .iter()
                .any(|&(i, j)| relation_holds(relation, &detected[j], &detected[i]))
            {
                Some(Fault::Order)
            } else if !objects_right.is_empty() {
                Some(Fault::Place)
            } else {
                Some(
                    ATTRIBUTES
                        .iter()
                        .find(|(check, _)| !PAIRINGS.into_iter().any(|p| pairs(*check, p)))
                        .map_or(Fault::Binding, |&(_, f)| f),
                )
            }
        }
    }
}
