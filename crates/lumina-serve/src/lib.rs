//! `lumina serve`: a Lumina pipeline behind HTTP. The model is loaded once and shared by the
//! worker threads; requests become jobs in a bounded FIFO queue (full: 429 with
//! `Retry-After`); each job ends exactly once — done, failed with its message, or cancelled —
//! and is cancelled when its synchronous client goes away. APIs: OpenAI's images API, the
//! AUTOMATIC1111 API, a jobs API with server-sent events, and a web page (README, Serve).

pub mod api;
pub mod app;
pub mod queue;
pub mod spec;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use app::App;
pub use spec::Limits;

/// How the server listens and runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub workers: usize,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Longest a request may take, end to end.
    pub timeout: Duration,
    /// At shutdown, how long running jobs may take to finish before they are cancelled.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            body_limit: 64 * 1024,
            timeout: Duration::from_secs(900),
            grace: Duration::from_secs(10),
        }
    }
}

/// What happened to the jobs alive at shutdown.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Running jobs that finished within the grace period.
    pub finished: Vec<String>,
    /// Jobs cancelled: the waiting ones, and running ones past the grace period.
    pub cancelled: Vec<String>,
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, cancels the
/// waiting jobs, lets running ones finish for `options.grace` (then cancels them), waits for
/// the workers and the open requests, and says what became of each job.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<ShutdownReport> {
    let workers = worker::spawn(app.clone(), options.workers.max(1))?;
    let router = api::router(app.clone(), options.body_limit, options.timeout);
    let (report_tx, report_rx) = tokio::sync::oneshot::channel();
    let drain_app = app.clone();
    let grace = options.grace;
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new jobs");
        let report = drain(drain_app, grace).await;
        let _ = report_tx.send(report);
    };
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .await?;
    let report = report_rx.await.unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
    })
    .await
    .map_err(std::io::Error::other)?;
    for id in &report.finished {
        tracing::info!(job = %id, "finished before shutdown");
    }
    for id in &report.cancelled {
        tracing::info!(job = %id, "cancelled by shutdown");
    }
    Ok(report)
}

/// Cancels the waiting jobs, then waits for running ones up to `grace`, cancelling those left.
async fn drain(app: Arc<App>, grace: Duration) -> ShutdownReport {
    let mut report = ShutdownReport::default();
    for job in app.queue.close("the server is shutting down") {
        report.cancelled.push(job.id.clone());
    }
    let running: Vec<_> = app
        .queue
        .all()
        .into_iter()
        .filter(|j| !j.state().is_finished())
        .collect();
    let deadline = tokio::time::Instant::now() + grace;
    for job in running {
        let mut states = job.subscribe();
        let ended =
            tokio::time::timeout_at(deadline, states.wait_for(queue::JobState::is_finished))
                .await
                .is_ok();
        if !ended {
            job.cancel();
            let _ = states.wait_for(queue::JobState::is_finished).await;
        }
        match job.state() {
            queue::JobState::Done { .. } | queue::JobState::Failed { .. } => {
                report.finished.push(job.id.clone())
            }
            _ => report.cancelled.push(job.id.clone()),
        }
    }
    report
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
