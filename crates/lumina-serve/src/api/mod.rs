//! The HTTP surface: the router, and one module per API.

mod a1111;
mod body;
mod error;
mod jobs;
mod openai;
mod page;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::App;

pub use error::ApiError;
pub use jobs::{run_sync, CancelOnDrop};

/// What `POST /v1/images/generations` (and `/v1/jobs`) makes of a body: the checked settings
/// or the 4xx it answers (a fuzz target: crates/lumina-fuzz).
pub fn openai_spec(app: &App, bytes: &[u8]) -> Result<crate::spec::Spec, ApiError> {
    openai::spec(
        app,
        body::parse(Ok(axum::body::Bytes::copy_from_slice(bytes)))?,
    )
}

/// What `POST /sdapi/v1/txt2img` makes of a body, as [`openai_spec`].
pub fn a1111_spec(app: &App, bytes: &[u8]) -> Result<crate::spec::Spec, ApiError> {
    a1111::spec(
        app,
        body::parse(Ok(axum::body::Bytes::copy_from_slice(bytes)))?,
    )
}

/// Every route; bodies over `body_limit` bytes are refused with a 413.
pub fn router(app: Arc<App>, body_limit: usize, timeout: Duration) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/health", get(health))
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::status).delete(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/progress", get(a1111::progress))
        .route("/sdapi/v1/interrupt", post(a1111::interrupt))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/options", get(a1111::options))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

async fn health(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "status": "ok",
        "model": app.model_name,
        "queue": { "waiting": app.queue.waiting(), "capacity": app.queue.capacity() },
    }))
}
