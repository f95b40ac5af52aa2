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

    /// Activations of ternary layers: `int8` (per-token, AVX-512 VNNI or AVX2; the fast path),
    /// `exact` (the trained model's own f32/bf16 numerics), or `auto` (int8 where the CPU has
    /// AVX2 or AVX-512 VNNI).
    #[arg(long, value_enum, default_value_t = TernaryActivationsArg::Auto, global = true)]
    pub ternary_activations: TernaryActivationsArg,

    /// How large f32 linear layers multiply: `strassen` (Strassen–Winograd: 7/8 of the
    /// multiplications per level, normwise-accurate to a few f32 ulps) or `classical`.
    /// Products too small to gain are always classical; training always is. The same switch
    /// turns the VAE's Winograd F(2×2, 3×3) convolutions back into im2col.
    #[arg(long, value_enum, default_value_t = F32MatmulArg::Strassen, global = true)]
    pub f32_matmul: F32MatmulArg,

    /// How GGUF block-quantised layers multiply: `dequantize` (each layer's matrix expanded
    /// as it runs, then the dense kernels: the weights' exact values) or `quantized` (candle's
    /// quantised-domain product, activations rounded to 8-bit blocks too).
    #[arg(long, value_enum, default_value_t = QuantizedPathArg::Dequantize, global = true)]
    pub quantized_matmul: QuantizedPathArg,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantizedPathArg {
    Dequantize,
    Quantized,
}

impl From<QuantizedPathArg> for lumina::nn::QuantizedPath {
    fn from(a: QuantizedPathArg) -> Self {
        match a {
            QuantizedPathArg::Dequantize => Self::Dequantize,
            QuantizedPathArg::Quantized => Self::Quantized,
        }
    }
}

/// How LoRA updates are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoraModeArg {
    Merged,
    Unmerged,
}

impl From<LoraModeArg> for lumina::nn::lora::LoraMode {
    fn from(a: LoraModeArg) -> Self {
        match a {
            LoraModeArg::Merged => Self::Merged,
            LoraModeArg::Unmerged => Self::Unmerged,
        }
    }
}

/// LoRA files and how they apply, shared by the commands that load a model.
#[derive(Debug, Args)]
pub struct LoraArgs {
    /// Apply a LoRA: `FILE` or `FILE:SCALE` (scale 1 by default; a negative one subtracts).
    /// Repeatable. Upstream (`diffusion_model.…`), diffusers/peft (`transformer.…`) and kohya
    /// (`lora_unet_…`, with alpha) layouts, for Lumina-Image-2.0 and Lumina-Next.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<String>,

    /// `merged`: added into the weights once at load (no cost per step); `unmerged`: kept
    /// apart and added to each layer's output (two thin products per layer; the weights are
    /// never touched, so a server can switch LoRAs between requests without reloading).
    #[arg(long, value_enum, default_value_t = LoraModeArg::Merged)]
    pub lora_mode: LoraModeArg,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images from a text prompt with a Lumina-Next or Lumina-Image-2.0 pipeline.
    Generate(Box<GenerateArgs>),
    /// Show what a model folder holds: config, parameters per component, stored dtypes, and
    /// the tensor keys a model lacks or leaves unused.
    Inspect(InspectArgs),
    /// Train a Next-DiT text-to-image model from scratch on the `shapes` task.
    Train(TrainArgs),
    /// Judge a model on the `shapes` task: accuracy overall and per prompt kind.
    Eval(Box<EvalArgs>),
    /// Measure this CPU's peak, then Next-DiT blocks and denoising steps at the 2B config.
    Bench(BenchArgs),
    /// Quantise a Next-DiT or Lumina-Image-2.0 transformer: to GGUF (`--to gguf-q8_0` …), or
    /// ternarise it after training (absmean, TerDiT's layers; a 2-bit packed checkpoint, for
    /// experiments — QAT (`lumina train --preset shapes-ternary`) keeps quality, post-training
    /// ternarisation mostly does not).
    Quantize(QuantizeArgs),
    /// Fit the step cache's rescaling polynomial to a model: sample a prompt list computing
    /// every step, record how much the first block's input and the block stack's output move
    /// between evaluations, and least-squares fit output change ≈ P(input change).
    CacheFit(CacheFitArgs),
    /// Serve a model over HTTP: OpenAI's images API, the AUTOMATIC1111 API, jobs with
    /// progress events, and a web page at `/`.
    Serve(Box<ServeArgs>),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub load: ModelArgs,

    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,

    /// Jobs that may wait; one more is refused with 429 and `Retry-After`.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,

    /// Jobs run at once (each already uses every core).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,

    /// Most images one request may ask for (`n`, `batch_size` × `n_iter`).
    #[arg(long, default_value_t = 4)]
    pub max_images: usize,

    /// Longest image side accepted, pixels (memory is checked too).
    #[arg(long, default_value_t = 2048)]
    pub max_side: usize,

    /// Most solver steps a request may ask for.
    #[arg(long, default_value_t = 200)]
    pub max_steps: usize,

    /// Longest prompt in tokens; longer prompts are refused, not cut.
    #[arg(long, default_value_t = 256)]
    pub max_sequence_length: usize,

    /// Largest request body, KiB.
    #[arg(long, default_value_t = 64)]
    pub body_limit_kib: usize,

    /// Longest a request may take, seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,

    /// At SIGINT/SIGTERM, seconds running jobs get to finish before they are cancelled.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct CacheFitArgs {
    /// A pixel-model folder or a built-in model (default `shapes`).
    #[arg(short, long)]
    pub model: Option<String>,

    /// Prompts, one caption per line (default: a generated list, `--per-kind` of each kind).
    #[arg(long)]
    pub prompts: Option<PathBuf>,

    /// Prompts of each kind in the generated list.
    #[arg(long, default_value_t = 4)]
    pub per_kind: usize,

    /// Seed of the generated prompt list (keep it apart from evaluation lists).
    #[arg(long, default_value_t = 101)]
    pub prompt_seed: u64,

    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,

    /// Degree of the polynomial. TeaCache fits 4 to its large models; on a small model the
    /// input changes span a narrow range (0.02–0.05 on `shapes`) where degree 4 overfits to
    /// huge coefficients for a 5 % lower residual, so 2 is the default.
    #[arg(long, default_value_t = 2)]
    pub degree: usize,

    /// Image width in pixels (default: the model's native size).
    #[arg(short = 'W', long)]
    pub width: Option<usize>,

    /// Image height in pixels (default: the model's native size).
    #[arg(short = 'H', long)]
    pub height: Option<usize>,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Also write the recorded (input change, output change) pairs to this JSON file.
    #[arg(long)]
    pub pairs: Option<PathBuf>,

    /// Write the coefficients into the model folder's `scheduler/scheduler_config.json`
    /// (`cache_coefficients`), where `generate` and `eval` find them.
    #[arg(long)]
    pub write: bool,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// A diffusers pipeline folder (its `transformer/` is quantised, the rest copied) or one
    /// transformer folder (with config.json); for `--to gguf-*` also any single transformer
    /// file `--transformer` takes.
    pub input: PathBuf,

    /// What to write (must not exist): a folder for `ternary`, a `.gguf` file for `gguf-*`.
    #[arg(short, long)]
    pub output: PathBuf,

    /// `ternary` (TerDiT's layers 2-bit, a diffusers folder), or a GGUF file in ComfyUI-GGUF's
    /// layout (upstream names; every matrix whose rows are whole blocks quantised, K-quants
    /// falling back to Q8_0 for rows of 32-blocks, the rest F32): `gguf-q8_0`, `gguf-q4_0`,
    /// `gguf-q4_1`, `gguf-q5_0`, `gguf-q5_1`, `gguf-q4_k`, `gguf-q5_k`, `gguf-q6_k`.
    #[arg(long, default_value = "ternary")]
    pub to: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TernaryActivationsArg {
    Auto,
    Exact,
    Int8,
}

impl From<TernaryActivationsArg> for lumina::kernels::ternary::Activations {
    fn from(a: TernaryActivationsArg) -> Self {
        match a {
            TernaryActivationsArg::Auto => Self::Auto,
            TernaryActivationsArg::Exact => Self::Exact,
            TernaryActivationsArg::Int8 => Self::Int8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum F32MatmulArg {
    Strassen,
    Classical,
}

impl From<F32MatmulArg> for lumina::kernels::strassen::F32Matmul {
    fn from(a: F32MatmulArg) -> Self {
        match a {
            F32MatmulArg::Strassen => Self::Strassen,
            F32MatmulArg::Classical => Self::Classical,
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Image tokens per forward (square token grids: 256, 1024, 4096, …).
    #[arg(long, value_delimiter = ',', default_values_t = [256, 1024, 4096])]
    pub tokens: Vec<usize>,

    /// Weight formats, each measured in a process of its own (clean resident-memory figures).
    /// `ternary`: TerDiT's layers 2-bit ternary, the rest and the activations bf16; `q8_0`,
    /// `q4_k`: GGUF block-quantised linears, bf16 activations. Default: f32, bf16 and
    /// ternary; with `--pipeline`, f32 and bf16.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub dtype: Option<Vec<BenchDtype>>,

    /// The transformers to build (2B configs, random weights).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchModel::NextDit2b])]
    pub transformer: Vec<BenchModel>,

    /// Benchmark the whole text-to-image pipeline instead — text encoding, one step at batch
    /// 2, VAE decode, the total for 30 steps, peak resident memory — at the real configs of
    /// `lumina-next-sft` and `lumina-image-2` (random weights); name one or both, or none
    /// for both.
    #[arg(long, num_args = 0.., value_delimiter = ',')]
    pub pipeline: Option<Vec<String>>,

    /// Internal: with `--pipeline`, run one component in this process and print its JSON.
    #[arg(long, hide = true)]
    pub component: Option<String>,

    /// With `--pipeline`: image sizes in pixels (square).
    #[arg(long, value_delimiter = ',', default_values_t = [512, 1024])]
    pub sizes: Vec<usize>,

    /// Blocks of the model (default: the 2B config's 24); fewer for a quick look.
    #[arg(long)]
    pub layers: Option<usize>,

    /// Caption tokens the cross-attention reads (Lumina-Next's Gemma prompts: up to 128).
    #[arg(long, default_value_t = 128)]
    pub caption_tokens: usize,

    /// Timed forwards per size; the fastest counts.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,

    /// Also time the attention and the step with Context Drop's F × F key/value pooling
    /// (Lumina-Next's time-aware Context Drop, as in its noisy phase); 1 skips those rows.
    #[arg(long, default_value_t = 2)]
    pub context_drop: usize,

    /// Seconds each peak probe runs.
    #[arg(long, default_value_t = 1.0)]
    pub probe_seconds: f64,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Internal: run one dtype in this process and print its results as JSON.
    #[arg(long, hide = true)]
    pub child: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A diffusers pipeline folder (with model_index.json), one model folder (with
    /// config.json), one safetensors file, or a built-in model's name. Default: the built-in
    /// `shapes` model.
    pub dir: Option<String>,

    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// What `lumina bench` measures: a compute dtype, or ternary weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchDtype {
    F32,
    Bf16,
    F16,
    Ternary,
    /// GGUF Q8_0 linears (bf16 activations), as a ComfyUI-GGUF file keeps them.
    #[value(name = "q8_0")]
    Q8_0,
    /// GGUF Q4_K linears (bf16 activations).
    #[value(name = "q4_k")]
    Q4K,
}

/// The 2B transformers `lumina bench` builds (random weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchModel {
    /// Lumina-Next's Next-DiT 2B (24 blocks, 2304 wide, 8 kv heads).
    #[value(name = "next-dit-2b")]
    NextDit2b,
    /// Lumina-Image-2.0's Unified Next-DiT (26 blocks and 2 + 2 refiner blocks, 2304 wide).
    #[value(name = "lumina-image-2")]
    LuminaImage2,
}

/// Compute dtype of the models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl From<DtypeArg> for candle_core::DType {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Self::F32,
            DtypeArg::Bf16 => Self::BF16,
            DtypeArg::F16 => Self::F16,
        }
    }
}

/// ODE solver of the sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SolverArg {
    Euler,
    Midpoint,
    Heun,
    Rk4,
    /// Two-step Adams–Bashforth: second order at one evaluation per step.
    Ab2,
}

impl From<SolverArg> for lumina::sample::Solver {
    fn from(s: SolverArg) -> Self {
        match s {
            SolverArg::Euler => Self::Euler,
            SolverArg::Midpoint => Self::Midpoint,
            SolverArg::Heun => Self::Heun,
            SolverArg::Rk4 => Self::Rk4,
            SolverArg::Ab2 => Self::Ab2,
        }
    }
}

/// The model a command loads and how: shared by `generate` and `serve`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A diffusers pipeline folder, or a Hugging Face repo id (org/name[@revision]) already in
    /// the local cache (nothing is downloaded), or a built-in model: `shapes` (the default),
    /// `shapes-ternary` (trained with ternary QAT, 2-bit weights) or `shapes-video` (text to
    /// 8-frame clips).
    #[arg(short, long)]
    pub model: Option<String>,

    /// Use this transformer instead of the pipeline's own: a diffusers folder, or one file —
    /// upstream Lumina-Next `consolidated_ema.00-of-01.safetensors`, the upstream or ComfyUI
    /// Lumina-Image-2.0 single file (an all-in-one file gives its transformer), or a
    /// ComfyUI-GGUF `.gguf` (Q8_0 … Q6_K, kept quantised).
    #[arg(long)]
    pub transformer: Option<PathBuf>,

    #[command(flatten)]
    pub lora: LoraArgs,

    /// Check every weight for NaN and infinite values as it loads (components up to 512 MiB
    /// always are; this adds the large ones, a few seconds for a 2B model).
    #[arg(long)]
    pub check_weights: bool,

    /// Compute dtype of the text encoder and the transformer (weights stay in their stored
    /// dtype unless this is narrower).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub load: ModelArgs,

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

    /// ODE solver; midpoint, heun and rk4 evaluate the model 2, 2 and 4 times per step, euler
    /// and ab2 (two-step Adams–Bashforth, second order) once (default: the model's; euler for
    /// diffusers pipelines).
    #[arg(long, value_enum)]
    pub solver: Option<SolverArg>,

    /// Seed of the starting noise; image i of a run uses seed + i (default: random, printed).
    #[arg(short, long)]
    pub seed: Option<u64>,

    /// How many images.
    #[arg(short = 'k', long, default_value_t = 1)]
    pub num_images: usize,

    /// Output PNG; with several images out-0.png … out-{K-1}.png.
    #[arg(short, long, default_value = "output.png")]
    pub output: PathBuf,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Lumina-Image-2.0: system prompt put before the prompt.
    #[arg(long)]
    pub system_prompt: Option<String>,

    /// Lumina-Next: time at which time-aware RoPE switches from interpolation to NTK scaling
    /// when generating beyond the training size (diffusers default 1.0, upstream demo 0.3).
    #[arg(long, default_value_t = 1.0)]
    pub scaling_watershed: f64,

    /// Longest prompt in tokens; longer prompts are truncated with a warning.
    #[arg(long, default_value_t = 256)]
    pub max_sequence_length: usize,

    #[command(flatten)]
    pub extrapolation: ExtrapolationArgs,

    /// Start from this RGB PNG: img2img at its own size, or — with another -W/-H — upscaling,
    /// the image (resized) guiding I-Max's projected flow. Without -W/-H the image's size.
    #[arg(long)]
    pub init_image: Option<PathBuf>,

    /// With --init-image, in (0, 1]: how much of the schedule runs (the solve starts from the
    /// image noised to the time where the last `strength` of the steps begin). Default 0.6
    /// (Lumina-Next's img2img script) at the image's size, 1 when upscaling.
    #[arg(long)]
    pub strength: Option<f64>,

    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Time schedule, guidance window and the sampling accelerations, shared by `generate` and
/// `eval`; each overrides the model's default.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Lumina's time shift t/(s − (s−1)t) on a uniform grid (upstream default 4 for
    /// Lumina-Next, 6 for Lumina-Image-2.0); without it, the pipeline's own grid.
    #[arg(long, conflicts_with = "schedule")]
    pub shift: Option<f64>,

    /// Time schedule: `uniform`, `shift:S`, `sigmoid` (Lumina-Next's, µ 0.6, α 6, β 20) or
    /// `sigmoid:µ,α,β`.
    #[arg(long)]
    pub schedule: Option<String>,

    /// Guidance only for the first fraction of the steps (diffusers' `cfg_trunc_ratio`; 1:
    /// every step). Default: the model's (`shapes-video`: 0.5), else 1.
    #[arg(long)]
    pub cfg_trunc_ratio: Option<f64>,

    /// Renormalisation of the guided velocity: `off`, `rows` (diffusers Lumina2's
    /// `cfg_normalization`) or `clamp:K` (‖guided‖ ≤ K‖cond‖, Lumina-Image-2.0's `renorm_cfg`).
    #[arg(long, conflicts_with = "no_cfg_normalization")]
    pub cfg_renorm: Option<String>,

    /// Same as `--cfg-renorm off`.
    #[arg(long)]
    pub no_cfg_normalization: bool,

    /// Context Drop: keys and values of self-attention average-pooled over F × F windows of
    /// the token grid while t < T: `F` (T = 0.3) or `F:T`; `1` turns a model's default off.
    #[arg(long)]
    pub context_drop: Option<String>,

    /// Step caching (TeaCache) threshold, e.g. 0.1–0.5; 0 turns a model's default off.
    #[arg(long)]
    pub cache_threshold: Option<f64>,

    /// The cache's rescaling polynomial, comma-separated, highest power first (default:
    /// TeaCache's for Lumina-Next / Lumina-Image-2.0, the fitted one of a built-in model).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub cache_coefficients: Option<Vec<f64>>,

    /// Frames of each clip, for a video model (default: its training length); images are
    /// one frame.
    #[arg(long)]
    pub frames: Option<usize>,

    /// How a video model's frame axis goes past its training length: a RoPE rule, `pi`
    /// (position interpolation), `ntk`, `time-aware`, `frequency-aware`, `ntk-pi[:κ]`,
    /// `watershed[:τ]` or `none` (default: the model's, `pi`).
    #[arg(long)]
    pub frame_rope: Option<String>,

    /// Plain 1/sqrt(d) attention instead of proportional attention, where a model would scale
    /// it: Lumina-Next beyond its training size, a video model past its training length.
    #[arg(long)]
    pub no_proportional_attn: bool,
}

/// Going past the model's training size (resolution extrapolation). Without any of these
/// the model's own choice applies beyond its training size: for the built-in models the
/// method that measured best on the judge; for Lumina-Next diffusers' rule
/// (--scaling-watershed, proportional attention); for Lumina-Image-2.0 nothing.
#[derive(Debug, Args)]
pub struct ExtrapolationArgs {
    /// `none`; `imax` or `imax:cosine_decay|cosine_shift|constant` (I-Max: a native-size pass,
    /// then the target size guided by it through projected flow, with NTK∩PI RoPE,
    /// proportional attention, time shifting and text duplication); or a RoPE rule with
    /// proportional attention: `pi`, `ntk`, `time-aware`, `frequency-aware`, `ntk-pi[:κ]`,
    /// `watershed[:τ]`.
    #[arg(long)]
    pub extrapolation: Option<String>,

    /// Override the RoPE rule of the chosen method (same names as above).
    #[arg(long)]
    pub rope: Option<String>,

    /// How RoPE scale factors are measured: `area` (sqrt(W·H)/native on both axes, as
    /// Lumina-Next), `short-side` (min(W, H)/native), `per-axis` (each axis its own ratio).
    #[arg(long)]
    pub rope_scale_by: Option<String>,

    /// Projected-flow schedule (turns projected flow on): cosine_decay, cosine_shift, constant.
    #[arg(long)]
    pub projected_schedule: Option<String>,

    /// Haar levels of the low band projected flow takes from the guide (turns it on).
    #[arg(long)]
    pub haar_level: Option<usize>,

    /// Resolution-dependent time shift (the shift multiplied by the scale): true or false.
    #[arg(long)]
    pub time_shift: Option<bool>,

    /// Proportional attention under the chosen method: true or false.
    #[arg(long)]
    pub proportional_attention: Option<bool>,

    /// Lumina-Image-2.0: one caption copy per native-size tile (I-Max): true or false.
    #[arg(long)]
    pub text_duplication: Option<bool>,
}

impl ExtrapolationArgs {
    pub fn any(&self) -> bool {
        self.extrapolation.is_some()
            || self.rope.is_some()
            || self.rope_scale_by.is_some()
            || self.projected_schedule.is_some()
            || self.haar_level.is_some()
            || self.time_shift.is_some()
            || self.proportional_attention.is_some()
            || self.text_duplication.is_some()
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A named recipe: `shapes` (the shipped model), `shapes-ternary` (its ternary QAT), or the
    /// smoke tests `tiny`, `tiny-ternary` and `tiny-video` (4-frame clips).
    #[arg(long, default_value = "shapes", conflicts_with = "config")]
    pub preset: String,

    /// A TOML run config instead of a preset (see `--print-config` for the format).
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Run folder: checkpoint/, samples/, log.jsonl and, at the end, model/.
    #[arg(short, long, default_value = "runs/shapes")]
    pub out: PathBuf,

    /// Continue the run in `--out` from its checkpoint.
    #[arg(long)]
    pub resume: bool,

    /// Override the number of optimisation steps.
    #[arg(long)]
    pub steps: Option<usize>,

    /// Print the run config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Storage dtype of the exported model/ (the checkpoint stays f32). Computation runs in
    /// f32 either way; bf16 halves the files.
    #[arg(long, value_enum, default_value_t = DtypeArg::Bf16)]
    pub export_dtype: DtypeArg,

    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A pixel-model folder, a cached Hugging Face repo id, or a built-in model: `shapes` (the
    /// default), `shapes-ternary` or `shapes-video` (its clips go to the clip judge).
    #[arg(short, long)]
    pub model: Option<String>,

    /// Prompts, one caption per line (default: a generated list, `--per-kind` of each kind).
    #[arg(long)]
    pub prompts: Option<PathBuf>,

    /// Prompts of each kind in the generated list.
    #[arg(long, default_value_t = 25)]
    pub per_kind: usize,

    /// Seed of the generated prompt list.
    #[arg(long, default_value_t = 1)]
    pub prompt_seed: u64,

    /// Images per prompt.
    #[arg(long, default_value_t = 4)]
    pub seeds: usize,

    /// Seed of the first image.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Override the model's sampling steps.
    #[arg(long)]
    pub steps: Option<usize>,

    /// Override the model's guidance scale.
    #[arg(short, long)]
    pub guidance: Option<f64>,

    /// Override the model's solver.
    #[arg(long, value_enum)]
    pub solver: Option<SolverArg>,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Square images of this side (default: the model's native size).
    #[arg(long, conflicts_with_all = ["width", "height"])]
    pub size: Option<usize>,

    /// Image width in pixels (default: the model's native size).
    #[arg(short = 'W', long)]
    pub width: Option<usize>,

    /// Image height in pixels (default: the model's native size).
    #[arg(short = 'H', long)]
    pub height: Option<usize>,

    #[command(flatten)]
    pub extrapolation: ExtrapolationArgs,

    /// Write all images as one PNG: each prompt's seeds side by side, prompts in reading order.
    #[arg(long)]
    pub grid: Option<PathBuf>,

    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,

    /// List every wrong image and why.
    #[arg(long)]
    pub failures: bool,
}
