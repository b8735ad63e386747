//! What the kernel policy needs to know about this machine: the CPU's vendor and AVX-512, and
//! which optional kernels the loaded libtorch carries. MKL picks its GEMM kernels by vendor as
//! well as by instruction set, so the same batch can favour different kernels on an Intel and an
//! AMD processor with the same AVX-512 flags (docs/kernels.md).
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// The facts `plan` decides on, detected once per process (`Cpu::detect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pub vendor: Vendor,
    /// AVX-512F: our tiled kernel needs it.
    pub avx512: bool,
    /// libtorch exports MKL's packed-GEMM API (x86 builds link MKL statically).
    pub mkl: bool,
    /// libtorch registers the oneDNN linear operators.
    pub onednn: bool,
}

impl Cpu {
    pub fn detect() -> Cpu {
        static CPU: OnceLock<Cpu> = OnceLock::new();
        *CPU.get_or_init(|| {
            let (vendor, avx512) = vendor_and_avx512();
            Cpu { vendor, avx512, mkl: super::mkl::loaded(), onednn: super::onednn::loaded() }
        })
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vendor = match self.vendor {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
            Vendor::Other => "other",
        };
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        write!(f, "{vendor}, avx512 {}, mkl {}, onednn {}", yes_no(self.avx512), yes_no(self.mkl), yes_no(self.onednn))
    }
}

#[cfg(target_arch = "x86_64")]
fn vendor_and_avx512() -> (Vendor, bool) {
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    // Leaf 0 holds the vendor string in EBX, EDX, ECX.
    let leaf = std::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    let vendor = match vendor.as_slice() {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" => Vendor::Amd,
        _ => Vendor::Other,
    };
    (vendor, avx512)
}

#[cfg(not(target_arch = "x86_64"))]
fn vendor_and_avx512() -> (Vendor, bool) {
    (Vendor::Other, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detection agrees with what the operating system reports for this machine.
    #[test]
    fn detects_what_proc_cpuinfo_reports() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let avx512 = cfg!(target_arch = "x86_64")
            && cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "avx512f"));
        let vendor = if !cfg!(target_arch = "x86_64") {
            Vendor::Other
        } else if cpuinfo.contains("GenuineIntel") {
            Vendor::Intel
        } else if cpuinfo.contains("AuthenticAMD") {
            Vendor::Amd
        } else {
            Vendor::Other
        };
        let cpu = Cpu::detect();
        assert_eq!((cpu.vendor, cpu.avx512), (vendor, avx512));
        // What build.rs found in libtorch's library file, read here from the loaded library.
        assert_eq!(cpu.mkl, cfg!(libtorch_mkl), "MKL in the loaded libtorch vs its library file");
        assert_eq!(cpu.onednn, cfg!(libtorch_onednn), "oneDNN in the loaded libtorch vs its library file");
    }
}
