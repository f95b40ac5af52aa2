//! `lumina serve` on loopback with the built-in `shapes` model: both APIs end to end, the jobs
//! API and its events, cancellation, a panicking job, a full queue under 50 concurrent
//! requests, every kind of bad input, and shutdown. Each test starts its own server on a free
//! port and stops it; every wait is bounded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{frames_of, png_of, Server};
use lumina_serve::ServeOptions;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_a1111_end_to_end() -> Result<()> {
    let server = Server::start(4, |_| {}).await?;
    let (status, health) = server.get("/health").await?;
    ensure!(
        status == 200 && health["status"] == "ok",
        "health: {health}"
    );

    let (status, out) = server
        .post(
            "/v1/images/generations",
            &json!({"prompt": "a red circle", "n": 2, "size": "64x32", "seed": 7, "response_format": "b64_json", "model": "dall-e-3"}),
        )
        .await?;
    ensure!(status == 200, "openai: {status} {out}");
    let data = out["data"].as_array().context("data")?;
    ensure!(data.len() == 2, "two images: {out}");
    for (i, item) in data.iter().enumerate() {
        let (w, h, text) = png_of(&item["b64_json"])?;
        ensure!((w, h) == (64, 32), "size {w}x{h}");
        ensure!(text.starts_with("a red circle\n"), "parameters: {text}");
        ensure!(
            text.contains(&format!("Seed: {}", 7 + i)),
            "seed of image {i}: {text}"
        );
    }

    let (status, out) = server
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "a blue square", "width": 32, "height": 32, "seed": 3, "batch_size": 2, "cfg_scale": 3.0, "sampler_name": "Euler", "styles": [], "restore_faces": false}),
        )
        .await?;
    ensure!(status == 200, "txt2img: {status} {out}");
    let images = out["images"].as_array().context("images")?;
    ensure!(images.len() == 2, "two images");
    for b64 in images {
        let (w, h, _) = png_of(b64)?;
        ensure!((w, h) == (32, 32));
    }
    let info: Value = serde_json::from_str(out["info"].as_str().context("info is a string")?)?;
    ensure!(info["all_seeds"] == json!([3, 4]), "info: {info}");
    ensure!(
        out["parameters"]["cfg_scale"] == json!(3.0),
        "parameters: {}",
        out["parameters"]
    );

    let (status, progress) = server.get("/sdapi/v1/progress").await?;
    ensure!(
        status == 200 && progress["state"]["job_count"] == 0,
        "progress: {progress}"
    );
    let (_, models) = server.get("/sdapi/v1/sd-models").await?;
    ensure!(models[0]["model_name"] == "shapes", "sd-models: {models}");
    let (status, _) = server.post("/sdapi/v1/interrupt", &json!({})).await?;
    ensure!(status == 200);
    let page = server
        .client
        .get(server.url("/"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        page.contains("<form") && page.contains("/v1/jobs"),
        "the page"
    );
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_report_progress_events_and_cancel_queued_and_running() -> Result<()> {
    let server = Server::start(4, |_| {}).await?;
    // events of a short job: queued or step first, steps, then done with the images
    let (status, job) = server
        .post(
            "/v1/jobs",
            &json!({"prompt": "a green triangle", "size": "32x32", "seed": 1, "steps": 4}),
        )
        .await?;
    ensure!(status == 202, "create: {status} {job}");
    let id = job["id"].as_str().context("id")?.to_string();
    let text = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await?
        .text()
        .await?;
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    ensure!(
        events.last() == Some(&"done"),
        "events end with done: {events:?}"
    );
    ensure!(events.contains(&"step"), "step events: {events:?}");
    let done = server.wait_job(&id, |s| s == "done").await?;
    ensure!(
        done["result"]["data"].as_array().map(Vec::len) == Some(1),
        "{done}"
    );

    // a long job runs; the one behind it waits and is cancelled there, then the long one
    let long = json!({"prompt": "a red circle", "size": "256x256", "steps": 200, "n": 4});
    let (_, running) = server.post("/v1/jobs", &long).await?;
    let (_, queued) = server
        .post(
            "/v1/jobs",
            &json!({"prompt": "a red circle", "size": "32x32"}),
        )
        .await?;
    let running_id = running["id"].as_str().context("id")?.to_string();
    let queued_id = queued["id"].as_str().context("id")?.to_string();
    server.wait_job(&running_id, |s| s == "running").await?;
    let r = server
        .client
        .delete(server.url(&format!("/v1/jobs/{queued_id}")))
        .send()
        .await?;
    ensure!(r.status() == 200, "cancel queued: {}", r.status());
    let q = server.wait_job(&queued_id, |s| s == "cancelled").await?;
    ensure!(q["reason"] == "cancelled by DELETE", "{q}");
    let r = server
        .client
        .delete(server.url(&format!("/v1/jobs/{running_id}")))
        .send()
        .await?;
    ensure!(r.status() == 200, "cancel running: {}", r.status());
    let c = server.wait_job(&running_id, |s| s != "running").await?;
    ensure!(
        c["state"] == "cancelled" && c["reason"] == "cancelled while running",
        "{c}"
    );
    // cancelling again, or an unknown job, is an error that says so
    let r = server
        .client
        .delete(server.url(&format!("/v1/jobs/{running_id}")))
        .send()
        .await?;
    ensure!(r.status() == 409, "second cancel: {}", r.status());
    let (status, e) = server.get("/v1/jobs/job-999-0").await?;
    ensure!(status == 404 && e["error"]["field"] == "id", "{e}");
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_fails_alone_and_a_lost_client_cancels_its_job() -> Result<()> {
    let server = Server::start(4, |app| app.panic_prompt = Some("a red square".into())).await?;
    let (status, e) = server
        .post(
            "/v1/images/generations",
            &json!({"prompt": "a red square", "size": "32x32"}),
        )
        .await?;
    ensure!(status == 500, "panic: {status} {e}");
    let message = e["error"]["message"].as_str().unwrap_or("");
    ensure!(message.contains("internal error"), "{message}");
    let (status, _) = server
        .post(
            "/v1/images/generations",
            &json!({"prompt": "a red circle", "size": "32x32"}),
        )
        .await?;
    ensure!(status == 200, "the next job runs: {status}");

    // a synchronous client that gives up: its job is cancelled, not run to the end
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()?;
    let sent = impatient
        .post(server.url("/v1/images/generations"))
        .json(&json!({"prompt": "a blue circle", "size": "256x256", "steps": 200, "n": 4}))
        .send()
        .await;
    ensure!(
        sent.is_err(),
        "the long request should time out on the client"
    );
    let mut state = String::new();
    for _ in 0..600 {
        let (_, list) = server.get("/v1/jobs").await?;
        let job = list["jobs"]
            .as_array()
            .and_then(|j| j.iter().find(|j| j["prompt"] == "a blue circle").cloned())
            .context("the job is listed")?;
        state = job["state"].as_str().unwrap_or("").to_string();
        if state != "running" && state != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(state == "cancelled", "the abandoned job ended {state}");
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_against_a_queue_of_eight() -> Result<()> {
    let server = Arc::new(Server::start(8, |_| {}).await?);
    // a long job holds the worker, so exactly the first eight requests find room
    let long = json!({"prompt": "a red circle", "size": "256x256", "steps": 200, "n": 4});
    let (_, blocker) = server.post("/v1/jobs", &long).await?;
    let blocker = blocker["id"].as_str().context("id")?.to_string();
    server.wait_job(&blocker, |s| s == "running").await?;
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let server = server.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                let body =
                    json!({"prompt": "a red circle", "size": "32x32", "seed": i, "steps": 2});
                let r = server
                    .client
                    .post(server.url("/v1/images/generations"))
                    .json(&body)
                    .send()
                    .await?;
                let status = r.status().as_u16();
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let retry = r.headers().get("retry-after").is_some();
                let v: Value = r.json().await?;
                anyhow::Ok((status, retry, v))
            })
        })
        .collect();
    // once every request is queued or refused, free the worker
    for _ in 0..1500 {
        let (_, health) = server.get("/health").await?;
        let refused = answered.load(std::sync::atomic::Ordering::SeqCst);
        if health["queue"]["waiting"] == 8 && refused == 42 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = server
        .client
        .delete(server.url(&format!("/v1/jobs/{blocker}")))
        .send()
        .await?;
    ensure!(r.status() == 200, "cancel the blocker: {}", r.status());
    let (mut ok, mut busy) = (0, 0);
    for call in calls {
        let (status, retry, v) = call.await??;
        match status {
            200 => {
                png_of(&v["data"][0]["b64_json"])?;
                ok += 1;
            }
            429 => {
                ensure!(retry, "429 without Retry-After");
                ensure!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("queue is full")),
                    "{v}"
                );
                busy += 1;
            }
            other => bail!("status {other}: {v}"),
        }
    }
    ensure!(
        (ok, busy) == (8, 42),
        "{ok} answered with a PNG, {busy} refused; expected 8 and 42"
    );
    let server = Arc::into_inner(server).context("server still shared")?;
    server.stop().await?;
    Ok(())
}

/// ((path, body), expected status, expected field, what the message says).
type BadInput = (
    (&'static str, String),
    u16,
    Option<&'static str>,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_4xx_json_naming_the_field() -> Result<()> {
    let server = Server::start(4, |_| {}).await?;
    let gen = "/v1/images/generations";
    let a1111 = "/sdapi/v1/txt2img";
    let raw = |path: &'static str, body: &'static str| (path, body.to_string());
    let cases: Vec<BadInput> = vec![
        (raw(gen, "{\"prompt\": "), 400, None, "malformed JSON"),
        (raw(gen, "[1, 2]"), 400, None, "expected a JSON object, got an array"),
        (raw(gen, ""), 400, None, "empty"),
        (raw(gen, "{}"), 400, Some("prompt"), "required"),
        (raw(gen, "{\"prompt\": 5}"), 400, Some("prompt"), "invalid type"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"n\": \"2\"}"), 400, Some("n"), "invalid type"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"seeds\": 1}"), 400, Some("seeds"), "unknown field"),
        (raw(gen, "{\"prompt\": \"   \"}"), 400, Some("prompt"), "empty"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"size\": \"33x32\"}"), 400, Some("size"), "multiple of"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"size\": \"big\"}"), 400, Some("size"), "WIDTHxHEIGHT"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"size\": \"4096x4096\"}"), 400, Some("size"), "2048"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"n\": 0}"), 400, Some("n"), "1..=4"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"n\": 99}"), 400, Some("n"), "1..=4"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"steps\": 0}"), 400, Some("steps"), "1..=200"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"guidance\": 1000}"), 400, Some("guidance"), "0..=50"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"seed\": -5}"), 400, Some("seed"), "non-negative"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"solver\": \"ddim\"}"), 400, Some("solver"), "euler"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"response_format\": \"url\"}"), 400, Some("response_format"), "b64_json"),
        (raw(gen, "{\"prompt\": \"a purple dragon\"}"), 400, Some("prompt"), "vocabulary"),
        (raw(gen, "{\"prompt\": \"a red circle\", \"negative_prompt\": \"a dragon\"}"), 400, Some("negative_prompt"), "vocabulary"),
        (
            (gen, json!({"prompt": "a red circle to the left of a blue square above a green triangle to the right of a red circle"}).to_string()),
            400,
            Some("prompt"),
            "tokens",
        ),
        ((gen, json!({"prompt": "a ".repeat(2500)}).to_string()), 400, Some("prompt"), "characters"),
        ((gen, json!({"prompt": "x".repeat(100_000)}).to_string()), 413, None, "larger than"),
        (raw(a1111, "{\"prompt\": \"a red circle\", \"width\": 30}"), 400, Some("width"), "multiple of"),
        (raw(a1111, "{\"prompt\": \"a red circle\", \"height\": -32}"), 400, Some("height"), "1..=2048"),
        (raw(a1111, "{\"prompt\": \"a red circle\", \"batch_size\": 0}"), 400, Some("batch_size"), "1..=4"),
        (raw(a1111, "{\"prompt\": \"a red circle\", \"batch_size\": 2, \"n_iter\": 3}"), 400, Some("batch_size"), "1..=4"),
        (raw(a1111, "{\"prompt\": \"a red circle\", \"sampler_name\": \"DDIM\"}"), 400, Some("sampler_name"), "not a sampler"),
        (raw(a1111, "{\"prompt\": \"a red circle\", \"cfg_scale\": \"high\"}"), 400, Some("cfg_scale"), "invalid type"),
        (raw("/v1/jobs", "{\"prompt\": 1}"), 400, Some("prompt"), "invalid type"),
    ];
    let mut wrong = Vec::new();
    for ((path, body), status, field, says) in &cases {
        let r = server
            .client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let message = v["error"]["message"].as_str().unwrap_or("");
        let got_field = v["error"]["field"].as_str();
        let short: String = body.chars().take(60).collect();
        if got != *status || got_field != *field || !message.contains(says) {
            wrong.push(format!(
                "{path} {short:?}: got {got} field {got_field:?} {message:?}; expected {status} field {field:?} saying {says:?}"
            ));
        }
    }
    let (status, v) = server.get("/no/such/thing").await?;
    if status != 404 || v["error"]["message"].as_str().is_none() {
        wrong.push(format!("unknown path: {status} {v}"));
    }
    let r = server.client.get(server.url(gen)).send().await?;
    if r.status() != 405 {
        wrong.push(format!("GET {gen}: {}", r.status()));
    }
    ensure!(
        wrong.is_empty(),
        "{} of {} bad inputs answered wrongly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // the server is still serving
    let (status, _) = server
        .post(gen, &json!({"prompt": "a red circle", "size": "32x32"}))
        .await?;
    ensure!(status == 200);
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_waiting_jobs_and_says_which() -> Result<()> {
    let options = ServeOptions {
        grace: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let server = Server::start_with(4, options, |_| {}).await?;
    let long = json!({"prompt": "a red circle", "size": "256x256", "steps": 200, "n": 4});
    let (_, running) = server.post("/v1/jobs", &long).await?;
    let (_, waiting) = server.post("/v1/jobs", &long).await?;
    let running_id = running["id"].as_str().context("id")?.to_string();
    let waiting_id = waiting["id"].as_str().context("id")?.to_string();
    server.wait_job(&running_id, |s| s == "running").await?;
    let report = server.stop().await?;
    ensure!(
        report.cancelled.contains(&waiting_id) && report.cancelled.contains(&running_id),
        "{report:?}"
    );
    ensure!(report.finished.is_empty(), "{report:?}");
    Ok(())
}

/// A clip model answers with animated PNGs of its default length, its parameters with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_model_serves_animated_pngs() -> Result<()> {
    let server = Server::start_model("shapes-video", 2, ServeOptions::default(), |_| {}).await?;
    let (status, out) = server
        .post(
            "/v1/images/generations",
            &json!({"prompt": "a red circle moving up", "n": 1, "seed": 3, "response_format": "b64_json"}),
        )
        .await?;
    ensure!(status == 200, "openai: {status} {out}");
    let clip = &out["data"][0]["b64_json"];
    let (w, h, text) = png_of(clip)?;
    ensure!((w, h) == (32, 32), "size {w}x{h}");
    ensure!(frames_of(clip)? == 8, "the model's 8 frames");
    ensure!(text.contains("Frames: 8"), "parameters: {text}");
    server.stop().await?;
    Ok(())
}
