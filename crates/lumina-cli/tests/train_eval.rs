//! `lumina train` and `lumina eval` end to end on the minute-sized `tiny` preset.

use std::path::Path;
use std::process::{Command, Output};

fn lumina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lumina"))
        .args(args)
        .output()
        .expect("the lumina binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn log_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .expect("log.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn train_exports_a_model_that_eval_and_generate_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let run_s = run.to_str().expect("utf-8");
    let o = lumina(&["train", "--preset", "tiny", "--out", run_s, "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let log = log_lines(&run);
    let losses: Vec<_> = log.iter().filter(|l| l.get("loss").is_some()).collect();
    assert_eq!(losses.len(), 30, "one log line per step");
    assert!(log.last().and_then(|l| l.get("accuracy")).is_some());
    for file in [
        "model/model_index.json",
        "model/train_config.toml",
        "model/transformer/diffusion_pytorch_model.safetensors",
        "checkpoint/weights.safetensors",
        "samples/final.png",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }

    // a second run into the same folder must not overwrite the first
    let o = lumina(&["train", "--preset", "tiny", "--out", run_s, "--quiet"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));

    // resuming goes on from step 30; records an interrupted run wrote after its last
    // checkpoint (here a fake step 31 and a torn line) are dropped, and the clock goes on
    let last_seconds = log_lines(&run)
        .iter()
        .rev()
        .find_map(|l| l.get("seconds")?.as_f64())
        .expect("seconds");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(run.join("log.jsonl"))
            .expect("log.jsonl");
        writeln!(f, "{{\"step\":31,\"loss\":9.0,\"seconds\":1e9}}").expect("write");
        write!(f, "{{\"step\":32,\"lo").expect("write");
    }
    let o = lumina(&[
        "train", "--out", run_s, "--resume", "--steps", "33", "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let steps: Vec<u64> = log_lines(&run)
        .iter()
        .filter(|l| l.get("loss").is_some())
        .map(|l| l["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(steps[30..], [31, 32, 33]);
    let resumed_seconds: Vec<f64> = log_lines(&run)
        .iter()
        .filter_map(|l| l.get("seconds")?.as_f64())
        .skip(30)
        .collect();
    assert!(
        resumed_seconds
            .iter()
            .all(|&s| s >= last_seconds && s < 1e9),
        "the resumed clock goes on from {last_seconds}: {resumed_seconds:?}"
    );

    let model = run.join("model");
    let model_s = model.to_str().expect("utf-8");
    let grid = tmp.path().join("grid.png");
    let o = lumina(&[
        "eval",
        "--model",
        model_s,
        "--per-kind",
        "2",
        "--seeds",
        "2",
        "--json",
        "--grid",
        grid.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(report["total"], 16);
    let wrong: u64 = report["faults"]
        .as_object()
        .expect("faults")
        .values()
        .map(|n| n.as_u64().expect("a count"))
        .sum();
    assert_eq!(
        wrong,
        16 - report["correct"].as_u64().expect("correct"),
        "every wrong image has one fault: {report}"
    );
    assert!(grid.is_file());

    let out = tmp.path().join("x.png");
    let o = lumina(&[
        "generate",
        "--model",
        model_s,
        "--prompt",
        "a small cyan circle on the left",
        "--output",
        out.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn eval_rejects_a_prompt_file_outside_the_grammar_naming_the_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a red circle\na pink circle\n").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_lumina"))
        .env("LUMINA_CACHE_DIR", tmp.path().join("cache"))
        .args(["eval", "--prompts", prompts.to_str().expect("utf-8")])
        .output()
        .expect("the lumina binary runs");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("prompts.txt:2"), "{err}");
    assert!(err.contains("pink"), "{err}");
}

/// Frames and the `parameters` text of an (animated) PNG.
fn png_frames(path: &Path) -> (u32, String) {
    let file = std::fs::File::open(path).expect("the clip file");
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let info = reader.info();
    let frames = info.animation_control().map_or(1, |a| a.num_frames);
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .unwrap_or_default();
    (frames, text)
}

#[test]
fn a_video_model_writes_animated_png_and_gif_and_is_judged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let run_s = run.to_str().expect("utf-8");
    let o = lumina(&["train", "--preset", "tiny-video", "--out", run_s, "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = run.join("model");
    let model_s = model.to_str().expect("utf-8");
    assert!(run.join("samples/final.png").is_file(), "the clip sheet");

    let clip = tmp.path().join("clip.png");
    let prompt = "a red circle moving to the right";
    let generate = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "generate", "--model", model_s, "-p", prompt, "--seed", "3", "-q",
        ];
        args.extend(["-o", out.to_str().expect("utf-8")]);
        args.extend(extra);
        lumina(&args)
    };
    let o = generate(&clip, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (frames, text) = png_frames(&clip);
    assert_eq!(frames, 4, "the model's default length");
    assert!(
        text.starts_with(prompt) && text.contains("Frames: 4"),
        "{text}"
    );

    let o = generate(&clip, &["--frames", "8", "--frame-rope", "ntk"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (frames, text) = png_frames(&clip);
    assert_eq!(frames, 8);
    assert!(
        text.contains("Frames: 8") && text.contains("Frame RoPE: ntk"),
        "{text}"
    );

    let gif = tmp.path().join("clip.gif");
    let o = generate(&gif, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&gif).expect("the GIF");
    assert!(bytes.starts_with(b"GIF89a"));
    let comment = String::from_utf8_lossy(&bytes);
    assert!(comment.contains(prompt) && comment.contains("Frames: 4"));

    let o = generate(&clip, &["--frames", "3"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("frames"), "{}", stderr(&o));

    // clip prompts for a clip model; 16-pixel clips are under the judge's 32, so unjudgeable
    let o = lumina(&[
        "eval",
        "--model",
        model_s,
        "--per-kind",
        "1",
        "--seeds",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(json["total"], 5);
    assert_eq!(json["frames"], 4);
    assert_eq!(json["faults"]["unjudgeable"], 5);
}
