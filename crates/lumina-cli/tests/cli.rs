//! The `lumina` binary end to end, on the shared fixtures.

mod common;

use common::read_png;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    match std::env::var_os("LUMINA_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

fn lumina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lumina"))
        .args(args)
        .output()
        .expect("the lumina binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `lumina inspect PATH` succeeds and its report contains every line fragment of `wants`.
fn inspect_shows(path: &Path, wants: &[&str]) {
    let out = lumina(&["inspect", path.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in wants {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn inspect_a_pipeline_folder() {
    inspect_shows(
        &fixtures().join("pipeline_lumina2/one_prompt/pipeline"),
        &[
            "(Lumina2Pipeline)",
            "transformer  Lumina2Transformer2DModel (diffusers)",
            "text_encoder  Gemma2Model",
            "keys     complete",
            "stored as f32 100%",
            "cap_feat_dim=",
        ],
    );
}

#[test]
fn inspect_json_is_one_object_with_per_component_counts() {
    let dir = fixtures().join("nextdit/tiny_square/transformer");
    let out = lumina(&["inspect", "--json", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("valid JSON");
    let c = &json["components"][0];
    assert_eq!(c["class_name"], "LuminaNextDiT2DModel");
    assert!(c["weights"]["parameters"].as_u64().unwrap_or(0) > 100_000);
    assert_eq!(c["weights"]["dtypes"]["f32"], c["weights"]["parameters"]);
    assert_eq!(c["keys"]["missing"].as_array().map(Vec::len), Some(0));
    assert_eq!(c["keys"]["unused"].as_array().map(Vec::len), Some(0));
}

#[test]
fn inspect_reports_missing_and_unused_keys() {
    let src = fixtures().join("lumina2/tiny_square/transformer");
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).expect("copy");
    let weights = src.join("diffusion_pytorch_model.safetensors");
    let mut tensors = candle_like_rename(&weights);
    tensors.retain(|(k, _)| k != "norm_out.linear_2.bias");
    write_safetensors(
        &tmp.path().join("diffusion_pytorch_model.safetensors"),
        &tensors,
    );
    let out = lumina(&["inspect", tmp.path().to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // removed and renamed-away keys are missing; the renamed one is unused
    assert!(
        text.contains("missing  2 tensor(s)") && text.contains("norm_out.linear_2.bias"),
        "{text}"
    );
    assert!(text.contains("             x_embedder.bias\n"), "{text}");
    assert!(
        text.contains("unused   1 tensor(s)") && text.contains("renamed.x_embedder.bias"),
        "{text}"
    );
}

#[test]
fn inspect_of_a_folder_without_config_fails_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = lumina(&["inspect", tmp.path().to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("has no config.json"),
        "{err}"
    );
    let out = lumina(&["inspect", "/no/such/folder"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("no such file or folder"),
        "{err}"
    );
    // each fact once: the path and the reason
    assert_eq!(err.matches("/no/such/folder").count(), 1, "{err}");
    assert_eq!(err.matches("no such file or folder").count(), 1, "{err}");
}

/// A single weights file: summarised, audited against the `config.json` beside it; an
/// upstream Lumina-Next file without one is audited with the inferred config; a file that is
/// not safetensors is a clear error naming it.
#[test]
fn inspect_takes_a_single_weights_file() {
    let file =
        fixtures().join("lumina2/tiny_square/transformer/diffusion_pytorch_model.safetensors");
    inspect_shows(
        &file,
        &[
            "diffusion_pytorch_model.safetensors  Lumina2Transformer2DModel",
            "weights  1 file(s)",
            "keys     complete",
        ],
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let lone = tmp.path().join("model.safetensors");
    std::fs::copy(&file, &lone).expect("copy");
    let out = lumina(&["inspect", lone.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("weights  1 file(s)") && text.contains("no key audit: no config.json"),
        "{text}"
    );

    let junk = tmp.path().join("model.gguf");
    std::fs::write(&junk, b"not a safetensors file").expect("write");
    let out = lumina(&["inspect", junk.to_str().expect("utf-8 path")]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("model.gguf"), "{err}");
}

/// The fixture's tensors as raw (name, header entry, bytes), with `x_embedder.bias` renamed so
/// one key goes unused and another goes missing.
fn candle_like_rename(path: &Path) -> Vec<(String, (serde_json::Value, Vec<u8>))> {
    let raw = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw[8..8 + n]).expect("header");
    let data = &raw[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let off = v["data_offsets"].as_array().expect("offsets");
            let (s, e) = (
                off[0].as_u64().unwrap_or(0) as usize,
                off[1].as_u64().unwrap_or(0) as usize,
            );
            let name = if k == "x_embedder.bias" {
                format!("renamed.{k}")
            } else {
                k
            };
            (name, (v, data[s..e].to_vec()))
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &[(String, (serde_json::Value, Vec<u8>))]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (entry, bytes)) in tensors {
        let mut entry = entry.clone();
        entry["data_offsets"] = serde_json::json!([data.len(), data.len() + bytes.len()]);
        header.insert(name.clone(), entry);
        data.extend_from_slice(bytes);
    }
    let header = serde_json::to_vec(&header).expect("json");
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    std::fs::write(path, out).expect("write");
}

// ------------------------------------------------------------------------ generate

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

fn next_pipeline() -> PathBuf {
    fixtures().join("pipeline_next/two_prompts/pipeline")
}

fn generate(model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().expect("utf-8"),
        "--prompt",
        "a red circle above a blue square",
        "--output",
        out.to_str().expect("utf-8"),
    ];
    if !extra.contains(&"--steps") {
        args.extend(["--steps", "3"]);
    }
    args.extend_from_slice(extra);
    lumina(&args)
}

#[test]
fn generate_writes_a_reproducible_png_with_its_parameters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    for out in [&a, &b] {
        let o = generate(
            &next_pipeline(),
            out,
            &[
                "--seed",
                "5",
                "--width",
                "48",
                "--height",
                "32",
                "--negative-prompt",
                "a cat",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), out.display().to_string());
    }
    let (w, h, pixels, text) = read_png(&a);
    assert_eq!((w, h), (48, 32));
    assert_eq!(pixels, read_png(&b).2, "same seed, same image");
    for want in [
        "a red circle above a blue square\nNegative prompt: a cat\n",
        "Steps: 3",
        "Seed: 5",
        "Size: 48x32",
        "Sampler: euler",
        "CFG scale: 4",
        "Pipeline: Lumina-Next",
    ] {
        assert!(text.contains(want), "{want:?} not in {text:?}");
    }
    let c = tmp.path().join("c.png");
    assert!(generate(
        &next_pipeline(),
        &c,
        &[
            "--seed",
            "6",
            "--width",
            "48",
            "--height",
            "32",
            "--negative-prompt",
            "a cat"
        ]
    )
    .status
    .success());
    assert_ne!(pixels, read_png(&c).2, "another seed, another image");
}

#[test]
fn several_images_are_numbered_and_each_reproducible_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out.png");
    let o = generate(
        &fixtures().join("pipeline_lumina2/one_prompt/pipeline"),
        &out,
        &["-k", "2", "--seed", "10", "--solver", "heun"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let second = read_png(&tmp.path().join("out-1.png"));
    assert!(
        second.3.contains("Seed: 11")
            && second.3.contains("Sampler: heun")
            && second.3.contains("Pipeline: Lumina-Image-2.0"),
        "{}",
        second.3
    );
    let alone = tmp.path().join("alone.png");
    assert!(generate(
        &fixtures().join("pipeline_lumina2/one_prompt/pipeline"),
        &alone,
        &["--seed", "11", "--solver", "heun"]
    )
    .status
    .success());
    assert_eq!(read_png(&alone).2, second.2);
    assert_ne!(read_png(&tmp.path().join("out-0.png")).2, second.2);
}

#[test]
fn bad_sizes_and_steps_fail_with_the_allowed_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("x.png");
    let o = generate(&next_pipeline(), &out, &["--width", "50"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--width 50 is not a positive multiple of 16; try 48 or 64"),
        "{}",
        stderr(&o)
    );
    let o = generate(&next_pipeline(), &out, &["--steps", "0"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--steps must be at least 1"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn missing_components_and_unknown_classes_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("x.png");
    let broken = tmp.path().join("pipeline");
    copy_dir(&next_pipeline(), &broken);
    std::fs::remove_dir_all(broken.join("vae")).expect("rm");
    let o = generate(&broken, &out, &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("has no `vae/` folder"),
        "{}",
        stderr(&o)
    );

    copy_dir(&next_pipeline().join("vae"), &broken.join("vae"));
    let sched = broken.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&sched)
        .expect("read")
        .replace("FlowMatchEulerDiscreteScheduler", "DDIMScheduler");
    std::fs::write(&sched, text).expect("write");
    let o = generate(&broken, &out, &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("unknown scheduler `DDIMScheduler`"),
        "{}",
        stderr(&o)
    );

    copy_dir(
        &next_pipeline().join("scheduler"),
        &broken.join("scheduler"),
    );
    let index = broken.join("model_index.json");
    let text = std::fs::read_to_string(&index)
        .expect("read")
        .replace("\"LuminaPipeline\"", "\"StableDiffusionPipeline\"");
    std::fs::write(&index, text).expect("write");
    let o = generate(&broken, &out, &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("unknown pipeline `StableDiffusionPipeline`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_prompt_over_the_token_limit_is_truncated_with_a_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = generate(
        &next_pipeline(),
        &tmp.path().join("x.png"),
        &["--max-sequence-length", "4"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("truncated") && err.contains("above a blue square"),
        "{err}"
    );
    // the image says so too
    let (_, _, _, text) = read_png(&tmp.path().join("x.png"));
    assert!(
        text.contains("Prompt truncated: \"above a blue square\""),
        "{text}"
    );
}

#[test]
fn a_repo_id_resolves_in_the_local_hub_cache_offline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("models--alpha--tiny-lumina");
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs/main"), "0123abcd").expect("ref");
    copy_dir(&next_pipeline(), &repo.join("snapshots/0123abcd"));
    let out = tmp.path().join("x.png");
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_lumina"))
            .args([
                "generate",
                "--model",
                model,
                "--prompt",
                "a cat",
                "--steps",
                "2",
                "--output",
                out.to_str().expect("utf-8"),
            ])
            .env("HF_HUB_CACHE", tmp.path())
            .output()
            .expect("runs")
    };
    let o = run("alpha/tiny-lumina");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(read_png(&out).3.contains("Model: alpha/tiny-lumina"));
    let o = run("alpha/absent");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("model `alpha/absent` is not in the local Hugging Face cache"),
        "{}",
        stderr(&o)
    );
}

/// `--transformer` swaps in another transformer — here an upstream Lumina-T2X
/// `consolidated_ema` file with the pipeline's own weights under upstream names: same image.
#[test]
fn an_upstream_transformer_file_replaces_the_pipelines_own() {
    use candle_core::{Device, Tensor};
    use lumina::models::next_dit::original::original_key;
    use std::collections::HashMap;

    let tmp = tempfile::tempdir().expect("tempdir");
    let pipeline = tmp.path().join("pipeline");
    copy_dir(&next_pipeline(), &pipeline);
    // upstream checkpoints hold one query projection: make the diffusers copy agree
    let file = pipeline.join("transformer/diffusion_pytorch_model.safetensors");
    let mut weights: HashMap<String, Tensor> =
        candle_core::safetensors::load(&file, &Device::Cpu).expect("load");
    let layers = weights
        .keys()
        .filter(|k| k.ends_with("attn1.to_q.weight"))
        .count();
    for layer in 0..layers {
        for leaf in ["to_q.weight", "norm_q.weight", "norm_q.bias"] {
            let w = weights[&format!("layers.{layer}.attn1.{leaf}")].clone();
            weights.insert(format!("layers.{layer}.attn2.{leaf}"), w);
        }
    }
    candle_core::safetensors::save(&weights, &file).expect("save");
    let upstream: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (original_key(k), v.clone()))
        .collect();
    let elsewhere = tmp.path().join("upstream");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let single = elsewhere.join("consolidated_ema.00-of-01.safetensors");
    candle_core::safetensors::save(&upstream, &single).expect("save");
    // inspected alone, without a config: audited with the config the loader infers
    inspect_shows(
        &single,
        &[
            "LuminaNextDiT2DModel",
            "inferred from the",
            "keys     complete",
        ],
    );
    std::fs::copy(
        pipeline.join("transformer/config.json"),
        elsewhere.join("config.json"),
    )
    .expect("config");

    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    assert!(generate(&pipeline, &a, &["--seed", "3"]).status.success());
    let o = generate(
        &pipeline,
        &b,
        &[
            "--seed",
            "3",
            "--transformer",
            single.to_str().expect("utf-8"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_png(&a).2, read_png(&b).2);
}

/// `quantize` packs a whole pipeline's transformer to 2 bits (other components copied),
/// `inspect` shows the packed size, and the ternary pipeline generates with either
/// activation path; an existing output folder is refused.
#[test]
fn quantize_writes_a_ternary_pipeline_that_inspects_and_generates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("ternary");
    let src = next_pipeline();
    let out = lumina(&[
        "quantize",
        src.to_str().expect("utf-8"),
        "-o",
        out_dir.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ternary layers"), "{}", stdout(&out));
    assert!(
        out_dir.join("vae/config.json").is_file() && out_dir.join("model_index.json").is_file()
    );

    let out = lumina(&["inspect", out_dir.to_str().expect("utf-8")]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for want in ["ternary  ", "packed at 2 bits", "keys     complete"] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    for activations in ["exact", "int8"] {
        let png = tmp.path().join(format!("{activations}.png"));
        let out = generate(&out_dir, &png, &["--ternary-activations", activations]);
        assert!(out.status.success(), "{activations}: {}", stderr(&out));
        assert!(png.is_file());
    }

    let again = lumina(&[
        "quantize",
        src.to_str().expect("utf-8"),
        "-o",
        out_dir.to_str().expect("utf-8"),
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn fast_sampling_flags_run_on_both_diffusers_families_and_are_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lumina2 = fixtures().join("pipeline_lumina2/one_prompt/pipeline");
    for (i, model) in [next_pipeline(), lumina2].iter().enumerate() {
        let out = tmp.path().join(format!("fast-{i}.png"));
        let o = generate(
            model,
            &out,
            &[
                "--steps",
                "4",
                "--seed",
                "3",
                "--schedule",
                "sigmoid",
                "--context-drop",
                "2:0.6",
                "--cache-threshold",
                "0.3",
                "--cfg-trunc-ratio",
                "0.5",
                "--cfg-renorm",
                "clamp:1",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("step cache computed"), "{}", stderr(&o));
        let text = read_png(&out).3;
        for want in [
            "Schedule: sigmoid:0.6,6,20",
            "Context drop: 2:0.6",
            "Step cache: 0.3",
            "CFG truncation: 0.5",
            "CFG renorm: clamp:1",
        ] {
            assert!(text.contains(want), "{want:?} not in {text:?}");
        }
    }
    for (flags, want) in [
        (&["--schedule", "cosine"][..], "--schedule"),
        (
            &["--context-drop", "0"][..],
            "context drop: expected F or F:T",
        ),
        (
            &["--cfg-renorm", "clamp:-1"][..],
            "guidance renormalisation",
        ),
        (
            &["--cache-threshold=-1"][..],
            "cache threshold: expected finite and >= 0",
        ),
        (
            &["--shift", "2", "--schedule", "uniform"][..],
            "cannot be used with",
        ),
    ] {
        let o = generate(&next_pipeline(), &tmp.path().join("bad.png"), flags);
        assert!(!o.status.success(), "{flags:?} should fail");
        assert!(stderr(&o).contains(want), "{flags:?}: {}", stderr(&o));
    }
}

#[test]
fn pipeline_bench_refuses_unknown_pipelines_sizes_and_dtypes() {
    for (args, expected) in [
        (
            &["bench", "--pipeline", "sdxl"][..],
            "--pipeline sdxl: unknown pipeline (known: lumina-image-2, lumina-next-sft)",
        ),
        (
            &["bench", "--pipeline", "--sizes", "500"][..],
            "--sizes 500: expected a positive multiple of 16",
        ),
        (
            &["bench", "--pipeline", "--dtype", "ternary"][..],
            "--pipeline --dtype ternary",
        ),
        (&["bench", "--pipeline", "--repeat", "0"][..], "--repeat 0"),
    ] {
        let o = lumina(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
    }
}

fn formats() -> PathBuf {
    fixtures().join("lumina2_formats/tiny")
}

fn lumina2_pipeline() -> PathBuf {
    fixtures().join("pipeline_lumina2/one_prompt/pipeline")
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The Lumina-Image-2.0 transformer in its diffusers, upstream, ComfyUI and a written GGUF
/// layout replaces a pipeline's own; the three full-precision layouts give the same image.
#[test]
fn every_transformer_layout_generates_and_gguf_is_written_and_inspected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("t.gguf");
    let out = lumina(&[
        "quantize",
        utf8(&formats().join("transformer")),
        "--to",
        "gguf-q4_k",
        "-o",
        utf8(&gguf),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    inspect_shows(
        &gguf,
        &[
            "Lumina2Transformer2DModel",
            "q4_k",
            "q8_0",
            "keys     complete",
            "`lumina.config` metadata",
        ],
    );
    let again = lumina(&[
        "quantize",
        utf8(&formats().join("transformer")),
        "--to",
        "gguf-q4_k",
        "-o",
        utf8(&gguf),
    ]);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let bad = lumina(&[
        "quantize",
        utf8(&formats().join("transformer")),
        "--to",
        "gguf-q3_k",
        "-o",
        utf8(&tmp.path().join("x.gguf")),
    ]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("q8_0, q4_0"),
        "{}",
        stderr(&bad)
    );

    let mut images = Vec::new();
    for layout in [
        "transformer",
        "original.safetensors",
        "comfy.safetensors",
        "model-Q8_0.gguf",
    ] {
        let png = tmp.path().join(format!("{layout}.png"));
        let o = generate(
            &lumina2_pipeline(),
            &png,
            // the size given: an inferred config has the released model's training size
            &[
                "--seed",
                "5",
                "-W",
                "64",
                "-H",
                "64",
                "--transformer",
                utf8(&formats().join(layout)),
            ],
        );
        assert!(o.status.success(), "{layout}: {}", stderr(&o));
        images.push(read_png(&png).2);
    }
    assert!(
        images[0] == images[1],
        "the upstream file gives another image"
    );
    assert!(
        images[0] == images[2],
        "the ComfyUI file gives another image"
    );
    let o = generate(
        &lumina2_pipeline(),
        &tmp.path().join("g.png"),
        &["--transformer", utf8(&gguf)],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // a weights file where the pipeline folder belongs is named for what it is
    let o = generate(
        &formats().join("comfy.safetensors"),
        &tmp.path().join("x.png"),
        &[],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--transformer FILE"), "{}", stderr(&o));
}

/// A ComfyUI all-in-one file: inspect names its other parts and audits the transformer;
/// `--transformer` reads the transformer out of it; `--model` says what it is.
#[test]
fn an_all_in_one_checkpoint_is_recognised() {
    use candle_core::{Device, Tensor};
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut tensors =
        candle_core::safetensors::load(formats().join("comfy.safetensors"), &Device::Cpu)
            .expect("load");
    let small = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    for key in [
        "text_encoders.gemma2_2b.transformer.model.embed_tokens.weight",
        "text_encoders.gemma2_2b.transformer.model.norm.weight",
        "first_stage_model.decoder.conv_in.weight",
    ] {
        tensors.insert(key.to_string(), small.clone());
    }
    let file = tmp.path().join("all_in_one.safetensors");
    candle_core::safetensors::save(&tensors, &file).expect("save");
    inspect_shows(
        &file,
        &[
            "Lumina2Transformer2DModel",
            "all-in-one",
            "text encoder (2 tensors under `text_encoders.`)",
            "VAE (1 tensors under `first_stage_model.`)",
            "keys     complete",
        ],
    );
    let (a, b) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    let o = generate(
        &lumina2_pipeline(),
        &a,
        &[
            "--seed",
            "2",
            "-W",
            "64",
            "-H",
            "64",
            "--transformer",
            utf8(&file),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = generate(
        &lumina2_pipeline(),
        &b,
        &[
            "--seed",
            "2",
            "-W",
            "64",
            "-H",
            "64",
            "--transformer",
            utf8(&formats().join("comfy.safetensors")),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        read_png(&a).2 == read_png(&b).2,
        "the all-in-one file gives another image"
    );
    let o = generate(&file, &tmp.path().join("x.png"), &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("all-in-one") && stderr(&o).contains("text encoder"),
        "{}",
        stderr(&o)
    );
}

/// `--lora FILE:SCALE` (repeatable) changes the image, merged and unmerged agree, the PNG
/// records the LoRAs, and bad LoRA arguments fail naming the file or key.
#[test]
fn loras_apply_from_the_command_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let transformer = formats().join("original.safetensors");
    let kohya = format!("{}:-0.7", utf8(&formats().join("lora_kohya.safetensors")));
    let original = format!("{}:0.5", utf8(&formats().join("lora_original.safetensors")));
    let run = |name: &str, extra: &[&str]| {
        let png = tmp.path().join(format!("{name}.png"));
        let mut args = vec![
            "--seed",
            "4",
            "-W",
            "64",
            "-H",
            "64",
            "--transformer",
            utf8(&transformer),
        ];
        args.extend_from_slice(extra);
        let o = generate(&lumina2_pipeline(), &png, &args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        read_png(&png)
    };
    let base = run("base", &[]);
    let merged = run("merged", &["--lora", &kohya, "--lora", &original]);
    let apart = run(
        "apart",
        &[
            "--lora",
            &kohya,
            "--lora",
            &original,
            "--lora-mode",
            "unmerged",
        ],
    );
    assert!(base.2 != merged.2, "the LoRAs changed nothing");
    let worst = merged
        .2
        .iter()
        .zip(&apart.2)
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(
        worst <= Some(2),
        "merged and unmerged differ by {worst:?} levels"
    );
    assert!(
        merged
            .3
            .contains("LoRA: lora_kohya.safetensors:-0.7, lora_original.safetensors:0.5"),
        "{}",
        merged.3
    );

    let weights = formats().join("transformer/diffusion_pytorch_model.safetensors");
    for (arg, want) in [
        (
            utf8(&tmp.path().join("none.safetensors")).to_string(),
            "none.safetensors".to_string(),
        ),
        (
            format!("{}:0.5", utf8(&weights)),
            "is not a LoRA tensor".to_string(),
        ),
    ] {
        let o = generate(
            &lumina2_pipeline(),
            &tmp.path().join("x.png"),
            &[
                "-W",
                "64",
                "-H",
                "64",
                "--transformer",
                utf8(&transformer),
                "--lora",
                &arg,
            ],
        );
        assert!(!o.status.success(), "{arg} was accepted");
        assert!(stderr(&o).contains(&want), "{arg}: {}", stderr(&o));
    }
}

/// A NaN in the weights is an error naming the tensor (small models are checked as they load;
/// `--check-weights` checks any); weights that overflow the velocity stop the solve at the step
/// where the state turned non-finite — never an image.
#[test]
fn non_finite_weights_and_states_are_errors() {
    use candle_core::{Device, Tensor};
    let tmp = tempfile::tempdir().expect("tempdir");
    let file_of = |p: &Path| p.join("transformer/diffusion_pytorch_model.safetensors");
    for (name, value, want) in [
        ("nan", f32::NAN, "tensor `x_embedder.weight`"),
        ("huge", 3e38, "the state after solver step 1 of 3"),
    ] {
        let pipeline = tmp.path().join(name);
        copy_dir(&lumina2_pipeline(), &pipeline);
        let mut weights =
            candle_core::safetensors::load(file_of(&pipeline), &Device::Cpu).expect("load");
        let w = &weights["x_embedder.weight"];
        let broken = Tensor::full(value, w.dims(), &Device::Cpu).expect("full");
        weights.insert("x_embedder.weight".into(), broken);
        candle_core::safetensors::save(&weights, file_of(&pipeline)).expect("save");
        let png = tmp.path().join(format!("{name}.png"));
        let o = generate(
            &pipeline,
            &png,
            &["-W", "64", "-H", "64", "--check-weights"],
        );
        assert!(!o.status.success(), "{name}: an image was made");
        assert!(!png.exists(), "{name}: a PNG was written");
        let err = stderr(&o);
        assert!(
            err.contains(want) && err.contains("NaN or infinite"),
            "{name}: {err}"
        );
    }
}
