//! Jobs: `POST /v1/jobs` (the OpenAI body) queues and answers at once with the id;
//! `GET /v1/jobs/{id}` polls; `GET /v1/jobs/{id}/events` streams server-sent events (queued,
//! step i/N, then done, failed or cancelled); `DELETE /v1/jobs/{id}` cancels between solver
//! steps. The synchronous endpoints run through `run_sync`, which cancels the job when the
//! client goes away.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use base64::Engine;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};

use super::{body, openai, ApiError};
use crate::app::App;
use crate::queue::{Image, Job, JobState};
use crate::spec::Spec;

/// Cancels its job when dropped before `disarm`: axum drops a handler's future when its
/// client disconnects, and the job then leaves the queue or stops between two solver steps.
pub struct CancelOnDrop {
    app: Arc<App>,
    job: Option<Arc<Job>>,
}

impl CancelOnDrop {
    pub fn new(app: Arc<App>, job: Arc<Job>) -> Self {
        Self {
            app,
            job: Some(job),
        }
    }

    pub fn disarm(mut self) {
        self.job = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            if self.app.queue.cancel(&job, "the client went away") {
                tracing::info!(job = %job.id, "client went away: cancelling");
            }
        }
    }
}

/// Queues `spec` and waits for its end; the images, or the job's failure as an error.
pub async fn run_sync(app: &Arc<App>, spec: Spec) -> Result<(Arc<Job>, Arc<Vec<Image>>), ApiError> {
    let job = app.submit(spec)?;
    let guard = CancelOnDrop::new(app.clone(), job.clone());
    let mut states = job.subscribe();
    let end = states
        .wait_for(JobState::is_finished)
        .await
        .map(|s| s.clone())
        .map_err(|_| ApiError::unavailable("the server stopped".into()))?;
    guard.disarm();
    match end {
        JobState::Done { images } => Ok((job, images)),
        other => Err(finished_error(&other)),
    }
}

/// The error a job that ended without images answers with.
fn finished_error(state: &JobState) -> ApiError {
    match state {
        JobState::Failed { message } => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            format!("generation failed: {message}"),
        ),
        JobState::Cancelled { reason } => ApiError::new(
            StatusCode::CONFLICT,
            None,
            format!("the job was cancelled ({reason})"),
        ),
        _ => ApiError::unavailable("the job did not finish".into()),
    }
}

pub async fn create(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = openai::spec(&app, body::parse(body)?)?;
    let job = app.submit(spec)?;
    Ok((StatusCode::ACCEPTED, Json(describe(&job, &job.state()))))
}

pub async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let jobs: Vec<Value> = app
        .queue
        .all()
        .iter()
        .map(|job| {
            let state = job.state();
            json!({ "id": job.id, "state": state.name(), "prompt": job.spec.prompt })
        })
        .collect();
    Json(json!({ "jobs": jobs }))
}

pub async fn status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find(&app, &id)?;
    Ok(Json(describe(&job, &job.state())))
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find(&app, &id)?;
    if !app.queue.cancel(&job, "cancelled by DELETE") {
        let state = job.state();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            Some("id"),
            format!("job {id} already ended: {}", state.name()),
        ));
    }
    tracing::info!(job = %job.id, "cancel requested");
    Ok(Json(describe(&job, &job.state())))
}

pub async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = find(&app, &id)?;
    let receiver = job.subscribe();
    // the current state first, then each change; the stream ends after the end state
    let stream = stream::unfold(
        (job, receiver, true, false),
        |(job, mut receiver, first, ended)| async move {
            if ended {
                return None;
            }
            if !first && receiver.changed().await.is_err() {
                return None;
            }
            let state = receiver.borrow_and_update().clone();
            let event = Event::default()
                .event(event_name(&state))
                .data(describe(&job, &state).to_string());
            let ended = state.is_finished();
            Some((Ok(event), (job, receiver, false, ended)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn event_name(state: &JobState) -> &'static str {
    match state {
        JobState::Running { .. } => "step",
        other => other.name(),
    }
}

fn find(app: &App, id: &str) -> Result<Arc<Job>, ApiError> {
    app.queue.get(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            Some("id"),
            format!("no job {id:?} (finished jobs are kept for a while, then forgotten)"),
        )
    })
}

/// A job as JSON: id, state, queue position or progress, and its result or error.
pub fn describe(job: &Job, state: &JobState) -> Value {
    let mut v = json!({
        "id": job.id,
        "state": state.name(),
        "created": job.created,
        "prompt": job.spec.prompt,
        "n": job.spec.n,
        "size": format!("{}x{}", job.spec.width, job.spec.height),
        "seed": job.spec.seed,
    });
    match state {
        JobState::Queued { position } => v["position"] = json!(position),
        JobState::Running { step, steps } => {
            v["progress"] = json!({ "step": step, "steps": steps })
        }
        JobState::Done { images } => v["result"] = openai_result(job, images),
        JobState::Failed { message } => v["error"] = json!({ "message": message }),
        JobState::Cancelled { reason } => v["reason"] = json!(reason),
    }
    v
}

/// `{"created", "data": [{"b64_json", "seed", "parameters"}]}`, OpenAI's answer.
pub fn openai_result(job: &Job, images: &[Image]) -> Value {
    let data: Vec<Value> = images
        .iter()
        .map(|image| {
            json!({
                "b64_json": base64::engine::general_purpose::STANDARD.encode(&image.png),
                "seed": image.seed,
                "parameters": image.parameters,
            })
        })
        .collect();
    json!({ "created": job.created, "data": data })
}
