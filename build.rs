//! Bakes libtorch's lib folder into the binary's rpath, so `flowscore` runs without
//! LD_LIBRARY_PATH, and compiles the C++ in src/kernels/cpp: the shim over libtorch's oneDNN
//! linear operators, our own AVX-512 kernel, and the float32 precision pin. The folder comes from LIBTORCH
//! (set by .cargo/config.toml).
//!
//! It also tells the tests which kernels this machine can run, as cfgs (`cpu_avx512`,
//! `libtorch_mkl`, `libtorch_onednn`, and `cuda_gpu` for a CUDA libtorch with a GPU), so that a
//! test of a kernel the machine lacks is ignored with its reason rather than passing without
//! running; the tests check these against what the running process detects.
use std::path::{Path, PathBuf};

const CPP: [&str; 3] =
    ["src/kernels/cpp/onednn_linear.cpp", "src/kernels/cpp/tiled_linear.cpp", "src/kernels/cpp/precision.cpp"];

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    for f in CPP {
        println!("cargo:rerun-if-changed={f}");
    }
    let libtorch = PathBuf::from(std::env::var("LIBTORCH").expect("LIBTORCH is set by .cargo/config.toml"));
    let lib = libtorch.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let include = libtorch.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // The pip wheels' libtorch is built with the C++11 ABI.
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .files(CPP)
        .flag("-O3")
        // at::parallel_for is inline OpenMP in a libtorch built with it (AT_PARALLEL_OPENMP), as
        // the pip wheels are; it must run on libtorch's own OpenMP runtime, linked below.
        .flag("-fopenmp")
        .compile("flowscore_kernels");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // The OpenMP runtime libtorch ships (libgomp.so.1 in its lib folder, found first through the
    // rpath), so that our parallel regions and libtorch's share one thread pool.
    println!("cargo:rustc-link-arg=-l:libgomp.so.1");

    kernel_cfgs(&lib.join("libtorch_cpu.so"));
    // A CUDA libtorch registers its GPU backend when libtorch_cuda.so is loaded, but nothing here
    // calls into it, so an as-needed link would drop it and CUDA would never be seen.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // The GPU tests run where libtorch has CUDA and an NVIDIA device is present.
    println!("cargo::rustc-check-cfg=cfg(cuda_gpu)");
    if lib.join("libtorch_cuda.so").exists() && Path::new("/dev/nvidiactl").exists() {
        println!("cargo:rustc-cfg=cuda_gpu");
    }
}

/// The cfgs the tests read: what this (build = test) machine and its libtorch can run.
fn kernel_cfgs(torch_cpu: &Path) {
    for cfg in ["cpu_avx512", "libtorch_mkl", "libtorch_onednn"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo:rerun-if-changed={}", torch_cpu.display());
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    if native && host_has_avx512() {
        println!("cargo:rustc-cfg=cpu_avx512");
    }
    // The names libtorch exports or registers; the running process looks them up for real.
    let bytes = std::fs::read(torch_cpu).unwrap_or_default();
    let has = |name: &str| memchr::memmem::find(&bytes, name.as_bytes()).is_some();
    if has("cblas_sgemm_pack_get_size") && has("cblas_sgemm_compute") {
        println!("cargo:rustc-cfg=libtorch_mkl");
    }
    if has("mkldnn::_reorder_linear_weight") && has("mkldnn::_linear_pointwise") {
        println!("cargo:rustc-cfg=libtorch_onednn");
    }
}

#[cfg(target_arch = "x86_64")]
fn host_has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn host_has_avx512() -> bool {
    false
}
