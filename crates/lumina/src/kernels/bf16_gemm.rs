//! bf16 GEMM on AVX-512 BF16: `y = x · Wᵀ` for bf16 activations `x` (M, K) and a PyTorch-layout
//! bf16 weight `W` (N, K), accumulated in f32 by `vdpbf16ps` (16 lanes × 2 products per
//! instruction, twice the f32 FMA rate), rounded to bf16 once at the end.
//!
//! candle's CPU matmul runs bf16 at ~180 GFLOP/s on this class of machine (it widens through
//! a generic kernel); PyTorch reaches ~780 with oneDNN. The layout here is the textbook one
//! (Goto & van de Geijn): each task takes an (MC, NC) tile of the output, packs the weight
//! panel of its columns for KC inputs into k-pair-interleaved strips of [`NR`] columns,
//! and runs an [`MR`]×[`NR`] register-tile kernel that broadcasts pairs of activations
//! straight from the row-major input (a bf16 pair is one 32-bit lane, so `x` needs no packing,
//! only a row stride that keeps its rows apart in L1: see `activation_stride`).
//!
//! At a text encoder's shapes (M = 256-512 tokens, Gemma's K and N) this runs at 358-376
//! GFLOP/s on a 2-thread Zen 4 (probed `vdpbf16ps` peak ~455); before the stride fix, the
//! vectorised panel transpose and the per-worker scratch it was 227-322.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::flash::{as_bf16_bits, pair_word};
use super::storage::{contiguous_bf16, linear_dims, store_tile, SharedOut};
use super::Isa;
use crate::error::{Error, Result};

/// Rows of the register tile: 12 × 2 accumulators of 16 lanes, 24 independent chains (plus
/// two weight vectors and one broadcast: 27 of the 32 vector registers).
const MR: usize = 12;
/// Columns of the register tile: two 512-bit vectors of f32.
const NR: usize = 32;
/// Output rows per task.
const MC: usize = 256;
/// Output columns per task: its packed panel (K × 128 bf16, 576 KiB at K = 2304) stays in L2.
const NC: usize = 128;
/// Inputs per packed panel (even). Large enough that Lumina's K (2304, 6144 → one or two
/// panels) is mostly done in one pass: measured 363 GFLOP/s at K = 2304 against 339 with
/// 384-deep panels, whose partial sums make extra passes over the output.
const KC: usize = 4096;

/// Whether [`bf16_linear`] has a fast kernel on this CPU.
pub fn available() -> bool {
    Isa::detect().avx512_bf16
}

/// `x` (M, K) bf16 · `w`ᵀ for `w` (N, K) bf16 → (M, N) bf16, f32 accumulation.
/// Errors when the CPU lacks AVX-512 BF16 (see [`available`]) or the shapes disagree.
pub fn bf16_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, n, k) = linear_dims(x, w, candle_core::DType::BF16, "bf16 linear operands")?;
    if !available() {
        return Err(Error::input(
            "bf16 linear",
            "a CPU with AVX-512 BF16",
            Isa::detect().describe(),
        ));
    }
    tracing::trace!(m, n, k, "bf16 linear");
    Ok(x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &Bf16Linear)?)
}

struct Bf16Linear;

impl CustomOp2 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[m, k], &[n, _]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!("bf16 linear takes (M, K) and (N, K)")
        };
        let x = contiguous_bf16(s1, l1, "bf16 linear x")?;
        let y = gemm(x, contiguous_bf16(s2, l2, "bf16 linear w")?, m, n, k);
        Ok((CpuStorage::BF16(y), Shape::from_dims(&[m, n])))
    }
}

/// `x` (M, K) · `w`ᵀ, `w` (N, K), both row-major, to bf16 (M, N).
fn gemm(x: &[bf16], w: &[bf16], m: usize, n: usize, k: usize) -> Vec<bf16> {
    let mut y = vec![bf16::ZERO; m * n];
    if m == 0 || n == 0 || k == 0 {
        return y;
    }
    // an odd K would make the last activation pair read past its row: pad to even
    let padded_w;
    let (w, ldw) = if k % 2 == 1 {
        padded_w = pad_rows(w, n, k, k + 1);
        (&padded_w[..], k + 1)
    } else {
        (w, k)
    };
    // The register tile reads MR rows of `x` side by side. At a row stride that is a multiple
    // of 4 KiB (K = 2048, 16384: Gemma-2B) those rows fall into one set of the 8-way L1 and
    // evict each other on every pair: measured 227-250 GFLOP/s against 322 at K = 2304. A
    // copy at an odd number of cache lines per row spreads them over MR sets; it costs one
    // pass over `x` against N/NC passes of the product.
    let ldx = activation_stride(k);
    let padded_x;
    let x = if ldx != k {
        padded_x = pad_rows(x, m, k, ldx);
        &padded_x[..]
    } else {
        x
    };
    let k = k.next_multiple_of(2);
    let out = SharedOut(y.as_mut_ptr());
    let tiles: Vec<(usize, usize)> = (0..m)
        .step_by(MC)
        .flat_map(|i| (0..n).step_by(NC).map(move |j| (i, j)))
        .collect();
    let operands = Operands {
        x,
        ldx,
        w,
        ldw,
        m,
        n,
        k,
    };
    tiles
        .into_par_iter()
        .for_each(|(i0, j0)| output_tile(&operands, &out, i0, j0));
    y
}

/// The operands of one product: `x` (m, k) with row stride `ldx`, `w` (n, k) with row
/// stride `ldw`, k even.
struct Operands<'a> {
    x: &'a [bf16],
    ldx: usize,
    w: &'a [bf16],
    ldw: usize,
    m: usize,
    n: usize,
    k: usize,
}

thread_local! {
    /// Each worker's packed panel and f32 output tile, kept between products: allocated per
    /// task they cost a first-touch page fault per 4 KiB on every linear.
    static SCRATCH: std::cell::RefCell<(Vec<u32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// The (MC, NC) output tile at (i0, j0), accumulated in f32 over the K panels and rounded to
/// bf16 once.
fn output_tile(p: &Operands, out: &SharedOut<bf16>, i0: usize, j0: usize) {
    let rows = MC.min(p.m - i0);
    let cols = NC.min(p.n - j0);
    SCRATCH.with_borrow_mut(|(panel, acc)| {
        panel.resize(KC.min(p.k) / 2 * NC.div_ceil(NR) * NR, 0);
        acc.resize(MC * NC, 0.0);
        for p0 in (0..p.k).step_by(KC) {
            let depth = KC.min(p.k - p0);
            pack_panel(p.w, p.ldw, j0, cols, p0, depth, panel);
            let packed = as_bf16_bits(panel);
            for r0 in (0..rows).step_by(MR) {
                let mr = MR.min(rows - r0);
                for (s, strip) in packed
                    .chunks(depth * NR)
                    .take(cols.div_ceil(NR))
                    .enumerate()
                {
                    let c0 = s * NR;
                    let nr = NR.min(cols - c0);
                    let a = &p.x[(i0 + r0) * p.ldx + p0..];
                    // SAFETY: the tile (r0.., c0..) of mr × nr lies inside `acc` (MC × NC),
                    // and `a` holds mr rows of stride ldx from p0 on.
                    unsafe {
                        let c = acc.as_mut_ptr().add(r0 * NC + c0);
                        tile(a, p.ldx, strip, depth, c, NC, mr, nr, p0 > 0);
                    }
                }
            }
        }
        for (r, row) in acc.chunks(NC).take(rows).enumerate() {
            // SAFETY: row i0 + r, columns j0..j0 + cols, lie inside the (m, n) output and no
            // other task writes this tile.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.ptr().add((i0 + r) * p.n + j0), cols) };
            dst.convert_from_f32_slice(&row[..cols]);
        }
    });
}

/// Columns of one packed strip (see [`gemm_packed`]).
pub(crate) const STRIP: usize = NR;

/// `c (m, n) (+)= a (m, k) · B` on the calling thread, for kernels that are already parallel
/// (tiled attention) and pack their own right-hand operand: strip `s` of `b` (columns
/// s·[`STRIP`]..) starts at `b[s · strip_len]` and holds `[k/2][STRIP][2]` bf16 bits, as
/// [`pack_panel`] writes them. `a` is row-major with stride `lda`; `c` row-major with stride
/// `ldc`. `k` must be even and the CPU must have AVX-512 BF16 ([`available`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed(
    a: &[bf16],
    lda: usize,
    b: &[u16],
    strip_len: usize,
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        k % 2 == 0
            && available()
            && strip_len >= k * NR
            && b.len() >= (n.div_ceil(NR) - 1) * strip_len + k * NR
            && (m == 0 || (a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n)),
        "gemm_packed operands out of range"
    );
    for s in 0..n.div_ceil(NR) {
        let strip = &b[s * strip_len..];
        let nr = NR.min(n - s * NR);
        for r0 in (0..m).step_by(MR) {
            // SAFETY: rows r0..r0+mr of `a` and of `c` (columns s·NR..+nr) are inside the
            // slices (checked above); the CPU has AVX-512 BF16.
            unsafe {
                let c = c.as_mut_ptr().add(r0 * ldc + s * NR);
                tile(
                    &a[r0 * lda..],
                    lda,
                    strip,
                    k,
                    c,
                    ldc,
                    MR.min(m - r0),
                    nr,
                    accumulate,
                );
            }
        }
    }
}

/// The row stride for activations of `k` values: even (whole pairs), and an odd number of
/// 64-byte lines once a row spans several lines, so that consecutive rows map to different
/// L1 sets.
fn activation_stride(k: usize) -> usize {
    const LINE: usize = 32; // bf16 values per 64-byte line
    let even = k.next_multiple_of(2);
    if even < 4 * LINE {
        return even;
    }
    let lines = even.div_ceil(LINE);
    (lines + 1 - lines % 2) * LINE
}

/// `a` (rows, k) copied at row stride `ld` ≥ k, zero-padded.
fn pad_rows(a: &[bf16], rows: usize, k: usize, ld: usize) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; rows * ld];
    for (dst, src) in out.chunks_mut(ld).zip(a.chunks(k)) {
        dst[..k].copy_from_slice(src);
    }
    out
}

/// Packs `w[j0..j0+cols, p0..p0+depth]` as strips of NR columns, each strip laid out
/// `[depth/2][NR]` in 32-bit words: for every k-pair, the NR columns' two weights side by side
/// (the low half the even one, as [`super::flash::as_bf16_bits`] reads them), which is the
/// operand order of `vdpbf16ps`. When each weight is packed once per product (M ≤ MC, as a
/// text encoder's 256 rows) this is a transpose of the whole weight: done word by word it
/// was ~18 % of a Gemma linear (one store per cache line), so whole 16 × 16 blocks of pairs
/// go through the AVX-512 transpose and only the ragged edges take the plain loop.
/// Columns past `cols` are zero.
fn pack_panel(
    w: &[bf16],
    k: usize,
    j0: usize,
    cols: usize,
    p0: usize,
    depth: usize,
    out: &mut [u32],
) {
    const BLOCK: usize = 16;
    let pairs = depth / 2;
    let words = pairs * NR;
    let simd = cfg!(target_arch = "x86_64") && available();
    for (s, strip) in out.chunks_mut(words).take(cols.div_ceil(NR)).enumerate() {
        for half in (0..NR).step_by(BLOCK) {
            let c0 = s * NR + half;
            let blocked = if simd && c0 + BLOCK <= cols {
                pairs / BLOCK * BLOCK
            } else {
                0
            };
            #[cfg(target_arch = "x86_64")]
            for q0 in (0..blocked).step_by(BLOCK) {
                let src = &w[(j0 + c0) * k + p0 + 2 * q0..];
                let dst = &mut strip[q0 * NR + half..];
                // SAFETY: the CPU has AVX-512 (`simd`); the 16 source rows, k apart, hold the
                // 32 values from p0 + 2·q0 on (q0 + 16 ≤ depth/2, c0 + 16 ≤ cols), and the
                // destination holds 16 rows of NR words from q0 on.
                unsafe { avx512::transpose_pairs(src.as_ptr().cast(), k, dst.as_mut_ptr(), NR) };
            }
            for c in half..half + BLOCK {
                let col = s * NR + c;
                for pair in blocked..pairs {
                    strip[pair * NR + c] = if col < cols {
                        let v = &w[(j0 + col) * k + p0 + 2 * pair..];
                        pair_word(v[0], v[1])
                    } else {
                        0
                    };
                }
            }
        }
    }
}

/// One register tile: `c[mr × nr] (+)= a[mr × depth] · strip`, through the AVX-512 kernel.
///
/// # Safety
/// `c` must address mr rows of stride `ldc` with nr valid columns each; `a` must hold mr rows
/// of stride `lda` with `depth` values each; the CPU must have AVX-512 BF16.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: &[bf16],
    lda: usize,
    strip: &[u16],
    depth: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    debug_assert!(a.len() >= (mr - 1) * lda + depth && strip.len() >= depth * NR);
    // A full-width tile goes straight to `c`; a ragged one through a register-tile buffer
    // (zeroing and copying that buffer for every tile was 9 % of a bf16 VAE decode, whose
    // products are shallow: K = C = 128-512)
    if nr == NR {
        // SAFETY: `c` holds mr rows of stride ldc with NR valid columns (caller's contract).
        unsafe { kernel(a, lda, strip, depth, (c, ldc, accumulate), mr) };
        return;
    }
    let mut acc = [0f32; MR * NR];
    // SAFETY: `acc` is MR × NR, the rest forwarded from the caller.
    unsafe { kernel(a, lda, strip, depth, (acc.as_mut_ptr(), NR, false), mr) };
    // SAFETY: forwarded from the caller.
    unsafe { store_tile(&acc, NR, c, ldc, (mr, nr), accumulate) }
}

/// `out[r][..NR] (+)= a[r][..depth] · strip` for r < mr, rows of `out` `ldo` apart: the
/// AVX-512 kernel.
///
/// # Safety
/// As [`tile`]'s, with `out` holding mr rows of NR values.
unsafe fn kernel(
    a: &[bf16],
    lda: usize,
    strip: &[u16],
    depth: usize,
    (out, ldo, accumulate): (*mut f32, usize, bool),
    mr: usize,
) {
    // SAFETY: forwarded from the caller.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx512::kernel(
            a.as_ptr().cast(),
            lda,
            strip.as_ptr(),
            depth / 2,
            (out, ldo, accumulate),
            mr,
        )
    };
    // Other architectures never get here ([`available`] is false there); the plain tile
    // keeps this function total on them.
    #[cfg(not(target_arch = "x86_64"))]
    for r in 0..mr {
        // SAFETY: row r of `out` holds NR values (caller's contract).
        let row = unsafe { std::slice::from_raw_parts_mut(out.add(r * ldo), NR) };
        if !accumulate {
            row.fill(0.0);
        }
        for (p, &x) in a[r * lda..r * lda + depth].iter().enumerate() {
            let pair = &strip[(p / 2) * NR * 2..];
            for (j, o) in row.iter_mut().enumerate() {
                *o += x.to_f32() * bf16::from_bits(pair[j * 2 + p % 2]).to_f32();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `out[r][0..32] (+)= Σ_pairs a[r][2p..2p+2] · strip[p]` for r < mr, with `out` rows
    /// `ldo` apart (added to with `accumulate`).
    ///
    /// # Safety
    /// AVX-512 BF16 present; `a` holds mr rows of stride `lda` (in bf16) with 2·pairs values;
    /// `strip` holds pairs × NR × 2 values; `out` holds mr rows of stride `ldo` with NR
    /// values that no other thread touches meanwhile.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn kernel(
        a: *const u16,
        lda: usize,
        strip: *const u16,
        pairs: usize,
        (out, ldo, accumulate): (*mut f32, usize, bool),
        mr: usize,
    ) {
        // SAFETY: all pointer reads are inside the ranges the caller guarantees.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            macro_rules! rows {
                ($n:literal) => {
                    for p in 0..pairs {
                        let b = strip.add(p * 2 * NR);
                        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
                        let b1: __m512bh =
                            std::mem::transmute(_mm512_loadu_si512(b.add(NR).cast()));
                        for r in 0..$n {
                            let pair = a.add(r * lda + 2 * p).cast::<i32>().read_unaligned();
                            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
                            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
                        }
                    }
                };
            }
            with_row_count!(mr, rows);
            for (r, row) in acc.iter().enumerate().take(mr) {
                let dst = out.add(r * ldo);
                let (mut lo, mut hi) = (row[0], row[1]);
                if accumulate {
                    lo = _mm512_add_ps(lo, _mm512_loadu_ps(dst));
                    hi = _mm512_add_ps(hi, _mm512_loadu_ps(dst.add(16)));
                }
                _mm512_storeu_ps(dst, lo);
                _mm512_storeu_ps(dst.add(16), hi);
            }
        }
    }

    /// `dst[q · ld_dst + c] = src[c · ld_src / 2 + q]` for q, c < 16, in 32-bit words: the
    /// 16 × 16 transpose of the k-pairs of 16 weight rows (`ld_src` in bf16 values).
    ///
    /// # Safety
    /// AVX-512F present; `src` holds 16 rows of stride `ld_src` bf16 with 32 values each,
    /// `dst` 16 rows of stride `ld_dst` words with 16 words each.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose_pairs(src: *const u16, ld_src: usize, dst: *mut u32, ld_dst: usize) {
        // SAFETY: every load and store is inside the ranges the caller guarantees.
        unsafe {
            let r: [__m512i; 16] =
                std::array::from_fn(|c| _mm512_loadu_si512(src.add(c * ld_src).cast()));
            // 32-bit interleave of row pairs, then 64-bit: u[4i + j] holds, in 128-bit lane L,
            // word 4L + j of rows 4i..4i + 4
            let t: [__m512i; 16] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_epi32(a, b)
                } else {
                    _mm512_unpackhi_epi32(a, b)
                }
            });
            let u: [__m512i; 16] = std::array::from_fn(|i| {
                let (base, j) = (i & !3, i & 3);
                let (a, b) = (t[base + (j >> 1)], t[base + 2 + (j >> 1)]);
                if j % 2 == 0 {
                    _mm512_unpacklo_epi64(a, b)
                } else {
                    _mm512_unpackhi_epi64(a, b)
                }
            });
            // a 4 × 4 transpose of 128-bit lanes across u[j], u[4 + j], u[8 + j], u[12 + j]
            for j in 0..4 {
                let v0 = _mm512_shuffle_i32x4::<0x44>(u[j], u[4 + j]);
                let v1 = _mm512_shuffle_i32x4::<0xEE>(u[j], u[4 + j]);
                let v2 = _mm512_shuffle_i32x4::<0x44>(u[8 + j], u[12 + j]);
                let v3 = _mm512_shuffle_i32x4::<0xEE>(u[8 + j], u[12 + j]);
                let out = [
                    _mm512_shuffle_i32x4::<0x88>(v0, v2),
                    _mm512_shuffle_i32x4::<0xDD>(v0, v2),
                    _mm512_shuffle_i32x4::<0x88>(v1, v3),
                    _mm512_shuffle_i32x4::<0xDD>(v1, v3),
                ];
                for (lane, o) in out.into_iter().enumerate() {
                    _mm512_storeu_si512(dst.add((4 * lane + j) * ld_dst).cast(), o);
                }
            }
        }
    }
}

/// The plain reference: widen to f32, dot products in f64, round to bf16.
pub fn bf16_linear_reference(x: &[bf16], w: &[bf16], m: usize, n: usize, k: usize) -> Vec<bf16> {
    let mut y = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| x[i * k + p].to_f64() * w[j * k + p].to_f64())
                .sum();
            y.push(bf16::from_f64(dot));
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn vdpbf16ps_gemm_matches_the_reference_over_ragged_shapes() -> Result<()> {
        if !available() {
            eprintln!("skipped: no AVX-512 BF16 on this CPU (the portable path is candle's)");
            return Ok(());
        }
        let mut rng = StdRng::seed_from_u64(3);
        for (m, n, k) in [
            (1, 1, 2),
            (3, 5, 7),
            (8, 32, 64),
            (9, 33, 385),
            (257, 300, 770),
            (70, 64, 1),
            (13, 129, 4100), // more than one packed panel along K
        ] {
            let x: Vec<bf16> = (0..m * k)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
                .collect();
            let w: Vec<bf16> = (0..n * k)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
                .collect();
            let dev = Device::Cpu;
            let got = bf16_linear(
                &Tensor::from_slice(&x, (m, k), &dev)?,
                &Tensor::from_slice(&w, (n, k), &dev)?,
            )?
            .flatten_all()?
            .to_vec1::<bf16>()?;
            let want = bf16_linear_reference(&x, &w, m, n, k);
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                // f32 accumulation then one bf16 rounding: within one bf16 ulp of the f64 sum
                let tol = r.to_f32().abs() * 2f32.powi(-7) + 1e-5 * (k as f32).sqrt();
                assert!(
                    (g.to_f32() - r.to_f32()).abs() <= tol,
                    "({m}, {n}, {k}) element {i}: {g} vs {r}"
                );
            }
        }
        Ok(())
    }
}
