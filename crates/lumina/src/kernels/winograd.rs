//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", CVPR 2016): each 2×2 block of outputs takes
//! 16 multiplications per (input, output) channel pair instead of 36, so the products — 16
//! matrix multiplications of (O, C) · (C, tiles), one per point of the 4×4 transform — do
//! 2.25× fewer FLOPs than im2col's. The transforms add O(C·H·W) additions.
//!
//! Why: the VAE decoder spends ~70 % of its time in these products, already on the `gemm`
//! crate's register kernels; as with Strassen for the linears, fewer multiplications are what
//! is left. F(2×2, 3×3) is the variant whose transforms hold only 0, ±1 and ±½, so its error
//! stays within a few f32 ulps of the classical sum (measured in the tests); the larger
//! F(4×4, 3×3) saves more but loses digits. `F32Matmul::Classical` turns it off.
//!
//! Layout: the input is read in bands of tile rows; per band, V[ξ][c][t] = (Bᵀ d B)[ξ] for
//! every channel and tile, M[ξ] = U[ξ] · V[ξ] with U[ξ][o][c] = (G g Gᵀ)[ξ], and the output
//! tiles Aᵀ M A are written in place into NCHW.

use half::bf16;
use rayon::prelude::*;

use super::bf16_gemm::{self, STRIP};
use super::conv::gemm_rows;
use super::flash::{as_bf16_bits, bf16_bits};

/// The precision of the 16 products (the transforms always run in f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Products {
    /// f32 operands on the `gemm` crate's kernels.
    F32,
    /// U and V rounded to bf16, multiplied by `vdpbf16ps` with f32 accumulation (AVX-512 BF16
    /// only): a bf16 VAE's convolutions, as diffusers runs them in a bf16 pipeline, with the
    /// activations between layers still f32.
    Bf16,
}

/// Transformed values per band (V: 16 × C × tiles), as the im2col bands of `conv`.
const BAND_VALUES: usize = 4 << 20;

/// Whether a convolution takes this path: 3×3, padding 1, and enough channels on both sides
/// that the 16 products are worth their transforms (the decoder's first and last
/// convolutions, with 4–16 and 3 channels, stay on im2col).
pub(crate) fn applies(k: usize, p: usize, c: usize, o: usize) -> bool {
    k == 3
        && p == 1
        && c >= 32
        && o >= 32
        && super::strassen::f32_matmul() == super::strassen::F32Matmul::Strassen
}

/// U = G g Gᵀ for every (o, c), as 16 matrices (O, C): G = [[1, 0, 0], [½, ½, ½], [½, −½, ½],
/// [0, 0, 1]].
fn filter_transform(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * o * c];
    let plane = o * c;
    let rows: Vec<[f32; 16]> = w
        .par_chunks(9)
        .map(|g| {
            // G g (4 × 3), then (G g) Gᵀ (4 × 4)
            let mut gg = [[0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, d) = (g[j], g[3 + j], g[6 + j]);
                gg[0][j] = a;
                gg[1][j] = 0.5 * (a + b + d);
                gg[2][j] = 0.5 * (a - b + d);
                gg[3][j] = d;
            }
            let mut t = [0f32; 16];
            for (i, r) in gg.iter().enumerate() {
                t[4 * i] = r[0];
                t[4 * i + 1] = 0.5 * (r[0] + r[1] + r[2]);
                t[4 * i + 2] = 0.5 * (r[0] - r[1] + r[2]);
                t[4 * i + 3] = r[2];
            }
            t
        })
        .collect();
    for (oc, t) in rows.iter().enumerate() {
        for (xi, &v) in t.iter().enumerate() {
            u[xi * plane + oc] = v;
        }
    }
    u
}

/// `x` (B, C, H, W) — read upsampled ×2 by nearest neighbour when `up` — convolved with `w`
/// (O, C, 3, 3), padding 1, plus `bias`: (B, O, H', W') with H', W' the logical input's size.
///
/// `products` [`Products::Bf16`] needs a CPU with AVX-512 BF16 (`bf16_gemm::available`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3x3(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    [b, c, hs, ws]: [usize; 4],
    o: usize,
    up: bool,
    products: Products,
) -> Vec<f32> {
    let f = if up { 2 } else { 1 };
    let (h, wd) = (f * hs, f * ws);
    let plane = h * wd;
    let mut out = vec![0f32; b * o * plane];
    if plane == 0 || o == 0 {
        return out;
    }
    let u = filter_transform(w, o, c);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let band = (BAND_VALUES / (16 * c * tw).max(1)).clamp(1, th);
    let mut v = vec![0f32; 16 * c * band * tw];
    let mut m = vec![0f32; 16 * o * band * tw];
    // bf16 products: U as bf16 rows, V[ξ] packed per band into the kernel's strips
    let (ub, mut vp) = match products {
        Products::F32 => (Vec::new(), Vec::new()),
        Products::Bf16 => {
            assert!(
                c % 2 == 0,
                "bf16 Winograd products take an even channel count"
            );
            let ub: Vec<bf16> = u
                .par_iter()
                .map(|&x| bf16::from_bits(bf16_bits(x) as u16))
                .collect();
            let words = 16 * (band * tw).div_ceil(STRIP) * (c / 2) * STRIP;
            (ub, vec![0u32; words])
        }
    };
    for bi in 0..b {
        let xb = &x[bi * c * hs * ws..][..c * hs * ws];
        let ob = &mut out[bi * o * plane..][..o * plane];
        for t0 in (0..th).step_by(band) {
            let rows = band.min(th - t0);
            let nt = rows * tw;
            let (v, m) = (&mut v[..16 * c * nt], &mut m[..16 * o * nt]);
            input_transform(xb, [c, hs, ws], up, t0, rows, v);
            // M[ξ] (O, nt) = U[ξ] (O, C) · V[ξ] (C, nt)
            match products {
                Products::F32 => {
                    for xi in 0..16 {
                        let dst = &mut m[xi * o * nt..][..o * nt];
                        let a = &u[xi * o * c..][..o * c];
                        gemm_rows(dst, nt, 0, nt, a, &v[xi * c * nt..][..c * nt], o, c, false);
                    }
                }
                Products::Bf16 => bf16_products(&ub, v, &mut vp, m, (o, c, nt)),
            }
            output_transform(m, o, nt, [h, wd], t0, rows, bias, ob);
        }
    }
    out
}

/// Output rows per task of the bf16 products (a multiple of the kernel's 12-row tile).
const PRODUCT_ROWS: usize = 48;

/// The 16 products M[ξ] = U[ξ] · V[ξ] on the bf16 kernel: V[ξ] (C, nt) is rounded and packed
/// straight into the kernel's strips (word (c/2, t) = the bf16 pair of channels c, c + 1 at
/// tile t) — no transposed copy — then every (ξ, block of output rows) is a task.
fn bf16_products(
    ub: &[bf16],
    v: &[f32],
    vp: &mut [u32],
    m: &mut [f32],
    (o, c, nt): (usize, usize, usize),
) {
    let strips = nt.div_ceil(STRIP);
    let strip_len = c / 2 * STRIP;
    let vp = &mut vp[..16 * strips * strip_len];
    vp.par_chunks_mut(strip_len)
        .enumerate()
        .for_each(|(i, out)| {
            let (xi, t0) = (i / strips, (i % strips) * STRIP);
            let width = STRIP.min(nt - t0);
            let vx = &v[xi * c * nt..][..c * nt];
            for (cp, dst) in out.chunks_exact_mut(STRIP).enumerate() {
                let even = &vx[2 * cp * nt + t0..][..width];
                let odd = &vx[(2 * cp + 1) * nt + t0..][..width];
                for ((d, &a), &b) in dst.iter_mut().zip(even).zip(odd) {
                    *d = bf16_bits(a) | (bf16_bits(b) << 16);
                }
                dst[width..].fill(0);
            }
        });
    let vp = &*vp;
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new();
    for (xi, mx) in m[..16 * o * nt].chunks_mut(o * nt).enumerate() {
        for (bi, rows) in mx.chunks_mut(PRODUCT_ROWS * nt).enumerate() {
            tasks.push((xi, bi * PRODUCT_ROWS, rows));
        }
    }
    tasks.into_par_iter().for_each(|(xi, r0, dst)| {
        let rows = dst.len() / nt;
        let a = &ub[(xi * o + r0) * c..][..rows * c];
        let b = as_bf16_bits(&vp[xi * strips * strip_len..][..strips * strip_len]);
        bf16_gemm::gemm_packed(a, c, b, 2 * strip_len, (rows, nt, c), dst, nt, false);
    });
}

/// V[ξ][c][t] = (Bᵀ d B)[ξ] for the 4×4 input patch d of each tile t of tile rows
/// `t0..t0 + rows` (zeros outside the input), Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0],
/// [0, −1, 1, 0], [0, 1, 0, −1]].
fn input_transform(
    x: &[f32],
    [c, hs, ws]: [usize; 3],
    up: bool,
    t0: usize,
    rows: usize,
    v: &mut [f32],
) {
    let f = if up { 2 } else { 1 };
    let (h, wd) = (f * hs, f * ws);
    let tw = wd.div_ceil(2);
    let nt = rows * tw;
    // logical columns −1 .. 2·tw + 1 of one input row, zero-padded
    let width = 2 * tw + 2;
    // V is ξ-major; hand each channel its 16 runs of nt values
    let mut runs: Vec<Vec<&mut [f32]>> = (0..c).map(|_| Vec::with_capacity(16)).collect();
    for xi_block in v.chunks_mut(c * nt) {
        for (ci, run) in xi_block.chunks_mut(nt).enumerate() {
            runs[ci].push(run);
        }
    }
    runs.par_iter_mut().enumerate().for_each(|(ci, dst)| {
        let xp = &x[ci * hs * ws..][..hs * ws];
        let mut patch = vec![0f32; 4 * width];
        let mut tmp = vec![0f32; 4 * width];
        for r in 0..rows {
            let y0 = 2 * (t0 + r) as isize - 1;
            for (i, line) in patch.chunks_mut(width).enumerate() {
                let y = y0 + i as isize;
                line.fill(0.0);
                if y < 0 || y >= h as isize {
                    continue;
                }
                let src = &xp[(y as usize / f) * ws..][..ws];
                let dst = &mut line[1..1 + wd];
                if up {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = src[j / 2];
                    }
                } else {
                    dst.copy_from_slice(src);
                }
            }
            // Bᵀ d down the four rows, every column at once
            let (p0, rest) = patch.split_at(width);
            let (p1, rest) = rest.split_at(width);
            let (p2, p3) = rest.split_at(width);
            let (q0, rest) = tmp.split_at_mut(width);
            let (q1, rest) = rest.split_at_mut(width);
            let (q2, q3) = rest.split_at_mut(width);
            for j in 0..width {
                q0[j] = p0[j] - p2[j];
                q1[j] = p1[j] + p2[j];
                q2[j] = p2[j] - p1[j];
                q3[j] = p1[j] - p3[j];
            }
            // (Bᵀ d) B along each tile's four columns
            for (a, q) in [&*q0, &*q1, &*q2, &*q3].into_iter().enumerate() {
                let t = r * tw;
                for tx in 0..tw {
                    let s = &q[2 * tx..2 * tx + 4];
                    dst[4 * a][t + tx] = s[0] - s[2];
                    dst[4 * a + 1][t + tx] = s[1] + s[2];
                    dst[4 * a + 2][t + tx] = s[2] - s[1];
                    dst[4 * a + 3][t + tx] = s[1] - s[3];
                }
            }
        }
    });
}

/// The output tiles Aᵀ M A (Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]) of tile rows
/// `t0..t0 + rows`, plus the bias, written into `out` (O, H, W) where they fall inside it.
#[allow(clippy::too_many_arguments)]
fn output_transform(
    m: &[f32],
    o: usize,
    nt: usize,
    [h, wd]: [usize; 2],
    t0: usize,
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let tw = wd.div_ceil(2);
    out.par_chunks_mut(h * wd)
        .enumerate()
        .for_each(|(oi, plane)| {
            let at = |xi: usize, t: usize| m[(xi * o + oi) * nt + t];
            let b = bias.map_or(0.0, |b| b[oi]);
            for r in 0..rows {
                let y = 2 * (t0 + r);
                for tx in 0..tw {
                    let t = r * tw + tx;
                    // Aᵀ M down the rows, then along the columns
                    let column = |j: usize| {
                        let (m0, m1, m2, m3) =
                            (at(j, t), at(4 + j, t), at(8 + j, t), at(12 + j, t));
                        [m0 + m1 + m2, m1 - m2 - m3]
                    };
                    let cols: [[f32; 2]; 4] = std::array::from_fn(column);
                    let z = [cols.map(|c| c[0]), cols.map(|c| c[1])];
                    for (dy, zr) in z.iter().enumerate() {
                        if y + dy >= h {
                            break;
                        }
                        let line = &mut plane[(y + dy) * wd..][..wd];
                        let x = 2 * tx;
                        line[x] = zr[0] + zr[1] + zr[2] + b;
                        if x + 1 < wd {
                            line[x + 1] = zr[1] - zr[2] - zr[3] + b;
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{conv2d_reference, upsampled_reference};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Odd and even sizes (partial tiles on both edges), several bands, batches, upsampling:
    /// within a few f32 ulps of the f64 definition, relative to the output's scale.
    #[test]
    fn winograd_matches_the_definition() {
        let mut rng = StdRng::seed_from_u64(11);
        for (b, c, h, w, o, up) in [
            (1, 32, 5, 7, 32, false),
            (2, 33, 8, 9, 40, false),
            (1, 32, 6, 5, 32, true),
            (1, 64, 70, 3, 32, false),
            (1, 64, 70, 512, 32, false), // 16 tile rows per band: three bands
            (1, 40, 1, 1, 48, true),
        ] {
            let x: Vec<f32> = (0..b * c * h * w)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect();
            let wt: Vec<f32> = (0..o * c * 9).map(|_| rng.gen_range(-0.2..0.2)).collect();
            let bias: Vec<f32> = (0..o).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let got = conv3x3(&x, &wt, Some(&bias), [b, c, h, w], o, up, Products::F32);
            // the reference on the explicitly upsampled input
            let (hl, wl) = if up { (2 * h, 2 * w) } else { (h, w) };
            let xl = if up {
                upsampled_reference(&x, b * c, h, w)
            } else {
                x.clone()
            };
            let want = conv2d_reference(&xl, &wt, Some(&bias), [b, c, hl, wl], o, 3, 1);
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 2e-6 * scale.max(1.0),
                "({b}, {c}, {h}, {w}) → {o}, up {up}: max error {err} at scale {scale}"
            );
        }
    }

    #[test]
    fn only_wide_3x3_same_padding_convolutions_apply() {
        assert_eq!(
            BAND_VALUES / (16 * 64 * 256),
            16,
            "the three-band case above"
        );
        assert!(applies(3, 1, 128, 128));
        assert!(!applies(3, 1, 3, 128) && !applies(3, 1, 128, 3));
        assert!(!applies(1, 0, 128, 128) && !applies(3, 0, 128, 128));
    }
}
