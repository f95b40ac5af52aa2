//! Caption encoders: Gemma (Lumina-Next), Gemma-2 (Lumina-Image-2.0), and a small word-level
//! encoder for closed vocabularies (the project's own `shapes` model).

mod config;
mod gemma;

pub use config::{EmptyRows, EncoderConfig};
pub use gemma::GemmaEncoder;
// the word-level encoder lives in the core crate (the trainer builds it too)
pub use lumina::word_encoder as word;
pub use word::{WordEncoder, WordEncoderConfig, WordTokenizer};
