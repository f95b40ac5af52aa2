//! The one error type of the library. Every variant names what the user can act on: the file,
//! the tensor key, the expected and the actual shape, the allowed range.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Files and folders ===
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },

    #[error("{dir} has no config.json (expected a diffusers model folder such as `transformer/`)")]
    MissingConfig { dir: PathBuf },

    #[error("{dir} has no weights: expected `*.safetensors` or a `*.safetensors.index.json`")]
    NoWeights { dir: PathBuf },

    #[error("{path}: not a valid safetensors file ({reason})")]
    Safetensors { path: PathBuf, reason: String },

    #[error("{path}: not a valid GGUF file ({reason})")]
    Gguf { path: PathBuf, reason: String },

    // === Configuration ===
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("{path}: unknown model class `{class}` (this build knows: {known})")]
    UnknownModelClass {
        path: PathBuf,
        class: String,
        known: String,
    },

    #[error("invalid config: {field} = {value} ({reason})")]
    InvalidConfig {
        field: &'static str,
        value: String,
        reason: String,
    },

    // === Weights ===
    #[error("tensor `{key}` is missing from {files}")]
    MissingTensor { key: String, files: String },

    #[error("tensor `{key}` in {file}: expected shape {expected:?}, got {got:?}")]
    TensorShape {
        key: String,
        file: PathBuf,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("tensor `{key}` in {file}: unsupported stored dtype {dtype}")]
    TensorDtype {
        key: String,
        file: PathBuf,
        dtype: String,
    },

    #[error("ternary weight `{key}`: expected {expected}, got {got}")]
    Ternary {
        key: String,
        expected: String,
        got: String,
    },

    #[error("{what} holds NaN or infinite values{hint}")]
    NonFinite { what: String, hint: String },

    /// A solve stopped by its caller between two steps (a server's cancelled job).
    #[error("cancelled after solver step {step} of {steps}")]
    Cancelled { step: usize, steps: usize },

    // === Call arguments ===
    #[error("{what}: expected {expected}, got {got}")]
    Input {
        what: &'static str,
        expected: String,
        got: String,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Whether every element of `t` is finite: `0·t` is zero exactly where `t` is finite and NaN
/// elsewhere, so its sum is 0 or NaN (a maximum would skip NaN).
pub fn all_finite(t: &candle_core::Tensor) -> Result<bool> {
    let zeros = t.to_dtype(candle_core::DType::F32)?.affine(0.0, 0.0)?;
    Ok(zeros.sum_all()?.to_scalar::<f32>()? == 0.0)
}

impl Error {
    /// The error's words without a stack trace. candle appends one to its errors when
    /// `RUST_BACKTRACE` is set (`candle_core::Error::bt`); a server's client or a summary line
    /// gets what went wrong, and the full `Display` stays for the log.
    pub fn message(&self) -> String {
        match self {
            Error::Candle(e) => candle_message(e),
            other => other.to_string(),
        }
    }

    /// A bad call argument; `expected` and `got` are shown verbatim.
    pub fn input(
        what: &'static str,
        expected: impl Into<String>,
        got: impl std::fmt::Display,
    ) -> Self {
        Self::Input {
            what,
            expected: expected.into(),
            got: got.to_string(),
        }
    }

    /// A config value outside its allowed range.
    pub fn invalid_config(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidConfig {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// A candle error as candle writes it, less every `WithBacktrace` layer's trace (candle
/// 0.11 `error.rs`: the context, path and backtrace wrappers nest around the cause).
fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as C;
    match e {
        C::WithBacktrace { inner, .. } => candle_message(inner),
        C::Context { inner, context } => format!("{context}\n{}", candle_message(inner)),
        C::WithPath { inner, path } => format!("path: {path:?} {}", candle_message(inner)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn a_message_keeps_candles_words_and_drops_its_backtrace() {
        let cause = candle_core::Error::Msg("narrow: 9 past the end of 4".into());
        let traced = candle_core::Error::WithBacktrace {
            inner: Box::new(cause),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let wrapped = super::Error::Candle(candle_core::Error::WithPath {
            inner: Box::new(traced.context("loading layer 3")),
            path: "w.safetensors".into(),
        });
        let full = wrapped.to_string();
        let message = wrapped.message();
        assert_eq!(
            message,
            "path: \"w.safetensors\" loading layer 3\nnarrow: 9 past the end of 4"
        );
        // the Display still carries the trace: the log keeps it
        assert!(
            full.starts_with(&message) && full.len() > message.len(),
            "{full}"
        );
        let plain = super::Error::input("steps", ">= 1", 0);
        assert_eq!(plain.message(), plain.to_string());
    }

    #[test]
    fn finiteness_sees_nan_and_both_infinities() -> super::Result<()> {
        for (bad, want) in [
            (1.5f32, true),
            (f32::NAN, false),
            (f32::INFINITY, false),
            (f32::NEG_INFINITY, false),
        ] {
            let t = Tensor::new(&[0.0f32, -3e38, bad], &Device::Cpu)?;
            assert_eq!(super::all_finite(&t)?, want, "{bad}");
            assert_eq!(
                super::all_finite(&t.to_dtype(DType::BF16)?)?,
                want,
                "bf16 {bad}"
            );
        }
        Ok(())
    }
}
