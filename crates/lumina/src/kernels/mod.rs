//! Hand-written CPU kernels for inference, each beside a plain reference it is tested against:
//!
//! - [`flash`]: attention that never materialises the N×M score matrix (tiled, online softmax).
//! - [`bf16_gemm`]: bf16 × bf16 → f32-accumulated linear layers on `vdpbf16ps`.
//! - [`strassen`]: large f32 linear layers by Strassen–Winograd on the `gemm` crate's kernels.
//! - [`dequantize`]: GGUF block-quantised matrices expanded in parallel to the compute dtype.
//! - [`conv`]: the VAE decoder's convolution (banded im2col on `gemm`), GroupNorm (+ SiLU) and
//!   nearest ×2 upsampling.
//! - `winograd`: the decoder's wide 3×3 convolutions by Winograd's F(2×2, 3×3), 2.25× fewer
//!   multiplications than im2col.
//! - [`modulate`]: RMSNorm fused with adaLN scaling and with the tanh-gated residual.
//! - [`gate`]: Gemma's `gelu_tanh(a) ⊙ b` feed-forward gate in one vectorised pass.
//! - [`softcap`]: Gemma-2's attention-logit soft cap `cap·tanh(s/cap)` in one vectorised pass.
//! - [`ternary`]: 2-bit ternary weights (TerDiT): reference, exact and int8-VNNI matmuls.
//! - [`probe`]: this machine's arithmetic peak (f32 FMA, bf16 dot, int8 VNNI), the yardstick
//!   `lumina bench` reports against.
//!
//! Instruction sets are detected at run time ([`Isa::detect`]): one portable binary uses
//! AVX-512 where the CPU has it and plain Rust elsewhere.

/// `fn $name(level, args…)`: the portable, branch-free `$body(args…)` compiled once per ISA
/// level (the same source auto-vectorised at AVX2 + FMA and at AVX-512 width) and run at
/// `level`, which must not exceed what [`Isa::detect`] found. For the elementwise and per-row
/// kernels whose plain loop is their own reference.
macro_rules! at_level {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$meta])*
        $vis fn $name(level: $crate::kernels::Level, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            match level {
                // SAFETY: `level` never exceeds what `Isa::detect` found on this CPU.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Level::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}

/// `$body!(n)` with `n` the literal equal to `$mr` (1 to 12; 1 for anything else): a register
/// tile kernel's row loop with a constant count keeps every accumulator in a register.
// (only the x86 tile kernels use it)
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! with_row_count {
    ($mr:expr, $body:ident) => {
        match $mr {
            12 => $body!(12),
            11 => $body!(11),
            10 => $body!(10),
            9 => $body!(9),
            8 => $body!(8),
            7 => $body!(7),
            6 => $body!(6),
            5 => $body!(5),
            4 => $body!(4),
            3 => $body!(3),
            2 => $body!(2),
            _ => $body!(1),
        }
    };
}

pub mod bf16_gemm;
pub mod conv;
pub mod dequantize;
pub(crate) mod f32_packed;
pub mod flash;
pub mod gate;
pub(crate) mod group_norm;
pub(crate) mod math;
pub mod modulate;
pub mod probe;
pub mod softcap;
pub(crate) mod storage;
pub mod strassen;
pub mod ternary;
pub(crate) mod winograd;

pub use flash::flash_attention;

/// The rungs of the instruction-set ladder, lowest first: every kernel family has a path for
/// each, and the portable one is the reference the others are tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust, whatever the build target vectorises.
    Portable,
    /// aarch64 Advanced SIMD (128-bit), with `sdot` (dotprod) and BF16 where present: every
    /// aarch64 CPU. Below the x86 rungs only so that one cap serves both architectures
    /// (`LUMINA_ISA=avx2` leaves an ARM CPU its NEON).
    Neon,
    /// x86-64 AVX2 + FMA (256-bit): Haswell and later, every AMD Zen.
    Avx2,
    /// AVX-512F (512-bit), with BF16 and VNNI where present.
    Avx512,
}

impl Level {
    /// The name `LUMINA_ISA` takes and `lumina bench` prints.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Neon => "neon",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Parses a `LUMINA_ISA` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" => Ok(Level::Portable),
            "neon" => Ok(Level::Neon),
            "avx2" => Ok(Level::Avx2),
            "avx512" => Ok(Level::Avx512),
            other => Err(format!(
                "LUMINA_ISA={other:?} is not a level: expected portable, neon, avx2 or avx512"
            )),
        }
    }
}

/// Every rung, lowest first.
const ALL_LEVELS: [Level; 4] = [Level::Portable, Level::Neon, Level::Avx2, Level::Avx512];

/// The environment variable that caps the detected level.
pub const ISA_ENV: &str = "LUMINA_ISA";

/// The CPU features these kernels can use, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa {
    /// AVX2 and FMA (256-bit integer and fused multiply-add).
    pub avx2: bool,
    /// AVX-VNNI: `vpdpbusd` on 256-bit registers without AVX-512 (Alder Lake, Zen 5 client).
    pub avx_vnni: bool,
    /// AVX-512 foundation (512-bit FMA).
    pub avx512f: bool,
    /// `vdpbf16ps`: bf16 pair dot products into f32.
    pub avx512_bf16: bool,
    /// `vpdpbusd`: u8×i8 quad dot products into i32.
    pub avx512_vnni: bool,
    /// aarch64 Advanced SIMD (always present on aarch64): the ternary GEMM's `sdot` tile
    /// where dotprod is present; elsewhere candle's own NEON kernels.
    pub neon: bool,
    /// aarch64 `sdot`/`udot` (Armv8.4, optional from 8.2: Apple M1+, Graviton 2+, Snapdragon X).
    pub neon_dotprod: bool,
    /// aarch64 `bfdot`/`bfmmla` (Armv8.6 BF16: Apple M2+, Graviton 3+); reported.
    pub neon_bf16: bool,
}

impl Isa {
    /// No SIMD at all: the portable paths everywhere.
    pub const PORTABLE: Isa = Isa {
        avx2: false,
        avx_vnni: false,
        avx512f: false,
        avx512_bf16: false,
        avx512_vnni: false,
        neon: false,
        neon_dotprod: false,
        neon_bf16: false,
    };

    /// The CPU's features, capped by `LUMINA_ISA` (`portable`, `avx2` or `avx512`) so that
    /// every path can be run, tested and benchmarked on the largest machine. A value that
    /// names no level is ignored here with a warning; the CLI refuses it up front
    /// ([`Isa::cap_from_env`]).
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = Self::cap_from_env().unwrap_or_else(|e| {
                tracing::warn!("{e}; using every level the CPU has");
                None
            });
            let isa = Self::of_cpu();
            match cap {
                Some(level) => isa.capped(level),
                None => isa,
            }
        })
    }

    /// The level `LUMINA_ISA` asks for, if set; an error that names the value otherwise.
    pub fn cap_from_env() -> Result<Option<Level>, String> {
        match std::env::var(ISA_ENV) {
            Ok(v) => Level::parse(&v).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(format!(
                "{ISA_ENV}={v:?} is not a level: expected portable, avx2 or avx512"
            )),
        }
    }

    /// Everything the CPU has, uncapped.
    pub fn of_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let f = avx2 && has!("avx512f");
            Isa {
                avx2,
                avx_vnni: avx2 && has!("avxvnni"),
                avx512f: f,
                avx512_bf16: f && has!("avx512bf16"),
                avx512_vnni: f && has!("avx512vnni") && has!("avx512bw"),
                ..Isa::PORTABLE
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            Isa {
                neon: has!("neon"),
                neon_dotprod: has!("neon") && has!("dotprod"),
                neon_bf16: has!("neon") && has!("bf16"),
                ..Isa::PORTABLE
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Isa::PORTABLE
        }
    }

    /// These features with nothing above `level`.
    pub fn capped(self, level: Level) -> Self {
        match level {
            Level::Portable => Isa::PORTABLE,
            Level::Neon => Isa {
                neon: self.neon,
                neon_dotprod: self.neon_dotprod,
                neon_bf16: self.neon_bf16,
                ..Isa::PORTABLE
            },
            Level::Avx2 => Isa {
                avx512f: false,
                avx512_bf16: false,
                avx512_vnni: false,
                ..self
            },
            Level::Avx512 => self,
        }
    }

    /// The highest rung these features reach.
    pub fn level(&self) -> Level {
        if self.avx512f {
            Level::Avx512
        } else if self.avx2 {
            Level::Avx2
        } else if self.neon {
            Level::Neon
        } else {
            Level::Portable
        }
    }

    /// Every level these features can run, lowest first: what the kernel tests walk (only
    /// this architecture's rungs: an x86 CPU has no NEON level).
    pub fn levels(&self) -> Vec<Level> {
        ALL_LEVELS
            .into_iter()
            .filter(|l| *l <= self.level() && self.capped(*l).level() == *l)
            .collect()
    }

    /// A short description, e.g. `avx512 (bf16, vnni)`, `avx2 (avx-vnni)` or `portable`.
    pub fn describe(&self) -> String {
        let mut extras = Vec::new();
        if self.avx512_bf16 {
            extras.push("bf16");
        }
        if self.avx512_vnni {
            extras.push("vnni");
        }
        if self.avx_vnni && !self.avx512_vnni {
            extras.push("avx-vnni");
        }
        if self.neon_dotprod {
            extras.push("dotprod");
        }
        if self.neon_bf16 {
            extras.push("bf16");
        }
        let level = self.level().name();
        if extras.is_empty() {
            level.to_string()
        } else {
            format!("{level} ({})", extras.join(", "))
        }
    }
}

/// The levels a kernel test runs: every one this CPU (capped by `LUMINA_ISA`) has, with a
/// printed line for each it skips, so a skipped path is never mistaken for a tested one.
#[cfg(test)]
pub(crate) fn test_levels() -> Vec<Level> {
    let isa = Isa::detect();
    let own: &[Level] = if cfg!(target_arch = "aarch64") {
        &[Level::Neon]
    } else {
        &[Level::Avx2, Level::Avx512]
    };
    for &level in own {
        if level > isa.level() {
            eprintln!(
                "skipped: the {} path ({} here)",
                level.name(),
                isa.describe()
            );
        }
    }
    isa.levels()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_cap_and_describe() {
        assert_eq!(Level::parse("AVX2"), Ok(Level::Avx2));
        let err = match Level::parse("sse4") {
            Err(e) => e,
            Ok(level) => panic!("sse4 parsed as {level:?}"),
        };
        assert!(
            err.contains("sse4") && err.contains("portable, neon, avx2 or avx512"),
            "{err}"
        );
        let full = Isa {
            avx2: true,
            avx_vnni: false,
            avx512f: true,
            avx512_bf16: true,
            avx512_vnni: true,
            ..Isa::PORTABLE
        };
        assert_eq!(full.describe(), "avx512 (bf16, vnni)");
        let avx2 = full.capped(Level::Avx2);
        assert_eq!(
            (avx2.level(), avx2.avx2, avx2.avx512_bf16),
            (Level::Avx2, true, false)
        );
        assert_eq!(avx2.levels(), vec![Level::Portable, Level::Avx2]);
        assert_eq!(full.capped(Level::Portable), Isa::PORTABLE);
        assert_eq!(Isa::PORTABLE.describe(), "portable");
        // an ARM CPU: its own rung, kept under an x86 cap, dropped by `portable`
        let arm = Isa {
            neon: true,
            neon_dotprod: true,
            neon_bf16: true,
            ..Isa::PORTABLE
        };
        assert_eq!(arm.describe(), "neon (dotprod, bf16)");
        assert_eq!(arm.levels(), vec![Level::Portable, Level::Neon]);
        assert_eq!(arm.capped(Level::Avx2), arm);
        assert_eq!(arm.capped(Level::Portable), Isa::PORTABLE);
        assert_eq!(full.capped(Level::Neon).level(), Level::Portable);
        assert_eq!(Level::parse("neon"), Ok(Level::Neon));
    }
}
