//! One module per subcommand.

pub mod bench;
mod bench_pipeline;
pub mod cache_fit;
pub mod eval;
pub mod extrapolate;
pub mod generate;
pub mod inspect;
pub mod lora;
pub mod quantize;
pub mod sampling;
pub mod serve;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::Result;
use lumina_pipelines::hub::resolve_model;

use crate::default_model::BuiltIn;

/// A model folder and the name generation metadata gives it.
pub struct ModelChoice {
    pub dir: PathBuf,
    pub name: String,
}

/// The folder of `--model`: a built-in model's name (`shapes`, `shapes-ternary`) unless a
/// path of that name exists, else a folder or a cached Hugging Face repo id; the built-in
/// `shapes` model without `--model`.
pub fn model_dir(model: Option<&str>) -> Result<ModelChoice> {
    let built_in = |b: BuiltIn| -> Result<ModelChoice> {
        Ok(ModelChoice {
            dir: b.dir()?,
            name: b.display_name(),
        })
    };
    let Some(spec) = model else {
        return built_in(BuiltIn::Shapes);
    };
    match BuiltIn::from_name(spec).filter(|_| !Path::new(spec).exists()) {
        Some(b) => built_in(b),
        None => Ok(ModelChoice {
            dir: resolve_model(spec)?,
            name: spec.to_string(),
        }),
    }
}
