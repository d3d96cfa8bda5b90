//! `overlay fdb`: a node's forwarding database as its pinned datapath
//! holds it: the configured entries (file, API, registry) and, in learning
//! networks, the learned ones, each marked as such.
use std::net::Ipv4Addr;

use anyhow::Context as _;
use overlay::{Datapath, model::MacAddr, pinning::PinDir};
use overlay_common::Reason;

/// Prints the FDB of `node`, pinned in `pins`.
pub fn show(node: &str, pins: &PinDir, json: bool) -> anyhow::Result<()> {
    let state = Datapath::pinned_state(pins).with_context(|| format!("reading the FDB of node {node} (is its datapath running?)"))?;
    let learned = Datapath::pinned_learned(pins).with_context(|| format!("reading the learned FDB of node {node}"))?;
    let configured: Vec<(u32, MacAddr, Ipv4Addr)> =
        state.fdb.iter().map(|(key, entry)| (key.vni, MacAddr(key.mac), Ipv4Addr::from(entry.vtep_addr_be.to_ne_bytes()))).collect();
    if json {
        let mut entries: Vec<serde_json::Value> = configured
            .iter()
            .map(|(vni, mac, vtep)| serde_json::json!({ "vni": vni, "mac": mac.to_string(), "vtep": vtep.to_string(), "source": "configured" }))
            .collect();
        entries.extend(learned.rows.iter().map(|row| {
            serde_json::json!({
                "vni": row.vni, "mac": row.mac.to_string(), "vtep": row.vtep.to_string(), "source": "learned",
                "age_seconds": row.age_seconds, "in_use": row.in_use,
            })
        }));
        let learning: Vec<serde_json::Value> =
            learned.learning_vnis.iter().map(|(vni, ageing)| serde_json::json!({ "vni": vni, "ageing_seconds": ageing })).collect();
        let events = serde_json::json!({
            "learned": learned.events(Reason::LEARNED),
            "learning_refused": learned.events(Reason::LEARNING_REFUSED),
        });
        println!("{}", serde_json::json!({ "node": node, "entries": entries, "learning": learning, "learning_events": events }));
        return Ok(());
    }
    println!("{:>9}  {:<17}  {:<15}  SOURCE", "VNI", "MAC", "VTEP");
    for (vni, mac, vtep) in &configured {
        println!("{vni:>9}  {mac:<17}  {:<15}  configured", vtep.to_string());
    }
    for row in &learned.rows {
        let state = if row.in_use { "" } else { ", unused (aged out, not learning, or configured)" };
        println!("{:>9}  {:<17}  {:<15}  learned ({} s ago{state})", row.vni, row.mac.to_string(), row.vtep.to_string(), row.age_seconds);
    }
    if !learned.learning_vnis.is_empty() {
        let vnis: Vec<String> = learned.learning_vnis.iter().map(|(vni, ageing)| format!("{vni} (ageing {ageing} s)")).collect();
        println!(
            "learning in VNI {}; events: {} learned, {} refused (configured MACs)",
            vnis.join(", "),
            learned.events(Reason::LEARNED),
            learned.events(Reason::LEARNING_REFUSED)
        );
    }
    Ok(())
}
