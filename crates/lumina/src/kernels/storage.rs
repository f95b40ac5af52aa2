//! Reading a custom op's operands (the shapes of a linear's, the contiguous slice of a CPU
//! storage in the one dtype the kernel takes, or an error naming the operand), sharing an
//! output among tasks, and writing a register tile out.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Tensor};
use half::bf16;

use crate::error::{Error, Result};

/// `(m, n, k)` of a linear's operands `x` (M, K) and `w` (N, K), both in `dtype`, or an error
/// about `what` naming both shapes and dtypes.
pub(crate) fn linear_dims(
    x: &Tensor,
    w: &Tensor,
    dtype: DType,
    what: &'static str,
) -> Result<(usize, usize, usize)> {
    let (m, k) = x.dims2()?;
    let (n, kw) = w.dims2()?;
    if k != kw || x.dtype() != dtype || w.dtype() != dtype {
        let name = dtype.as_str();
        return Err(Error::input(
            what,
            format!("x (M, K) and w (N, K) in {name} with equal K"),
            format!(
                "x {:?} {:?}, w {:?} {:?}",
                x.dims(),
                x.dtype(),
                (n, kw),
                w.dtype()
            ),
        ));
    }
    Ok((m, n, k))
}

/// The f32 values of a contiguous operand.
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what}: expected a contiguous tensor"),
        (other, _) => candle_core::bail!("{what}: expected f32, got {:?}", other.dtype()),
    }
}

/// The bf16 values of a contiguous operand.
pub(crate) fn contiguous_bf16<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [bf16]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::BF16(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::BF16(_), None) => candle_core::bail!("{what}: expected a contiguous tensor"),
        (other, _) => candle_core::bail!("{what}: expected bf16, got {:?}", other.dtype()),
    }
}

/// An output buffer shared by parallel tasks that each write a disjoint tile of it.
pub(crate) struct SharedOut<T>(pub(crate) *mut T);
// SAFETY: every user hands each task a tile no other task writes (see `bf16_gemm::gemm`,
// `winograd::input_transform_packed`,
// `ternary::int8::vnni_gemm`).
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// A method, not a field access: closures must capture the whole `Sync` wrapper.
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }
}

/// Writes (or, with `accumulate`, adds) the first `nr` columns of the first `mr` rows of a
/// register tile `acc` (rows `acc_stride` apart) to `c` (rows `ldc` apart): the store of the
/// f32 and bf16 tile kernels.
///
/// # Safety
/// `c` must address `mr` rows of stride `ldc` with `nr` valid columns each that no other
/// thread touches meanwhile; `acc` must hold `mr` rows of `acc_stride ≥ nr` values.
pub(crate) unsafe fn store_tile(
    acc: &[f32],
    acc_stride: usize,
    c: *mut f32,
    ldc: usize,
    (mr, nr): (usize, usize),
    accumulate: bool,
) {
    for (r, src) in acc.chunks(acc_stride).take(mr).enumerate() {
        // SAFETY: row r of the tile has nr valid columns (caller's contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), nr) };
        if accumulate {
            dst.iter_mut().zip(&src[..nr]).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(&src[..nr]);
        }
    }
}
