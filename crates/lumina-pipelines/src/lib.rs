//! Text-to-image pipelines over diffusers model folders of Lumina-Next (`LuminaPipeline`) and
//! Lumina-Image-2.0 (`Lumina2Pipeline`): tokenizer, Gemma/Gemma-2 caption encoder, the
//! transformer and samplers of the `lumina` crate, and the VAE — identical to diffusers.

pub mod error;
pub mod family;
pub mod hub;
pub mod input;
pub mod inspect;
pub mod memory;
pub mod output;
pub mod parameters;
pub mod pipeline;
pub mod scheduler;
pub mod text_encoder;
pub mod tokenizer;
pub mod vae;
pub mod vae_decoder;
pub mod vae_encoder;

// moved to the core crate (the trainer reads them too); kept under their old paths here
pub use lumina::{extrapolation, pixel_model};

pub use error::{Error, Result};
pub use pipeline::{Family, Latents, Output, Pipeline, Request};
