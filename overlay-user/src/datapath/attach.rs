//! Attaching the programs to the underlay device and the ports, from an
//! [`AttachPlan`]: adopting attachments pinned by an earlier agent,
//! detaching those the plan no longer has, and refusing a device that
//! another node's datapath already uses.
use std::{fmt, str::FromStr};

use aya::{
    maps::{Array, MapData},
    programs::{
        SchedClassifier, TcAttachType, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use overlay_common::{NodeConfig, UnderlayMac, maps, programs};

use super::{Attachment, Datapath, DatapathError, HeldLink, map_error, open_map, open_map_mut};
use crate::tc_legacy::TcAttachKind;
use crate::pinning;

/// An interface by name and index (in the agent's network namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
}

/// What to attach where: decapsulation and flooding on the underlay
/// device, the endpoint program on every port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachPlan {
    pub underlay: Interface,
    /// Container ports (a port named twice is attached once).
    pub ports: Vec<Interface>,
    pub mode: AttachMode,
}

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic mode where the driver has no XDP support.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode, which works on every device but is slower.
    Generic,
    /// Hardware offload, on NICs that run XDP themselves.
    Offload,
}

/// The mode the XDP program ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachedMode {
    Native,
    Generic,
    Offload,
}

impl fmt::Display for XdpAttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttachedMode::Native => "native",
            XdpAttachedMode::Generic => "generic",
            XdpAttachedMode::Offload => "offload",
        })
    }
}

/// Which hook decapsulates VXLAN on the underlay device (`--decap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecapMode {
    /// TC on a veth underlay, XDP in native mode on a device whose driver
    /// has it, TC where it has not (see docs/performance.md for the
    /// measurements behind this choice). An explicit `--xdp-mode` means XDP.
    #[default]
    Auto,
    /// XDP (mode from `--xdp-mode`), with a TC program that floods the
    /// broadcast and multicast frames XDP passes up.
    Xdp,
    /// TC ingress only: keeps the skb's checksum and GSO state, and
    /// delivers into the endpoint's namespace with bpf_redirect_peer.
    Tc,
}

/// How to attach the datapath (`--decap`, `--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachMode {
    pub decap: DecapMode,
    pub xdp: XdpAttachMode,
}

impl AttachMode {
    /// Refuses combinations that cannot mean anything: an XDP mode for TC decapsulation.
    pub fn check(self) -> Result<AttachMode, DatapathError> {
        if self.decap == DecapMode::Tc && self.xdp != XdpAttachMode::Auto {
            return Err(DatapathError::Options(format!(
                "--xdp-mode {} with --decap tc: TC decapsulation attaches no XDP program (drop --xdp-mode, or use --decap xdp)",
                self.xdp,
            )));
        }
        Ok(self)
    }
}

/// What decapsulates, once attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapHook {
    Xdp(XdpAttachedMode),
    Tc,
    /// TC decapsulation, with the outer-header admission offloaded to the
    /// NIC as XDP (`--xdp-mode offload`).
    TcOffloaded,
}

impl DecapHook {
    /// "xdp" or "tc".
    pub fn hook(&self) -> &'static str {
        match self {
            DecapHook::Xdp(_) => "xdp",
            DecapHook::Tc | DecapHook::TcOffloaded => "tc",
        }
    }

    /// The XDP mode, or "none" for TC.
    pub fn xdp_mode(&self) -> String {
        match self {
            DecapHook::Xdp(mode) => mode.to_string(),
            DecapHook::Tc => "none".into(),
            DecapHook::TcOffloaded => XdpAttachedMode::Offload.to_string(),
        }
    }
}

impl fmt::Display for DecapHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecapHook::Xdp(mode) => write!(f, "XDP {mode}"),
            DecapHook::Tc => f.write_str("TC"),
            DecapHook::TcOffloaded => f.write_str("TC, with XDP admission offloaded to the NIC"),
        }
    }
}


/// An unknown mode name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}: one of {expected}")]
pub struct UnknownMode {
    pub kind: &'static str,
    pub value: String,
    pub expected: String,
}

/// Names for the command line and messages, listed once per enum.
macro_rules! named_modes {
    ($type:ident, $kind:literal, { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $type {
            /// Every mode, with its name.
            pub const NAMES: &[($type, &'static str)] = &[$(($type::$variant, $name)),*];

            pub fn name(self) -> &'static str {
                match self { $($type::$variant => $name),* }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $type {
            type Err = UnknownMode;
            fn from_str(value: &str) -> Result<Self, UnknownMode> {
                $type::NAMES.iter().find(|(_, name)| *name == value).map(|(mode, _)| *mode).ok_or_else(|| UnknownMode {
                    kind: $kind,
                    value: value.to_owned(),
                    expected: $type::NAMES.iter().map(|(_, name)| *name).collect::<Vec<_>>().join(", "),
                })
            }
        }
    };
}

/// Refuses XDP decapsulation on a veth underlay that carries unfinished
/// checksums, before anything is attached.
///
/// A veth with tx-checksumming on (its default) hands its peer skbs in
/// CHECKSUM_PARTIAL state, and GSO skbs, as they are: nothing on the way
/// computes the inner TCP/UDP checksum that a physical NIC would compute
/// before the wire. TC decapsulation keeps that state and the receiving
/// stack honours it. XDP cannot: native XDP on a veth rebuilds the
/// redirected frame as a new skb without it (`veth_xdp_rcv_one` builds it
/// from the xdp_frame, CHECKSUM_NONE), so the container's stack finds the
/// partial sum and drops the segment; generic XDP keeps the skb but cannot
/// redirect a GSO skb larger than the port's MTU (`xdp_ok_fwd_dev`). Both
/// were measured: TCP does not connect (native) or stalls (generic), every
/// UDP datagram is a checksum error. The sending side decides whether
/// checksums are finished, which this node cannot see; its own underlay's
/// setting is how the lab (and a veth deployment) configures every node
/// alike, so that is what is judged, and doctor's `offloads` check names
/// the same fix on each node.
fn refuse_xdp_on_unfinished_checksums(underlay: &str) -> Result<(), DatapathError> {
    if !crate::netdev::driver(underlay).is_ok_and(|driver| driver == "veth") {
        return Ok(());
    }
    match crate::netdev::tx_checksum_offload(underlay) {
        Ok(true) => Err(DatapathError::Options(format!(
            "XDP decapsulation on {underlay}: it is a veth with tx-checksumming on, which carries TCP and UDP with unfinished checksums \
             (CHECKSUM_PARTIAL, GSO) between nodes configured alike, and XDP loses that state (veth rebuilds a redirected frame without it): \
             containers would get every TCP segment and UDP datagram with a bad checksum. Use --decap tc (the default on a veth), \
             or turn tx-checksumming off on every node's veth underlay (ethtool -K {underlay} tx off)"
        ))),
        Ok(false) => Ok(()),
        Err(error) => {
            log::warn!("cannot read tx-checksumming of veth {underlay} ({error}): XDP decapsulation delivers bad inner checksums if peers send with it on");
            Ok(())
        }
    }
}

named_modes!(XdpAttachMode, "XDP mode", { Auto => "auto", Native => "native", Generic => "generic", Offload => "offload" });
named_modes!(DecapMode, "decapsulation mode", { Auto => "auto", Xdp => "xdp", Tc => "tc" });

impl Datapath {
    /// Attaches decapsulation and flooding to the underlay and the endpoint
    /// program to every port, adopting attachments pinned by an earlier
    /// agent (their programs are replaced atomically, so traffic never
    /// stops) and detaching pinned ones the configuration no longer has.
    /// On failure, what this call attached is detached again.
    pub fn attach(&mut self, plan: &AttachPlan) -> Result<DecapHook, DatapathError> {
        let before: std::collections::BTreeSet<String> = self.links.keys().cloned().collect();
        let result = self.attach_all(plan);
        if result.is_ok() {
            self.fresh_pins = false;
        } else {
            let added: Vec<String> = self.links.keys().filter(|name| !before.contains(*name)).cloned().collect();
            for name in added {
                self.drop_link(&name);
            }
        }
        result
    }

    fn attach_all(&mut self, plan: &AttachPlan) -> Result<DecapHook, DatapathError> {
        let underlay = plan.underlay.name.clone();
        // Read anew at every attach (start and reload), before XDP can run.
        let mac = crate::netdev::mac(&underlay)
            .inspect_err(|error| log::warn!("XDP cannot tell frames for other hosts on {underlay}: its MAC is unknown ({error})"))
            .ok();
        self.set_underlay_mac(mac)?;
        let mut wanted = Vec::new();
        let hook = if plan.mode.check()?.xdp == XdpAttachMode::Offload {
            let name = crate::offload::link_name(&underlay);
            self.attach_offloaded(&underlay, plan.underlay.ifindex, &name)?;
            wanted.push(name);
            let name = pinning::decap_tc_link_name(&underlay);
            self.attach_tc(programs::DECAP_TC, &name, &underlay)?;
            wanted.push(name);
            DecapHook::TcOffloaded
        } else { match self.decap_hook_for(&underlay, plan.underlay.ifindex, plan.mode)? {
            Some(hook) => hook,
            None => {
                let name = pinning::decap_tc_link_name(&underlay);
                self.attach_tc(programs::DECAP_TC, &name, &underlay)?;
                wanted.push(name);
                DecapHook::Tc
            }
        } };
        if let DecapHook::Xdp(attached) = hook {
            wanted.push(pinning::xdp_link_name(attached != XdpAttachedMode::Generic, &underlay));
            let name = pinning::underlay_tc_link_name(&underlay);
            self.attach_tc(programs::UNDERLAY_FLOOD_TC, &name, &underlay)?;
            wanted.push(name);
        }
        for port in &plan.ports {
            let name = pinning::port_link_name(&port.name);
            if !wanted.contains(&name) {
                self.attach_tc(programs::ENDPOINT_TC, &name, &port.name)?;
                wanted.push(name);
            }
        }
        // Attachments of an earlier configuration (a removed port, another underlay).
        let stale: Vec<String> = self.links.keys().filter(|name| !wanted.contains(name)).cloned().collect();
        for name in &stale {
            self.drop_link(name);
        }
        if let Some(pins) = &self.pins {
            for name in pins.pinned_links().into_iter().filter(|name| !wanted.contains(name)) {
                log::info!("detaching {name}, which the configuration no longer has");
                if !crate::tc_legacy::detach_recorded(pins, &name) {
                    let _ = std::fs::remove_file(pins.link(&name));
                }
            }
        }
        Ok(hook)
    }

    /// Tells XDP decapsulation the underlay device's MAC, so that it drops
    /// VXLAN sent to another host's MAC (`outer-other-host`) as TC does
    /// from the skb's pkt_type; `None` turns the check off.
    pub fn set_underlay_mac(&mut self, mac: Option<[u8; 6]>) -> Result<(), DatapathError> {
        let name = maps::UNDERLAY_MAC;
        let mut array: Array<&mut MapData, UnderlayMac> = open_map_mut(&mut self.ebpf, name)?;
        array.set(0, UnderlayMac { mac: mac.unwrap_or_default(), _pad: [0; 2] }, 0).map_err(|source| map_error(name, "write", source))
    }

    /// Attaches XDP decapsulation where `mode` asks for it (`Some`), or
    /// says TC decapsulation is wanted (`None`, attached by the caller).
    /// Switching hooks is make-before-break: the caller attaches the new
    /// hook before the old one's links are dropped as stale, and while
    /// both are attached the XDP program sees each frame first.
    fn decap_hook_for(&mut self, underlay: &str, ifindex: u32, mode: AttachMode) -> Result<Option<DecapHook>, DatapathError> {
        let mode = mode.check()?;
        match mode.decap {
            DecapMode::Tc => Ok(None),
            DecapMode::Xdp => {
                refuse_xdp_on_unfinished_checksums(underlay)?;
                self.attach_xdp(underlay, ifindex, mode.xdp).map(|m| Some(DecapHook::Xdp(m)))
            }
            DecapMode::Auto if mode.xdp != XdpAttachMode::Auto => {
                refuse_xdp_on_unfinished_checksums(underlay)?;
                self.attach_xdp(underlay, ifindex, mode.xdp).map(|m| Some(DecapHook::Xdp(m)))
            }
            DecapMode::Auto => {
                // On a veth, TC: XDP there loses the skb's checksum and GSO
                // state and measured slower (docs/performance.md).
                if crate::netdev::driver(underlay).is_ok_and(|driver| driver == "veth") {
                    log::debug!("decapsulating in TC on {underlay}: it is a veth, where TC keeps checksum offload and GSO state and measured faster than XDP");
                    return Ok(None);
                }
                match self.attach_xdp(underlay, ifindex, XdpAttachMode::Native) {
                    Ok(attached) => Ok(Some(DecapHook::Xdp(attached))),
                    // Generic XDP runs on an skb already built: TC does the same work for less.
                    Err(error) => {
                        log::info!("decapsulating in TC on {underlay}: native XDP is not available there ({error})");
                        Ok(None)
                    }
                }
            }
        }
    }

    /// An attachment pinned under `name` by an earlier agent, if any.
    fn pinned_link(&self, name: &str) -> Result<Option<FdLink>, DatapathError> {
        let Some(pins) = &self.pins else { return Ok(None) };
        let path = pins.link(name);
        if !path.exists() {
            return Ok(None);
        }
        let pinned = PinnedLink::from_pin(&path)
            .map_err(|e| DatapathError::Link { name: name.to_owned(), message: format!("opening the pinned link: {e}") })?;
        Ok(Some(pinned.into()))
    }

    fn attach_xdp(&mut self, underlay: &str, ifindex: u32, mode: XdpAttachMode) -> Result<XdpAttachedMode, DatapathError> {
        // An earlier agent's attachment in either mode is adopted as it is.
        for native in [true, false] {
            let name = pinning::xdp_link_name(native, underlay);
            if self.links.contains_key(&name) {
                return Ok(if native { XdpAttachedMode::Native } else { XdpAttachedMode::Generic });
            }
            if let Some(fd_link) = self.pinned_link(&name)? {
                let link = XdpLink::try_from(fd_link).map_err(|e| DatapathError::Link { name: name.clone(), message: e.to_string() })?;
                let xdp = self.xdp_mut()?;
                let id = xdp.attach_to_link(link).map_err(|error| DatapathError::Attach {
                    program: programs::DECAP_XDP,
                    interface: underlay.to_owned(),
                    error,
                    hint: " (replacing the program in the pinned link)",
                })?;
                let link = xdp.take_link(id).map_err(|e| DatapathError::Link { name: name.clone(), message: e.to_string() })?;
                self.hold(name, FdLink::try_from(link).ok(), true)?;
                return Ok(if native { XdpAttachedMode::Native } else { XdpAttachedMode::Generic });
            }
        }
        let xdp = self.xdp_mut()?;
        let attach_error = |error, hint| DatapathError::Attach { program: programs::DECAP_XDP, interface: underlay.to_owned(), error, hint };
        let (id, attached) = match mode {
            XdpAttachMode::Native => xdp
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .map(|id| (id, XdpAttachedMode::Native))
                .map_err(|e| attach_error(e, " (the driver may lack native XDP: try --xdp-mode generic)"))?,
            XdpAttachMode::Generic => {
                xdp.attach_to_if_index(ifindex, XdpMode::Skb).map(|id| (id, XdpAttachedMode::Generic)).map_err(|e| attach_error(e, ""))?
            }
            // Offload never attaches the decapsulation program: the plan
            // turns it into TC decapsulation plus the offloaded admission
            // program (attach_offload), before this is reached.
            XdpAttachMode::Offload => unreachable!("--xdp-mode offload attaches the admission program, not XDP decapsulation"),
            XdpAttachMode::Auto => match xdp.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => (id, XdpAttachedMode::Native),
                Err(native_error) => {
                    log::warn!("native XDP on {underlay} failed ({native_error}); falling back to generic XDP, which is slower");
                    xdp.attach_to_if_index(ifindex, XdpMode::Skb).map(|id| (id, XdpAttachedMode::Generic)).map_err(|e| attach_error(e, ""))?
                }
            },
        };
        let link = xdp.take_link(id).map_err(|e| DatapathError::Link { name: underlay.to_owned(), message: e.to_string() })?;
        let name = pinning::xdp_link_name(attached != XdpAttachedMode::Generic, underlay);
        self.hold(name, FdLink::try_from(link).ok(), false)?;
        Ok(attached)
    }

    /// Attaches the admission program offloaded to the underlay NIC, or
    /// (held already, at a reload) writes the node's settings into its map.
    fn attach_offloaded(&mut self, underlay: &str, ifindex: u32, name: &str) -> Result<(), DatapathError> {
        let node = {
            let array: Array<&MapData, NodeConfig> = open_map(&self.ebpf, maps::NODE)?;
            array.get(&0, 0).map_err(|source| map_error(maps::NODE, "read", source))?
        };
        let offload_error = |error: crate::offload::OffloadError| DatapathError::Link { name: name.to_owned(), message: error.to_string() };
        if let Some(HeldLink { link: Attachment::Offloaded(held), .. }) = self.links.get(name) {
            return held.set_node(&node, underlay).map_err(offload_error);
        }
        let pin = self.pins.as_ref().map(|pins| pins.link(name));
        let adopted = pin.as_ref().is_some_and(|path| path.exists());
        let offloaded = crate::offload::attach(underlay, ifindex, &node, super::EBPF_OBJECT, pin.as_deref()).map_err(offload_error)?;
        if let (Some(path), false) = (&pin, adopted) {
            offloaded.pin(path, underlay).map_err(offload_error)?;
        }
        self.links.insert(name.to_owned(), HeldLink { link: Attachment::Offloaded(offloaded), pin });
        Ok(())
    }

    fn attach_tc(&mut self, program: &'static str, name: &str, interface: &str) -> Result<(), DatapathError> {
        if self.links.contains_key(name) {
            return Ok(());
        }
        let attach_error = |error| DatapathError::Attach { program, interface: interface.to_owned(), error, hint: "" };
        if self.tc_attach_kind(interface) == TcAttachKind::Netlink {
            let pins = self.pins.clone();
            let filter = crate::tc_legacy::attach(self.tc_mut(program)?, name, interface, pins.as_ref()).map_err(attach_error)?;
            self.links.insert(name.to_owned(), HeldLink { link: Attachment::Filter(filter), pin: None });
            return Ok(());
        }
        let adopted = self.pinned_link(name)?;
        let was_pinned = adopted.is_some();
        if !was_pinned {
            self.check_no_other_datapath(interface)?;
        }
        let tc = self.tc_mut(program)?;
        let id = match adopted {
            Some(fd_link) => {
                let link = SchedClassifierLink::try_from(fd_link).map_err(|e| DatapathError::Link { name: name.to_owned(), message: e.to_string() })?;
                tc.attach_to_link(link).map_err(attach_error)?
            }
            None => tc.attach(interface, TcAttachType::Ingress).map_err(attach_error)?,
        };
        let link = tc.take_link(id).map_err(|e| DatapathError::Link { name: name.to_owned(), message: e.to_string() })?;
        self.hold(name.to_owned(), FdLink::try_from(link).ok(), was_pinned)
    }

    /// How TC programs attach here: probed on the first TC attachment (see
    /// [`crate::tc_legacy::probe`]), the same for the agent's life.
    fn tc_attach_kind(&mut self, interface: &str) -> TcAttachKind {
        *self.tc_attach.get_or_insert_with(|| crate::tc_legacy::probe(interface))
    }

    /// How TC programs were attached, once something was.
    pub fn tc_attachment(&self) -> Option<TcAttachKind> {
        self.tc_attach
    }

    /// Refuses a fresh TC attachment where another overlay datapath's
    /// program already is: TC (tcx) takes several programs per hook, so a
    /// second node's agent on the same device would otherwise attach beside
    /// the first and both would act on every frame (XDP, one program per
    /// device, refuses that itself). Programs of this node's own links,
    /// held or pinned here by an earlier agent, are not another datapath.
    /// Kernels without tcx (before 6.6) cannot be asked: nothing is checked.
    fn check_no_other_datapath(&self, interface: &str) -> Result<(), DatapathError> {
        let Ok((_, programs)) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress) else {
            return Ok(());
        };
        let overlay: Vec<String> = programs
            .iter()
            .filter_map(|program| program.name_as_str().filter(|name| name.starts_with("overlay_")).map(|name| format!("{name} (id {})", program.id())))
            .collect();
        // Ours on this interface: only its three possible link names are
        // looked up (held, pinned or recorded as a filter), so attaching N
        // ports stays linear; listing every link of the node at each attach
        // made a reload of 4,032 ports take over two minutes.
        let own_here = pinning::tc_link_names(interface)
            .iter()
            .filter(|name| {
                self.links.contains_key(name.as_str())
                    || self.pins.as_ref().is_some_and(|pins| pins.link(name).exists() || pins.filter(name).is_dir())
            })
            .count();
        if overlay.len() > own_here {
            return Err(DatapathError::Occupied { interface: interface.to_owned(), programs: overlay.join(", ") });
        }
        Ok(())
    }

    /// Keeps an attachment, pinning it when the datapath is pinned (an
    /// adopted one is pinned already).
    fn hold(&mut self, name: String, link: Option<FdLink>, already_pinned: bool) -> Result<(), DatapathError> {
        let Some(link) = link else {
            // Only netlink-attached links (pre-5.9 XDP) are not fd links; TC
            // without TCX (pre-6.6) goes through tc_legacy and never comes here.
            return Err(DatapathError::Link { name, message: "the kernel attached it without a BPF link, which cannot be held or pinned".into() });
        };
        let (link, pin) = match &self.pins {
            Some(pins) if !already_pinned => {
                let path = pins.link(&name);
                let pinned = link.pin(&path).map_err(|e| DatapathError::Link { name: name.clone(), message: format!("pinning: {e}") })?;
                (FdLink::from(pinned), Some(path))
            }
            Some(pins) => (link, Some(pins.link(&name))),
            None => (link, None),
        };
        self.links.insert(name, HeldLink { link: Attachment::Link(link), pin });
        Ok(())
    }

    /// Detaches one attachment: its pin goes, then the last reference.
    fn drop_link(&mut self, name: &str) {
        if let Some(held) = self.links.remove(name) {
            if let Some(pin) = &held.pin {
                if let Err(error) = std::fs::remove_file(pin) {
                    log::warn!("unpinning {}: {error}", pin.display());
                }
            }
            match held.link {
                Attachment::Link(link) => drop(link),
                Attachment::Filter(filter) => filter.detach(),
                Attachment::Offloaded(offloaded) => drop(offloaded),
            }
        }
    }

    /// Detaches every program from every interface and, for a pinned
    /// datapath, removes its pins: the datapath stops forwarding.
    pub fn detach(&mut self) {
        let names: Vec<String> = self.links.keys().cloned().collect();
        for name in names {
            self.drop_link(&name);
        }
        // Links still owned by the programs (none in normal operation).
        for name in programs::ALL {
            if let Some(program) = self.ebpf.program_mut(name) {
                let result = match program {
                    aya::programs::Program::Xdp(xdp) => xdp.unload(),
                    aya::programs::Program::SchedClassifier(tc) => tc.unload(),
                    _ => Ok(()),
                };
                if let Err(error) = result {
                    log::warn!("detaching {name}: {error}");
                }
            }
        }
        if let Some(pins) = self.pins.take() {
            if let Err(error) = pins.remove() {
                log::warn!("removing pins in {}: {error}", pins.root().display());
            }
        }
    }

    /// Names of the attachments held (see [`pinning`]).
    pub fn attachments(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }
}
