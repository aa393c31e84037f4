//! Which SIMD kernels this CPU runs: the one feature detection of the crate.
//!
//! [`selected`] answers once per process (cached in a `OnceLock`) with an [`Isa`]: the
//! best kernel family the CPU has, or a lower one asked for with the environment variable
//! `LMRS_CPU`:
//!
//! - `avx512bf16`: AVX-512 F/BW/VL and AVX512-BF16 (`vdpbf16ps` matrix products),
//! - `avx2`: AVX2 and FMA (bfloat16 widened to float32 in registers, fused multiply-adds),
//! - `portable`: plain Rust, no instruction beyond the target's baseline,
//! - unset, empty or `auto`: the best of these the CPU has.
//!
//! `LMRS_CPU` is read once, by the first call. It can only lower the choice (to test or
//! benchmark a slower kernel on a faster machine): a name that is not one of the above, or
//! a kernel the CPU lacks, is an error (`Error::Invalid`) returned by [`selected`] to
//! every caller, rather than a silent fallback that would make a forced benchmark measure
//! something else.
//!
//! Soundness: a SIMD function can only be reached with a token ([`Avx2Fma`],
//! [`Avx512Bf16`]) proving the CPU has its instructions. The tokens have a private field,
//! so the only way to get one is [`Isa`] from this module, which creates them after
//! `is_x86_feature_detected!` said yes ([`available`] and [`selected`]).

use std::sync::OnceLock;

use crate::{Error, Result};

/// The kernel families, lowest first (the order `LMRS_CPU` may only go down in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kernel {
    Portable,
    Avx2Fma,
    Avx512Bf16,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Avx2Fma, Kernel::Avx512Bf16];

    /// The name `LMRS_CPU` and `lmrs._lmrs.decode_kernel()` use.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2Fma => "avx2",
            Kernel::Avx512Bf16 => "avx512bf16",
        }
    }

    pub fn from_name(name: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Proof that the CPU has AVX2 and FMA: only this module creates one, after detection.
#[derive(Clone, Copy, Debug)]
pub struct Avx2Fma {
    _detected: (),
}

/// Proof that the CPU has AVX-512 F, BW, VL and BF16 (and therefore AVX2 and FMA).
#[derive(Clone, Copy, Debug)]
pub struct Avx512Bf16 {
    _detected: (),
}

impl Avx512Bf16 {
    /// Every CPU with AVX-512 F has AVX2 and FMA (checked at detection, not assumed).
    pub fn avx2(self) -> Avx2Fma {
        Avx2Fma { _detected: () }
    }
}

/// A kernel family with the proof that this CPU runs it.
#[derive(Clone, Copy, Debug)]
pub enum Isa {
    Portable,
    Avx2Fma(Avx2Fma),
    Avx512Bf16(Avx512Bf16),
}

impl Isa {
    pub fn kernel(self) -> Kernel {
        match self {
            Isa::Portable => Kernel::Portable,
            Isa::Avx2Fma(_) => Kernel::Avx2Fma,
            Isa::Avx512Bf16(_) => Kernel::Avx512Bf16,
        }
    }

    pub fn name(self) -> &'static str {
        self.kernel().name()
    }

    /// `kernel` with its proof, if this CPU has it (whatever `LMRS_CPU` says): tests use
    /// this to run every kernel the machine can.
    pub fn get(kernel: Kernel) -> Option<Isa> {
        let best = hardware();
        match kernel {
            Kernel::Portable => Some(Isa::Portable),
            Kernel::Avx2Fma => match best {
                Isa::Avx512Bf16(token) => Some(Isa::Avx2Fma(token.avx2())),
                Isa::Avx2Fma(token) => Some(Isa::Avx2Fma(token)),
                Isa::Portable => None,
            },
            Kernel::Avx512Bf16 => match best {
                Isa::Avx512Bf16(token) => Some(Isa::Avx512Bf16(token)),
                _ => None,
            },
        }
    }
}

/// Every kernel this CPU can run, lowest first.
pub fn available() -> Vec<Isa> {
    Kernel::ALL.into_iter().filter_map(Isa::get).collect()
}

/// The best kernel the hardware has, detected once.
pub fn hardware() -> Isa {
    static HARDWARE: OnceLock<Isa> = OnceLock::new();
    *HARDWARE.get_or_init(detect)
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma");
        if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16") {
            return Isa::Avx512Bf16(Avx512Bf16 { _detected: () });
        }
        if avx2 {
            return Isa::Avx2Fma(Avx2Fma { _detected: () });
        }
    }
    Isa::Portable
}

/// The instruction sets the kernels use and whether this CPU has them (as detected,
/// whatever `LMRS_CPU` says); empty off x86-64.
pub fn features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        vec![
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512bf16", has!("avx512bf16")),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The kernel this process runs: [`hardware`], or the lower one `LMRS_CPU` names.
pub fn selected() -> Result<Isa> {
    static SELECTED: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
    SELECTED
        .get_or_init(|| choose(std::env::var("LMRS_CPU").ok().as_deref(), hardware()))
        .clone()
        .map_err(Error::Invalid)
}

/// The kernel for a value of `LMRS_CPU` on a CPU whose best kernel is `best`.
fn choose(wanted: Option<&str>, best: Isa) -> std::result::Result<Isa, String> {
    let wanted = match wanted.map(str::trim) {
        None | Some("") | Some("auto") => return Ok(best),
        Some(name) => name,
    };
    let names = || {
        let all: Vec<&str> = Kernel::ALL.iter().rev().map(|k| k.name()).collect();
        all.join(", ")
    };
    let Some(kernel) = Kernel::from_name(&wanted.to_ascii_lowercase()) else {
        return Err(format!(
            "LMRS_CPU={wanted:?} is not a CPU kernel: use one of auto, {}",
            names()
        ));
    };
    if kernel > best.kernel() {
        return Err(format!(
            "LMRS_CPU={wanted} asks for a kernel this CPU lacks (its best is {}); LMRS_CPU \
             can only choose a lower one",
            best.name()
        ));
    }
    // lower or equal: the hardware proof covers it
    Ok(lower(best, kernel))
}

fn lower(best: Isa, kernel: Kernel) -> Isa {
    match (best, kernel) {
        (Isa::Avx512Bf16(token), Kernel::Avx512Bf16) => Isa::Avx512Bf16(token),
        (Isa::Avx512Bf16(token), Kernel::Avx2Fma) => Isa::Avx2Fma(token.avx2()),
        (Isa::Avx2Fma(token), Kernel::Avx2Fma) => Isa::Avx2Fma(token),
        _ => Isa::Portable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lmrs_cpu_only_lowers_the_choice() {
        let best = hardware();
        assert_eq!(choose(None, best).unwrap().kernel(), best.kernel());
        assert_eq!(choose(Some("auto"), best).unwrap().kernel(), best.kernel());
        assert_eq!(choose(Some(""), best).unwrap().kernel(), best.kernel());
        assert_eq!(
            choose(Some("portable"), best).unwrap().kernel(),
            Kernel::Portable
        );
        for kernel in Kernel::ALL {
            let got = choose(Some(kernel.name()), best);
            if kernel <= best.kernel() {
                assert_eq!(got.unwrap().kernel(), kernel);
                assert!(Isa::get(kernel).is_some());
            } else {
                let message = got.unwrap_err();
                assert!(message.contains("lacks"), "{message}");
                assert!(Isa::get(kernel).is_none());
            }
        }
        let message = choose(Some("sse9"), best).unwrap_err();
        assert!(
            message.contains("\"sse9\" is not a CPU kernel"),
            "{message}"
        );
        // a portable CPU can only stay portable; names are not case-sensitive
        assert!(choose(Some("avx2"), Isa::Portable).is_err());
        assert_eq!(
            choose(Some(" PORTABLE "), best).unwrap().kernel(),
            Kernel::Portable
        );
    }

    #[test]
    fn available_kernels_are_in_order_and_include_portable() {
        let kernels: Vec<Kernel> = available().iter().map(|isa| isa.kernel()).collect();
        assert_eq!(kernels[0], Kernel::Portable);
        assert!(kernels.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*kernels.last().unwrap(), hardware().kernel());
    }
}
