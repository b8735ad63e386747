//! Bakes libtorch's lib folder into the binary's rpath, so `flowscore` runs without
//! LD_LIBRARY_PATH. The folder comes from LIBTORCH (set by .cargo/config.toml).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = PathBuf::from(libtorch).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
