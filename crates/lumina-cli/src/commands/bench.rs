//! `lumina bench`: this CPU's arithmetic peak, then Next-DiT blocks and full denoising steps at
//! the Lumina-Next 2B config — and, asked for, Lumina-Image-2.0's — (random weights), for each
//! weight format (f32, bf16, ternary, GGUF Q8_0 and Q4_K) and token count, in one run.
//!
//! A *step* is one transformer forward at batch 1 (one solver evaluation without CFG; with
//! CFG a sampler step costs two). A *block* is the median block of that same forward, timed
//! as it runs. A *linear* is the block's largest matmul (SwiGLU's D → ffn projection) alone;
//! *attention* is one block's self-attention product (`softmax(q kᵀ) v`, all heads) alone.
//! Each (transformer, format) runs in a child process, so its resident memory is its own.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use lumina::config::Validate;
use lumina::kernels::probe::{peak_gflops, Arith};
use lumina::kernels::strassen::F32Matmul;
use lumina::kernels::ternary::Activations;
use lumina::kernels::{flash_attention, Isa};
use lumina::models::next_dit::original;
use lumina::nn::{KvPool, Linear};
use lumina::weights::Init;
use lumina::{DitInput, NextDit, NextDitConfig, Weights};
use serde_json::{json, Value};

use candle_core::quantized::GgmlDType;
use lumina::{Lumina2Config, Lumina2Dit};

use crate::cli::{BenchArgs, BenchDtype, BenchModel};

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.pipeline.is_some() {
        return super::bench_pipeline::run(args);
    }
    let dtypes = args
        .dtype
        .clone()
        .unwrap_or_else(|| vec![BenchDtype::F32, BenchDtype::Bf16, BenchDtype::Ternary]);
    for &n in &args.tokens {
        if square_side(n).is_none() {
            bail!("--tokens {n}: expected a square number of tokens (256, 1024, 4096, …)");
        }
    }
    if args.repeat == 0 {
        bail!("--repeat 0: expected at least one timed forward");
    }
    if args.child {
        let ([dtype], [model]) = (&dtypes[..], &args.transformer[..]) else {
            bail!("a bench child runs exactly one dtype of one transformer");
        };
        let report = match model {
            BenchModel::NextDit2b => measure_dtype(args, *dtype)?,
            BenchModel::LuminaImage2 => measure_lumina2(args, *dtype)?,
        };
        println!("{report}");
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    eprintln!(
        "probing peak arithmetic on {threads} threads ({})…",
        Isa::detect().describe()
    );
    let peak = |a| peak_gflops(a, threads, args.probe_seconds);
    let peaks = json!({
        "f32": peak(Arith::F32),
        "bf16": peak(Arith::Bf16),
        "int8": peak(Arith::Int8),
    });
    let mut results = Vec::new();
    let mut memory = Vec::new();
    for &model in &args.transformer {
        for &dtype in &dtypes {
            let child = run_child(args, dtype, model)?;
            results.extend(child["results"].as_array().cloned().unwrap_or_default());
            memory.push(child["memory"].clone());
        }
    }
    let report = json!({
        "isa": Isa::detect().describe(),
        "threads": threads,
        "f32_matmul": f32_matmul_name(),
        "peak_gflops": peaks,
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

fn square_side(n: usize) -> Option<usize> {
    let s = (n as f64).sqrt().round() as usize;
    (s > 0 && s * s == n).then_some(s)
}

pub(super) fn dtype_name(d: BenchDtype) -> &'static str {
    match d {
        BenchDtype::F32 => "f32",
        BenchDtype::Bf16 => "bf16",
        BenchDtype::F16 => "f16",
        BenchDtype::Ternary => "ternary",
        BenchDtype::Q8_0 => "q8_0",
        BenchDtype::Q4K => "q4_k",
    }
}

fn model_name(m: BenchModel) -> &'static str {
    match m {
        BenchModel::NextDit2b => "next-dit-2b",
        BenchModel::LuminaImage2 => "lumina-image-2",
    }
}

/// The GGUF type a bench format keeps its linears in.
fn quant_target(d: BenchDtype) -> Option<GgmlDType> {
    match d {
        BenchDtype::Q8_0 => Some(GgmlDType::Q8_0),
        BenchDtype::Q4K => Some(GgmlDType::Q4K),
        _ => None,
    }
}

/// The compute dtype of a bench run (ternary layers compute with bf16 activations).
pub(super) fn compute_dtype(d: BenchDtype) -> DType {
    match d {
        BenchDtype::F32 => DType::F32,
        BenchDtype::Bf16 | BenchDtype::Ternary | BenchDtype::Q8_0 | BenchDtype::Q4K => DType::BF16,
        BenchDtype::F16 => DType::F16,
    }
}

/// Weights for a bench model of `dtype`, seeded.
fn bench_weights(seed: u64, dtype: BenchDtype) -> Weights {
    let w = Weights::random(seed, compute_dtype(dtype), &Device::Cpu);
    match (dtype, quant_target(dtype)) {
        (BenchDtype::Ternary, _) => w.with_ternary(),
        (_, Some(q)) => w.with_quantization(q),
        _ => w,
    }
}

/// Bytes the model's weights take: stored dtype for dense tensors, 2 bits per ternary weight
/// plus its scale, GGUF blocks for quantised linears.
fn weight_bytes(weights: &Weights, dtype_arg: BenchDtype) -> u64 {
    let dtype = compute_dtype(dtype_arg);
    let ternary: std::collections::HashSet<String> = weights
        .ternary_layers()
        .into_iter()
        .map(|l| format!("{l}.weight"))
        .collect();
    let quant = quant_target(dtype_arg);
    weights
        .requested()
        .iter()
        .map(|(key, shape)| {
            let n: u64 = shape.iter().map(|&d| d as u64).product();
            let dense = n * dtype.size_in_bytes() as u64;
            match (shape.as_slice(), quant) {
                ([out, inp], _) if ternary.contains(key) => (out * inp.div_ceil(4)) as u64 + 4,
                ([_, _], Some(target)) if key.ends_with(".weight") => {
                    match lumina::weights::gguf::storage_for(shape, target) {
                        GgmlDType::F32 => dense,
                        q => n / q.block_size() as u64 * q.type_size() as u64,
                    }
                }
                _ => dense,
            }
        })
        .sum()
}

/// The `--f32-matmul` value this process runs with.
fn f32_matmul_name() -> &'static str {
    match lumina::kernels::strassen::f32_matmul() {
        F32Matmul::Strassen => "strassen",
        F32Matmul::Classical => "classical",
    }
}

/// Re-runs this binary for one dtype and parses the JSON it prints.
fn run_child(args: &BenchArgs, dtype: BenchDtype, model: BenchModel) -> Result<Value> {
    let exe = std::env::current_exe().context("locating the lumina binary")?;
    let mut cmd = Command::new(exe);
    let activations = match lumina::kernels::ternary::activations() {
        Activations::Auto => "auto",
        Activations::Exact => "exact",
        Activations::Int8 => "int8",
    };
    cmd.arg("--ternary-activations")
        .arg(activations)
        .arg("--f32-matmul")
        .arg(f32_matmul_name())
        .arg("--quantized-matmul")
        .arg(match lumina::nn::quantized_path() {
            lumina::nn::QuantizedPath::Dequantize => "dequantize",
            lumina::nn::QuantizedPath::Quantized => "quantized",
        })
        .arg("bench")
        .arg("--child")
        .arg("--transformer")
        .arg(model_name(model))
        .arg("--dtype")
        .arg(dtype_name(dtype))
        .arg("--tokens")
        .arg(
            args.tokens
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("--caption-tokens")
        .arg(args.caption_tokens.to_string())
        .arg("--context-drop")
        .arg(args.context_drop.to_string())
        .arg("--repeat")
        .arg(args.repeat.to_string());
    if let Some(layers) = args.layers {
        cmd.arg("--layers").arg(layers.to_string());
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the bench child")?;
    if !out.status.success() {
        bail!(
            "the {} {} bench failed ({})",
            model_name(model),
            dtype_name(dtype),
            out.status
        );
    }
    serde_json::from_slice(&out.stdout).context("reading the bench child's JSON")
}

/// Loads the model in `dtype`, then times one forward per token count.
fn measure_dtype(args: &BenchArgs, dtype_arg: BenchDtype) -> Result<Value> {
    let dtype = compute_dtype(dtype_arg);
    let mut cfg = NextDitConfig::next_dit_2b();
    if let Some(layers) = args.layers {
        cfg.num_layers = layers;
    }
    cfg.validate()?;
    let mut run = ChildRun::start(args, dtype_arg, "next-dit-2b");
    // Random weights read through the original checkpoints' key names, so that they are tied
    // as every released Lumina-Next checkpoint ties them: one `attention.wq` (and `q_norm`)
    // serves both attn1 and attn2, and the model computes that query once. diffusers computes
    // it twice whatever the weights; `bench/torch_reference.py` ties them too.
    let weights = bench_weights(0, dtype_arg).with_key_map(original::key_map());
    let model = NextDit::load(&cfg, &weights)?;
    run.loaded(&weights);
    let ffn_in = ffn_probe(dtype_arg, cfg.hidden_size, cfg.ffn_hidden())?;
    for &n in &args.tokens {
        let side = square_side(n).unwrap_or(1) * cfg.patch_size;
        let inputs = BenchInputs::new(
            cfg.in_channels,
            side,
            args.caption_tokens,
            cfg.cross_attention_dim,
        )?;
        let plain = inputs.dit_input();
        let (best_step, best_block) = time_step(&model, &plain, args.repeat)?;
        let (block_flops, step_flops) = flops(&cfg, n, args.caption_tokens);
        let (linear_secs, linear_flops) = time_linear(&ffn_in, n, dtype, args.repeat)?;
        let (attention_secs, attention_flops) = time_attention(&cfg, n, dtype, 1, args.repeat)?;
        let mut rows = vec![
            ("linear".to_string(), linear_secs, linear_flops),
            ("attention".to_string(), attention_secs, attention_flops),
            ("block".to_string(), best_block, block_flops),
            ("step".to_string(), best_step, step_flops),
        ];
        let f = args.context_drop;
        if f > 1 {
            // the same work with f² times fewer self-attention keys: FLOP/s count what is done
            let (secs, flops) = time_attention(&cfg, n, dtype, f, args.repeat)?;
            rows.push((format!("attention, context drop {f}"), secs, flops));
            let (step, _) = time_step(&model, &plain.with_kv_pool(Some(f)), args.repeat)?;
            let saved = cfg.num_layers as f64 * (attention_flops - flops);
            rows.push((format!("step, context drop {f}"), step, step_flops - saved));
        }
        run.rows(n, rows);
    }
    Ok(run.report())
}

/// [`measure_dtype`] for Lumina-Image-2.0's transformer: its largest linear (the SwiGLU's
/// D → ffn projection), its steps with and without Context Drop, and memory.
fn measure_lumina2(args: &BenchArgs, dtype_arg: BenchDtype) -> Result<Value> {
    let dtype = compute_dtype(dtype_arg);
    let mut cfg = Lumina2Config::lumina_image_2();
    if let Some(layers) = args.layers {
        cfg.num_layers = layers;
    }
    cfg.validate()?;
    let mut run = ChildRun::start(args, dtype_arg, "lumina-image-2");
    let weights = bench_weights(0, dtype_arg);
    let model = Lumina2Dit::load(&cfg, &weights)?;
    run.loaded(&weights);
    let ffn_in = ffn_probe(dtype_arg, cfg.hidden_size, cfg.ffn_hidden())?;
    for &n in &args.tokens {
        let side = square_side(n).unwrap_or(1) * cfg.patch_size;
        let inputs =
            BenchInputs::new(cfg.in_channels, side, args.caption_tokens, cfg.cap_feat_dim)?;
        let plain = inputs.dit_input();
        let step = |inp: &DitInput| {
            best_of(args.repeat.max(1), || {
                model.forward(inp)?;
                Ok(())
            })
        };
        let (linear_secs, linear_flops) = time_linear(&ffn_in, n, dtype, args.repeat)?;
        let mut rows = vec![
            ("linear".to_string(), linear_secs, linear_flops),
            (
                "step".to_string(),
                step(&plain)?,
                lumina2_flops(&cfg, n, args.caption_tokens),
            ),
        ];
        let f = args.context_drop;
        if f > 1 {
            let secs = step(&plain.with_kv_pool(Some(f)))?;
            rows.push((format!("step, context drop {f}"), secs, f64::NAN));
        }
        run.rows(n, rows);
    }
    Ok(run.report())
}

/// One bench child's format, model and results so far.
struct ChildRun {
    name: &'static str,
    config_name: String,
    rss_before: u64,
    rss_loaded: u64,
    weight_bytes: u64,
    dtype_arg: BenchDtype,
    results: Vec<Value>,
}

impl ChildRun {
    /// Before the model is built: its name (with `--layers`), the resident memory so far.
    fn start(args: &BenchArgs, dtype_arg: BenchDtype, model: &str) -> Self {
        let config_name = match args.layers {
            None => model.to_string(),
            Some(l) => format!("{model}/{l}-layers"),
        };
        let name = dtype_name(dtype_arg);
        let rss_before = proc_status_bytes("VmRSS");
        eprintln!("{name}: building {config_name} with random weights…");
        Self {
            name,
            config_name,
            rss_before,
            rss_loaded: rss_before,
            weight_bytes: 0,
            dtype_arg,
            results: Vec::new(),
        }
    }

    /// After the model is built from `weights`.
    fn loaded(&mut self, weights: &Weights) {
        self.weight_bytes = weight_bytes(weights, self.dtype_arg);
        self.rss_loaded = proc_status_bytes("VmRSS");
    }

    /// Prints and records (what, seconds, FLOPs) rows at `n` tokens; NaN FLOPs: not counted.
    fn rows(&mut self, n: usize, rows: Vec<(String, f64, f64)>) {
        let name = self.name;
        for (what, secs, f) in rows {
            eprintln!(
                "{name} {n:>5} tokens {what:<5} {:>10.1} ms {:>7.1} GFLOP/s",
                secs * 1e3,
                f / secs / 1e9
            );
            self.results.push(json!({
                "name": what,
                "config": self.config_name,
                "tokens": n,
                "dtype": name,
                "ms": secs * 1e3,
                "gflops": if f.is_finite() { Some(f / secs / 1e9) } else { None },
            }));
        }
    }

    /// The child's JSON: its rows and its memory.
    fn report(self) -> Value {
        json!({
            "results": self.results,
            "memory": {
                "dtype": self.name,
                "config": self.config_name,
                "weight_bytes": self.weight_bytes,
                "rss_model_bytes": self.rss_loaded.saturating_sub(self.rss_before),
                "peak_rss_bytes": proc_status_bytes("VmHWM"),
            },
        })
    }
}

/// The largest matmul of a block, alone: the SwiGLU's input projection, D → ffn.
fn ffn_probe(dtype_arg: BenchDtype, hidden: usize, ffn: usize) -> Result<Linear> {
    Ok(Linear::load_ternarizable(
        &bench_weights(1, dtype_arg).pp("w1"),
        hidden,
        ffn,
        false,
        Init::XavierUniform,
    )?)
}

/// Random latents (1, C, side, side), t = 0.5 and a full caption of `tokens` × `width`.
struct BenchInputs {
    latents: Tensor,
    t: Tensor,
    caption: Tensor,
    mask: Tensor,
}

impl BenchInputs {
    fn new(channels: usize, side: usize, tokens: usize, width: usize) -> Result<Self> {
        let dev = Device::Cpu;
        Ok(Self {
            latents: Tensor::randn(0f32, 1.0, (1, channels, side, side), &dev)?,
            t: Tensor::new(&[0.5f32], &dev)?,
            caption: Tensor::randn(0f32, 1.0, (1, tokens, width), &dev)?,
            mask: Tensor::ones((1, tokens), DType::U8, &dev)?,
        })
    }

    fn dit_input(&self) -> DitInput<'_> {
        DitInput::new(&self.latents, &self.t, &self.caption, &self.mask)
    }
}

/// The fastest of `runs` calls of `f`, in seconds.
fn best_of(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// FLOPs of one Lumina-Image-2.0 forward at batch 1: the caption refiner over the caption,
/// the noise refiner over the image, every main block over the joint sequence (2·multiply-adds
/// of every matmul; norms, activations and RoPE not counted).
fn lumina2_flops(cfg: &Lumina2Config, tokens: usize, caption: usize) -> f64 {
    let d = cfg.hidden_size as f64;
    let dkv = (cfg.num_kv_heads * cfg.head_dim()) as f64;
    let ffn = cfg.ffn_hidden() as f64;
    let dc = cfg.cond_dim() as f64;
    let block = |n: f64, modulated: bool| {
        2.0 * n * (d * d + 2.0 * d * dkv) // q, k, v
            + 4.0 * n * n * d // q kᵀ and p v
            + 2.0 * n * d * d // output projection
            + 2.0 * n * 3.0 * d * ffn // SwiGLU
            + if modulated { 2.0 * dc * 4.0 * d } else { 0.0 }
    };
    let (n, l) = (tokens as f64, caption as f64);
    let refiners = cfg.num_refiner_layers as f64;
    let p2 = (cfg.patch_size * cfg.patch_size) as f64;
    cfg.num_layers as f64 * block(n + l, true)
        + refiners * (block(n, true) + block(l, false))
        + 2.0 * l * cfg.cap_feat_dim as f64 * d // caption projection
        + 2.0 * n * p2 * cfg.in_channels as f64 * d // patch embedder
        + 2.0 * n * d * p2 * cfg.out_channels() as f64 // final layer
}

/// The fastest of `repeat` forwards and the fastest median block among them.
fn time_step(model: &NextDit, inp: &DitInput, repeat: usize) -> Result<(f64, f64)> {
    let (mut best_step, mut best_block) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..repeat.max(1) {
        let mut blocks = Vec::with_capacity(model.config().num_layers);
        let start = Instant::now();
        let mut last = start;
        model.forward_observed(inp, |_| {
            let now = Instant::now();
            blocks.push((now - last).as_secs_f64());
            last = now;
        })?;
        best_step = best_step.min(start.elapsed().as_secs_f64());
        // the first block also carries the embedders; the median skips it
        blocks.sort_by(f64::total_cmp);
        best_block = best_block.min(blocks.get(blocks.len() / 2).copied().unwrap_or(0.0));
    }
    Ok((best_step, best_block))
}

/// The fastest of `repeat` (at least 3) passes of `tokens` rows through `linear`.
fn time_linear(linear: &Linear, tokens: usize, dtype: DType, repeat: usize) -> Result<(f64, f64)> {
    let (in_dim, out_dim) = (linear.in_dim(), linear.out_dim());
    let x = Tensor::randn(0f32, 1.0, (tokens, in_dim), &Device::Cpu)?.to_dtype(dtype)?;
    let best = best_of(repeat.max(3), || {
        linear.forward(&x)?;
        Ok(())
    })?;
    Ok((best, 2.0 * (tokens * in_dim * out_dim) as f64))
}

/// The fastest of `repeat` (at least 3) self-attention products of one block (`softmax(q kᵀ) v`
/// over all heads, projections excluded); with `pool` > 1, Context Drop's pooling of the keys
/// and values over the token grid is timed with it and the product reads f² times fewer keys.
fn time_attention(
    cfg: &NextDitConfig,
    tokens: usize,
    dtype: DType,
    pool: usize,
    repeat: usize,
) -> Result<(f64, f64)> {
    let dh = cfg.head_dim();
    let heads = |h: usize| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1.0, (1, h, tokens, dh), &Device::Cpu)?.to_dtype(dtype)?)
    };
    let (q, k, v) = (
        heads(cfg.num_attention_heads)?,
        heads(cfg.kv_heads())?,
        heads(cfg.kv_heads())?,
    );
    let scale = 1.0 / (dh as f64).sqrt();
    let side = square_side(tokens).unwrap_or(1);
    let kv_pool = KvPool {
        factor: pool,
        grid: (side, side),
        starts: &[],
    };
    let mut keys = tokens;
    let best = best_of(repeat.max(3), || {
        let (k, v) = (kv_pool.pool(&k)?, kv_pool.pool(&v)?);
        keys = k.dim(2)?;
        flash_attention(&q, &k, &v, None, scale)?;
        Ok(())
    })?;
    let flops = 4.0 * (tokens * keys * cfg.num_attention_heads * dh) as f64;
    Ok((best, flops))
}

/// FLOPs of one block and of one forward at batch 1: 2·(multiply-adds) of every matmul,
/// attention's two products included (norms, activations and RoPE are not counted).
fn flops(cfg: &NextDitConfig, tokens: usize, caption: usize) -> (f64, f64) {
    let (n, l) = (tokens as f64, caption as f64);
    let d = cfg.hidden_size as f64;
    let dkv = (cfg.kv_heads() * cfg.head_dim()) as f64;
    let cap = cfg.cross_attention_dim as f64;
    let ffn = cfg.ffn_hidden() as f64;
    let dc = cfg.cond_dim() as f64;
    let block = 2.0 * n * (d * d + 2.0 * d * dkv) // q, k, v
        + 2.0 * l * cap * 2.0 * dkv // caption k, v
        + 4.0 * n * n * d // self-attention: q kᵀ and p v
        + 4.0 * n * l * d // cross-attention
        + 2.0 * n * d * d // output projection
        + 2.0 * n * 3.0 * d * ffn // SwiGLU
        + 2.0 * dc * 4.0 * d; // adaLN modulation
    let p2 = (cfg.patch_size * cfg.patch_size) as f64;
    let step = cfg.num_layers as f64 * block
        + 2.0 * n * p2 * cfg.in_channels as f64 * d // patch embedder
        + 2.0 * n * d * p2 * cfg.out_channels() as f64; // final layer
    (block, step)
}

/// A `/proc/self/status` field in bytes (0 where there is no procfs).
pub(super) fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn print_table(report: &Value) {
    let peak = &report["peak_gflops"];
    let show = |v: &Value| v.as_f64().map_or("n/a".to_string(), |g| format!("{g:.0}"));
    println!(
        "peak ({} threads, {}): f32 {} GFLOP/s · bf16 {} GFLOP/s · int8 {} GOP/s",
        report["threads"],
        report["isa"].as_str().unwrap_or(""),
        show(&peak["f32"]),
        show(&peak["bf16"]),
        show(&peak["int8"])
    );
    println!(
        "f32 linears: {} (GFLOP/s count the classical product's FLOPs)",
        report["f32_matmul"].as_str().unwrap_or("")
    );
    println!(
        "\n| what | config | tokens | dtype | ms | GFLOP/s | % of peak |\n|---|---|---|---|---:|---:|---:|"
    );
    for r in report["results"].as_array().into_iter().flatten() {
        let dtype = r["dtype"].as_str().unwrap_or("");
        let gflops = r["gflops"].as_f64().unwrap_or(0.0);
        // ternary layers run on int8 arithmetic (the rest of a ternary step on bf16); a CPU
        // without the bf16 or int8 dot product computes them in f32, so that peak is the
        // yardstick there, and the column says so
        // block-quantised linears are expanded to bf16 and multiplied there
        let yardstick = match dtype {
            "ternary" => "int8",
            "q8_0" | "q4_k" => "bf16",
            d => d,
        };
        if r["gflops"].is_null() {
            println!(
                "| {} | {} | {} | {dtype} | {:.1} | – | – |",
                r["name"].as_str().unwrap_or(""),
                r["config"].as_str().unwrap_or(""),
                r["tokens"],
                r["ms"].as_f64().unwrap_or(0.0)
            );
            continue;
        }
        let pct = match (peak[yardstick].as_f64(), peak["f32"].as_f64()) {
            (Some(p), _) => format!("{:.0} %", 100.0 * gflops / p),
            (None, Some(p)) => format!("{:.0} % of f32", 100.0 * gflops / p),
            (None, None) => "n/a".into(),
        };
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.0} | {} |",
            r["name"].as_str().unwrap_or(""),
            r["config"].as_str().unwrap_or(""),
            r["tokens"],
            dtype,
            r["ms"].as_f64().unwrap_or(0.0),
            gflops,
            pct
        );
    }
    println!("\n| config | dtype | weights | resident after load | ratio | peak resident |\n|---|---|---:|---:|---:|---:|");
    for m in report["memory"].as_array().into_iter().flatten() {
        let gib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        let w = gib(&m["weight_bytes"]);
        let rss = gib(&m["rss_model_bytes"]);
        println!(
            "| {} | {} | {w:.2} GiB | {rss:.2} GiB | {:.2}× | {:.2} GiB |",
            m["config"].as_str().unwrap_or(""),
            m["dtype"].as_str().unwrap_or(""),
            rss / w.max(1e-9),
            gib(&m["peak_rss_bytes"])
        );
    }
}
