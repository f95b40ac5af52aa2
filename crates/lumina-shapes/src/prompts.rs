//! Evaluation prompt lists, and the kind each prompt is scored under.

use rand::Rng;

use crate::caption::{Caption, Relation};
use crate::clip::{sample_clip_caption, ClipCaption, Direction};
use crate::scene::{sample_caption, CaptionMix};

/// The kind a prompt is reported under; a prompt with a held-out pair counts as held-out
/// whatever its structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PromptKind {
    /// One object, anywhere.
    Single,
    /// One object at a named position.
    Position,
    /// Two objects in a relation.
    Relation,
    /// Any caption naming a colour–shape pair never seen in training.
    HeldOut,
}

impl PromptKind {
    pub const ALL: [PromptKind; 4] = [
        PromptKind::Single,
        PromptKind::Position,
        PromptKind::Relation,
        PromptKind::HeldOut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PromptKind::Single => "single",
            PromptKind::Position => "position",
            PromptKind::Relation => "relation",
            PromptKind::HeldOut => "held-out pair",
        }
    }

    pub fn of(caption: &Caption) -> PromptKind {
        match caption {
            _ if caption.has_held_out() => PromptKind::HeldOut,
            Caption::One { place: None, .. } => PromptKind::Single,
            Caption::One { place: Some(_), .. } => PromptKind::Position,
            Caption::Two { .. } => PromptKind::Relation,
        }
    }
}

/// `per_kind` distinct prompts of each kind, drawn from the full grammar (held-out pairs
/// allowed); the relation prompts cycle through all four relations.
pub fn evaluation_prompts(per_kind: usize, rng: &mut impl Rng) -> Vec<Caption> {
    let mix = CaptionMix {
        two_objects: 0.5,
        place: 0.5,
        size_named: 0.5,
        allow_held_out: true,
    };
    let mut out: Vec<Caption> = Vec::new();
    for kind in PromptKind::ALL {
        let mut taken = 0;
        let mut tries = 0;
        while taken < per_kind && tries < 100_000 {
            tries += 1;
            let c = sample_caption(rng, &mix);
            let wanted_relation = Relation::ALL[taken % Relation::ALL.len()];
            let relation_ok = match (kind, c) {
                (PromptKind::Relation, Caption::Two { relation, .. }) => {
                    relation == wanted_relation
                }
                _ => true,
            };
            if PromptKind::of(&c) == kind && relation_ok && !out.contains(&c) {
                out.push(c);
                taken += 1;
            }
        }
    }
    out
}

/// The kind a clip prompt is reported under: its direction, or held-out whatever its
/// direction when it names a colour–shape pair never seen in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClipKind {
    Moving(Direction),
    HeldOut,
}

impl ClipKind {
    pub const ALL: [ClipKind; 5] = [
        ClipKind::Moving(Direction::Left),
        ClipKind::Moving(Direction::Right),
        ClipKind::Moving(Direction::Up),
        ClipKind::Moving(Direction::Down),
        ClipKind::HeldOut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClipKind::Moving(d) => d.phrase(),
            ClipKind::HeldOut => "held-out pair",
        }
    }

    pub fn of(caption: &ClipCaption) -> ClipKind {
        match caption.object.is_held_out() {
            true => ClipKind::HeldOut,
            false => ClipKind::Moving(caption.direction),
        }
    }
}

/// `per_kind` distinct clip prompts of each kind (each direction, and held-out pairs moving
/// any way), sizes named half the time.
pub fn clip_evaluation_prompts(per_kind: usize, rng: &mut impl Rng) -> Vec<ClipCaption> {
    let mix = CaptionMix {
        size_named: 0.5,
        allow_held_out: true,
        ..CaptionMix::TRAINING
    };
    let mut out: Vec<ClipCaption> = Vec::new();
    for kind in ClipKind::ALL {
        let mut taken = 0;
        let mut tries = 0;
        while taken < per_kind && tries < 100_000 {
            tries += 1;
            let c = sample_clip_caption(rng, &mix);
            if ClipKind::of(&c) == kind && !out.contains(&c) {
                out.push(c);
                taken += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn clip_lists_are_balanced_and_distinct() {
        let prompts = clip_evaluation_prompts(6, &mut StdRng::seed_from_u64(0));
        assert_eq!(prompts.len(), 30);
        for kind in ClipKind::ALL {
            assert_eq!(
                prompts.iter().filter(|c| ClipKind::of(c) == kind).count(),
                6
            );
        }
        for (i, c) in prompts.iter().enumerate() {
            assert!(!prompts[..i].contains(c), "{} twice", c.text());
        }
    }

    #[test]
    fn lists_are_balanced_and_cover_every_relation() {
        let prompts = evaluation_prompts(8, &mut StdRng::seed_from_u64(0));
        assert_eq!(prompts.len(), 32);
        for kind in PromptKind::ALL {
            assert_eq!(
                prompts.iter().filter(|c| PromptKind::of(c) == kind).count(),
                8
            );
        }
        for r in Relation::ALL {
            assert!(prompts
                .iter()
                .any(|c| matches!(c, Caption::Two { relation, .. } if *relation == r)));
        }
    }
}
