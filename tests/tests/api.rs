//! The local API against a running agent: endpoints added at run time
//! forward across hosts, bad requests change nothing, an endpoint waits
//! for its interface, API state survives kill -9, removing an endpoint
//! stops its traffic, and only root reaches the socket.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use overlay::{
    api::{
        ApiError,
        client::{self, ClientError, Method},
        views::{AllocationView, EndpointView, NetworkView},
    },
    datapath::Datapath,
    pinning::PinDir,
};
use overlay_lab::{
    lab::{ContainerSpec, HostKind, HostSpec, Lab, LabSpec, OVERLAY_MTU, format_mac, overlay_binary}, traffic::ping,
    netns::Netns,
};
use serde_json::{Value, json};

const C1_MAC: [u8; 6] = [2, 0, 0, 0, 0x61, 1];
const C1_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const C2_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);

/// Two hosts with a container each; h1's file lists no endpoint (its
/// container's veth exists, the API adds it), h2's file lists h1's
/// container as its peer's endpoint, as a registry would.
fn lab(scope: &str) -> Lab {
    let container = |mac: [u8; 6], ip| ContainerSpec { name: "c".into(), mac, ip, vni: 100 };
    let host = |n: &str, c| HostSpec { name: n.into(), kind: HostKind::Overlay, containers: vec![c] };
    let lab = Lab::build(LabSpec {
        scope: scope.into(),
        vxlan_port: 4789,
        hosts: vec![host("h1", container(C1_MAC, C1_IP)), host("h2", container([2, 0, 0, 0, 0x61, 2], C2_IP))],
    })
    .expect("building the lab");
    let path = lab.hosts[0].config_path.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    // Drop the [[endpoints]] table: everything from it to the first [[peers]].
    let start = text.find("[[endpoints]]").expect("h1's file has an endpoint");
    let end = text.find("[[peers]]").expect("h1's file has a peer");
    std::fs::write(&path, format!("{}{}", &text[..start], &text[end..])).unwrap();
    lab
}

fn socket(lab: &Lab, node: &str) -> PathBuf {
    lab.dir.join("run").join(format!("{node}.sock"))
}

fn call(socket: &Path, method: Method, path: &str, body: Option<Value>) -> Result<Vec<u8>, ApiError> {
    match client::call_blocking(socket, method, path, body) {
        Ok(answer) => Ok(answer.body),
        Err(ClientError::Refused(refusal)) => Err(refusal),
        Err(error) => panic!("calling {path}: {error}"),
    }
}

fn endpoints(socket: &Path) -> Vec<EndpointView> {
    serde_json::from_slice(&call(socket, Method::GET, "/v1/endpoints", None).unwrap()).unwrap()
}

fn local_endpoints_in_maps(lab: &Lab, node: &str) -> usize {
    Datapath::pinned_summary(&PinDir::new(&lab.bpffs_dir(), node)).expect("reading the pinned maps").local_endpoints
}

/// Expects a refusal with `status` naming `field` (and `value`), and that nothing changed.
fn expect_refused(socket: &Path, body: Value, status: u16, field: &str, value: &str, before: &[EndpointView]) -> ApiError {
    let refusal = call(socket, Method::POST, "/v1/endpoints", Some(body.clone())).expect_err(&format!("{body} should be refused"));
    assert_eq!(
        (refusal.status, refusal.field.as_str(), refusal.value.as_str()),
        (status, field, value),
        "{body}: expected HTTP {status} naming {field} = {value:?}, got {refusal:?}"
    );
    assert_eq!(endpoints(socket), before, "a refused request changed the endpoints");
    refusal
}

/// Both nodes' counters, for failure messages.
fn stats(lab: &Lab) -> String {
    ["h1", "h2"]
        .iter()
        .map(|host| {
            let run = |args: &[&str]| {
                let output = lab.overlay_command(host, &overlay_binary().unwrap(), args).unwrap().output().unwrap();
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
            };
            format!("--- {host}:\n{}{}", run(&["stats", "--node", host]), run(&["status", "--node", host]))
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn endpoints_added_through_the_api_forward_and_bad_requests_change_nothing() {
    let mut lab = lab("apiadd");
    lab.start_agents(&overlay_binary().unwrap()).expect("starting the agents");
    let h1 = socket(&lab, "h1");
    let c1 = &lab.container("h1", "c").netns;
    let port = lab.container("h1", "c").port.clone();

    assert!(endpoints(&h1).is_empty(), "h1 starts with no endpoint");
    let (_, received) = ping(c1, C2_IP, 2).unwrap();
    assert_eq!(received, 0, "without its endpoint, c1 should not reach c2");
    // The failed resolution stays FAILED in c1 for a while; a container
    // would retry later, the test forgets it now.
    c1.ip(&["neigh", "flush", "all"]).unwrap();

    let network: NetworkView = serde_json::from_slice(
        &call(&h1, Method::POST, "/v1/networks", Some(json!({"name": "blue", "vni": 100, "subnet": "10.10.0.0/24"}))).unwrap(),
    )
    .unwrap();
    assert_eq!((network.name.as_str(), network.vni, network.mtu), ("blue", 100, Some(OVERLAY_MTU)), "{network:?}");

    // Bad requests: each refused, naming the field and value; nothing applied.
    let good = json!({"network": "blue", "interface": port, "mac": format_mac(&C1_MAC), "ipv4": C1_IP.to_string()});
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let none = endpoints(&h1);
    expect_refused(&h1, with("mac", json!("02:00:zz:00:00:01")), 400, "mac", "02:00:zz:00:00:01", &none);
    expect_refused(&h1, with("mac", json!("01:00:5e:00:00:01")), 400, "mac", "01:00:5e:00:00:01", &none);
    expect_refused(&h1, with("ipv4", json!("10.10.0.300")), 400, "ipv4", "10.10.0.300", &none);
    expect_refused(&h1, with("ipv4", json!("10.99.0.1")), 400, "ipv4", "10.99.0.1", &none);
    let refusal = expect_refused(&h1, with("network", json!("green")), 400, "network", "green", &none);
    assert_eq!(refusal.kind, "unknown-network", "{refusal:?}");
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("network");
    expect_refused(&h1, missing, 400, "network", "", &none);
    expect_refused(&h1, with("colour", json!("red")), 400, "colour", "\"red\"", &none);
    // h2's container holds 10.10.0.2 in VNI 100 (h1's file lists it behind peer h2).
    let refusal = expect_refused(&h1, with("ipv4", json!(C2_IP.to_string())), 409, "ipv4", &C2_IP.to_string(), &none);
    assert_eq!(refusal.holder.as_deref(), Some("file peers[0].endpoints[0]"), "the holder should be named: {refusal:?}");
    let bad_vni = call(&h1, Method::POST, "/v1/networks", Some(json!({"name": "red", "vni": 16777216}))).unwrap_err();
    assert_eq!((bad_vni.status, bad_vni.field.as_str()), (400, "vni"), "{bad_vni:?}");
    let same_vni = call(&h1, Method::POST, "/v1/networks", Some(json!({"name": "red", "vni": 100}))).unwrap_err();
    assert_eq!((same_vni.status, same_vni.field.as_str()), (409, "vni"), "{same_vni:?}");
    assert_eq!(local_endpoints_in_maps(&lab, "h1"), 0, "refused requests must not touch the maps");

    let added: EndpointView = serde_json::from_slice(&call(&h1, Method::POST, "/v1/endpoints", Some(good.clone())).unwrap()).unwrap();
    assert_eq!((added.id.as_str(), added.state.as_str(), added.vni), (port.as_str(), "applied", Some(100)), "{added:?}");
    let (sent, received) = ping(c1, C2_IP, 3).unwrap();
    if received != sent {
        let neigh = c1.ip(&["neigh"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let links = c1.ip(&["-s", "link"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let host_links = lab.host("h1").netns.ip(&["-s", "link"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        panic!("after the API added c1's endpoint, c1 should reach c2 across hosts: {received} of {sent}\n{}\n{}\nc1 neighbours:\n{neigh}\nc1 links:\n{links}\nh1 links:\n{host_links}", lab.agent_logs(), stats(&lab));
    }
    let again = call(&h1, Method::POST, "/v1/endpoints", Some(with("id", json!(port)))).unwrap_err();
    assert_eq!(again.status, 409, "the same id twice: {again:?}");
    let mac_taken = call(&h1, Method::POST, "/v1/endpoints", Some(with("id", json!("other")))).unwrap_err();
    assert_eq!((mac_taken.status, mac_taken.field.as_str(), mac_taken.holder.as_deref()), (409, "mac", Some(format!("api endpoint {port}").as_str())), "{mac_taken:?}");

    // An endpoint whose interface does not exist yet is pending, then applied once it appears.
    let host = &lab.host("h1").netns;
    let late_port = format!("late{:x}", std::process::id());
    let late = Netns::new("apiadd", "late").unwrap();
    let body = json!({"network": "blue", "interface": late_port, "mac": "02:00:00:00:61:03", "ipv4": "10.10.0.3"});
    let pending: EndpointView = serde_json::from_slice(&call(&h1, Method::POST, "/v1/endpoints", Some(body)).unwrap()).unwrap();
    assert_eq!(pending.state, "pending", "{pending:?}");
    assert!(pending.reason.contains(&late_port), "the reason should name the missing interface: {pending:?}");
    assert_eq!(local_endpoints_in_maps(&lab, "h1"), 1, "a pending endpoint is not in the maps");
    host.ip(&["link", "add", &late_port, "type", "veth", "peer", "name", "eth0", "netns", late.name()]).unwrap();
    host.ip(&["link", "set", &late_port, "up"]).unwrap();
    late.ip(&["link", "set", "eth0", "address", "02:00:00:00:61:03", "mtu", &OVERLAY_MTU.to_string(), "up"]).unwrap();
    late.ip(&["addr", "add", "10.10.0.3/24", "dev", "eth0"]).unwrap();
    wait_for("the late endpoint to be applied", Duration::from_secs(10), || {
        endpoints(&h1).iter().any(|e| e.id == late_port && e.state == "applied")
    });
    let (sent, received) = ping(&late, C1_IP, 3).unwrap();
    assert_eq!(received, sent, "the late container should reach c1 on the same host\n{}", lab.agent_logs());

    // Removing c1's endpoint stops its traffic and takes it out of the maps.
    call(&h1, Method::DELETE, &format!("/v1/endpoints/{port}"), None).unwrap();
    assert_eq!(local_endpoints_in_maps(&lab, "h1"), 1, "only the late endpoint should stay in the maps");
    let (_, received) = ping(c1, C2_IP, 2).unwrap();
    assert_eq!(received, 0, "after removing c1's endpoint, c1 should not reach c2");
    let missing = call(&h1, Method::DELETE, &format!("/v1/endpoints/{port}"), None).unwrap_err();
    assert_eq!(missing.status, 404, "{missing:?}");
    let in_use = call(&h1, Method::DELETE, "/v1/networks/blue", None).unwrap_err();
    assert_eq!(in_use.status, 409, "a network with endpoints cannot go: {in_use:?}");
}

#[test]
fn api_endpoints_survive_kill_9_without_loss_and_only_root_reaches_the_socket() {
    let mut lab = lab("apikill");
    let bin = overlay_binary().unwrap();
    lab.start_agents(&bin).expect("starting the agents");
    let h1 = socket(&lab, "h1");
    let port = lab.container("h1", "c").port.clone();
    call(&h1, Method::POST, "/v1/networks", Some(json!({"name": "blue", "vni": 100}))).unwrap();
    call(&h1, Method::POST, "/v1/endpoints", Some(json!({"network": "blue", "interface": port, "mac": format_mac(&C1_MAC), "ipv4": C1_IP.to_string()}))).unwrap();

    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&h1).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket should be root's only, found mode {mode:o}");
    let state = lab.dir.join("run").join("h1.api.json");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API state file should be root's only, found mode {mode:o}");
    let status = lab.dir.join("run").join("h1.json");
    let mode = std::fs::metadata(&status).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the status file should be root's only, found mode {mode:o}");
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["endpoint", "ls", "--socket"])
        .arg(&h1)
        .output()
        .expect("running setpriv");
    let text = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(!as_nobody.status.success() && text.contains("ermission denied"), "an unprivileged user must not reach the API: {text}");
    // The pins control the node's traffic: their directories are root's
    // only, so an unprivileged user can neither read a counter nor open a
    // map (BPF_OBJ_GET needs the path), whatever unprivileged_bpf_disabled says.
    let pins = lab.bpffs_dir().join("h1");
    for dir in [pins.clone(), pins.join("maps"), pins.join("links")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} should be root's only, found mode {mode:o}", dir.display());
    }
    let a_map = std::fs::read_dir(pins.join("maps")).unwrap().flatten().next().expect("a pinned map").path();
    for (what, program, args) in [
        ("read the counters", bin.to_str().unwrap(), vec!["stats", "--node", "h1", "--bpffs-dir", lab.bpffs_dir().to_str().unwrap(), "--run-dir", lab.dir.join("run").to_str().unwrap()]),
        ("reach a pinned map", "stat", vec![a_map.to_str().unwrap()]),
    ] {
        let as_nobody = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
            .args(&args)
            .output()
            .expect("running setpriv");
        let text = format!("{}{}", String::from_utf8_lossy(&as_nobody.stdout), String::from_utf8_lossy(&as_nobody.stderr));
        assert!(!as_nobody.status.success() && text.contains("ermission denied"), "an unprivileged user must not {what}, it got (exit {}):\n{text}", as_nobody.status);
    }

    // kill -9 under a ping flood, restart: the API's endpoint keeps forwarding.
    let c1 = &lab.container("h1", "c").netns;
    let (sent, received) = ping(c1, C2_IP, 3).unwrap();
    assert_eq!(received, sent, "the API's endpoint should forward before the kill\n{}", lab.agent_logs());
    let flood = c1
        .command("ping")
        .args(["-q", "-i", "0.002", "-c", "3000", "-W", "2", &C2_IP.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let index = lab.agents.iter().position(|a| a.host == "h1").unwrap();
    lab.agents[index].kill();
    std::thread::sleep(Duration::from_millis(500));
    lab.agents[index] = lab.start_agent(0, &bin).expect("restarting h1's agent");
    let output = flood.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("3000 packets transmitted, 3000 received"), "expected no loss across kill -9 and restart:\n{summary}\n{}", lab.agent_logs());
    let after = endpoints(&h1);
    assert!(after.iter().any(|e| e.id == port && e.state == "applied"), "the restarted agent should still carry the API endpoint: {after:?}");
}

fn allocate(socket: &Path, network: &str, body: Value) -> Result<AllocationView, ApiError> {
    call(socket, Method::POST, &format!("/v1/networks/{network}/addresses"), Some(body)).map(|b| serde_json::from_slice(&b).unwrap())
}

fn allocated(socket: &Path, network: &str) -> Vec<AllocationView> {
    serde_json::from_slice(&call(socket, Method::GET, &format!("/v1/networks/{network}/addresses"), None).unwrap()).unwrap()
}

#[test]
fn addresses_are_handed_out_once_within_the_range_and_survive_kill_9() {
    let mut lab = lab("apialloc");
    let bin = overlay_binary().unwrap();
    lab.start_agents(&bin).expect("starting the agents");
    let h1 = socket(&lab, "h1");
    let ip = |last: u8| Ipv4Addr::new(10, 30, 0, last);
    call(&h1, Method::POST, "/v1/networks", Some(json!({"name": "alloc", "vni": 300, "subnet": "10.30.0.0/24", "ip_range": "10.30.0.0/29"}))).unwrap();
    let outside = call(&h1, Method::POST, "/v1/networks", Some(json!({"name": "bad", "vni": 301, "subnet": "10.31.0.0/24", "ip_range": "10.32.0.0/29"}))).unwrap_err();
    assert_eq!((outside.status, outside.field.as_str(), outside.value.as_str()), (400, "ip_range", "10.32.0.0/29"), "{outside:?}");

    // An endpoint (pending: its interface does not exist) holds 10.30.0.3.
    call(&h1, Method::POST, "/v1/endpoints", Some(json!({"network": "alloc", "interface": "nosuchport", "id": "held", "ipv4": ip(3).to_string()}))).unwrap();

    // The lowest free host addresses of the range, skipping the network address and the endpoint's.
    let first = allocate(&h1, "alloc", json!({"owner": "test:a"})).unwrap();
    assert_eq!((first.address, first.prefix_len, first.owner.as_str()), (ip(1), 24, "test:a"), "{first:?}");
    let handed: Vec<Ipv4Addr> = (0..5).map(|n| allocate(&h1, "alloc", json!({"owner": format!("test:{n}")})).unwrap().address).collect();
    assert_eq!(handed, vec![ip(2), ip(4), ip(5), ip(6), ip(7)], "allocation order within 10.30.0.0/29");
    let full = allocate(&h1, "alloc", json!({})).unwrap_err();
    assert_eq!((full.status, full.kind.as_str()), (409, "exhausted"), "{full:?}");

    // Static requests: taken ones name the holder; outside the subnet is refused; inside but outside the range is fine.
    let taken = allocate(&h1, "alloc", json!({"address": ip(2).to_string()})).unwrap_err();
    assert_eq!((taken.status, taken.field.as_str(), taken.holder.as_deref()), (409, "address", Some("test:0")), "{taken:?}");
    let by_endpoint = allocate(&h1, "alloc", json!({"address": ip(3).to_string()})).unwrap_err();
    assert_eq!((by_endpoint.status, by_endpoint.holder.as_deref()), (409, Some("api endpoint held")), "{by_endpoint:?}");
    let foreign = allocate(&h1, "alloc", json!({"address": "10.99.0.1"})).unwrap_err();
    assert_eq!((foreign.status, foreign.field.as_str(), foreign.value.as_str()), (400, "address", "10.99.0.1"), "{foreign:?}");
    let broadcast = allocate(&h1, "alloc", json!({"address": "10.30.0.255"})).unwrap_err();
    assert_eq!((broadcast.status, broadcast.field.as_str()), (400, "address"), "{broadcast:?}");
    assert_eq!(allocate(&h1, "alloc", json!({"address": "10.30.0.200", "owner": "test:static"})).unwrap().address, ip(200));
    for (body, field) in [(json!({"address": 5}), "address"), (json!({"owner": 5}), "owner"), (json!({"colour": "red"}), "colour")] {
        let refusal = allocate(&h1, "alloc", body.clone()).unwrap_err();
        assert_eq!((refusal.status, refusal.field.as_str()), (400, field), "{body}: {refusal:?}");
    }
    let unknown = allocate(&h1, "nosuch", json!({})).unwrap_err();
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(allocated(&h1, "alloc").len(), 7, "the refusals should have allocated nothing");

    // Release, twice; the address comes back.
    call(&h1, Method::DELETE, &format!("/v1/networks/alloc/addresses/{}", ip(4)), None).unwrap();
    let again = call(&h1, Method::DELETE, &format!("/v1/networks/alloc/addresses/{}", ip(4)), None).unwrap_err();
    assert_eq!(again.status, 404, "{again:?}");
    assert_eq!(allocate(&h1, "alloc", json!({"owner": "test:back"})).unwrap().address, ip(4));

    // kill -9 and restart: the allocations are still there and still held.
    let before = allocated(&h1, "alloc");
    let index = lab.agents.iter().position(|a| a.host == "h1").unwrap();
    lab.agents[index].kill();
    lab.agents[index] = lab.start_agent(0, &bin).expect("restarting h1's agent");
    assert_eq!(allocated(&h1, "alloc"), before, "allocations should survive kill -9");
    let full = allocate(&h1, "alloc", json!({})).unwrap_err();
    assert_eq!((full.status, full.kind.as_str()), (409, "exhausted"), "after the restart, the range is still full: {full:?}");
}
