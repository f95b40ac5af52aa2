//! Ternary checkpoints: which tensors a ternary layer stores, how a dense or QAT state becomes
//! one, and the safetensors metadata that says so.
//!
//! A ternary layer `X` stores `X.weight_packed` (u8, `(out, ⌈in/4⌉)`, codes w + 1 at 2 bits,
//! weight k in byte k/4 at bits 2·(k mod 4)) and `X.weight_scale` (f32, `(1,)` or `(out,)`),
//! instead of `X.weight`; its bias and every other tensor are unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::kernels::ternary::TernaryMatrix;
use crate::nn::{PACKED_KEY, SCALE_KEY};

/// Metadata key naming the quantisation of a checkpoint file.
pub const QUANTIZATION_KEY: &str = "lumina.quantization";
/// Its value for ternary checkpoints.
pub const TERNARY: &str = "ternary-2bit";
/// Metadata key describing the packed layout, for readers of the file.
pub const LAYOUT_KEY: &str = "lumina.ternary_layout";
const LAYOUT: &str = "weight_packed: u8 (out, ceil(in/4)); code = w + 1 in {0,1,2}; weight k of a row in byte k/4 at bits 2*(k%4); value = weight_scale * w";

/// Replaces the dense `weight` of every layer in `layers` (key prefixes) by its packed codes
/// and scale: absmean ternarisation, with the layer's own `weight_scale` as α when the state
/// has one (a QAT run), else the least-squares α (post-training quantisation).
pub fn pack_layers(
    tensors: &HashMap<String, Tensor>,
    layers: &[String],
) -> Result<HashMap<String, Tensor>> {
    let mut out = tensors.clone();
    for layer in layers {
        let key = |name: &str| format!("{layer}.{name}");
        if out.contains_key(&key(PACKED_KEY)) {
            continue; // already ternary
        }
        let weight = out
            .remove(&key("weight"))
            .ok_or_else(|| Error::MissingTensor {
                key: key("weight"),
                files: "the weights to quantise".into(),
            })?;
        let (rows, cols) = weight.dims2().map_err(|_| Error::Ternary {
            key: key("weight"),
            expected: "a 2-D (out, in) matrix".into(),
            got: format!("shape {:?}", weight.dims()),
        })?;
        let alpha = match out.get(&key(SCALE_KEY)) {
            Some(a) => Some(a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let values = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let matrix = TernaryMatrix::absmean(&values, rows, cols, alpha)?;
        let packed = Tensor::from_vec(matrix.to_rows(), (rows, cols.div_ceil(4)), weight.device())?;
        let n = matrix.scale().len();
        let scale = Tensor::from_slice(matrix.scale(), n, weight.device())?;
        out.insert(key(PACKED_KEY), packed);
        out.insert(key(SCALE_KEY), scale);
    }
    Ok(out)
}

/// Whether a tensor map holds ternary layers.
pub fn has_ternary(tensors: &HashMap<String, Tensor>) -> bool {
    tensors.keys().any(|k| k.ends_with(PACKED_KEY))
}

/// Saves tensors as safetensors; files with ternary layers carry [`QUANTIZATION_KEY`] and
/// [`LAYOUT_KEY`] metadata.
pub fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let fail = |reason: String| Error::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        let t = &tensors[key];
        let (dtype, bytes) = raw_bytes(t)?;
        owned.push((key.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let views = owned
        .iter()
        .map(|(k, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (k.as_str(), v))
                .map_err(|e| fail(format!("tensor `{k}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    if has_ternary(tensors) {
        meta.insert(QUANTIZATION_KEY.into(), TERNARY.into());
        meta.insert(LAYOUT_KEY.into(), LAYOUT.into());
    }
    let meta: HashMap<String, String> = meta.into_iter().collect();
    safetensors::tensor::serialize_to_file(views, Some(meta), path).map_err(|e| fail(e.to_string()))
}

/// A tensor's little-endian bytes and safetensors dtype.
fn raw_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<u8>)> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::U8 => (safetensors::Dtype::U8, flat.to_vec1::<u8>()?),
        DType::U32 => (
            safetensors::Dtype::U32,
            le(flat.to_vec1::<u32>()?, u32::to_le_bytes),
        ),
        DType::I64 => (
            safetensors::Dtype::I64,
            le(flat.to_vec1::<i64>()?, i64::to_le_bytes),
        ),
        DType::BF16 => (
            safetensors::Dtype::BF16,
            le(flat.to_vec1::<half::bf16>()?, |v| v.to_bits().to_le_bytes()),
        ),
        DType::F16 => (
            safetensors::Dtype::F16,
            le(flat.to_vec1::<half::f16>()?, |v| v.to_bits().to_le_bytes()),
        ),
        DType::F64 => (
            safetensors::Dtype::F64,
            le(flat.to_vec1::<f64>()?, f64::to_le_bytes),
        ),
        _ => (
            safetensors::Dtype::F32,
            le(
                flat.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                f32::to_le_bytes,
            ),
        ),
    })
}

fn le<T, const N: usize>(values: Vec<T>, bytes: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightFiles;
    use candle_core::Device;

    #[test]
    fn packed_layers_round_trip_through_a_file_with_metadata() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(
            &[[0.9f32, -0.05, 0.3, -1.2, 0.0], [0.45, 0.1, -0.6, 0.2, 0.7]],
            &dev,
        )?;
        let tensors = HashMap::from([
            ("a.weight".to_string(), w.clone()),
            ("a.bias".to_string(), Tensor::new(&[1f32, 2.0], &dev)?),
            ("b.weight".to_string(), w.to_dtype(DType::BF16)?),
        ]);
        let packed = pack_layers(&tensors, &["a".to_string()])?;
        assert!(!packed.contains_key("a.weight") && packed.contains_key("b.weight"));
        assert_eq!(packed["a.weight_packed"].dims(), &[2, 2]);
        let dir =
            tempfile::tempdir().map_err(|e| Error::input("tempdir", "created", e.to_string()))?;
        let path = dir.path().join("model.safetensors");
        save(&packed, &path)?;
        let files = WeightFiles::open(&[path])?;
        assert_eq!(
            files.metadata().get(QUANTIZATION_KEY).map(String::as_str),
            Some(TERNARY)
        );
        let back = files.load("a.weight_packed", &dev)?;
        assert_eq!(
            back.to_vec2::<u8>()?,
            packed["a.weight_packed"].to_vec2::<u8>()?
        );
        assert_eq!(files.load("b.weight", &dev)?.dtype(), DType::BF16);
        Ok(())
    }

    #[test]
    fn a_layer_without_a_matrix_is_named() {
        let dev = Device::Cpu;
        let tensors = HashMap::from([(
            "x.weight".to_string(),
            Tensor::new(&[1f32, 2.0], &dev).expect("tensor"),
        )]);
        let err = pack_layers(&tensors, &["x".into(), "y".into()]).expect_err("1-D");
        assert!(
            err.to_string().contains("x.weight") && err.to_string().contains("2-D"),
            "{err}"
        );
    }
}
