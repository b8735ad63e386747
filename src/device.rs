//! Where models run: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when libtorch sees a GPU).
use tch::Device;

extern "C" {
    fn flowscore_pin_float32();
    fn flowscore_tf32_allowed() -> bool;
    #[cfg(test)]
    fn flowscore_allow_tf32_for_test();
}

/// Keeps float32 math in float32 on every backend (no TF32 in cuBLAS or cuDNN), whatever
/// libtorch's defaults or environment say; called before any model runs.
pub fn pin_float32() {
    // SAFETY: plain setters on libtorch's global context, no arguments.
    unsafe { flowscore_pin_float32() }
}

/// Whether libtorch would let a float32 matmul or convolution use TF32.
pub fn tf32_allowed() -> bool {
    // SAFETY: plain getters on libtorch's global context.
    unsafe { flowscore_tf32_allowed() }
}

/// Parses a `--device` value; `cuda` without a GPU that libtorch can use is an error, not a
/// silent fall-back to the CPU.
pub fn parse(s: &str) -> Result<Device, String> {
    let cuda = |n: usize| {
        let count = tch::Cuda::device_count().max(0) as usize;
        if n < count {
            Ok(Device::Cuda(n))
        } else if count == 0 {
            Err(format!("--device {s}: libtorch sees no CUDA GPU (a CPU-only libtorch, or no driver)"))
        } else {
            Err(format!("--device {s}: libtorch sees {count} CUDA GPU(s), numbered from 0"))
        }
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(format!("--device {s}: expected cpu, cuda, cuda:N or auto")),
        },
    }
}

/// `cpu` or `cuda:N`, as cards, logs and `GET /model` show it.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_refuses_what_is_not_there() {
        assert_eq!(parse("cpu"), Ok(Device::Cpu));
        assert_eq!(parse("auto"), Ok(Device::cuda_if_available()));
        assert!(parse("tpu").unwrap_err().contains("expected cpu, cuda, cuda:N or auto"));
        assert!(parse("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            assert!(parse("cuda").unwrap_err().contains("no CUDA GPU"));
        }
        assert!(parse("cuda:99").is_err());
        assert_eq!(name(Device::Cpu), "cpu");
        assert_eq!(name(Device::Cuda(1)), "cuda:1");
    }

    #[test]
    fn float32_is_pinned_even_after_tf32_was_allowed() {
        // SAFETY: as pin_float32; the global setting is what this test is about.
        unsafe { flowscore_allow_tf32_for_test() };
        assert!(tf32_allowed());
        pin_float32();
        assert!(!tf32_allowed());
    }
}
