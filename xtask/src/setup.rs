//! Bootstrapping: what the build and the lab need, installed on demand.
//!
//! The eBPF half needs nightly with rust-src and bpf-linker. This machine
//! kind has no LLVM 21+ and no prebuilt bpf-linker download, so bpf-linker
//! is built against the nightly toolchain's own libLLVM and cached under
//! target/tools.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{is_root, root, status};

pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything: build tools and the lab's Debian tools.
pub fn setup() -> anyhow::Result<()> {
    ensure_build_tools()?;
    ensure_lab_tools()?;
    println!("setup complete: nightly rust-src, bpf-linker {BPF_LINKER_VERSION}, lab tools");
    Ok(())
}

/// Directory holding our bpf-linker build.
pub fn tools_dir() -> PathBuf {
    root().join("target/tools")
}

pub fn ensure_build_tools() -> anyhow::Result<()> {
    // etcd-client's build compiles etcd's protobuf definitions.
    ensure_tools(BUILD_TOOLS)?;
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let output = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly` (is rustup installed?)")?;
    if !output.status.success() {
        bail!(
            "the nightly toolchain is missing (needed to build the eBPF programs): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

fn ensure_rust_src(sysroot: &Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    println!("installing rust-src for the nightly toolchain (build-std for bpfel-unknown-none needs it)");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("installing rust-src for nightly")
}

fn ensure_bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let linker = tools_dir().join("bin/bpf-linker");
    // It links the nightly's libLLVM dynamically; under `cargo +nightly`
    // rustup puts the sysroot's lib on the library path, so do the same here.
    if let Ok(output) = Command::new(&linker).env("LD_LIBRARY_PATH", sysroot.join("lib")).arg("--version").output() {
        if output.status.success() && String::from_utf8_lossy(&output.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    let llvm_major = nightly_llvm_major()?;
    let library = find_libllvm(&sysroot.join("lib")).with_context(|| {
        format!("the nightly toolchain has no libLLVM shared library in {}/lib to build bpf-linker against", sysroot.display())
    })?;
    // bpf-linker's build looks for $LLVM_PREFIX/lib/libLLVM.so.
    let prefix = tools_dir().join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&library, &link).with_context(|| format!("linking {}", link.display()))?;
    println!("building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} ({}); about a minute, once", library.display());
    status(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(tools_dir()),
    )
    .context("building bpf-linker")
}

fn nightly_llvm_major() -> anyhow::Result<u32> {
    let output = Command::new("rustc").args(["+nightly", "-vV"]).output().context("running rustc +nightly -vV")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next()?.parse().ok())
        .with_context(|| format!("no LLVM version in `rustc +nightly -vV`:\n{text}"))
}

/// The toolchain's libLLVM shared object. The sysroot also holds a
/// `libLLVM-N-rust-*.so` that is a linker script (`INPUT(...)`) naming the
/// real library by a relative path, which does not resolve through our
/// symlink, so only a real ELF file is taken.
fn find_libllvm(dir: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("libLLVM") && name.contains(".so") && is_elf(path)
        })
        .collect();
    candidates.sort();
    candidates.into_iter().next()
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}

/// What building overlay-user needs (a command, or a file), and the Debian package of each.
const BUILD_TOOLS: &[(&str, &str)] =
    &[("protoc", "protobuf-compiler"), ("/usr/include/google/protobuf/descriptor.proto", "libprotobuf-dev")];

/// Commands the lab runs, and the Debian package of each.
const LAB_TOOLS: &[(&str, &str)] =
    &[("ip", "iproute2"), ("bridge", "iproute2"), ("ethtool", "ethtool"), ("ping", "iputils-ping"), ("tshark", "tshark"), ("nft", "nftables"),
      ("etcd", "etcd-server"), ("etcdctl", "etcd-client"), ("openssl", "openssl"), ("setpriv", "util-linux"),
      // The Docker plugin's tests: Debian's dockerd and its own client (by path:
      // another client may shadow it on PATH), busybox-static for the image.
      ("/usr/sbin/dockerd", "docker.io"), ("/usr/bin/docker", "docker.io"), ("/bin/busybox", "busybox-static"), ("nsenter", "util-linux")];

/// Commands the benchmark runs besides the lab's.
const BENCH_TOOLS: &[(&str, &str)] = &[("iperf3", "iperf3")];

pub fn ensure_lab_tools() -> anyhow::Result<()> {
    ensure_tools(LAB_TOOLS)
}

/// The lab's tools and the benchmark's.
pub fn ensure_bench_tools() -> anyhow::Result<()> {
    ensure_tools(&[LAB_TOOLS, BENCH_TOOLS].concat())
}

/// Installs the Debian packages of whichever `(command, package)` is missing.
fn ensure_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = tools.iter().filter(|(tool, _)| !on_path(tool)).map(|(_, package)| *package).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; install them as root (apt-get install {})", missing.join(" "));
    }
    println!("installing Debian packages: {}", missing.join(" "));
    status(Command::new("apt-get").arg("update").arg("-qq"))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn on_path(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}
