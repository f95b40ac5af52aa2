//! f32 GEMM against a right operand the caller has already packed, on the calling thread: the
//! block products of tiled attention (see `flash`), which pack their small operand once and
//! read the large one in place. Same register tile as the bf16 kernel (`bf16_gemm`): [`MR`]
//! rows × [`STRIP`] columns, 24 accumulators of 16 lanes, one broadcast per row and depth step.
//! AVX2 has 16 registers of 8 lanes, so its tile is the classic 6 × 16 (12 accumulators, two
//! strip vectors, one broadcast), run over the strip's two halves and the rows in sixes.

use super::storage::store_tile;
use super::{Isa, Level};

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of one packed strip: two 512-bit vectors of f32.
pub(crate) const STRIP: usize = 32;

/// `c (m, n) (+)= a (m, k) · B` for a B (k, n) packed in strips of [`STRIP`] columns: strip `s`
/// (columns s·STRIP..) starts at `b[s · strip_len]` and holds `[k][STRIP]` (lanes past `n`
/// are ignored). `a` is row-major with stride `lda`, `c` with stride `ldc`.
/// Runs on the path of `level`, which the CPU must have.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed(
    level: Level,
    a: &[f32],
    lda: usize,
    b: &[f32],
    strip_len: usize,
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        strip_len >= k * STRIP
            && (n == 0 || b.len() >= (n.div_ceil(STRIP) - 1) * strip_len + k * STRIP)
            && (m == 0 || (a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n)),
        "f32 gemm_packed operands out of range"
    );
    assert!(
        level <= Isa::detect().level(),
        "{level:?} is beyond this CPU"
    );
    let mut acc = [0f32; MR * STRIP];
    for s in 0..n.div_ceil(STRIP) {
        let strip = &b[s * strip_len..][..k * STRIP];
        let nr = STRIP.min(n - s * STRIP);
        for r0 in (0..m).step_by(MR) {
            let mr = MR.min(m - r0);
            let rows = &a[r0 * lda..];
            match level {
                // SAFETY (both): `rows` holds mr rows of stride lda with k values each and
                // `strip` k × STRIP values (checked above); the CPU has the level (asserted).
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => unsafe {
                    avx512::kernel(rows.as_ptr(), lda, strip.as_ptr(), k, &mut acc, mr)
                },
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => unsafe {
                    avx2::kernel(rows.as_ptr(), lda, strip.as_ptr(), k, &mut acc, mr)
                },
                _ => portable_kernel(rows, lda, strip, k, &mut acc, mr),
            }
            // SAFETY: rows r0..r0+mr, columns s·STRIP..+nr of `c` lie inside it (checked above).
            unsafe {
                let dst = c.as_mut_ptr().add(r0 * ldc + s * STRIP);
                store_tile(&acc, STRIP, dst, ldc, (mr, nr), accumulate);
            }
        }
    }
}

/// `acc[r][..] = Σ_p a[r][p] · strip[p][..]` for r < mr, in plain Rust.
fn portable_kernel(
    a: &[f32],
    lda: usize,
    strip: &[f32],
    k: usize,
    acc: &mut [f32; MR * STRIP],
    mr: usize,
) {
    for (r, out) in acc.chunks_exact_mut(STRIP).take(mr).enumerate() {
        out.fill(0.0);
        for (p, b) in strip.chunks_exact(STRIP).take(k).enumerate() {
            let x = a[r * lda + p];
            out.iter_mut().zip(b).for_each(|(o, b)| *o += x * b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, STRIP};

    /// `acc[r][0..32] = Σ_p a[r][p] · strip[p]` for r < mr.
    ///
    /// # Safety
    /// AVX-512F present; `a` holds mr rows of stride `lda` with k values; `strip` holds
    /// k × STRIP values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn kernel(
        a: *const f32,
        lda: usize,
        strip: *const f32,
        k: usize,
        acc_out: &mut [f32; MR * STRIP],
        mr: usize,
    ) {
        // SAFETY: all pointer reads are inside the ranges the caller guarantees.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            macro_rules! rows {
                ($n:literal) => {
                    for p in 0..k {
                        let b = strip.add(p * STRIP);
                        let b0 = _mm512_loadu_ps(b);
                        let b1 = _mm512_loadu_ps(b.add(16));
                        for r in 0..$n {
                            let av = _mm512_set1_ps(*a.add(r * lda + p));
                            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
                            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
                        }
                    }
                };
            }
            with_row_count!(mr, rows);
            for (r, row) in acc.iter().enumerate().take(mr) {
                _mm512_storeu_ps(acc_out.as_mut_ptr().add(r * STRIP), row[0]);
                _mm512_storeu_ps(acc_out.as_mut_ptr().add(r * STRIP + 16), row[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MR, STRIP};

    /// Rows of the AVX2 tile.
    const ROWS: usize = 6;

    /// `acc[r][0..32] = Σ_p a[r][p] · strip[p]` for r < mr: 6 × 16 tiles over both halves of
    /// the strip.
    ///
    /// # Safety
    /// AVX2 and FMA present; `a` holds mr rows of stride `lda` with k values; `strip` holds
    /// k × STRIP values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(
        a: *const f32,
        lda: usize,
        strip: *const f32,
        k: usize,
        acc_out: &mut [f32; MR * STRIP],
        mr: usize,
    ) {
        // SAFETY: all pointer reads are inside the ranges the caller guarantees; every store
        // is to row r0 + r < mr ≤ MR, columns half·16..+16 of `acc_out`.
        unsafe {
            for half in 0..2 {
                for r0 in (0..mr).step_by(ROWS) {
                    let a = a.add(r0 * lda);
                    let out = acc_out.as_mut_ptr().add(r0 * STRIP + 16 * half);
                    macro_rules! rows {
                        ($n:literal) => {{
                            let mut acc = [[_mm256_setzero_ps(); 2]; $n];
                            for p in 0..k {
                                let b = strip.add(p * STRIP + 16 * half);
                                let b0 = _mm256_loadu_ps(b);
                                let b1 = _mm256_loadu_ps(b.add(8));
                                for r in 0..$n {
                                    let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                                    acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
                                    acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
                                }
                            }
                            for (r, row) in acc.iter().enumerate() {
                                _mm256_storeu_ps(out.add(r * STRIP), row[0]);
                                _mm256_storeu_ps(out.add(r * STRIP + 8), row[1]);
                            }
                        }};
                    }
                    match (mr - r0).min(ROWS) {
                        6 => rows!(6),
                        5 => rows!(5),
                        4 => rows!(4),
                        3 => rows!(3),
                        2 => rows!(2),
                        _ => rows!(1),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Both kernels against plain dot products, over ragged rows, columns and depths.
    #[test]
    fn packed_f32_gemm_matches_dot_products() {
        let mut rng = StdRng::seed_from_u64(5);
        for (m, n, k) in [
            (1, 1, 1),
            (13, 33, 7),
            (24, 64, 72),
            (5, 70, 256),
            (17, 9, 96),
        ] {
            let lda = k + 3;
            let a: Vec<f32> = (0..m * lda).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let bt: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect(); // (n, k)
            let strip_len = k * STRIP + 5;
            let mut packed = vec![0f32; n.div_ceil(STRIP) * strip_len];
            for j in 0..n {
                for p in 0..k {
                    packed[(j / STRIP) * strip_len + p * STRIP + j % STRIP] = bt[j * k + p];
                }
            }
            let ldc = n + 1;
            for level in crate::kernels::test_levels() {
                let mut c = vec![1f32; m * ldc];
                let dims = (m, n, k);
                gemm_packed(level, &a, lda, &packed, strip_len, dims, &mut c, ldc, true);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f32 = (0..k).map(|p| a[i * lda + p] * bt[j * k + p]).sum();
                        let got = c[i * ldc + j];
                        assert!(
                            (got - 1.0 - dot).abs() < 1e-4,
                            "{level:?} ({m}, {n}, {k}) at ({i}, {j})"
                        );
                    }
                }
            }
            let mut acc = [0f32; MR * STRIP];
            let mr = m.min(MR);
            portable_kernel(&a, lda, &packed, k, &mut acc, mr);
            for i in 0..mr {
                for j in 0..n.min(STRIP) {
                    let dot: f32 = (0..k).map(|p| a[i * lda + p] * bt[j * k + p]).sum();
                    assert!((acc[i * STRIP + j] - dot).abs() < 1e-4);
                }
            }
        }
    }
}
