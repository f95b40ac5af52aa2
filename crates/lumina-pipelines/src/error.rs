//! Errors of the pipelines: everything the core library reports, plus what a model folder,
//! a tokenizer or a generation request can get wrong.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] lumina::Error),

    #[error("{dir}: the pipeline has no `{component}/` folder (model_index.json lists it)")]
    MissingComponent { dir: PathBuf, component: String },

    #[error("{path}: unknown {what} `{class}` (this build knows: {known})")]
    UnknownClass {
        path: PathBuf,
        what: &'static str,
        class: String,
        known: String,
    },

    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },

    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    #[error("model `{repo}` is not in the local Hugging Face cache ({cache}); download it first, e.g. `huggingface-cli download {repo}`, or pass a folder")]
    NotCached { repo: String, cache: PathBuf },

    #[error("{what}: expected {expected}, got {got}")]
    Request {
        what: &'static str,
        expected: String,
        got: String,
    },

    #[error("input image {path}: {reason}")]
    Input { path: PathBuf, reason: String },

    #[error("cannot write {path}: {reason}")]
    Output { path: PathBuf, reason: String },
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(lumina::Error::Candle(e))
    }
}

impl Error {
    /// The error's words without candle's stack trace ([`lumina::Error::message`]).
    pub fn message(&self) -> String {
        match self {
            Error::Core(e) => e.message(),
            other => other.to_string(),
        }
    }

    pub fn request(
        what: &'static str,
        expected: impl Into<String>,
        got: impl std::fmt::Display,
    ) -> Self {
        Error::Request {
            what,
            expected: expected.into(),
            got: got.to_string(),
        }
    }
}
