//! Reading a custom op's operands (the contiguous slice of a CPU storage, in the one dtype the
//! kernel takes, or an error naming the operand) and sharing an output among tasks.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};
use half::bf16;

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
// `ternary::int8::vnni_gemm`).
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// A method, not a field access: closures must capture the whole `Sync` wrapper.
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }
}
