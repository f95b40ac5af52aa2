//! The `shapes` task (spec: `shared/spec/shapes.md`, version 2): a small synthetic
//! text-to-image problem that can be judged exactly.
//!
//! - [`canvas`]: W × H canvases; lengths are fractions of S = min(W, H).
//! - [`caption`]: the vocabulary of the task — colours, shapes, sizes, places, relations —
//!   and the caption grammar, both ways (text ↔ structure).
//! - [`scene`]: objects on a canvas, sampled for a caption, deterministic from a seed.
//! - [`render`]: the anti-aliased renderer (4×4 supersampling) on any canvas.
//! - [`judge`]: the spec's judge: is this image correct for this caption?
//! - [`prompts`]: evaluation prompt lists and their kinds.
//! - [`clip`]: the video task (`shared/spec/shapes_video.md`): one object moving along an
//!   axis, its caption grammar, the clip sampler and the clip judge.
//!
//! Geometry: (0, 0) top left, x to the right as a fraction of W, y down as a fraction of H,
//! lengths in units of S = min(W, H).

pub mod canvas;
pub mod caption;
pub mod clip;
pub mod judge;
pub mod prompts;
pub mod render;
pub mod scene;

pub use canvas::Canvas;
pub use caption::{Caption, Color, Named, Place, Relation, Shape, Size};
pub use judge::{judge, Fault, Verdict};
pub use render::{render, Image};
pub use scene::{Object, Scene};

/// Errors of the task: a caption outside the grammar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("caption {caption:?} is not in the shapes grammar: {reason}")]
    Grammar { caption: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;
