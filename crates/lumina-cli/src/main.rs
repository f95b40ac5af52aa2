//! `lumina`: the command-line front end of the Lumina library.

mod cli;
mod commands;
mod default_model;
mod format;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc, told never to return freed memory to the kernel (see the workspace Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e`; −1 means never purge.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // SAFETY: sets a process-wide allocator option before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    pin_thread_count();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    lumina::kernels::ternary::set_activations(cli.ternary_activations.into());
    lumina::kernels::strassen::set_f32_matmul(cli.f32_matmul.into());
    lumina::nn::set_quantized_path(cli.quantized_matmul.into());
    // a LUMINA_ISA that names no level is refused before anything runs on a guessed path
    if let Err(e) = lumina::kernels::Isa::cap_from_env() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match &cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Quantize(args) => commands::quantize::run(args),
        Command::CacheFit(args) => commands::cache_fit::run(args),
        Command::Serve(args) => commands::serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", each said once: a library error whose message
/// already quotes its source (`cannot read X: no such file`) would otherwise repeat it.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out += ": ";
        }
        out += &text;
    }
    out
}

/// candle asks for its thread count on every matmul (candle-core `utils::get_num_threads`), and
/// without `RAYON_NUM_THREADS` that means reading and parsing /proc/cpuinfo each time: 1.8 % of
/// a training step's CPU time on the shapes model at 16 px (perf). Its own default, computed
/// once and set, gives the same count for the cost of an environment lookup (rayon's own pool,
/// which reads the same variable, then also runs one thread per physical core).
fn pin_thread_count() {
    let set = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .is_some_and(|n| n > 0);
    if !set {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: called at the top of main, before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level `-v` picks.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
