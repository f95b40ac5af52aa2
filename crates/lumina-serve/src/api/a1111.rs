//! The AUTOMATIC1111 web UI API, as image plug-ins (Krita, Open WebUI, SillyTavern) call it:
//! `txt2img`, `progress`, `interrupt`, `sd-models`, `samplers` and `options`. Fields this
//! server has no use for (styles, hires fix, scripts …) are ignored, as A1111 itself ignores
//! those a script does not read; missing ones take the model's defaults, not A1111's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::jobs::run_sync;
use super::{body, ApiError};
use crate::app::App;
use crate::queue::JobState;
use crate::spec::{Draft, Size, Spec};

#[derive(Deserialize)]
pub struct Body {
    prompt: Option<String>,
    negative_prompt: Option<String>,
    steps: Option<i64>,
    cfg_scale: Option<f64>,
    width: Option<i64>,
    height: Option<i64>,
    seed: Option<i64>,
    batch_size: Option<i64>,
    n_iter: Option<i64>,
    sampler_name: Option<String>,
}

pub async fn txt2img(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec = spec(&app, body::parse(body)?)?;
    let request = spec.request(&app.pipeline);
    let (job, images) = run_sync(&app, spec.clone()).await?;
    let b64 = |png: &[u8]| base64::engine::general_purpose::STANDARD.encode(png);
    let parameters = json!({
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "steps": request.steps,
        "cfg_scale": request.guidance_scale,
        "width": spec.width,
        "height": spec.height,
        "seed": spec.seed,
        "batch_size": spec.n,
        "n_iter": 1,
        "sampler_name": request.solver.to_string(),
    });
    let info = json!({
        "prompt": spec.prompt,
        "all_prompts": vec![&spec.prompt; spec.n],
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": vec![&spec.negative_prompt; spec.n],
        "seed": spec.seed,
        "all_seeds": images.iter().map(|i| i.seed).collect::<Vec<_>>(),
        "width": spec.width,
        "height": spec.height,
        "sampler_name": request.solver.to_string(),
        "cfg_scale": request.guidance_scale,
        "steps": request.steps,
        "batch_size": spec.n,
        "sd_model_name": app.model_name,
        "job_timestamp": job.created,
        "infotexts": images.iter().map(|i| i.parameters.clone()).collect::<Vec<_>>(),
    });
    Ok(Json(json!({
        "images": images.iter().map(|i| b64(&i.png)).collect::<Vec<_>>(),
        "parameters": parameters,
        "info": info.to_string(),
    })))
}

/// The body checked against the model.
pub fn spec(app: &App, body: Body) -> Result<Spec, ApiError> {
    // A1111 makes n_iter batches of batch_size; here they are one call of their product
    let batch = match (body.batch_size, body.n_iter) {
        (None, None) => None,
        (b, i) => {
            let i = match i {
                Some(i) if i < 1 => {
                    return Err(ApiError::bad("n_iter", format!("{i}: must be at least 1")))
                }
                i => i.unwrap_or(1),
            };
            Some(b.unwrap_or(1).saturating_mul(i))
        }
    };
    Draft {
        prompt: ("prompt", body.prompt),
        negative_prompt: ("negative_prompt", body.negative_prompt),
        n: ("batch_size", batch),
        size: Size::Sides(body.width, body.height),
        seed: ("seed", body.seed),
        steps: ("steps", body.steps),
        guidance: ("cfg_scale", body.cfg_scale),
        solver: ("sampler_name", body.sampler_name),
    }
    .check(&app.pipeline, &app.limits)
}

/// The running job's progress, A1111's shape: `progress` in [0, 1], `eta_relative` in
/// seconds, and `state` with the step counts and the number of jobs.
pub async fn progress(State(app): State<Arc<App>>) -> Json<Value> {
    let jobs = app.queue.all();
    let live: Vec<_> = jobs.iter().filter(|j| !j.state().is_finished()).collect();
    let running = live.iter().find_map(|j| match j.state() {
        JobState::Running { step, steps } => Some((j, step, steps)),
        _ => None,
    });
    let (job, step, steps) = match running {
        Some((j, step, steps)) => (j.id.clone(), step, steps),
        None => (String::new(), 0, 0),
    };
    let progress = if steps > 0 {
        step as f64 / steps as f64
    } else {
        0.0
    };
    let elapsed = running.and_then(|(j, ..)| j.running_for()).unwrap_or(0.0);
    let eta = if progress > 0.0 {
        elapsed / progress - elapsed
    } else {
        0.0
    };
    Json(json!({
        "progress": progress,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": false,
            "job": job,
            "job_count": live.len(),
            "job_timestamp": running.map_or(0, |(j, ..)| j.created).to_string(),
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": null,
        "textinfo": null,
    }))
}

/// Stops the running job(s) between two steps, as A1111's Interrupt button does.
pub async fn interrupt(State(app): State<Arc<App>>) -> Json<Value> {
    for job in app.queue.all() {
        if matches!(job.state(), JobState::Running { .. }) && app.queue.cancel(&job, "interrupted")
        {
            tracing::info!(job = %job.id, "interrupted");
        }
    }
    Json(json!({}))
}

pub async fn sd_models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!([{
        "title": app.model_name,
        "model_name": app.model_name,
        "hash": null,
        "sha256": null,
        "filename": app.pipeline.dir.display().to_string(),
        "config": null,
    }]))
}

pub async fn samplers() -> Json<Value> {
    let ours = lumina::sample::Solver::ALL
        .iter()
        .map(|s| json!({ "name": s.to_string(), "aliases": [], "options": {} }));
    Json(Value::Array(ours.collect()))
}

pub async fn options(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "sd_model_checkpoint": app.model_name }))
}
