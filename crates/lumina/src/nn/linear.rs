//! The linear layer: weight stored `(out, in)` like every PyTorch checkpoint, in one of three
//! formats. Quantisation is a property of this layer only — the model code is the same for
//! every format.
//!
//! - dense: `weight` in f32 / bf16 / f16;
//! - block-quantised (GGUF Q8_0 … Q6_K): kept quantised, multiplied through its dequantised
//!   matrix one layer at a time or in the quantised domain ([`set_quantized_path`]);
//! - ternary (TerDiT inference): `weight_packed` u8 `(out, ⌈in/4⌉)` 2-bit codes and
//!   `weight_scale` f32 `(1,)` or `(out,)` (layout: [`crate::kernels::ternary`]);
//! - ternary quantisation-aware training: a latent full-precision `weight`, ternarised on
//!   every forward by absmean with a straight-through gradient, times a learnable
//!   `weight_scale` α (TerDiT `fairscale/.../layers.py`).
//!
//! Dense and quantised layers loaded with an adapter registry hold their weight in a
//! [`LoraSlot`] and take LoRA updates ([`super::lora`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Tensor};

use super::lora::{self, AdaptableLayer, BaseWeight, LoraSlot};
use crate::error::{Error, Result};
use crate::kernels::ternary::{self, TernaryMatrix};
use crate::kernels::{bf16_gemm, strassen};
use crate::weights::{Init, Weights};

/// Key of the packed 2-bit codes of a ternary layer.
pub const PACKED_KEY: &str = "weight_packed";
/// Key of a ternary layer's α.
pub const SCALE_KEY: &str = "weight_scale";

/// How many α a ternary layer has: one for the matrix (TerDiT, BitNet b1.58), or one per
/// output channel, each row then ternarised by its own mean |W|. Rows of a trained matrix
/// differ in scale (an adaLN row that drives a gate against one that drives a shift), and a
/// single α rounds the small ones to zero; the file format and the kernels take either
/// (`weight_scale` `(1,)` or `(out,)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TernaryScale {
    #[default]
    Tensor,
    Channel,
}

#[derive(Clone, Debug)]
enum Weight {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
    /// Dense or quantised, open to LoRA updates.
    Adaptable(Arc<LoraSlot>),
    Ternary(Arc<TernaryMatrix>),
    /// QAT: the latent matrix and α `(1,)`, both trainable.
    Qat {
        latent: Tensor,
        alpha: Tensor,
    },
}

#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    out_dim: usize,
    in_dim: usize,
}

impl Linear {
    /// Loads `weight` (out, in) and, when `bias`, `bias` (out,) under `w`; a layer stored
    /// ternary (`weight_packed` + `weight_scale`) loads as such.
    pub fn load(
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        init: Init,
    ) -> Result<Self> {
        let weight = if w.stores(PACKED_KEY) {
            register_ternary(w);
            Weight::Ternary(Arc::new(load_packed(w, in_dim, out_dim)?))
        } else if let Some(adapters) = w.adapters().filter(|_| !w.trainable() && !w.is_audit()) {
            Weight::Adaptable(lora::new_slot(w, adapters, in_dim, out_dim, init)?)
        } else {
            match lora::read_weight(w, in_dim, out_dim, init)? {
                BaseWeight::Dense(t) => Weight::Dense(t),
                BaseWeight::Quantized(q) => Weight::Quantized(q),
            }
        };
        Self::with_bias(w, weight, in_dim, out_dim, bias)
    }

    /// A layer TerDiT makes ternary (attention and feed-forward projections, the blocks' adaLN
    /// linear). Like [`Linear::load`], and when the weights ask for ternary layers
    /// ([`Weights::ternary`]): trainable latent + α under upstream initialisation, else the
    /// dense weight ternarised by absmean as it loads.
    pub fn load_ternarizable(
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        init: Init,
    ) -> Result<Self> {
        if w.ternary() || w.stores(PACKED_KEY) {
            w.note_ternary_layer();
        }
        if !w.ternary() || w.stores(PACKED_KEY) || w.is_audit() {
            return Self::load(w, in_dim, out_dim, bias, init);
        }
        register_ternary(w);
        if let Some(random) = w.random_ternary("weight", out_dim, in_dim) {
            let weight = Weight::Ternary(Arc::new(random?));
            return Self::with_bias(w, weight, in_dim, out_dim, bias);
        }
        let latent = w.get("weight", &[out_dim, in_dim], init)?;
        let weight = if w.trainable() {
            // from scratch every row starts at the matrix's mean |W| (random rows are alike);
            // a run seeded from a model sets each row's own (lumina-train `init_from_model`)
            let start = initial_alpha(&latent)?;
            let count = match w.ternary_scale() {
                TernaryScale::Tensor => 1,
                TernaryScale::Channel => out_dim,
            };
            let alpha = w.get(SCALE_KEY, &[count], Init::Constant(start as f64))?;
            Weight::Qat { latent, alpha }
        } else {
            // A QAT state (latent + trained α, one or one per row) or a dense checkpoint
            // (post-training: α fitted)
            let alpha = if w.stores(SCALE_KEY) {
                Some(stored_scale(w, out_dim)?)
            } else {
                None
            };
            let values = latent
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let alpha = match (alpha, w.ternary_scale()) {
                (None, TernaryScale::Channel) => {
                    Some(TernaryMatrix::fitted_row_scales(&values, out_dim, in_dim))
                }
                (alpha, _) => alpha,
            };
            Weight::Ternary(Arc::new(TernaryMatrix::absmean(
                &values, out_dim, in_dim, alpha,
            )?))
        };
        Self::with_bias(w, weight, in_dim, out_dim, bias)
    }

    fn with_bias(
        w: &Weights,
        weight: Weight,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let bias = if bias {
            Some(w.get("bias", &[out_dim], Init::Zeros)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            out_dim,
            in_dim,
        })
    }

    /// The packed matrix of a ternary layer.
    pub fn ternary(&self) -> Option<&TernaryMatrix> {
        match &self.weight {
            Weight::Ternary(t) => Some(t),
            _ => None,
        }
    }

    /// Whether two layers hold the same weights (detects projections a checkpoint stores twice).
    pub fn same_weights(&self, other: &Linear) -> Result<bool> {
        let base = |w: &Weight| match w {
            Weight::Dense(t) => Some(BaseWeight::Dense(t.clone())),
            Weight::Quantized(q) => Some(BaseWeight::Quantized(q.clone())),
            Weight::Adaptable(slot) => Some(slot.weight()),
            Weight::Ternary(_) | Weight::Qat { .. } => None,
        };
        if let (Some(a), Some(b)) = (base(&self.weight), base(&other.weight)) {
            return match (a, b) {
                (BaseWeight::Dense(a), BaseWeight::Dense(b)) => super::same_values(&a, &b),
                (BaseWeight::Quantized(a), BaseWeight::Quantized(b)) => Ok(a.dtype() == b.dtype()
                    && a.shape() == b.shape()
                    && a.data()? == b.data()?),
                _ => Ok(false),
            };
        }
        match (&self.weight, &other.weight) {
            (Weight::Ternary(a), Weight::Ternary(b)) => Ok(a == b),
            (Weight::Qat { latent: a, .. }, Weight::Qat { latent: b, .. }) => {
                super::same_values(a, b)
            }
            _ => Ok(false),
        }
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// `(.., in)` -> `(.., out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some((&in_dim, lead)) = x.dims().split_last() else {
            return Err(Error::input("linear input", "rank >= 1", "a scalar"));
        };
        let rows: usize = lead.iter().product();
        let x = x.reshape((rows, in_dim))?; // (M, in)
        let y = match &self.weight {
            // Parameters may be stored narrower than the activations (a bf16 checkpoint
            // computed in f32): widen one matrix at a time instead of holding a wide copy.
            Weight::Dense(w) => dense_matmul(&x, &w.to_dtype(x.dtype())?)?,
            Weight::Quantized(q) => quantized_matmul(&x, q)?,
            Weight::Adaptable(slot) => slot.forward(&x, base_product)?,
            Weight::Qat { latent, alpha } => {
                dense_matmul(&x, &qat_weight(latent, alpha)?.to_dtype(x.dtype())?)?
            }
            Weight::Ternary(t) if use_int8_kernel(&x) => {
                let bias = match &self.bias {
                    Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                    None => None,
                };
                let y = ternary::int8::int8_linear(&x, t, bias.as_deref())?; // (M, out)
                return reshape_out(y, lead, self.out_dim);
            }
            Weight::Ternary(t) => ternary::exact_linear(&x, t, dense_matmul)?,
        }; // (M, out)
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        reshape_out(y, lead, self.out_dim)
    }
}

fn reshape_out(y: Tensor, lead: &[usize], out_dim: usize) -> Result<Tensor> {
    let mut out_dims = lead.to_vec();
    out_dims.push(out_dim);
    Ok(y.reshape(out_dims)?)
}

/// Registers the layer under `w` as ternary with its adapter registry, if any: a LoRA aimed
/// at it is then an error that says why.
fn register_ternary(w: &Weights) {
    if let Some(adapters) = w.adapters() {
        adapters.register(AdaptableLayer::Ternary(
            w.model_key("").trim_end_matches('.').to_string(),
        ));
    }
}

/// `x (M, in) · wᵀ` for a dense or quantised `w (out, in)`, in `x`'s dtype.
fn base_product(w: &BaseWeight, x: &Tensor) -> Result<Tensor> {
    match w {
        BaseWeight::Dense(w) => dense_matmul(x, &w.to_dtype(x.dtype())?),
        BaseWeight::Quantized(q) => quantized_matmul(x, q),
    }
}

static QUANTIZED_DOMAIN: AtomicBool = AtomicBool::new(false);

/// How block-quantised layers multiply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuantizedPath {
    /// Each layer's matrix dequantised to the compute dtype as it runs, then the dense
    /// product: the weights' exact values (what diffusers and gguf-py compute), and the fast
    /// dense kernels at the token counts of a DiT.
    #[default]
    Dequantize,
    /// candle's quantised-domain product: activations rounded to 8-bit blocks too (within the
    /// tolerance `tests/formats.rs` states), no dense copy of any matrix.
    Quantized,
}

/// Chooses the quantised layers' product for this process (a CLI flag, like the ternary
/// activation mode).
pub fn set_quantized_path(path: QuantizedPath) {
    QUANTIZED_DOMAIN.store(path == QuantizedPath::Quantized, Ordering::Relaxed);
}

/// See [`set_quantized_path`].
pub fn quantized_path() -> QuantizedPath {
    if QUANTIZED_DOMAIN.load(Ordering::Relaxed) {
        QuantizedPath::Quantized
    } else {
        QuantizedPath::Dequantize
    }
}

/// `x (M, in) · wᵀ` for a block-quantised `w (out, in)`.
fn quantized_matmul(x: &Tensor, w: &QTensor) -> Result<Tensor> {
    if quantized_path() == QuantizedPath::Quantized && x.device().is_cpu() && !x.track_op() {
        let y = x.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(w)?;
        return Ok(y.to_dtype(x.dtype())?);
    }
    let dense = crate::kernels::dequantize::dequantize(w, x.dtype(), x.device())?;
    dense_matmul(x, &dense)
}

/// `x (M, in) · wᵀ` for `w (out, in)` in `x`'s dtype.
fn dense_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if use_bf16_kernel(x, w) {
        bf16_gemm::bf16_linear(x, w)
    } else if widen_bf16(x, w) {
        // No bf16 dot product on this CPU: candle's bf16 matmul converts inside its packing
        // and runs the classical product; widening this one layer to f32 (a transient copy,
        // the stored weights stay bf16) lets it take Strassen–Winograd, and it still
        // accumulates in f32 and rounds the output to bf16 once. Measured on Zen 3 (AVX2,
        // 2 threads, 2B config, 1024 tokens): the linears ran at 117 GFLOP/s in candle's
        // bf16 matmul against 152 for the f32 path.
        let y = dense_matmul(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?)?;
        Ok(y.to_dtype(DType::BF16)?)
    } else if use_strassen(x, w) {
        strassen::strassen_linear(x, w)
    } else {
        Ok(x.matmul(&w.t()?)?)
    }
}

/// The ternary layer's codes and α under `w`.
fn load_packed(w: &Weights, in_dim: usize, out_dim: usize) -> Result<TernaryMatrix> {
    let stride = in_dim.div_ceil(4);
    let packed = w.get_stored(PACKED_KEY, &[out_dim, stride], DType::U8)?;
    let scale = stored_scale(w, out_dim)?;
    let rows = packed.flatten_all()?.to_vec1::<u8>()?;
    TernaryMatrix::from_rows(&rows, out_dim, in_dim, scale, &w.full_key(PACKED_KEY))
}

/// A ternary layer's stored α: `(1,)` or one per output channel `(out,)`.
fn stored_scale(w: &Weights, out_dim: usize) -> Result<Vec<f32>> {
    let scale = w.get_stored_any_shape(SCALE_KEY, DType::F32)?;
    match scale.dims() {
        [1] => Ok(scale.to_vec1::<f32>()?),
        [n] if *n == out_dim => Ok(scale.to_vec1::<f32>()?),
        got => Err(Error::Ternary {
            key: w.full_key(SCALE_KEY),
            expected: format!("shape [1] or [{out_dim}]"),
            got: format!("{got:?}"),
        }),
    }
}

/// Where a QAT layer's α starts for its latent `W`: mean |W| (TerDiT's released code draws it
/// at random; the reference notes recommend γ of the initial weights); 1 for a zero matrix.
pub fn initial_alpha(latent: &Tensor) -> Result<f32> {
    let gamma = latent
        .abs()?
        .mean_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(if gamma > 0.0 { gamma } else { 1.0 })
}

/// [`initial_alpha`] of every row of `latent` `(out, in)`: where per-channel α start.
pub fn initial_row_alphas(latent: &Tensor) -> Result<Vec<f32>> {
    let gamma = latent
        .abs()?
        .mean(1)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    Ok(gamma
        .into_iter()
        .map(|g| if g > 0.0 { g } else { 1.0 })
        .collect())
}

/// QAT's effective weight `α · ternarize(W)`: the forward value is exactly the ternary matrix,
/// the gradient reaches the latent W unchanged (straight-through estimator) and α as
/// Σ (∂L/∂W_eff) ⊙ w. With one α the codes take γ = mean |W| of the matrix (TerDiT); with one
/// α per output channel (`alpha` of `out` values) each row its own γ, as
/// [`TernaryMatrix::absmean`] packs it. Composed from differentiable ops only (see the training
/// notes in ARCHITECTURE.md: candle's fused ops carry no gradient).
pub fn qat_weight(latent: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    let rows = latent.dim(0)?;
    let (gamma, alpha) = if alpha.elem_count() > 1 {
        let gamma = latent.abs()?.mean_keepdim(1)?.detach(); // (out, 1), per row
        (gamma, alpha.reshape((rows, 1))?)
    } else {
        (latent.abs()?.mean_all()?.detach(), alpha.clone()) // per tensor
    };
    let codes = latent
        .broadcast_div(&(gamma + 1e-6)?)?
        .round()?
        .clamp(-1f32, 1f32)?
        .detach(); // (out, in) ∈ {−1, 0, 1}
    let ste = (latent + (codes - latent)?.detach())?; // value: codes; gradient: identity
    Ok(ste.broadcast_mul(&alpha)?)
}

/// Both operands stored in `dtype` on the CPU, neither tracking a gradient: an inference
/// product that one of the project's kernels may take instead of candle's matmul.
fn inference_product(x: &Tensor, w: &Tensor, dtype: DType) -> bool {
    x.dtype() == dtype
        && w.dtype() == dtype
        && x.device().is_cpu()
        && !(x.track_op() || w.track_op())
}

/// Whether `x (M, K) · wᵀ` is large enough for Strassen–Winograd to gain, and it is switched
/// on ([`strassen::set_f32_matmul`]).
fn strassen_gains(x: &Tensor, w: &Tensor) -> bool {
    let (Ok((m, k)), Ok((n, _))) = (x.dims2(), w.dims2()) else {
        return false;
    };
    strassen::worthwhile(m, n, k)
}

/// bf16 inference on a CPU with AVX-512 BF16 runs the `vdpbf16ps` kernel; training (inputs
/// that track gradients), other dtypes and other CPUs take candle's matmul.
fn use_bf16_kernel(x: &Tensor, w: &Tensor) -> bool {
    inference_product(x, w, DType::BF16) && bf16_gemm::available()
}

/// bf16 inference products that gain from Strassen–Winograd, on a CPU without the `vdpbf16ps`
/// kernel, are computed widened to f32 (see `dense_matmul`).
fn widen_bf16(x: &Tensor, w: &Tensor) -> bool {
    inference_product(x, w, DType::BF16) && !bf16_gemm::available() && strassen_gains(x, w)
}

/// Large f32 inference products take Strassen–Winograd unless it was switched off
/// ([`strassen::set_f32_matmul`]); training keeps candle's differentiable matmul.
fn use_strassen(x: &Tensor, w: &Tensor) -> bool {
    inference_product(x, w, DType::F32) && strassen_gains(x, w)
}

/// Ternary layers take the int8 path unless it was switched off
/// ([`ternary::set_activations`]) or the input needs gradients; without VNNI it runs its
/// portable reference, so [`ternary::Activations::Auto`] picks the exact path there instead.
fn use_int8_kernel(x: &Tensor) -> bool {
    x.device().is_cpu()
        && !x.track_op()
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && ternary::int8_activations()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A dense f32 layer large enough to recurse takes Strassen–Winograd by default (close to
    /// the classical product, but not the same bits), and exactly candle's matmul when
    /// switched to classical.
    #[test]
    fn large_f32_layers_follow_the_matmul_choice() -> Result<()> {
        use crate::kernels::strassen::{self, F32Matmul};
        let dev = Device::Cpu;
        let (m, k, n) = (1024, 1024, 2048);
        assert_eq!(strassen::levels(m, n, k), 1);
        let linear = Linear::load(
            &Weights::random(3, DType::F32, &dev),
            k,
            n,
            false,
            Init::XavierUniform,
        )?;
        let Weight::Dense(w) = &linear.weight else {
            panic!("a dense layer")
        };
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let classical = x.matmul(&w.t()?)?;
        let scale = classical.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = |y: &Tensor| -> Result<f32> {
            Ok((y - &classical)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert_eq!(strassen::f32_matmul(), F32Matmul::Strassen);
        let fast = diff(&linear.forward(&x)?)?;
        assert!(fast > 0.0, "the Strassen path was not taken");
        assert!(fast / scale < 1e-5, "normwise difference {}", fast / scale);
        strassen::set_f32_matmul(F32Matmul::Classical);
        let exact = linear.forward(&x).and_then(|y| diff(&y));
        strassen::set_f32_matmul(F32Matmul::Strassen);
        assert_eq!(exact?, 0.0);
        Ok(())
    }

    /// The straight-through estimator: the forward value is α·w exactly; the latent gets the
    /// upstream gradient times α unchanged, α gets Σ g ⊙ w.
    #[test]
    fn qat_weight_passes_gradients_straight_through() -> Result<()> {
        let dev = Device::Cpu;
        let latent = Var::new(&[[0.9f32, -0.05, 0.3], [-1.2, 0.0, 0.45]], &dev)?;
        let alpha = Var::new(&[0.7f32], &dev)?;
        let g = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev)?;
        let w = qat_weight(latent.as_tensor(), alpha.as_tensor())?;
        let signs = [[1f32, 0.0, 1.0], [-1.0, 0.0, 1.0]]; // γ = 0.4833
        let want = Tensor::new(&signs, &dev)?.affine(0.7, 0.0)?;
        assert_eq!(w.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        let grads = (w * &g)?.sum_all()?.backward()?;
        let gl = grads.get(latent.as_tensor()).expect("latent gradient");
        assert_eq!(gl.to_vec2::<f32>()?, g.affine(0.7, 0.0)?.to_vec2::<f32>()?);
        let ga = grads
            .get(alpha.as_tensor())
            .expect("α gradient")
            .to_vec1::<f32>()?;
        assert_eq!(ga, [1.0 + 3.0 - 4.0 + 6.0]);
        Ok(())
    }

    /// One α per output channel: each row ternarised by its own mean |W| (a row of small
    /// weights keeps its codes, which the matrix's γ would round to zero), the latent gets the
    /// upstream gradient times its row's α, each α the sum over its own row.
    #[test]
    fn per_channel_qat_weight_uses_row_scales() -> Result<()> {
        let dev = Device::Cpu;
        let latent = Var::new(&[[0.09f32, -0.005, 0.03], [-1.2, 0.0, 0.45]], &dev)?;
        let alpha = Var::new(&[0.07f32, 0.6], &dev)?;
        let g = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev)?;
        let w = qat_weight(latent.as_tensor(), alpha.as_tensor())?;
        assert_eq!(w.to_vec2::<f32>()?, [[0.07, 0.0, 0.07], [-0.6, 0.0, 0.6]]);
        let per_tensor = qat_weight(latent.as_tensor(), &Tensor::new(&[1f32], &dev)?)?;
        assert_eq!(per_tensor.to_vec2::<f32>()?[0], [0.0, 0.0, 0.0]);
        let grads = (w * &g)?.sum_all()?.backward()?;
        let gl = grads.get(latent.as_tensor()).expect("latent gradient");
        let want = Tensor::new(&[[0.07f32, 0.14, 0.21], [2.4, 3.0, 3.6]], &dev)?;
        assert!(max_abs(&(gl - want)?)? < 1e-6);
        let ga = grads
            .get(alpha.as_tensor())
            .expect("α gradient")
            .to_vec1::<f32>()?;
        assert_eq!(ga, [1.0 + 3.0, -4.0 + 6.0]);
        assert_eq!(initial_row_alphas(latent.as_tensor())?.len(), 2);
        Ok(())
    }

    fn max_abs(t: &Tensor) -> Result<f32> {
        Ok(t.abs()?.max_all()?.to_scalar::<f32>()?)
    }
}
