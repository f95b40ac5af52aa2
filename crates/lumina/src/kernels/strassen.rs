//! f32 linear layers by Strassen–Winograd: `y = x · Wᵀ` for large `x` (M, K) and a
//! PyTorch-layout weight `W` (N, K), with each level of recursion doing 7 half-size products
//! instead of 8 (so 7/8 of the classical FLOPs per level, 49/64 for two), the half-size
//! products and the final classical ones on candle's gemm kernels (the `gemm` crate, AVX-512).
//!
//! Why: a 2B Next-DiT block at 4096 tokens spends ~70 % of its time in these matmuls, which
//! already run at ~92 % of the probed f32 FMA peak; fewer multiplications are what is left.
//! The schedule is Winograd's variant (7 products, 15 additions) with two temporaries (one
//! activation-sized, one weight-sized quadrant) while the output quadrants hold the partial
//! products, after Boyer, Dumas, Pernet & Zhou, "Memory efficient scheduling of
//! Strassen-Winograd's matrix multiplication algorithm" (ISSAC 2009).
//!
//! Numerics: every product is exact in real arithmetic; in f32 the error bound is normwise
//! (it grows by a small constant factor per level) rather than componentwise, so results
//! differ from the classical product by a few f32 ulps of the row's scale — measured in the
//! tests against an f64 reference. [`F32Matmul::Classical`] turns it off.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::storage::{contiguous_f32, linear_dims};
use crate::error::Result;

/// How f32 inference linears multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum F32Matmul {
    /// Strassen–Winograd for products large enough to gain ([`MIN_HALF`]), classical below.
    #[default]
    Strassen,
    /// Always the classical product (candle's matmul), bit for bit what earlier versions did.
    Classical,
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Chooses how f32 inference linears multiply, for the whole process.
pub fn set_f32_matmul(mode: F32Matmul) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

/// The process's choice (see [`set_f32_matmul`]).
pub fn f32_matmul() -> F32Matmul {
    match MODE.load(Ordering::Relaxed) {
        0 => F32Matmul::Strassen,
        _ => F32Matmul::Classical,
    }
}

/// Recursion levels at most: the third level's products (M/8 × K/8 · …) are too small to
/// keep the gemm kernels near peak at Lumina's sizes.
const MAX_LEVELS: usize = 2;
/// A level recurses only while the half row count and half depth are at least this large:
/// below it the additions and the smaller products' lower rate cost more than the saved
/// eighth.
pub const MIN_HALF: usize = 512;
/// … and the half output width at least this large: the gemm kernels slow down when the
/// output is narrow for its depth (measured on the 2-core Zen 4: (1024, 576, 1536) runs at
/// 183 GFLOP/s, (1024, 1536, 576) at 213), which made a second level of the SwiGLU's output
/// projection slower than one.
pub const MIN_HALF_OUT: usize = 1024;

/// How many levels [`strassen_linear`] recurses for an `(m, k) · (k, n)` product.
pub fn levels(m: usize, n: usize, k: usize) -> usize {
    let (mut m, mut n, mut k) = (m, n, k);
    let mut levels = 0;
    while levels < MAX_LEVELS
        && [m, n, k].iter().all(|d| d % 2 == 0)
        && m / 2 >= MIN_HALF
        && k / 2 >= MIN_HALF
        && n / 2 >= MIN_HALF_OUT
    {
        (m, n, k) = (m / 2, n / 2, k / 2);
        levels += 1;
    }
    levels
}

/// Whether an f32 `x (m, k) · Wᵀ` should take [`strassen_linear`].
pub fn worthwhile(m: usize, n: usize, k: usize) -> bool {
    f32_matmul() == F32Matmul::Strassen && levels(m, n, k) > 0
}

/// `x` (M, K) f32 · `w`ᵀ for `w` (N, K) f32 → (M, N) f32 by Strassen–Winograd ([`levels`]
/// levels; classical when that is 0).
pub fn strassen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, n, k) = linear_dims(x, w, candle_core::DType::F32, "f32 linear operands")?;
    tracing::trace!(m, n, k, levels = levels(m, n, k), "strassen linear");
    Ok(x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &StrassenLinear)?)
}

struct StrassenLinear;

impl CustomOp2 for StrassenLinear {
    fn name(&self) -> &'static str {
        "strassen-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[m, k], &[n, _]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!("strassen linear takes (M, K) and (N, K)")
        };
        let x = contiguous_f32(s1, l1, "strassen linear x")?;
        let w = contiguous_f32(s2, l2, "strassen linear w")?;
        if k == 0 {
            return Ok((
                CpuStorage::F32(vec![0f32; m * n]),
                Shape::from_dims(&[m, n]),
            ));
        }
        // Not zero-filled: the product writes every output value (the classical leaves with
        // read_dst off, the recursion each quadrant first by a `Mode::Set` product), and
        // zeroing 100 MB of SwiGLU activations is a pass over memory for nothing.
        let mut y = Vec::with_capacity(m * n);
        let c = MatMut {
            ptr: y.as_mut_ptr(),
            rows: m,
            cols: n,
            ld: n,
        };
        // SAFETY: x holds m × k, w n × k and y room for m × n row-major values, all of which
        // the product writes before `set_len` exposes them.
        unsafe {
            product(
                Mat::of(x, m, k),
                Mat::of(w, n, k),
                c,
                Mode::Set,
                levels(m, n, k),
            );
            y.set_len(m * n);
        }
        Ok((CpuStorage::F32(y), Shape::from_dims(&[m, n])))
    }
}

/// A row-major f32 matrix view: `rows × cols` values, rows `ld` apart.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    ld: usize,
}

/// A writable [`Mat`].
#[derive(Clone, Copy)]
struct MatMut {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
}

// SAFETY: views are handed to parallel tasks that each touch disjoint rows (`zip2`,
// `combine`) or to the gemm crate, which partitions its output itself.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

impl Mat {
    /// Row `r`'s first value (a method, so closures capture the whole `Sync` view).
    ///
    /// # Safety
    /// `r` < rows.
    unsafe fn row(&self, r: usize) -> *const f32 {
        unsafe { self.ptr.add(r * self.ld) }
    }

    fn of(v: &[f32], rows: usize, cols: usize) -> Self {
        debug_assert!(v.len() >= rows * cols);
        Mat {
            ptr: v.as_ptr(),
            rows,
            cols,
            ld: cols,
        }
    }

    /// Quadrant (i, j) of a matrix with even dimensions.
    fn quad(self, i: usize, j: usize) -> Self {
        let (r, c) = (self.rows / 2, self.cols / 2);
        Mat {
            // SAFETY: the quadrant lies inside the view.
            ptr: unsafe { self.ptr.add(i * r * self.ld + j * c) },
            rows: r,
            cols: c,
            ld: self.ld,
        }
    }
}

impl MatMut {
    /// Row `r`'s first value (as [`Mat::row`]).
    ///
    /// # Safety
    /// `r` < rows.
    unsafe fn row(&self, r: usize) -> *mut f32 {
        unsafe { self.view().row(r).cast_mut() }
    }

    /// Quadrant (i, j), as [`Mat::quad`].
    fn quad(self, i: usize, j: usize) -> Self {
        let q = self.view().quad(i, j);
        MatMut {
            // a pointer derived from this writable view's own
            ptr: q.ptr.cast_mut(),
            rows: q.rows,
            cols: q.cols,
            ld: q.ld,
        }
    }

    fn view(self) -> Mat {
        Mat {
            ptr: self.ptr,
            rows: self.rows,
            cols: self.cols,
            ld: self.ld,
        }
    }
}

/// A temporary matrix (a Strassen sum of quadrants or an accumulating product's output),
/// backed by a buffer from [`POOL`].
struct Scratch {
    values: Vec<f32>,
    rows: usize,
    cols: usize,
}

/// Buffers kept from call to call (at most five are in use at once, the largest a quadrant of
/// the largest operand: 25 MB for the SwiGLU output projection of Lumina-Next 2B at 4096
/// tokens). Fresh buffers would fault on every page's first write, in every call.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

impl Scratch {
    fn new(rows: usize, cols: usize) -> Self {
        let len = rows * cols;
        let mut values = {
            let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
            // the smallest buffer that fits, else the largest (grown below)
            let fits = (0..pool.len())
                .filter(|&i| pool[i].len() >= len)
                .min_by_key(|&i| pool[i].len());
            let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
            pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
        };
        if values.len() < len {
            values.resize(len, 0.0);
        }
        Scratch { values, rows, cols }
    }

    fn mat(&mut self) -> MatMut {
        MatMut {
            ptr: self.values.as_mut_ptr(),
            rows: self.rows,
            cols: self.cols,
            ld: self.cols,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        POOL.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(values);
    }
}

/// How a product lands in its output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// c = a · wᵀ
    Set,
    /// c += a · wᵀ
    Add,
    /// c −= a · wᵀ
    Sub,
}

/// `c (Mode) a · wᵀ` for `a` (m, k), `w` (n, k), `c` (m, n), recursing `levels` times.
///
/// # Safety
/// The views must address valid memory of their sizes; `c` must not overlap `a` or `w`, and
/// no other thread may touch `c` meanwhile.
unsafe fn product(a: Mat, w: Mat, c: MatMut, mode: Mode, levels: usize) {
    debug_assert!(a.cols == w.cols && c.rows == a.rows && c.cols == w.rows);
    if levels == 0 {
        return unsafe { classical(a, w, c, mode) };
    }
    if mode != Mode::Set {
        // The schedule below overwrites its output; an accumulating product runs it on a
        // scratch output and adds that (one pass over a quarter-size block).
        let mut t = Scratch::new(c.rows, c.cols);
        unsafe {
            product(a, w, t.mat(), Mode::Set, levels);
            let sign = if mode == Mode::Add { 1.0 } else { -1.0 };
            zip2(c, c.view(), t.mat().view(), |x, y| x + sign * y);
        }
        return;
    }
    let lv = levels - 1;
    // In the paper's notation C = A·B with B = Wᵀ, so B's quadrant (i, j) is W's (j, i)ᵀ.
    let (a11, a12, a21, a22) = (a.quad(0, 0), a.quad(0, 1), a.quad(1, 0), a.quad(1, 1));
    let (b11, b12, b21, b22) = (w.quad(0, 0), w.quad(1, 0), w.quad(0, 1), w.quad(1, 1));
    let (c11, c12, c21, c22) = (c.quad(0, 0), c.quad(0, 1), c.quad(1, 0), c.quad(1, 1));
    let mut s_buf = Scratch::new(a11.rows, a11.cols); // activation-sized: S3, S1, S2, S4
    let mut t_buf = Scratch::new(b11.rows, b11.cols); // weight-sized: T3, T1, T2, T4
    let (s, t) = (s_buf.mat(), t_buf.mat());
    unsafe {
        zip2(s, a11, a21, |x, y| x - y); // S3 = A11 − A21
        zip2(t, b22, b12, |x, y| x - y); // T3 = B22 − B12
        product(s.view(), t.view(), c21, Mode::Set, lv); // C21 = P7 = S3·T3
        zip2(s, a21, a22, |x, y| x + y); // S1 = A21 + A22
        zip2(t, b12, b11, |x, y| x - y); // T1 = B12 − B11
        product(s.view(), t.view(), c22, Mode::Set, lv); // C22 = P5 = S1·T1
        zip2(s, s.view(), a11, |x, y| x - y); // S2 = S1 − A11
        zip2(t, b22, t.view(), |x, y| x - y); // T2 = B22 − T1
        product(s.view(), t.view(), c12, Mode::Set, lv); // C12 = P6 = S2·T2
        product(a11, b11, c11, Mode::Set, lv); // C11 = P1 = A11·B11
        combine(c11.view(), c12, c21, c22); // C12 = U4, C21 = U3, C22 = U7
        zip2(s, a12, s.view(), |x, y| x - y); // S4 = A12 − S2
        product(s.view(), b22, c12, Mode::Add, lv); // C12 = U5 = U4 + S4·B22
        zip2(t, t.view(), b21, |x, y| x - y); // T4 = T2 − B21
        product(a22, t.view(), c21, Mode::Sub, lv); // C21 = U6 = U3 − A22·T4
        product(a12, b21, c11, Mode::Add, lv); // C11 = U1 = P1 + A12·B21
    }
}

/// The classical product on the gemm crate's kernels, on all of rayon's threads.
///
/// # Safety
/// As [`product`].
unsafe fn classical(a: Mat, w: Mat, c: MatMut, mode: Mode) {
    let (m, n, k) = (a.rows, w.rows, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let beta = if mode == Mode::Sub { -1.0 } else { 1.0 };
    // SAFETY: the views are valid (caller's contract). gemm computes
    // dst = alpha·dst + beta·lhs·rhs, reading dst only when asked; rhs = Wᵀ is W read with
    // unit row stride and its row length as column stride.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.ptr,
            1,
            c.ld as isize,
            mode != Mode::Set,
            a.ptr,
            1,
            a.ld as isize,
            w.ptr,
            w.ld as isize,
            1,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Rows of an element-wise pass per rayon task.
const ROWS_PER_TASK: usize = 64;

/// Values per step of the element-wise passes: a fixed-size array the compiler vectorises
/// (the views may alias, which keeps it from vectorising a plain loop over raw pointers).
const LANES: usize = 16;

/// `dst[i][j] = f(x[i][j], y[i][j])`; `dst` may be `x` or `y` itself.
///
/// # Safety
/// All three views must be valid and of one size; `dst` may alias `x` or `y` only exactly.
unsafe fn zip2(dst: MatMut, x: Mat, y: Mat, f: impl Fn(f32, f32) -> f32 + Sync) {
    debug_assert!(dst.rows == x.rows && dst.rows == y.rows && dst.cols == x.cols);
    let cols = dst.cols;
    (0..dst.rows)
        .into_par_iter()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|r| {
            // SAFETY: row r of each view is valid; rows are disjoint between tasks, and each
            // step reads its LANES values of an aliased input before writing them.
            unsafe {
                let d = dst.row(r);
                let (xs, ys) = (x.row(r), y.row(r));
                let mut j = 0;
                while j + LANES <= cols {
                    let a = (xs.add(j) as *const [f32; LANES]).read_unaligned();
                    let b = (ys.add(j) as *const [f32; LANES]).read_unaligned();
                    let out: [f32; LANES] = std::array::from_fn(|l| f(a[l], b[l]));
                    (d.add(j) as *mut [f32; LANES]).write_unaligned(out);
                    j += LANES;
                }
                for j in j..cols {
                    *d.add(j) = f(*xs.add(j), *ys.add(j));
                }
            }
        });
}

/// The additions after the first four products: with C11 = P1, C12 = P6, C21 = P7 and
/// C22 = P5, U2 = P1 + P6 gives C21 = U3 = U2 + P7, C12 = U4 = U2 + P5 and
/// C22 = U7 = U3 + P5, in one pass.
///
/// # Safety
/// As [`zip2`]; the four quadrants must be disjoint.
unsafe fn combine(c11: Mat, c12: MatMut, c21: MatMut, c22: MatMut) {
    let cols = c11.cols;
    (0..c11.rows)
        .into_par_iter()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|r| {
            // SAFETY: row r of each quadrant is valid and only this task touches it.
            unsafe {
                let p1 = std::slice::from_raw_parts(c11.row(r), cols);
                let p6 = std::slice::from_raw_parts_mut(c12.row(r), cols);
                let p7 = std::slice::from_raw_parts_mut(c21.row(r), cols);
                let p5 = std::slice::from_raw_parts_mut(c22.row(r), cols);
                for j in 0..cols {
                    let u2 = p1[j] + p6[j];
                    let u3 = u2 + p7[j];
                    p6[j] = u2 + p5[j];
                    p7[j] = u3;
                    p5[j] += u3;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// `x · wᵀ` in f64.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
            }
        }
        y
    }

    /// Largest |got − want| over the largest |want|.
    fn normwise_error(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
        err / scale
    }

    fn run(x: &[f32], w: &[f32], (m, n, k): (usize, usize, usize), levels: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; m * n];
        let c = MatMut {
            ptr: y.as_mut_ptr(),
            rows: m,
            cols: n,
            ld: n,
        };
        unsafe { product(Mat::of(x, m, k), Mat::of(w, n, k), c, Mode::Set, levels) };
        y
    }

    /// Each level, forced on small matrices, against the f64 product: the schedule is right
    /// (an error in any of its 22 steps is O(1), not O(ulp)) and the error stays near f32's.
    #[test]
    fn every_level_matches_the_f64_product() {
        let (m, n, k) = (48, 40, 56);
        let (x, w) = (random(m * k, 1), random(n * k, 2));
        let want = reference(&x, &w, m, n, k);
        let classical = normwise_error(&run(&x, &w, (m, n, k), 0), &want);
        for levels in 0..=3 {
            let err = normwise_error(&run(&x, &w, (m, n, k), levels), &want);
            println!("{levels} levels: normwise error {err:e}");
            assert!(
                err < 1e-5,
                "{levels} Strassen levels: normwise error {err:e} (classical {classical:e})"
            );
        }
    }

    /// The accumulating modes (used inside the recursion) add and subtract the product.
    #[test]
    fn accumulating_products_add_and_subtract() {
        let (m, n, k) = (16, 24, 32);
        let (x, w) = (random(m * k, 3), random(n * k, 4));
        let want = reference(&x, &w, m, n, k);
        for (mode, sign) in [(Mode::Add, 1.0), (Mode::Sub, -1.0)] {
            let mut y = vec![0.5f32; m * n];
            let c = MatMut {
                ptr: y.as_mut_ptr(),
                rows: m,
                cols: n,
                ld: n,
            };
            unsafe { product(Mat::of(&x, m, k), Mat::of(&w, n, k), c, mode, 1) };
            let want: Vec<f64> = want.iter().map(|v| 0.5 + sign * v).collect();
            let err = normwise_error(&y, &want);
            assert!(err < 1e-6, "normwise error {err:e}");
        }
    }

    /// Operands that do not fit are an error naming both shapes, not a panic.
    #[test]
    fn mismatched_operands_are_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 6), candle_core::DType::F32, &dev)?;
        let w = Tensor::zeros((8, 5), candle_core::DType::F32, &dev)?;
        let err = strassen_linear(&x, &w).expect_err("K differs").to_string();
        assert!(err.contains("[4, 6]") && err.contains("(8, 5)"), "{err}");
        let w = Tensor::zeros((8, 6), candle_core::DType::F32, &dev)?;
        let err = strassen_linear(&x.to_dtype(candle_core::DType::BF16)?, &w).expect_err("bf16");
        assert!(err.to_string().contains("BF16"), "{err}");
        Ok(())
    }

    #[test]
    fn levels_need_even_large_halves() {
        // Lumina-Next 2B at 4096 tokens: SwiGLU in, SwiGLU out, attention q/out, k/v
        assert_eq!(levels(4096, 6144, 2304), 2);
        assert_eq!(levels(4096, 2304, 6144), 1);
        assert_eq!(levels(4096, 2304, 2304), 1);
        assert_eq!(levels(4096, 576, 2304), 0);
        assert_eq!(levels(1026, 6144, 2304), 1);
        assert_eq!(levels(1022, 6144, 2304), 0);
        assert_eq!(levels(4096, 2304, 2302), 1);
        assert_eq!(levels(4096, 2304, 2303), 0);
    }
}
