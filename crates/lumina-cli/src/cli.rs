//! The command line, as clap types only; `///` comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Lumina-Next and Lumina-Image-2.0 flow diffusion transformers in Rust.
#[derive(Debug, Parser)]
#[command(name = "lumina", version)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a model folder holds: config, parameters per component, stored dtypes, and
    /// the tensor keys a model lacks or leaves unused.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A diffusers pipeline folder (with model_index.json) or one model folder (with config.json).
    pub dir: PathBuf,

    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
}
