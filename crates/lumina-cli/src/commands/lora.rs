//! `--lora FILE[:SCALE]`: reading the LoRA files a command applies.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use lumina::lora::LoraFile;
use lumina_pipelines::Pipeline;

use crate::cli::LoraArgs;

/// `FILE[:SCALE]` → (file, scale): the text after the last `:` is the scale when it reads as
/// a number, else part of the path.
pub fn parse_spec(spec: &str) -> Result<(PathBuf, f64)> {
    if let Some((path, scale)) = spec.rsplit_once(':') {
        if let Ok(scale) = scale.parse::<f64>() {
            anyhow::ensure!(
                scale.is_finite(),
                "--lora {spec}: the scale must be a finite number"
            );
            anyhow::ensure!(!path.is_empty(), "--lora {spec}: no file before the scale");
            return Ok((PathBuf::from(path), scale));
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// Reads every `--lora` file.
pub fn read(args: &LoraArgs) -> Result<Vec<(Arc<LoraFile>, f64)>> {
    args.loras
        .iter()
        .map(|spec| {
            let (path, scale) = parse_spec(spec)?;
            // the file's errors name it
            let file = LoraFile::open(&path)?;
            Ok((Arc::new(file), scale))
        })
        .collect()
}

/// Applies the `--lora` files to a loaded pipeline (nothing when there are none).
pub fn apply(args: &LoraArgs, pipeline: &Pipeline) -> Result<()> {
    if args.loras.is_empty() {
        return Ok(());
    }
    pipeline.set_loras(read(args)?, args.lora_mode.into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_spec;

    #[test]
    fn specs_split_at_a_numeric_suffix() {
        let p = |s| parse_spec(s).map_err(|e| e.to_string());
        assert_eq!(p("a.safetensors").ok(), Some(("a.safetensors".into(), 1.0)));
        assert_eq!(
            p("a.safetensors:0.8").ok(),
            Some(("a.safetensors".into(), 0.8))
        );
        assert_eq!(
            p("dir/a.safetensors:-0.7").ok(),
            Some(("dir/a.safetensors".into(), -0.7))
        );
        assert_eq!(
            p("C:/x.safetensors").ok(),
            Some(("C:/x.safetensors".into(), 1.0))
        );
        assert!(p(":0.5").is_err());
        assert!(p("a:inf").is_err());
    }
}
