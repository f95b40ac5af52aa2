//! Lumina-Next (Next-DiT) and Lumina-Image-2.0 flow diffusion transformers on candle,
//! numerically identical to diffusers, and the flow-matching sampling around them.
//!
//! # Time convention
//! Written down once, used everywhere ([`sample::time`]): **t = 0 is pure noise, t = 1 is
//! data**, `x_t = t·x1 + (1−t)·x0`, and the models predict the velocity `v = x1 − x0`.
//! Conventions of other tools (σ = 1 − t, timesteps ×1000) are converted at the edges.
//!
//! # Shape legend
//! `B` batch · `C` latent channels · `H`, `W` latent height and width · `p` patch size ·
//! `N` tokens · `D` model width · `Dc` conditioning width (min(D, 1024)) · `H`/`Hkv` query and
//! key/value heads (in attention) · `Dh` head width · `L` caption tokens · `Dcap` caption width.
//!
//! # Layout
//! - [`weights`]: safetensors model folders (mmap, sharded), GGUF files, checkpoint layouts
//!   as key maps, and seeded random weights, with a key audit.
//! - [`nn`]: the layers, each mirroring a diffusers module and its checkpoint keys.
//! - [`kernels`]: hand-written CPU kernels (tiled attention, peak probes) beside references.
//! - [`rope`]: the RoPE tables of both families.
//! - [`models`]: [`models::NextDit`] and [`models::Lumina2Dit`], one forward each, and which
//!   checkpoint layout a file is in ([`models::layout`]).
//! - [`lora`]: LoRA files (upstream, diffusers/peft, kohya) matched to a model's layers.
//! - [`sample`]: time grids, ODE solvers, guidance — pure functions over a
//!   [`sample::VelocityField`].
//! - [`denoiser`]: a transformer plus its conditioning as a velocity field (CFG batching,
//!   time-aware RoPE).
//! - [`extrapolation`]: plans for sizes past the training canvas (RoPE scaling, I-Max's
//!   projected flow, time shift).
//! - [`word_encoder`] and [`pixel_model`]: the word-level caption encoder of the project's own
//!   pixel-space models and their folder format, shared by the pipelines and the trainer.
//!
//! # Example
//! Sample a 2048² latent from Lumina-Next at 30 midpoint steps, extrapolating from its 1024²
//! training size with time-aware RoPE and proportional attention:
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use lumina::sample::{noise, sample, Guidance, RopeSchedule, Schedule, Solver};
//! use lumina::{Caption, Denoiser, Transformer};
//! use rand::{rngs::StdRng, SeedableRng};
//!
//! # fn main() -> lumina::Result<()> {
//! let dev = Device::Cpu;
//! let model = Transformer::load_dir("Lumina-Next-SFT-diffusers/transformer".as_ref(), DType::F32, &dev)?;
//! // caption features come from the text encoder: (B, L, 2048) and a (B, L) mask
//! let (prompt, prompt_mask) = (Tensor::zeros((1, 12, 2048), DType::F32, &dev)?, Tensor::ones((1, 12), DType::U8, &dev)?);
//! let (empty, empty_mask) = (Tensor::zeros((1, 1, 2048), DType::F32, &dev)?, Tensor::ones((1, 1), DType::U8, &dev)?);
//! let denoiser = Denoiser {
//!     model: &model,
//!     cond: Caption::new(prompt, prompt_mask)?,
//!     uncond: Some(Caption::new(empty, empty_mask)?),
//!     guidance: Guidance::first_channels(4.0, 3), // Lumina-Next's CFG
//!     rope: RopeSchedule::time_aware(2048, 2048, 1024, 0.3)?,
//!     frame_rope: None,
//!     base_sequence_length: Some(4096),
//!     text_tiles: None,
//!     context_drop: None,
//!     cache: None,
//! };
//! let x0 = noise::gaussian(&[1, 4, 256, 256], DType::F32, &dev, &mut StdRng::seed_from_u64(42))?;
//! let grid = Schedule::Shifted { shift: 4.0 }.grid(30)?;
//! let latents = sample(&denoiser, x0, &grid, Solver::Midpoint)?; // (1, 4, 256, 256)
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod denoiser;
pub mod error;
pub mod extrapolation;
pub mod fixtures;
pub mod kernels;
pub mod lora;
pub mod models;
pub mod nn;
pub mod pixel_model;
pub mod resize;
pub mod rope;
pub mod sample;
pub mod weights;
pub mod word_encoder;

pub use denoiser::{Caption, Denoiser};
pub use error::{Error, Result};
pub use models::{
    DitInput, Lumina2Config, Lumina2Dit, NextDit, NextDitConfig, TextTiles, Transformer,
    TransformerConfig,
};
pub use rope::{AxisFactors, RopeFactors};
pub use weights::Weights;
