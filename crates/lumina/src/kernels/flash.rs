//! Attention without the N×M score matrix: queries in blocks of [`QUERY_BLOCK`] rows walk the
//! keys in blocks of [`KEY_BLOCK`], keeping a running row maximum and sum (the online softmax
//! of FlashAttention, Dao et al. 2022). Memory is O(N·Dh) instead of O(N·M); at 4096 tokens and
//! 32 heads the materialised scores of one layer would be 2 GiB.
//!
//! The two block products run on packed register-tile kernels (`f32_packed`, and
//! `bf16_gemm`'s `vdpbf16ps` tile for bf16; plain Rust without AVX-512); query blocks are
//! spread over rayon's threads. Forward only: training takes the composed, differentiable
//! path in `nn::attention`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::storage::{contiguous_bf16, contiguous_f32};
use super::{bf16_gemm, f32_packed, math, Isa, Level};
use crate::error::{Error, Result};

/// Query rows per task: one task's scores (64 × 512 f32 = 128 KiB) stay in L2.
pub const QUERY_BLOCK: usize = 64;
/// Keys per step of the online softmax (a multiple of 2: bf16 packs key pairs).
pub const KEY_BLOCK: usize = 512;
/// Queries per packed strip: the register tile's width, the same for both element types.
const STRIP: usize = f32_packed::STRIP;
const _: () = assert!(bf16_gemm::STRIP == STRIP);

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

/// The kernel on row-major f32 slices; see [`flash_attention`].
pub fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    d: Dims,
    scale: f32,
) -> Vec<f32> {
    attention_f32_at(Isa::detect().level(), q, k, v, bias, d, scale)
}

/// [`attention_f32`] on the path of `level`, which the CPU must have.
pub(crate) fn attention_f32_at(
    level: Level,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    d: Dims,
    scale: f32,
) -> Vec<f32> {
    assert!(
        level <= Isa::detect().level(),
        "{level:?} is beyond this CPU"
    );
    attention(level, q, k, v, bias, d, scale)
}

/// The bf16 kernel: both block products on `vdpbf16ps` (bf16 operands, f32 accumulation), the
/// online softmax in f32, the probabilities rounded to bf16 for the second product (as bf16
/// attention kernels do). Twice the f32 rate on AVX-512 BF16; `head_dim` must be even and the
/// CPU must have AVX-512 BF16 (`bf16_gemm::available`).
pub fn attention_bf16(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    bias: Option<&[f32]>,
    d: Dims,
    scale: f32,
) -> Vec<bf16> {
    attention(Isa::detect().level(), q, k, v, bias, d, scale)
}

/// What the tiled kernel needs from an element type: its two block products on packed right
/// operands, and how to pack them.
trait Element: Copy + Default + Send + Sync {
    /// One packed value: an f32, or for bf16 a pair of neighbours along the depth (the operand
    /// order of `vdpbf16ps`).
    type Word: Copy + Default + Send + Sync;
    /// Depth values per word.
    const PER_WORD: usize;
    fn from_f32(x: f32) -> Self;
    /// Qᵀ (Dh, rows) of the query block `q` (rows, Dh) in strips of `strip_len` words: strip
    /// `s`, depth word `p`, lane `c` holds query s·STRIP + c (lanes past the last keep what
    /// an earlier block left: the products compute them but never store them).
    /// Returns the factor the scores still need: f32 folds `scale` into the packed queries
    /// (free while packing, and one multiply less per score); bf16 queries stay as given,
    /// since rounding the scaled values again would add a second bf16 error.
    fn pack_queries(
        q: &[Self],
        dh: usize,
        strip_len: usize,
        scale: f32,
        out: &mut [Self::Word],
    ) -> f32;
    /// Pᵀ as the second product's packed right operand, with its strip length, from the
    /// probabilities `st` (strips of `s_len` values, `cols` keys × STRIP queries each): f32
    /// probabilities already have that layout and are used in place; bf16 ones are rounded
    /// into `scratch`.
    fn probabilities<'a>(
        st: &'a [f32],
        s_len: usize,
        cols: usize,
        scratch: &'a mut Vec<Self::Word>,
    ) -> (&'a [Self::Word], usize);
    /// `c (m, n) (+)= a (m, k) · B`, B packed as above, on the path of `level`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        level: Level,
        a: &[Self],
        lda: usize,
        b: &[Self::Word],
        strip_len: usize,
        dims: (usize, usize, usize),
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    );
}

impl Element for f32 {
    type Word = f32;
    const PER_WORD: usize = 1;

    fn from_f32(x: f32) -> Self {
        x
    }

    fn pack_queries(q: &[f32], dh: usize, strip_len: usize, scale: f32, out: &mut [f32]) -> f32 {
        let rows = q.chunks(dh).map(|row| row.iter().map(move |&x| x * scale));
        pack_strips(rows, strip_len, out);
        1.0
    }

    fn probabilities<'a>(
        st: &'a [f32],
        s_len: usize,
        _cols: usize,
        _scratch: &'a mut Vec<f32>,
    ) -> (&'a [f32], usize) {
        (st, s_len)
    }

    fn gemm(
        level: Level,
        a: &[f32],
        lda: usize,
        b: &[f32],
        strip_len: usize,
        dims: (usize, usize, usize),
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        f32_packed::gemm_packed(level, a, lda, b, strip_len, dims, c, ldc, accumulate)
    }
}

impl Element for bf16 {
    type Word = u32;
    const PER_WORD: usize = 2;

    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }

    fn pack_queries(q: &[bf16], dh: usize, strip_len: usize, scale: f32, out: &mut [u32]) -> f32 {
        let rows = q
            .chunks(dh)
            .map(|row| row.chunks_exact(2).map(|pair| pair_word(pair[0], pair[1])));
        pack_strips(rows, strip_len, out);
        scale
    }

    fn probabilities<'a>(
        st: &'a [f32],
        s_len: usize,
        cols: usize,
        scratch: &'a mut Vec<u32>,
    ) -> (&'a [u32], usize) {
        let p_len = s_len / 2;
        scratch.resize(st.len() / s_len * p_len, 0);
        for (st_s, p_s) in st.chunks(s_len).zip(scratch.chunks_mut(p_len)) {
            pack_bf16_strip(st_s, cols, p_s);
        }
        (scratch, p_len)
    }

    fn gemm(
        _level: Level,
        a: &[bf16],
        lda: usize,
        b: &[u32],
        strip_len: usize,
        dims: (usize, usize, usize),
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        let b = as_bf16_bits(b);
        bf16_gemm::gemm_packed(a, lda, b, strip_len * 2, dims, c, ldc, accumulate)
    }
}

/// The packed-query layout of [`Element::pack_queries`]: word `p` of row `i` goes to strip
/// `i / STRIP` (`strip_len` words each), depth `p`, lane `i % STRIP`.
fn pack_strips<W>(
    rows: impl Iterator<Item = impl Iterator<Item = W>>,
    strip_len: usize,
    out: &mut [W],
) {
    for (i, row) in rows.enumerate() {
        let strip = &mut out[(i / STRIP) * strip_len..];
        for (p, word) in row.enumerate() {
            strip[p * STRIP + i % STRIP] = word;
        }
    }
}

/// [`pack_bf16_pairs`] of one strip, vectorised for AVX-512 where the CPU has it.
fn pack_bf16_strip(p: &[f32], cols: usize, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if super::Isa::detect().avx512f {
        // SAFETY: the CPU has AVX-512F, checked at run time.
        return unsafe { pack_bf16_pairs_avx512(p, cols, out) };
    }
    pack_bf16_pairs(p, cols, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_bf16_pairs_avx512(p: &[f32], cols: usize, out: &mut [u32]) {
    pack_bf16_pairs(p, cols, out)
}

/// Word `j·STRIP + c` = query c's probabilities for keys 2j and 2j + 1 as bf16 bits (an odd
/// last key paired with a 0).
#[inline(always)]
fn pack_bf16_pairs(p: &[f32], cols: usize, out: &mut [u32]) {
    for (pair, dst) in p[..cols * STRIP]
        .chunks(2 * STRIP)
        .zip(out.chunks_exact_mut(STRIP))
    {
        let (even, odd) = pair.split_at(STRIP);
        if odd.is_empty() {
            dst.iter_mut()
                .zip(even)
                .for_each(|(d, &x)| *d = bf16_bits(x));
        } else {
            for ((d, &x), &y) in dst.iter_mut().zip(even).zip(odd) {
                *d = bf16_pair_bits(x, y);
            }
        }
    }
}

/// `x` rounded to bf16 (to nearest, ties to even), as bits: plain integer arithmetic, so loops
/// over it vectorise. Only for finite values (probabilities here).
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    (b + 0x7fff + ((b >> 16) & 1)) >> 16
}

/// `x` and `y` rounded to bf16 as one packed word, `x` in the low half: a k-pair as the
/// `vdpbf16ps` strips hold it.
#[inline(always)]
pub(super) fn bf16_pair_bits(x: f32, y: f32) -> u32 {
    bf16_bits(x) | (bf16_bits(y) << 16)
}

/// Two bf16 values as one packed word, `lo` in the low half (see [`bf16_pair_bits`]).
#[inline(always)]
pub(super) fn pair_word(lo: bf16, hi: bf16) -> u32 {
    u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16)
}

/// The u32 words of a packed strip as the bf16 bit pairs `gemm_packed` reads (little-endian:
/// the low half is the even key).
pub(super) fn as_bf16_bits(words: &[u32]) -> &[u16] {
    // SAFETY: u16 has weaker alignment than u32 and every bit pattern is a valid u16; the
    // view covers exactly the words' bytes.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u16>(), words.len() * 2) }
}

/// Both kernels: Vᵀ prepared once per kv head, then every query block on rayon's threads.
fn attention<T: Element>(
    level: Level,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: Option<&[f32]>,
    d: Dims,
    scale: f32,
) -> Vec<T> {
    let dh = d.head_dim;
    let mut out = vec![T::default(); d.batch * d.heads * d.n * dh];
    if out.is_empty() || d.m == 0 {
        return out;
    }
    // Vᵀ per kv head, (Dh, M) with M padded to whole words (a padded key's column is 0): the
    // left operand of Oᵀ = Vᵀ · Pᵀ, read in place by every query block of the head. The
    // register tile reads 12 of its rows at once; a row stride of a multiple of 4 KiB (M =
    // 4096) would put them all in one L1 set, so such strides get one cache line more.
    let mut m_pad = d.m.next_multiple_of(T::PER_WORD);
    if (m_pad * std::mem::size_of::<T>()).is_multiple_of(4096) {
        m_pad += 64 / std::mem::size_of::<T>();
    }
    // scores in log₂ units from here on: the softmax runs on exp2 (see `math::exp2`)
    let scale = scale * std::f32::consts::LOG2_E;
    let bias: Option<Vec<f32>> =
        bias.map(|b| b.iter().map(|x| x * std::f32::consts::LOG2_E).collect());
    let mut vt = vec![T::default(); d.batch * d.kv_heads * dh * m_pad];
    vt.par_chunks_mut(dh * m_pad)
        .zip(v.par_chunks(d.m * dh))
        .for_each(|(t, head)| {
            for (j, row) in head.chunks(dh).enumerate() {
                for (c, &x) in row.iter().enumerate() {
                    t[c * m_pad + j] = x;
                }
            }
        });
    let tasks = query_tasks(&mut out, d).into_par_iter();
    tasks.for_each_init(Buffers::default, |buffers, (t, o)| {
        let q_rows = &q[t.queries.clone()];
        let keys = &k[t.kv * d.m * dh..(t.kv + 1) * d.m * dh];
        let values_t = &vt[t.kv * dh * m_pad..(t.kv + 1) * dh * m_pad];
        let bias = bias
            .as_deref()
            .map(|all| &all[t.batch * d.m..(t.batch + 1) * d.m]);
        let operands = (q_rows, keys, values_t, m_pad);
        query_block(level, operands, bias, o, dh, scale, buffers);
    });
    out
}

/// The working memory of a query block, reused by the blocks one rayon job runs: allocating
/// and zeroing it per block cost ~270 MB of page writes per 4096-token layer.
#[derive(Default)]
struct Buffers<W> {
    /// Qᵀ packed.
    q_packed: Vec<W>,
    /// Sᵀ, then the probabilities, strip by strip.
    st: Vec<f32>,
    /// Pᵀ packed, where it is not `st` itself.
    p_packed: Vec<W>,
    /// Oᵀ accumulated over the key blocks.
    ot: Vec<f32>,
}

/// One block of query rows against every key.
///
/// It runs transposed, so that both products read their large operand in place (K row-major,
/// Vᵀ prepared once per head) and pack only the small one: Sᵀ = K_blk · Qᵀ with the block's
/// queries packed once, then Oᵀ += Vᵀ_blk · Pᵀ with the probabilities packed as they are
/// rounded. Packing K and Vᵀ for every query block instead (what a library GEMM does) cost
/// more than the products: attention ran at ~110 GFLOP/s. Each query is a column here, so the
/// online softmax runs down the rows, one key per row; Sᵀ is kept strip by strip
/// (keys × STRIP queries), which is already the packed layout of Pᵀ.
#[allow(clippy::too_many_arguments)]
fn query_block<T: Element>(
    level: Level,
    (q, k, vt, m_pad): (&[T], &[T], &[T], usize),
    bias: Option<&[f32]>,
    o: &mut [T],
    dh: usize,
    scale: f32,
    buffers: &mut Buffers<T::Word>,
) {
    let rows = o.len() / dh;
    let m = k.len() / dh;
    let strips = rows.div_ceil(STRIP);
    let q_len = dh / T::PER_WORD * STRIP;
    // Lanes past the block's last query may hold an earlier block's values: the products
    // compute them but never store them.
    let Buffers {
        q_packed,
        st,
        p_packed,
        ot,
    } = buffers;
    q_packed.resize(strips * q_len, T::Word::default());
    let score_scale = T::pack_queries(q, dh, q_len, scale, q_packed);
    let s_len = KEY_BLOCK.min(m.next_multiple_of(T::PER_WORD)) * STRIP;
    st.resize(strips * s_len, 0.0);
    ot.clear();
    ot.resize(dh * rows, 0.0);
    let mut softmax = ColumnSoftmax::new(rows);
    for j0 in (0..m).step_by(KEY_BLOCK) {
        let cols = KEY_BLOCK.min(m - j0);
        let k_blk = &k[j0 * dh..(j0 + cols) * dh];
        // Sᵀ = K_blk · Qᵀ, (cols, STRIP) per strip of queries
        for (s, st_s) in st.chunks_mut(s_len).enumerate() {
            let lanes = STRIP.min(rows - s * STRIP);
            let qt = &q_packed[s * q_len..];
            T::gemm(
                level,
                k_blk,
                dh,
                qt,
                q_len,
                (cols, lanes, dh),
                st_s,
                STRIP,
                false,
            );
        }
        softmax.add(
            level,
            st,
            s_len,
            cols,
            score_scale,
            bias.map(|b| &b[j0..j0 + cols]),
            ot,
        );
        let (pt, p_len) = T::probabilities(st, s_len, cols, p_packed);
        // Oᵀ += Vᵀ_blk · Pᵀ, (Dh, rows); a padded key has P = 0 and Vᵀ = 0
        let dims = (dh, rows, cols.next_multiple_of(T::PER_WORD));
        T::gemm(level, &vt[j0..], m_pad, pt, p_len, dims, ot, rows, true);
    }
    // O = (Oᵀ)ᵀ / row sums, (rows, Dh)
    for (i, orow) in o.chunks_mut(dh).enumerate() {
        let inv = 1.0 / softmax.sum[i];
        for (c, d) in orow.iter_mut().enumerate() {
            *d = T::from_f32(ot[c * rows + i] * inv);
        }
    }
}

/// FlashAttention's online softmax (Dao et al. 2022) for the transposed block: a running
/// maximum and sum per query, each query a column of Sᵀ.
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

    /// Takes one key block's raw scores Sᵀ in log₂ units, `cols` keys × STRIP queries in each
    /// strip of `s_len` values: scales them, adds the key bias, replaces them by
    /// 2^(s − running max) and rescales the columns of the output accumulator `ot`
    /// (Dh, queries) to the new maxima. With no scale left and no bias the first pass only
    /// reads.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        level: Level,
        st: &mut [f32],
        s_len: usize,
        cols: usize,
        scale: f32,
        bias: Option<&[f32]>,
        ot: &mut [f32],
    ) {
        match level {
            // SAFETY (both): the CPU has the level (the caller's contract).
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { self.add_avx512(st, s_len, cols, scale, bias, ot) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { self.add_avx2(st, s_len, cols, scale, bias, ot) },
            _ => self.add_body(Level::Portable, st, s_len, cols, scale, bias, ot),
        }
    }

    /// [`Self::add_body`] compiled for AVX2 + FMA: the same loops on 8 lanes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add_avx2(
        &mut self,
        st: &mut [f32],
        s_len: usize,
        cols: usize,
        scale: f32,
        bias: Option<&[f32]>,
        ot: &mut [f32],
    ) {
        self.add_body(Level::Avx2, st, s_len, cols, scale, bias, ot)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn add_avx512(
        &mut self,
        st: &mut [f32],
        s_len: usize,
        cols: usize,
        scale: f32,
        bias: Option<&[f32]>,
        ot: &mut [f32],
    ) {
        self.add_body(Level::Avx512, st, s_len, cols, scale, bias, ot)
    }

    /// Plain loops over STRIP-wide rows, written to vectorise.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn add_body(
        &mut self,
        level: Level,
        st: &mut [f32],
        s_len: usize,
        cols: usize,
        scale: f32,
        bias: Option<&[f32]>,
        ot: &mut [f32],
    ) {
        let rows = self.max.len();
        self.new_max.copy_from_slice(&self.max);
        self.block_sum.fill(0.0);
        for (s, st_s) in st.chunks_mut(s_len).enumerate() {
            let c0 = s * STRIP;
            let lanes = STRIP.min(rows - c0);
            let new_max = &mut self.new_max[c0..c0 + lanes];
            let keys = st_s[..cols * STRIP].chunks_exact_mut(STRIP);
            if scale == 1.0 && bias.is_none() {
                for row in keys {
                    for (x, mx) in row[..lanes].iter().zip(new_max.iter_mut()) {
                        *mx = mx.max(*x);
                    }
                }
            } else {
                for (j, row) in keys.enumerate() {
                    let b = bias.map_or(0.0, |b| b[j]);
                    for (x, mx) in row[..lanes].iter_mut().zip(new_max.iter_mut()) {
                        *x = *x * scale + b;
                        *mx = mx.max(*x);
                    }
                }
            }
            let sums = &mut self.block_sum[c0..c0 + lanes];
            exp2_rows(level, &mut st_s[..cols * STRIP], new_max, sums);
        }
        // the old maxima become the correction factors exp(old − new)
        let mut rescale = false;
        for (i, old) in self.max.iter_mut().enumerate() {
            let correction = math::exp2(*old - self.new_max[i]);
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
    }
}

/// `x ← 2^(x − max)` down the key rows of one strip (STRIP values per row, the first
/// `max.len()` lanes used), adding each query's values to `sums`. The softmax's costliest
/// pass: on AVX-512 it runs on `math::avx512::exp2`, about 10 instructions per 16 scores, on
/// AVX2 on `math::avx2::exp2` (13 per 8) with the sums in registers, against ~20 per 8 for the
/// auto-vectorised scalar form, which reloads and stores the sums on every key.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn exp2_rows(level: Level, rows: &mut [f32], max: &[f32], sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        // SAFETY: the caller runs this level only where the CPU has AVX-512F.
        return unsafe { exp2_rows_avx512(rows, max, sums) };
    }
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx2 && max.len() == STRIP {
        // SAFETY: the caller runs this level only where the CPU has AVX2 and FMA.
        return unsafe { exp2_rows_avx2(rows, max, sums) };
    }
    for row in rows.chunks_exact_mut(STRIP) {
        for ((x, m), sum) in row[..max.len()].iter_mut().zip(max).zip(&mut *sums) {
            *x = math::exp2(*x - m);
            *sum += *x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp2_rows_avx512(rows: &mut [f32], max: &[f32], sums: &mut [f32]) {
    use std::arch::x86_64::*;
    let lanes = max.len();
    assert!(lanes <= STRIP && sums.len() == lanes && rows.len().is_multiple_of(STRIP));
    let half_mask = |h: usize| -> __mmask16 {
        let l = lanes.saturating_sub(16 * h).min(16);
        ((1u32 << l) - 1) as __mmask16
    };
    let mask = [half_mask(0), half_mask(1)];
    // SAFETY: every access is masked to the `lanes` values of `max` and `sums`, or lies inside
    // a STRIP-wide row of `rows` (asserted above); the CPU has AVX-512F (caller).
    unsafe {
        let m = [
            _mm512_maskz_loadu_ps(mask[0], max.as_ptr()),
            _mm512_maskz_loadu_ps(mask[1], max.as_ptr().wrapping_add(16)),
        ];
        let mut acc = [_mm512_setzero_ps(); 2];
        for row in rows.chunks_exact_mut(STRIP) {
            for h in 0..2 {
                let p = row.as_mut_ptr().add(16 * h);
                let e = math::avx512::exp2(_mm512_sub_ps(_mm512_loadu_ps(p), m[h]));
                _mm512_mask_storeu_ps(p, mask[h], e);
                acc[h] = _mm512_mask_add_ps(acc[h], mask[h], acc[h], e);
            }
        }
        for h in 0..2 {
            let dst = sums.as_mut_ptr().wrapping_add(16 * h);
            let total = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[h], dst), acc[h]);
            _mm512_mask_storeu_ps(dst, mask[h], total);
        }
    }
}

/// [`exp2_rows`] on AVX2 for a whole strip (all STRIP lanes used; a partial last strip takes
/// the plain loop): four vectors per key row, the four sums in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp2_rows_avx2(rows: &mut [f32], max: &[f32], sums: &mut [f32]) {
    use std::arch::x86_64::*;
    const V: usize = STRIP / 8;
    assert!(
        max.len() == STRIP && sums.len() == STRIP && rows.len().is_multiple_of(STRIP),
        "exp2_rows_avx2: {} lanes, {} sums, {} values",
        max.len(),
        sums.len(),
        rows.len()
    );
    // SAFETY: `max` and `sums` hold STRIP values and every row STRIP (asserted above); the CPU
    // has AVX2 and FMA (caller).
    unsafe {
        let m: [__m256; V] = std::array::from_fn(|h| _mm256_loadu_ps(max.as_ptr().add(8 * h)));
        let mut acc = [_mm256_setzero_ps(); V];
        for row in rows.chunks_exact_mut(STRIP) {
            for h in 0..V {
                let p = row.as_mut_ptr().add(8 * h);
                let e = math::avx2::exp2(_mm256_sub_ps(_mm256_loadu_ps(p), m[h]));
                _mm256_storeu_ps(p, e);
                acc[h] = _mm256_add_ps(acc[h], e);
            }
        }
        for (h, a) in acc.iter().enumerate() {
            let dst = sums.as_mut_ptr().add(8 * h);
            _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), *a));
        }
    }
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
            for (level, bias) in crate::kernels::test_levels()
                .into_iter()
                .flat_map(|l| [(l, None), (l, Some(&bias[..]))])
            {
                let got = attention_f32_at(level, &q, &k, &v, bias, d, 0.3);
                let want = attention_reference(&q, &k, &v, bias, d, 0.3);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    err < 2e-5,
                    "{level:?} {d:?} masked={}: max error {err}",
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
