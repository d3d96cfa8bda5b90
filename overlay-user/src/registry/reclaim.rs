//! Reclaiming the IPAM blocks of nodes that are gone.
//!
//! A block is never deleted when its node goes (its containers may still
//! hold the addresses), so without this a network whose nodes come and go
//! runs out of blocks. The rule, applied by a node that needs a block when
//! none is unclaimed:
//!
//! 1. A block is *orphaned* when no `nodes/<holder>` record exists (the
//!    holder's lease expired or was revoked: it died, or it has been cut
//!    off for longer than its TTL).
//! 2. The first node to see an orphaned block marks it (`orphaned_since`,
//!    the time in Unix seconds), with a compare-and-swap on the block's mod
//!    revision that also requires the holder's node record to be absent.
//! 3. Once the grace period (`block_reclaim_grace`, 5 minutes by default,
//!    far above the lease TTL) has run from the mark, a node takes the block
//!    over with one transaction that requires the block unchanged since it
//!    was read and the holder's node record still absent. Two reclaimers
//!    racing both compare the same mod revision: exactly one wins; the
//!    other reads again and moves on.
//! 4. The addresses of the block that an endpoint record still claims
//!    (`addresses/<network>/<address>`, held by any node) stay allocated in
//!    the reclaimed block, labelled with the claimant, so they are never
//!    handed out again; only unclaimed addresses become free. The old
//!    holder's own endpoints were on its lease and went with it.
//! 5. A holder that comes back (a node cut off past the grace period) finds
//!    its block changed when it next writes it: it drops the block, takes
//!    a new one for later allocations, and fails the flush of allocations
//!    it made there meanwhile (the API hands those back). Its containers'
//!    addresses are re-registered with its endpoints; an address a new
//!    holder handed out in between is then refused as a conflict, reported
//!    on both sides, never duplicated (the address claim decides).
//! 6. A mark on a block whose holder is back is cleared by the next
//!    reclaimer that sees it (and by the holder's next write).
//!
//! Calico does the same with block affinities: a node's affinity is
//! released when the node is deleted, and the block's addresses still in
//! use keep their handles. The grace period stands in for Kubernetes' node
//! deletion: etcd leases expire on any partition, so the block waits long
//! enough for a partition to heal. Clocks: the grace is measured with the
//! reclaimers' wall clocks, which must agree to well within it.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{
    cidr::Ipv4NetExt,
    client::{Registry, get_values},
    problem::RegistryError,
    records::{BlockRecord, NetworkRecord, parse_claim},
};

/// The outcome of one pass over a network's blocks.
#[derive(Debug, Default)]
pub(super) struct ReclaimPass {
    /// A block this node now holds (its record and mod revision).
    pub reclaimed: Option<(BlockRecord, i64)>,
    /// When the next orphaned block becomes reclaimable, if one waits.
    pub next_due: Option<SystemTime>,
}

pub(super) fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// The names of the nodes that have a node record.
async fn live_nodes(registry: &Registry) -> Result<BTreeSet<String>, RegistryError> {
    let prefix = &registry.layout().node("");
    let response = registry
        .request(|mut client| async move { client.get(prefix.as_str(), Some(GetOptions::new().with_prefix().with_keys_only())).await })
        .await?;
    Ok(response.kvs().iter().filter_map(|kv| kv.key_str().ok()?.strip_prefix(prefix.as_str()).map(str::to_owned)).collect())
}

/// Marks, clears and reclaims what `blocks` (read with their mod
/// revisions) call for; returns the first block reclaimed for node `me`.
pub(super) async fn reclaim_pass(
    registry: &Registry,
    network: &NetworkRecord,
    me: &str,
    blocks: Vec<(BlockRecord, i64)>,
) -> Result<ReclaimPass, RegistryError> {
    let grace = registry.settings().block_reclaim_grace;
    let live = live_nodes(registry).await?;
    let mut pass = ReclaimPass::default();
    for (block, revision) in blocks {
        if block.node == me {
            continue;
        }
        let key = registry.layout().block(&network.name, IpAddr::V4(block.cidr.network()));
        let holder_key = registry.layout().node(&block.node);
        let unchanged = || Compare::mod_revision(key.as_str(), CompareOp::Equal, revision);
        let holder_gone = || Compare::create_revision(holder_key.as_str(), CompareOp::Equal, 0);
        match (live.contains(&block.node), block.orphaned_since) {
            (true, None) => {}
            (true, Some(_)) => {
                // The holder is back: the mark is stale.
                let cleared = BlockRecord { orphaned_since: None, ..block };
                let txn = Txn::new().when([unchanged()]).and_then([TxnOp::put(key.as_str(), cleared.to_json(), None)]);
                registry.txn(txn).await?;
            }
            (false, None) => {
                let since = now_seconds();
                let marked = BlockRecord { orphaned_since: Some(since), ..block };
                let txn = Txn::new().when([unchanged(), holder_gone()]).and_then([TxnOp::put(key.as_str(), marked.to_json(), None)]);
                if registry.txn(txn).await?.succeeded() {
                    log::info!(
                        "registry: block {} of network {} belongs to node {}, which is gone: reclaimable in {grace:?} unless it returns",
                        marked.cidr,
                        network.name,
                        marked.node
                    );
                    note_due(&mut pass, since, grace);
                }
            }
            (false, Some(since)) if now_seconds() < since.saturating_add(grace.as_secs()) => note_due(&mut pass, since, grace),
            (false, Some(_)) => {
                if let Some(reclaimed) = take_over(registry, network, me, block, revision).await? {
                    pass.reclaimed = Some(reclaimed);
                    return Ok(pass);
                }
            }
        }
    }
    Ok(pass)
}

fn note_due(pass: &mut ReclaimPass, since: u64, grace: Duration) {
    let due = UNIX_EPOCH + Duration::from_secs(since) + grace;
    pass.next_due = Some(pass.next_due.map_or(due, |earlier| earlier.min(due)));
}

/// Takes `block` over for `me`, keeping the addresses endpoint records
/// still claim; `None` when another reclaimer won or the holder returned.
async fn take_over(
    registry: &Registry,
    network: &NetworkRecord,
    me: &str,
    block: BlockRecord,
    revision: i64,
) -> Result<Option<(BlockRecord, i64)>, RegistryError> {
    let key = registry.layout().block(&network.name, IpAddr::V4(block.cidr.network()));
    let holder_key = registry.layout().node(&block.node);
    let claimed = claimed_addresses(registry, &network.name, &block).await?;
    let allocations: BTreeMap<Ipv4Addr, String> = claimed
        .into_iter()
        .map(|(address, mac)| (address, format!("endpoint {mac} (kept when block was reclaimed from node {})", block.node)))
        .collect();
    let record = BlockRecord { network: block.network.clone(), cidr: block.cidr, node: me.to_owned(), allocations, orphaned_since: None };
    let txn = Txn::new()
        .when([
            Compare::mod_revision(key.as_str(), CompareOp::Equal, revision),
            Compare::create_revision(holder_key.as_str(), CompareOp::Equal, 0),
        ])
        .and_then([TxnOp::put(key.as_str(), record.to_json(), None)]);
    let response = registry.txn(txn).await?;
    if !response.succeeded() {
        log::info!("registry: block {} of network {}: another node reclaimed it first, or node {} returned", block.cidr, network.name, block.node);
        return Ok(None);
    }
    log::warn!(
        "registry: node {me} reclaimed block {} of network {} from node {}, gone for the grace period; {} of its {} allocation(s) kept (their endpoints are still recorded)",
        block.cidr,
        network.name,
        block.node,
        record.allocations.len(),
        block.allocations.len()
    );
    let revision = response.header().map_or(0, |header| header.revision());
    Ok(Some((record, revision)))
}

/// The addresses of `block` that an endpoint record claims (whichever node
/// holds it), with the claimant's MAC. Every host address is asked, not
/// only the allocated ones: a static address needs no allocation.
async fn claimed_addresses(registry: &Registry, network: &str, block: &BlockRecord) -> Result<BTreeMap<Ipv4Addr, String>, RegistryError> {
    let first = u32::from(block.cidr.network());
    let addresses: Vec<Ipv4Addr> = (0..block.cidr.size()).map(|offset| Ipv4Addr::from(first + offset as u32)).collect();
    let mut claimed = BTreeMap::new();
    // etcd takes at most 128 operations per transaction (--max-txn-ops).
    for chunk in addresses.chunks(64) {
        let reads: Vec<TxnOp> = chunk.iter().map(|address| TxnOp::get(registry.layout().address_claim(network, IpAddr::V4(*address)), None)).collect();
        let response = registry.txn(Txn::new().and_then(reads)).await?;
        for (address, response) in chunk.iter().zip(response.op_responses()) {
            if let [Some(value)] = get_values::<1>(std::slice::from_ref(&response)) {
                claimed.insert(*address, parse_claim(&value).unwrap_or_else(|| "(unreadable claim)".to_owned()));
            }
        }
    }
    Ok(claimed)
}
