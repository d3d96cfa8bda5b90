//! Podman 4.3 with its CNI backend runs containers on two overlay hosts
//! through `overlay-cni`: each host is a namespace with its own agent
//! (cluster mode, one etcd); Podman itself runs in this namespace and makes
//! each container's namespace, and the plugin puts the host end of the veth
//! in the namespace of the agent the network's configuration names.
//! Everything Podman reads is the test's own (containers.conf, storage.conf,
//! the conflist directory, a busybox-static rootfs); everything it leaves
//! (containers, storage mounts, CNI results, cgroups) is removed on every
//! exit path.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use overlay::api::{
    client::{self, Method},
    views::EndpointView,
};
use overlay_lab::{
    cni::{CniLab, NETWORK},
    etcd,
    lab::cni_binary, traffic::pattern_byte,
};
use serde_json::{Value, json};

const PODMAN: &str = "/usr/bin/podman";
const BUSYBOX: &str = "/bin/busybox";
/// Bytes the client container sends to the server container.
const PAYLOAD: usize = 10 << 20;

/// The test's Podman: its own configuration, storage and networks.
struct Podman {
    dir: PathBuf,
    /// Podman's name of the network on each host, `ovl-podman-<pid>-<host>`.
    networks: Vec<String>,
    /// The cgroup parent of every container (removed at the end).
    cgroup_parent: String,
    /// The cleanup an interrupted run does (a guard's destructor never runs then).
    _interrupt: Option<overlay_lab::netns::InterruptCleanup>,
}

impl Podman {
    fn new(lab: &CniLab, hosts: &[&str]) -> Podman {
        let dir = lab.lab.dir.join("podman");
        let tag = format!("ovl-podman-{}", std::process::id());
        let podman = Podman { dir: dir.clone(), networks: hosts.iter().map(|host| format!("{tag}-{host}")).collect(), cgroup_parent: format!("/{tag}"), _interrupt: None };
        for sub in ["net.d", "plugins", "graph", "run", "tmp", "rootfs/bin", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(cni_binary().unwrap(), dir.join("plugins/overlay-cni")).unwrap();
        for (host, network) in hosts.iter().zip(&podman.networks) {
            // Podman 4 writes and reads CNI results as 0.4.0.
            let conflist = json!({
                "cniVersion": "0.4.0",
                "name": network,
                "plugins": [{"type": "overlay-cni", "network": NETWORK, "agent_socket": lab.socket(host)}],
            });
            std::fs::write(dir.join(format!("net.d/{network}.conflist")), serde_json::to_string_pretty(&conflist).unwrap()).unwrap();
        }
        let d = dir.display();
        // Without the ulimits every run fails ("error setting rlimit": no
        // CAP_SYS_RESOURCE here); static_dir stays unset (it stalls exits 20 s).
        let containers_conf = format!(
            "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/plugins\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{d}/net.d\"\ndefault_network = \"{}\"\n\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n",
            podman.networks[0]
        );
        std::fs::write(dir.join("containers.conf"), containers_conf).unwrap();
        std::fs::write(dir.join("storage.conf"), format!("[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/graph\"\nrunroot = \"{d}/run\"\n")).unwrap();
        // The rootfs: busybox-static, and the payload the client sends.
        std::fs::copy(BUSYBOX, dir.join("rootfs/bin/busybox")).unwrap();
        let payload: Vec<u8> = (0..PAYLOAD as u64).map(pattern_byte).collect();
        std::fs::write(dir.join("rootfs/payload"), payload).unwrap();
        let mut podman = podman;
        podman._interrupt = Some(overlay_lab::netns::on_interrupt(podman.cleaner()));
        podman
    }

    fn command(&self, args: &[&str]) -> Command {
        // A hung Podman must not hang the suite.
        let mut command = Command::new("timeout");
        command
            .args(["120", PODMAN])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running podman")
    }

    fn expect(&self, what: &str, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{what}: `podman {}` failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn rootfs(&self) -> String {
        self.dir.join("rootfs").display().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.cleaner()();
    }
}

impl Podman {
    /// What removes everything Podman made for this test: run on drop, and
    /// on an interrupt (where destructors do not run).
    fn cleaner(&self) -> impl Fn() + Send + Sync + 'static {
        let (dir, networks, cgroup_parent) = (self.dir.clone(), self.networks.clone(), self.cgroup_parent.clone());
        move || {
            let podman = |args: &[&str]| {
                let _ = Command::new("timeout")
                    .args(["120", PODMAN])
                    .args(args)
                    .env("CONTAINERS_CONF", dir.join("containers.conf"))
                    .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
                    .output();
            };
            // Containers first (their DEL runs while the agents still answer),
            // then storage (unmounts its mounts), CNI results, cgroups.
            podman(&["rm", "--force", "--all", "--time", "0"]);
            podman(&["system", "reset", "--force"]);
            if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if networks.iter().any(|network| name.starts_with(&format!("{network}-"))) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            remove_cgroups(&cgroup_parent);
            for sub in ["graph", "run"] {
                let _ = Command::new("umount").args(["-R", "-l"]).arg(dir.join(sub)).output();
            }
        }
    }
}

/// Removes the cgroup `parent` and everything under it, in every hierarchy.
fn remove_cgroups(parent: &str) {
    fn remove_tree(path: &Path) {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(path);
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for hierarchy in hierarchies.flatten() {
        remove_tree(&hierarchy.path().join(parent.trim_start_matches('/')));
    }
}

fn endpoints(socket: &Path) -> Vec<EndpointView> {
    let answer = client::call_blocking(socket, Method::GET, "/v1/endpoints", None).expect("listing endpoints");
    serde_json::from_slice(&answer.body).expect("decoding endpoints")
}

/// The container's address on `network`, as Podman read it from the plugin's result.
fn container_address(podman: &Podman, name: &str, network: &str) -> Ipv4Addr {
    let inspected: Value = serde_json::from_str(&podman.expect("inspecting the server", &["inspect", name])).unwrap();
    let address = &inspected[0]["NetworkSettings"]["Networks"][network]["IPAddress"];
    address.as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no IPv4 address of {name} on {network} in podman inspect: {inspected}"))
}

#[test]
fn podman_containers_on_two_hosts_ping_and_move_bytes() {
    if !Path::new(PODMAN).exists() || !Path::new(BUSYBOX).exists() {
        println!("skipped: {PODMAN} or {BUSYBOX} is not installed (Debian packages podman, busybox-static)");
        return;
    }
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let lab = CniLab::start("podman", 2).expect("starting the lab");
    let podman = Podman::new(&lab, &["h1", "h2"]);
    let (net1, net2) = (podman.networks[0].clone(), podman.networks[1].clone());
    let rootfs = podman.rootfs();
    let data = format!("{}:/data", podman.dir.join("data").display());
    let server = format!("ovl-podman-{}-server", std::process::id());

    // The server on h2, at the address and MAC it asks for (Podman passes
    // them as CNI_ARGS IP= and MAC=), receives into /data until the client half-closes
    // (its nc's own stdin is /dev/null: `-e` keeps that from closing the
    // connection at once).
    podman.expect(
        "starting the server on h2",
        &["run", "-d", "--name", &server, "--network", &net2, "--ip", "10.10.0.20", "--mac-address", "02:00:00:00:20:20", "--cgroup-parent", &podman.cgroup_parent, "-v", &data, "--rootfs", &rootfs, "/bin/busybox", "sh", "-c", "nc -l -p 5000 -e /bin/busybox sh -c 'cat > /data/received'"],
    );
    let server_ip = container_address(&podman, &server, &net2);
    assert_eq!(server_ip, Ipv4Addr::new(10, 10, 0, 20), "the server asked for --ip 10.10.0.20");
    let h2 = endpoints(&lab.socket("h2"));
    assert!(
        h2.iter().any(|e| e.ipv4 == Some(server_ip) && e.mac.to_string() == "02:00:00:00:20:20" && e.owner.kind.to_string() == "cni" && e.state == "applied"),
        "h2's agent should hold the server ({server_ip}, --mac-address 02:00:00:00:20:20) as an applied cni endpoint: {h2:?}"
    );

    // The client on h1: waits for the path (h1 learns h2's endpoint from
    // etcd), pings, sends. busybox nc half-closes at the end of its stdin
    // and exits when the server closes, after `cat` has read to the end
    // (so no byte is still queued when the client's veth goes with it).
    let script = format!(
        "for i in $(seq 1 30); do ping -c 1 -W 1 {server_ip} >/dev/null && break; done; ping -c 3 -W 2 {server_ip} && nc {server_ip} 5000 < /payload"
    );
    let client = podman.run(&["run", "--rm", "--network", &net1, "--cgroup-parent", &podman.cgroup_parent, "--rootfs", &rootfs, "/bin/busybox", "sh", "-c", &script]);
    let client_output = format!("{}{}", String::from_utf8_lossy(&client.stdout), String::from_utf8_lossy(&client.stderr));
    assert!(client.status.success(), "the client on h1 should ping {server_ip} and send {PAYLOAD} bytes:\n{client_output}\n{}", lab.lab.agent_logs());
    assert!(client_output.contains("3 packets transmitted, 3 packets received"), "three pings across hosts, none lost:\n{client_output}");

    let waited = podman.expect("waiting for the server", &["wait", &server]);
    assert_eq!(waited.trim(), "0", "the server should exit 0 once the client closed; logs:\n{}", podman.expect("server logs", &["logs", &server]));
    let received = std::fs::read(podman.dir.join("data/received")).expect("reading what the server received");
    let first_mismatch = received.iter().enumerate().find(|(offset, byte)| **byte != pattern_byte(*offset as u64)).map(|(offset, _)| offset);
    assert_eq!((received.len(), first_mismatch), (PAYLOAD, None), "the server should receive every byte the client sent, unchanged\nclient:\n{client_output}\nserver:\n{}\n{}", podman.run(&["logs", &server]).stderr.escape_ascii(), lab.lab.agent_logs());

    // Removing the containers runs DEL: nothing left at either agent.
    podman.expect("removing the server", &["rm", &server]);
    for host in ["h1", "h2"] {
        let left = endpoints(&lab.socket(host));
        assert!(left.is_empty(), "after the containers are gone, {host}'s agent should hold no endpoint: {left:?}");
    }
}
