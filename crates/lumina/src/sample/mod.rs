//! Flow-matching sampling: time grids, fixed-grid ODE solvers, classifier-free guidance and
//! time-aware RoPE, as pure functions over a [`VelocityField`].
//!
//! Nothing here knows a model: a pipeline wraps its model and conditioning into a
//! `VelocityField`, picks a [`Schedule`], a [`Solver`], a [`Guidance`] and a [`RopeSchedule`],
//! and calls [`sample`]. Randomness enters only through [`noise::gaussian`] and an RNG the
//! caller seeds.

mod field;
mod guidance;
pub mod noise;
mod projected;
mod rope_schedule;
mod schedule;
mod solver;
pub mod time;

pub use field::{TimePoint, VelocityField};
pub use guidance::{Channels, Guidance, Renorm, Truncation};
pub use projected::{cosine_weight, haar_lowpass, GuideSchedule, ProjectedFlow};
pub use rope_schedule::{AxisScale, FrameRope, RopeMethod, RopeSchedule, IMAX_NTK_FACTOR};
pub use schedule::{
    check_grid, grid_from_sigmas, shift_time, sigmoid_time, DynamicShift, Schedule,
    LUMINA_NEXT_SIGMOID,
};
pub use solver::{sample, sample_with, FiniteState, HookRef, Solver, StepDone, StepHook};
