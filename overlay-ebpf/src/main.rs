//! The overlay datapath: VXLAN (RFC 7348) in XDP and TC.
//!
//! Entry points are thin: they run a `try_*` function, count the outcome or
//! drop reason (for the node, and for the packet's VNI and peer VTEP once
//! the `try_*` function has found their counter slots), and return the
//! hook's action. Nothing is dropped uncounted.
//!
//! There is no per-packet logging: a log call is code the verifier walks
//! once for every distinct state that reaches it, and per-drop logs pushed
//! the endpoint program past the verifier's budget at debug level. Drops
//! are counted by reason instead (see tests/tests/load.rs).
#![no_std]
#![no_main]

mod arp;
mod counters;
mod decap;
mod decap_tc;
mod encap;
mod endpoint;
mod flood;
mod flow_hash;
mod icmp;
mod maps;
mod monitor;
mod nd;
mod offload;
mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use overlay_common::Direction;

use crate::counters::{Slots, count};

/// XDP on the underlay device: decapsulates VXLAN for local endpoints.
#[xdp]
pub fn overlay_decap(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let mut slots = Slots::NONE;
    let (action, reason) = match decap::try_decap(&ctx, &mut slots) {
        Ok(verdict) => (verdict.action, verdict.reason),
        Err(reason) => (xdp_action::XDP_DROP, reason),
    };
    count(Direction::FROM_UNDERLAY, reason, bytes, &slots);
    monitor::report(&ctx, Direction::FROM_UNDERLAY, reason, bytes as u32);
    action
}

/// TC ingress of the underlay device in TC decapsulation mode (no XDP):
/// decapsulates VXLAN for local endpoints and replicates flooded frames.
#[classifier]
pub fn overlay_decap_tc(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let mut slots = Slots::NONE;
    let (action, reason) = match decap_tc::try_decap_tc(&ctx, &mut slots) {
        Ok(verdict) => (verdict.action, verdict.reason),
        Err(reason) => (TC_ACT_SHOT, reason),
    };
    count(Direction::FROM_UNDERLAY, reason, bytes, &slots);
    monitor::report(&ctx, Direction::FROM_UNDERLAY, reason, bytes as u32);
    action
}

/// TC ingress of an endpoint's host-side port: the endpoint's egress.
#[classifier]
pub fn overlay_endpoint(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let mut slots = Slots::NONE;
    let (action, reason) = match endpoint::try_endpoint(&ctx, &mut slots) {
        Ok(verdict) => (verdict.action, verdict.reason),
        Err(reason) => (TC_ACT_SHOT, reason),
    };
    count(Direction::FROM_ENDPOINT, reason, bytes, &slots);
    monitor::report(&ctx, Direction::FROM_ENDPOINT, reason, bytes as u32);
    action
}

/// TC ingress of the underlay device: replicates the broadcast and
/// multicast VXLAN frames XDP passed up to the VNI's local ports.
#[classifier]
pub fn overlay_underlay_flood(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let mut slots = Slots::NONE;
    match flood::try_underlay_flood(&ctx, &mut slots) {
        Ok(Some(verdict)) => {
            count(Direction::FROM_UNDERLAY, verdict.reason, bytes, &slots);
            verdict.action
        }
        Ok(None) => flood::PASS_UNTOUCHED,
        Err(reason) => {
            count(Direction::FROM_UNDERLAY, reason, bytes, &slots);
            monitor::report(&ctx, Direction::FROM_UNDERLAY, reason, bytes as u32);
            TC_ACT_SHOT
        }
    }
}

/// XDP offloaded to the underlay NIC (`--xdp-mode offload`): drops VXLAN
/// with bad outer headers in the NIC; the TC program decapsulates the rest.
#[xdp]
pub fn overlay_offload_admit(ctx: XdpContext) -> u32 {
    offload::admit(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
