//! Arithmetic peak probes: register-only loops of independent multiply-adds on every thread,
//! timed together. What a kernel reaches is reported as a fraction of these.
//!
//! Counting: one 512-bit f32 FMA = 16 lanes × 2 = 32 FLOP (a 256-bit AVX2 one 16 FLOP); one `vdpbf16ps` = 16 lanes × 2
//! pairs × 2 = 64 FLOP; one `vpdpbusd` = 16 lanes × 4 pairs × 2 = 128 OP (64 for AVX-VNNI's
//! 256-bit one); on AVX2 one `vpmaddubsw` (with the int16 add the ternary kernel pairs it
//! with) = 16 lanes × 2 pairs × 2 = 64 OP. On aarch64 one 128-bit `fmla` = 4 lanes × 2 = 8
//! FLOP and one `sdot` = 4 lanes × 4 pairs × 2 = 32 OP.

use std::hint::black_box;
use std::time::Instant;

use super::{Isa, Level};

/// Which arithmetic a probe measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    F32,
    Bf16,
    Int8,
}

/// Independent accumulators: enough to cover the FMA latency × throughput of current cores.
const CHAINS: usize = 12;

/// Peak GFLOP/s (GOP/s for int8) of `arith` over `threads` threads, measured over about
/// `seconds`; `None` when the CPU lacks the instructions.
pub fn peak_gflops(arith: Arith, threads: usize, seconds: f64) -> Option<f64> {
    let isa = Isa::detect();
    let supported = match arith {
        Arith::F32 => true,
        Arith::Bf16 => isa.avx512_bf16,
        Arith::Int8 => isa.avx512_vnni || isa.avx2 || isa.neon_dotprod,
    };
    if !supported {
        return None;
    }
    // calibrate the iteration count on one thread, then time all threads together
    let mut iters = 1u64 << 16;
    loop {
        let t = Instant::now();
        run(arith, iters, isa);
        if t.elapsed().as_secs_f64() > seconds / 8.0 || iters > 1 << 40 {
            break;
        }
        iters *= 2;
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| run(arith, iters, isa));
        }
    });
    let secs = start.elapsed().as_secs_f64();
    Some(ops_per_iter(arith, isa) * iters as f64 * threads.max(1) as f64 / secs / 1e9)
}

fn ops_per_iter(arith: Arith, isa: Isa) -> f64 {
    let per_instr = match (arith, isa.level()) {
        (Arith::F32, Level::Avx512) => 32.0,
        (Arith::F32, Level::Avx2) => 16.0,
        (Arith::F32, Level::Neon) => 8.0,
        (Arith::F32, Level::Portable) => 2.0 * PORTABLE_LANES as f64,
        (Arith::Bf16, _) => 64.0,
        (Arith::Int8, _) if isa.avx512_vnni => 128.0,
        (Arith::Int8, _) if isa.neon_dotprod => 32.0,
        (Arith::Int8, _) => 64.0,
    };
    per_instr * CHAINS as f64
}

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn run(arith: Arith, iters: u64, isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512f && (arith != Arith::Int8 || isa.avx512_vnni) {
        // SAFETY: each probe runs only when `peak_gflops` found its instructions.
        unsafe {
            match arith {
                Arith::F32 => avx512::fma_f32(iters),
                Arith::Bf16 => avx512::dot_bf16(iters),
                Arith::Int8 => avx512::dot_int8(iters),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.avx2 && arith == Arith::F32 {
        // SAFETY: AVX2 and FMA detected.
        unsafe { avx2_fma_f32(iters) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.avx_vnni && arith == Arith::Int8 {
        // SAFETY: AVX-VNNI detected.
        unsafe { avx_vnni_dpbusd(iters) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.avx2 && arith == Arith::Int8 {
        // SAFETY: AVX2 detected.
        unsafe { avx2_maddubs(iters) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa.neon_dotprod && arith == Arith::Int8 {
        // SAFETY: NEON and dotprod detected.
        unsafe { neon::sdot(iters) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa.neon && arith == Arith::F32 {
        // SAFETY: NEON detected.
        unsafe { neon::fma_f32(iters) };
        return;
    }
    let _ = isa;
    portable_fma(iters);
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;
    use std::hint::black_box;

    use super::CHAINS;

    #[target_feature(enable = "neon")]
    pub unsafe fn fma_f32(iters: u64) {
        let a = vdupq_n_f32(black_box(0.999_999));
        let b = vdupq_n_f32(black_box(1e-7));
        let mut acc = [vdupq_n_f32(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = vfmaq_f32(b, *x, a);
            }
        }
        black_box(acc);
    }

    /// The ternary kernel's `sdot` (see `ternary::int8::neon::sdot`).
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn sdot(iters: u64) {
        let a = vdupq_n_s8(black_box(1));
        let mut acc = [vdupq_n_s32(0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = crate::kernels::ternary::int8::sdot(*x, a, a);
            }
        }
        black_box(acc);
    }
}

const PORTABLE_LANES: usize = 8;

/// Whatever vector width the compiler picks for the build target, as a multiply and an add:
/// `mul_add` without the FMA feature is a libm call, which no portable kernel makes.
fn portable_fma(iters: u64) {
    let mut acc = [[1.0f32; PORTABLE_LANES]; CHAINS];
    let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for x in chain.iter_mut() {
                *x = *x * a + b;
            }
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fma_f32(iters: u64) {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(black_box(0.999_999));
    let b = _mm256_set1_ps(black_box(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    black_box(acc);
}

/// The AVX2 ternary kernel's arithmetic: u8 × i8 pair products into int16, added to int16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_maddubs(iters: u64) {
    use std::arch::x86_64::*;
    let b = _mm256_set1_epi8(black_box(1));
    let c = _mm256_set1_epi16(black_box(1));
    let mut acc = [_mm256_setzero_si256(); CHAINS];
    for _ in 0..iters {
        // the accumulator is an operand of the product, so nothing is loop-invariant
        for x in acc.iter_mut() {
            *x = _mm256_add_epi16(_mm256_maddubs_epi16(*x, b), c);
        }
    }
    black_box(acc);
}

/// The AVX-VNNI ternary kernel's arithmetic: the VEX `vpdpbusd` on 8 int32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn avx_vnni_dpbusd(iters: u64) {
    use std::arch::x86_64::*;
    let a = _mm256_set1_epi8(black_box(1));
    let b = _mm256_set1_epi8(black_box(1));
    let mut acc = [_mm256_setzero_si256(); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_dpbusd_avx_epi32(*x, a, b);
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    use super::CHAINS;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_f32(iters: u64) {
        let a = _mm512_set1_ps(black_box(0.999_999));
        let b = _mm512_set1_ps(black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dot_bf16(iters: u64) {
        let a: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3));
        let b = black_box(a);
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        black_box(acc);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_int8(iters: u64) {
        let a = _mm512_set1_epi8(black_box(1));
        let b = _mm512_set1_epi8(black_box(1));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        black_box(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_report_positive_rates_or_absence() {
        let f32_peak = peak_gflops(Arith::F32, 1, 0.05).unwrap_or(0.0);
        assert!(f32_peak > 0.1, "{f32_peak}");
        for arith in [Arith::Bf16, Arith::Int8] {
            if let Some(p) = peak_gflops(arith, 1, 0.05) {
                assert!(p > 0.1, "{arith:?}: {p}");
            }
        }
    }
}
