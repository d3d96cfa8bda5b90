//! The Docker plugin end to end: two hosts, each with its own dockerd
//! (own roots and socket, no iptables, no bridge) and `overlay run
//! --docker-plugin`. In cluster mode one etcd on the underlay tells the
//! hosts each other's containers and allocates addresses cluster-wide;
//! without it each host's file lists the other's containers (fixed with
//! `--ip` and `--mac-address`) and each host allocates from its own
//! `--ip-range`. Containers are busybox-static imported with `docker
//! import`; traffic runs between them with busybox's ping and nc.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use overlay::api::client::{self, Method};
use overlay_lab::{
    dockerd::{self, Dockerd, PluginSocket},
    etcd::{self, EtcdCluster},
    lab::{HostKind, HostSpec, Lab, LabSpec, overlay_binary},
};
use serde_json::Value;

/// etcd's address on the lab's underlay bridge.
const ETCD_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const IMAGE: &str = "overlay-busybox";
const SUBNET: &str = "10.90.0.0/24";

/// A lab host with its agent's plugin and its dockerd.
struct DockerHost {
    name: String,
    plugin: PluginSocket,
    docker: Dockerd,
}

/// Everything of one test; fields drop in order: the daemons first (their
/// containers leave through the plugins while the agents still run), then
/// the agents and namespaces, then etcd.
struct Setup {
    hosts: Vec<DockerHost>,
    lab: Lab,
    etcd: Option<EtcdCluster>,
}

impl Setup {
    /// Two hosts whose files hold only their `[node]` table, etcd, the
    /// agents with their plugins, and a dockerd per host with the image.
    fn start(scope: &str, cluster: bool) -> Setup {
        let host = |name: &str| HostSpec { name: name.into(), kind: HostKind::Overlay, containers: Vec::new() };
        let lab = Lab::build(LabSpec { scope: scope.into(), vxlan_port: 4789, hosts: vec![host("h1"), host("h2")] }).expect("building the lab");
        for host in &lab.hosts {
            let path = host.config_path.clone().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let end = text.find("[[").unwrap_or(text.len());
            std::fs::write(&path, &text[..end]).unwrap();
        }
        let etcd = cluster.then(|| {
            let bridge = format!("br{:x}", std::process::id());
            lab.wire.ip(&["addr", "add", &format!("{ETCD_ADDRESS}/24"), "dev", &bridge]).expect("addressing the underlay bridge");
            EtcdCluster::start_in_netns(scope, lab.wire.name(), ETCD_ADDRESS).expect("starting etcd on the underlay")
        });
        let rootfs = dockerd::busybox_rootfs(&lab.dir).expect("making the busybox rootfs");
        let mut setup = Setup { hosts: Vec::new(), lab, etcd };
        for index in 0..2 {
            let name = setup.lab.hosts[index].spec.name.clone();
            let plugin = PluginSocket::new(scope, &name);
            setup.start_agent(index, &plugin.name);
            let docker = Dockerd::start(&setup.lab.hosts[index].netns, &setup.lab.dir.join(format!("docker-{name}")))
                .unwrap_or_else(|error| panic!("starting dockerd on {name}: {error:#}"));
            docker.import(&rootfs, IMAGE).expect("importing the busybox image");
            setup.hosts.push(DockerHost { name, plugin, docker });
        }
        setup
    }

    fn start_agent(&mut self, index: usize, plugin: &str) {
        let mut args = vec!["--docker-plugin".to_owned(), plugin.to_owned()];
        if let Some(etcd) = &self.etcd {
            args.extend(["--etcd".to_owned(), etcd.client_url(0)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = self
            .lab
            .start_agent_with_args(index, &overlay_binary().unwrap(), &args)
            .unwrap_or_else(|error| panic!("starting the agent on host {index}: {error:#}\n{}", self.lab.agent_logs()));
        self.lab.agents.push(agent);
    }

    fn docker(&self, host: usize, args: &[&str]) -> String {
        self.hosts[host].docker.docker(args).unwrap_or_else(|error| panic!("{error:#}\n{}", self.logs()))
    }

    /// `docker ARGS` that must fail: its stderr.
    fn docker_refused(&self, host: usize, args: &[&str]) -> String {
        let output = self.hosts[host].docker.docker_output(args).unwrap();
        assert!(!output.status.success(), "expected `docker {}` on h{} to fail, it succeeded", args.join(" "), host + 1);
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// `docker network create` of this host's plugin.
    fn create_network(&self, host: usize, name: &str, subnet: &str, extra: &[&str]) {
        let plugin = self.hosts[host].plugin.name.clone();
        let mut args = vec!["network", "create", "-d", &plugin, "--ipam-driver", &plugin, "--subnet", subnet];
        args.extend_from_slice(extra);
        args.push(name);
        self.docker(host, &args);
    }

    /// Starts a container that serves its name on TCP port 7000 (and sleeps).
    fn run(&self, host: usize, name: &str, network: &str) {
        let serve = format!("while true; do echo {name} | nc -l -p 7000; done");
        self.docker(host, &["run", "-d", "--name", name, "--network", network, IMAGE, "sh", "-c", &serve]);
    }

    /// The container's address in `network`.
    fn address(&self, host: usize, container: &str, network: &str) -> Ipv4Addr {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let text = self.docker(host, &["inspect", "-f", &format, container]);
        text.parse().unwrap_or_else(|_| panic!("{container}'s address in {network}: {text:?}"))
    }

    /// Whether `container` on `host` gets an answer to one ping of `target`.
    fn pings(&self, host: usize, container: &str, target: Ipv4Addr) -> bool {
        let output = self.hosts[host].docker.docker_output(&["exec", container, "ping", "-c", "1", "-W", "1", &target.to_string()]).unwrap();
        output.status.success()
    }

    /// Who answers on `target`:7000 for `container` (empty: nobody).
    fn who_is_at(&self, host: usize, container: &str, target: Ipv4Addr) -> String {
        let command = format!("sleep 3 | nc -w 2 {target} 7000");
        let output = self.hosts[host].docker.docker_output(&["exec", container, "sh", "-c", &command]).unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn socket(&self, host: usize) -> PathBuf {
        self.lab.dir.join("run").join(format!("{}.sock", self.hosts[host].name))
    }

    /// How many endpoints `host` knows behind peer `peer` (the peer's containers in its datapath).
    fn remote_endpoints(&self, host: usize, peer: &str) -> usize {
        let answer = client::call_blocking(&self.socket(host), Method::GET, "/v1/peers", None).expect("GET /v1/peers");
        let peers: Value = serde_json::from_slice(&answer.body).unwrap();
        peers.as_array().into_iter().flatten().find(|p| p["name"] == peer).and_then(|p| p["endpoints"].as_u64()).unwrap_or(0) as usize
    }

    /// The host's links whose names start with `prefix` (the plugin's veths are `dk...`).
    fn links(&self, host: usize, prefix: &str) -> Vec<String> {
        let output = self.lab.hosts[host].netns.ip(&["-o", "link", "show"]).unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .filter(|name| name.starts_with(prefix))
            .collect()
    }

    fn logs(&self) -> String {
        let daemons: String = self.hosts.iter().map(|h| format!("--- dockerd on {}:\n{}\n", h.name, tail(&h.docker.log(), 30))).collect();
        format!("{}\n{daemons}", self.lab.agent_logs())
    }

    fn wait_for(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !condition() {
            if Instant::now() > deadline {
                panic!("{what}: not after 60 s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn skip() -> bool {
    match dockerd::missing().or_else(etcd::missing) {
        Some(why) => {
            println!("skipped: {why}");
            true
        }
        None => false,
    }
}

#[test]
fn containers_on_two_hosts_talk_stay_isolated_and_leave_cleanly() {
    if skip() {
        return;
    }
    let setup = Setup::start("dkcross", true);
    for host in 0..2 {
        // The same names, subnets and VNIs on both hosts: one overlay network each.
        setup.create_network(host, "blue", SUBNET, &["--opt", "vni=4242"]);
        setup.create_network(host, "green", SUBNET, &["--opt", "vni=4343", "--opt", "com.docker.network.driver.mtu=1400"]);
        setup.create_network(host, "red", "10.91.0.0/24", &[]);
    }
    setup.run(0, "b1", "blue");
    setup.run(1, "b2", "blue");
    setup.run(0, "g1", "green");
    setup.run(1, "g2", "green");
    setup.run(1, "r2", "red");
    let b1 = setup.address(0, "b1", "blue");
    let b2 = setup.address(1, "b2", "blue");
    let g1 = setup.address(0, "g1", "green");
    let g2 = setup.address(1, "g2", "green");
    let r2 = setup.address(1, "r2", "red");
    assert_ne!(b1, b2, "blue's containers on two hosts got one address");
    assert_ne!(g1, g2, "green's containers on two hosts got one address");

    // The container side: Docker's eth0 with the plugin's MTU, no default route.
    let inside = setup.docker(1, &["exec", "g2", "ip", "-o", "link", "show", "eth0"]);
    assert!(inside.contains("mtu 1400"), "green asked for MTU 1400; g2's eth0: {inside}");
    let inside = setup.docker(1, &["exec", "b2", "ip", "-o", "link", "show", "eth0"]);
    assert!(inside.contains("mtu 1450"), "blue's default MTU is the underlay's 1500 less 50; b2's eth0: {inside}");
    let routes = setup.docker(1, &["exec", "b2", "ip", "route"]);
    assert!(!routes.contains("default"), "expected no default route in b2 (no gateway), got:\n{routes}");
    for host in 0..2 {
        let bridges = setup.lab.hosts[host].netns.ip(&["-o", "link", "show", "docker_gwbridge"]);
        assert!(bridges.is_err(), "h{} has a docker_gwbridge: DisableGatewayService was not honoured", host + 1);
    }

    // Across hosts, once each learned the other's containers from etcd.
    setup.wait_for("b1 pinging b2 across hosts", || setup.pings(0, "b1", b2));
    setup.wait_for("g2 pinging g1 across hosts", || setup.pings(1, "g2", g1));

    // 10 MB over TCP, every byte checked (busybox nc and md5sum).
    setup.docker(1, &["exec", "-d", "b2", "sh", "-c", "sleep 3600 | nc -l -p 5000 | md5sum > /tmp/received"]);
    let sent = setup.docker(0, &["exec", "b1", "sh", "-c", &format!("head -c 10485760 /dev/urandom > /tmp/blob && md5sum < /tmp/blob && sleep 1 && nc {b2} 5000 < /tmp/blob")]);
    let mut received = String::new();
    setup.wait_for("b2's checksum of what arrived", || {
        received = setup.docker(1, &["exec", "b2", "cat", "/tmp/received"]);
        !received.is_empty()
    });
    let digest = |text: &str| text.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(digest(&received), digest(&sent), "10 MB from b1 to b2: the receiver's MD5 differs from the sender's");

    // Isolation: every container serves its name; b1 never reaches green's.
    setup.wait_for("b1 hearing b2's name", || setup.who_is_at(0, "b1", b2) == "b2");
    setup.wait_for("g1 hearing g2's name", || setup.who_is_at(0, "g1", g2) == "g2");
    for target in [g1, g2] {
        let answer = setup.who_is_at(0, "b1", target);
        assert!(!answer.starts_with('g'), "b1 (blue) reached a green container at {target}: it answered {answer:?}");
    }
    assert!(!setup.pings(0, "b1", r2), "b1 (not on red) reached r2 at {r2}");

    // connect/disconnect at runtime: b1 joins red, reaches r2, leaves.
    let before = setup.links(0, "dk").len();
    setup.docker(0, &["network", "connect", "red", "b1"]);
    assert_eq!(setup.links(0, "dk").len(), before + 1, "network connect should add one veth on h1");
    setup.wait_for("b1 pinging r2 after network connect", || setup.pings(0, "b1", r2));
    setup.docker(0, &["network", "disconnect", "red", "b1"]);
    assert_eq!(setup.links(0, "dk").len(), before, "network disconnect should delete b1's red veth on h1");
    let interfaces = setup.docker(0, &["exec", "b1", "ip", "-o", "link"]);
    assert!(!interfaces.contains("eth1"), "b1 still has eth1 after disconnect:\n{interfaces}");
    setup.wait_for("h2 forgetting b1's red endpoint (keeping b1 and g1)", || setup.remote_endpoints(1, "h1") == 2);
    assert!(!setup.pings(0, "b1", r2), "b1 still reaches r2 after network disconnect");

    // Stopping b2 takes it out of h1's datapath, and its veth goes.
    assert_eq!(setup.remote_endpoints(0, "h2"), 3, "h1 should know b2, g2 and r2 behind h2");
    setup.docker(1, &["stop", "-t", "0", "b2"]);
    setup.wait_for("h1 forgetting b2", || setup.remote_endpoints(0, "h2") == 2);
    assert!(!setup.pings(0, "b1", b2), "b1 still reaches b2's address after b2 stopped");
    assert_eq!(setup.links(1, "dk").len(), 2, "h2 should keep the veths of g2 and r2 only: {:?}", setup.links(1, "dk"));

    // Addresses: never one twice across hosts; a taken --ip is refused naming its holder.
    setup.run(1, "b3", "blue");
    setup.run(0, "b4", "blue");
    let blue: Vec<Ipv4Addr> = [(0, "b1"), (1, "b3"), (0, "b4")].iter().map(|(h, c)| setup.address(*h, c, "blue")).collect();
    assert_eq!(blue.iter().collect::<BTreeSet<_>>().len(), blue.len(), "blue's addresses repeat across hosts: {blue:?}");
    let refused = setup.docker_refused(1, &["run", "--rm", "--network", "blue", "--ip", &b1.to_string(), IMAGE, "true"]);
    assert!(refused.contains(&format!("{b1} is held by")), "expected --ip {b1} (b1's) refused naming the holder, got:\n{refused}");
    let refused = setup.docker_refused(0, &["network", "create", "-d", &setup.hosts[0].plugin.name, "--ipam-driver", &setup.hosts[0].plugin.name, "--subnet", SUBNET, "--opt", "vni=0", "bad"]);
    assert!(refused.contains("--opt vni=\"0\""), "expected vni=0 refused naming the option, got:\n{refused}");

    // Docker leaves nothing of ours behind: every container gone, every veth gone.
    for host in 0..2 {
        let ids = setup.docker(host, &["ps", "-aq"]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let mut args = vec!["rm", "-f"];
        args.extend(&ids);
        setup.docker(host, &args);
        assert_eq!(setup.links(host, "dk"), Vec::<String>::new(), "h{}'s plugin veths after every container went", host + 1);
    }
    // ... and every address handed out went back to the allocator.
    for host in 0..2 {
        let answer = client::call_blocking(&setup.socket(host), Method::GET, "/v1/networks", None).expect("GET /v1/networks");
        let networks: Value = serde_json::from_slice(&answer.body).unwrap();
        let names: Vec<String> = networks.as_array().into_iter().flatten().filter_map(|n| n["name"].as_str().map(str::to_owned)).collect();
        assert_eq!(names.len(), 3, "h{} should have the three overlay networks, has {names:?}", host + 1);
        for name in names {
            let answer = client::call_blocking(&setup.socket(host), Method::GET, &format!("/v1/networks/{name}/addresses"), None).expect("GET addresses");
            let held: Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(held, Value::Array(Vec::new()), "h{}: addresses of {name} still allocated after every container went", host + 1);
        }
    }
    for host in 0..2 {
        for network in ["blue", "green", "red"] {
            setup.docker(host, &["network", "rm", network]);
        }
    }
}

/// Without etcd: the container each host's file lists behind the other.
const B1: (&str, &str) = ("02:00:00:00:90:01", "10.90.0.10");
const B2: (&str, &str) = ("02:00:00:00:90:02", "10.90.0.70");

#[test]
fn kill_9_of_the_agent_does_not_cut_a_running_container() {
    if skip() {
        return;
    }
    let mut setup = Setup::start("dkkill", false);
    for (host, range) in [(0, "10.90.0.0/26"), (1, "10.90.0.64/26")] {
        setup.create_network(host, "blue", SUBNET, &["--ip-range", range, "--opt", "vni=4242"]);
    }
    // Each file lists the other host's container, as an operator (or a registry) would.
    for (host, peer, (mac, ip)) in [(0, 1, B2), (1, 0, B1)] {
        let path = setup.lab.hosts[host].config_path.clone().unwrap();
        let peer = &setup.lab.hosts[peer];
        let text = format!(
            "{}\n[[peers]]\nname = \"{}\"\nvtep_address = \"{}\"\n\n  [[peers.endpoints]]\n  mac = \"{mac}\"\n  ip = \"{ip}\"\n  vni = 4242\n",
            std::fs::read_to_string(&path).unwrap(),
            peer.spec.name,
            peer.vtep
        );
        std::fs::write(&path, text).unwrap();
    }
    setup.wait_for("both agents reloading their files with the peer", || setup.remote_endpoints(0, "h2") == 1 && setup.remote_endpoints(1, "h1") == 1);
    for (host, name, (mac, ip)) in [(0, "b1", B1), (1, "b2", B2)] {
        let serve = format!("while true; do echo {name} | nc -l -p 7000; done");
        setup.docker(host, &["run", "-d", "--name", name, "--network", "blue", "--ip", ip, "--mac-address", mac, IMAGE, "sh", "-c", &serve]);
    }
    let b2: Ipv4Addr = B2.1.parse().unwrap();
    setup.wait_for("b1 pinging b2 across hosts", || setup.pings(0, "b1", b2));

    // 60 pings 0.1 s apart while h1's agent is killed and started again.
    let pinger = setup.hosts[0]
        .docker
        .command(&["exec", "b1", "ping", "-c", "60", "-i", "0.1", "-W", "1", &b2.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the ping");
    std::thread::sleep(Duration::from_millis(1500));
    let index = setup.lab.agents.iter().position(|a| a.host == "h1").unwrap();
    setup.lab.agents[index].kill();
    setup.lab.agents.remove(index);
    assert!(setup.hosts[0].plugin.path.exists(), "a killed agent leaves its plugin socket (stale) behind");
    let plugin = setup.hosts[0].plugin.name.clone();
    setup.start_agent(0, &plugin);
    let output = pinger.wait_with_output().expect("waiting for the ping");
    let text = String::from_utf8_lossy(&output.stdout);
    let summary = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary:\n{text}"));
    assert!(
        summary.starts_with("60 packets transmitted, 60 packets received"),
        "expected all 60 pings answered across kill -9 and restart, got: {summary}\n{}",
        setup.logs()
    );

    // The plugin came back with the agent, which knows its endpoints and
    // allocations from its state: a new container gets a fresh address of
    // h1's range, and removing b1 (joined before the kill) cleans up.
    setup.run(0, "b3", "blue");
    let b3 = setup.address(0, "b3", "blue");
    assert!(b3.octets()[3] < 64 && b3.to_string() != B1.1, "b3 should get a free address of h1's range 10.90.0.0/26, got {b3}");
    setup.wait_for("b1 pinging b3 (started after the restart)", || setup.pings(0, "b1", b3));
    setup.docker(0, &["rm", "-f", "b1"]);
    assert_eq!(setup.links(0, "dk").len(), 1, "h1 should keep b3's veth only: {:?}", setup.links(0, "dk"));
    assert!(!setup.pings(1, "b2", B1.1.parse().unwrap()), "b2 still reaches b1's address after b1 was removed");
}
