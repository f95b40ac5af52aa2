//! LoRA as a property of the linear layer: a layer loaded with an [`Adapters`] registry keeps
//! its weight in a [`LoraSlot`], which holds the low-rank updates ΔW = s·B·A either merged into
//! the weight (no cost per step) or apart, added to the layer's output (switchable without
//! touching the weight).
//!
//! Unloading a merged update re-reads the layer's base weight from its source instead of
//! subtracting ΔW, so the weights come back bit for bit.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::weights::{Init, Weights};

/// How LoRA updates are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoraMode {
    /// Added into the weights: the same cost per step as the base model.
    #[default]
    Merged,
    /// Kept apart and added to each layer's output: two thin products per layer, but the
    /// weights are never touched, so adapters switch between requests at no cost.
    Unmerged,
}

/// One low-rank update of a linear layer: ΔW = `scale` · `up` · `down`.
#[derive(Clone, Debug)]
pub struct LoraDelta {
    /// A, (rank, in).
    pub down: Tensor,
    /// B, (out, rank).
    pub up: Tensor,
    /// The user's scale times alpha / rank.
    pub scale: f64,
}

impl LoraDelta {
    /// ΔW (out, in) in f32.
    fn weight(&self) -> Result<Tensor> {
        let up = self.up.to_dtype(DType::F32)?;
        let down = self.down.to_dtype(DType::F32)?;
        Ok((up.matmul(&down)? * self.scale)?)
    }

    /// `x (M, in)` → s·(x·Aᵀ)·Bᵀ, (M, out), in `x`'s dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let down = self.down.to_dtype(x.dtype())?;
        let up = self.up.to_dtype(x.dtype())?;
        let h = x.matmul(&down.t()?)?; // (M, rank)
        Ok((h.matmul(&up.t()?)? * self.scale)?)
    }
}

/// The stored weight of an adaptable layer.
#[derive(Clone, Debug)]
pub(crate) enum BaseWeight {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

#[derive(Debug)]
struct SlotState {
    weight: BaseWeight,
    /// Whether `weight` has updates merged into it (and must be re-read to remove them).
    merged: bool,
    /// Updates applied to the output.
    apart: Vec<LoraDelta>,
}

/// The weight of one adaptable linear layer and the LoRA updates on it.
#[derive(Debug)]
pub struct LoraSlot {
    source: Weights,
    in_dim: usize,
    out_dim: usize,
    init: Init,
    state: RwLock<SlotState>,
}

impl LoraSlot {
    /// The layer's model key (`layers.0.attn.to_q`).
    pub fn key(&self) -> String {
        self.source.model_key("").trim_end_matches('.').to_string()
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Where the layer's weight is stored in the checkpoint it was loaded from.
    pub fn source(&self) -> &Weights {
        &self.source
    }

    /// `x (M, in)` → `(M, out)` through `product` on the current weight, plus the updates kept
    /// apart.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        product: impl Fn(&BaseWeight, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let mut y = product(&state.weight, x)?;
        for delta in &state.apart {
            let d = delta.forward(x)?.to_dtype(y.dtype())?;
            y = (y + d)?;
        }
        Ok(y)
    }

    /// Replaces the layer's updates by `deltas` (none: the base layer). Merged into dense
    /// weights in [`LoraMode::Merged`]; quantised weights always keep them apart.
    pub fn set(&self, deltas: Vec<LoraDelta>, mode: LoraMode) -> Result<()> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.merged {
            state.weight = self.read_base()?;
            state.merged = false;
        }
        state.apart.clear();
        match (&state.weight, mode) {
            (BaseWeight::Dense(w), LoraMode::Merged) if !deltas.is_empty() => {
                let mut merged = w.to_dtype(DType::F32)?;
                for delta in &deltas {
                    merged = (merged + delta.weight()?)?;
                }
                state.weight = BaseWeight::Dense(merged.to_dtype(w.dtype())?);
                state.merged = true;
            }
            _ => state.apart = deltas,
        }
        Ok(())
    }

    /// The layer's weight as its source stores it.
    fn read_base(&self) -> Result<BaseWeight> {
        read_weight(&self.source, self.in_dim, self.out_dim, self.init)
    }

    /// The current weight, for comparisons.
    pub(crate) fn weight(&self) -> BaseWeight {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .weight
            .clone()
    }
}

/// A linear layer's weight under `w`: kept block-quantised when stored so, else dense.
pub(crate) fn read_weight(
    w: &Weights,
    in_dim: usize,
    out_dim: usize,
    init: Init,
) -> Result<BaseWeight> {
    if w.stored_quant("weight").is_some() {
        if let Some(q) = w.get_quantized("weight", &[out_dim, in_dim])? {
            return Ok(BaseWeight::Quantized(Arc::new(q)));
        }
    }
    let dense = w.get("weight", &[out_dim, in_dim], init)?;
    match w.quantization() {
        Some(target) => {
            let storage = crate::weights::gguf::storage_for(dense.dims(), target);
            if storage == GgmlDType::F32 {
                return Ok(BaseWeight::Dense(dense));
            }
            let q = QTensor::quantize(&dense.to_dtype(DType::F32)?, storage)?;
            Ok(BaseWeight::Quantized(Arc::new(q)))
        }
        None => Ok(BaseWeight::Dense(dense)),
    }
}

/// What an [`Adapters`] registry knows of one layer.
#[derive(Clone, Debug)]
pub enum AdaptableLayer {
    Slot(Arc<LoraSlot>),
    /// A ternary layer: LoRA cannot apply (its key, for the error).
    Ternary(String),
}

/// The adaptable layers of one model, registered as they load. A model loaded from
/// [`Weights`] that carry a registry can take LoRA updates after loading
/// (`models::adapters`).
#[derive(Debug, Default)]
pub struct Adapters {
    layers: Mutex<Vec<AdaptableLayer>>,
}

impl Adapters {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn register(&self, layer: AdaptableLayer) {
        self.layers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(layer);
    }

    /// Every registered layer, in load order.
    pub fn layers(&self) -> Vec<AdaptableLayer> {
        self.layers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A slot for the layer under `w`, registered with `adapters`.
pub(crate) fn new_slot(
    w: &Weights,
    adapters: &Adapters,
    in_dim: usize,
    out_dim: usize,
    init: Init,
) -> Result<Arc<LoraSlot>> {
    let weight = read_weight(w, in_dim, out_dim, init)?;
    let slot = Arc::new(LoraSlot {
        source: w.clone(),
        in_dim,
        out_dim,
        init,
        state: RwLock::new(SlotState {
            weight,
            merged: false,
            apart: Vec::new(),
        }),
    });
    adapters.register(AdaptableLayer::Slot(slot.clone()));
    Ok(slot)
}
