//! The Docker plugin end to end: two hosts, each with its own dockerd
//! (own roots and socket, no iptables, no bridge) and `overlay run
//! --docker-plugin`. In cluster mode one etcd on the underlay tells the
//! hosts each other's containers and allocates addresses cluster-wide;
//! without it each host's file lists the other's containers (fixed with
//! `--ip` and `--mac-address`) and each host allocates from its own
//! `--ip-range`. Containers are busybox-static imported with `docker
//! import`; traffic runs between them with busybox's ping and nc.
use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf, time::Duration};

use overlay::api::client::{self, Method};
use overlay_lab::{
    docker_lab::{DockerLab, IMAGE},
    dockerd,
    etcd,
    lab::overlay_binary,
};
use serde_json::Value;

const SUBNET: &str = "10.90.0.0/24";

/// The lab (tests/src/docker_lab.rs), with helpers that panic with the logs.
struct Setup(DockerLab);

impl std::ops::Deref for Setup {
    type Target = DockerLab;
    fn deref(&self) -> &DockerLab {
        &self.0
    }
}

impl std::ops::DerefMut for Setup {
    fn deref_mut(&mut self) -> &mut DockerLab {
        &mut self.0
    }
}

impl Setup {
    /// Two hosts whose files hold only their `[node]` table, etcd when
    /// `cluster`, the agents with their plugins, and a dockerd per host with the image.
    fn start(scope: &str, cluster: bool) -> Setup {
        let binary = overlay_binary().expect("the overlay binary");
        Setup(DockerLab::start(scope, &["h1", "h2"], cluster, &binary, false).unwrap_or_else(|error| panic!("starting the Docker lab: {error:#}")))
    }

    fn start_agent(&mut self, index: usize, plugin: &str) {
        let result = self.0.start_agent(index, plugin);
        result.unwrap_or_else(|error| panic!("{error:#}"));
    }

    fn docker(&self, host: usize, args: &[&str]) -> String {
        self.0.docker(host, args).unwrap_or_else(|error| panic!("{error:#}\n{}", self.logs()))
    }

    /// `docker ARGS` that must fail: its stderr.
    fn docker_refused(&self, host: usize, args: &[&str]) -> String {
        self.0.docker_refused(host, args).unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// `docker network create` of this host's plugin.
    fn create_network(&self, host: usize, name: &str, subnet: &str, extra: &[&str]) {
        self.0.create_network(host, name, subnet, extra).unwrap_or_else(|error| panic!("{error:#}\n{}", self.logs()));
    }

    /// Starts a container that serves its name on TCP port 7000 (and sleeps).
    fn run(&self, host: usize, name: &str, network: &str) {
        self.0.run_container(host, name, network).unwrap_or_else(|error| panic!("{error:#}\n{}", self.logs()));
    }

    /// The container's address in `network`.
    fn address(&self, host: usize, container: &str, network: &str) -> Ipv4Addr {
        self.0.address(host, container, network).unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Who answers on `target`:7000 for `container` (empty: nobody).
    fn who_is_at(&self, host: usize, container: &str, target: Ipv4Addr) -> String {
        self.0.who_is_at(host, container, target).unwrap_or_else(|error| panic!("{error:#}"))
    }

    fn socket(&self, host: usize) -> PathBuf {
        self.api_socket(host)
    }

    /// How many endpoints `host` knows behind peer `peer` (the peer's containers in its datapath).
    fn remote_endpoints(&self, host: usize, peer: &str) -> usize {
        let answer = client::call_blocking(&self.socket(host), Method::GET, "/v1/peers", None).expect("GET /v1/peers");
        let peers: Value = serde_json::from_slice(&answer.body).unwrap();
        peers.as_array().into_iter().flatten().find(|p| p["name"] == peer).and_then(|p| p["endpoints"].as_u64()).unwrap_or(0) as usize
    }

    /// The host's links whose names start with `prefix` (the plugin's veths are `dk...`).
    fn links(&self, host: usize, prefix: &str) -> Vec<String> {
        self.0.links(host, prefix).expect("listing links")
    }

    fn wait_for(&self, what: &str, condition: impl FnMut() -> bool) {
        self.0.wait_for(what, condition).unwrap_or_else(|error| panic!("{error:#}"));
    }
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
    let (sent, received) = setup.transfer((0, "b1"), (1, "b2"), b2, 10 << 20).unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(received, sent, "10 MB from b1 to b2: the receiver's MD5 differs from the sender's");

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

/// The pings `container` on `host` answered out of `count` sent 0.1 s
/// apart while `during` runs (started 1.5 s into them).
fn pings_across(setup: &mut Setup, host: usize, container: &str, target: Ipv4Addr, count: u32, during: impl FnOnce(&mut Setup)) -> String {
    let pinger = setup.hosts[host]
        .docker
        .command(&["exec", container, "ping", "-c", &count.to_string(), "-i", "0.1", "-W", "1", &target.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the ping");
    std::thread::sleep(Duration::from_millis(1500));
    during(setup);
    let output = pinger.wait_with_output().expect("waiting for the ping");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary:\n{text}")).to_owned()
}

/// A host end of the Docker plugin's naming (`dk` + 11 hex digits) that no endpoint owns.
const ORPHAN: &str = "dk0123456789a";

#[test]
fn kill_9_of_a_cluster_agent_keeps_containers_and_docker_working() {
    if skip() {
        return;
    }
    let mut setup = Setup::start("dkkillc", true);
    for host in 0..2 {
        setup.create_network(host, "blue", SUBNET, &["--opt", "vni=4242"]);
    }
    setup.run(0, "b1", "blue");
    setup.run(1, "b2", "blue");
    let b1 = setup.address(0, "b1", "blue");
    let b2 = setup.address(1, "b2", "blue");
    setup.wait_for("b1 pinging b2 across hosts", || setup.pings(0, "b1", b2));

    // 60 pings 0.1 s apart each way while h1's agent is killed and started again.
    let plugin = setup.hosts[0].plugin.name.clone();
    let pinger_h2 = setup.hosts[1]
        .docker
        .command(&["exec", "b2", "ping", "-c", "60", "-i", "0.1", "-W", "1", &b1.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the ping from b2");
    let summary = pings_across(&mut setup, 0, "b1", b2, 60, |setup| {
        let index = setup.lab.agents.iter().position(|a| a.host == "h1").unwrap();
        setup.lab.agents[index].kill();
        setup.lab.agents.remove(index);
        assert!(setup.hosts[0].plugin.path.exists(), "a killed agent leaves its plugin socket (stale) behind");
        // A veth of the plugin's naming whose endpoint it does not know (as a
        // kill between creating a pair and saving the state leaves), and one
        // of another naming that is not the plugin's business.
        let netns = &setup.lab.hosts[0].netns;
        netns.ip(&["link", "add", ORPHAN, "type", "veth", "peer", "name", "dc0123456789a"]).expect("making an orphan veth");
        netns.ip(&["link", "add", "dkeep", "type", "veth", "peer", "name", "dkeep-peer"]).expect("making a foreign veth");
        setup.start_agent(0, &plugin);
    });
    let output = pinger_h2.wait_with_output().expect("waiting for b2's ping");
    let text = String::from_utf8_lossy(&output.stdout);
    let summary_h2 = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary:\n{text}"));
    for (who, summary) in [("b1 -> b2", summary.as_str()), ("b2 -> b1", summary_h2)] {
        assert!(
            summary.starts_with("60 packets transmitted, 60 packets received"),
            "{who}: expected all 60 pings answered across kill -9 and restart of h1's cluster agent, got: {summary}\n{}",
            setup.logs()
        );
    }

    // The restarted agent deleted the orphan (with its peer), and only it.
    setup.wait_for("the restarted agent deleting the orphan veth", || !setup.links(0, "dk").contains(&ORPHAN.to_owned()));
    let left = setup.links(0, "d");
    assert!(!left.contains(&"dc0123456789a".to_owned()), "the orphan's peer should go with it: {left:?}");
    assert!(left.contains(&"dkeep".to_owned()), "a veth not named as the plugin names them must stay: {left:?}");
    setup.lab.hosts[0].netns.ip(&["link", "del", "dkeep"]).expect("deleting the foreign veth");

    // The plugin socket is served again: Docker works through it. A new
    // container joins (its address from the cluster allocator, unique),
    // both hosts reach it, and b1 (joined before the kill) leaves cleanly.
    assert!(setup.hosts[0].plugin.path.exists(), "the restarted agent should serve {}", setup.hosts[0].plugin.path.display());
    setup.run(0, "b3", "blue");
    let b3 = setup.address(0, "b3", "blue");
    assert!(b3 != b1 && b3 != b2, "b3 got {b3}, which b1 ({b1}) or b2 ({b2}) holds");
    setup.wait_for("b1 pinging b3 (started after the restart)", || setup.pings(0, "b1", b3));
    setup.wait_for("b2 pinging b3 across hosts (registered after the restart)", || setup.pings(1, "b2", b3));
    setup.docker(0, &["rm", "-f", "b1"]);
    assert_eq!(setup.links(0, "dk").len(), 1, "h1 should keep b3's veth only: {:?}", setup.links(0, "dk"));
    setup.wait_for("h2 forgetting b1 (only b3 left behind h1)", || setup.remote_endpoints(1, "h1") == 1);
    assert!(!setup.pings(1, "b2", b1), "b2 still reaches b1's address {b1} after b1 was removed");
}

/// The registry's keys under `prefix` (relative to `/overlay/v1/`), read with etcdctl on the underlay.
fn registry_keys(setup: &Setup, prefix: &str) -> Vec<String> {
    let url = setup.etcd.as_ref().expect("cluster mode").client_url(0);
    let output = setup
        .lab
        .wire
        .exec("etcdctl", &["--endpoints", &url, "get", "--prefix", "--keys-only", &format!("/overlay/v1/{prefix}")])
        .expect("etcdctl get");
    String::from_utf8_lossy(&output.stdout).lines().filter(|l| !l.is_empty()).map(|l| l.trim_start_matches("/overlay/v1/").to_owned()).collect()
}

/// The overlay networks `host`'s agent has.
fn networks_of(setup: &Setup, host: usize) -> Vec<String> {
    let answer = client::call_blocking(&setup.socket(host), Method::GET, "/v1/networks", None).expect("GET /v1/networks");
    let networks: Value = serde_json::from_slice(&answer.body).unwrap();
    networks.as_array().into_iter().flatten().filter_map(|n| n["name"].as_str().map(str::to_owned)).collect()
}

#[test]
fn network_rm_in_cluster_mode_removes_the_record_with_its_last_user() {
    if skip() {
        return;
    }
    let setup = Setup::start("dkrm", true);
    for host in 0..2 {
        setup.create_network(host, "blue", SUBNET, &["--opt", "vni=4242"]);
    }
    assert_eq!(registry_keys(&setup, "users/docker-4242/"), ["users/docker-4242/h1", "users/docker-4242/h2"], "both hosts should be recorded as users");
    setup.run(1, "b2", "blue");

    // h1 removes its Docker network: h2 still has one (and a container), so the overlay network stays.
    setup.docker(0, &["network", "rm", "blue"]);
    assert_eq!(registry_keys(&setup, "networks/"), ["networks/docker-4242"], "h2 still uses docker-4242: its record must stay");
    assert_eq!(registry_keys(&setup, "users/docker-4242/"), ["users/docker-4242/h2"], "h1's user record should go with its Docker network");
    setup.run(1, "b3", "blue");
    let b3 = setup.address(1, "b3", "blue");
    setup.wait_for("b2 pinging b3 on h2 after h1 removed its network", || setup.pings(1, "b2", b3));
    assert!(networks_of(&setup, 1).contains(&"docker-4242".to_owned()), "h2 lost docker-4242: {:?}", networks_of(&setup, 1));

    // h2, the last user, removes it: the record, its VNI claim and the user records go (blocks stay),
    // and both agents drop the network.
    setup.docker(1, &["rm", "-f", "b2", "b3"]);
    setup.docker(1, &["network", "rm", "blue"]);
    for prefix in ["networks/", "vnis/", "users/", "endpoints/"] {
        assert_eq!(registry_keys(&setup, prefix), Vec::<String>::new(), "after the last user removed docker-4242, {prefix} should be empty");
    }
    for host in 0..2 {
        setup.wait_for(&format!("h{} dropping docker-4242", host + 1), || !networks_of(&setup, host).contains(&"docker-4242".to_owned()));
    }
    // And it can be created again from scratch.
    setup.create_network(0, "blue", SUBNET, &["--opt", "vni=4242"]);
    assert_eq!(registry_keys(&setup, "networks/"), ["networks/docker-4242"], "docker-4242 created again");
}
