//! `POST /v1/images/generations`, OpenAI's images API: `prompt`, `n`, `size` ("WxH"),
//! `response_format` (only `b64_json`: this server keeps no files to link to), and the
//! extensions `negative_prompt`, `seed`, `steps`, `guidance`, `solver`. `model`, `quality`,
//! `style` and `user` are accepted and ignored, as clients send them; any other field is an
//! error naming it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::jobs::{openai_result, run_sync};
use super::{body, ApiError};
use crate::app::App;
use crate::spec::{Draft, Size, Spec};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    prompt: Option<String>,
    n: Option<i64>,
    size: Option<String>,
    response_format: Option<String>,
    negative_prompt: Option<String>,
    seed: Option<i64>,
    steps: Option<i64>,
    guidance: Option<f64>,
    solver: Option<String>,
    // sent by OpenAI clients; meaningless here
    #[serde(rename = "model")]
    _model: Option<Value>,
    #[serde(rename = "quality")]
    _quality: Option<Value>,
    #[serde(rename = "style")]
    _style: Option<Value>,
    #[serde(rename = "user")]
    _user: Option<Value>,
}

pub async fn generations(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec = spec(&app, body::parse(body)?)?;
    let (job, images) = run_sync(&app, spec).await?;
    Ok(Json(openai_result(&job, &images)))
}

/// The body checked against the model.
pub fn spec(app: &App, body: Body) -> Result<Spec, ApiError> {
    match body.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some("url") => {
            return Err(ApiError::bad(
                "response_format",
                "\"url\" is not served: this server keeps no image files; use \"b64_json\"",
            ))
        }
        Some(other) => {
            return Err(ApiError::bad(
                "response_format",
                format!("{other:?}: expected \"b64_json\""),
            ))
        }
    }
    Draft {
        prompt: ("prompt", body.prompt),
        negative_prompt: ("negative_prompt", body.negative_prompt),
        n: ("n", body.n),
        size: Size::Text("size", body.size),
        seed: ("seed", body.seed),
        steps: ("steps", body.steps),
        guidance: ("guidance", body.guidance),
        solver: ("solver", body.solver),
    }
    .check(&app.pipeline, &app.limits)
}
