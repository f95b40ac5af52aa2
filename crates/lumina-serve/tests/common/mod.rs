//! The test server shared by the API tests and the browser test: `lumina serve`'s app with the
//! built-in `shapes` model on a free loopback port, and a PNG reader. Each test binary uses part.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use candle_core::{DType, Device};
use lumina_pipelines::Pipeline;
use lumina_serve::{App, Limits, ServeOptions, ShutdownReport};
use serde_json::Value;
use tokio::sync::oneshot;

pub fn model_dir() -> PathBuf {
    shipped("shapes")
}

/// A shipped model's folder under `models/`.
pub fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name)
}

pub struct Server {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<ShutdownReport>>,
    pub client: reqwest::Client,
}

impl Server {
    pub async fn start(queue: usize, configure: impl FnOnce(&mut App)) -> Result<Self> {
        Self::start_with(queue, ServeOptions::default(), configure).await
    }

    pub async fn start_with(
        queue: usize,
        options: ServeOptions,
        configure: impl FnOnce(&mut App),
    ) -> Result<Self> {
        Self::start_model("shapes", queue, options, configure).await
    }

    /// A server of the shipped model `name`.
    pub async fn start_model(
        name: &str,
        queue: usize,
        options: ServeOptions,
        configure: impl FnOnce(&mut App),
    ) -> Result<Self> {
        let pipeline = Pipeline::load(&shipped(name), DType::F32, &Device::Cpu)?;
        let mut app = App::new(pipeline, name.into(), DType::F32, queue, Limits::default());
        configure(&mut app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(lumina_serve::serve(
            Arc::new(app),
            listener,
            options,
            async {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self {
            base,
            stop: Some(stop),
            done,
            client,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self.client.post(self.url(path)).json(body).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.context("the answer is not JSON")?))
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self.client.get(self.url(path)).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.context("the answer is not JSON")?))
    }

    pub async fn stop(mut self) -> Result<ShutdownReport> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        Ok(tokio::time::timeout(Duration::from_secs(60), self.done).await???)
    }

    /// Polls a job until `done(state)` (bounded).
    pub async fn wait_job(&self, id: &str, done: impl Fn(&str) -> bool) -> Result<Value> {
        for _ in 0..600 {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await?;
            if done(job["state"].as_str().unwrap_or("")) {
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("job {id} did not reach the expected state in 30 s")
    }
}

/// The frame count of a base64 (A)PNG.
pub fn frames_of(b64: &Value) -> Result<u32> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64.as_str().context("not a string")?)?;
    let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
    Ok(reader
        .info()
        .animation_control()
        .map_or(1, |a| a.num_frames))
}

/// Decodes a base64 PNG: (width, height, parameters text).
pub fn png_of(b64: &Value) -> Result<(u32, u32, String)> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64.as_str().context("not a string")?)?;
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG size")?];
    reader.next_frame(&mut buf)?;
    let info = reader.info();
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .context("no parameters chunk")?;
    Ok((info.width, info.height, text))
}
