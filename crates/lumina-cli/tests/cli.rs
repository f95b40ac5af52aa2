//! The `lumina` binary end to end, on the shared fixtures.

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

#[test]
fn inspect_a_pipeline_folder() {
    let dir = fixtures().join("pipeline_lumina2/one_prompt/pipeline");
    let out = lumina(&["inspect", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "(Lumina2Pipeline)",
        "transformer  Lumina2Transformer2DModel (diffusers)",
        "text_encoder  Gemma2Model",
        "keys     complete",
        "stored as f32 100%",
        "cap_feat_dim=",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
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
        err.starts_with("error: inspecting") && err.contains("has no config.json"),
        "{err}"
    );
    let out = lumina(&["inspect", "/no/such/folder"]);
    assert!(
        !out.status.success() && stderr(&out).contains("no such folder"),
        "{}",
        stderr(&out)
    );
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
