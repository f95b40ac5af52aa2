//! Training Next-DiT text-to-image models from scratch with flow matching, on the `shapes`
//! task, and judging them.
//!
//! - [`config`]: a run as one value (TOML file or preset).
//! - [`data`]: fresh `shapes` scenes each step, caption dropout, the task's vocabulary.
//! - [`optim`]: AdamW, warm-up + decay, gradient clipping, savable state; [`inplace`]: its
//!   one-pass update kernels.
//! - [`trainer`]: the loop, EMA, checkpoints with exact resume, export to a model folder.
//! - [`eval`]: generate, judge, accuracy per prompt kind, sample grids.

pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod inplace;
pub mod optim;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Error, Result};
pub use trainer::{StepStats, Trainer};
