//! Where model parameters come from: checkpoint files, or a seeded random draw.
//!
//! [`Weights`] is a cheap, clonable view with a key prefix — `w.pp("layers").pp(3)` is
//! `cd layers/3` — so the module tree of every model mirrors its checkpoint keys. Every request
//! is recorded, which gives `lumina inspect` its missing/unused key audit for free.

mod files;
pub mod gguf;
pub mod key_map;
pub mod ternary;
mod var_builder;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

pub use files::{TensorInfo, WeightFiles};
pub use key_map::{FusedRows, KeyMap, Renamed, Stored};

use crate::error::{Error, Result};
use crate::nn::lora::Adapters;
use crate::nn::TernaryScale;

/// How upstream initialises a parameter when training from scratch
/// (Lumina-T2X `lumina_next_t2i/models/model.py` `initialize_weights`, reference §2.9).
/// Loading from a checkpoint ignores it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Normal {
        std: f64,
    },
    /// Xavier/Glorot uniform over (fan_out, fan_in) = the stored (out, in) shape.
    XavierUniform,
    /// Every element this value (a ternary layer's α starts at mean |W|).
    Constant(f64),
}

/// A weight that was asked for but is absent or of the wrong shape (audit mode only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightProblem {
    pub key: String,
    pub expected: Vec<usize>,
    /// `None` when the key is missing, else the stored shape.
    pub got: Option<Vec<usize>>,
}

// One `Source` per weight store, behind an `Arc`: the size of its largest variant is moot.
#[allow(clippy::large_enum_variant)]
enum Source {
    Files(WeightFiles),
    /// Every parameter drawn at random — matrices Xavier-scaled, norm weights near 1, biases and
    /// gates non-zero — so that every path of a model matters (what the fixtures do). For
    /// benchmarks and tests of the model code, not a training initialisation. Each tensor is a
    /// function of the seed and its stored key alone, so a key map that sends two names to one
    /// key ties them, as a checkpoint that stores one tensor for both would.
    Random(u64),
    /// Every parameter a zero-stride zero view: builds any model without memory, to count
    /// parameters or check shapes.
    Zeros,
    /// Tensors already in memory (a training state, EMA weights), by key.
    Tensors(HashMap<String, Tensor>),
    /// Upstream's training initialisation ([`Init`]), every parameter a trainable [`Var`].
    Init {
        rng: Mutex<StdRng>,
        vars: Mutex<Vec<(String, Var)>>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Missing or misshapen tensors are errors.
    Strict,
    /// Missing or misshapen tensors are recorded and replaced by zero-stride zeros: the model
    /// is built without reading (or allocating) any weight data.
    Audit,
}

struct Store {
    source: Source,
    dtype: DType,
    device: Device,
    mode: Mode,
    /// Every key asked for, with the shape the model expects.
    requested: Mutex<BTreeMap<String, Vec<usize>>>,
    problems: Mutex<Vec<WeightProblem>>,
    /// Key prefixes of the layers that loaded as ternary (or would, in audit mode).
    ternary_layers: Mutex<Vec<String>>,
}

/// A prefix view of a parameter store.
#[derive(Clone)]
pub struct Weights {
    store: Arc<Store>,
    prefix: String,
    /// Applied to every full key before lookup: one model, several checkpoint layouts.
    key_map: Option<Arc<dyn KeyMap>>,
    /// Whether the layers TerDiT ternarises should be ternary even where the weights are
    /// dense (see `Linear::load_ternarizable`), and with how many α each.
    ternary: Option<TernaryScale>,
    /// Where linear layers register to take LoRA updates after loading, if they should.
    adapters: Option<Arc<Adapters>>,
    /// Block-quantise dense linear weights as they load (see [`Weights::with_quantization`]).
    quantize: Option<GgmlDType>,
    /// Refuse stored tensors that hold NaN or infinite values (see
    /// [`Weights::with_finite_check`]).
    check_finite: bool,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Weights({:?})", self.prefix)
    }
}

impl Weights {
    /// The weights of a diffusers model folder (safetensors, sharded or not) for a model that
    /// computes in `dtype`; each tensor is kept as [`storage_dtype`] says.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::from_files(WeightFiles::open_dir(dir)?, dtype, device))
    }

    pub fn from_files(files: WeightFiles, dtype: DType, device: &Device) -> Self {
        Self::new(Source::Files(files), dtype, device, Mode::Strict)
    }

    /// Like [`Weights::from_files`] but tolerant: problems are collected (see
    /// [`Weights::problems`]) and no tensor data is read.
    pub fn audit(files: WeightFiles, device: &Device) -> Self {
        Self::new(Source::Files(files), DType::F32, device, Mode::Audit)
    }

    /// Seeded random parameters (see [`Source::Random`]).
    pub fn random(seed: u64, dtype: DType, device: &Device) -> Self {
        Self::new(Source::Random(seed), dtype, device, Mode::Strict)
    }

    /// Parameters held in memory, by key (missing or misshapen keys are errors).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Self::new(Source::Tensors(tensors), dtype, device, Mode::Strict)
    }

    /// Parameters without memory (see [`Source::Zeros`]).
    pub fn zeros(dtype: DType, device: &Device) -> Self {
        Self::new(Source::Zeros, dtype, device, Mode::Strict)
    }

    /// Upstream's training initialisation, seeded; every parameter is a trainable variable
    /// (see [`Weights::vars`]).
    pub fn init(seed: u64, dtype: DType, device: &Device) -> Self {
        let source = Source::Init {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            vars: Mutex::default(),
        };
        Self::new(source, dtype, device, Mode::Strict)
    }

    fn new(source: Source, dtype: DType, device: &Device, mode: Mode) -> Self {
        let store = Store {
            source,
            dtype,
            device: device.clone(),
            mode,
            requested: Mutex::default(),
            problems: Mutex::default(),
            ternary_layers: Mutex::default(),
        };
        Self {
            store: Arc::new(store),
            prefix: String::new(),
            key_map: None,
            ternary: None,
            adapters: None,
            quantize: None,
            check_finite: false,
        }
    }

    /// Asks for ternary layers where TerDiT has them: QAT layers under upstream
    /// initialisation, dense weights ternarised by absmean as they load otherwise. Layers
    /// stored ternary load as ternary with or without it.
    /// One α per layer, as TerDiT has it; [`Weights::with_ternary_scale`] for one per output
    /// channel.
    pub fn with_ternary(self) -> Self {
        self.with_ternary_scale(TernaryScale::Tensor)
    }

    /// [`Weights::with_ternary`] with `scale` α per layer: QAT layers built under this view
    /// learn that many, and dense weights ternarised as they load get per-row codes and α
    /// for [`TernaryScale::Channel`].
    pub fn with_ternary_scale(self, scale: TernaryScale) -> Self {
        Self {
            ternary: Some(scale),
            ..self
        }
    }

    /// See [`Weights::with_ternary`].
    pub fn ternary(&self) -> bool {
        self.ternary.is_some()
    }

    /// How many α the ternary layers under this view take (see
    /// [`Weights::with_ternary_scale`]); per tensor when not asked for ternary.
    pub fn ternary_scale(&self) -> TernaryScale {
        self.ternary.unwrap_or_default()
    }

    /// For seeded random weights ([`Weights::random`]): a random ternary matrix `name` of
    /// `(out, in)` — codes uniform over {−1, 0, 1}, α half the Xavier bound — drawn without a
    /// dense copy (the 2B bench model never holds its f32 weights). `None` for other sources.
    pub fn random_ternary(
        &self,
        name: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Option<Result<crate::kernels::ternary::TernaryMatrix>> {
        let &Source::Random(seed) = &self.store.source else {
            return None;
        };
        let key = self.key(name);
        let seed: u64 = key_rng(seed, &key).gen();
        lock(&self.store.requested).insert(key, vec![out_dim, in_dim]);
        let alpha = (6.0 / (out_dim + in_dim).max(1) as f32).sqrt() / 2.0;
        // a counter-based generator (splitmix64), so panels can be drawn in parallel
        let code = move |m: usize, k: usize| {
            let mut z =
                seed.wrapping_add(((m * in_dim + k) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % 3) as u8
        };
        Some(crate::kernels::ternary::TernaryMatrix::from_codes(
            out_dim,
            in_dim,
            vec![alpha],
            code,
        ))
    }

    /// Records this prefix as a ternary layer (see [`Weights::ternary_layers`]).
    pub fn note_ternary_layer(&self) {
        lock(&self.store.ternary_layers).push(self.key("").trim_end_matches('.').to_string());
    }

    /// The key prefixes of the layers built ternary so far, in load order: what
    /// `lumina quantize` packs, found by building the model itself (in audit mode, without
    /// reading a weight).
    pub fn ternary_layers(&self) -> Vec<String> {
        lock(&self.store.ternary_layers).clone()
    }

    /// Whether tensors are stand-ins that are never read ([`Weights::audit`]).
    pub fn is_audit(&self) -> bool {
        self.store.mode == Mode::Audit
    }

    /// Whether parameters are trainable variables (upstream initialisation).
    pub fn trainable(&self) -> bool {
        matches!(self.store.source, Source::Init { .. })
    }

    /// Reads every key through `map` (a checkpoint layout other than the model's own).
    pub fn with_key_map(self, map: Arc<dyn KeyMap>) -> Self {
        Self {
            key_map: Some(map),
            ..self
        }
    }

    /// Linear layers built from these weights register with `adapters` and can take LoRA
    /// updates after loading (see [`crate::nn::lora`]).
    pub fn with_adapters(self, adapters: Arc<Adapters>) -> Self {
        Self {
            adapters: Some(adapters),
            ..self
        }
    }

    /// Linear layers stored dense are block-quantised to `target` as they load (GGUF's types;
    /// a matrix whose rows are not whole blocks as [`gguf::storage_for`] says): any checkpoint
    /// kept in memory as a GGUF file would keep it.
    pub fn with_quantization(self, target: GgmlDType) -> Self {
        Self {
            quantize: Some(target),
            ..self
        }
    }

    /// Every tensor read from files or memory is checked for NaN and infinite values as it
    /// loads (one pass over it): a broken checkpoint is an error naming the tensor, never an
    /// image.
    pub fn with_finite_check(self, on: bool) -> Self {
        Self {
            check_finite: on,
            ..self
        }
    }

    /// `t`, the stored `name`, or an error when [`Weights::with_finite_check`] is on and it
    /// holds NaN or infinite values.
    fn checked(&self, t: Tensor, stored: &Stored, file: &Path) -> Result<Tensor> {
        if self.check_finite && !crate::error::all_finite(&t)? {
            return Err(Error::NonFinite {
                what: format!("tensor `{stored}` in {}", file.display()),
                hint: ": the checkpoint is broken (a NaN written by training or a bad conversion)"
                    .into(),
            });
        }
        Ok(t)
    }

    /// See [`Weights::with_quantization`].
    pub fn quantization(&self) -> Option<GgmlDType> {
        self.quantize
            .filter(|_| !self.trainable() && !self.is_audit())
    }

    /// See [`Weights::with_adapters`].
    pub fn adapters(&self) -> Option<&Arc<Adapters>> {
        self.adapters.as_ref()
    }

    /// The layout the keys are read through, if not the model's own.
    pub fn key_map(&self) -> Option<&Arc<dyn KeyMap>> {
        self.key_map.as_ref()
    }

    /// Push a key segment: `w.pp("layers").pp(0).get("gate", ..)` reads `layers.0.gate`.
    pub fn pp(&self, segment: impl ToString) -> Self {
        let segment = segment.to_string();
        let prefix = if self.prefix.is_empty() {
            segment
        } else {
            format!("{}.{segment}", self.prefix)
        };
        Self {
            store: self.store.clone(),
            prefix,
            key_map: self.key_map.clone(),
            ternary: self.ternary,
            adapters: self.adapters.clone(),
            quantize: self.quantize,
            check_finite: self.check_finite,
        }
    }

    /// The dtype the model built from these weights computes in.
    pub fn dtype(&self) -> DType {
        self.store.dtype
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    /// The model's own key of `name` under this prefix.
    pub fn model_key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Where `name` under this prefix is stored.
    pub fn locate(&self, name: &str) -> Stored {
        let key = self.model_key(name);
        match &self.key_map {
            Some(map) => map.locate(&key),
            None => Stored::whole(key),
        }
    }

    /// The stored key of `name` under this prefix.
    fn key(&self, name: &str) -> String {
        self.locate(name).key
    }

    /// Where `name` under this prefix is stored, for messages: the key, and the rows when it
    /// is part of a fused tensor.
    pub fn full_key(&self, name: &str) -> String {
        self.locate(name).to_string()
    }

    /// Whether checkpoint files or in-memory tensors really hold `name` (false for generated
    /// weights, which "contain" every key).
    pub fn stores(&self, name: &str) -> bool {
        match &self.store.source {
            Source::Files(files) => files.info(&self.key(name)).is_some(),
            Source::Tensors(map) => map.contains_key(&self.key(name)),
            Source::Random(_) | Source::Zeros | Source::Init { .. } => false,
        }
    }

    /// The stored tensor `name` exactly as stored (no dtype conversion), which must have
    /// `dtype` and, when given, `shape`. For packed and integer data.
    pub fn get_stored(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.get_stored_any_shape(name, dtype)?;
        if t.dims() != shape {
            return Err(Error::TensorShape {
                key: self.key(name),
                file: self.origin(name),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// Like [`Weights::get_stored`], whatever the shape.
    pub fn get_stored_any_shape(&self, name: &str, dtype: DType) -> Result<Tensor> {
        let stored = self.locate(name);
        let key = stored.key.clone();
        let t = match &self.store.source {
            Source::Files(files) => {
                let info = files.info(&key).ok_or_else(|| Error::MissingTensor {
                    key: key.clone(),
                    files: files.describe(),
                })?;
                let shape = info.shape.clone();
                let t = files.load(&key, &self.store.device)?;
                lock(&self.store.requested).insert(key.clone(), shape);
                t
            }
            Source::Tensors(map) => {
                let t = map.get(&key).ok_or_else(|| Error::MissingTensor {
                    key: key.clone(),
                    files: "the in-memory weights".into(),
                })?;
                lock(&self.store.requested).insert(key.clone(), t.dims().to_vec());
                t.clone()
            }
            Source::Random(_) | Source::Zeros | Source::Init { .. } => {
                return Err(Error::MissingTensor {
                    key,
                    files: "generated weights (no files)".into(),
                })
            }
        };
        if t.dtype() != dtype {
            return Err(Error::TensorDtype {
                key,
                file: self.origin(name),
                dtype: format!("{:?} (expected {dtype:?})", t.dtype()),
            });
        }
        take_rows(t, &stored, &self.origin(name))
    }

    /// The file that stores `name`, for messages.
    fn origin(&self, name: &str) -> PathBuf {
        match &self.store.source {
            Source::Files(files) => files
                .info(&self.key(name))
                .map(|i| i.file.clone())
                .unwrap_or_default(),
            _ => PathBuf::from("(in memory)"),
        }
    }

    /// Whether the store holds `name` (always true for random weights).
    pub fn contains(&self, name: &str) -> bool {
        match &self.store.source {
            Source::Files(files) => files.info(&self.key(name)).is_some(),
            Source::Random(_) | Source::Zeros | Source::Init { .. } => true,
            Source::Tensors(map) => map.contains_key(&self.key(name)),
        }
    }

    /// The parameter `name` under this prefix, checked against `shape`, in the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let stored = self.locate(name);
        let stored_shape = stored.stored_shape(shape);
        let key = stored.key.clone();
        lock(&self.store.requested).insert(key.clone(), stored_shape.clone());
        let store = &*self.store;
        match &store.source {
            Source::Random(seed) => {
                let label = stored.to_string();
                random_tensor(&mut key_rng(*seed, &label), shape, init, &label, store)
            }
            Source::Zeros => zeros_view(shape, store),
            Source::Tensors(map) => match map.get(&key) {
                None => Err(Error::MissingTensor {
                    key: stored.to_string(),
                    files: "the in-memory weights".into(),
                }),
                Some(t) if t.dims() != stored_shape => Err(Error::TensorShape {
                    key: stored.to_string(),
                    file: "(in memory)".into(),
                    expected: stored_shape,
                    got: t.dims().to_vec(),
                }),
                Some(t) => {
                    let t = take_rows(t.clone(), &stored, Path::new("(in memory)"))?;
                    let t = self.checked(t, &stored, Path::new("(in memory)"))?;
                    Ok(t.to_dtype(storage_dtype(t.dtype(), store.dtype))?
                        .to_device(&store.device)?)
                }
            },
            Source::Init { rng, vars } => {
                let t = init_tensor(&mut lock(rng), shape, init, store)?;
                let var = Var::from_tensor(&t)?;
                let t = var.as_tensor().clone();
                lock(vars).push((key, var));
                Ok(t)
            }
            Source::Files(files) => {
                let problem = match files.info(&key) {
                    None => Some(None),
                    Some(info) if info.shape != stored_shape => Some(Some(info.shape.clone())),
                    Some(_) => None,
                };
                match (problem, store.mode) {
                    (None, Mode::Strict) => {
                        let file = files.info(&key).map(|i| i.file.clone()).unwrap_or_default();
                        let t = take_rows(files.load(&key, &store.device)?, &stored, &file)?;
                        let t = self.checked(t, &stored, &file)?;
                        Ok(t.to_dtype(storage_dtype(t.dtype(), store.dtype))?)
                    }
                    (None, Mode::Audit) => zeros_view(shape, store),
                    (Some(got), Mode::Audit) => {
                        lock(&store.problems).push(WeightProblem {
                            key: stored.to_string(),
                            expected: stored_shape,
                            got,
                        });
                        zeros_view(shape, store)
                    }
                    (Some(None), Mode::Strict) => Err(Error::MissingTensor {
                        key: stored.to_string(),
                        files: files.describe(),
                    }),
                    (Some(Some(got)), Mode::Strict) => Err(Error::TensorShape {
                        file: files.info(&key).map(|i| i.file.clone()).unwrap_or_default(),
                        key: stored.to_string(),
                        expected: stored_shape,
                        got,
                    }),
                }
            }
        }
    }

    /// The GGUF block quantisation `name` is stored in, if it is (checkpoint files only).
    pub fn stored_quant(&self, name: &str) -> Option<GgmlDType> {
        match &self.store.source {
            Source::Files(files) => files.info(&self.key(name))?.quant,
            _ => None,
        }
    }

    /// The block-quantised matrix `name` (see [`Weights::stored_quant`]) as stored, checked
    /// against `shape`, or in audit mode `None` (nothing is read).
    pub fn get_quantized(&self, name: &str, shape: &[usize]) -> Result<Option<QTensor>> {
        if self.is_audit() {
            self.get(name, shape, Init::Zeros)?;
            return Ok(None);
        }
        let stored = self.locate(name);
        let Source::Files(files) = &self.store.source else {
            return Err(Error::MissingTensor {
                key: stored.to_string(),
                files: "generated weights (no files)".into(),
            });
        };
        let info = files
            .info(&stored.key)
            .ok_or_else(|| Error::MissingTensor {
                key: stored.to_string(),
                files: files.describe(),
            })?;
        let stored_shape = stored.stored_shape(shape);
        if info.shape != stored_shape {
            return Err(Error::TensorShape {
                key: stored.to_string(),
                file: info.file.clone(),
                expected: stored_shape,
                got: info.shape.clone(),
            });
        }
        lock(&self.store.requested).insert(stored.key.clone(), stored_shape);
        let q = files.load_quantized(&stored.key, stored.rows.clone().map(|r| r.range))?;
        if self.check_finite {
            self.checked(q.dequantize(&Device::Cpu)?, &stored, &info.file)?;
        }
        Ok(Some(q))
    }

    /// The stored tensor `name` under this prefix, whatever its shape (checkpoint files only).
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let stored = self.locate(name);
        let key = stored.key.clone();
        let Source::Files(files) = &self.store.source else {
            return Err(Error::MissingTensor {
                key,
                files: "generated weights (no files)".into(),
            });
        };
        let t = take_rows(
            files.load(&key, &self.store.device)?,
            &stored,
            &self.origin(name),
        )?;
        if let Some(info) = files.info(&key) {
            lock(&self.store.requested).insert(key, info.shape.clone());
        }
        Ok(t.to_dtype(storage_dtype(t.dtype(), self.store.dtype))?)
    }

    /// Marks every stored key under `name.` (or equal to `name`) as accounted for without
    /// loading it: weights a model deliberately leaves out, such as the text encoder's layers
    /// past the one whose output Lumina reads.
    pub fn skip(&self, name: &str) {
        let key = self.key(name);
        let nested = format!("{key}.");
        self.mark_stored(|k| k == key || k.starts_with(&nested));
    }

    /// Marks every stored key that starts with `prefix` (not read through the key map) as
    /// accounted for: the other models of an all-in-one checkpoint.
    pub fn skip_stored_prefix(&self, prefix: &str) {
        self.mark_stored(|k| k.starts_with(prefix));
    }

    /// Records the stored keys `pick` selects as requested, with their stored shapes.
    fn mark_stored(&self, pick: impl Fn(&str) -> bool) {
        let Source::Files(files) = &self.store.source else {
            return;
        };
        let mut requested = lock(&self.store.requested);
        for k in files.keys().filter(|k| pick(k)) {
            if let Some(info) = files.info(k) {
                requested.insert(k.to_string(), info.shape.clone());
            }
        }
    }

    /// Tensors that were asked for but absent or misshapen (audit mode).
    pub fn problems(&self) -> Vec<WeightProblem> {
        lock(&self.store.problems).clone()
    }

    /// Stored keys that no module asked for, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        let Source::Files(files) = &self.store.source else {
            return Vec::new();
        };
        let requested = lock(&self.store.requested);
        files
            .keys()
            .filter(|k| !requested.contains_key(*k))
            .map(str::to_string)
            .collect()
    }

    /// The files behind this store, if any.
    pub fn files(&self) -> Option<&WeightFiles> {
        match &self.store.source {
            Source::Files(files) => Some(files),
            Source::Random(_) | Source::Zeros | Source::Tensors(_) | Source::Init { .. } => None,
        }
    }

    /// Every key asked for so far with the shape the model expects, sorted by key.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        lock(&self.store.requested)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }

    /// Parameters asked for so far: the size of the model built from this store.
    pub fn parameter_count(&self) -> u64 {
        lock(&self.store.requested)
            .values()
            .map(|shape| shape.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }

    /// The trainable variables created so far, in creation order (upstream-init weights only).
    pub fn vars(&self) -> Vec<(String, Var)> {
        match &self.store.source {
            Source::Init { vars, .. } => lock(vars).clone(),
            _ => Vec::new(),
        }
    }

    /// The paths of the files behind this store.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files()
            .map(|f| f.paths().map(Path::to_path_buf).collect())
            .unwrap_or_default()
    }
}

/// The dtype a loaded parameter is kept in. Weights stay in their stored dtype unless the
/// compute dtype is no wider — asking for bf16 compute of an f32 checkpoint halves its memory,
/// while a bf16 checkpoint computed in f32 stays bf16 and is widened layer by layer.
pub fn storage_dtype(stored: DType, compute: DType) -> DType {
    if compute.size_in_bytes() <= stored.size_in_bytes() {
        compute
    } else {
        stored
    }
}

/// The rows of a fused tensor that `stored` names (the whole tensor when it names no rows),
/// after checking the fused tensor's first axis.
fn take_rows(t: Tensor, stored: &Stored, file: &Path) -> Result<Tensor> {
    let Some(rows) = &stored.rows else {
        return Ok(t);
    };
    let dims = t.dims().to_vec();
    if dims.first() != Some(&rows.total) {
        let mut expected = dims.clone();
        match expected.first_mut() {
            Some(first) => *first = rows.total,
            None => expected.push(rows.total),
        }
        return Err(Error::TensorShape {
            key: stored.to_string(),
            file: file.to_path_buf(),
            expected,
            got: dims,
        });
    }
    Ok(t.narrow(0, rows.range.start, rows.range.len())?)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A zero tensor of `shape` that owns one element (stride 0 everywhere).
fn zeros_view(shape: &[usize], store: &Store) -> Result<Tensor> {
    let zero = Tensor::zeros((), store.dtype, &store.device)?;
    Ok(zero.broadcast_as(shape)?)
}

/// The generator of the random tensor stored under `key`: seeded by the weights' seed and an
/// FNV-1a hash of the key.
fn key_rng(seed: u64, key: &str) -> StdRng {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    StdRng::seed_from_u64(seed ^ hash)
}

fn random_tensor(
    rng: &mut StdRng,
    shape: &[usize],
    init: Init,
    key: &str,
    store: &Store,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let is_norm = key.contains("norm") && shape.len() == 1;
    let values: Vec<f32> = match (init, shape.len()) {
        // Norm weights near 1 keep activations in range while still mattering.
        (Init::Ones, _) => (0..n).map(|_| 1.0 + 0.1 * normal(rng)).collect(),
        _ if is_norm => (0..n).map(|_| 1.0 + 0.1 * normal(rng)).collect(),
        (_, 2) => {
            let bound = (6.0 / (shape[0] + shape[1]) as f32).sqrt();
            (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
        }
        // Biases, gates, zero-initialised vectors: small but non-zero.
        _ => (0..n).map(|_| 0.2 * normal(rng)).collect(),
    };
    Ok(Tensor::from_vec(values, shape, &store.device)?.to_dtype(store.dtype)?)
}

fn init_tensor(rng: &mut StdRng, shape: &[usize], init: Init, store: &Store) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Constant(v) => vec![v as f32; n],
        Init::Normal { std } => (0..n).map(|_| std as f32 * normal(rng)).collect(),
        Init::XavierUniform => {
            let (fan_out, fan_in) = match shape {
                [o, i] => (*o, *i),
                _ => (n, n),
            };
            let bound = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
            (0..n).map(|_| rng.gen_range(-bound..=bound)).collect()
        }
    };
    Ok(Tensor::from_vec(values, shape, &store.device)?.to_dtype(store.dtype)?)
}

fn normal(rng: &mut StdRng) -> f32 {
    StandardNormal.sample(rng)
}
