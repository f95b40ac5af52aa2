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
use super::flash::{as_bf16_bits, bf16_pair_bits};
use super::storage::SharedOut;

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
    let mut m = vec![0f32; 16 * o * band * tw];
    // f32 products: V as 16 (C, nt) matrices; bf16: U as bf16 rows and V written by the
    // input transform straight into the kernel's packed strips
    let (mut v, ub, mut vp) = match products {
        Products::F32 => (vec![0f32; 16 * c * band * tw], Vec::new(), Vec::new()),
        Products::Bf16 => {
            assert!(
                c % 2 == 0,
                "bf16 Winograd products take an even channel count"
            );
            let ub: Vec<bf16> = u.par_iter().map(|&x| bf16::from_f32(x)).collect();
            let words = 16 * (band * tw).div_ceil(STRIP) * (c / 2) * STRIP;
            (Vec::new(), ub, vec![0u32; words])
        }
    };
    for bi in 0..b {
        let xb = &x[bi * c * hs * ws..][..c * hs * ws];
        let ob = &mut out[bi * o * plane..][..o * plane];
        for t0 in (0..th).step_by(band) {
            let rows = band.min(th - t0);
            let nt = rows * tw;
            let m = &mut m[..16 * o * nt];
            let patches = Patches {
                x: xb,
                dims: [c, hs, ws],
                up,
                t0,
                rows,
            };
            // M[ξ] (O, nt) = U[ξ] (O, C) · V[ξ] (C, nt)
            match products {
                Products::F32 => {
                    let v = &mut v[..16 * c * nt];
                    input_transform(&patches, v);
                    for xi in 0..16 {
                        let dst = &mut m[xi * o * nt..][..o * nt];
                        let a = &u[xi * o * c..][..o * c];
                        gemm_rows(dst, nt, 0, nt, a, &v[xi * c * nt..][..c * nt], o, c, false);
                    }
                }
                Products::Bf16 => {
                    input_transform_packed(&patches, &mut vp);
                    bf16_products(&ub, &vp, m, (o, c, nt));
                }
            }
            output_transform(m, o, nt, [h, wd], t0, rows, bias, ob);
        }
    }
    out
}

/// Output rows per task of the bf16 products (a multiple of the kernel's 12-row tile).
const PRODUCT_ROWS: usize = 48;

/// The 16 products M[ξ] = U[ξ] · V[ξ] on the bf16 kernel, V as [`input_transform_packed`]
/// writes it: every (ξ, block of output rows) is a task.
fn bf16_products(ub: &[bf16], vp: &[u32], m: &mut [f32], (o, c, nt): (usize, usize, usize)) {
    let strips = nt.div_ceil(STRIP);
    let strip_len = c / 2 * STRIP;
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

/// The input of one band: tile rows `t0..t0 + rows` of `x` (C, H, W), read ×2 upsampled by
/// nearest neighbour when `up`.
struct Patches<'a> {
    x: &'a [f32],
    dims: [usize; 3],
    up: bool,
    t0: usize,
    rows: usize,
}

impl Patches<'_> {
    /// Tiles per tile row.
    fn tw(&self) -> usize {
        (self.dims[2] * if self.up { 2 } else { 1 }).div_ceil(2)
    }

    /// Scratch floats [`Self::transform_row`] needs.
    fn scratch(&self) -> usize {
        16 * (self.tw() + 1)
    }

    /// V[ξ][tx] = (Bᵀ d B)[ξ] of channel `ci` for the 4×4 input patch d of each tile tx of
    /// tile row `t0 + r` (zeros outside the input), into `out[ξ·tw + tx]`; Bᵀ = [[1, 0, −1, 0],
    /// [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
    ///
    /// Each input row is held de-interleaved — `e[i]` the logical column 2i − 1, `o[i]` column
    /// 2i — so that tile tx's four columns are `e[tx], o[tx], e[tx + 1], o[tx + 1]` and every
    /// step is a contiguous, vectorisable pass (reading the columns at stride 2 kept these
    /// loops scalar: 13 % of a bf16 SDXL decode). Under ×2 nearest upsampling the halves are
    /// plain shifted copies of the source row.
    fn transform_row(&self, ci: usize, r: usize, scratch: &mut [f32], out: &mut [f32]) {
        let [_, hs, ws] = self.dims;
        let f = if self.up { 2 } else { 1 };
        let (tw, n) = (self.tw(), self.tw() + 1);
        let xp = &self.x[ci * hs * ws..][..hs * ws];
        // p: the four input rows' (e, o) halves; q: Bᵀ d of them
        let (p, q) = scratch[..16 * n].split_at_mut(8 * n);
        let y0 = 2 * (self.t0 + r) as isize - 1;
        for (i, halves) in p.chunks_exact_mut(2 * n).enumerate() {
            let y = y0 + i as isize;
            let (e, o) = halves.split_at_mut(n);
            if y < 0 || y >= (f * hs) as isize {
                e.fill(0.0);
                o.fill(0.0);
            } else {
                split_row(&xp[(y as usize / f) * ws..][..ws], self.up, e, o);
            }
        }
        // Bᵀ d down the four rows, both halves at once
        let (p0, rest) = p.split_at(2 * n);
        let (p1, rest) = rest.split_at(2 * n);
        let (p2, p3) = rest.split_at(2 * n);
        let (q0, rest) = q.split_at_mut(2 * n);
        let (q1, rest) = rest.split_at_mut(2 * n);
        let (q2, q3) = rest.split_at_mut(2 * n);
        for j in 0..2 * n {
            q0[j] = p0[j] - p2[j];
            q1[j] = p1[j] + p2[j];
            q2[j] = p2[j] - p1[j];
            q3[j] = p1[j] - p3[j];
        }
        // (Bᵀ d) B along each tile's columns e[tx], o[tx], e[tx + 1], o[tx + 1]
        for (qa, d) in q.chunks_exact(2 * n).zip(out.chunks_exact_mut(4 * tw)) {
            let (e, o) = qa.split_at(n);
            let (e0, e1, o0, o1) = (&e[..tw], &e[1..], &o[..tw], &o[1..]);
            let (d0, rest) = d.split_at_mut(tw);
            let (d1, rest) = rest.split_at_mut(tw);
            let (d2, d3) = rest.split_at_mut(tw);
            for i in 0..tw {
                d0[i] = e0[i] - e1[i];
                d1[i] = o0[i] + e1[i];
                d2[i] = e1[i] - o0[i];
                d3[i] = o0[i] - o1[i];
            }
        }
    }
}

/// V[ξ][c][t] for every channel and tile t of the band (t = r·tw + tx), ξ-major: 16 (C, nt)
/// matrices for the f32 products.
fn input_transform(p: &Patches, v: &mut [f32]) {
    let (c, tw) = (p.dims[0], p.tw());
    let nt = p.rows * tw;
    // hand each channel its 16 runs of nt values
    let mut runs: Vec<Vec<&mut [f32]>> = (0..c).map(|_| Vec::with_capacity(16)).collect();
    for xi_block in v.chunks_mut(c * nt) {
        for (ci, run) in xi_block.chunks_mut(nt).enumerate() {
            runs[ci].push(run);
        }
    }
    runs.par_iter_mut().enumerate().for_each_init(
        || (vec![0f32; p.scratch()], vec![0f32; 16 * tw]),
        |(scratch, row), (ci, dst)| {
            for r in 0..p.rows {
                p.transform_row(ci, r, scratch, row);
                for (run, vals) in dst.iter_mut().zip(row.chunks_exact(tw)) {
                    run[r * tw..][..tw].copy_from_slice(vals);
                }
            }
        },
    );
}

/// V rounded to bf16 and written straight into the strips `gemm_packed` reads: strip s of
/// V[ξ] at `vp[(ξ·strips + s)·strip_len]`, word `(c/2)·STRIP + t mod STRIP` the pair of
/// channels c, c + 1 at tile t. Writing an f32 V first and packing it in a second pass moved
/// 1.5× V's bytes through memory once more (20 % of a bf16 SDXL decode).
fn input_transform_packed(p: &Patches, vp: &mut [u32]) {
    let (c, tw) = (p.dims[0], p.tw());
    let nt = p.rows * tw;
    let strips = nt.div_ceil(STRIP);
    let strip_len = c / 2 * STRIP;
    assert!(
        c % 2 == 0 && vp.len() >= 16 * strips * strip_len,
        "packed V out of range"
    );
    let out = SharedOut(vp.as_mut_ptr());
    (0..c / 2).into_par_iter().for_each_init(
        || (vec![0f32; p.scratch()], vec![0f32; 32 * tw]),
        |(scratch, rows), cp| {
            let (even, odd) = rows.split_at_mut(16 * tw);
            for r in 0..p.rows {
                p.transform_row(2 * cp, r, scratch, even);
                p.transform_row(2 * cp + 1, r, scratch, odd);
                for (xi, (ev, od)) in even.chunks_exact(tw).zip(odd.chunks_exact(tw)).enumerate() {
                    let mut tx = 0;
                    while tx < tw {
                        let t = r * tw + tx;
                        let (s, lane) = (t / STRIP, t % STRIP);
                        let len = (STRIP - lane).min(tw - tx);
                        let at = (xi * strips + s) * strip_len + cp * STRIP + lane;
                        // SAFETY: `at + len` ≤ the strip's words of channel pair cp (lane +
                        // len ≤ STRIP), inside `vp` (checked above); only task cp writes
                        // them.
                        let dst = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(at), len) };
                        let (a, b) = (&ev[tx..tx + len], &od[tx..tx + len]);
                        for i in 0..len {
                            dst[i] = bf16_pair_bits(a[i], b[i]);
                        }
                        tx += len;
                    }
                }
            }
        },
    );
}

/// One input row `src` as the halves of its zero-padded logical row: `e[i]` = column 2i − 1,
/// `o[i]` = column 2i (columns outside the row are 0; under `up` column j reads `src[j / 2]`).
fn split_row(src: &[f32], up: bool, e: &mut [f32], o: &mut [f32]) {
    let ws = src.len();
    e.fill(0.0);
    o.fill(0.0);
    if up {
        // column 2i − 1 is src[i − 1] for 1 ≤ i ≤ ws, column 2i is src[i] for i < ws
        e[1..=ws].copy_from_slice(src);
        o[..ws].copy_from_slice(src);
    } else {
        for (i, pair) in src.chunks(2).enumerate() {
            o[i] = pair[0];
            if let Some(&odd) = pair.get(1) {
                e[i + 1] = odd;
            }
        }
    }
}

/// The output tiles Aᵀ M A (Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]) of tile rows
/// `t0..t0 + rows`, plus the bias, written into `out` (O, H, W) where they fall inside it:
/// per tile row, contiguous passes over the 16 runs of M, then one interleaving store per
/// output row (per tile it was scalar: 18 % of a bf16 SDXL decode).
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
    out.par_chunks_mut(h * wd).enumerate().for_each_init(
        || vec![0f32; 10 * tw],
        |scratch, (oi, plane)| {
            let b = bias.map_or(0.0, |b| b[oi]);
            let (cols, z) = scratch.split_at_mut(8 * tw);
            for r in 0..rows {
                let y = 2 * (t0 + r);
                let run = |xi: usize| &m[(xi * o + oi) * nt + r * tw..][..tw];
                // Aᵀ M down the rows: cols[2j] the first output row's column j, cols[2j + 1]
                // the second's
                for (j, pair) in cols.chunks_exact_mut(2 * tw).enumerate() {
                    let (c0, c1) = pair.split_at_mut(tw);
                    let (m0, m1, m2, m3) = (run(j), run(4 + j), run(8 + j), run(12 + j));
                    for i in 0..tw {
                        c0[i] = m0[i] + m1[i] + m2[i];
                        c1[i] = m1[i] - m2[i] - m3[i];
                    }
                }
                // then along the columns, for each of the tile's two output rows
                for dy in 0..2 {
                    if y + dy >= h {
                        break;
                    }
                    let col = |j: usize| &cols[(2 * j + dy) * tw..][..tw];
                    let (k0, k1, k2, k3) = (col(0), col(1), col(2), col(3));
                    let (even, odd) = z.split_at_mut(tw);
                    for i in 0..tw {
                        even[i] = k0[i] + k1[i] + k2[i] + b;
                        odd[i] = k1[i] - k2[i] - k3[i] + b;
                    }
                    let line = &mut plane[(y + dy) * wd..][..wd];
                    for (i, px) in line.chunks_mut(2).enumerate() {
                        px[0] = even[i];
                        if let Some(second) = px.get_mut(1) {
                            *second = odd[i];
                        }
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{conv2d_reference, upsampled_reference};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Odd and even sizes (partial tiles on both edges), several bands, batches, upsampling:
    /// within a few f32 ulps of the f64 definition, relative to the output's scale; with bf16
    /// products (where the CPU has them, even channel counts), within bf16 rounding.
    #[test]
    fn winograd_matches_the_definition() {
        let bf16 = bf16_gemm::available();
        if !bf16 {
            eprintln!("bf16 products skipped: no AVX-512 BF16 on this CPU");
        }
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
            // the reference on the explicitly upsampled input
            let (hl, wl) = if up { (2 * h, 2 * w) } else { (h, w) };
            let xl = if up {
                upsampled_reference(&x, b * c, h, w)
            } else {
                x.clone()
            };
            let want = conv2d_reference(&xl, &wt, Some(&bias), [b, c, hl, wl], o, 3, 1);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
            let mut runs = vec![(Products::F32, 2e-6)];
            if bf16 && c % 2 == 0 {
                // U and V rounded to bf16 (2⁻⁹ relative each), f32 sums: measured ≤ 4.5e-3
                runs.push((Products::Bf16, 8e-3));
            }
            for (products, tol) in runs {
                let got = conv3x3(&x, &wt, Some(&bias), [b, c, h, w], o, up, products);
                assert_eq!(got.len(), want.len());
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                println!("({b}, {c}, {h}, {w}) → {o}, up {up}, {products:?}: {err:.2e} of {scale}");
                assert!(
                    err <= tol * scale,
                    "({b}, {c}, {h}, {w}) → {o}, up {up}, {products:?} products: max error \
                     {err} at scale {scale}"
                );
            }
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
