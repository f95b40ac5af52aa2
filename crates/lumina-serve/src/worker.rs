//! The workers: threads that take jobs from the queue in order and run them on the shared
//! pipeline. A job's hook reports each solver step and stops the solve between two steps once
//! the job is cancelled; a panic inside a job fails that job only.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use candle_core::{IndexOp, Tensor};
use lumina::sample::{StepDone, StepHook};
use lumina_pipelines::output::{encode_apng, encode_png, FRAME_MS};
use lumina_pipelines::parameters::{parameters, Provenance};

use crate::app::App;
use crate::queue::{Image, Job, JobState};

/// Starts `count` worker threads; each ends when the queue is closed and empty.
pub fn spawn(app: Arc<App>, count: usize) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..count)
        .map(|i| {
            let app = app.clone();
            std::thread::Builder::new()
                .name(format!("lumina-worker-{i}"))
                .spawn(move || {
                    while let Some(job) = app.queue.next() {
                        run(&app, &job);
                    }
                })
        })
        .collect()
}

/// Runs one job to its end state.
fn run(app: &App, job: &Job) {
    if job.cancel_requested() {
        job.set(JobState::Cancelled {
            reason: "cancelled while queued".into(),
        });
        tracing::info!(job = %job.id, "cancelled while queued");
        return;
    }
    let started = std::time::Instant::now();
    job.mark_started();
    let request = job.spec.request(&app.pipeline);
    job.set(JobState::Running {
        step: 0,
        steps: request.steps,
    });
    tracing::info!(job = %job.id, prompt = %job.spec.prompt, n = job.spec.n,
        width = job.spec.width, height = job.spec.height, "running");
    let outcome = catch_unwind(AssertUnwindSafe(
        || -> lumina_pipelines::Result<Vec<Image>> {
            if app.panic_prompt.as_deref() == Some(job.spec.prompt.as_str()) {
                panic!("the test fault of prompt {:?}", job.spec.prompt);
            }
            let out = app.pipeline.generate_with(&request, Progress { job })?;
            images(app, &request, job, &out.images, &out.truncated)
        },
    ));
    let seconds = started.elapsed().as_secs_f64();
    let next = match outcome {
        Ok(Ok(images)) => {
            tracing::info!(job = %job.id, seconds, "done");
            JobState::Done {
                images: Arc::new(images),
            }
        }
        Ok(Err(_)) if job.cancel_requested() => {
            tracing::info!(job = %job.id, seconds, "cancelled while running");
            JobState::Cancelled {
                reason: "cancelled while running".into(),
            }
        }
        Ok(Err(error)) => {
            // the log keeps candle's stack trace (when RUST_BACKTRACE asks for one), the
            // client gets the words
            tracing::warn!(job = %job.id, %error, "failed");
            JobState::Failed {
                message: error.message(),
            }
        }
        Err(panic) => {
            let message = panic_text(&*panic);
            tracing::error!(job = %job.id, %message, "panicked");
            JobState::Failed {
                message: format!("internal error: {message}"),
            }
        }
    };
    job.set(next);
}

/// The PNGs (APNGs for a clip model) of a finished call, each with its `parameters` text.
fn images(
    app: &App,
    request: &lumina_pipelines::Request,
    job: &Job,
    images: &Tensor,
    truncated: &[String],
) -> lumina_pipelines::Result<Vec<Image>> {
    let provenance = Provenance {
        model: &app.model_name,
        dtype: app.dtype,
        extra: Vec::new(),
        truncated,
    };
    (0..job.spec.n)
        .map(|i| {
            let text = parameters(&app.pipeline, request, job.spec.seed, i, &provenance);
            // a clip model's output is (F, H, W, 3): an animated PNG, still `image/png`
            let png = match app.pipeline.makes_clips() {
                true => encode_apng(&images.i(i)?, FRAME_MS, &text)?,
                false => encode_png(&images.i(i)?, &text)?,
            };
            Ok(Image {
                png,
                parameters: text,
                seed: job.spec.seed + i as u64,
            })
        })
        .collect()
}

/// Reports each step and stops a cancelled job between two steps.
struct Progress<'a> {
    job: &'a Job,
}

impl StepHook for Progress<'_> {
    fn after_step(&mut self, x: Tensor, done: StepDone) -> lumina::Result<Tensor> {
        if self.job.cancel_requested() {
            return Err(lumina::Error::Cancelled {
                step: done.step + 1,
                steps: done.steps,
            });
        }
        self.job.set(JobState::Running {
            step: done.step + 1,
            steps: done.steps,
        });
        Ok(x)
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a job panicked".into())
}
