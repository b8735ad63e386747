//! Which CPU family the inference paths were tuned on. MKL picks its GEMM kernels by vendor as
//! well as by instruction set, so the same batch size can favour different paths on an Intel and
//! an AMD processor with the same AVX-512 flags (see `flow::coupling` and `flow::packed`).
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cpu {
    /// An Intel processor with AVX-512 (measured on an Intel Xeon VM with 2 cores).
    IntelAvx512,
    /// An AMD processor with AVX-512 (measured on an AMD EPYC Zen 4 VM with 2 cores).
    AmdAvx512,
    /// Anything else: nothing was measured, so only the choices that hold everywhere apply.
    Other,
}

/// The running CPU, detected once.
pub(super) fn cpu() -> Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    *CPU.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Cpu {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return Cpu::Other;
    }
    // Leaf 0 holds the vendor string in EBX, EDX, ECX.
    let leaf = std::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    match vendor.as_slice() {
        b"GenuineIntel" => Cpu::IntelAvx512,
        b"AuthenticAMD" => Cpu::AmdAvx512,
        _ => Cpu::Other,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Cpu {
    Cpu::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detection agrees with what the kernel reports for this machine.
    #[test]
    fn detects_the_vendor_the_kernel_reports() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let avx512 = cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "avx512f"));
        let expected = if !avx512 || !cfg!(target_arch = "x86_64") {
            Cpu::Other
        } else if cpuinfo.contains("GenuineIntel") {
            Cpu::IntelAvx512
        } else if cpuinfo.contains("AuthenticAMD") {
            Cpu::AmdAvx512
        } else {
            Cpu::Other
        };
        assert_eq!(cpu(), expected);
    }
}
