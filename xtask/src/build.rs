//! Building the eBPF object (nightly, bpfel-unknown-none) and the agent.
use std::{path::PathBuf, process::Command};

use anyhow::Context;

use crate::{root, setup, status};

/// Where the eBPF object is built.
pub fn ebpf_object() -> PathBuf {
    root().join("target/ebpf/bpfel-unknown-none/release/overlay-ebpf")
}

/// Builds everything (bootstrapping the toolchain if needed); returns the
/// path of the `overlay` binary.
pub fn build() -> anyhow::Result<PathBuf> {
    setup::ensure_build_tools()?;
    let root = root();
    let path = std::env::join_paths(
        std::iter::once(setup::tools_dir().join("bin")).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )?;
    let mut ebpf = Command::new("cargo");
    // The nightly build must not inherit the outer (stable) cargo's settings.
    for variable in ["RUSTC", "RUSTC_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        ebpf.env_remove(variable);
    }
    // overlay-ebpf/.cargo/config.toml sets the target, build-std and --btf.
    status(
        ebpf.current_dir(root.join("overlay-ebpf"))
            .env("PATH", path)
            .args(["+nightly", "build", "--release", "--target-dir"])
            .arg(root.join("target/ebpf")),
    )
    .context("building the eBPF programs")?;
    status(
        Command::new("cargo")
            .current_dir(&root)
            .env("OVERLAY_EBPF_OBJECT", ebpf_object())
            .args(["build", "--release", "--package", "overlay-user"]),
    )
    .context("building the overlay agent")?;
    Ok(root.join("target/release/overlay"))
}
