//! Attention without the N×M score matrix: queries in blocks of [`QUERY_BLOCK`] rows walk the
//! keys in blocks of [`KEY_BLOCK`], keeping a running row maximum and sum (the online softmax
//! of FlashAttention, Dao et al. 2022). Memory is O(N·Dh) instead of O(N·M); at 4096 tokens and
//! 32 heads the materialised scores of one layer would be 2 GiB.
//!
//! The two block products run on the `gemm` crate's kernels (AVX-512 where present); blocks
//! are spread over rayon's threads. Forward only: training takes the composed, differentiable
//! path in `nn::attention`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::Parallelism;
use half::bf16;
use rayon::prelude::*;

use super::storage::{contiguous_bf16, contiguous_f32};
use super::bf16_gemm::{self, STRIP};
use super::math;
use crate::error::{Error, Result};

/// Query rows per task: one task's scores (64 × 256 f32 = 64 KiB) stay in L2.
pub const QUERY_BLOCK: usize = 64;
/// Keys per step of the online softmax.
pub const KEY_BLOCK: usize = 256;

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Queries.
    pub n: usize,
    /// Keys.
    pub m: usize,
    pub head_dim: usize,
}

/// `softmax(q kᵀ · scale + bias) v` for `q` (B, H, N, Dh), `k`, `v` (B, Hkv, M, Dh) and an
/// optional additive key bias (B, M); query head `h` reads kv head `h / (H/Hkv)`.
/// Computes in f32 whatever the input dtype; returns (B, H, N, Dh) in the dtype of `q`.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, _, dh) = q.dims4()?;
    let (bk, h_kv, m, dhk) = k.dims4()?;
    if bk != b || dhk != dh || v.dims() != k.dims() || h_kv == 0 || h % h_kv != 0 {
        return Err(Error::input(
            "flash attention operands",
            "q (B, H, N, Dh), k and v (B, Hkv, M, Dh) with H a multiple of Hkv",
            format!("q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims()),
        ));
    }
    let bias = match bias {
        Some(t) => {
            if t.elem_count() != b * m {
                return Err(Error::input(
                    "flash attention key bias",
                    format!("{} values (B, M)", b * m),
                    format!("{:?}", t.dims()),
                ));
            }
            Some(
                t.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            )
        }
        None => None,
    };
    let op = FlashAttention {
        scale: scale as f32,
        bias,
    };
    let bf16_kernel = q.dtype() == DType::BF16
        && k.dtype() == DType::BF16
        && v.dtype() == DType::BF16
        && dh % 2 == 0
        && bf16_gemm::available();
    // bf16 stays bf16 where the vdpbf16ps kernel runs; everything else computes in f32
    let dtype = if bf16_kernel { DType::BF16 } else { DType::F32 };
    let cast = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.contiguous()?) };
    let out = cast(q)?.apply_op3_no_bwd(&cast(k)?, &cast(v)?, &op)?;
    Ok(out.to_dtype(q.dtype())?)
}

struct FlashAttention {
    scale: f32,
    bias: Option<Vec<f32>>,
}

fn dims4(l: &Layout) -> candle_core::Result<[usize; 4]> {
    match *l.dims() {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref other => candle_core::bail!("flash attention takes rank-4 tensors, got {other:?}"),
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [batch, heads, n, head_dim] = dims4(l1)?;
        let [_, kv_heads, m, _] = dims4(l2)?;
        let dims = Dims {
            batch,
            heads,
            kv_heads,
            n,
            m,
            head_dim,
        };
        let out = if let CpuStorage::BF16(_) = s1 {
            CpuStorage::BF16(attention_bf16(
                contiguous_bf16(s1, l1, "flash attention q")?,
                contiguous_bf16(s2, l2, "flash attention k")?,
                contiguous_bf16(s3, l3, "flash attention v")?,
                self.bias.as_deref(),
                dims,
                self.scale,
            ))
        } else {
            CpuStorage::F32(attention_f32(
                contiguous_f32(s1, l1, "flash attention q")?,
                contiguous_f32(s2, l2, "flash attention k")?,
                contiguous_f32(s3, l3, "flash attention v")?,
                self.bias.as_deref(),
                dims,
                self.scale,
            ))
        };
        Ok((out, Shape::from_dims(l1.dims())))
    }
}

/// One task: a block of up to [`QUERY_BLOCK`] query rows of one (batch, head).
struct QueryTask {
    batch: usize,
    /// The kv head (batch-major index) its query head reads.
    kv: usize,
    /// Its rows' range in the flat (B, H, N, Dh) query slice.
    queries: std::ops::Range<usize>,
}

/// `out` (B, H, N, Dh) cut into query blocks, each with what its task reads.
fn query_tasks<T>(out: &mut [T], d: Dims) -> Vec<(QueryTask, &mut [T])> {
    let dh = d.head_dim;
    let mut tasks = Vec::new();
    for (bh, head_out) in out.chunks_mut(d.n * dh).enumerate() {
        let (batch, h) = (bh / d.heads, bh % d.heads);
        let kv = batch * d.kv_heads + h / (d.heads / d.kv_heads);
        for (qb, block) in head_out.chunks_mut(QUERY_BLOCK * dh).enumerate() {
            let start = (bh * d.n + qb * QUERY_BLOCK) * dh;
            let queries = start..start + block.len();
            tasks.push((QueryTask { batch, kv, queries }, block));
        }
    }
    tasks
}

/// The running maximum and sum of each query row: FlashAttention's online softmax.
struct OnlineSoftmax {
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl OnlineSoftmax {
    fn new(rows: usize) -> Self {
        Self {
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0f32; rows],
        }
    }

    /// Takes row `i`'s (scaled) scores for one key block: adds the key bias, replaces them by
    /// exp(s − running max) and rescales the row's output accumulator `acc` to the new max.
    fn add(&mut self, i: usize, scores: &mut [f32], bias: Option<&[f32]>, acc: &mut [f32]) {
        if let Some(bias) = bias {
            scores.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
        }
        let new_max = self.max[i].max(math::max(scores));
        let sum = math::exp_shifted_sum(scores, new_max);
        let correction = math::exp(self.max[i] - new_max);
        if correction != 1.0 {
            acc.iter_mut().for_each(|x| *x *= correction);
        }
        self.sum[i] = self.sum[i] * correction + sum;
        self.max[i] = new_max;
    }

    /// 1 / the row's softmax denominator.
    fn inverse_sum(&self, i: usize) -> f32 {
        1.0 / self.sum[i]
    }
}

/// The kernel on row-major slices; see [`flash_attention`].
pub fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    d: Dims,
    scale: f32,
) -> Vec<f32> {
    let dh = d.head_dim;
    let mut out = vec![0f32; d.batch * d.heads * d.n * dh];
    if out.is_empty() || d.m == 0 {
        return out;
    }
    query_tasks(&mut out, d).into_par_iter().for_each(|(t, o)| {
        let q_rows = &q[t.queries.clone()];
        let kv_range = t.kv * d.m * dh..(t.kv + 1) * d.m * dh;
        let bias = bias.map(|all| &all[t.batch * d.m..(t.batch + 1) * d.m]);
        query_block(
            q_rows,
            &k[kv_range.clone()],
            &v[kv_range],
            bias,
            o,
            dh,
            scale,
        );
    });
    out
}

/// One block of query rows against every key: `o` (rows, Dh) receives the output.
fn query_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    o: &mut [f32],
    dh: usize,
    scale: f32,
) {
    let rows = o.len() / dh;
    let m = k.len() / dh;
    // the scale goes on the queries: rows·Dh multiplications instead of rows·M
    let qs: Vec<f32> = q.iter().map(|x| x * scale).collect();
    let mut scores = vec![0f32; rows * KEY_BLOCK];
    let mut softmax = OnlineSoftmax::new(rows);
    for j0 in (0..m).step_by(KEY_BLOCK) {
        let cols = KEY_BLOCK.min(m - j0);
        let s = &mut scores[..rows * cols];
        let k_blk = &k[j0 * dh..(j0 + cols) * dh];
        let v_blk = &v[j0 * dh..(j0 + cols) * dh];
        // S = Qs · K_blkᵀ, (rows, cols)
        // SAFETY: every pointer/stride pair addresses inside its slice: s is rows×cols
        // row-major, qs rows×Dh row-major, and Kᵀ(kk, c) = k_blk[c·Dh + kk].
        unsafe {
            gemm::gemm(
                rows,
                cols,
                dh,
                s.as_mut_ptr(),
                1,
                cols as isize,
                false,
                qs.as_ptr(),
                1,
                dh as isize,
                k_blk.as_ptr(),
                dh as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        let bias = bias.map(|b| &b[j0..j0 + cols]);
        for (i, (srow, orow)) in s.chunks_mut(cols).zip(o.chunks_mut(dh)).enumerate() {
            softmax.add(i, srow, bias, orow);
        }
        // O += P · V_blk, (rows, Dh)
        // SAFETY: o is rows×Dh row-major, s rows×cols row-major, v_blk cols×Dh row-major.
        unsafe {
            gemm::gemm(
                rows,
                dh,
                cols,
                o.as_mut_ptr(),
                1,
                dh as isize,
                true,
                s.as_ptr(),
                1,
                cols as isize,
                v_blk.as_ptr(),
                1,
                dh as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
    for (i, orow) in o.chunks_mut(dh).enumerate() {
        let inv = softmax.inverse_sum(i);
        orow.iter_mut().for_each(|x| *x *= inv);
    }
}

/// The bf16 kernel: both block products on `vdpbf16ps` (bf16 operands, f32 accumulation), the
/// online softmax in f32, the probabilities rounded to bf16 for the second product (as bf16
/// attention kernels do). Twice the f32 rate on AVX-512 BF16; `head_dim` must be even.
pub fn attention_bf16(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    bias: Option<&[f32]>,
    d: Dims,
    scale: f32,
) -> Vec<bf16> {
    let dh = d.head_dim;
    let mut out = vec![bf16::ZERO; d.batch * d.heads * d.n * dh];
    if out.is_empty() || d.m == 0 {
        return out;
    }
    // Vᵀ per kv head, (Dh, M) with M padded to even (the padded key's column is 0): the left
    // operand of Oᵀ = Vᵀ · Pᵀ, read in place by every query block of the head
    let m_pad = d.m.next_multiple_of(2);
    let mut vt = vec![bf16::ZERO; d.batch * d.kv_heads * dh * m_pad];
    vt.par_chunks_mut(dh * m_pad)
        .zip(v.par_chunks(d.m * dh))
        .for_each(|(t, head)| {
            for (j, row) in head.chunks(dh).enumerate() {
                for (c, &x) in row.iter().enumerate() {
                    t[c * m_pad + j] = x;
                }
            }
        });
    query_tasks(&mut out, d).into_par_iter().for_each(|(t, o)| {
        let q_rows = &q[t.queries.clone()];
        let keys = &k[t.kv * d.m * dh..(t.kv + 1) * d.m * dh];
        let values_t = &vt[t.kv * dh * m_pad..(t.kv + 1) * dh * m_pad];
        let bias = bias.map(|all| &all[t.batch * d.m..(t.batch + 1) * d.m]);
        query_block_bf16(q_rows, keys, values_t, m_pad, bias, o, dh, scale);
    });
    out
}

/// One block of query rows against every key, bf16 operands; see [`attention_bf16`].
///
/// It runs transposed, so that both products read their large operand in place (K row-major,
/// Vᵀ prepared once per head) and pack only the small one, which is cheap: Sᵀ = K_blk · Qᵀ
/// with the block's queries packed once, then Oᵀ += Vᵀ_blk · Pᵀ with the probabilities packed
/// as they are rounded to bf16. Packing K and Vᵀ for every query block instead cost more than
/// the products (attention ran at ~120 GFLOP/s). Each query is a column here, so the online
/// softmax runs down the rows, one key per row.
#[allow(clippy::too_many_arguments)]
fn query_block_bf16(
    q: &[bf16],
    k: &[bf16],
    vt: &[bf16],
    m_pad: usize,
    bias: Option<&[f32]>,
    o: &mut [bf16],
    dh: usize,
    scale: f32,
) {
    let rows = o.len() / dh;
    let m = k.len() / dh;
    let strips = rows.div_ceil(STRIP);
    let q_strip = dh * STRIP;
    let q_packed = pack_queries(q, dh, q_strip, strips);
    let p_strip = KEY_BLOCK * STRIP;
    let mut p_packed = vec![0u32; strips * p_strip / 2];
    let mut st = vec![0f32; KEY_BLOCK * rows];
    let mut ot = vec![0f32; dh * rows];
    let mut softmax = ColumnSoftmax::new(rows);
    for j0 in (0..m).step_by(KEY_BLOCK) {
        let cols = KEY_BLOCK.min(m - j0);
        let cols_even = cols.next_multiple_of(2); // a padded key: P = 0 and Vᵀ = 0
        let s = &mut st[..cols * rows];
        // Sᵀ = K_blk · Qᵀ, (cols, rows)
        let k_blk = &k[j0 * dh..(j0 + cols) * dh];
        bf16_gemm::gemm_packed(k_blk, dh, &q_packed, q_strip, (cols, rows, dh), s, rows, false);
        let bias = bias.map(|b| &b[j0..j0 + cols]);
        softmax.add(s, scale, bias, &mut ot, &mut p_packed, p_strip / 2);
        // Oᵀ += Vᵀ_blk · Pᵀ, (Dh, rows)
        let (dims, p) = ((dh, rows, cols_even), as_bf16_bits(&p_packed));
        bf16_gemm::gemm_packed(&vt[j0..], m_pad, p, p_strip, dims, &mut ot, rows, true);
    }
    // O = (Oᵀ)ᵀ / row sums, (rows, Dh)
    for (i, orow) in o.chunks_mut(dh).enumerate() {
        let inv = 1.0 / softmax.sum[i];
        for (c, d) in orow.iter_mut().enumerate() {
            *d = bf16::from_f32(ot[c * rows + i] * inv);
        }
    }
}

/// Qᵀ (Dh, rows) in `gemm_packed`'s strips: strip `s`, pair `p`, lane `c` holds query
/// s·STRIP + c's values 2p and 2p + 1 (lanes past the last query stay 0).
fn pack_queries(q: &[bf16], dh: usize, strip_len: usize, strips: usize) -> Vec<u16> {
    let mut packed = vec![0u16; strips * strip_len];
    for (i, row) in q.chunks(dh).enumerate() {
        let strip = &mut packed[(i / STRIP) * strip_len..];
        let lane = i % STRIP;
        for (p, pair) in row.chunks_exact(2).enumerate() {
            let at = (p * STRIP + lane) * 2;
            strip[at] = pair[0].to_bits();
            strip[at + 1] = pair[1].to_bits();
        }
    }
    packed
}

/// `x` rounded to bf16 (to nearest, ties to even), as bits: plain integer arithmetic, so loops
/// over it vectorise. Only for finite values (probabilities here).
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    (b + 0x7fff + ((b >> 16) & 1)) >> 16
}

/// [`OnlineSoftmax`] for the transposed block: one query per column.
struct ColumnSoftmax {
    max: Vec<f32>,
    sum: Vec<f32>,
    new_max: Vec<f32>,
    block_sum: Vec<f32>,
}

impl ColumnSoftmax {
    fn new(rows: usize) -> Self {
        Self {
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0f32; rows],
            new_max: vec![0f32; rows],
            block_sum: vec![0f32; rows],
        }
    }

    /// Takes one key block's raw scores `s` (keys, queries): scales them, adds the key bias,
    /// replaces them by exp(s − running max), rescales the columns of the output accumulator
    /// `ot` (Dh, queries) to the new maxima, and writes Pᵀ, rounded to bf16, into `packed` in
    /// `gemm_packed`'s strips (as u32 words, one key pair each): strip `s`, key pair `p`, lane
    /// `c` holds query s·STRIP + c's probabilities for keys 2p and 2p + 1 (an odd last key is
    /// paired with a 0).
    fn add(
        &mut self,
        s: &mut [f32],
        scale: f32,
        bias: Option<&[f32]>,
        ot: &mut [f32],
        packed: &mut [u32],
        strip_words: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::Isa::detect().avx512f {
            // SAFETY: the CPU has AVX-512F, checked at run time.
            return unsafe { self.add_avx512(s, scale, bias, ot, packed, strip_words) };
        }
        self.add_body(s, scale, bias, ot, packed, strip_words)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn add_avx512(
        &mut self,
        s: &mut [f32],
        scale: f32,
        bias: Option<&[f32]>,
        ot: &mut [f32],
        packed: &mut [u32],
        strip_words: usize,
    ) {
        self.add_body(s, scale, bias, ot, packed, strip_words)
    }

    /// Plain loops over contiguous rows, written to vectorise.
    #[inline(always)]
    fn add_body(
        &mut self,
        s: &mut [f32],
        scale: f32,
        bias: Option<&[f32]>,
        ot: &mut [f32],
        packed: &mut [u32],
        strip_words: usize,
    ) {
        let rows = self.max.len();
        self.new_max.copy_from_slice(&self.max);
        for (j, srow) in s.chunks_mut(rows).enumerate() {
            let b = bias.map_or(0.0, |b| b[j]);
            for (x, mx) in srow.iter_mut().zip(self.new_max.iter_mut()) {
                *x = *x * scale + b;
                *mx = mx.max(*x);
            }
        }
        self.block_sum.fill(0.0);
        for srow in s.chunks_mut(rows) {
            for ((x, m), sum) in srow.iter_mut().zip(&self.new_max).zip(&mut self.block_sum) {
                *x = math::exp(*x - m);
                *sum += *x;
            }
        }
        // the old maxima become the correction factors exp(old − new)
        let mut rescale = false;
        for (i, old) in self.max.iter_mut().enumerate() {
            let correction = math::exp(*old - self.new_max[i]);
            rescale |= correction != 1.0;
            self.sum[i] = self.sum[i] * correction + self.block_sum[i];
            *old = correction;
        }
        if rescale {
            for orow in ot.chunks_mut(rows) {
                orow.iter_mut().zip(&self.max).for_each(|(x, c)| *x *= c);
            }
        }
        self.max.copy_from_slice(&self.new_max);
        for (p, pair) in s.chunks(2 * rows).enumerate() {
            let (even, odd) = pair.split_at(rows);
            for (strip, lanes) in even.chunks(STRIP).enumerate() {
                let dst = &mut packed[strip * strip_words + p * STRIP..][..lanes.len()];
                let c0 = strip * STRIP;
                if odd.is_empty() {
                    dst.iter_mut()
                        .zip(lanes)
                        .for_each(|(d, &x)| *d = bf16_bits(x));
                } else {
                    let odd = &odd[c0..c0 + lanes.len()];
                    for ((d, &x), &y) in dst.iter_mut().zip(lanes).zip(odd) {
                        *d = bf16_bits(x) | (bf16_bits(y) << 16);
                    }
                }
            }
        }
    }
}

/// The u32 words of a packed strip as the bf16 bit pairs `gemm_packed` reads (little-endian:
/// the low half is the even key).
fn as_bf16_bits(words: &[u32]) -> &[u16] {
    // SAFETY: u16 has weaker alignment than u32 and every bit pattern is a valid u16; the
    // view covers exactly the words' bytes.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u16>(), words.len() * 2) }
}

/// The plain reference: every score materialised, softmax in f64.
pub fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    d: Dims,
    scale: f32,
) -> Vec<f32> {
    let dh = d.head_dim;
    let mut out = vec![0f32; d.batch * d.heads * d.n * dh];
    for b in 0..d.batch {
        for h in 0..d.heads {
            let kv = b * d.kv_heads + h / (d.heads / d.kv_heads);
            for i in 0..d.n {
                let qi = &q[((b * d.heads + h) * d.n + i) * dh..][..dh];
                let scores: Vec<f64> = (0..d.m)
                    .map(|j| {
                        let kj = &k[(kv * d.m + j) * dh..][..dh];
                        let dot: f64 = qi.iter().zip(kj).map(|(a, c)| (a * c) as f64).sum();
                        dot * scale as f64 + bias.map_or(0.0, |bb| bb[b * d.m + j] as f64)
                    })
                    .collect();
                let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let total: f64 = e.iter().sum();
                let o = &mut out[((b * d.heads + h) * d.n + i) * dh..][..dh];
                for (j, w) in e.iter().enumerate() {
                    let vj = &v[(kv * d.m + j) * dh..][..dh];
                    for (oc, vc) in o.iter_mut().zip(vj) {
                        *oc += (w / total * *vc as f64) as f32;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
    }

    /// Ragged block edges on both axes, GQA, masks, one fully masked batch row.
    #[test]
    fn tiled_attention_matches_the_reference_over_ragged_shapes() {
        let mut rng = StdRng::seed_from_u64(7);
        for (batch, heads, kv_heads, n, m, dh) in [
            (1, 1, 1, 1, 1, 4),
            (2, 4, 2, 65, 300, 8),
            (1, 6, 3, 130, 513, 12),
            (3, 2, 1, 7, 256, 72),
            (1, 8, 8, 64, 1, 16),
        ] {
            let d = Dims {
                batch,
                heads,
                kv_heads,
                n,
                m,
                head_dim: dh,
            };
            let q = random(batch * heads * n * dh, &mut rng);
            let k = random(batch * kv_heads * m * dh, &mut rng);
            let v = random(batch * kv_heads * m * dh, &mut rng);
            let mut bias: Vec<f32> = (0..batch * m)
                .map(|_| if rng.gen_bool(0.3) { -1e30 } else { 0.0 })
                .collect();
            bias[..m].iter_mut().for_each(|b| *b = -1e30); // batch row 0 fully masked
            for bias in [None, Some(&bias[..])] {
                let got = attention_f32(&q, &k, &v, bias, d, 0.3);
                let want = attention_reference(&q, &k, &v, bias, d, 0.3);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    err < 2e-5,
                    "{d:?} masked={}: max error {err}",
                    bias.is_some()
                );
            }
        }
    }

    /// The bf16 kernel against the f64 reference on the same bf16-rounded inputs: off by the
    /// bf16 rounding of the probabilities and of the output only (odd key counts, GQA, masks).
    #[test]
    fn bf16_tiled_attention_matches_the_reference_within_bf16_rounding() {
        if !bf16_gemm::available() {
            eprintln!("skipped: no AVX-512 BF16 on this CPU (bf16 attention computes in f32)");
            return;
        }
        let mut rng = StdRng::seed_from_u64(9);
        for (batch, heads, kv_heads, n, m, dh) in [
            (1, 1, 1, 1, 1, 4),
            (2, 4, 2, 65, 301, 8),
            (1, 6, 3, 130, 513, 72),
            (1, 2, 2, 64, 128, 96),
            (1, 2, 1, 100, 257, 16), // a query block ending mid-strip
        ] {
            let d = Dims {
                batch,
                heads,
                kv_heads,
                n,
                m,
                head_dim: dh,
            };
            let round = |v: Vec<f32>| -> Vec<bf16> { v.into_iter().map(bf16::from_f32).collect() };
            let q = round(random(batch * heads * n * dh, &mut rng));
            let k = round(random(batch * kv_heads * m * dh, &mut rng));
            let v = round(random(batch * kv_heads * m * dh, &mut rng));
            let mut bias: Vec<f32> = (0..batch * m)
                .map(|_| if rng.gen_bool(0.3) { -1e30 } else { 0.0 })
                .collect();
            bias[..m].iter_mut().for_each(|b| *b = -1e30);
            let wide = |x: &[bf16]| -> Vec<f32> { x.iter().map(|v| v.to_f32()).collect() };
            for bias in [None, Some(&bias[..])] {
                let got = attention_bf16(&q, &k, &v, bias, d, 0.3);
                let want = attention_reference(&wide(&q), &wide(&k), &wide(&v), bias, d, 0.3);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a.to_f32() - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    err < 0.03,
                    "{d:?} masked={}: max error {err}",
                    bias.is_some()
                );
            }
        }
    }
}
