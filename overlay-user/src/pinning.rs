//! Where a node's datapath lives on bpffs, so that it outlives the agent.
//!
//! `<bpffs dir>/<node>/maps/<MAP>` holds the maps (tables and counters),
//! `<bpffs dir>/<node>/links/<link>` the attachments: `xdp-native-<if>` or
//! `xdp-generic-<if>`, `tc-underlay-<if>`, `tc-port-<if>`; where the kernel
//! has no TCX links, `<bpffs dir>/<node>/filters/<link>` records the TC
//! filters that stand in for them (see [`crate::tc_legacy`]). While these pins
//! exist the kernel keeps the programs attached and forwarding, with or
//! without an agent; a new agent adopts them (replacing the programs inside
//! the links atomically) and changes the maps as diffs.
use std::{
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Default parent directory of every node's pins.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/overlay";

/// One node's pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// The pin directory of `node` under `parent` (nothing is created).
    pub fn new(parent: &Path, node: &str) -> PinDir {
        PinDir { root: parent.join(node) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.links_dir().join(name)
    }

    /// Records of TC filters attached over netlink (kernels without TCX).
    pub fn filters_dir(&self) -> PathBuf {
        self.root.join("filters")
    }

    pub fn filter(&self, name: &str) -> PathBuf {
        self.filters_dir().join(name)
    }

    /// Whether a datapath is pinned here (from an earlier or crashed agent).
    pub fn exists(&self) -> bool {
        self.links_dir().is_dir()
    }

    /// Makes sure bpffs is mounted where the directory lives and creates it
    /// (mode 0700: the pins control the node's traffic).
    pub fn create(&self) -> io::Result<()> {
        ensure_bpffs(&self.root)?;
        for dir in [self.root.clone(), self.root.join("maps"), self.links_dir()] {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// Names of the links pinned here (and of the TC filters recorded).
    pub fn pinned_links(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.links_dir())
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.extend(crate::tc_legacy::recorded(self));
        names.sort();
        names
    }

    /// Removes every pin and the directory. Links whose last reference was
    /// the pin are destroyed, which detaches their programs; maps are freed
    /// once no program uses them.
    pub fn remove(&self) -> io::Result<()> {
        // Filters are not links: removing their records does not detach them.
        crate::tc_legacy::detach_all_recorded(self);
        for dir in [self.links_dir(), self.root.join("maps")] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    std::fs::remove_file(entry.path())?;
                }
            }
            if dir.exists() {
                std::fs::remove_dir(&dir)?;
            }
        }
        if self.root.exists() {
            std::fs::remove_dir(&self.root)?;
        }
        Ok(())
    }
}

/// Link names, one per attachment.
pub fn xdp_link_name(native: bool, interface: &str) -> String {
    format!("xdp-{}-{interface}", if native { "native" } else { "generic" })
}

pub fn underlay_tc_link_name(interface: &str) -> String {
    format!("tc-underlay-{interface}")
}

pub fn decap_tc_link_name(interface: &str) -> String {
    format!("tc-decap-{interface}")
}

pub fn port_link_name(interface: &str) -> String {
    format!("tc-port-{interface}")
}

/// Every name a TC attachment on `interface` can have.
pub fn tc_link_names(interface: &str) -> [String; 3] {
    [underlay_tc_link_name(interface), decap_tc_link_name(interface), port_link_name(interface)]
}

/// The interface of a TC link name (`tc-port-veth1` -> `veth1`).
pub fn tc_link_interface(name: &str) -> Option<&str> {
    ["tc-underlay-", "tc-decap-", "tc-port-"].iter().find_map(|prefix| name.strip_prefix(prefix))
}

/// Makes sure `path` will be on bpffs: its nearest existing ancestor must
/// be on bpffs already, or be the standard mount point /sys/fs/bpf (or
/// below it), which is then mounted. Anywhere else the operator must mount
/// one: pins on another file system are impossible.
fn ensure_bpffs(path: &Path) -> io::Result<()> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    let standard = Path::new("/sys/fs/bpf");
    if !path.starts_with(standard) {
        return Err(io::Error::other(format!(
            "{} is not on bpffs: choose a directory under /sys/fs/bpf, or mount one (mount -t bpf bpf DIR)",
            existing.display()
        )));
    }
    std::fs::create_dir_all(standard)?;
    if is_bpffs(standard) {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), standard, Some("bpf"), nix::mount::MsFlags::empty(), Some("mode=0700"))?;
    log::info!("mounted bpffs on {}", standard.display());
    Ok(())
}

/// Whether `path` is on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|stat| stat.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}
