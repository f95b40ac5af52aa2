//! The web page in a real browser: headless Chromium, driven over the DevTools protocol, opens
//! `lumina serve`'s page, a prompt is typed and the button clicked with the mouse, and the image
//! appears — the same PNG the API gives for that seed. A refused size shows the server's message
//! on the page.
//!
//! Without a browser the test says so and passes, except under `CI=true`, where `.ci/run`
//! installs Debian's `chromium` and a missing one fails. `LUMINA_CHROMIUM` names another binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{png_of, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The browser binary: `LUMINA_CHROMIUM`, else the first of the usual names on `PATH`.
fn find_browser() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LUMINA_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|p| p.is_file())
}

/// A headless browser that is killed when the test ends, however it ends.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts the browser on a free DevTools port; returns it and that port.
    fn launch(binary: &Path) -> Result<(Self, u16)> {
        let profile = tempfile::tempdir()?;
        let child = Command::new(binary)
            .args([
                "--headless=new",
                // CI runs as root in a container: Chromium's sandbox needs user namespaces
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let browser = Self {
            child,
            _profile: profile,
        };
        // with port 0 the browser writes the port it took into the profile folder
        let file = browser._profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                    return Ok((browser, port));
                }
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "{} wrote no DevToolsActivePort in 60 s",
                binary.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page's DevTools connection: numbered commands, answers matched by id (events skipped).
struct Page {
    socket: Socket,
    next_id: u64,
}

impl Page {
    async fn open(client: &reqwest::Client, port: u16) -> Result<Self> {
        let targets: Value = client
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await?
            .json()
            .await?;
        let url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .with_context(|| format!("no page among the browser's targets: {targets}"))?;
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self { socket, next_id: 0 })
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket.send(Message::text(command.to_string())).await?;
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = self.socket.next().await {
                if let Message::Text(text) = message? {
                    let value: Value = serde_json::from_str(&text)?;
                    if value["id"] == id {
                        return Ok(value);
                    }
                }
            }
            bail!("the browser closed the connection")
        })
        .await
        .with_context(|| format!("{method}: no answer in 30 s"))??;
        if let Some(error) = answer.get("error") {
            bail!("{method}: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(thrown) = result.get("exceptionDetails") {
            bail!("`{expression}` threw {thrown}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `expression` until it is true (bounded); `what` names the wait in the failure.
    async fn wait_for(&mut self, expression: &str, seconds: u64, what: &str) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            if self.eval(expression).await? == json!(true) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = self
            .eval("document.getElementById('status').textContent")
            .await?;
        let error = self
            .eval("document.getElementById('error').textContent")
            .await?;
        bail!("{what}: not within {seconds} s (status {status}, error {error})")
    }

    /// Focuses a field, clears it and types `text` as keyboard input.
    async fn type_into(&mut self, id: &str, text: &str) -> Result<()> {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById('{id}'); e.focus(); e.select(); return true; }})()"
        ))
        .await?;
        self.call("Input.insertText", json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// A left click with the mouse at the centre of an element.
    async fn click(&mut self, id: &str) -> Result<()> {
        let rect = self
            .eval(&format!(
                "(() => {{ const r = document.getElementById('{id}').getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await?;
        let (x, y) = (
            rect[0].as_f64().context("x")?,
            rect[1].as_f64().context("y")?,
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_generates_an_image_in_a_browser() -> Result<()> {
    let Some(binary) = find_browser() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("no Chromium on PATH: .ci/run installs Debian's `chromium`; LUMINA_CHROMIUM names another");
        }
        eprintln!(
            "skipped: no Chromium on PATH (set LUMINA_CHROMIUM, or apt-get install chromium)"
        );
        return Ok(());
    };
    let server = Server::start(4, |_| {}).await?;
    let (browser, port) = Browser::launch(&binary)?;
    let mut page = Page::open(&server.client, port).await?;
    page.call("Page.navigate", json!({ "url": server.url("/") }))
        .await?;
    page.wait_for(
        // navigation answers before the new document exists: until then there is no element
        "document.getElementById('model')?.textContent === 'shapes'",
        30,
        "the page loading and naming the model",
    )
    .await?;

    page.type_into("prompt", "a red circle above a blue square")
        .await?;
    page.type_into("seed", "11").await?;
    page.click("generate").await?;
    page.wait_for(
        "document.getElementById('status').textContent === 'done'",
        120,
        "the generated image",
    )
    .await?;
    let shown = page
        .eval(
            "Array.from(document.querySelectorAll('#images img')).map(i => \
             [i.complete && i.naturalWidth, i.naturalHeight, i.src])",
        )
        .await?;
    let shown = shown.as_array().context("images")?;
    ensure!(
        shown.len() == 1,
        "one image on the page, got {}",
        shown.len()
    );
    let (width, height) = (shown[0][0].clone(), shown[0][1].clone());
    ensure!(
        width == json!(32) && height == json!(32),
        "the image decodes at 32x32 in the browser, got {width}x{height}"
    );
    let src = shown[0][2].as_str().context("src")?;
    let b64 = src
        .strip_prefix("data:image/png;base64,")
        .with_context(|| format!("the image is not an inline PNG: {:.60}", src))?;
    let (.., text) = png_of(&json!(b64))?;
    ensure!(
        text.starts_with("a red circle above a blue square\n") && text.contains("Seed: 11"),
        "the page's image carries the typed prompt and seed: {text}"
    );
    let (status, direct) = {
        let r = server
            .client
            .post(server.url("/v1/images/generations"))
            .json(&json!({"prompt": "a red circle above a blue square", "seed": 11}))
            .send()
            .await?;
        (r.status().as_u16(), r.json::<Value>().await?)
    };
    ensure!(status == 200, "the API: {status} {direct}");
    ensure!(
        direct["data"][0]["b64_json"] == json!(b64),
        "the page's image differs from the API's for the same prompt and seed"
    );
    let progress = page
        .eval(
            "[document.getElementById('progress').value, document.getElementById('progress').max]",
        )
        .await?;
    ensure!(
        progress[0] == progress[1] && progress[0].as_f64().unwrap_or(0.0) > 0.0,
        "the progress bar ends full: {progress}"
    );

    // a size off the model's grid: the server's refusal, naming the field, on the page
    page.type_into("width", "33").await?;
    page.click("generate").await?;
    page.wait_for(
        "document.getElementById('status').textContent === 'refused'",
        30,
        "the refusal of width 33",
    )
    .await?;
    let error = page
        .eval("document.getElementById('error').textContent")
        .await?;
    let error = error.as_str().unwrap_or("");
    ensure!(
        error.starts_with("size") && error.contains("33"),
        "the page shows the server's message naming the size: {error:?}"
    );
    drop(browser);
    server.stop().await?;
    Ok(())
}
