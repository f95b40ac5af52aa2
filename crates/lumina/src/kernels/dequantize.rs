//! A GGUF block-quantised matrix expanded to a dense one in the compute dtype, in parallel
//! over row chunks. candle's `QTensor::dequantize` (the reference) walks every block on one
//! thread into an f32 matrix that `to_dtype` then converts in a second pass: for a 2B model's
//! layer that is tens of milliseconds per forward. Here each worker expands a chunk of rows
//! that stays in its cache and writes it converted. The values are the reference's bit for bit
//! (the same per-block expansion, then the same rounding).

use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::Result;

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
    let expand = |r0: usize, out: &mut [f32]| -> Result<()> {
        let n = out.len() / width;
        let bytes = &data[r0 * row_bytes..(r0 + n) * row_bytes];
        let part = ggml_file::qtensor_from_ggml(q.dtype(), bytes, vec![n, width], &Device::Cpu)?;
        let values = part
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        out.copy_from_slice(&values);
        Ok(())
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
            let out = fill(rows, width, chunk_rows, 0f32, expand, |o, t| {
                o.copy_from_slice(t)
            })?;
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
