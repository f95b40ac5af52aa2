//! One module per subcommand.

pub mod eval;
pub mod generate;
pub mod inspect;
pub mod train;

use std::path::PathBuf;

use anyhow::{bail, Result};
use lumina_pipelines::hub::resolve_model;

/// The model folder of `--model`, or the shipped default model.
pub fn model_dir(model: Option<&str>) -> Result<PathBuf> {
    match model {
        Some(spec) => Ok(resolve_model(spec)?),
        None => bail!("no --model given and this build ships no default model yet"),
    }
}
