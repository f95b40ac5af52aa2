//! `lumina serve`: loads the model once, then serves it (crates/lumina-serve) until SIGINT or
//! SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::DType;
use lumina_serve::{App, Limits, ServeOptions};

use crate::cli::ServeArgs;
use crate::commands::{load_pipeline, model_dir};

pub fn run(args: &ServeArgs) -> Result<()> {
    if args.queue == 0 {
        anyhow::bail!("--queue must be at least 1");
    }
    if args.workers == 0 {
        anyhow::bail!("--workers must be at least 1");
    }
    let model = model_dir(args.load.model.as_deref())?;
    let dtype = DType::from(args.load.dtype);
    let pipeline = load_pipeline(&args.load, &model)?;
    let limits = Limits {
        max_images: args.max_images.max(1),
        max_side: args.max_side,
        max_steps: args.max_steps.max(1),
        max_sequence_length: args.max_sequence_length.max(1),
        ..Limits::default()
    };
    let app = Arc::new(App::new(pipeline, model.name, dtype, args.queue, limits));
    let options = ServeOptions {
        workers: args.workers,
        body_limit: args.body_limit_kib.saturating_mul(1024),
        timeout: Duration::from_secs(args.timeout.max(1)),
        grace: Duration::from_secs(args.grace),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let local = listener.local_addr()?;
        // stdout, so that a script (or a test) can read where to connect
        println!("serving {} on http://{local}/", app.model_name);
        tracing::info!(%local, queue = args.queue, workers = args.workers, "listening");
        let report =
            lumina_serve::serve(app, listener, options, lumina_serve::shutdown_signal()).await?;
        eprintln!(
            "stopped: {} running job(s) finished, {} cancelled{}",
            report.finished.len(),
            report.cancelled.len(),
            if report.cancelled.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.cancelled.join(", "))
            }
        );
        Ok(())
    })
}
