//! The built-in models: `generate`, `inspect` and `eval` with no `--model` (the `shapes`
//! model) and with `--model shapes-ternary`, and their quality by the spec's judge.

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

/// (width, height, RGB bytes, `parameters` text).
fn read_png(path: &Path) -> (u32, u32, Vec<u8>, String) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("png exists"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let frame = reader.next_frame(&mut buf).expect("png frame");
    let text = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .unwrap_or_default();
    buf.truncate(frame.buffer_size());
    (frame.width, frame.height, buf, text)
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

/// The AVX-512 kernels (tiled attention's exponentials, the `vdpbf16ps` linear) and the
/// portable paths a CPU without them takes draw the same picture.
#[test]
fn portable_kernels_draw_the_same_image() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    for dtype in ["f32", "bf16"] {
        let run = |portable: bool| {
            let out = tmp.path().join(format!("{dtype}-{portable}.png"));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_lumina"));
            cmd.env("LUMINA_CACHE_DIR", &cache).args([
                "generate",
                "--prompt",
                "a big green square on the left",
                "--seed",
                "3",
                "--dtype",
                dtype,
                "--output",
                out.to_str().expect("utf-8"),
            ]);
            if portable {
                cmd.env("LUMINA_PORTABLE_KERNELS", "1");
            }
            let o = cmd.output().expect("the lumina binary runs");
            assert!(o.status.success(), "{}", stderr(&o));
            read_png(&out).2
        };
        let (fast, portable) = (run(false), run(true));
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
            "{dtype}: pixels differ by up to {worst}, {mean:.3} on average"
        );
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

/// The ternary model's floor: it measured 0.47 (README: within 0.05 of the full-precision
/// model of its own recipe, 0.505).
const TERNARY_ACCURACY_FLOOR: f64 = 0.3;

/// `lumina eval` of a built-in model on a prompt list of every kind (held-out pairs and all
/// four relations included), drawn with a seed the training runs never used for their own
/// evaluation; returns the overall accuracy.
fn judge(model: Option<&str>) -> f64 {
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
