//! Points the build at the eBPF object, which `cargo xtask build` compiles
//! with the nightly toolchain for bpfel-unknown-none.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=OVERLAY_EBPF_OBJECT");
    let object = match std::env::var_os("OVERLAY_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/ebpf/bpfel-unknown-none/release/overlay-ebpf")
        }
    };
    if !object.exists() {
        panic!(
            "the eBPF object {} does not exist: build with `cargo xtask build` (it bootstraps the nightly toolchain and bpf-linker), or set OVERLAY_EBPF_OBJECT",
            object.display()
        );
    }
    let object = object.canonicalize().unwrap();
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=OVERLAY_EBPF_OBJECT={}", object.display());
}
