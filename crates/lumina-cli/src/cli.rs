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
    /// Generate images from a text prompt with a Lumina-Next or Lumina-Image-2.0 pipeline.
    Generate(Box<GenerateArgs>),
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

/// Compute dtype of the models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

/// ODE solver of the sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SolverArg {
    Euler,
    Midpoint,
    Heun,
    Rk4,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A diffusers pipeline folder, or a Hugging Face repo id (org/name[@revision]) already in
    /// the local cache; nothing is downloaded.
    #[arg(short, long)]
    pub model: String,

    /// Use this transformer instead of the pipeline's own: a diffusers folder, or one
    /// safetensors file (e.g. upstream Lumina-Next `consolidated_ema.00-of-01.safetensors`).
    #[arg(long)]
    pub transformer: Option<PathBuf>,

    /// What to draw.
    #[arg(short, long)]
    pub prompt: String,

    /// What to steer away from (default: the empty prompt).
    #[arg(short, long, default_value = "")]
    pub negative_prompt: String,

    /// Image width in pixels, a multiple of 16 (default: the model's training size).
    #[arg(short = 'W', long)]
    pub width: Option<usize>,

    /// Image height in pixels, a multiple of 16 (default: the model's training size).
    #[arg(short = 'H', long)]
    pub height: Option<usize>,

    /// Solver steps (default: the model's; 30 for diffusers pipelines).
    #[arg(long)]
    pub steps: Option<usize>,

    /// Classifier-free guidance scale; 1 or less turns guidance off (default: the model's;
    /// 4 for diffusers pipelines).
    #[arg(short, long)]
    pub guidance: Option<f64>,

    /// ODE solver; midpoint, heun and rk4 evaluate the model 2, 2 and 4 times per step
    /// (default: the model's; euler for diffusers pipelines).
    #[arg(long, value_enum)]
    pub solver: Option<SolverArg>,

    /// Lumina's time shift t/(s − (s−1)t) on a uniform grid (upstream default 4 for
    /// Lumina-Next, 6 for Lumina-Image-2.0); without it, the pipeline's own grid.
    #[arg(long)]
    pub shift: Option<f64>,

    /// Seed of the starting noise; image i of a run uses seed + i (default: random, printed).
    #[arg(short, long)]
    pub seed: Option<u64>,

    /// How many images.
    #[arg(short = 'k', long, default_value_t = 1)]
    pub num_images: usize,

    /// Output PNG; with several images out-0.png … out-{K-1}.png.
    #[arg(short, long, default_value = "output.png")]
    pub output: PathBuf,

    /// Compute dtype of the text encoder and the transformer (weights stay in their stored
    /// dtype unless this is narrower).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,

    /// Lumina-Image-2.0: guidance only for the first fraction of steps.
    #[arg(long, default_value_t = 1.0)]
    pub cfg_trunc_ratio: f64,

    /// Lumina-Image-2.0: do not renormalise the guided velocity.
    #[arg(long)]
    pub no_cfg_normalization: bool,

    /// Lumina-Image-2.0: system prompt put before the prompt.
    #[arg(long)]
    pub system_prompt: Option<String>,

    /// Lumina-Next: time at which time-aware RoPE switches from interpolation to NTK scaling
    /// when generating beyond the training size (diffusers default 1.0, upstream demo 0.3).
    #[arg(long, default_value_t = 1.0)]
    pub scaling_watershed: f64,

    /// Lumina-Next: plain 1/sqrt(d) attention instead of proportional attention.
    #[arg(long)]
    pub no_proportional_attn: bool,

    /// Longest prompt in tokens; longer prompts are truncated with a warning.
    #[arg(long, default_value_t = 256)]
    pub max_sequence_length: usize,

    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}
