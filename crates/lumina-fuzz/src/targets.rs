//! The targets: each reads its input with the loader a user's file goes through, then uses
//! what it read the way the program would (every tensor loaded, the model built, the LoRA
//! mapped onto a model), and returns the first error. Under fuzzing only a panic matters; the
//! result shows that the corpus's valid files get through every stage (tests/bounded.rs).

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use lumina::config::ConfigFile;
use lumina::lora::{self, LoraFile};
use lumina::nn::lora::{Adapters, LoraMode};
use lumina::weights::{WeightFiles, Weights};
use lumina::{Transformer, TransformerConfig};
use lumina_pipelines::pixel_model::{read_word_encoder_config, SamplerDefaults};
use lumina_pipelines::scheduler::SchedulerConfig;
use lumina_pipelines::text_encoder::{EncoderConfig, WordTokenizer};
use lumina_pipelines::vae::{Vae, VaeConfig};

use crate::Target;

pub static TARGETS: &[Target] = &[
    Target {
        name: "safetensors",
        file_name: "model.safetensors",
        run: weights_file,
    },
    Target {
        name: "sharded_index",
        file_name: "model.safetensors.index.json",
        run: sharded_index,
    },
    Target {
        name: "gguf",
        file_name: "model.gguf",
        run: weights_file,
    },
    Target {
        name: "config",
        file_name: "config.json",
        run: configs,
    },
    Target {
        name: "lora",
        file_name: "lora.safetensors",
        run: lora_on_model,
    },
    Target {
        name: "png",
        file_name: "input.png",
        run: png_input,
    },
    Target {
        name: "server_request",
        file_name: "body.json",
        run: server_request,
    },
];

/// Every tensor of the file loaded (GGUF blocks expanded), then the file as a transformer in
/// whatever layout it is recognised as.
fn weights_file(path: &Path) -> Outcome {
    let files = WeightFiles::open(&[path.to_path_buf()]).map_err(text)?;
    load_all(&files)?;
    if files.keys().any(|k| k.contains("layers.")) {
        Transformer::load_path(path, DType::F32, &Device::Cpu).map_err(text)?;
    }
    Ok(())
}

/// Every tensor loaded; the first error, after trying them all.
fn load_all(files: &WeightFiles) -> Outcome {
    let errors: Vec<String> = files
        .keys()
        .filter_map(|key| files.load(key, &Device::Cpu).err().map(text))
        .collect();
    errors.into_iter().next().map_or(Ok(()), Err)
}

/// The index beside its two fixed shards, opened as a folder; every tensor it maps loaded.
fn sharded_index(path: &Path) -> Outcome {
    let dir = path.parent().ok_or("no folder")?;
    load_all(&WeightFiles::open_dir(dir).map_err(text)?)
}

/// The bytes as each JSON config of a model folder: transformer, scheduler (diffusers' and
/// the pixel models' sampler defaults), Gemma and word encoders, VAE, and the word vocabulary.
/// Every reader runs; the input is accepted when one of them accepts it.
fn configs(path: &Path) -> Outcome {
    let dir = path.parent().ok_or("no folder")?;
    std::fs::copy(path, dir.join("scheduler_config.json")).map_err(text)?;
    let vae = || -> Result<(), String> {
        let file = ConfigFile::read(path).map_err(text)?;
        let config = file.parse::<VaeConfig>().map_err(text)?;
        Vae::check(&config, path).map_err(text)
    };
    let answers = [
        TransformerConfig::read_dir(dir).map(drop).map_err(text),
        SchedulerConfig::read_dir(dir).map(drop).map_err(text),
        SamplerDefaults::read_dir(dir).map(drop).map_err(text),
        EncoderConfig::read(path).map(drop).map_err(text),
        read_word_encoder_config(dir).map(drop).map_err(text),
        WordTokenizer::read(path).map(drop).map_err(text),
        vae(),
    ];
    if answers.iter().any(Result::is_ok) {
        return Ok(());
    }
    Err(answers
        .into_iter()
        .filter_map(Result::err)
        .collect::<Vec<_>>()
        .join("; "))
}

/// A model whose layers take LoRA updates: the tiny Lumina-Image-2.0 config of the corpus
/// with random weights, built once per thread.
struct LoraModel {
    _model: Transformer,
    adapters: Arc<Adapters>,
    upstream: Arc<dyn lumina::weights::KeyMap>,
}

thread_local! {
    static MODEL: RefCell<Option<LoraModel>> = const { RefCell::new(None) };
}

fn lora_model() -> LoraModel {
    let config = include_str!("../../../fuzz/corpus/config/lumina2_transformer.json");
    let build = || -> lumina::Result<LoraModel> {
        let value = serde_json::from_str(config).map_err(|e| lumina::Error::Config {
            path: "fuzz/corpus/config/lumina2_transformer.json".into(),
            reason: e.to_string(),
        })?;
        let file = ConfigFile::from_value(Path::new("lumina2_transformer.json"), value)?;
        let cfg = TransformerConfig::from_file(&file)?;
        let adapters = Adapters::new();
        let weights = Weights::random(0, DType::F32, &Device::Cpu).with_adapters(adapters.clone());
        Ok(LoraModel {
            _model: Transformer::load(&cfg, &weights)?,
            adapters,
            upstream: cfg.upstream_key_map(),
        })
    };
    build().expect("fuzz harness: the corpus's tiny model does not build")
}

/// The file read, then applied to the tiny model merged and unmerged, and removed again.
fn lora_on_model(path: &Path) -> Outcome {
    let file = Arc::new(LoraFile::open(path).map_err(text)?);
    MODEL.with(|cell| {
        let mut slot = cell.borrow_mut();
        let model = slot.get_or_insert_with(lora_model);
        for mode in [LoraMode::Merged, LoraMode::Unmerged] {
            let loras = [(file.clone(), 0.5)];
            let applied = lora::apply(&model.adapters, &*model.upstream, &loras, mode);
            lora::apply(&model.adapters, &*model.upstream, &[], mode).map_err(text)?;
            applied.map_err(text)?;
        }
        Ok(())
    })
}

/// The bytes as an image given for img2img.
fn png_input(path: &Path) -> Outcome {
    lumina_pipelines::input::load_png(path, &Device::Cpu)
        .map(drop)
        .map_err(text)
}

thread_local! {
    static SERVER: RefCell<Option<lumina_serve::App>> = const { RefCell::new(None) };
}

/// The bytes as the body of `POST /v1/images/generations` and of `POST /sdapi/v1/txt2img`,
/// parsed and checked against the built-in `shapes` model as the server does before queueing;
/// accepted when either endpoint accepts it.
fn server_request(path: &Path) -> Outcome {
    let bytes = std::fs::read(path).map_err(text)?;
    SERVER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let app = slot.get_or_insert_with(server_app);
        let openai = lumina_serve::api::openai_spec(app, &bytes);
        let a1111 = lumina_serve::api::a1111_spec(app, &bytes);
        match (openai, a1111) {
            (Ok(_), _) | (_, Ok(_)) => Ok(()),
            (Err(a), Err(b)) => Err(format!("{}; {}", a.message, b.message)),
        }
    })
}

fn server_app() -> lumina_serve::App {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes");
    let pipeline = lumina_pipelines::Pipeline::load(&dir, DType::F32, &Device::Cpu)
        .expect("fuzz harness: the built-in shapes model does not load");
    let limits = lumina_serve::Limits::default();
    lumina_serve::App::new(pipeline, "shapes".into(), DType::F32, 4, limits)
}

/// What a target answers: `Err` with the loader's message.
pub type Outcome = Result<(), String>;

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
