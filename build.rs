//! Bakes libtorch's lib folder into the binary's rpath, so `flowscore` runs without
//! LD_LIBRARY_PATH, and compiles the C++ next to the flow: the shim over libtorch's oneDNN linear
//! operators (src/flow/cpp/onednn_linear.cpp; see src/flow/onednn.rs) and our own AVX-512 linear
//! kernel (src/flow/cpp/tiled_linear.cpp; see src/flow/tiled.rs). The folder comes from LIBTORCH (set
//! by .cargo/config.toml).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=src/flow/cpp/onednn_linear.cpp");
    println!("cargo:rerun-if-changed=src/flow/cpp/tiled_linear.cpp");
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
        .file("src/flow/cpp/onednn_linear.cpp")
        .file("src/flow/cpp/tiled_linear.cpp")
        .flag("-O3")
        // at::parallel_for is inline OpenMP in a libtorch built with it (AT_PARALLEL_OPENMP), as
        // the pip wheels are; it must run on libtorch's own OpenMP runtime, linked below.
        .flag("-fopenmp")
        .compile("flowscore_onednn");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // The OpenMP runtime libtorch ships (libgomp.so.1 in its lib folder, found first through the
    // rpath), so that our parallel regions and libtorch's share one thread pool.
    println!("cargo:rustc-link-arg=-l:libgomp.so.1");
}
