//! What every handler shares: the pipeline (loaded once), the queue, the limits.

use std::sync::Arc;

use candle_core::DType;
use lumina_pipelines::Pipeline;

use crate::api::ApiError;
use crate::queue::{Job, Queue, Refused};
use crate::spec::{Limits, Spec};

pub struct App {
    pub pipeline: Pipeline,
    /// The model's name as given (`shapes`, a folder), shown in `parameters` and sd-models.
    pub model_name: String,
    pub dtype: DType,
    pub queue: Queue,
    pub limits: Limits,
    /// Seconds a client is told to wait before retrying a full queue.
    pub retry_after: u64,
    /// A job with exactly this prompt panics inside its worker: a fault to test that a panic
    /// fails only its own job (set through the library, never by a flag).
    pub panic_prompt: Option<String>,
}

impl App {
    pub fn new(
        pipeline: Pipeline,
        model_name: String,
        dtype: DType,
        queue_capacity: usize,
        limits: Limits,
    ) -> Self {
        Self {
            pipeline,
            model_name,
            dtype,
            queue: Queue::new(queue_capacity),
            limits,
            retry_after: 5,
            panic_prompt: None,
        }
    }

    /// Queues a checked spec; a full queue is a 429 with `Retry-After`.
    pub fn submit(self: &Arc<Self>, spec: Spec) -> Result<Arc<Job>, ApiError> {
        match self.queue.submit(spec) {
            Ok(job) => {
                tracing::info!(job = %job.id, waiting = self.queue.waiting(), "queued");
                Ok(job)
            }
            Err(e @ Refused::Full { .. }) => Err(ApiError::busy(e.to_string(), self.retry_after)),
            Err(e @ Refused::Closed) => Err(ApiError::unavailable(e.to_string())),
        }
    }
}
