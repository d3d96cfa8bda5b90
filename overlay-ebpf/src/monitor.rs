//! Events for `overlay monitor`: drops (and, if asked, one forwarded packet
//! in N) with the packet's first bytes, into a ring buffer.
//!
//! Nothing is emitted unless a monitor has switched it on (the `MONITOR`
//! map), and a per-CPU token bucket caps the rate, so a flood of bad packets
//! cannot make the datapath or the agent spend more than the operator
//! allowed; what was not emitted (rate limit, full buffer) is counted in
//! `MONITOR_LOST` for the monitor to report.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use overlay_common::{Direction, MONITOR_CAPTURE_LEN, MonitorEvent, Reason};

use crate::maps::{EVENTS, MONITOR, MONITOR_BUCKETS, MONITOR_LOST};

/// A hook's context, as far as capturing a packet goes.
pub trait Capture {
    fn ingress_ifindex(&self) -> u32;
    /// The packet's length now (after any encapsulation or decapsulation).
    fn current_len(&self) -> u32;
    /// Copies `len` bytes of the packet from its start to `dst`; 0 on success.
    fn copy_start(&self, dst: *mut u8, len: u32) -> i64;
}

impl Capture for XdpContext {
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: reading a field of the context the kernel handed us.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    fn current_len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }
    fn copy_start(&self, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: dst has room for len (checked by the caller) bytes.
        unsafe { bpf_xdp_load_bytes(self.ctx, 0, dst.cast(), len) }
    }
}

impl Capture for TcContext {
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: reading a field of the context the kernel handed us.
        unsafe { (*self.skb.skb).ifindex }
    }
    fn current_len(&self) -> u32 {
        self.len()
    }
    fn copy_start(&self, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: dst has room for len (checked by the caller) bytes.
        unsafe { bpf_skb_load_bytes(self.skb.skb as *const _, 0, dst.cast(), len) }
    }
}

/// Emits an event for a packet counted with `reason`, if a monitor wants it.
#[inline(always)]
pub fn report<C: Capture>(ctx: &C, direction: Direction, reason: Reason, packet_len: u32) {
    let Some(config) = MONITOR.get(0) else { return };
    if config.enabled == 0 {
        return;
    }
    let Some(bucket) = MONITOR_BUCKETS.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU slot, only this CPU writes it while we run.
    let bucket = unsafe { &mut *bucket };
    if !reason.is_drop() {
        let every = config.sample_forwarded_every as u64;
        if reason != Reason::FORWARDED || every == 0 {
            return;
        }
        bucket.forwarded_seen += 1;
        if bucket.forwarded_seen % every != 0 {
            return;
        }
    }
    // Token bucket: refill by elapsed time, at most `burst` tokens.
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let refill = now.saturating_sub(bucket.last_refill_ns) * config.events_per_second as u64 / 1_000_000_000;
    if refill > 0 {
        bucket.tokens = (bucket.tokens + refill).min(config.burst as u64);
        bucket.last_refill_ns = now;
    }
    if bucket.tokens == 0 {
        count_lost();
        return;
    }
    bucket.tokens -= 1;
    let Some(mut entry) = EVENTS.reserve::<MonitorEvent>(0) else {
        count_lost();
        return;
    };
    let event = entry.as_mut_ptr();
    let wanted = ctx.current_len().min(MONITOR_CAPTURE_LEN as u32);
    // SAFETY: the reserved entry is a MonitorEvent's worth of ring memory.
    unsafe {
        (*event).timestamp_ns = now;
        (*event).reason = reason.0;
        (*event).direction = direction.0;
        (*event).ifindex = ctx.ingress_ifindex();
        (*event).packet_len = packet_len;
        (*event).captured_len = 0;
        (*event)._pad = 0;
        if wanted >= 1 {
            // Verifier: LLVM turns `1 <= wanted <= 128` into one unsigned test
            // on `wanted - 1`, and the verifier then sees a length that may
            // be zero. Masking and adding one makes 1..=128 plain to it (and
            // leaves any wanted in 1..=128 unchanged).
            let len = ((wanted - 1) & (MONITOR_CAPTURE_LEN as u32 - 1)) + 1;
            if ctx.copy_start((*event).data.as_mut_ptr(), len) == 0 {
                (*event).captured_len = len;
            }
        }
    }
    entry.submit(0);
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = MONITOR_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *lost += 1 };
    }
}
