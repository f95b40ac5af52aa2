//! GGUF weight files, as ComfyUI-GGUF stores diffusion transformers: upstream tensor names,
//! 2-D weights block-quantised along their input axis (Q8_0, Q4_0 … Q6_K), the rest F32/F16.
//!
//! The header is parsed by candle's reader (`candle_core::quantized::gguf_file`, which bounds
//! every count against the file size); the data stays memory-mapped and each tensor is turned
//! into a candle [`QTensor`] when a layer asks for it. Format: ggml `docs/gguf.md`.

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device};

use super::files::{open_mmap, Location, MappedFile, Opened, TensorInfo};
use crate::error::{Error, Result};

/// Whether `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Maps a GGUF file (number `index` of a store) and lists its tensors, each checked to lie
/// inside the file and, when quantised, to hold whole blocks per row.
pub(super) fn open(path: &Path, index: usize) -> Result<Opened> {
    let bad = |reason: String| Error::Gguf {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
    let mmap = open_mmap(path)?;
    let data_start = usize::try_from(content.tensor_data_offset)
        .map_err(|_| bad("data offset beyond the address space".into()))?;
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for (key, ti) in &content.tensor_infos {
        let shape = ti.shape.dims().to_vec();
        let (dtype, quant) = match ti.ggml_dtype {
            GgmlDType::F32 => (DType::F32, None),
            GgmlDType::F16 => (DType::F16, None),
            GgmlDType::BF16 => (DType::BF16, None),
            q => (DType::F32, Some(q)),
        };
        let (block, type_size) = (ti.ggml_dtype.block_size(), ti.ggml_dtype.type_size());
        let elems: usize = shape.iter().product();
        let last = shape.last().copied().unwrap_or(1);
        if last % block != 0 {
            return Err(bad(format!(
                "tensor `{key}` {shape:?} in {:?}: its rows of {last} are not whole blocks of {block}",
                ti.ggml_dtype
            )));
        }
        let size = elems / block * type_size;
        let start = usize::try_from(ti.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(size);
        if data_start.saturating_add(end) > mmap.len() {
            return Err(bad(format!(
                "truncated: tensor `{key}` needs bytes up to {}, the file has {}",
                data_start.saturating_add(end),
                mmap.len()
            )));
        }
        let location = Location {
            file: index,
            start,
            end,
        };
        let info = TensorInfo {
            file: path.to_path_buf(),
            dtype,
            shape,
            quant,
        };
        tensors.push((key.clone(), location, info));
    }
    let metadata = content
        .metadata
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), scalar_text(v)?)))
        .collect();
    let file = MappedFile {
        path: path.to_path_buf(),
        mmap,
        data_start,
    };
    Ok((file, tensors, metadata))
}

/// A metadata value as text, for scalars and strings (arrays are left out of reports).
fn scalar_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Array(_) => return None,
        other => other.to_u64().map(|n| n.to_string()).ok()?,
    })
}

/// The stored tensor (or `rows` of it) as a candle quantised tensor on the CPU.
pub(super) fn qtensor(
    file: &MappedFile,
    loc: &Location,
    info: &TensorInfo,
    key: &str,
    rows: Option<Range<usize>>,
) -> Result<QTensor> {
    let dtype = info.quant.unwrap_or(match info.dtype {
        DType::F16 => GgmlDType::F16,
        DType::BF16 => GgmlDType::BF16,
        _ => GgmlDType::F32,
    });
    let bad = |reason: String| Error::Gguf {
        path: file.path.clone(),
        reason: format!("tensor `{key}`: {reason}"),
    };
    let mut shape = info.shape.clone();
    let (mut start, mut end) = (file.data_start + loc.start, file.data_start + loc.end);
    if let Some(rows) = rows {
        let first = shape.first().copied().unwrap_or(1);
        if rows.end > first || rows.start > rows.end {
            return Err(bad(format!("rows {rows:?} of {first}")));
        }
        let row_bytes = (end - start) / first.max(1);
        (start, end) = (start + rows.start * row_bytes, start + rows.end * row_bytes);
        if let Some(f) = shape.first_mut() {
            *f = rows.len();
        }
    }
    let bytes = &file.mmap[start..end];
    // candle reads the blocks in place: their fields are f16/f32, so the bytes must be aligned
    // to those (GGUF aligns every tensor to 32 bytes; rows of whole blocks keep 4 bytes or 2).
    let align = if matches!(dtype, GgmlDType::F32 | GgmlDType::Q8K) {
        4
    } else {
        2
    };
    if !(bytes.as_ptr() as usize).is_multiple_of(align) {
        return Err(bad(format!("data not aligned to {align} bytes")));
    }
    ggml_file::qtensor_from_ggml(dtype, bytes, shape, &Device::Cpu).map_err(|e| bad(e.to_string()))
}

/// The name ggml gives a type: `Q8_0`, `Q4_K` …
pub fn type_name(t: GgmlDType) -> String {
    let debug = format!("{t:?}");
    match debug.strip_suffix('K') {
        Some(stem) => format!("{stem}_K"),
        None => debug,
    }
}

/// How a tensor is stored when writing `target`: block-quantised when it is a matrix whose
/// rows are whole blocks, Q8_0 for a K-quant whose rows are not whole 256-blocks but 32-blocks
/// (llama.cpp's fallback), F32 otherwise (vectors, odd widths) — as ComfyUI-GGUF files do.
pub fn storage_for(shape: &[usize], target: GgmlDType) -> GgmlDType {
    let [_, width] = shape else {
        return GgmlDType::F32;
    };
    if width % target.block_size() == 0 {
        target
    } else if width % GgmlDType::Q8_0.block_size() == 0 {
        GgmlDType::Q8_0
    } else {
        GgmlDType::F32
    }
}

/// Writes `tensors` (name, f32-convertible tensor) to a GGUF file at `path`, each stored as
/// [`storage_for`] says, with string `metadata`. Written to a temporary file beside `path` and
/// renamed, so a failure leaves nothing half-written.
pub fn write(
    path: &Path,
    tensors: &[(String, candle_core::Tensor)],
    target: GgmlDType,
    metadata: &[(&str, String)],
) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| Error::Gguf {
        path: path.to_path_buf(),
        reason,
    };
    let mut quantized = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = storage_for(t.dims(), target);
        let q = QTensor::quantize(&t.to_dtype(DType::F32)?, dtype)
            .map_err(|e| bad(format!("quantising `{name}` to {dtype:?}: {e}")))?;
        quantized.push((name.as_str(), q));
    }
    let values: Vec<(&str, Value)> = metadata
        .iter()
        .map(|(k, v)| (*k, Value::String(v.clone())))
        .collect();
    let value_refs: Vec<(&str, &Value)> = values.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(k, q)| (*k, q)).collect();
    let tmp = path.with_extension("gguf.partial");
    let written = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        gguf_file::write(&mut file, &value_refs, &tensor_refs).map_err(|e| bad(e.to_string()))?;
        std::io::Write::flush(&mut file).map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The GGUF block quantisations `lumina quantize` writes, by name (`q8_0`, `q4_k` …).
pub const WRITABLE: [(&str, GgmlDType); 8] = [
    ("q8_0", GgmlDType::Q8_0),
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q4_k", GgmlDType::Q4K),
    ("q5_k", GgmlDType::Q5K),
    ("q6_k", GgmlDType::Q6K),
];
