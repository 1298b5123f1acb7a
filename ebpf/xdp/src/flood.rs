//! `turnstile_flood`: the benchmark's packet generator, not part of the data plane.
//!
//! Userspace runs it with `BPF_PROG_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`,
//! Linux 5.18+) on a template frame: each repetition stamps a fresh counter into the
//! template's counter fields (16 hex digits: Via branch, From tag, Call-ID) and user fields
//! (4 hex digits), then redirects the frame out of the configured interface. On a veth this
//! reaches the peer as an `xdp_frame` through `ndo_xdp_xmit`, without the socket layer or an
//! skb, so one core can offer several times what the server answers — the "10× capacity"
//! flood of the isolation benchmark. The UDP checksum of the template is 0 (allowed over
//! IPv4, RFC 768), so rewriting payload bytes needs no checksum update.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_smp_processor_id, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use turnstile_common::{
    FloodConfig, FLOOD_CTR_DIGITS, FLOOD_MAX_MARKS, FLOOD_OFF_MASK, FLOOD_USER_DIGITS,
};

#[map]
static TS_FLOOD: Array<FloodConfig> = Array::with_max_entries(1, 0);
#[map]
static TS_FLOOD_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the low `N * 4` bits of `v` as `N` hex digits at frame offset `off`; false when
/// the field does not fit the frame.
#[inline(always)]
fn stamp<const N: usize>(ctx: &XdpContext, off: u16, v: u64) -> bool {
    let p = ctx.data() + (off & FLOOD_OFF_MASK) as usize;
    if p + N > ctx.data_end() {
        return false;
    }
    for k in 0..N {
        let d = (v >> (4 * (N - 1 - k))) & 0xf;
        // SAFETY: p + k < p + N <= data_end, checked above.
        unsafe { *((p + k) as *mut u8) = HEX[d as usize] };
    }
    true
}

/// `BPF_PROG_RUN` without a context runs on the namespace's loopback device, whose ifindex
/// is always 1.
const LOOPBACK_IFINDEX: u32 = 1;

#[xdp]
pub fn turnstile_flood(ctx: XdpContext) -> u32 {
    // Userspace also attaches this program (skb mode) to an idle device: an attached
    // program stays in the kernel's XDP dispatcher, so each BPF_PROG_RUN skips the two RCU
    // grace periods of adding and removing it (~25 ms a call). Should a packet ever arrive
    // there, it goes on untouched.
    // SAFETY: `ctx.ctx` is the kernel's valid xdp_md for this invocation.
    if unsafe { (*ctx.ctx).ingress_ifindex } != LOOPBACK_IFINDEX {
        return xdp_action::XDP_PASS;
    }
    let Some(cfg) = TS_FLOOD.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(seq) = TS_FLOOD_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot, only this CPU touches it.
    let n = unsafe {
        *seq += 1;
        *seq
    };
    // The sequence is per CPU (no atomics), so the CPU goes into the low byte: a sender
    // that migrates between CPUs must not repeat a branch or Call-ID.
    // SAFETY: plain helper call.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() }) & 0xff;
    let v = ((n << 8) | cpu).wrapping_add(cfg.salt);
    for i in 0..FLOOD_MAX_MARKS {
        let off = cfg.ctr_marks[i];
        if off != 0 && !stamp::<FLOOD_CTR_DIGITS>(&ctx, off, v) {
            return xdp_action::XDP_ABORTED;
        }
        let off = cfg.user_marks[i];
        if off != 0 && !stamp::<FLOOD_USER_DIGITS>(&ctx, off, n) {
            return xdp_action::XDP_ABORTED;
        }
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(cfg.ifindex, 0) as u32 }
}
