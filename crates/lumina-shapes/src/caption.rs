//! The task's vocabulary and caption grammar:
//!
//! - one object: `a [SIZE ]COLOR SHAPE[ POSITION]` — "a big red circle on the left"
//! - two objects: `a [SIZE ]COLOR SHAPE REL a [SIZE ]COLOR SHAPE` — "a blue square above a
//!   yellow triangle"
//!
//! The article is "an" before a vowel; lower case, single spaces, no punctuation.

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    Cyan,
    White,
}

impl Color {
    pub const ALL: [Color; 8] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
        Color::Cyan,
        Color::White,
    ];

    /// The palette colour in sRGB.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [230, 40, 40],
            Color::Green => [40, 200, 70],
            Color::Blue => [40, 90, 240],
            Color::Yellow => [240, 220, 30],
            Color::Purple => [160, 60, 220],
            Color::Orange => [250, 140, 20],
            Color::Cyan => [30, 210, 220],
            Color::White => [240, 240, 240],
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
            Color::Cyan => "cyan",
            Color::White => "white",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    Small,
    Big,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Big];

    /// Half-extent r in units of S: the bounding box is 2r × 2r.
    pub fn half_extent(self) -> f64 {
        match self {
            Size::Small => 0.13,
            Size::Big => 0.22,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Big => "big",
        }
    }
}

/// Where a single object is, with its nominal centre (before jitter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Left,
    Right,
    Top,
    Bottom,
    Center,
}

impl Place {
    pub const ALL: [Place; 5] = [
        Place::Left,
        Place::Right,
        Place::Top,
        Place::Bottom,
        Place::Center,
    ];

    pub fn centre(self) -> (f64, f64) {
        match self {
            Place::Left => (0.25, 0.5),
            Place::Right => (0.75, 0.5),
            Place::Top => (0.5, 0.25),
            Place::Bottom => (0.5, 0.75),
            Place::Center => (0.5, 0.5),
        }
    }

    pub fn phrase(self) -> &'static str {
        match self {
            Place::Left => "on the left",
            Place::Right => "on the right",
            Place::Top => "at the top",
            Place::Bottom => "at the bottom",
            Place::Center => "in the center",
        }
    }
}

/// How object A stands to object B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Relation {
    Above,
    Below,
    LeftOf,
    RightOf,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::Above,
        Relation::Below,
        Relation::LeftOf,
        Relation::RightOf,
    ];

    pub fn phrase(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
        }
    }

    /// Whether the relation runs along y (above/below) rather than x.
    pub fn vertical(self) -> bool {
        matches!(self, Relation::Above | Relation::Below)
    }
}

/// An object as a caption names it: the size only when the caption says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Named {
    pub size: Option<Size>,
    pub color: Color,
    pub shape: Shape,
}

impl Named {
    /// "a big red circle", "an orange square".
    pub fn phrase(&self) -> String {
        let words: Vec<&str> = self
            .size
            .map(Size::word)
            .into_iter()
            .chain([self.color.word(), self.shape.word()])
            .collect();
        let article = if words[0].starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {}", words.join(" "))
    }

    /// One of the four colour–shape pairs never drawn in training.
    pub fn is_held_out(&self) -> bool {
        is_held_out(self.color, self.shape)
    }
}

/// The pairs held out of every training image, in any role.
pub const HELD_OUT: [(Color, Shape); 4] = [
    (Color::Purple, Shape::Triangle),
    (Color::Orange, Shape::Square),
    (Color::Cyan, Shape::Circle),
    (Color::White, Shape::Triangle),
];

pub fn is_held_out(color: Color, shape: Shape) -> bool {
    HELD_OUT.contains(&(color, shape))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Caption {
    One {
        object: Named,
        place: Option<Place>,
    },
    Two {
        a: Named,
        relation: Relation,
        b: Named,
    },
}

impl Caption {
    pub fn objects(&self) -> Vec<Named> {
        match *self {
            Caption::One { object, .. } => vec![object],
            Caption::Two { a, b, .. } => vec![a, b],
        }
    }

    pub fn has_held_out(&self) -> bool {
        self.objects().iter().any(Named::is_held_out)
    }

    pub fn text(&self) -> String {
        match self {
            Caption::One {
                object,
                place: None,
            } => object.phrase(),
            Caption::One {
                object,
                place: Some(p),
            } => format!("{} {}", object.phrase(), p.phrase()),
            Caption::Two { a, relation, b } => {
                format!("{} {} {}", a.phrase(), relation.phrase(), b.phrase())
            }
        }
    }

    /// Parses a caption of the grammar (case and spacing as specified).
    pub fn parse(text: &str) -> Result<Caption> {
        let bad = |reason: &str| Error::Grammar {
            caption: text.to_string(),
            reason: reason.to_string(),
        };
        let words: Vec<&str> = text.split(' ').collect();
        let (a, rest) =
            parse_named(&words).ok_or_else(|| bad("expected `a [size] color shape` first"))?;
        if rest.is_empty() {
            return Ok(Caption::One {
                object: a,
                place: None,
            });
        }
        let joined = rest.join(" ");
        if let Some(place) = Place::ALL.into_iter().find(|p| joined == p.phrase()) {
            return Ok(Caption::One {
                object: a,
                place: Some(place),
            });
        }
        for relation in Relation::ALL {
            let n = relation.phrase().split(' ').count();
            if rest.len() > n && rest[..n].join(" ") == relation.phrase() {
                let (b, tail) = parse_named(&rest[n..])
                    .ok_or_else(|| bad("expected a second object after the relation"))?;
                if !tail.is_empty() {
                    return Err(bad("words after the second object"));
                }
                return Ok(Caption::Two { a, relation, b });
            }
        }
        Err(bad(
            "expected a position, a relation, or the end after the first object",
        ))
    }
}

/// `a|an [size] color shape` at the start of `words`, and the words after it.
pub(crate) fn parse_named<'a>(words: &'a [&'a str]) -> Option<(Named, &'a [&'a str])> {
    let (&article, mut rest) = words.split_first()?;
    let size = Size::ALL
        .into_iter()
        .find(|s| rest.first() == Some(&s.word()));
    if size.is_some() {
        rest = &rest[1..];
    }
    let color = Color::ALL
        .into_iter()
        .find(|c| rest.first() == Some(&c.word()))?;
    let shape = Shape::ALL
        .into_iter()
        .find(|s| rest.get(1) == Some(&s.word()))?;
    let named = Named { size, color, shape };
    // the article must be the right one for the next word
    (named.phrase().split(' ').next() == Some(article)).then_some((named, &rest[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_round_trips_and_uses_an_before_vowels() -> Result<()> {
        let c = Caption::Two {
            a: Named {
                size: Some(Size::Big),
                color: Color::Red,
                shape: Shape::Circle,
            },
            relation: Relation::LeftOf,
            b: Named {
                size: None,
                color: Color::Orange,
                shape: Shape::Square,
            },
        };
        assert_eq!(c.text(), "a big red circle to the left of an orange square");
        assert_eq!(Caption::parse(&c.text())?, c);
        let one = Caption::parse("a small white triangle at the bottom")?;
        assert!(one.has_held_out());
        assert_eq!(one.text(), "a small white triangle at the bottom");
        for bad in [
            "an red circle",
            "a red",
            "a red circle near a cat",
            "a red circle above",
            "a red circle on the left extra",
        ] {
            assert!(Caption::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
