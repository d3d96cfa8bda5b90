//! nftables rules that drop or reject UDP to the VXLAN port, read from
//! `nft -j list ruleset` (see the module's parent for what each hook breaks).
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
};
use super::Finding;




/// Where in the packet's path an nftables hook sits, for VXLAN on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HookSide {
    /// ingress, prerouting, input: after XDP and TC ingress.
    Receive,
    /// output, postrouting: sockets' packets, not TC-redirected ones.
    Send,
}

/// A rule (or chain policy) that drops UDP to the VXLAN port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FirewallDrop {
    side: HookSide,
    /// `family table chain`.
    chain: String,
    /// The rule as nft prints it, or the policy.
    rule: String,
    /// A command that removes it, when it is a rule.
    removal: Option<String>,
    /// Some of the rule's conditions were not understood: it may not apply.
    conditional: bool,
}

fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file())
}

pub(super) fn firewall_findings(port: u16) -> Vec<Finding> {
    let Some(nft) = find_nft() else {
        return vec![Finding::skip("firewall", "nft is not installed: no nftables ruleset to read (iptables-legacy rules are never read)")];
    };
    let listing = |args: &[&str]| -> Result<String, String> {
        let output = Command::new(&nft).args(args).output().map_err(|e| format!("running {}: {e}", nft.display()))?;
        if !output.status.success() {
            return Err(format!("`nft {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let json = match listing(&["-j", "list", "ruleset"]) {
        Ok(json) => json,
        Err(error) => return vec![Finding::skip("firewall", format!("cannot read the nftables ruleset: {error}"))],
    };
    let text = listing(&["-a", "list", "ruleset"]).unwrap_or_default();
    let ruleset: serde_json::Value = match serde_json::from_str(&json) {
        Ok(value) => value,
        Err(error) => return vec![Finding::skip("firewall", format!("cannot parse `nft -j list ruleset`: {error}"))],
    };
    let (drops, rules) = firewall_drops(&ruleset, port, &rule_texts(&text));
    if drops.is_empty() {
        return vec![Finding::ok("firewall", format!("no nftables rule drops UDP port {port} ({rules} rule(s) read)"))];
    }
    drops
        .into_iter()
        .map(|drop| {
            let maybe = if drop.conditional { "may drop (some of its conditions were not evaluated)" } else { "drops" };
            let what = match drop.side {
                HookSide::Receive => format!(
                    "{} `{}` {maybe} UDP to port {port} arriving at this host. This node's datapath is unaffected (XDP and TC ingress decapsulate VXLAN before netfilter sees it), but a kernel vxlan device or any other VXLAN socket on this host would lose it",
                    drop.chain, drop.rule
                ),
                HookSide::Send => format!(
                    "{} `{}` {maybe} UDP to port {port} sent from this host's sockets. The datapath's encapsulated frames are unaffected (TC redirects them past netfilter), but a kernel vxlan device here, and doctor's own reachability probe, are not: a failing peer check may be this rule",
                    drop.chain, drop.rule
                ),
            };
            let fix = match &drop.removal {
                Some(removal) => format!("if something on this host needs kernel VXLAN on port {port}, remove it ({removal}) or accept the port before it; for this datapath alone nothing needs to change"),
                None => format!("accept UDP port {port} in that chain if something on this host needs kernel VXLAN; for this datapath alone nothing needs to change"),
            };
            Finding::warn("firewall", what, fix)
        })
        .collect()
}

/// `nft -a list ruleset` lines by (family, table, chain, handle), so a
/// finding quotes the rule as written.
fn rule_texts(text: &str) -> BTreeMap<(String, String, String, u64), String> {
    let mut rules = BTreeMap::new();
    let (mut table, mut chain) = (None::<(String, String)>, None::<String>);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, ..] => {
                table = Some((family.to_string(), name.to_string()));
                chain = None;
            }
            ["chain", name, ..] => chain = Some(name.to_string()),
            _ => {
                let (Some((family, name)), Some(chain)) = (&table, &chain) else { continue };
                let Some((rule, handle)) = line.rsplit_once("# handle ") else { continue };
                let Ok(handle) = handle.trim().parse() else { continue };
                if line.starts_with("type ") {
                    continue;
                }
                rules.insert((family.clone(), name.clone(), chain.clone(), handle), rule.trim().to_owned());
            }
        }
    }
    rules
}

/// Chains and rules of an `nft -j list ruleset` document that drop UDP to
/// `port`, and the number of rules read.
fn firewall_drops(ruleset: &serde_json::Value, port: u16, texts: &BTreeMap<(String, String, String, u64), String>) -> (Vec<FirewallDrop>, usize) {
    let items = ruleset["nftables"].as_array().cloned().unwrap_or_default();
    let key = |v: &serde_json::Value, chain_field: &str| {
        (v["family"].as_str().unwrap_or("").to_owned(), v["table"].as_str().unwrap_or("").to_owned(), v[chain_field].as_str().unwrap_or("").to_owned())
    };
    // Base chains: (family, table, name) -> (hook side, policy).
    let mut chains: BTreeMap<(String, String, String), (Option<HookSide>, String)> = BTreeMap::new();
    for chain in items.iter().filter_map(|i| i.get("chain")) {
        let side = match chain["hook"].as_str() {
            Some("ingress" | "prerouting" | "input") => Some(HookSide::Receive),
            Some("output" | "postrouting") => Some(HookSide::Send),
            _ => None,
        };
        // IPv6-only and ARP families never see IPv4 VXLAN.
        let family = chain["family"].as_str().unwrap_or("");
        let side = side.filter(|_| matches!(family, "ip" | "inet" | "netdev" | "bridge"));
        chains.insert(key(chain, "name"), (side, chain["policy"].as_str().unwrap_or("accept").to_owned()));
    }
    // Every chain a datagram to the port can pass through: the base chains,
    // and regular chains reached from them by jump or goto (transitively),
    // with the side of the base chain and whether reaching it depended on
    // conditions doctor cannot decide.
    let rules: Vec<&serde_json::Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    let mut reach: BTreeMap<(String, String, String), (HookSide, bool)> =
        chains.iter().filter_map(|(chain, (side, _))| side.map(|side| (chain.clone(), (side, false)))).collect();
    loop {
        let mut found = Vec::new();
        for rule in &rules {
            let Some(&(side, via_conditional)) = reach.get(&key(rule, "chain")) else { continue };
            let Some((target, conditional)) = jump_target(rule["expr"].as_array().map_or(&[][..], Vec::as_slice), port) else { continue };
            let target_key = (rule["family"].as_str().unwrap_or("").to_owned(), rule["table"].as_str().unwrap_or("").to_owned(), target);
            if !reach.contains_key(&target_key) {
                found.push((target_key, (side, via_conditional || conditional)));
            }
        }
        if found.is_empty() {
            break;
        }
        reach.extend(found);
    }
    let mut drops = Vec::new();
    let mut accepted: Vec<(String, String, String)> = Vec::new();
    let mut count = 0;
    for rule in &rules {
        count += 1;
        let chain_key = key(rule, "chain");
        let Some(&(side, via_conditional)) = reach.get(&chain_key) else { continue };
        let Some(mut effect) = rule_effect(rule["expr"].as_array().map_or(&[][..], Vec::as_slice), port) else { continue };
        effect.conditional |= via_conditional;
        let handle = rule["handle"].as_u64().unwrap_or(0);
        let (family, table, chain) = &chain_key;
        if effect.verdict == Verdict::Accept {
            if !effect.conditional {
                accepted.push(chain_key.clone());
            }
            continue;
        }
        // A rule after an unconditional accept of the port never sees it.
        if accepted.contains(&chain_key) {
            continue;
        }
        let text = texts.get(&(family.clone(), table.clone(), chain.clone(), handle)).cloned().unwrap_or_else(|| format!("rule handle {handle}"));
        drops.push(FirewallDrop {
            side,
            chain: format!("{family} {table} {chain}"),
            rule: text,
            removal: Some(format!("nft delete rule {family} {table} {chain} handle {handle}")),
            conditional: effect.conditional,
        });
    }
    for ((family, table, name), (side, policy)) in &chains {
        let Some(side) = side else { continue };
        if policy == "drop" && !accepted.contains(&(family.clone(), table.clone(), name.clone())) {
            drops.push(FirewallDrop {
                side: *side,
                chain: format!("{family} {table} {name}"),
                rule: "policy drop".to_owned(),
                removal: None,
                conditional: true,
            });
        }
    }
    (drops, count)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RuleEffect {
    verdict: Verdict,
    conditional: bool,
}

/// Whether an IPv4 UDP datagram to `port` can pass all of a rule's match
/// conditions: `None` when one of them can never hold, else whether some
/// depend on what doctor cannot decide.
fn conditions_for(exprs: &[serde_json::Value], port: u16) -> Option<bool> {
    let mut conditional = false;
    for condition in exprs.iter().filter_map(|expr| expr.get("match")) {
        match match_effect(condition, port) {
            Match::Never => return None,
            Match::Always => {}
            Match::Unknown => conditional = true,
        }
    }
    Some(conditional)
}

/// The chain a rule jumps or goes to (`jump`/`goto`), if an IPv4 UDP
/// datagram to `port` can take it, and whether that depends on conditions
/// doctor cannot decide.
fn jump_target(exprs: &[serde_json::Value], port: u16) -> Option<(String, bool)> {
    let target = exprs.iter().find_map(|expr| expr.get("jump").or_else(|| expr.get("goto")))?;
    let name = target["target"].as_str()?.to_owned();
    conditions_for(exprs, port).map(|conditional| (name, conditional))
}

/// What a rule does to an IPv4 UDP datagram to `port`: `None` when it
/// cannot match one or has no final verdict.
fn rule_effect(exprs: &[serde_json::Value], port: u16) -> Option<RuleEffect> {
    let conditional = conditions_for(exprs, port)?;
    let mut verdict = None;
    for expr in exprs {
        if expr.get("drop").is_some() || expr.get("reject").is_some() {
            verdict = Some(Verdict::Drop);
        } else if expr.get("accept").is_some() {
            verdict = Some(Verdict::Accept);
        } else if expr.get("jump").is_some() || expr.get("goto").is_some() || expr.get("queue").is_some() {
            return None; // decided elsewhere (firewall_drops follows jump and goto)
        }
    }
    verdict.map(|verdict| RuleEffect { verdict, conditional })
}

enum Match {
    Always,
    Never,
    Unknown,
}

fn match_effect(condition: &serde_json::Value, port: u16) -> Match {
    let op = condition["op"].as_str().unwrap_or("==");
    let left = &condition["left"];
    let right = &condition["right"];
    let positive = match op {
        "==" | "in" => true,
        "!=" => false,
        _ => return Match::Unknown,
    };
    let decide = |holds: bool| if holds == positive { Match::Always } else { Match::Never };
    if let Some(payload) = left.get("payload") {
        let protocol = payload["protocol"].as_str().unwrap_or("");
        let field = payload["field"].as_str().unwrap_or("");
        return match (protocol, field) {
            ("udp" | "th", "dport") => decide(value_contains(right, port as u64)),
            ("ip", "protocol") => decide(right.as_str() == Some("udp") || right.as_u64() == Some(17) || set_contains_str(right, "udp")),
            ("udp", _) | ("ip", _) | ("th", _) | ("ether", _) => Match::Unknown,
            // tcp, sctp, icmp, ip6... headers an IPv4 UDP datagram does not have.
            _ if positive => Match::Never,
            _ => Match::Unknown,
        };
    }
    if let Some(meta) = left.get("meta") {
        return match meta["key"].as_str().unwrap_or("") {
            "l4proto" => decide(right.as_str() == Some("udp") || right.as_u64() == Some(17) || set_contains_str(right, "udp")),
            "nfproto" => decide(right.as_str() == Some("ipv4")),
            _ => Match::Unknown,
        };
    }
    Match::Unknown
}

/// Whether an nft JSON value (a number, a range, a set of those) contains `n`.
fn value_contains(value: &serde_json::Value, n: u64) -> bool {
    if let Some(v) = value.as_u64() {
        return v == n;
    }
    if let Some(range) = value.get("range").and_then(|r| r.as_array()) {
        return matches!(range.as_slice(), [low, high] if low.as_u64().is_some_and(|l| l <= n) && high.as_u64().is_some_and(|h| n <= h));
    }
    if let Some(items) = value.get("set").and_then(|s| s.as_array()) {
        return items.iter().any(|item| value_contains(item, n));
    }
    false
}

fn set_contains_str(value: &serde_json::Value, text: &str) -> bool {
    value.get("set").and_then(|s| s.as_array()).is_some_and(|items| items.iter().any(|i| i.as_str() == Some(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(chain_hook: &str, policy: &str, exprs: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "nftables": [
            { "metainfo": { "json_schema_version": 1 } },
            { "table": { "family": "inet", "name": "filter", "handle": 1 } },
            { "chain": { "family": "inet", "table": "filter", "name": "c", "handle": 1, "type": "filter", "hook": chain_hook, "prio": 0, "policy": policy } },
            { "rule": { "family": "inet", "table": "filter", "chain": "c", "handle": 3, "expr": exprs } },
        ]})
    }

    fn udp_dport(op: &str, right: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "match": { "op": op, "left": { "payload": { "protocol": "udp", "field": "dport" } }, "right": right } })
    }

    #[test]
    fn firewall_rules_dropping_the_port_are_found() {
        let texts = BTreeMap::new();
        let drop = serde_json::json!({ "drop": null });
        let found = |hook: &str, policy: &str, exprs: serde_json::Value| firewall_drops(&ruleset(hook, policy, exprs), 4789, &texts).0;

        let input = found("input", "accept", serde_json::json!([udp_dport("==", 4789.into()), drop]));
        assert_eq!(input.len(), 1, "{input:?}");
        assert_eq!((input[0].side, input[0].conditional), (HookSide::Receive, false));
        assert_eq!(input[0].removal.as_deref(), Some("nft delete rule inet filter c handle 3"));
        let set = serde_json::json!({ "set": [8472, { "range": [4000, 5000] }] });
        assert_eq!(found("output", "accept", serde_json::json!([udp_dport("==", set), drop]))[0].side, HookSide::Send);
        assert!(found("input", "accept", serde_json::json!([udp_dport("==", 53.into()), drop])).is_empty(), "another port");
        assert!(found("input", "accept", serde_json::json!([udp_dport("!=", 4789.into()), drop])).is_empty(), "all but our port");
        assert!(found("forward", "accept", serde_json::json!([udp_dport("==", 4789.into()), drop])).is_empty(), "forward never sees VXLAN to us");
        let tcp = serde_json::json!({ "match": { "op": "==", "left": { "payload": { "protocol": "tcp", "field": "dport" } }, "right": 4789 } });
        assert!(found("input", "accept", serde_json::json!([tcp, drop])).is_empty(), "TCP only");
        let saddr = serde_json::json!({ "match": { "op": "==", "left": { "payload": { "protocol": "ip", "field": "saddr" } }, "right": "198.51.100.1" } });
        assert!(found("input", "accept", serde_json::json!([saddr, udp_dport("==", 4789.into()), { "reject": null }]))[0].conditional);
        assert_eq!(found("input", "accept", serde_json::json!([drop])).len(), 1, "drop everything");
        let policy = found("input", "drop", serde_json::json!([{ "counter": null }]));
        assert_eq!(policy.iter().map(|d| d.rule.as_str()).collect::<Vec<_>>(), ["policy drop"]);
        assert!(found("input", "drop", serde_json::json!([udp_dport("==", 4789.into()), { "accept": null }])).is_empty(), "policy drop, port accepted");
    }

    /// A drop in a regular chain counts when a base chain jumps (or goes)
    /// to it, even through another regular chain; a chain nothing reaches,
    /// or reached only by a jump the datagram cannot take, does not.
    #[test]
    fn firewall_rules_behind_jumps_are_found() {
        let texts = BTreeMap::new();
        let chain = |name: &str, hook: Option<&str>| match hook {
            Some(hook) => serde_json::json!({ "chain": { "family": "inet", "table": "filter", "name": name, "type": "filter", "hook": hook, "prio": 0, "policy": "accept" } }),
            None => serde_json::json!({ "chain": { "family": "inet", "table": "filter", "name": name } }),
        };
        let rule = |chain: &str, handle: u64, exprs: serde_json::Value| serde_json::json!({ "rule": { "family": "inet", "table": "filter", "chain": chain, "handle": handle, "expr": exprs } });
        let tcp_dport = serde_json::json!({ "match": { "op": "==", "left": { "payload": { "protocol": "tcp", "field": "dport" } }, "right": 22 } });
        let ruleset = serde_json::json!({ "nftables": [
            chain("input", Some("input")),
            chain("udp_checks", None),
            chain("vxlan", None),
            chain("ssh_only", None),
            chain("orphan", None),
            rule("input", 1, serde_json::json!([{ "jump": { "target": "udp_checks" } }])),
            rule("input", 2, serde_json::json!([tcp_dport, { "jump": { "target": "ssh_only" } }])),
            rule("udp_checks", 3, serde_json::json!([udp_dport("==", 4789.into()), { "goto": { "target": "vxlan" } }])),
            rule("vxlan", 4, serde_json::json!([{ "drop": null }])),
            rule("ssh_only", 5, serde_json::json!([{ "drop": null }])),
            rule("orphan", 6, serde_json::json!([udp_dport("==", 4789.into()), { "drop": null }])),
        ]});
        let (drops, count) = firewall_drops(&ruleset, 4789, &texts);
        assert_eq!(count, 6);
        let chains: Vec<(&str, HookSide, bool)> = drops.iter().map(|d| (d.chain.as_str(), d.side, d.conditional)).collect();
        assert_eq!(chains, [("inet filter vxlan", HookSide::Receive, false)], "expected only the drop behind input -> udp_checks -> vxlan, found {drops:?}");
    }

    #[test]
    fn rule_texts_are_keyed_by_chain_and_handle() {
        let text = "table inet filter { # handle 7\n\tchain input { # handle 1\n\t\ttype filter hook input priority filter; policy accept;\n\t\tudp dport 4789 drop # handle 2\n\t}\n}\n";
        let texts = rule_texts(text);
        assert_eq!(texts.get(&("inet".into(), "filter".into(), "input".into(), 2)).map(String::as_str), Some("udp dport 4789 drop"), "{texts:?}");
        assert_eq!(texts.len(), 1, "{texts:?}");
    }
}
