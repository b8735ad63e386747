//! Bakes libtorch's lib folder into the binary's rpath, so `flowscore` runs without
//! LD_LIBRARY_PATH, and compiles the C++ shim over libtorch's oneDNN linear operators
//! (src/flow/cpp/onednn_linear.cpp; see src/flow/onednn.rs). The folder comes from LIBTORCH (set
//! by .cargo/config.toml).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=src/flow/cpp/onednn_linear.cpp");
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
        .compile("flowscore_onednn");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
