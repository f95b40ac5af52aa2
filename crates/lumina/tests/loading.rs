//! Weight formats and invariances: sharded checkpoints, bf16/f16 storage, the compute dtype,
//! independence of a sample from its batch, determinism, and the key audit.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, IndexOp, Tensor};
use lumina::weights::{Init, WeightFiles, Weights};
use lumina::{DitInput, Transformer, TransformerConfig};

use common::{fixture_root, load_tensors, max_abs_diff};

const FAMILIES: [&str; 2] = ["nextdit", "lumina2"];

fn case(family: &str) -> PathBuf {
    fixture_root().join(family).join("tiny_square")
}

struct Io {
    x: Tensor,
    t: Tensor,
    cap: Tensor,
    mask: Tensor,
}

fn io(family: &str) -> Result<Io> {
    let io = load_tensors(&case(family).join("io.safetensors"))?;
    Ok(Io {
        x: io["hidden_states"].clone(),
        t: io["timestep"].clone(),
        cap: io["encoder_hidden_states"].clone(),
        mask: io["encoder_mask"].clone(),
    })
}

fn run(model: &Transformer, io: &Io) -> Result<Tensor> {
    Ok(model.forward(&DitInput::new(&io.x, &io.t, &io.cap, &io.mask))?)
}

/// A copy of a fixture's transformer folder whose weights are `tensors`, split into `shards`
/// files with an index when `shards > 1`.
fn write_model(
    family: &str,
    tensors: &HashMap<String, Tensor>,
    shards: usize,
) -> Result<(tempfile::TempDir, PathBuf)> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("transformer");
    std::fs::create_dir(&dir)?;
    std::fs::copy(
        case(family).join("transformer/config.json"),
        dir.join("config.json"),
    )?;
    if shards == 1 {
        candle_core::safetensors::save(tensors, dir.join("diffusion_pytorch_model.safetensors"))?;
        return Ok((tmp, dir));
    }
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in keys.chunks(keys.len().div_ceil(shards)).enumerate() {
        let name = format!(
            "diffusion_pytorch_model-{:05}-of-{shards:05}.safetensors",
            i + 1
        );
        let part: HashMap<String, Tensor> = chunk
            .iter()
            .map(|k| ((*k).clone(), tensors[*k].clone()))
            .collect();
        candle_core::safetensors::save(&part, dir.join(&name))?;
        for k in chunk {
            weight_map.insert((*k).clone(), name.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )?;
    Ok((tmp, dir))
}

fn fixture_weights(family: &str) -> Result<HashMap<String, Tensor>> {
    load_tensors(&case(family).join("transformer/diffusion_pytorch_model.safetensors"))
}

/// The Next-DiT fixture as converted upstream checkpoints are: attn2's query projection and
/// its norm are attn1's.
fn with_shared_query(mut w: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let layers = w
        .keys()
        .filter(|k| k.ends_with("attn1.to_q.weight"))
        .count();
    for layer in 0..layers {
        for leaf in ["to_q.weight", "norm_q.weight", "norm_q.bias"] {
            let t = w[&format!("layers.{layer}.attn1.{leaf}")].clone();
            w.insert(format!("layers.{layer}.attn2.{leaf}"), t);
        }
    }
    w
}

fn load(dir: &Path, dtype: DType) -> Result<Transformer> {
    Ok(Transformer::load_dir(dir, dtype, &Device::Cpu)?)
}

#[test]
fn sharded_checkpoint_loads_identically() -> Result<()> {
    for family in FAMILIES {
        let weights = fixture_weights(family)?;
        let (_a, single) = write_model(family, &weights, 1)?;
        let (_b, sharded) = write_model(family, &weights, 3)?;
        assert_eq!(
            std::fs::read_dir(&sharded)?.count(),
            5,
            "config + index + 3 shards"
        );
        let io = io(family)?;
        let d = max_abs_diff(
            &run(&load(&single, DType::F32)?, &io)?,
            &run(&load(&sharded, DType::F32)?, &io)?,
        )?;
        assert_eq!(d, 0.0, "{family}");
    }
    Ok(())
}

#[test]
fn sharded_index_pointing_at_the_wrong_shard_is_an_error() -> Result<()> {
    let weights = fixture_weights("nextdit")?;
    let (_t, dir) = write_model("nextdit", &weights, 2)?;
    let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
    json["weight_map"]["pad_token"] = "diffusion_pytorch_model-00001-of-00002.safetensors".into();
    json["weight_map"]["patch_embedder.proj.bias"] =
        "diffusion_pytorch_model-00002-of-00002.safetensors".into();
    std::fs::write(&index, json.to_string())?;
    let err = Transformer::load_dir(&dir, DType::F32, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("the index") && err.contains("says it is there"),
        "{err}"
    );
    Ok(())
}

/// Half-precision storage is widened exactly: a bf16/f16 checkpoint computes the same as an f32
/// checkpoint holding the same (rounded) values.
#[test]
fn bf16_and_f16_storage_load_into_f32_compute() -> Result<()> {
    for family in FAMILIES {
        let io = io(family)?;
        for stored in [DType::BF16, DType::F16] {
            let half: HashMap<String, Tensor> = fixture_weights(family)?
                .into_iter()
                .map(|(k, v)| Ok((k, v.to_dtype(stored)?)))
                .collect::<candle_core::Result<_>>()?;
            let widened: HashMap<String, Tensor> = half
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::F32)?)))
                .collect::<candle_core::Result<_>>()?;
            let (_a, half_dir) = write_model(family, &half, 1)?;
            let (_b, f32_dir) = write_model(family, &widened, 1)?;
            let files = WeightFiles::open_dir(&half_dir)?;
            assert_eq!(
                files.info("layers.0.norm2.weight").map(|i| i.dtype),
                Some(stored)
            );
            // kept narrow in memory under f32 compute; narrowed at load under bf16 compute
            let f32_compute = Weights::from_dir(&half_dir, DType::F32, &Device::Cpu)?;
            let w = f32_compute.get("layers.0.norm2.weight", &[64], Init::Ones)?;
            assert_eq!(w.dtype(), stored);
            let bf16_compute = Weights::from_dir(&f32_dir, DType::BF16, &Device::Cpu)?;
            let w = bf16_compute.get("layers.0.norm2.weight", &[64], Init::Ones)?;
            assert_eq!(w.dtype(), DType::BF16);
            let d = max_abs_diff(
                &run(&load(&half_dir, DType::F32)?, &io)?,
                &run(&load(&f32_dir, DType::F32)?, &io)?,
            )?;
            assert_eq!(d, 0.0, "{family} {stored:?}");
        }
    }
    Ok(())
}

/// Computing in bf16 tracks the f32 result within bf16 precision.
#[test]
fn bf16_compute_agrees_with_f32_within_bf16_tolerance() -> Result<()> {
    for family in FAMILIES {
        let io = io(family)?;
        let dir = case(family).join("transformer");
        let f32_out = run(&load(&dir, DType::F32)?, &io)?;
        let bf16_out = run(&load(&dir, DType::BF16)?, &io)?;
        assert_eq!(bf16_out.dtype(), DType::BF16);
        let scale = f32_out.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let d = max_abs_diff(&bf16_out, &f32_out)?;
        assert!(
            d < 0.05 * scale,
            "{family}: bf16 vs f32 max abs {d} (output scale {scale})"
        );
        assert!(d > 0.0, "{family}: bf16 compute must actually round");
    }
    Ok(())
}

/// A sample's velocity does not depend on the rest of its batch, nor on how much padding its
/// caption carries (diffusers' `test_inference_batch_single_identical`).
#[test]
fn a_sample_is_independent_of_its_batch_and_padding() -> Result<()> {
    for family in FAMILIES {
        let model = load(&case(family).join("transformer"), DType::F32)?;
        let io = io(family)?;
        let batch = run(&model, &io)?;
        for b in 0..io.x.dim(0)? {
            let real = io
                .mask
                .i(b)?
                .to_vec1::<i64>()?
                .iter()
                .filter(|&&m| m != 0)
                .count();
            // alone, with its caption cut to the real tokens
            let alone = Io {
                x: io.x.narrow(0, b, 1)?,
                t: io.t.narrow(0, b, 1)?,
                cap: io.cap.narrow(0, b, 1)?.narrow(1, 0, real)?,
                mask: io.mask.narrow(0, b, 1)?.narrow(1, 0, real)?,
            };
            let d = max_abs_diff(&run(&model, &alone)?, &batch.narrow(0, b, 1)?)?;
            assert!(d < 1e-5, "{family} sample {b}: {d}");
        }
    }
    Ok(())
}

#[test]
fn forward_is_deterministic() -> Result<()> {
    for family in FAMILIES {
        let model = load(&case(family).join("transformer"), DType::F32)?;
        let io = io(family)?;
        assert_eq!(max_abs_diff(&run(&model, &io)?, &run(&model, &io)?)?, 0.0);
    }
    Ok(())
}

/// The audit builds the model without reading weights and lists what is absent, misshapen or
/// left over.
#[test]
fn audit_lists_missing_misshapen_and_unused_keys() -> Result<()> {
    let mut weights = fixture_weights("lumina2")?;
    weights.remove("layers.1.attn.norm_k.weight");
    let w = weights["x_embedder.bias"].narrow(0, 0, 10)?;
    weights.insert("x_embedder.bias".into(), w);
    weights.insert(
        "norm_final.weight".into(),
        Tensor::zeros(64, DType::F32, &Device::Cpu)?,
    );
    let (_t, dir) = write_model("lumina2", &weights, 1)?;
    let audit = Weights::audit(WeightFiles::open_dir(&dir)?, &Device::Cpu);
    Transformer::load(&TransformerConfig::read_dir(&dir)?, &audit)?;
    let problems = audit.problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems
        .iter()
        .any(|p| p.key == "layers.1.attn.norm_k.weight" && p.got.is_none()));
    assert!(problems
        .iter()
        .any(|p| p.key == "x_embedder.bias" && p.got == Some(vec![10]) && p.expected == vec![64]));
    assert_eq!(audit.unused_keys(), vec!["norm_final.weight".to_string()]);
    // the untouched fixture is complete
    let clean = Weights::audit(
        WeightFiles::open_dir(&case("nextdit").join("transformer"))?,
        &Device::Cpu,
    );
    Transformer::load(
        &TransformerConfig::read_dir(&case("nextdit").join("transformer"))?,
        &clean,
    )?;
    assert!(clean.problems().is_empty() && clean.unused_keys().is_empty());
    Ok(())
}

/// Converted upstream checkpoints store the one query projection twice (`attn1.to_q` and
/// `attn2.to_q`); the model then computes it once. Same result as computing both.
#[test]
fn duplicated_query_projection_gives_the_same_velocity() -> Result<()> {
    let shared = with_shared_query(fixture_weights("nextdit")?);
    // the same numbers, but one bit different: forces two separate projections
    let mut separate = shared.clone();
    let key = "layers.0.attn2.to_q.weight";
    let nudged = separate[key].flatten_all()?.to_vec1::<f32>()?;
    let mut nudged = nudged;
    nudged[0] = f32::from_bits(nudged[0].to_bits() ^ 1);
    separate.insert(
        key.into(),
        Tensor::from_vec(nudged, (64, 64), &Device::Cpu)?,
    );
    let (_a, shared_dir) = write_model("nextdit", &shared, 1)?;
    let (_b, separate_dir) = write_model("nextdit", &separate, 1)?;
    let io = io("nextdit")?;
    let d = max_abs_diff(
        &run(&load(&shared_dir, DType::F32)?, &io)?,
        &run(&load(&separate_dir, DType::F32)?, &io)?,
    )?;
    assert!(d < 1e-5, "{d}");
    Ok(())
}

/// Upstream's initialisation zeroes the final layer, every adaLN linear and the cross-attention
/// gates (reference §2.9): a fresh model predicts zero velocity, and every parameter is a
/// trainable variable.
#[test]
fn upstream_initialisation_predicts_zero_velocity() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev)?;
    let t = Tensor::new(&[0.3f32, 0.9], &dev)?;
    let cap = Tensor::randn(0f32, 1.0, (2, 5, 32), &dev)?;
    let mask = Tensor::new(&[[1u8, 1, 1, 0, 0], [1, 1, 1, 1, 1]], &dev)?;
    let configs = [
        TransformerConfig::NextDit(lumina::NextDitConfig::tiny()),
        TransformerConfig::Lumina2(lumina::Lumina2Config::tiny()),
    ];
    for cfg in configs {
        let weights = Weights::init(0, DType::F32, &dev);
        let model = Transformer::load(&cfg, &weights)?;
        let v = model.forward(&DitInput::new(&x, &t, &cap, &mask))?;
        let max = v.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(max, 0.0, "{}", cfg.class_name());
        let vars = weights.vars();
        assert!(vars.len() > 50 && vars.iter().all(|(_, v)| v.as_tensor().is_variable()));
    }
    Ok(())
}

/// The released configurations, built without memory, have the reference's parameter counts
/// (diffusers layout; lumina_reference.md §3.7: 72.9 M per Next-DiT block with the duplicated
/// query; peers.md §1.2.3: 87.3 M per modulated and 77.9 M per caption-refiner Lumina2 block).
#[test]
fn released_presets_have_the_reference_parameter_counts() -> Result<()> {
    let next = Weights::zeros(DType::BF16, &Device::Cpu);
    Transformer::load(
        &TransformerConfig::NextDit(lumina::NextDitConfig::next_dit_2b()),
        &next,
    )?;
    assert_eq!(
        next.parameter_count(),
        24 * 72_875_296 + 39_168 + 2_304 + 1_312_768 + 2_102_272 + 2_435_360
    );
    let l2 = Weights::zeros(DType::BF16, &Device::Cpu);
    Transformer::load(
        &TransformerConfig::Lumina2(lumina::Lumina2Config::lumina_image_2()),
        &l2,
    )?;
    let blocks = 28 * 87_312_576 + 2 * 77_866_176;
    assert_eq!(
        l2.parameter_count(),
        blocks + 149_760 + 1_312_768 + 5_313_024 + 2_509_120
    );
    Ok(())
}

/// Upstream Lumina-T2X checkpoints (`consolidated*.safetensors`, `attention.wq` names, one
/// query projection for both attentions) load through the key map — with the diffusers config,
/// or with none, the config then read off the tensor shapes.
#[test]
fn upstream_consolidated_checkpoint_loads_like_the_diffusers_one() -> Result<()> {
    use lumina::models::next_dit::original::original_key;
    // a converted checkpoint: attn2's query duplicates attn1's
    let diffusers = with_shared_query(fixture_weights("nextdit")?);
    let upstream: HashMap<String, Tensor> = diffusers
        .iter()
        .map(|(k, v)| (original_key(k), v.clone()))
        .collect();
    assert!(
        upstream.contains_key("layers.1.attention.wq.weight") && upstream.len() < diffusers.len()
    );
    let (_a, diffusers_dir) = write_model("nextdit", &diffusers, 1)?;
    let tmp = tempfile::tempdir()?;
    let upstream_dir = tmp.path().join("Lumina-Next-SFT");
    std::fs::create_dir(&upstream_dir)?;
    candle_core::safetensors::save(
        &upstream,
        upstream_dir.join("consolidated_ema.00-of-01.safetensors"),
    )?;
    // the plain (non-EMA) weights beside them must not be picked
    let zeros: HashMap<String, Tensor> = upstream
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.zeros_like()?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(
        &zeros,
        upstream_dir.join("consolidated.00-of-01.safetensors"),
    )?;

    let io = io("nextdit")?;
    let want = run(&load(&diffusers_dir, DType::F32)?, &io)?;
    // no config.json: inferred (the fixture's sample_size aside, which the forward never reads)
    let inferred = load(&upstream_dir, DType::F32)?;
    let TransformerConfig::NextDit(cfg) = inferred.config() else {
        panic!("a Next-DiT")
    };
    let TransformerConfig::NextDit(fixture_cfg) = TransformerConfig::read_dir(&diffusers_dir)?
    else {
        panic!("a Next-DiT")
    };
    assert_eq!(
        lumina::NextDitConfig {
            sample_size: fixture_cfg.sample_size,
            ..cfg
        },
        fixture_cfg
    );
    assert!(max_abs_diff(&run(&inferred, &io)?, &want)? < 1e-6);
    // with the diffusers config.json
    std::fs::copy(
        diffusers_dir.join("config.json"),
        upstream_dir.join("config.json"),
    )?;
    assert!(max_abs_diff(&run(&load(&upstream_dir, DType::F32)?, &io)?, &want)? < 1e-6);
    // and the audit sees every upstream tensor used
    let (cfg, audit) = Transformer::open_dir(&upstream_dir, |f| Weights::audit(f, &Device::Cpu))?;
    Transformer::load(&cfg, &audit)?;
    assert!(
        audit.problems().is_empty() && audit.unused_keys().is_empty(),
        "{:?} {:?}",
        audit.problems(),
        audit.unused_keys()
    );
    Ok(())
}
