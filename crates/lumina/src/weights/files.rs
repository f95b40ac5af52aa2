//! Memory-mapped weight files of one model: safetensors (single file, several files, or a
//! sharded checkpoint with a `*.safetensors.index.json`) or GGUF (ComfyUI-GGUF's transformer
//! files: block-quantised matrices under upstream names; `gguf.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// Where a tensor lives and what it looks like on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub file: PathBuf,
    /// The stored dtype, or for a block-quantised GGUF tensor the one it dequantises to (f32).
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The GGUF block quantisation, if any.
    pub quant: Option<GgmlDType>,
}

impl TensorInfo {
    /// Bytes on disk (and in memory while kept as stored).
    pub fn bytes(&self) -> u64 {
        let n: u64 = self.shape.iter().map(|&d| d as u64).product();
        match self.quant {
            Some(q) => n / q.block_size() as u64 * q.type_size() as u64,
            None => n * self.dtype.size_in_bytes() as u64,
        }
    }

    /// The stored format, for reports: `F32`, `BF16`, `Q8_0` …
    pub fn format(&self) -> String {
        match self.quant {
            Some(q) => super::gguf::type_name(q),
            None => format!("{:?}", self.dtype).to_uppercase(),
        }
    }
}

/// One memory-mapped weight file.
pub(super) struct MappedFile {
    pub(super) path: PathBuf,
    pub(super) mmap: Mmap,
    /// Byte offset of the data section (after the header).
    pub(super) data_start: usize,
}

/// Where a tensor's bytes are: file index and byte range within the data section.
#[derive(Clone, Copy, Debug)]
pub(super) struct Location {
    pub(super) file: usize,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// The safetensors files of a model, memory-mapped, with an index from key to file.
pub struct WeightFiles {
    files: Vec<MappedFile>,
    index: BTreeMap<String, (Location, TensorInfo)>,
    /// The files' `__metadata__` entries, merged.
    metadata: BTreeMap<String, String>,
}

/// File names diffusers and transformers write for an unsharded model, in lookup order.
const SINGLE_FILE_NAMES: [&str; 2] = ["diffusion_pytorch_model.safetensors", "model.safetensors"];

impl WeightFiles {
    /// Opens the weights of a model folder. A `*.safetensors.index.json` wins; else the
    /// canonical single file; else upstream's `consolidated_ema.*` or `consolidated.*` files;
    /// else every `*.safetensors` in the folder.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let entries = list_dir(dir)?;
        let mut indexes: Vec<&PathBuf> = entries
            .iter()
            .filter(|p| file_name(p).ends_with(".safetensors.index.json"))
            .collect();
        // Variant files (`*.fp16.safetensors…`) are alternatives, not shards: prefer the plain one.
        indexes.sort_by_key(|p| (file_name(p).matches('.').count(), file_name(p).to_string()));
        if let Some(index) = indexes.first() {
            return Self::open_index(index);
        }
        for name in SINGLE_FILE_NAMES {
            let path = dir.join(name);
            if path.is_file() {
                return Self::open(&[path]);
            }
        }
        // Upstream Lumina checkpoints ship plain and EMA weights side by side; the demos
        // sample with `--ema`.
        for prefix in ["consolidated_ema.", "consolidated."] {
            let files: Vec<PathBuf> = entries
                .iter()
                .filter(|p| {
                    file_name(p).starts_with(prefix) && file_name(p).ends_with(".safetensors")
                })
                .cloned()
                .collect();
            if !files.is_empty() {
                return Self::open(&files);
            }
        }
        let shards: Vec<PathBuf> = entries
            .into_iter()
            .filter(|p| file_name(p).ends_with(".safetensors"))
            .collect();
        if shards.is_empty() {
            return Err(Error::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        Self::open(&shards)
    }

    /// Opens a sharded checkpoint from its index; every key the index names must be in the
    /// shard it names.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|source| Error::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| Error::Config {
            path: index_path.to_path_buf(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_names = BTreeSet::new();
        let mut expected = BTreeMap::new();
        for (key, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("weight_map[`{key}`] is not a file name")))?;
            shard_names.insert(file.to_string());
            expected.insert(key.clone(), dir.join(file));
        }
        let shards: Vec<PathBuf> = shard_names.iter().map(|f| dir.join(f)).collect();
        let files = Self::open(&shards)?;
        for (key, file) in expected {
            match files.info(&key) {
                Some(info) if info.file == file => {}
                _ => {
                    return Err(Error::MissingTensor {
                        key,
                        files: format!(
                            "{} (the index {} says it is there)",
                            file.display(),
                            index_path.display()
                        ),
                    })
                }
            }
        }
        Ok(files)
    }

    /// Opens the given safetensors files; a key present in two files is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = BTreeMap::new();
        let mut merged = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let gguf = super::gguf::is_gguf(path);
            let (file, tensors, metadata) = if gguf {
                super::gguf::open(path, i)?
            } else {
                open_safetensors(path, i)?
            };
            merged.extend(metadata);
            for (key, location, info) in tensors {
                if let Some((_, first)) = index.insert(key.clone(), (location, info)) {
                    let reason = format!(
                        "tensor `{key}` is also in {}; pass one variant of the weights",
                        first.file.display()
                    );
                    let path = path.clone();
                    return Err(match gguf {
                        true => Error::Gguf { path, reason },
                        false => Error::Safetensors { path, reason },
                    });
                }
            }
            files.push(file);
        }
        Ok(Self {
            files,
            index,
            metadata: merged,
        })
    }

    /// The files' `__metadata__` (string pairs), merged across shards.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.index.get(key).map(|(_, info)| info)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// A short description of the files, for error messages.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.paths().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }

    /// Reads one tensor in its stored dtype.
    ///
    /// The bytes are copied out of the mapping, after which their pages are released: a
    /// loaded model is resident once, not once in memory and again as mapped file pages.
    pub fn load(&self, key: &str, device: &Device) -> Result<Tensor> {
        if self.info(key).is_some_and(|i| i.quant.is_some()) {
            let q = self.load_quantized(key, None)?;
            return Ok(q.dequantize(device)?);
        }
        let (loc, info) = self.entry(key)?;
        let file = &self.files[loc.file];
        let (start, len) = (file.data_start + loc.start, loc.end - loc.start);
        let bytes = &file.mmap[start..start + len];
        let tensor =
            Tensor::from_raw_buffer(bytes, info.dtype, &info.shape, device).map_err(|e| {
                Error::Safetensors {
                    path: file.path.clone(),
                    reason: format!("tensor `{key}`: {e}"),
                }
            })?;
        // SAFETY: the mapping is read-only and file-backed; MADV_DONTNEED only drops its resident
        // pages, which the kernel re-reads from the file if touched again. Failure is harmless.
        let _ = unsafe {
            file.mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, len)
        };
        Ok(tensor)
    }
}

impl WeightFiles {
    fn entry(&self, key: &str) -> Result<&(Location, TensorInfo)> {
        self.index.get(key).ok_or_else(|| Error::MissingTensor {
            key: key.to_string(),
            files: self.describe(),
        })
    }

    /// A block-quantised GGUF tensor as stored (on the CPU), or `rows` of it: ggml blocks run
    /// along the last axis, so a row range of a matrix is a contiguous byte range.
    pub fn load_quantized(
        &self,
        key: &str,
        rows: Option<std::ops::Range<usize>>,
    ) -> Result<QTensor> {
        let (loc, info) = self.entry(key)?;
        let file = &self.files[loc.file];
        super::gguf::qtensor(file, loc, info, key, rows)
    }
}

/// One opened weight file: the mapping, its tensors (key, bytes, description) and metadata.
pub(super) type Opened = (
    MappedFile,
    Vec<(String, Location, TensorInfo)>,
    BTreeMap<String, String>,
);

/// Maps a safetensors file (number `index` of a store) and lists its tensors; the header and
/// every tensor's byte range are validated by `safetensors::read_metadata`.
fn open_safetensors(path: &Path, index: usize) -> Result<Opened> {
    let mmap = open_mmap(path)?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: truncation(path).unwrap_or_else(|| e.to_string()),
        })?;
    let merged = metadata
        .metadata()
        .iter()
        .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    let mut tensors = Vec::new();
    for (key, st_info) in metadata.tensors() {
        let dtype = DType::try_from(st_info.dtype).map_err(|_| Error::TensorDtype {
            key: key.clone(),
            file: path.to_path_buf(),
            dtype: format!("{:?}", st_info.dtype),
        })?;
        let info = TensorInfo {
            file: path.to_path_buf(),
            dtype,
            shape: st_info.shape.clone(),
            quant: None,
        };
        let (start, end) = st_info.data_offsets;
        let location = Location {
            file: index,
            start,
            end,
        };
        tensors.push((key.clone(), location, info));
    }
    let file = MappedFile {
        path: path.to_path_buf(),
        mmap,
        data_start: 8 + header_len,
    };
    Ok((file, tensors, merged))
}

pub(super) fn open_mmap(path: &Path) -> Result<Mmap> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the file is mapped read-only; like every mmap-based loader we rely on nobody
    // truncating the file while the model is loaded. The header and every tensor's byte range
    // are validated by `safetensors::read_metadata` before any access.
    unsafe { Mmap::map(&file) }.map_err(io)
}

/// "truncated: …" when the header promises more bytes than the file holds (an interrupted
/// download or copy — the common way to get a broken checkpoint).
fn truncation(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let header_len = u64::from_le_bytes(len);
    // safetensors caps headers at 100 MB: a larger length means "not safetensors", not "cut"
    if header_len > 100_000_000 {
        return None;
    }
    if 8 + header_len > size {
        return Some(format!(
            "truncated: the header alone needs {} bytes, the file has {size}",
            8 + header_len
        ));
    }
    let mut header = vec![0u8; usize::try_from(header_len).ok()?];
    file.read_exact(&mut header).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let data_end = json
        .as_object()?
        .values()
        .filter_map(|v| v.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()?;
    let needed = 8 + header_len + data_end;
    (needed > size)
        .then(|| format!("truncated: the header describes {needed} bytes, the file has {size}"))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    Ok(entries)
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}
