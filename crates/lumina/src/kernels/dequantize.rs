//! A GGUF block-quantised matrix expanded to a dense one in the compute dtype, in parallel
//! over row chunks. candle's `QTensor::dequantize` (the reference) walks every block on one
//! thread into an f32 matrix that `to_dtype` then converts in a second pass: for a 2B model's
//! layer that is tens of milliseconds per forward. Here each worker expands a chunk of rows
//! in place, with candle's own per-block routine, into a buffer that stays in its cache, and
//! writes it converted. The values are the reference's bit for bit
//! (the same per-block expansion, then the same rounding).

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Rows per chunk: about 256 KiB of f32 for the 2B models' 2304-wide rows.
const CHUNK_ELEMS: usize = 64 * 1024;

/// `q (out, in)` as a dense `(out, in)` matrix of `dtype` on `device`.
pub fn dequantize(q: &QTensor, dtype: DType, device: &Device) -> Result<Tensor> {
    let dims = q.shape().dims().to_vec();
    let (
        &[rows, width],
        GgmlDType::Q4_0
        | GgmlDType::Q4_1
        | GgmlDType::Q5_0
        | GgmlDType::Q5_1
        | GgmlDType::Q8_0
        | GgmlDType::Q2K
        | GgmlDType::Q3K
        | GgmlDType::Q4K
        | GgmlDType::Q5K
        | GgmlDType::Q6K,
    ) = (&dims[..], q.dtype())
    else {
        return reference(q, dtype, device);
    };
    if !device.is_cpu() || !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return reference(q, dtype, device);
    }
    let data = q.data()?;
    let row_bytes = data.len() / rows.max(1);
    let chunk_rows = (CHUNK_ELEMS / width.max(1)).max(1);
    let kind = q.dtype();
    let expand = |r0: usize, out: &mut [f32]| -> Result<()> {
        let n = out.len() / width;
        expand_blocks(kind, &data[r0 * row_bytes..(r0 + n) * row_bytes], out)
    };
    // each chunk expanded to f32 (in cache), then converted into the output
    fn fill<T: Copy + Send>(
        rows: usize,
        width: usize,
        chunk_rows: usize,
        zero: T,
        expand: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
        convert: impl Fn(&mut [T], &[f32]) + Sync,
    ) -> Result<Vec<T>> {
        let mut out = vec![zero; rows * width];
        out.par_chunks_mut(chunk_rows * width)
            .enumerate()
            .try_for_each(|(i, chunk)| -> Result<()> {
                let mut tmp = vec![0f32; chunk.len()];
                expand(i * chunk_rows, &mut tmp)?;
                convert(chunk, &tmp);
                Ok(())
            })?;
        Ok(out)
    }
    let shape = (rows, width);
    Ok(match dtype {
        DType::F32 => {
            // expanded straight into the output
            let mut out = vec![0f32; rows * width];
            out.par_chunks_mut(chunk_rows * width)
                .enumerate()
                .try_for_each(|(i, chunk)| expand(i * chunk_rows, chunk))?;
            Tensor::from_vec(out, shape, device)?
        }
        DType::BF16 => {
            let out = fill(rows, width, chunk_rows, bf16::ZERO, expand, |o, t| {
                o.convert_from_f32_slice(t)
            })?;
            Tensor::from_vec(out, shape, device)?
        }
        _ => {
            let out = fill(rows, width, chunk_rows, f16::ZERO, expand, |o, t| {
                o.convert_from_f32_slice(t)
            })?;
            Tensor::from_vec(out, shape, device)?
        }
    })
}

/// The blocks in `bytes` (of type `kind`) expanded into `out` by candle's own per-block
/// routine (`GgmlType::to_float`), read in place.
fn expand_blocks(kind: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    fn run<T: GgmlType>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
        let blocks = out.len() / T::BLCK_SIZE;
        let fits = blocks * std::mem::size_of::<T>() == bytes.len()
            && out.len().is_multiple_of(T::BLCK_SIZE)
            && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>());
        if !fits {
            return Err(Error::input(
                "quantised rows",
                format!("whole, aligned {:?} blocks", T::DTYPE),
                format!("{} bytes for {} values", bytes.len(), out.len()),
            ));
        }
        // SAFETY: the blocks are `repr(C)` structs of f16 and byte arrays, valid for every bit
        // pattern; `bytes` holds exactly `blocks` of them and is aligned for `T` (both checked
        // above), and it outlives the borrowed slice.
        let typed = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), blocks) };
        T::to_float(typed, out);
        Ok(())
    }
    match kind {
        GgmlDType::Q4_0 => run::<BlockQ4_0>(bytes, out),
        GgmlDType::Q4_1 => run::<BlockQ4_1>(bytes, out),
        GgmlDType::Q5_0 => run::<BlockQ5_0>(bytes, out),
        GgmlDType::Q5_1 => run::<BlockQ5_1>(bytes, out),
        GgmlDType::Q8_0 => run::<BlockQ8_0>(bytes, out),
        GgmlDType::Q2K => run::<BlockQ2K>(bytes, out),
        GgmlDType::Q3K => run::<BlockQ3K>(bytes, out),
        GgmlDType::Q4K => run::<BlockQ4K>(bytes, out),
        GgmlDType::Q5K => run::<BlockQ5K>(bytes, out),
        GgmlDType::Q6K => run::<BlockQ6K>(bytes, out),
        other => Err(Error::input(
            "quantised type",
            "a block type",
            format!("{other:?}"),
        )),
    }
}

/// candle's single-threaded expansion, then the conversion.
pub fn reference(q: &QTensor, dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(q.dequantize(device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type `lumina quantize` writes, on ragged shapes (rows not a multiple of the chunk),
    /// in every dtype: the reference's bits.
    #[test]
    fn chunks_expand_to_the_reference_bits() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, width) in [(3, 256), (257, 512), (1100, 256)] {
            let w = Tensor::randn(0f32, 1.0, (rows, width), &dev)?;
            for (_, target) in crate::weights::gguf::WRITABLE {
                let q = QTensor::quantize(&w, target)?;
                for dtype in [DType::F32, DType::BF16, DType::F16] {
                    let got = dequantize(&q, dtype, &dev)?.to_dtype(DType::F32)?;
                    let want = reference(&q, dtype, &dev)?.to_dtype(DType::F32)?;
                    let diff = (got - want)?
                        .abs()?
                        .flatten_all()?
                        .max(0)?
                        .to_scalar::<f32>()?;
                    assert_eq!(diff, 0.0, "{target:?} {dtype:?} {rows}×{width}");
                }
            }
        }
        Ok(())
    }
}
