//! The built-in models: `generate`, `inspect` and `eval` with no `--model` (the `shapes`
//! model) and with `--model shapes-ternary`, and their quality by the spec's judge.

mod common;

use common::read_png;

use std::path::Path;
use std::process::{Command, Output};

fn lumina(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lumina"))
        .env("LUMINA_CACHE_DIR", cache)
        .args(args)
        .output()
        .expect("the lumina binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `lumina generate --prompt "a red circle above a blue square"` plus `extra` into `out`, which
/// must succeed; the PNG as [`read_png`] reads it.
fn generate(cache: &Path, out: &Path, extra: &[&str]) -> (u32, u32, Vec<u8>, String) {
    let mut args = vec![
        "generate",
        "--prompt",
        "a red circle above a blue square",
        "--output",
        out.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let o = lumina(cache, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    read_png(out)
}

/// Words outside the model's vocabulary would all read as `<unk>`: an error naming them.
#[test]
fn words_outside_the_vocabulary_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("x.png");
    let o = lumina(
        &tmp.path().join("cache"),
        &[
            "generate",
            "--prompt",
            "a pink elephant",
            "--output",
            out.to_str().expect("utf-8"),
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("pink elephant") && err.contains("circle"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Every kernel level draws the same picture as the portable reference: AVX-512 (tiled
/// attention's exponentials, the `vdpbf16ps` linear), AVX2 (the FMA attention tile, the
/// widened bf16 linear) and the portable paths. A level above the CPU's is capped to the
/// CPU's (the run still has to succeed and match); `LUMINA_ISA` names the level per run.
#[test]
fn every_kernel_level_draws_the_same_image() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    for dtype in ["f32", "bf16"] {
        let run = |level: &str| {
            let out = tmp.path().join(format!("{dtype}-{level}.png"));
            let o = Command::new(env!("CARGO_BIN_EXE_lumina"))
                .env("LUMINA_CACHE_DIR", &cache)
                .env("LUMINA_ISA", level)
                .args([
                    "generate",
                    "--prompt",
                    "a big green square on the left",
                    "--seed",
                    "3",
                    "--dtype",
                    dtype,
                    "--output",
                    out.to_str().expect("utf-8"),
                ])
                .output()
                .expect("the lumina binary runs");
            assert!(o.status.success(), "{level}: {}", stderr(&o));
            read_png(&out).2
        };
        let portable = run("portable");
        for level in ["avx2", "avx512"] {
            let fast = run(level);
            let worst = fast
                .iter()
                .zip(&portable)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            let mean = fast
                .iter()
                .zip(&portable)
                .map(|(a, b)| f64::from(a.abs_diff(*b)))
                .sum::<f64>()
                / fast.len() as f64;
            // f32: only summation order differs; bf16: candle's matmul rounds differently
            let (max_worst, max_mean) = if dtype == "f32" { (2, 0.05) } else { (64, 2.0) };
            assert!(
                worst <= max_worst && mean <= max_mean,
                "{dtype} at {level}: pixels differ from portable by up to {worst}, {mean:.3} on average"
            );
        }
    }
}

#[test]
fn generate_needs_no_model_argument_and_is_reproducible() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let run = |name: &str| generate(&cache, &tmp.path().join(name), &["--seed", "7"]);
    let (w, h, pixels, text) = run("a.png");
    // native size of the shipped model
    assert_eq!((w, h), (32, 32));
    assert!(text.contains("built-in shapes"), "{text}");
    assert!(text.contains("a red circle above a blue square"), "{text}");
    // the second run reuses the extracted folder and draws the same picture
    assert_eq!(run("b.png").2, pixels);
    let folders: Vec<_> = std::fs::read_dir(&cache).expect("cache").collect();
    assert_eq!(folders.len(), 1, "one extracted model folder");
}

#[test]
fn inspect_without_a_folder_shows_the_built_in_model_complete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = lumina(tmp.path(), &["inspect"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("LuminaPixelPipeline"), "{text}");
    assert_eq!(
        text.matches("keys     complete").count(),
        2,
        "transformer and text encoder audited complete:\n{text}"
    );
}

/// The shipped model's judge accuracy measured 0.940 and 0.950 (README: two lists of 200
/// images of every kind) and 0.938 on this test's 64 images; an untrained or swapped model
/// scores 0. One standard deviation of a 64-image figure is about 0.03, and other CPUs
/// (portable kernels) may flip an image or two, hence the margin. Raise it with the model.
const ACCURACY_FLOOR: f64 = 0.85;

/// The ternary model's floor: it measured 0.984 on this test's 64 images and 0.965 over the
/// README's 2000 (0.014 under the full-precision model); the margin, under three standard
/// deviations of a 64-image figure, leaves room for other CPUs' kernels.
const TERNARY_ACCURACY_FLOOR: f64 = 0.9;

/// Floor of the judge at 64 × 64 with the default extrapolation (see the README's study).
const EXTRAPOLATED_FLOOR: f64 = 0.8;

/// Floor of the judge on 64 × 32 and 32 × 64 canvases.
const RECTANGLE_FLOOR: f64 = 0.7;

/// `lumina eval` of a built-in model on a prompt list of every kind (held-out pairs and all
/// four relations included), drawn with a seed the training runs never used for their own
/// evaluation; returns the overall accuracy.
fn judge(model: Option<&str>) -> f64 {
    judge_with(model, &[])
}

/// [`judge`] with more `eval` arguments (a size, a method).
fn judge_with(model: Option<&str>, extra: &[&str]) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "eval",
        "--per-kind",
        "8",
        "--seeds",
        "2",
        "--prompt-seed",
        "99",
        "--json",
    ];
    if let Some(model) = model {
        args.extend(["--model", model]);
    }
    args.extend_from_slice(extra);
    let o = lumina(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("eval --json prints one JSON object");
    assert_eq!(report["total"], 64);
    for kind in ["single", "position", "relation", "held-out pair"] {
        assert!(
            report["per_kind"][kind]["total"].as_u64() == Some(16),
            "kind {kind} missing: {report}"
        );
    }
    report["accuracy"].as_f64().expect("accuracy")
}

#[test]
fn the_built_in_model_passes_the_judge() {
    let accuracy = judge(None);
    assert!(
        accuracy >= ACCURACY_FLOOR,
        "judge accuracy {accuracy} < {ACCURACY_FLOOR}"
    );
}

/// Past the training size with the defaults `generate` and `eval` pick there (I-Max's
/// projected flow for a larger canvas), and on wide and tall canvases (trained as aspect
/// buckets). Floors well under what the README's study measures on other prompt lists.
#[test]
fn the_built_in_model_passes_the_judge_at_twice_its_size_and_on_rectangles() {
    for (size, floor) in [
        (["--width", "64", "--height", "64"], EXTRAPOLATED_FLOOR),
        (["--width", "64", "--height", "32"], RECTANGLE_FLOOR),
        (["--width", "32", "--height", "64"], RECTANGLE_FLOOR),
    ] {
        let accuracy = judge_with(None, &size);
        assert!(
            accuracy >= floor,
            "judge accuracy {accuracy} < {floor} at {size:?}"
        );
    }
}

#[test]
fn the_ternary_model_passes_the_judge() {
    let accuracy = judge(Some("shapes-ternary"));
    assert!(
        accuracy >= TERNARY_ACCURACY_FLOOR,
        "ternary judge accuracy {accuracy} < {TERNARY_ACCURACY_FLOOR}"
    );
}

/// `--model shapes-ternary` picks the second built-in model: 2-bit packed, complete, and
/// named in the image's metadata.
#[test]
fn the_ternary_model_is_built_in_and_packed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let o = lumina(&cache, &["inspect", "shapes-ternary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("ternary  88 layers"), "{text}");
    assert_eq!(text.matches("keys     complete").count(), 2, "{text}");
    let (w, h, _, text) = generate(
        &cache,
        &tmp.path().join("t.png"),
        &["--model", "shapes-ternary"],
    );
    assert_eq!((w, h), (32, 32));
    assert!(text.contains("built-in shapes-ternary"), "{text}");
}

/// Beyond the training size `generate` says what it does, on stderr and in the PNG.
#[test]
fn generate_beyond_the_training_size_says_how() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("big.png");
    let o = lumina(
        &cache,
        &[
            "generate",
            "--prompt",
            "a red circle",
            "-W",
            "64",
            "-H",
            "64",
            "--steps",
            "4",
            "--seed",
            "1",
            "--output",
            out.to_str().expect("utf-8"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("beyond the model's 32x32 training size") && err.contains("projected flow"),
        "{err}"
    );
    let (w, h, _, text) = read_png(&out);
    assert_eq!((w, h), (64, 64));
    assert!(text.contains("Extrapolation: "), "{text}");
    // an explicit method replaces the default
    let o = lumina(
        &cache,
        &[
            "generate",
            "--prompt",
            "a red circle",
            "-W",
            "64",
            "-H",
            "64",
            "--steps",
            "2",
            "--extrapolation",
            "pi",
            "--output",
            out.to_str().expect("utf-8"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("rope pi"), "{}", stderr(&o));
    let o = lumina(
        &cache,
        &[
            "generate",
            "--prompt",
            "a red circle",
            "--extrapolation",
            "yarn",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("yarn") && stderr(&o).contains("imax"),
        "{}",
        stderr(&o)
    );
}

/// A size past the machine's memory is refused before anything is allocated (the kernel
/// killed this request once), with the estimate, the limit and the largest size that fits.
#[test]
fn a_size_past_memory_is_refused_with_the_estimate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("never.png");
    let o = lumina(
        tmp.path(),
        &[
            "generate",
            "-p",
            "a red circle",
            "-W",
            "100000",
            "-H",
            "100000",
            "-o",
            out.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("100000x100000")
            && err.contains("estimated peak")
            && err.contains("GiB of memory available")
            && err.contains("largest square"),
        "{err}"
    );
    assert!(!out.exists(), "no image is written");
}

/// A bad output name is refused before the pipeline runs (no step is spent on an image that
/// could not be written), naming the file and what is accepted.
#[test]
fn an_output_name_is_checked_before_generating() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let jpg = tmp.path().join("out.jpg");
    let missing = tmp.path().join("missing").join("out.png");
    for (out, want) in [
        (&jpg, "expected a file name ending in .png"),
        (&missing, "does not exist"),
        (
            &tmp.path().to_path_buf(),
            "expected a file name ending in .png",
        ),
    ] {
        let o = lumina(
            tmp.path(),
            &[
                "generate",
                "-p",
                "a red circle",
                "-o",
                out.to_str().expect("utf-8"),
            ],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("cannot write {}", out.display())) && err.contains(want),
            "{err}"
        );
        assert!(!err.contains("steps ("), "nothing was generated: {err}");
    }
    assert!(!jpg.exists());
}

/// img2img at the image's size, upscaling to a larger one, and the input errors.
#[test]
fn init_images_run_img2img_and_upscaling() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let small = tmp.path().join("small.png");
    generate(&cache, &small, &["--seed", "3", "--steps", "4"]);
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    let (same, up) = (tmp.path().join("same.png"), tmp.path().join("up.png"));
    let (w, h, _, text) = generate(
        &cache,
        &same,
        &[
            "--init-image",
            &path(&small),
            "--strength",
            "0.5",
            "--steps",
            "4",
        ],
    );
    assert_eq!((w, h), (32, 32));
    assert!(text.contains("Denoising strength: 0.5"), "{text}");
    let (w, h, _, _) = generate(
        &cache,
        &up,
        &[
            "--init-image",
            &path(&small),
            "-W",
            "64",
            "-H",
            "64",
            "--steps",
            "4",
        ],
    );
    assert_eq!((w, h), (64, 64));
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--prompt", "a red circle"];
        args.extend_from_slice(extra);
        let o = lumina(&cache, &args);
        assert!(!o.status.success(), "{extra:?} must fail");
        stderr(&o)
    };
    let e = run(&["--init-image", &path(&small), "--strength", "0"]);
    assert!(e.contains("strength") && e.contains("(0, 1]"), "{e}");
    let e = run(&["--strength", "0.5"]);
    assert!(e.contains("--init-image"), "{e}");
    let missing = tmp.path().join("missing.png");
    let e = run(&["--init-image", &path(&missing)]);
    assert!(e.contains("missing.png"), "{e}");
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"not a png").expect("write");
    let e = run(&["--init-image", &path(&junk)]);
    assert!(e.contains("not a readable PNG"), "{e}");
}

#[test]
fn cache_fit_writes_coefficients_that_generate_then_uses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let model = tmp.path().join("model");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes"),
        &model,
    );
    let config = model.join("scheduler/scheduler_config.json");
    // a copy without coefficients: caching needs a fit first, and says so
    let mut sampler: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("config")).expect("json");
    sampler
        .as_object_mut()
        .expect("object")
        .remove("cache_coefficients");
    std::fs::write(&config, sampler.to_string()).expect("write config");
    let m = model.to_str().expect("utf-8");
    let out = tmp.path().join("cached.png");
    let o_path = out.to_str().expect("utf-8");
    let cached = || {
        let args = [
            "generate",
            "--model",
            m,
            "--prompt",
            "a red circle",
            "--cache-threshold",
            "0.2",
            "-o",
            o_path,
        ];
        lumina(&cache, &args)
    };
    let o = cached();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("lumina cache-fit"), "{}", stderr(&o));

    let o = lumina(
        &cache,
        &["cache-fit", "--model", m, "--per-kind", "2", "--write"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let fit: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("cache-fit prints one JSON object");
    assert_eq!(fit["cache_coefficients"].as_array().map(Vec::len), Some(3));
    assert!(fit["pairs"].as_u64().unwrap_or(0) > 100, "{fit}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("config")).expect("json");
    assert_eq!(written["cache_coefficients"], fit["cache_coefficients"]);

    let o = cached();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped"), "{}", stderr(&o));

    // a threshold in the model's defaults turns the cache on without a flag, and the image's
    // parameters say so
    let mut sampler = written;
    sampler["cache_threshold"] = serde_json::json!(0.2);
    std::fs::write(&config, sampler.to_string()).expect("write config");
    let o = lumina(
        &cache,
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "a red circle",
            "-o",
            o_path,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let png = std::fs::read(&out).expect("png");
    let text = String::from_utf8_lossy(&png);
    assert!(
        text.contains("Step cache: 0.2"),
        "the PNG parameters omit the model's cache"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn an_unknown_isa_level_is_refused_by_name() {
    let o = Command::new(env!("CARGO_BIN_EXE_lumina"))
        .env("LUMINA_ISA", "sse9")
        .args(["inspect", "/nonexistent-folder"])
        .output()
        .expect("the lumina binary runs");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("LUMINA_ISA") && err.contains("sse9") && err.contains("avx2"),
        "{err}"
    );
}
