//! The `overlay-cni` plugin invoked directly, as a runtime invokes it,
//! against real agents (cluster mode, etcd on the underlay): every bad
//! invocation gets the spec's error code and builds nothing; ADD builds a
//! container that reaches another host's; CHECK notices an interface
//! deleted behind its back; DEL is idempotent (twice, and after the
//! namespace is gone); GC removes what `cni.dev/valid-attachments` does not
//! list and keeps what it lists; as another plugin's IPAM it hands out
//! addresses and builds nothing.
use std::{net::Ipv4Addr, path::Path, time::{Duration, Instant}};

use overlay::{
    api::{
        client::{self, Method},
        views::EndpointView,
    },
    cni::conf::{address_owner, host_interface},
};
use overlay_lab::{
    cni::{CniEnv, CniLab, Invocation, NETWORK, invoke},
    etcd,
    lab::{cni_binary, overlay_binary}, traffic::{ping, tcp_transfer},
    netns::Netns,
};
use serde_json::{Value, json};

fn endpoints(socket: &Path) -> Vec<EndpointView> {
    let answer = client::call_blocking(socket, Method::GET, "/v1/endpoints", None).expect("listing endpoints");
    serde_json::from_slice(&answer.body).expect("decoding endpoints")
}

/// The owners of the network's allocated addresses.
fn address_owners(socket: &Path) -> Vec<String> {
    let answer = client::call_blocking(socket, Method::GET, &format!("/v1/networks/{NETWORK}/addresses"), None).expect("listing addresses");
    let rows: Vec<Value> = serde_json::from_slice(&answer.body).expect("decoding addresses");
    rows.iter().map(|row| row["owner"].as_str().unwrap_or_default().to_owned()).collect()
}

fn netns_path(netns: &Netns) -> String {
    format!("/var/run/netns/{}", netns.name())
}

fn run(env: &CniEnv, stdin: &Value) -> Invocation {
    invoke(&cni_binary().unwrap(), env, &stdin.to_string()).expect("running overlay-cni")
}

fn expect_success(what: &str, invocation: Invocation) -> Value {
    assert_eq!(invocation.code, 0, "{what}: expected success, got exit {} with {} (stderr: {})", invocation.code, invocation.stdout, invocation.stderr);
    invocation.stdout
}

fn expect_error(what: &str, invocation: &Invocation, code: u64, details_contain: &str) {
    let details = invocation.stdout["details"].as_str().unwrap_or_default();
    assert!(
        invocation.error_code() == code && details.contains(details_contain),
        "{what}: expected CNI error {code} whose details name {details_contain:?}, got exit {} with {}",
        invocation.code,
        invocation.stdout
    );
}

/// The container's address from an ADD result (either layout).
fn result_address(result: &Value) -> Ipv4Addr {
    let text = result["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("no ips[0].address in {result}"));
    text.split('/').next().unwrap().parse().unwrap_or_else(|_| panic!("not an address: {text}"))
}

fn links(netns: &Netns) -> String {
    String::from_utf8_lossy(&netns.ip(&["-o", "link", "show"]).unwrap().stdout).into_owned()
}

#[test]
fn bad_invocations_get_the_spec_codes_and_build_nothing() {
    let container = Netns::new("cnierr", "c").unwrap();
    let path = netns_path(&container);
    let good = json!({"cniVersion": "1.0.0", "name": NETWORK, "type": "overlay-cni", "agent_socket": "/nonexistent/overlay.sock"});
    let add = CniEnv::attachment("ADD", "c0ffee", &path, "eth0");
    let with = |key: &str, value: Value| {
        let mut conf = good.clone();
        conf[key] = value;
        conf
    };

    let version = expect_success("VERSION", run(&CniEnv { command: "VERSION".into(), ..CniEnv::default() }, &good));
    let supported: Vec<&str> = version["supportedVersions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(supported.contains(&"0.4.0") && supported.contains(&"1.1.0"), "VERSION: {version}");
    // VERSION does not read stdin (the plugin decodes it only for the other commands).
    expect_success("VERSION with stdin that is not JSON", invoke(&cni_binary().unwrap(), &CniEnv { command: "VERSION".into(), ..CniEnv::default() }, "[").unwrap());

    let malformed = invoke(&cni_binary().unwrap(), &add, "{\"cniVersion\": \"1.0.0\", \"name\": ").unwrap();
    expect_error("malformed stdin", &malformed, 6, "");
    // JSON whose value has the wrong type: still 6 (it does not unmarshal), naming the key.
    expect_error("a numeric name", &run(&add, &with("name", json!(5))), 6, "name: invalid type: integer `5`");
    expect_error("a list for ipam", &run(&add, &with("ipam", json!([]))), 6, "ipam: invalid type: sequence");
    expect_error("a boolean cniVersion", &run(&add, &with("cniVersion", json!(true))), 6, "cniVersion: invalid type: boolean `true`");
    let mut no_netns = add.clone();
    no_netns.netns = None;
    expect_error("ADD without CNI_NETNS", &run(&no_netns, &good), 4, "CNI_NETNS");
    expect_error("ADD without CNI_NETNS, ipam a list", &run(&no_netns, &with("ipam", json!([]))), 4, "CNI_NETNS");
    let mut no_command = add.clone();
    no_command.command = "FROB".into();
    expect_error("an unknown CNI_COMMAND", &run(&no_command, &good), 4, "");
    expect_error("an unsupported cniVersion", &run(&add, &with("cniVersion", json!("9.9.9"))), 1, "9.9.9");
    expect_error("GC in a 1.0.0 configuration", &run(&CniEnv { command: "GC".into(), path: Some("/opt/cni/bin".into()), ..CniEnv::default() }, &good), 1, "GC");
    expect_error("a misspelt key", &run(&add, &with("agent_sockt", json!("/x"))), 7, "agent_sockt");
    let mut no_socket = good.clone();
    no_socket.as_object_mut().unwrap().remove("agent_socket");
    expect_error("no agent_socket", &run(&add, &no_socket), 7, "agent_socket");
    expect_error("a foreign ipam", &run(&add, &with("ipam", json!({"type": "host-local"}))), 7, "ipam.type");
    let mut bad_ip = add.clone();
    bad_ip.args = Some("IgnoreUnknown=1;IP=10.10.0.300".into());
    expect_error("CNI_ARGS IP=10.10.0.300", &run(&bad_ip, &good), 4, "10.10.0.300");
    expect_error("ADD with no agent", &run(&add, &good), 11, "/nonexistent/overlay.sock");
    let status = CniEnv { command: "STATUS".into(), ..CniEnv::default() };
    expect_error("STATUS with no agent", &run(&status, &with("cniVersion", json!("1.1.0"))), 50, "/nonexistent/overlay.sock");
    let missing_ns = CniEnv::attachment("ADD", "c0ffee", "/var/run/netns/ovl-cnierr-none", "eth0");
    expect_error("ADD into a namespace that does not exist", &run(&missing_ns, &good), 8, "ovl-cnierr-none");

    let inside = links(&container);
    assert_eq!(inside.lines().count(), 1, "refused invocations must build nothing in the container, found:\n{inside}");
}

#[test]
fn add_reaches_across_hosts_check_sees_deletions_and_del_is_idempotent() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let lab = CniLab::start("cniadd", 2).expect("starting the lab");
    let c1 = Netns::new("cniadd", "c1").unwrap();
    let c2 = Netns::new("cniadd", "c2").unwrap();
    let (id1, id2) = ("a1b2c3d4e5f60001", "a1b2c3d4e5f60002");

    // h1 speaks 1.0.0, h2 0.4.0 (what Podman 4 reads).
    let conf1 = lab.conf("h1", "1.0.0");
    let added1 = expect_success("ADD c1 on h1", run(&CniEnv::attachment("ADD", id1, &netns_path(&c1), "eth0"), &conf1));
    assert_eq!(added1["cniVersion"], "1.0.0", "{added1}");
    assert_eq!((added1["interfaces"][1]["name"].as_str(), added1["interfaces"][1]["sandbox"].as_str()), (Some("eth0"), Some(netns_path(&c1).as_str())), "{added1}");
    assert_eq!(added1["interfaces"][0]["name"].as_str(), Some(host_interface(id1, "eth0").as_str()), "{added1}");
    let conf2 = lab.conf("h2", "0.4.0");
    let added2 = expect_success("ADD c2 on h2", run(&CniEnv::attachment("ADD", id2, &netns_path(&c2), "eth0"), &conf2));
    assert_eq!((added2["cniVersion"].as_str(), added2["ips"][0]["version"].as_str()), (Some("0.4.0"), Some("4")), "a 0.4.0 result: {added2}");
    let (ip1, ip2) = (result_address(&added1), result_address(&added2));
    assert_ne!(ip1, ip2, "two containers got one address");
    for (netns, ip, result) in [(&c1, ip1, &added1), (&c2, ip2, &added2)] {
        let shown = String::from_utf8_lossy(&netns.ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap().stdout).into_owned();
        assert!(shown.contains(&format!("{ip}/24")), "eth0 should hold {ip}/24: {shown}");
        let link = String::from_utf8_lossy(&netns.ip(&["-o", "link", "show", "eth0"]).unwrap().stdout).into_owned();
        let mac = result["interfaces"][1]["mac"].as_str().unwrap();
        assert!(link.contains("mtu 1450") && link.contains(mac) && link.contains("state UP"), "eth0 should be up with MTU 1450 and MAC {mac}: {link}");
    }

    // Across hosts, once h2 has learned c1 from etcd (and h1 c2).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ping(&c1, ip2, 1).is_ok_and(|(_, received)| received == 1) {
        assert!(Instant::now() < deadline, "c1 ({ip1}) did not reach c2 ({ip2}) across hosts in 30 s\n{}", lab.lab.agent_logs());
    }
    let (sent, received) = ping(&c2, ip1, 3).unwrap();
    assert_eq!(received, sent, "c2 should reach c1 without loss");
    let transfer = tcp_transfer(&c1, &c2, ip2, 4 << 20).expect("TCP from c1 to c2");
    assert_eq!((transfer.bytes_received, transfer.first_mismatch), (4 << 20, None), "4 MiB across hosts, every byte checked: {transfer:?}");

    // CHECK with the ADD result as prevResult passes, then fails once eth0 is deleted behind its back.
    let mut check_conf = conf1.clone();
    check_conf["prevResult"] = added1.clone();
    let check = CniEnv::attachment("CHECK", id1, &netns_path(&c1), "eth0");
    expect_success("CHECK of a healthy c1", run(&check, &check_conf));
    c1.ip(&["link", "del", "eth0"]).unwrap();
    let checked = run(&check, &check_conf);
    assert_eq!(checked.error_code(), 999, "CHECK after eth0 was deleted should fail with our code, got {checked:?}");

    // DEL: the endpoint and the address go; twice is fine; so is DEL after the namespace went.
    let del1 = CniEnv::attachment("DEL", id1, &netns_path(&c1), "eth0");
    expect_success("DEL c1", run(&del1, &conf1));
    let h1 = lab.socket("h1");
    assert!(!endpoints(&h1).iter().any(|e| e.interface == host_interface(id1, "eth0")), "c1's endpoint should be gone: {:?}", endpoints(&h1));
    assert!(!address_owners(&h1).contains(&address_owner(id1, "eth0")), "c1's address should be released: {:?}", address_owners(&h1));
    expect_success("DEL c1 again", run(&del1, &conf1));
    let c2_path = netns_path(&c2);
    drop(c2);
    expect_success("DEL c2 after its namespace went", run(&CniEnv::attachment("DEL", id2, &c2_path, "eth0"), &conf2));
    let h2_links = links(&lab.lab.host("h2").netns);
    assert!(!h2_links.contains(&host_interface(id2, "eth0")), "c2's host end should be gone from h2:\n{h2_links}");
    assert!(endpoints(&lab.socket("h2")).is_empty(), "h2 should have no endpoint left: {:?}", endpoints(&lab.socket("h2")));
}

#[test]
fn gc_removes_attachments_not_listed_and_a_taken_address_is_refused() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let lab = CniLab::start("cnigc", 1).expect("starting the lab");
    let h1 = lab.socket("h1");
    let conf = lab.conf("h1", "1.1.0");
    let (kept, stale) = (Netns::new("cnigc", "kept").unwrap(), Netns::new("cnigc", "stale").unwrap());
    let (kept_id, stale_id) = ("9e9e0000000000a1", "9e9e0000000000a2");

    // A static address and MAC (Podman's --ip and --mac-address).
    let mut add_kept = CniEnv::attachment("ADD", kept_id, &netns_path(&kept), "eth0");
    add_kept.args = Some("IgnoreUnknown=1;K8S_POD_NAME=kept;IP=10.10.0.50;MAC=02:00:00:00:aa:01".into());
    let added = expect_success("ADD with IP= and MAC=", run(&add_kept, &conf));
    assert_eq!((result_address(&added), added["interfaces"][1]["mac"].as_str()), (Ipv4Addr::new(10, 10, 0, 50), Some("02:00:00:00:aa:01")), "{added}");
    // The MAC through runtimeConfig (the `mac` capability).
    let add_stale = CniEnv::attachment("ADD", stale_id, &netns_path(&stale), "eth0");
    let mut stale_conf = conf.clone();
    stale_conf["runtimeConfig"] = json!({"mac": "02:00:00:00:aa:02"});
    let added = expect_success("ADD with runtimeConfig.mac", run(&add_stale, &stale_conf));
    assert_eq!(added["interfaces"][1]["mac"].as_str(), Some("02:00:00:00:aa:02"), "{added}");

    // The same ADDs again: refused (the address is held; the veth exists),
    // and the first attachments keep their veths, endpoints and addresses.
    expect_error("a repeated ADD with IP=", &run(&add_kept, &conf), 999, "10.10.0.50");
    expect_error("a repeated ADD", &run(&add_stale, &stale_conf), 999, "exists");
    for (id, netns) in [(kept_id, &kept), (stale_id, &stale)] {
        expect_success("CHECK after a repeated ADD", run(&CniEnv::attachment("CHECK", id, &netns_path(netns), "eth0"), &conf));
    }
    let mut owners = address_owners(&h1);
    owners.sort();
    assert_eq!(owners, vec![address_owner(kept_id, "eth0"), address_owner(stale_id, "eth0")], "a repeated ADD must give back the address it took");

    // The same address for a third container (runtimeConfig.ips, the `ips`
    // capability): refused naming it, nothing built.
    let third = Netns::new("cnigc", "third").unwrap();
    let mut third_conf = conf.clone();
    third_conf["runtimeConfig"] = json!({"ips": ["10.10.0.50/24"]});
    expect_error("ADD of a taken address", &run(&CniEnv::attachment("ADD", "9e9e0000000000a3", &netns_path(&third), "eth0"), &third_conf), 999, "10.10.0.50");
    assert_eq!(links(&third).lines().count(), 1, "a refused ADD must build nothing:\n{}", links(&third));
    assert_eq!(endpoints(&h1).len(), 2, "a refused ADD must register nothing: {:?}", endpoints(&h1));

    // GC keeps the listed attachment and removes the other (endpoint, veth, address).
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": kept_id, "ifname": "eth0"}]);
    let gc = CniEnv { command: "GC".into(), path: Some("/opt/cni/bin".into()), ..CniEnv::default() };
    expect_success("GC", run(&gc, &gc_conf));
    let left: Vec<String> = endpoints(&h1).into_iter().map(|e| e.interface).collect();
    assert_eq!(left, vec![host_interface(kept_id, "eth0")], "GC should leave only the listed attachment's endpoint");
    let owners = address_owners(&h1);
    assert!(owners.contains(&address_owner(kept_id, "eth0")) && !owners.contains(&address_owner(stale_id, "eth0")), "GC should release only the stale address: {owners:?}");
    assert!(!links(&stale).contains("eth0"), "the stale container's veth should be gone:\n{}", links(&stale));
    expect_success("CHECK of the kept container after GC", run(&CniEnv::attachment("CHECK", kept_id, &netns_path(&kept), "eth0"), &conf));
    let status = CniEnv { command: "STATUS".into(), ..CniEnv::default() };
    expect_success("STATUS with the agent up", run(&status, &conf));
    expect_success("DEL of the kept container", run(&CniEnv::attachment("DEL", kept_id, &netns_path(&kept), "eth0"), &conf));
    assert!(endpoints(&h1).is_empty() && address_owners(&h1).is_empty(), "after DEL nothing is left: {:?} {:?}", endpoints(&h1), address_owners(&h1));

    // As another plugin's IPAM: an address and nothing built; the main role's GC leaves it alone.
    let ipam_conf = json!({"cniVersion": "1.0.0", "name": "blue-macvlan", "type": "macvlan", "ipam": {"type": "overlay-cni", "agent_socket": h1, "network": NETWORK}});
    let ipam_env = |command: &str| CniEnv::attachment(command, "9e9e0000000000b1", &netns_path(&third), "net1");
    let allocated = expect_success("ADD as IPAM", run(&ipam_env("ADD"), &ipam_conf));
    assert!(allocated.get("interfaces").is_none() && result_address(&allocated).octets()[..3] == [10, 10, 0], "an IPAM result is an address of the network and no interface: {allocated}");
    assert_eq!(links(&third).lines().count(), 1, "the IPAM role builds nothing:\n{}", links(&third));
    assert_eq!(address_owners(&h1), vec!["cni-ipam:9e9e0000000000b1:net1".to_owned()]);
    let mut gc_none = conf.clone();
    gc_none["cni.dev/valid-attachments"] = json!([]);
    expect_success("GC of the main role with nothing valid", run(&gc, &gc_none));
    expect_success("CHECK as IPAM after the main role's GC", run(&ipam_env("CHECK"), &ipam_conf));
    expect_success("DEL as IPAM", run(&ipam_env("DEL"), &ipam_conf));
    assert!(address_owners(&h1).is_empty(), "DEL as IPAM gives the address back: {:?}", address_owners(&h1));
    expect_success("DEL as IPAM again", run(&ipam_env("DEL"), &ipam_conf));
    expect_error("CHECK as IPAM after DEL", &run(&ipam_env("CHECK"), &ipam_conf), 999, "cni-ipam:9e9e0000000000b1:net1");
}

/// Found by the cluster churn (cluster_churn.rs): after an agent restart
/// its allocator had not read its blocks back from etcd until the next
/// allocation in the network, so the addresses it listed were none, and a
/// DEL (which finds the container's address in that list by its owner)
/// left the address allocated in etcd for good.
#[test]
fn del_after_an_agent_restart_releases_the_address_allocated_before_it() {
    if let Some(why) = etcd::missing() {
        println!("skipped: {why}");
        return;
    }
    let mut lab = CniLab::start("cnirestart", 1).expect("starting the lab");
    let h1 = lab.socket("h1");
    let conf = lab.conf("h1", "1.0.0");
    let container = Netns::new("cnirestart", "c").unwrap();
    let id = "5e5e0000000000c1";
    let added = expect_success("ADD", run(&CniEnv::attachment("ADD", id, &netns_path(&container), "eth0"), &conf));
    let address = result_address(&added);
    assert_eq!(address_owners(&h1), vec![address_owner(id, "eth0")], "the address of the ADD should be listed");

    lab.lab.agents[0].stop();
    let url = lab.etcd.client_url(0);
    let agent = lab.lab.start_agent_with_args(0, &overlay_binary().unwrap(), &["--etcd", &url, "--etcd-lease-ttl", "5"]).expect("restarting h1's agent");
    lab.lab.agents[0] = agent;
    assert_eq!(address_owners(&h1), vec![address_owner(id, "eth0")], "the restarted agent should list the address {address} it handed out before");
    expect_success("DEL after the restart", run(&CniEnv::attachment("DEL", id, &netns_path(&container), "eth0"), &conf));
    assert!(address_owners(&h1).is_empty(), "DEL should release {address}: {:?}", address_owners(&h1));
    // etcd agrees: another container gets the address back.
    let again = Netns::new("cnirestart", "again").unwrap();
    let added = expect_success("ADD of another container", run(&CniEnv::attachment("ADD", "5e5e0000000000c2", &netns_path(&again), "eth0"), &conf));
    assert_eq!(result_address(&added), address, "the released {address} should be the lowest free again");
}
