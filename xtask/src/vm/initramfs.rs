//! The guest's initramfs: busybox-static, the host's `ip` with its
//! libraries, and the modules that mount the 9p shares (with `depmod -b`).
//! Its `/init` mounts the host's root read-only, chroots into it and runs
//! the guest script from the results share; everything else the tests
//! need (tools, modules, the test binaries) comes from the host's root.
//!
//! The archive is written here in the kernel's `newc` cpio format,
//! uncompressed, so neither `cpio` nor a compressor is needed.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use super::{Kernel, SHARE_CHECKOUT, SHARE_HOST_ROOT, SHARE_RESULTS};

/// Modules `/init` loads before it can mount the shares.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Where the guest mounts the host's root before chrooting into it.
const HOST_ROOT_MOUNT: &str = "/host";

/// Where the results share appears inside the chroot.
pub const RESULTS_IN_GUEST: &str = "/tmp/vm-results";

/// The guest script's name in the results share.
pub const GUEST_SCRIPT: &str = "guest.sh";

/// Builds the initramfs for `kernel` at `path`; `checkout` is mounted at
/// the same path inside the guest.
pub fn build(kernel: &Kernel, checkout: &Path, staging: &Path, path: &Path) -> anyhow::Result<()> {
    let mut archive = Cpio::default();
    for dir in ["bin", "sbin", "dev", "proc", "sys", "tmp", "host", "lib", "lib64", "etc"] {
        archive.directory(dir);
    }
    // The kernel opens /dev/console for /init's stdio before devtmpfs exists.
    archive.char_device("dev/console", 5, 1);
    archive.file("bin/busybox", &read(Path::new("/bin/busybox"))?, 0o755);
    archive.file("init", init_script(checkout).as_bytes(), 0o755);
    // The kernel runs this to load modules it asks for (a new link type,
    // a qdisc): the host's modprobe inside the chroot, which finds the
    // host's /lib/modules/<version> (the same kernel package).
    archive.file("sbin/modprobe-host", format!("#!/bin/busybox sh\nexec /bin/busybox chroot {HOST_ROOT_MOUNT} /sbin/modprobe \"$@\"\n").as_bytes(), 0o755);
    add_with_libraries(&mut archive, &which("ip")?)?;
    add_modules(&mut archive, kernel, staging)?;
    std::fs::write(path, archive.finish()).with_context(|| format!("writing {}", path.display()))
}

/// `/init`: mounts, the chroot into the host's root, then power off.
fn init_script(checkout: &Path) -> String {
    let host = HOST_ROOT_MOUNT;
    let checkout = checkout.display();
    let options = "trans=virtio,version=9p2000.L,msize=262144";
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in {modules}; do modprobe $module || echo "vm: modprobe $module failed"; done
ip link set lo up
mount -t 9p -o {options},ro {SHARE_HOST_ROOT} {host} || {{ echo "vm: cannot mount the host's root"; poweroff -f; }}
mount -t proc proc {host}/proc
mount -t sysfs sys {host}/sys
mount -t devtmpfs dev {host}/dev
mount -t bpf bpf {host}/sys/fs/bpf
# dockerd and podman run containers in cgroups (v2, as on Debian 12).
mount -t cgroup2 cgroup2 {host}/sys/fs/cgroup || echo "vm: cannot mount cgroup2"
mount -t tmpfs tmp {host}/tmp
mount -t tmpfs run {host}/run
mkdir -p {host}/dev/shm {host}/dev/pts {host}{RESULTS_IN_GUEST} {host}{checkout}
mount -t tmpfs shm {host}/dev/shm
mount -t devpts devpts {host}/dev/pts
# podman writes CNI results under /var/lib/cni, on the read-only root.
[ -d {host}/var/lib/cni ] && mount -t tmpfs cni {host}/var/lib/cni
mount -t 9p -o {options} {SHARE_RESULTS} {host}{RESULTS_IN_GUEST}
mount -t 9p -o {options},ro {SHARE_CHECKOUT} {host}{checkout}
echo /sbin/modprobe-host > /proc/sys/kernel/modprobe
chroot {host} /bin/sh {RESULTS_IN_GUEST}/{GUEST_SCRIPT}
sync
poweroff -f
"#,
        modules = BOOT_MODULES.join(" "),
    )
}

/// The boot modules and their dependencies from the host's
/// /lib/modules/<version>, indexed for busybox's modprobe by `depmod -b`.
fn add_modules(archive: &mut Cpio, kernel: &Kernel, staging: &Path) -> anyhow::Result<()> {
    let source = &kernel.modules;
    let dep_text = std::fs::read_to_string(source.join("modules.dep")).with_context(|| format!("reading {}/modules.dep", source.display()))?;
    let deps: Vec<(&str, Vec<&str>)> = dep_text
        .lines()
        .filter_map(|line| {
            let (module, rest) = line.split_once(':')?;
            Some((module, rest.split_whitespace().collect()))
        })
        .collect();
    let by_name = |name: &str| {
        deps.iter().find(|(path, _)| Path::new(path).file_stem().is_some_and(|stem| stem.to_string_lossy().replace('-', "_") == name))
    };
    let mut wanted = BTreeSet::new();
    for name in BOOT_MODULES {
        let (path, needs) = by_name(name).with_context(|| format!("module {name} is not in {}/modules.dep", source.display()))?;
        wanted.insert(*path);
        wanted.extend(needs.iter().copied());
    }
    // depmod -b wants a tree: stage the modules, index them, add the lot.
    let tree = staging.join("lib/modules").join(&kernel.version);
    for relative in &wanted {
        let target = tree.join(relative);
        std::fs::create_dir_all(target.parent().unwrap())?;
        std::fs::copy(source.join(relative), &target).with_context(|| format!("copying module {relative}"))?;
    }
    for index in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        if source.join(index).exists() {
            std::fs::copy(source.join(index), tree.join(index))?;
        }
    }
    crate::status(Command::new("depmod").arg("-b").arg(staging).arg(&kernel.version)).context("indexing the initramfs modules")?;
    add_tree(archive, staging, &staging.join("lib"))
}

/// Adds every directory and file under `dir` (a path below `base`).
fn add_tree(archive: &mut Cpio, base: &Path, dir: &Path) -> anyhow::Result<()> {
    let name = dir.strip_prefix(base)?.to_string_lossy().into_owned();
    archive.directory(&name);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            add_tree(archive, base, &path)?;
        } else {
            archive.file(&path.strip_prefix(base)?.to_string_lossy(), &read(&path)?, 0o644);
        }
    }
    Ok(())
}

/// A dynamically linked binary with the libraries `ldd` names, each at
/// its own path (symlinks resolved to their content).
fn add_with_libraries(archive: &mut Cpio, binary: &Path) -> anyhow::Result<()> {
    let output = Command::new("ldd").arg(binary).output().context("running ldd")?;
    if !output.status.success() {
        bail!("ldd {} failed: {}", binary.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    let libraries: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    for file in std::iter::once(binary.to_path_buf()).chain(libraries) {
        let name = file.to_string_lossy().trim_start_matches('/').to_owned();
        // Debian merges /bin, /sbin, /lib64 into /usr: keep the paths as
        // ldd printed them, creating their directories.
        let mut parent = Path::new(&name).parent();
        let mut parents = Vec::new();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            parents.push(dir.to_string_lossy().into_owned());
            parent = dir.parent();
        }
        for dir in parents.iter().rev() {
            archive.directory(dir);
        }
        archive.file(&name, &read(&file)?, 0o755);
    }
    Ok(())
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(tool)).find(|path| path.is_file()))
        .with_context(|| format!("`{tool}` is not on PATH"))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A `newc` cpio archive (the format the kernel unpacks as initramfs).
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    inode: u32,
    directories: BTreeSet<String>,
}

impl Cpio {
    fn directory(&mut self, name: &str) {
        if self.directories.insert(name.to_owned()) {
            self.entry(name, 0o040_755, (0, 0), &[]);
        }
    }

    fn file(&mut self, name: &str, content: &[u8], permissions: u32) {
        self.entry(name, 0o100_000 | permissions, (0, 0), content);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, (rdev_major, rdev_minor): (u32, u32), content: &[u8]) {
        self.inode += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [self.inode, mode, 0, 0, nlink, 0, content.len() as u32, 0, 0, rdev_major, rdev_minor, name.len() as u32 + 1, 0];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(content);
        self.pad();
    }

    fn pad(&mut self) {
        while self.data.len() % 4 != 0 {
            self.data.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}
