//! The IP/UDP/TCP counters of a namespace (/proc/net/snmp), read from a
//! thread inside it: they say what reached a container's stack, and why
//! packets were dropped there (such as checksum errors).
use std::collections::HashMap;

use anyhow::Context;
use overlay_lab::netns::Netns;

/// Counters by `Protocol.Name`, such as `Udp.InDatagrams`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snmp(HashMap<String, u64>);

impl Snmp {
    /// The counters of `netns` now.
    pub fn read(netns: &Netns) -> anyhow::Result<Snmp> {
        // /proc/thread-self/net is the calling thread's namespace (/proc/net
        // would be the process's), and the thread runs inside `netns`.
        let text = netns
            .run_inside(|| std::fs::read_to_string("/proc/thread-self/net/snmp").context("reading /proc/thread-self/net/snmp"))
            .with_context(|| format!("reading the counters of {}", netns.name()))?;
        Ok(parse(&text))
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// `name` now less `name` in `earlier`.
    pub fn delta(&self, earlier: &Snmp, name: &str) -> u64 {
        self.get(name).saturating_sub(earlier.get(name))
    }
}

/// The file holds pairs of lines: `Udp: Name1 Name2 ...` then `Udp: 1 2 ...`.
fn parse(text: &str) -> Snmp {
    let mut counters = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((protocol, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':')) else { continue };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            // Some counters (Tcp.MaxConn) are signed; those are not used.
            if let Ok(value) = value.parse::<u64>() {
                counters.insert(format!("{protocol}.{name}"), value);
            }
        }
    }
    Snmp(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_of_lines_become_named_counters() {
        let text = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
                    Udp: 10 1 2 20 3 0 5\nTcp: RtoAlgorithm MaxConn InCsumErrors\nTcp: 1 -1 7\n";
        let snmp = parse(text);
        assert_eq!((snmp.get("Udp.InDatagrams"), snmp.get("Udp.RcvbufErrors"), snmp.get("Udp.InCsumErrors")), (10, 3, 5));
        assert_eq!((snmp.get("Tcp.InCsumErrors"), snmp.get("Tcp.MaxConn")), (7, 0));
    }
}
