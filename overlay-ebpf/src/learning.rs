//! MAC learning for networks that turn it on (RFC 7348 section 4.1: "the
//! destination VTEP ... learn[s] the mapping of inner source MAC address
//! to outer source IP address"), for clusters of a few hosts that list
//! their peers' VTEPs but not the containers behind them.
//!
//! Rules, beyond the RFC's: only frames from a peer admitted for the VNI
//! teach anything (the caller learns only after `admit`); a configured
//! entry (`FDB`, or a local endpoint) is never overridden, the learned
//! table is a separate LRU map that encapsulation reads only after `FDB`;
//! entries older than the VNI's ageing time are ignored.
//!
//! Both functions are BPF-to-BPF calls of their own (`#[inline(never)]`).
//! Verifier/stack: on Linux 6.1 the stack of a whole call chain is capped
//! at 512 bytes (check_max_stack_depth, each frame rounded up to 32). As
//! leaves called from the programs' main frames, their keys and values
//! sit on a frame of their own that is never below the flood or ICMP
//! paths' frames, and the callers only pass scalars and a pointer.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use network_types::eth::EthHdr;
use overlay_common::{LEARNING_REFRESH_NS, LearnedEntry, Reason, VniMac};

use crate::{
    decap::INNER_ETH_OFFSET,
    maps::{FDB, LEARNED_FDB, LEARNING, LEARNING_EVENTS, LOCAL_ENDPOINTS},
    packet::{is_multicast, ptr_at},
};

/// A MAC in the low six bytes of a u64: one register, so it crosses a
/// BPF-to-BPF call as a scalar (no pointer into the packet to track).
#[inline(always)]
fn pack_mac(mac: [u8; 6]) -> u64 {
    u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

#[inline(always)]
fn unpack_mac(packed: u64) -> [u8; 6] {
    let bytes = packed.to_le_bytes();
    [bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]]
}

/// Learns from a decapsulated frame of `vni` whose outer source is
/// `source_be`, a peer already admitted for `vni` (with counter slot
/// `peer_slot`). `[start, end)` holds the whole VXLAN frame.
#[inline(always)]
pub fn learn_from_frame(start: usize, end: usize, vni: u32, source_be: u32, peer_slot: u32, frame_len: usize) {
    let Some(inner) = ptr_at::<EthHdr>(start, end, INNER_ETH_OFFSET) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at; copied at once.
    let mac = unsafe { (*inner).src_addr };
    // A group or all-zero source is no station's address: nothing to learn.
    if is_multicast(&mac) || mac == [0; 6] {
        return;
    }
    learn(vni, pack_mac(mac), source_be, peer_slot, frame_len as u64);
}

#[inline(never)]
fn learn(vni: u32, mac: u64, source_be: u32, peer_slot: u32, bytes: u64) {
    // SAFETY (all lookups): presence tests and copies of plain values.
    if unsafe { LEARNING.get(&vni) }.is_none() {
        return;
    }
    let key = VniMac::new(vni, unpack_mac(mac));
    // SAFETY: plain helper call. The coarse clock (a jiffy) is plenty for
    // ageing in seconds.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let known_vtep = unsafe { LEARNED_FDB.get(&key) }.map(|known| (known.vtep_addr_be, known.updated_ns));
    if let Some((vtep, updated_ns)) = known_vtep {
        if vtep == source_be && now.saturating_sub(updated_ns) < LEARNING_REFRESH_NS {
            return; // known and fresh: no write per frame
        }
    }
    // A configured entry wins: learning only ever writes LEARNED_FDB, and
    // does not even do that for a MAC configured here or at another peer.
    if let Some(configured) = unsafe { FDB.get(&key) } {
        if configured.vtep_addr_be != source_be {
            count(Reason::LEARNING_REFUSED, bytes);
        }
        return;
    }
    if unsafe { LOCAL_ENDPOINTS.get(&key) }.is_some() {
        count(Reason::LEARNING_REFUSED, bytes);
        return;
    }
    let moved_or_new = known_vtep.is_none_or(|(vtep, _)| vtep != source_be);
    let entry = LearnedEntry {
        vtep_addr_be: source_be,
        peer_slot,
        updated_ns: now,
    };
    // A failed insert (memory pressure) only means the next frame tries again.
    if LEARNED_FDB.insert(&key, &entry, 0).is_ok() && moved_or_new {
        count(Reason::LEARNED, bytes);
    }
}

#[inline(always)]
fn count(reason: Reason, bytes: u64) {
    if let Some(counter) = LEARNING_EVENTS.get_ptr_mut(reason.0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

/// Where encapsulation sends a frame for `key` that `FDB` does not know:
/// the learned VTEP in the low 32 bits and its peer's counter slot in the
/// high 32, or 0 when nothing fresh was learned (0.0.0.0 is never a VTEP).
/// Packed in one register, the BPF return value, rather than an `Option`
/// the compiler would return through the caller's stack.
#[inline(never)]
pub fn learned_peer(key: &VniMac) -> u64 {
    // SAFETY (both): read and copied at once.
    let Some(policy) = (unsafe { LEARNING.get(&key.vni) }).copied() else {
        return 0; // learning off (or turned off since): learned entries are ignored
    };
    let Some(learned) = (unsafe { LEARNED_FDB.get(key) }).copied() else {
        return 0;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.saturating_sub(learned.updated_ns) > policy.ageing_ns {
        return 0; // aged out: flooded instead, as an unknown destination
    }
    (learned.peer_slot as u64) << 32 | learned.vtep_addr_be as u64
}
