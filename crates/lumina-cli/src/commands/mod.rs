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

use anyhow::{Context, Result};
use lumina_pipelines::hub::resolve_model;
use lumina_pipelines::pipeline::CheckWeights;
use lumina_pipelines::Pipeline;

use crate::default_model::BuiltIn;

/// A model folder and the name generation metadata gives it.
pub struct ModelChoice {
    pub dir: PathBuf,
    pub name: String,
}

/// The folder of `--model`: a built-in model's name (`shapes`, `shapes-ternary`, `shapes-video`) unless a
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

/// The pipeline `args` name, from the folder `model` resolved to: in `args.dtype`, its
/// transformer replaced by `--transformer`, its weights checked as `--check-weights` says, the
/// `--lora` files applied.
pub fn load_pipeline(args: &crate::cli::ModelArgs, model: &ModelChoice) -> Result<Pipeline> {
    let check = match args.check_weights {
        true => CheckWeights::All,
        false => CheckWeights::Small,
    };
    let pipeline = Pipeline::load_checked(
        &model.dir,
        args.transformer.as_deref(),
        candle_core::DType::from(args.dtype),
        &candle_core::Device::Cpu,
        check,
    )
    .with_context(|| format!("loading {}", model.dir.display()))?;
    lora::apply(&args.lora, &pipeline)?;
    Ok(pipeline)
}
