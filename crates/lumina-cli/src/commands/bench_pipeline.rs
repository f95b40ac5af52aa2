//! `lumina bench --pipeline`: the whole text-to-image pipeline — Gemma text encoding, one
//! denoising step, VAE decoding — at the real configs of Lumina-Next-SFT and Lumina-Image-2.0
//! (`bench/pipelines.json`, shared with `bench/torch_reference.py --pipeline`), random weights.
//!
//! Definitions (the PyTorch side uses the same):
//! - *text encoding*: the Gemma forward over the CFG pair (a prompt of the pipeline's caption
//!   length and the empty negative prompt, padded alike), up to the `hidden_states[-2]` the
//!   pipelines read;
//! - *step*: one transformer forward at batch 2 (conditional and unconditional rows: one
//!   sampler step with guidance);
//! - *VAE decode*: one image's latents to pixels, the VAE in the pipeline's dtype as
//!   `Pipeline` (and diffusers) load it: in bf16 its convolutions multiply in bf16, with f32
//!   activations between layers;
//! - *total, 30 steps*: text encoding + 30 steps + VAE decode, the sum of the measured parts
//!   (30 is both pipelines' default step count);
//! - *peak resident*: the peak resident memory of the process that built and ran that
//!   component: each component of each (pipeline, dtype) runs in a child process of its own.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use lumina::config::ConfigFile;
use lumina::models::{Transformer, TransformerConfig};
use lumina::{DitInput, Weights};
use lumina_pipelines::text_encoder::{EncoderConfig, GemmaEncoder};
use lumina_pipelines::vae::{Vae, VaeConfig};
use serde_json::{json, Value};

use super::bench::proc_status_bytes;
use crate::cli::{BenchArgs, BenchDtype};

/// The real configs, one object per pipeline (`bench/pipelines.json`).
const PIPELINES: &str = include_str!("../../../../bench/pipelines.json");

/// Steps the total counts: the default of both diffusers pipelines.
const TOTAL_STEPS: usize = 30;

fn pipelines() -> Result<serde_json::Map<String, Value>> {
    let Value::Object(all) = serde_json::from_str(PIPELINES).context("bench/pipelines.json")?
    else {
        bail!("bench/pipelines.json: expected a JSON object");
    };
    Ok(all
        .into_iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .collect())
}

/// The pipelines `--pipeline` names (all when none is named), each checked.
fn chosen(args: &BenchArgs) -> Result<Vec<String>> {
    let all = pipelines()?;
    let names = args.pipeline.clone().unwrap_or_default();
    if names.is_empty() {
        return Ok(all.keys().cloned().collect());
    }
    for n in &names {
        if !all.contains_key(n) {
            let known = all.keys().cloned().collect::<Vec<_>>().join(", ");
            bail!("--pipeline {n}: unknown pipeline (known: {known})");
        }
    }
    Ok(names)
}

/// The dtypes asked for (f32 and bf16 by default); ternary is a transformer-only format.
fn dtypes(args: &BenchArgs) -> Result<Vec<BenchDtype>> {
    let dtypes = args
        .dtype
        .clone()
        .unwrap_or_else(|| vec![BenchDtype::F32, BenchDtype::Bf16]);
    if let Some(d) = dtypes
        .iter()
        .find(|d| matches!(d, BenchDtype::Ternary | BenchDtype::Q8_0 | BenchDtype::Q4K))
    {
        bail!(
            "--pipeline --dtype {}: the pipeline bench runs dense dtypes (f32, bf16, f16)",
            super::bench::dtype_name(*d)
        );
    }
    Ok(dtypes)
}

fn check(args: &BenchArgs) -> Result<()> {
    for &s in &args.sizes {
        if s == 0 || s % 16 != 0 {
            bail!("--sizes {s}: expected a positive multiple of 16 pixels (VAE 8 × patch 2)");
        }
    }
    if args.repeat == 0 {
        bail!("--repeat 0: expected at least one timed run");
    }
    Ok(())
}

/// The three parts of a pipeline, each measured in a process of its own.
const COMPONENTS: [&str; 3] = ["text encoding", "step", "VAE decode"];

pub fn run(args: &BenchArgs) -> Result<()> {
    check(args)?;
    let names = chosen(args)?;
    let dtypes = dtypes(args)?;
    if let Some(component) = &args.component {
        let ([name], [dtype]) = (&names[..], &dtypes[..]) else {
            bail!("a pipeline bench child runs exactly one pipeline and one dtype");
        };
        println!("{}", measure(args, name, *dtype, component)?);
        return Ok(());
    }
    let mut results = Vec::new();
    let mut memory = Vec::new();
    for name in &names {
        for &dtype in &dtypes {
            let mut rows = Vec::new();
            for component in COMPONENTS {
                let child = run_child(args, name, dtype, component)?;
                rows.extend(child["results"].as_array().cloned().unwrap_or_default());
                memory.push(child["memory"].clone());
            }
            let ms = |what: &str, size: Option<usize>| {
                rows.iter()
                    .find(|r| r["name"] == what && r["size"].as_u64().map(|s| s as usize) == size)
                    .and_then(|r| r["ms"].as_f64())
            };
            let totals: Vec<Value> = args
                .sizes
                .iter()
                .filter_map(|&size| {
                    let e = ms("text encoding", None)?;
                    let s = ms("step", Some(size))?;
                    let d = ms("VAE decode", Some(size))?;
                    let total = e + TOTAL_STEPS as f64 * s + d;
                    Some(row(name, dtype, "total, 30 steps", Some(size), total / 1e3))
                })
                .collect();
            results.extend(rows);
            results.extend(totals);
        }
    }
    let report = json!({
        "threads": candle_core::utils::get_num_threads(),
        "isa": lumina::kernels::Isa::detect().describe(),
        "steps_in_total": TOTAL_STEPS,
        "results": results,
        "memory": memory,
    });
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

fn run_child(args: &BenchArgs, name: &str, dtype: BenchDtype, component: &str) -> Result<Value> {
    let exe = std::env::current_exe().context("locating the lumina binary")?;
    let sizes = args
        .sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(exe)
        .args([
            "bench",
            "--component",
            component,
            "--pipeline",
            name,
            "--dtype",
        ])
        .arg(super::bench::dtype_name(dtype))
        .args(["--sizes", &sizes, "--repeat", &args.repeat.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the pipeline bench child")?;
    if !out.status.success() {
        bail!(
            "the {name} {} {component} bench failed ({})",
            super::bench::dtype_name(dtype),
            out.status
        );
    }
    serde_json::from_slice(&out.stdout).context("reading the pipeline bench child's JSON")
}

/// The fastest of `repeat` runs of `f`, in seconds.
fn fastest(repeat: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One result row (and its line on stderr).
fn row(pipeline: &str, dtype: BenchDtype, what: &str, size: Option<usize>, secs: f64) -> Value {
    let dname = super::bench::dtype_name(dtype);
    eprintln!(
        "{pipeline} {dname} {what:<16} {:>6} {:>10.1} ms",
        size.map_or("-".into(), |s| format!("{s}²")),
        secs * 1e3
    );
    json!({ "pipeline": pipeline, "dtype": dname, "name": what, "size": size, "ms": secs * 1e3 })
}

/// One pipeline's components, parsed and checked by the readers a model folder goes through.
struct Configs {
    caption_tokens: usize,
    encoder: EncoderConfig,
    transformer: TransformerConfig,
    vae: VaeConfig,
}

fn configs(name: &str) -> Result<Configs> {
    let all = pipelines()?;
    let spec = all
        .get(name)
        .with_context(|| format!("bench/pipelines.json: no pipeline `{name}`"))?;
    let origin = Path::new("bench/pipelines.json").join(name);
    let caption_tokens = spec["caption_tokens"]
        .as_u64()
        .with_context(|| format!("bench/pipelines.json: {name}.caption_tokens"))?
        as usize;
    let encoder = EncoderConfig::parse(
        &spec["text_encoder"].to_string(),
        &origin.join("text_encoder"),
    )?;
    let transformer = TransformerConfig::from_file(&ConfigFile::from_value(
        &origin.join("transformer"),
        spec["transformer"].clone(),
    )?)?;
    let file = ConfigFile::from_value(&origin.join("vae"), spec["vae"].clone())?;
    let vae: VaeConfig = file.parse()?;
    Vae::check(&vae, &file.path)?;
    Ok(Configs {
        caption_tokens,
        encoder,
        transformer,
        vae,
    })
}

/// Builds one component of pipeline `name` with random weights in `dtype` and times it.
fn measure(args: &BenchArgs, name: &str, dtype_arg: BenchDtype, component: &str) -> Result<Value> {
    let cfgs = configs(name)?;
    let dtype = super::bench::compute_dtype(dtype_arg);
    let dev = Device::Cpu;
    let caption_tokens = cfgs.caption_tokens;
    // the CFG pair's mask: a full prompt and the empty one ([BOS] then padding)
    let mask: Vec<u8> = (0..2 * caption_tokens)
        .map(|i| u8::from(i <= caption_tokens))
        .collect();
    let mask = Tensor::from_vec(mask, (2, caption_tokens), &dev)?;
    eprintln!("{name} {dtype_arg:?}: building the {component} part with random weights…");
    let mut results = Vec::new();
    match component {
        "text encoding" => {
            let cfg = cfgs.encoder;
            let encoder = GemmaEncoder::load(&cfg, &Weights::random(1, dtype, &dev))?;
            let ids: Vec<u32> = (0..2 * caption_tokens)
                .map(|i| 2 + (i as u32 * 7919) % (cfg.vocab_size as u32 - 2))
                .collect();
            let ids = Tensor::from_vec(ids, (2, caption_tokens), &dev)?;
            let secs = fastest(args.repeat, || {
                encoder.encode(&ids, &mask)?;
                Ok(())
            })?;
            results.push(row(name, dtype_arg, component, None, secs));
        }
        "step" => {
            let cfg = cfgs.transformer;
            let transformer = Transformer::load(&cfg, &Weights::random(2, dtype, &dev))?;
            let (in_channels, caption_dim) = match &cfg {
                TransformerConfig::NextDit(c) => (c.in_channels, c.cross_attention_dim),
                TransformerConfig::Lumina2(c) => (c.in_channels, c.cap_feat_dim),
            };
            for &size in &args.sizes {
                let side = size / 8;
                let latents = Tensor::randn(0f32, 1.0, (2, in_channels, side, side), &dev)?;
                let t = Tensor::new(&[0.5f32, 0.5], &dev)?;
                let caption = Tensor::randn(0f32, 1.0, (2, caption_tokens, caption_dim), &dev)?;
                let inp = DitInput::new(&latents, &t, &caption, &mask);
                let secs = fastest(args.repeat, || {
                    transformer.forward(&inp)?;
                    Ok(())
                })?;
                results.push(row(name, dtype_arg, component, Some(size), secs));
            }
        }
        "VAE decode" => {
            let channels = cfgs.vae.latent_channels;
            // the VAE in the pipeline's dtype, as `Pipeline::load` reads it
            let vae = Vae::load(cfgs.vae, &Weights::random(3, dtype, &dev))?;
            for &size in &args.sizes {
                let side = size / 8;
                let latents = Tensor::randn(0f32, 1.0, (1, channels, side, side), &dev)?;
                let secs = fastest(args.repeat, || {
                    vae.decode(&latents)?;
                    Ok(())
                })?;
                results.push(row(name, dtype_arg, component, Some(size), secs));
            }
        }
        other => bail!(
            "--component {other}: expected one of {}",
            COMPONENTS.join(", ")
        ),
    }
    let memory = json!({
        "pipeline": name,
        "dtype": super::bench::dtype_name(dtype_arg),
        "name": component,
        "peak_rss_bytes": proc_status_bytes("VmHWM"),
    });
    Ok(json!({ "results": results, "memory": memory }))
}

fn print_table(report: &Value) {
    println!(
        "{} threads, {}; total = text encoding + {} steps + VAE decode\n",
        report["threads"],
        report["isa"].as_str().unwrap_or(""),
        report["steps_in_total"]
    );
    println!("| pipeline | what | size | dtype | ms |\n|---|---|---:|---|---:|");
    for r in report["results"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {} | {:.1} |",
            r["pipeline"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["size"].as_u64().map_or("–".into(), |s| s.to_string()),
            r["dtype"].as_str().unwrap_or(""),
            r["ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!("\n| pipeline | component | dtype | peak resident |\n|---|---|---|---:|");
    for m in report["memory"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {:.2} GiB |",
            m["pipeline"].as_str().unwrap_or(""),
            m["name"].as_str().unwrap_or(""),
            m["dtype"].as_str().unwrap_or(""),
            m["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pipeline of `bench/pipelines.json` goes through the readers of a real folder, and
    /// is the model the bench claims: the parameter counts of the released checkpoints.
    #[test]
    fn the_bench_configs_are_the_released_models() -> Result<()> {
        let names: Vec<String> = pipelines()?.keys().cloned().collect();
        assert_eq!(names, ["lumina-image-2", "lumina-next-sft"]);
        for name in names {
            let c = configs(&name)?;
            match (name.as_str(), &c.transformer) {
                ("lumina-next-sft", TransformerConfig::NextDit(t)) => {
                    assert_eq!((t.hidden_size, t.num_layers, t.in_channels), (2304, 24, 4));
                    assert_eq!((c.encoder.hidden_size, c.encoder.gemma2), (2048, false));
                    assert_eq!(c.vae.latent_channels, 4);
                }
                ("lumina-image-2", TransformerConfig::Lumina2(t)) => {
                    assert_eq!((t.hidden_size, t.num_layers, t.in_channels), (2304, 26, 16));
                    assert_eq!((c.encoder.hidden_size, c.encoder.gemma2), (2304, true));
                    assert_eq!(
                        (c.vae.latent_channels, c.vae.shift_factor),
                        (16, Some(0.1159))
                    );
                }
                (n, t) => panic!("{n}: unexpected transformer {t:?}"),
            }
        }
        Ok(())
    }
}
