//! netdevsim for the guest: the kernel's simulated NIC, which takes XDP
//! in driver and offload modes (it registers a BPF offload device), so the
//! guest can test `--xdp-mode offload`. Debian does not build it, so it is
//! built here out of tree from `linux-source-6.1` and the headers matching
//! the guest's kernel: the packages are downloaded and unpacked under
//! `target/vm/` (`apt-get download`, `dpkg-deb -x`; nothing is installed
//! on the host), and only the module is kept, cached as
//! `target/vm/netdevsim-<version>/netdevsim.ko`. The guest loads it from
//! the checkout's share (`insmod`, after `modprobe psample`, its one
//! dependency): the host's /lib/modules, which the guest's modprobe reads,
//! is neither written nor needed.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use super::Kernel;

/// The cached module for `kernel`, built if missing (about 20 s and 150 MB
/// of downloads, removed afterwards).
pub fn module(kernel: &Kernel, target: &Path) -> anyhow::Result<PathBuf> {
    let cached = target.join("vm").join(format!("netdevsim-{}", kernel.version)).join("netdevsim.ko");
    if cached.exists() {
        return Ok(cached);
    }
    let work = target.join("vm").join(format!("netdevsim-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let built = build(kernel, &work);
    let result = built.and_then(|module| {
        std::fs::create_dir_all(cached.parent().unwrap())?;
        std::fs::copy(&module, &cached).with_context(|| format!("copying {} to {}", module.display(), cached.display()))?;
        Ok(cached)
    });
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn build(kernel: &Kernel, work: &Path) -> anyhow::Result<PathBuf> {
    // 6.1.0-57-amd64: package version from dpkg, series 6.1, flavour-less 6.1.0-57.
    let output = Command::new("dpkg-query").args(["-W", "-f=${Version}", &format!("linux-image-{}", kernel.version)]).output()?;
    let package_version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if package_version.is_empty() {
        bail!("linux-image-{} is not installed (dpkg-query found no version)", kernel.version);
    }
    let series: String = kernel.version.split('.').take(2).collect::<Vec<_>>().join(".");
    let common = kernel.version.rsplit_once('-').map_or(kernel.version.as_str(), |(base, _)| base);
    let packages = [
        format!("linux-source-{series}={package_version}"),
        format!("linux-headers-{}={package_version}", kernel.version),
        format!("linux-headers-{common}-common={package_version}"),
        format!("linux-kbuild-{series}={package_version}"),
    ];
    println!("building netdevsim for Linux {} out of tree (linux-source-{series} and headers {package_version}, unpacked under {})", kernel.version, work.display());
    let download = || Command::new("apt-get").current_dir(work).args(["download", "-qq"]).args(&packages).status();
    if !download().is_ok_and(|status| status.success()) {
        crate::status(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=900", "-qq", "update"]))?;
        if !download()?.success() {
            bail!("apt-get download {} failed", packages.join(" "));
        }
    }
    let root = work.join("root");
    for entry in std::fs::read_dir(work)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            crate::status(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&root))?;
        }
    }
    let source = root.join(format!("usr/src/linux-source-{series}.tar.xz"));
    let member = format!("linux-source-{series}/drivers/net/netdevsim");
    crate::status(Command::new("tar").current_dir(work).arg("-xJf").arg(&source).arg(&member))?;
    // The headers' Makefile includes the common headers by their installed
    // path: point it at the unpacked ones.
    let headers = root.join(format!("usr/src/linux-headers-{}", kernel.version));
    let makefile = headers.join("Makefile");
    let text = std::fs::read_to_string(&makefile)?;
    std::fs::write(&makefile, text.replace("include /usr/src/", &format!("include {}/usr/src/", root.display())))?;
    let directory = work.join(&member);
    crate::status(
        Command::new("nice")
            .args(["-n", "19", "make", "-s", "-C"])
            .arg(&headers)
            .arg(format!("M={}", directory.display()))
            .args(["CONFIG_NETDEVSIM=m", "modules"]),
    )
    .context("building netdevsim")?;
    Ok(directory.join("netdevsim.ko"))
}
