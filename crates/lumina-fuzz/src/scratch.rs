//! The per-thread scratch folder the targets write their inputs to: one subfolder per target,
//! holding the fixed files a target needs beside its input (the shards an index names).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

thread_local! {
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Writes `data` as `target/file_name` in the scratch folder and returns its path. The
/// harness cannot go on without a writable temporary folder, so failing to make one panics
/// with the reason (outside any loader).
pub(crate) fn write(target: &str, file_name: &str, data: &[u8]) -> PathBuf {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let root = slot.get_or_insert_with(|| {
            let dir = tempfile::tempdir().expect("fuzz harness: no temporary folder");
            write_shards(&dir.path().join("sharded_index"));
            dir
        });
        let dir = root.path().join(target);
        std::fs::create_dir_all(&dir).expect("fuzz harness: scratch folder not writable");
        let path = dir.join(file_name);
        std::fs::write(&path, data).expect("fuzz harness: scratch folder not writable");
        path
    })
}

/// The two shards `fuzz/corpus/sharded_index/` names: `a` (2×2 f32) and `b` (3, f16) in the
/// first, `c` (4, bf16) in the second.
fn write_shards(dir: &Path) {
    std::fs::create_dir_all(dir).expect("fuzz harness: scratch folder not writable");
    let f32s: Vec<u8> = [1.0f32, -2.0, 0.5, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f16s: Vec<u8> = [1.0f32, 0.25, -4.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16s: Vec<u8> = [1.0f32, 2.0, -0.5, 0.0]
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let shard = |name: &str, tensors: Vec<(&str, Dtype, Vec<usize>, &[u8])>| {
        let views: HashMap<String, TensorView> = tensors
            .into_iter()
            .map(|(key, dtype, shape, bytes)| {
                let view = TensorView::new(dtype, shape, bytes).expect("fuzz harness: shard");
                (key.to_string(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(name))
            .expect("fuzz harness: scratch folder not writable");
    };
    shard(
        "model-00001-of-00002.safetensors",
        vec![
            ("a", Dtype::F32, vec![2, 2], &f32s),
            ("b", Dtype::F16, vec![3], &f16s),
        ],
    );
    shard(
        "model-00002-of-00002.safetensors",
        vec![("c", Dtype::BF16, vec![4], &bf16s)],
    );
}
