//! Caption encoders: Gemma (Lumina-Next) and Gemma-2 (Lumina-Image-2.0).

mod config;
mod gemma;

pub use config::{EmptyRows, EncoderConfig};
pub use gemma::GemmaEncoder;
