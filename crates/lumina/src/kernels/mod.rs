//! Hand-written CPU kernels for inference, each beside a plain reference it is tested against:
//!
//! - [`flash`]: attention that never materialises the N×M score matrix (tiled, online softmax).
//! - [`bf16_gemm`]: bf16 × bf16 → f32-accumulated linear layers on `vdpbf16ps`.
//! - [`strassen`]: large f32 linear layers by Strassen–Winograd on the `gemm` crate's kernels.
//! - [`conv`]: the VAE decoder's convolution (banded im2col on `gemm`), GroupNorm (+ SiLU) and
//!   nearest ×2 upsampling.
//! - [`modulate`]: RMSNorm fused with adaLN scaling and with the tanh-gated residual.
//! - [`ternary`]: 2-bit ternary weights (TerDiT): reference, exact and int8-VNNI matmuls.
//! - [`probe`]: this machine's arithmetic peak (f32 FMA, bf16 dot, int8 VNNI), the yardstick
//!   `lumina bench` reports against.
//!
//! Instruction sets are detected at run time ([`Isa::detect`]): one portable binary uses
//! AVX-512 where the CPU has it and plain Rust elsewhere.

/// `$body!(n)` with `n` the literal equal to `$mr` (1 to 12; 1 for anything else): a register
/// tile kernel's row loop with a constant count keeps every accumulator in a register.
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
pub(crate) mod f32_packed;
pub mod flash;
pub(crate) mod math;
pub mod modulate;
pub mod probe;
pub(crate) mod storage;
pub mod strassen;
pub mod ternary;

pub use flash::flash_attention;

/// The CPU features these kernels can use, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa {
    /// AVX-512 foundation (512-bit FMA).
    pub avx512f: bool,
    /// `vdpbf16ps`: bf16 pair dot products into f32.
    pub avx512_bf16: bool,
    /// `vpdpbusd`: u8×i8 quad dot products into i32.
    pub avx512_vnni: bool,
}

impl Isa {
    /// The CPU's features, unless `LUMINA_PORTABLE_KERNELS` is set (to anything but `0`):
    /// then none, so the portable paths can be run and compared on any machine.
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var_os("LUMINA_PORTABLE_KERNELS").is_some_and(|v| v != "0") {
                return Isa {
                    avx512f: false,
                    avx512_bf16: false,
                    avx512_vnni: false,
                };
            }
            #[cfg(target_arch = "x86_64")]
            {
                let f = std::arch::is_x86_feature_detected!("avx512f");
                Isa {
                    avx512f: f,
                    avx512_bf16: f && std::arch::is_x86_feature_detected!("avx512bf16"),
                    avx512_vnni: f
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                        && std::arch::is_x86_feature_detected!("avx512bw"),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                Isa {
                    avx512f: false,
                    avx512_bf16: false,
                    avx512_vnni: false,
                }
            }
        })
    }

    /// A short description, e.g. `avx512f+bf16+vnni` or `portable`.
    pub fn describe(&self) -> String {
        if !self.avx512f {
            return "portable".into();
        }
        let mut s = String::from("avx512f");
        if self.avx512_bf16 {
            s.push_str("+bf16");
        }
        if self.avx512_vnni {
            s.push_str("+vnni");
        }
        s
    }
}
