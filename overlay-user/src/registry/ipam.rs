//! Cluster-wide IPAM: each node claims blocks of a network's subnet
//! (`blocks/<network>/<base>`, /26 by default, as Calico does) with a
//! compare-and-swap create, and hands out addresses from its own blocks.
//!
//! Why no two nodes hand out one address, even racing: a block is created
//! by exactly one node (the create is conditional on the key not existing)
//! and only that node allocates from it; a node that loses a race for a
//! block tries the next one.
//!
//! Why allocation needs no round trip, and how it is still durable: the
//! block is the durable reservation. Once claimed, every address in it
//! belongs to this node, so picking one is a local decision made under a
//! lock and returned at once. The per-address record (which owner holds
//! which address) is written behind: a flusher task writes each changed
//! block with a compare-and-swap on the block's mod revision, coalescing
//! every allocation and release made meanwhile into one write; callers
//! that must know it is on disk (before answering a container runtime, say)
//! await [`Ipam::flush`]. While etcd is unreachable allocation goes on from
//! the blocks held, and the flusher catches up when etcd returns. What a
//! crash before a flush can lose is only the owner label of addresses this
//! node handed out, never another node's address: the node re-learns them
//! from its endpoints (whose address claims are durable and refuse
//! duplicates).
//!
//! A static request for an address in this node's block, or in an
//! unclaimed block (which this node then claims), is decided here too. One
//! in another node's block is refused ([`RegistryError::AddressInForeignBlock`],
//! or [`RegistryError::AddressTaken`] naming the holder if it is allocated):
//! writing into a block its owner allocates from without a round trip would
//! race with that owner's local decisions.
//!
//! IPv4 only; blocks stay claimed when their node goes (its containers may
//! still hold the addresses) until another node that needs a block
//! reclaims them after a grace period ([`super::reclaim`]); the cluster
//! status lists them.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::{
    cidr::{Ipv4NetExt, block_of},
    client::{Backoff, Registry},
    problem::{Holder, RegistryError},
    records::{BlockRecord, NetworkRecord},
};

/// This node's allocator over every network it allocates in.
pub struct Ipam {
    shared: Arc<Shared>,
    flusher: JoinHandle<()>,
}

struct Shared {
    registry: Registry,
    node: String,
    /// Serialises this node's decisions; held across a block claim (a
    /// round trip), never across a flush.
    pools: tokio::sync::Mutex<BTreeMap<String, Pool>>,
    /// Blocks with changes not yet written: (network, base) -> block.
    blocks: Mutex<BTreeMap<(String, Ipv4Addr), OwnedBlock>>,
    /// Bumped on every change; the flusher publishes the one it wrote.
    changes: Mutex<u64>,
    durable: watch::Sender<u64>,
    wake: Notify,
    /// Blocks another node reclaimed while this one was gone: the change
    /// numbers of each one's unwritten changes, (written, last], which
    /// were lost with it (see [`super::reclaim`]).
    lost: Mutex<Vec<(u64, u64)>>,
}

struct Pool {
    network: NetworkRecord,
    /// Bases of this node's blocks, in order.
    own: Vec<Ipv4Addr>,
}

#[derive(Clone)]
struct OwnedBlock {
    record: BlockRecord,
    mod_revision: i64,
    /// Change number of the last change, and of the last one written.
    changed: u64,
    written: u64,
}

impl Ipam {
    pub fn new(registry: Registry, node: &str) -> Ipam {
        let (durable, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            registry,
            node: node.to_owned(),
            pools: tokio::sync::Mutex::default(),
            blocks: Mutex::default(),
            changes: Mutex::new(0),
            durable,
            wake: Notify::new(),
            lost: Mutex::default(),
        });
        let flusher = tokio::spawn(flush_loop(shared.clone()));
        Ipam { shared, flusher }
    }

    /// Hands out the lowest free address of this node's blocks in
    /// `network`, claiming a new block when they are full (only then is
    /// etcd asked). The first call for a network also reads the network
    /// and this node's blocks.
    pub async fn allocate(&self, network: &str, owner: &str) -> Result<Ipv4Addr, RegistryError> {
        let mut pools = self.shared.pools.lock().await;
        let pool = self.shared.pool(&mut pools, network).await?;
        loop {
            if let Some(address) = self.shared.first_free(network, pool) {
                self.shared.record(network, address, Some(owner));
                return Ok(address);
            }
            let base = self.shared.claim_any_block(pool).await?;
            pool.own.push(base);
            pool.own.sort();
        }
    }

    /// Allocates one given address (a static request). Refused when it is
    /// not a host address of the network, when it is allocated (naming the
    /// holder), or when it lies in another node's block.
    pub async fn allocate_static(&self, network: &str, address: Ipv4Addr, owner: &str) -> Result<(), RegistryError> {
        let mut pools = self.shared.pools.lock().await;
        let pool = self.shared.pool(&mut pools, network).await?;
        if !pool.network.subnet.is_host(address) {
            return Err(RegistryError::AddressNotInNetwork {
                network: network.to_owned(),
                address: IpAddr::V4(address),
                subnet: pool.network.subnet.to_string(),
            });
        }
        let base = block_of(address, pool.network.block_prefix_len).network();
        if !self.shared.holds(network, base) {
            match self.shared.claim_block(&pool.network, base).await? {
                None => {
                    pool.own.push(base);
                    pool.own.sort();
                }
                Some(foreign) => {
                    return Err(match foreign.allocations.get(&address) {
                        Some(holder) => RegistryError::AddressTaken {
                            network: network.to_owned(),
                            address: IpAddr::V4(address),
                            holder: Holder::Allocation { node: foreign.node, owner: holder.clone() },
                        },
                        None => RegistryError::AddressInForeignBlock {
                            address: IpAddr::V4(address),
                            block: foreign.cidr.to_string(),
                            node: foreign.node,
                        },
                    });
                }
            }
        }
        let blocks = self.shared.blocks.lock().unwrap();
        if let Some(holder) = blocks[&(network.to_owned(), base)].record.allocations.get(&address) {
            return Err(RegistryError::AddressTaken {
                network: network.to_owned(),
                address: IpAddr::V4(address),
                holder: Holder::Allocation { node: self.shared.node.clone(), owner: holder.clone() },
            });
        }
        drop(blocks);
        self.shared.record(network, address, Some(owner));
        Ok(())
    }

    /// Returns an address to its block. `false` if this node had not
    /// allocated it.
    pub async fn release(&self, network: &str, address: Ipv4Addr) -> Result<bool, RegistryError> {
        let mut pools = self.shared.pools.lock().await;
        let pool = self.shared.pool(&mut pools, network).await?;
        let base = block_of(address, pool.network.block_prefix_len).network();
        let allocated = self.shared.blocks.lock().unwrap().get(&(network.to_owned(), base)).is_some_and(|block| block.record.allocations.contains_key(&address));
        if allocated {
            self.shared.record(network, address, None);
        }
        Ok(allocated)
    }

    /// Waits until every allocation and release made before the call is
    /// written to etcd. While etcd is unreachable this waits for it (the
    /// writer retries with backoff): bound it with a timeout where needed.
    /// Fails when a change it waits for was made in a block another node
    /// reclaimed meanwhile (this node was gone past the grace period).
    pub async fn flush(&self) -> Result<(), RegistryError> {
        let target = *self.shared.changes.lock().unwrap();
        let mut durable = self.shared.durable.subscribe();
        let before = *durable.borrow();
        durable.wait_for(|written| *written >= target).await.map_err(|_| RegistryError::Contended {
            what: "flushing allocations".into(),
            attempts: 0,
        })?;
        // Conservative: any lost change in the range waited for fails the flush.
        if self.shared.lost.lock().unwrap().iter().any(|(written, last)| *last > before && *written < target) {
            return Err(RegistryError::Contended {
                what: "writing allocations: their IPAM block was reclaimed by another node while this node was gone".into(),
                attempts: 1,
            });
        }
        Ok(())
    }

    /// This node's allocations in a network (address -> owner). The first
    /// call for a network reads this node's blocks, as allocation does: an
    /// agent restarted lists what it handed out before (and a runtime's
    /// DEL, which finds its address there by owner, releases it).
    pub async fn allocations(&self, network: &str) -> Result<BTreeMap<Ipv4Addr, String>, RegistryError> {
        self.shared.pool(&mut *self.shared.pools.lock().await, network).await?;
        let blocks = self.shared.blocks.lock().unwrap();
        Ok(blocks
            .iter()
            .filter(|((name, _), _)| name == network)
            .flat_map(|(_, block)| block.record.allocations.iter().map(|(address, owner)| (*address, owner.clone())))
            .collect())
    }
}

impl Drop for Ipam {
    fn drop(&mut self) {
        self.flusher.abort();
    }
}

impl Shared {
    /// The network's pool, read from etcd on first use.
    async fn pool<'a>(&self, pools: &'a mut BTreeMap<String, Pool>, network: &str) -> Result<&'a mut Pool, RegistryError> {
        if !pools.contains_key(network) {
            let Some((record, _)) = self.registry.network(network).await? else {
                return Err(RegistryError::UnknownNetwork(network.to_owned()));
            };
            let mut own = Vec::new();
            for (block, mod_revision) in self.read_blocks(network).await? {
                if block.node == self.node {
                    own.push(block.cidr.network());
                    self.adopt(block, mod_revision);
                }
            }
            pools.insert(network.to_owned(), Pool { network: record, own });
        }
        Ok(pools.get_mut(network).expect("inserted above"))
    }

    async fn read_blocks(&self, network: &str) -> Result<Vec<(BlockRecord, i64)>, RegistryError> {
        let prefix = &self.registry.layout().blocks(network);
        let response = self
            .registry
            .request(|mut client| async move { client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await })
            .await?;
        let mut blocks = Vec::new();
        for kv in response.kvs() {
            let key = kv.key_str().unwrap_or_default();
            match BlockRecord::parse(key, kv.value()) {
                Ok(block) => blocks.push((block, kv.mod_revision())),
                // Its base stays unusable: a create on that key fails.
                Err(problem) => log::warn!("registry: skipping IPAM block: {problem}"),
            }
        }
        Ok(blocks)
    }

    fn adopt(&self, mut record: BlockRecord, mod_revision: i64) {
        // A mark left while this node was gone is cleared by its next write.
        record.orphaned_since = None;
        let key = (record.network.clone(), record.cidr.network());
        let block = OwnedBlock { record, mod_revision, changed: 0, written: 0 };
        self.blocks.lock().unwrap().entry(key).or_insert(block);
    }

    /// Does this node hold the block at `base` (claimed, and not reclaimed by another since)?
    fn holds(&self, network: &str, base: Ipv4Addr) -> bool {
        self.blocks.lock().unwrap().contains_key(&(network.to_owned(), base))
    }

    fn first_free(&self, network: &str, pool: &Pool) -> Option<Ipv4Addr> {
        let blocks = self.blocks.lock().unwrap();
        pool.own.iter().find_map(|base| {
            // Absent: reclaimed by another node (see `flush_once`).
            let block = blocks.get(&(network.to_owned(), *base))?;
            crate::addresses::pick(pool.network.subnet, block.record.cidr, &block.record.allocations).ok()
        })
    }

    /// Notes an allocation (`Some(owner)`) or a release (`None`) and wakes
    /// the flusher.
    fn record(&self, network: &str, address: Ipv4Addr, owner: Option<&str>) {
        // The change number is taken under the blocks' lock, as the flusher
        // reads it: a change it counts as written is one it has seen.
        let mut blocks = self.blocks.lock().unwrap();
        let change = {
            let mut changes = self.changes.lock().unwrap();
            *changes += 1;
            *changes
        };
        let block = blocks
            .values_mut()
            .find(|block| block.record.network == network && block.record.cidr.contains(&address))
            .expect("the caller checked the block is this node's");
        match owner {
            Some(owner) => block.record.allocations.insert(address, owner.to_owned()),
            None => block.record.allocations.remove(&address),
        };
        block.changed = change;
        drop(blocks);
        self.wake.notify_one();
    }

    /// Claims the first unclaimed block of the subnet.
    async fn claim_any_block(&self, pool: &Pool) -> Result<Ipv4Addr, RegistryError> {
        let network = &pool.network;
        let count = 1u64 << (network.block_prefix_len - network.subnet.prefix_len());
        let blocks = self.read_blocks(&network.name).await?;
        // A set: with a thousand nodes a list made this quadratic.
        let taken: BTreeSet<Ipv4Addr> = blocks.iter().map(|(block, _)| block.cidr.network()).collect();
        for index in 0..count {
            let base = Ipv4Addr::from(u32::from(network.subnet.network()) + ((index as u32) << (32 - network.block_prefix_len)));
            if taken.contains(&base) {
                continue;
            }
            // A block claimed since the read is passed over, not a reason
            // to read again: 64 nodes starting together each re-reading
            // after every lost race gave up after 8 rounds.
            if self.claim_block(network, base).await?.is_none() {
                return Ok(base);
            }
        }
        // Every block is claimed: one of a node that is gone may be reclaimable.
        let pass = super::reclaim::reclaim_pass(&self.registry, network, &self.node, blocks).await?;
        if let Some((record, revision)) = pass.reclaimed {
            let base = record.cidr.network();
            self.adopt(record, revision);
            return Ok(base);
        }
        if let Some(due) = pass.next_due {
            let wait = due.duration_since(std::time::SystemTime::now()).unwrap_or_default();
            log::warn!("registry: network {} has no free block; a gone node's block becomes reclaimable in {}s", network.name, wait.as_secs());
        }
        Err(RegistryError::PoolExhausted { network: network.name.clone() })
    }

    /// Creates the block at `base` for this node; `Some(holder's block)`
    /// when it exists already (and is not this node's).
    async fn claim_block(&self, network: &NetworkRecord, base: Ipv4Addr) -> Result<Option<BlockRecord>, RegistryError> {
        let key = self.registry.layout().block(&network.name, IpAddr::V4(base));
        let record = BlockRecord {
            network: network.name.clone(),
            cidr: block_of(base, network.block_prefix_len),
            node: self.node.clone(),
            allocations: BTreeMap::new(),
            orphaned_since: None,
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), record.to_json(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.registry.txn(txn).await?;
        if response.succeeded() {
            let revision = response.header().map_or(0, |header| header.revision());
            log::info!("registry: node {} claimed block {} of network {}", self.node, record.cidr, network.name);
            self.adopt(record, revision);
            return Ok(None);
        }
        let existing = response.op_responses().into_iter().find_map(|response| match response {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| (BlockRecord::parse(&key, kv.value()), kv.mod_revision())),
            _ => None,
        });
        match existing {
            // Ours from an earlier run of this node: adopt it.
            Some((Ok(block), revision)) if block.node == self.node => {
                self.adopt(block, revision);
                Ok(None)
            }
            Some((Ok(block), _)) => Ok(Some(block)),
            // Deleted since, or unreadable: treat as held, name the key.
            _ => Ok(Some(BlockRecord {
                network: network.name.clone(),
                cidr: record.cidr,
                node: format!("(unreadable record at {key})"),
                allocations: BTreeMap::new(),
                orphaned_since: None,
            })),
        }
    }

    /// Writes every changed block; returns the highest change written.
    async fn flush_once(&self) -> Result<u64, RegistryError> {
        let (target, pending) = {
            let blocks = self.blocks.lock().unwrap();
            let target = *self.changes.lock().unwrap();
            let pending: Vec<OwnedBlock> = blocks.values().filter(|block| block.changed > block.written).cloned().collect();
            (target, pending)
        };
        for block in pending {
            let key = self.registry.layout().block(&block.record.network, IpAddr::V4(block.record.cidr.network()));
            let txn = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, block.mod_revision)])
                .and_then([TxnOp::put(key.as_str(), block.record.to_json(), None)]);
            let response = self.registry.txn(txn).await?;
            if !response.succeeded() {
                // Only this node writes its blocks, so the block changed
                // under us only if a retried write landed twice or someone
                // edited it by hand: while it is still ours, our state wins.
                let current = self.registry.get(&key).await?;
                let Some(kv) = current.kvs().first() else {
                    return Err(RegistryError::Contended { what: format!("writing IPAM block {key} (deleted by someone else)"), attempts: 1 });
                };
                match BlockRecord::parse(&key, kv.value()) {
                    Ok(found) if found.node == self.node => {
                        let mut blocks = self.blocks.lock().unwrap();
                        if let Some(held) = blocks.get_mut(&(block.record.network.clone(), block.record.cidr.network())) {
                            held.mod_revision = kv.mod_revision();
                        }
                    }
                    Ok(found) => {
                        // Reclaimed while this node was gone past the grace
                        // period: it is the other node's now. Drop it; later
                        // allocations come from another block.
                        log::error!(
                            "registry: IPAM block {} of network {} was reclaimed by node {} while this node was gone; {} allocation(s) made here since the last write are lost (their callers are told), addresses still in use here are re-registered with their endpoints and refused if taken",
                            found.cidr,
                            found.network,
                            found.node,
                            block.record.allocations.len().saturating_sub(found.allocations.len()),
                        );
                        let mut blocks = self.blocks.lock().unwrap();
                        if let Some(held) = blocks.remove(&(block.record.network.clone(), block.record.cidr.network())) {
                            self.lost.lock().unwrap().push((held.written, held.changed));
                        }
                        continue;
                    }
                    Err(_) => log::warn!("registry: IPAM block {key} was replaced by an unreadable record"),
                }
                return Err(RegistryError::Contended { what: format!("writing IPAM block {key} (changed meanwhile)"), attempts: 1 });
            }
            let revision = response.header().map_or(0, |header| header.revision());
            let mut blocks = self.blocks.lock().unwrap();
            if let Some(held) = blocks.get_mut(&(block.record.network.clone(), block.record.cidr.network())) {
                held.mod_revision = revision;
                held.written = held.written.max(block.changed);
            }
        }
        Ok(target)
    }
}

async fn flush_loop(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        shared.wake.notified().await;
        loop {
            match shared.flush_once().await {
                Ok(written) => {
                    backoff.reset();
                    shared.durable.send_if_modified(|durable| {
                        let newer = written > *durable;
                        *durable = (*durable).max(written);
                        newer
                    });
                    break;
                }
                Err(error) => {
                    log::warn!("registry: IPAM allocations not written yet: {error}; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}
