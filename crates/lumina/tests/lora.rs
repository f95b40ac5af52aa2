//! LoRA beyond the Lumina-Image-2.0 fixtures of `formats.rs`: Lumina-Next under its upstream
//! module names (one `attention.wq` serving both attentions), bf16 weights, and every way a
//! LoRA file can be wrong — each an error that names the key.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use lumina::lora::{self, LoraFile};
use lumina::nn::lora::{Adapters, LoraMode};
use lumina::{DitInput, Transformer, Weights};

use common::{fixture_root, load_tensors, max_abs_diff, tensor};

fn load(path: &Path, dtype: DType, ternary: bool) -> Result<(Transformer, Arc<Adapters>)> {
    let adapters = Adapters::new();
    let registry = adapters.clone();
    let (cfg, weights) = Transformer::open_dir(path, move |files| {
        let w = Weights::from_files(files, dtype, &Device::Cpu).with_adapters(registry);
        if ternary {
            w.with_ternary()
        } else {
            w
        }
    })?;
    Ok((Transformer::load(&cfg, &weights)?, adapters))
}

fn random(shape: (usize, usize), seed: f64) -> Result<Tensor> {
    // deterministic, varied values without an RNG dependency
    let n = shape.0 * shape.1;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * 0.7548 + seed).sin() * 0.2) as f32)
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// One upstream Lumina-Next module, the diffusers layers it is, and its shape (out, in).
const NEXT_DIT_MODULES: [(&str, &[&str], (usize, usize)); 4] = [
    (
        "layers.0.attention.wq",
        &["layers.0.attn1.to_q", "layers.0.attn2.to_q"],
        (64, 64),
    ),
    (
        "layers.0.attention.wk_y",
        &["layers.0.attn2.to_k"],
        (64, 32),
    ),
    (
        "layers.1.feed_forward.w2",
        &["layers.1.feed_forward.linear_2"],
        (64, 176),
    ),
    (
        "layers.0.adaLN_modulation.1",
        &["layers.0.norm1.linear"],
        (256, 64),
    ),
];

struct NextDitCase {
    dir: std::path::PathBuf,
    io: HashMap<String, Tensor>,
}

impl NextDitCase {
    fn new() -> Result<Self> {
        let dir = fixture_root().join("nextdit/tiny_square");
        let io = load_tensors(&dir.join("io.safetensors"))?;
        Ok(Self { dir, io })
    }

    fn forward(&self, model: &Transformer) -> Result<Tensor> {
        let t = |k: &str| tensor(&self.io, k, &self.dir);
        let input = DitInput::new(
            t("hidden_states")?,
            t("timestep")?,
            t("encoder_hidden_states")?,
            t("encoder_mask")?,
        );
        Ok(model.forward(&input)?)
    }
}

/// A rank-3 LoRA over [`NEXT_DIT_MODULES`], written as upstream and as kohya (alpha 6, so
/// its B is stored divided by alpha/rank = 2), and the model with it merged by hand.
#[test]
fn lumina_next_loras_use_its_upstream_names() -> Result<()> {
    let case = NextDitCase::new()?;
    let folder = case.dir.join("transformer");
    let scale = 0.75;
    let rank = 3;
    let (mut upstream, mut kohya) = (HashMap::new(), HashMap::new());
    let mut merged = load_tensors(&folder.join("diffusion_pytorch_model.safetensors"))?;
    for (i, (module, layers, (out, inp))) in NEXT_DIT_MODULES.iter().enumerate() {
        let a = random((rank, *inp), i as f64)?;
        let b = random((*out, rank), 10.0 + i as f64)?;
        upstream.insert(format!("diffusion_model.{module}.lora_A.weight"), a.clone());
        upstream.insert(format!("diffusion_model.{module}.lora_B.weight"), b.clone());
        let k = format!("lora_unet_{}", module.replace('.', "_"));
        kohya.insert(format!("{k}.lora_down.weight"), a.clone());
        kohya.insert(format!("{k}.lora_up.weight"), (&b / 2.0)?);
        kohya.insert(format!("{k}.alpha"), Tensor::new(6f32, &Device::Cpu)?);
        let delta = (b.matmul(&a)? * scale)?;
        for layer in layers.iter() {
            let key = format!("{layer}.weight");
            let w = merged.get(&key).context("fixture key")?;
            merged.insert(key, (w + &delta)?);
        }
    }
    let dir = tempfile::tempdir()?;
    let (up_path, kohya_path) = (
        dir.path().join("up.safetensors"),
        dir.path().join("k.safetensors"),
    );
    candle_core::safetensors::save(&upstream, &up_path)?;
    candle_core::safetensors::save(&kohya, &kohya_path)?;
    let cfg = lumina::TransformerConfig::read_dir(&folder)?;
    let want = case.forward(&Transformer::load(
        &cfg,
        &Weights::from_tensors(merged, DType::F32, &Device::Cpu),
    )?)?;

    let (model, adapters) = load(&folder, DType::F32, false)?;
    let upstream_map = model.config().upstream_key_map();
    for path in [&up_path, &kohya_path] {
        for mode in [LoraMode::Merged, LoraMode::Unmerged] {
            let file = Arc::new(LoraFile::open(path)?);
            lora::apply(&adapters, &*upstream_map, &[(file, scale)], mode)?;
            let err = max_abs_diff(&case.forward(&model)?, &want)?;
            println!("{} {mode:?}: max abs error {err:.2e}", path.display());
            if err > 1e-5 {
                bail!(
                    "{} {mode:?}: max abs error {err:.3e} against the hand-merged model",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// A bf16 model takes a LoRA merged into its bf16 weights: the output is the f32 one to bf16
/// rounding, and removing it gives back the same bits.
#[test]
fn bf16_weights_take_merged_loras() -> Result<()> {
    let dir = fixture_root().join("lumina2_formats/tiny");
    let io = load_tensors(&dir.join("io.safetensors"))?;
    let t = |k: &str| tensor(&io, k, &dir);
    let input = DitInput::new(
        t("hidden_states")?,
        t("timestep")?,
        t("encoder_hidden_states")?,
        t("encoder_mask")?,
    );
    let (model, adapters) = load(&dir.join("transformer"), DType::BF16, false)?;
    let upstream = model.config().upstream_key_map();
    let base = model.forward(&input)?;
    let file = Arc::new(LoraFile::open(&dir.join("lora_original.safetensors"))?);
    lora::apply(&adapters, &*upstream, &[(file, 0.8)], LoraMode::Merged)?;
    let got = model.forward(&input)?.to_dtype(DType::F32)?;
    let want = t("output_lora_original_0.8")?;
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let rel = max_abs_diff(&got, want)? / scale;
    println!("bf16 + LoRA: relative error {rel:.2e}");
    if rel > 5e-2 {
        bail!("bf16 + LoRA: relative error {rel:.3e} > 5e-2");
    }
    lora::apply(&adapters, &*upstream, &[], LoraMode::Merged)?;
    if max_abs_diff(&model.forward(&input)?, &base)? != 0.0 {
        bail!("removing the LoRA from bf16 weights did not restore them bit for bit");
    }
    Ok(())
}

/// The message of applying `tensors` as a LoRA file to the Lumina-Image-2.0 fixture model
/// (loaded ternary when asked), or of opening the file.
fn lora_error(tensors: HashMap<String, Tensor>, ternary: bool) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    let folder = fixture_root().join("lumina2_formats/tiny/transformer");
    let (model, adapters) = load(&folder, DType::F32, ternary)?;
    let upstream = model.config().upstream_key_map();
    let result = LoraFile::open(&path).and_then(|f| {
        lora::apply(
            &adapters,
            &*upstream,
            &[(Arc::new(f), 1.0)],
            LoraMode::Merged,
        )
    });
    match result {
        Ok(()) => bail!("accepted: {:?}", tensors.keys().collect::<Vec<_>>()),
        Err(e) => Ok(e.to_string()),
    }
}

fn pair(stem: &str, a: (usize, usize), b: (usize, usize)) -> Result<Vec<(String, Tensor)>> {
    Ok(vec![
        (format!("{stem}.lora_A.weight"), random(a, 1.0)?),
        (format!("{stem}.lora_B.weight"), random(b, 2.0)?),
    ])
}

#[test]
fn bad_loras_are_errors_that_name_the_key() -> Result<()> {
    let good = || pair("transformer.layers.0.attn.to_out.0", (4, 64), (64, 4));
    let with = |extra: Vec<(String, Tensor)>| -> Result<HashMap<String, Tensor>> {
        Ok(good()?.into_iter().chain(extra).collect())
    };
    // (what, the file's tensors, load the model ternary, fragments the message must hold)
    type BadCase = (
        &'static str,
        HashMap<String, Tensor>,
        bool,
        &'static [&'static str],
    );
    let cases: Vec<BadCase> = vec![
        (
            "a key that matches no layer",
            with(pair("transformer.layers.0.attn.to_x", (4, 64), (64, 4))?)?,
            false,
            &[
                "transformer.layers.0.attn.to_x.lora_A.weight",
                "matches no layer",
            ],
        ),
        (
            "a LoRA for Lumina-Next",
            pair("diffusion_model.layers.0.attention.wq", (4, 64), (64, 4))?
                .into_iter()
                .collect(),
            false,
            &["another model", "Lumina-Next"],
        ),
        (
            "A and B of different ranks",
            [
                (
                    "transformer.layers.0.attn.to_q.lora_A.weight".to_string(),
                    random((4, 64), 0.0)?,
                ),
                (
                    "transformer.layers.0.attn.to_q.lora_B.weight".to_string(),
                    random((64, 5), 0.0)?,
                ),
            ]
            .into_iter()
            .collect(),
            false,
            &["transformer.layers.0.attn.to_q", "rank 4", "5"],
        ),
        (
            "an input width the layer does not have",
            with(pair("transformer.layers.1.attn.to_q", (4, 32), (64, 4))?)?,
            false,
            &["transformer.layers.1.attn.to_q.lora_A.weight", "64 inputs"],
        ),
        (
            "a fused qkv B of the wrong height",
            pair("diffusion_model.layers.0.attention.qkv", (4, 64), (96, 4))?
                .into_iter()
                .collect(),
            false,
            &["layers.0.attention.qkv", "96 rows", "fused 128"],
        ),
        (
            "A without B",
            [(
                "transformer.layers.0.attn.to_q.lora_A.weight".to_string(),
                random((4, 64), 0.0)?,
            )]
            .into_iter()
            .collect(),
            false,
            &["transformer.layers.0.attn.to_q", "lacks"],
        ),
        (
            "a tensor that is not LoRA",
            with(vec![(
                "layers.0.attn.to_q.weight".to_string(),
                random((64, 64), 0.0)?,
            )])?,
            false,
            &["`layers.0.attn.to_q.weight` is not a LoRA tensor"],
        ),
        (
            "a text-encoder LoRA",
            with(pair(
                "lora_te_text_model_encoder_layers_0_mlp_fc1",
                (4, 64),
                (64, 4),
            )?)?,
            false,
            &["lora_te_text_model", "text encoder"],
        ),
        (
            "a LoRA on a ternary layer",
            good()?.into_iter().collect(),
            true,
            &["layers.0.attn.to_out.0", "ternary", "dense again"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, tensors, ternary, needles) in cases {
        let message = lora_error(tensors, ternary).with_context(|| what.to_string())?;
        println!("{what}: {message}");
        if let Some(missing) = needles.iter().find(|n| !message.contains(**n)) {
            failures.push(format!("{what}: `{missing}` not in: {message}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
