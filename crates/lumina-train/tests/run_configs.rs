//! Every run config committed under `models/` (a shipped model's `train_config.toml`, its
//! `recipe/` stages and the `candidates/` measured against it) still reads and validates, so a
//! change to the config format cannot silently break a documented reproduce command. A
//! committed model a config starts from or distils from must exist; `runs/…` paths are made by
//! an earlier stage of the recipe and are not checked.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use lumina_train::TrainConfig;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run_configs(models: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for model in std::fs::read_dir(models).with_context(|| models.display().to_string())? {
        let model = model?.path();
        let top = model.join("train_config.toml");
        if top.is_file() {
            found.push(top);
        }
        for sub in ["recipe", "candidates"] {
            let Ok(entries) = std::fs::read_dir(model.join(sub)) else {
                continue;
            };
            for entry in entries {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    found.push(path);
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

#[test]
fn every_committed_run_config_reads_and_validates() -> Result<()> {
    let root = repo_root();
    let configs = run_configs(&root.join("models"))?;
    ensure!(
        configs.len() >= 10,
        "found only {} run configs under models/: {configs:?}",
        configs.len()
    );
    for path in &configs {
        let cfg = TrainConfig::read(path).with_context(|| path.display().to_string())?;
        let sources = cfg
            .init
            .iter()
            .chain(cfg.distill.as_ref().map(|d| &d.teacher));
        for source in sources.filter(|p| p.starts_with("models")) {
            ensure!(
                root.join(source).join("model_index.json").is_file(),
                "{}: starts from or distils {} which is not a committed model",
                path.display(),
                source.display()
            );
        }
    }
    Ok(())
}
