//! `overlay run --xdp-mode offload`: the admission program offloaded to
//! the underlay NIC, TC decapsulation beside it.
//!
//! The NIC is netdevsim, the kernel's simulated device with a BPF offload
//! device, which `cargo xtask vm-test` builds and loads in the 6.1 guest.
//! netdevsim takes offloaded programs and maps (the kernel's verifier and
//! its own checks run, the program is bound to and attached on the
//! device) but does not run them on frames, and on 6.1 it carries no
//! traffic: so these tests prove that the program is accepted and attached
//! in hardware mode, that the agent runs with it and removes it, and that a
//! device without offload is refused by name; not that a NIC drops bad
//! frames (README, "Supported kernels").
use std::path::Path;

use overlay_lab::{
    lab::{Lab, LabSpec, overlay_binary},
    netns::Netns,
    tc_filters,
};

fn bin() -> std::path::PathBuf {
    overlay_binary().expect("overlay binary")
}

const NETDEVSIM_BUS: &str = "/sys/bus/netdevsim";

/// A netdevsim device with one port, created inside a namespace and
/// removed on drop.
struct SimulatedNic {
    id: u32,
    name: String,
}

impl SimulatedNic {
    /// Creates device `id` from inside `netns` (its port appears there) and
    /// renames its port `name`.
    fn create(netns: &Netns, id: u32, name: &str) -> SimulatedNic {
        let before = links(netns);
        netns
            .exec("sh", &["-c", &format!("echo '{id} 1' > {NETDEVSIM_BUS}/new_device")])
            .unwrap_or_else(|e| panic!("creating netdevsim device {id}: {e:#}"));
        let nic = SimulatedNic { id, name: name.to_owned() };
        // The port is registered asynchronously (devlink): wait for it.
        let mut port = None;
        for _ in 0..200 {
            port = links(netns).into_iter().find(|link| !before.contains(link));
            if port.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let port = port.unwrap_or_else(|| panic!("netdevsim device {id} made no port in {}: links {:?}", netns.name(), links(netns)));
        netns.ip(&["link", "set", &port, "name", name]).expect("renaming the netdevsim port");
        nic
    }
}

impl Drop for SimulatedNic {
    fn drop(&mut self) {
        let _ = std::fs::write(Path::new(NETDEVSIM_BUS).join("del_device"), self.id.to_string());
    }
}

/// The names of the links in `netns`.
fn links(netns: &Netns) -> Vec<String> {
    let output = netns.ip(&["-o", "link", "show"]).expect("ip link show");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split(':').nth(1).map(|name| name.trim().split('@').next().unwrap_or("").to_owned()))
        .collect()
}

/// `ip -d link show dev DEVICE` in `netns`.
fn link_details(netns: &Netns, device: &str) -> String {
    let output = netns.ip(&["-d", "link", "show", "dev", device]).expect("ip -d link show");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The lab host h1 with its VTEP address moved to a netdevsim port, and
/// its configuration naming that port as the underlay.
fn move_underlay_to(lab: &Lab, nic: &SimulatedNic) {
    let host = lab.host("h1");
    let address = format!("{}/24", host.vtep);
    host.netns.ip(&["addr", "del", &address, "dev", &host.underlay]).expect("removing the VTEP address from the veth");
    host.netns.ip(&["addr", "add", &address, "dev", &nic.name]).expect("adding the VTEP address to the netdevsim port");
    host.netns.ip(&["link", "set", &nic.name, "up"]).expect("setting the netdevsim port up");
    let path = host.config_path.as_ref().expect("h1's configuration");
    let text = std::fs::read_to_string(path).expect("reading h1's configuration");
    let moved = text.replace(&format!("underlay_interface = \"{}\"", host.underlay), &format!("underlay_interface = \"{}\"", nic.name));
    assert_ne!(text, moved, "h1's configuration names no underlay {}", host.underlay);
    std::fs::write(path, moved).expect("writing h1's configuration");
}

/// On a netdevsim port: the agent starts with `--xdp-mode offload`, the
/// port carries our program in XDP offload mode and the TC decapsulation
/// on its ingress, `overlay status` says so, and a stopped agent removes
/// both.
#[test]
fn offloaded_admission_is_attached_to_a_netdevsim_nic() {
    if !Path::new(NETDEVSIM_BUS).exists() {
        println!("skipped: no netdevsim on this kernel ({NETDEVSIM_BUS} is missing; `cargo xtask vm-test --test offload` builds and loads it in the 6.1 guest)");
        return;
    }
    let lab = Lab::build(LabSpec::one_container_each("offl", 1, 0x70)).expect("building the lab");
    let nic_name = format!("ns{:x}", std::process::id());
    let nic = SimulatedNic::create(&lab.host("h1").netns, std::process::id(), &nic_name);
    move_underlay_to(&lab, &nic);

    // Declared after the lab: it stops before the lab's namespaces go.
    let mut agent = lab.start_agent_with_args(0, &bin(), &["--xdp-mode", "offload"]).expect("starting the agent with --xdp-mode offload");
    let h1 = &lab.host("h1").netns;
    let details = link_details(h1, &nic.name);
    assert!(
        details.contains("xdpoffload") && details.contains("prog/xdp id"),
        "expected an XDP program attached in offload mode (`xdpoffload`, `prog/xdp id N`) on {}, saw:\n{details}\nagent log:\n{}",
        nic.name,
        agent.log()
    );
    let filters = tc_filters::ingress_bpf_filters(h1.command("tc"), &nic.name).expect("tc filter show");
    assert!(filters.iter().any(|filter| filter.contains("overlay_decap")), "expected the TC decapsulation on {}'s ingress, saw {filters:?}", nic.name);
    let status = lab.overlay_command("h1", &bin(), &["status", "--node", "h1"]).expect("overlay status").output().expect("running overlay status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("offloaded to the NIC"), "overlay status should say the admission runs on the NIC:\n{status}");

    let log = agent.stop();
    let details = link_details(h1, &nic.name);
    assert!(!details.contains("xdpoffload"), "the stopped agent left the offloaded program on {}:\n{details}\nagent log:\n{log}", nic.name);
}

/// On a device without BPF offload (the lab's veth), `--xdp-mode offload`
/// is refused with the reason, and nothing stays attached or pinned.
#[test]
fn offload_on_a_device_without_it_is_refused_by_name() {
    let lab = Lab::build(LabSpec::one_container_each("offr", 1, 0x71)).expect("building the lab");
    lab.mount_bpffs().expect("mounting bpffs");
    let host = lab.host("h1");
    let config = host.config_path.as_ref().expect("h1's configuration");
    let output = host
        .netns
        .command(bin().to_str().expect("UTF-8 path"))
        .args(["run", "--config"])
        .arg(config)
        .arg("--bpffs-dir")
        .arg(lab.bpffs_dir())
        .arg("--run-dir")
        .arg(lab.dir.join("run"))
        .args(["--xdp-mode", "offload"])
        .output()
        .expect("running overlay run");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "overlay run --xdp-mode offload on a veth should be refused, it exited {}:\n{text}", output.status);
    let expected = format!("underlay {} does not offer XDP offload", host.underlay);
    assert!(text.contains(&expected), "expected the refusal to say {expected:?}, saw:\n{text}");
    let details = link_details(&host.netns, &host.underlay);
    assert!(!details.contains("prog/xdp"), "the refused start left an XDP program on {}:\n{details}", host.underlay);
    // Without a clsact qdisc (nothing was ever attached) tc has no hook to show.
    let filters = tc_filters::ingress_bpf_filters(host.netns.command("tc"), &host.underlay).unwrap_or_default();
    assert!(filters.is_empty(), "the refused start left a TC program on {}: {filters:?}", host.underlay);
    let pins = lab.bpffs_dir().join("h1");
    assert!(!pins.exists(), "the refused start left pins in {}", pins.display());
}
