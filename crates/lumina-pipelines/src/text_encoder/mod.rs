//! Caption encoders: Gemma (Lumina-Next), Gemma-2 (Lumina-Image-2.0), and a small word-level
//! encoder for closed vocabularies (the project's own `shapes` model).

mod config;
mod gemma;
pub mod word;

pub use config::{EmptyRows, EncoderConfig};
pub use gemma::GemmaEncoder;
pub use word::{WordEncoder, WordEncoderConfig, WordTokenizer};
