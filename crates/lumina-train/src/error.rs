//! Errors of training and evaluation.

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] lumina::Error),

    #[error(transparent)]
    Pipeline(#[from] lumina_pipelines::Error),

    #[error("training config: {0}")]
    Config(String),

    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        path: std::path::PathBuf,
        reason: String,
    },

    #[error("evaluation: {0}")]
    Eval(String),

    #[error("writing {path}: {reason}")]
    Write {
        path: std::path::PathBuf,
        reason: String,
    },

    #[error("training diverged at step {step}: loss {loss}")]
    Diverged { step: usize, loss: f32 },
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(lumina::Error::Candle(e))
    }
}
