//! One module per subcommand.

pub mod bench;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod quantize;
pub mod train;

use std::path::PathBuf;

use anyhow::Result;
use lumina_pipelines::hub::resolve_model;

use crate::default_model;

/// What the generation metadata names the built-in model.
pub const BUILT_IN_MODEL_NAME: &str = "lumina built-in shapes";

/// The model folder of `--model`, or the built-in `shapes` model.
pub fn model_dir(model: Option<&str>) -> Result<PathBuf> {
    match model {
        Some(spec) => Ok(resolve_model(spec)?),
        None => default_model::dir(),
    }
}
