//! The one interface samplers see: a velocity field.

use candle_core::Tensor;

use crate::error::Result;

/// Where in a solve an evaluation happens. `t` is the evaluation time (midpoints and
/// intermediate stages included); `step` the index of the solver step it belongs to, of
/// `steps`. Guidance rules that depend on the step count (diffusers' CFG truncation) read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimePoint {
    pub t: f64,
    pub step: usize,
    pub steps: usize,
}

/// `dx/dt = v(x, t)` in the project's convention (t = 0 noise → 1 data).
/// Implementations must not change observable state: a field is a function — with one
/// declared exception, a denoiser's step cache (`models::StepCache`), the memo of one solve.
pub trait VelocityField {
    fn velocity(&self, x: &Tensor, at: TimePoint) -> Result<Tensor>;
}

impl<F> VelocityField for F
where
    F: Fn(&Tensor, TimePoint) -> Result<Tensor>,
{
    fn velocity(&self, x: &Tensor, at: TimePoint) -> Result<Tensor> {
        self(x, at)
    }
}
