//! bf16 GEMM on AVX-512 BF16: `y = x · Wᵀ` for bf16 activations `x` (M, K) and a PyTorch-layout
//! bf16 weight `W` (N, K), accumulated in f32 by `vdpbf16ps` (16 lanes × 2 products per
//! instruction, twice the f32 FMA rate), rounded to bf16 once at the end.
//!
//! candle's CPU matmul runs bf16 at ~180 GFLOP/s on this class of machine (it widens through
//! a generic kernel); PyTorch reaches ~780 with oneDNN. The layout here is the textbook one
//! (Goto & van de Geijn): each task takes an (MC, NC) tile of the output, packs the weight
//! panel of its columns for KC inputs into k-pair-interleaved strips of [`NR`] columns,
//! and runs an [`MR`]×[`NR`] register-tile kernel that broadcasts pairs of activations
//! straight from the row-major input (a bf16 pair is one 32-bit lane, so `x` needs no packing).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::flash::as_bf16_bits;
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
        let mut out = vec![bf16::ZERO; y.len()];
        out.par_chunks_mut(1 << 16)
            .zip(y.par_chunks(1 << 16))
            .for_each(|(o, y)| {
                o.iter_mut()
                    .zip(y)
                    .for_each(|(o, y)| *o = bf16::from_f32(*y))
            });
        let y = out;
        Ok((CpuStorage::BF16(y), Shape::from_dims(&[m, n])))
    }
}

/// `x` (M, K) · `w`ᵀ, `w` (N, K), both row-major, to f32 (M, N).
fn gemm(x: &[bf16], w: &[bf16], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return y;
    }
    // an odd K would make the last activation pair read past its row: pad to even
    let padded;
    let (x, w, k) = if k % 2 == 1 {
        padded = (pad_k(x, m, k), pad_k(w, n, k));
        (&padded.0[..], &padded.1[..], k + 1)
    } else {
        (x, w, k)
    };
    let out = SharedOut(y.as_mut_ptr());
    let tiles: Vec<(usize, usize)> = (0..m)
        .step_by(MC)
        .flat_map(|i| (0..n).step_by(NC).map(move |j| (i, j)))
        .collect();
    let operands = Operands {
        x,
        ldx: k,
        w,
        ldw: k,
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

/// The (MC, NC) output tile at (i0, j0).
fn output_tile(p: &Operands, out: &SharedOut<f32>, i0: usize, j0: usize) {
    let rows = MC.min(p.m - i0);
    let cols = NC.min(p.n - j0);
    let mut panel = vec![0u32; KC.min(p.k) / 2 * NC.div_ceil(NR) * NR];
    for p0 in (0..p.k).step_by(KC) {
        let depth = KC.min(p.k - p0);
        pack_panel(p.w, p.ldw, j0, cols, p0, depth, &mut panel);
        let packed = as_bf16_bits(&panel);
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
                // SAFETY: the tile (i0+r0.., j0+c0..) of mr × nr lies inside the output, no
                // other task writes it, and `a` holds mr rows of stride ldx from p0 on.
                unsafe {
                    let c = out.ptr().add((i0 + r0) * p.n + j0 + c0);
                    tile(a, p.ldx, strip, depth, c, p.n, mr, nr, p0 > 0);
                }
            }
        }
    }
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

fn pad_k(a: &[bf16], rows: usize, k: usize) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; rows * (k + 1)];
    for (dst, src) in out.chunks_mut(k + 1).zip(a.chunks(k)) {
        dst[..k].copy_from_slice(src);
    }
    out
}

/// Packs `w[j0..j0+cols, p0..p0+depth]` as strips of NR columns, each strip laid out
/// `[depth/2][NR]` in 32-bit words: for every k-pair, the NR columns' two weights side by side
/// (the low half the even one, as [`super::flash::as_bf16_bits`] reads them), which is the
/// operand order of `vdpbf16ps`. A pair moves as one word: when each weight is packed once per
/// product (M ≤ MC, as a text encoder's 256 rows) that halves the packing's stores. Columns
/// past `cols` are zero.
fn pack_panel(
    w: &[bf16],
    k: usize,
    j0: usize,
    cols: usize,
    p0: usize,
    depth: usize,
    out: &mut [u32],
) {
    let words = depth / 2 * NR;
    for (s, strip) in out.chunks_mut(words).take(cols.div_ceil(NR)).enumerate() {
        for c in 0..NR {
            let col = s * NR + c;
            if col >= cols {
                (0..depth / 2).for_each(|pair| strip[pair * NR + c] = 0);
                continue;
            }
            let row = &w[(j0 + col) * k + p0..][..depth];
            for (pair, v) in row.chunks_exact(2).enumerate() {
                strip[pair * NR + c] =
                    u32::from(v[0].to_bits()) | (u32::from(v[1].to_bits()) << 16);
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
    let mut acc = [0f32; MR * NR];
    // SAFETY: forwarded from the caller; `acc` is MR × NR.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx512::kernel(
            a.as_ptr().cast(),
            lda,
            strip.as_ptr(),
            depth / 2,
            &mut acc,
            mr,
        )
    };
    // Other architectures never get here ([`available`] is false there); the plain tile
    // keeps this function total on them.
    #[cfg(not(target_arch = "x86_64"))]
    for (r, row) in acc.chunks_exact_mut(NR).take(mr).enumerate() {
        for (p, &x) in a[r * lda..r * lda + depth].iter().enumerate() {
            let pair = &strip[(p / 2) * NR * 2..];
            for (j, o) in row.iter_mut().enumerate() {
                *o += x.to_f32() * bf16::from_bits(pair[j * 2 + p % 2]).to_f32();
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { store_tile(&acc, NR, c, ldc, (mr, nr), accumulate) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `acc[r][0..32] = Σ_pairs a[r][2p..2p+2] · strip[p]` for r < mr.
    ///
    /// # Safety
    /// AVX-512 BF16 present; `a` holds mr rows of stride `lda` (in bf16) with 2·pairs values;
    /// `strip` holds pairs × NR × 2 values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn kernel(
        a: *const u16,
        lda: usize,
        strip: *const u16,
        pairs: usize,
        acc_out: &mut [f32; MR * NR],
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
                _mm512_storeu_ps(acc_out.as_mut_ptr().add(r * NR), row[0]);
                _mm512_storeu_ps(acc_out.as_mut_ptr().add(r * NR + 16), row[1]);
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
