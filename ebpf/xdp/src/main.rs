//! Turnstile's XDP program: classify SIP packets by source address at the NIC and steer them
//! into per-IP-Group AF_XDP sockets.
//!
//! Per packet (every path bumps exactly one verdict counter, plus `Seen`):
//!
//! 1. Parse Ethernet (RFC 894 framing), up to two VLAN tags (IEEE 802.1Q 0x8100 / 802.1ad
//!    0x88a8), IPv4 (RFC 791, options skipped via IHL) or IPv6 (RFC 8200; hop-by-hop, routing
//!    and destination-options headers skipped, at most `V6_EXT_MAX` of them), UDP (RFC 768).
//!    Non-IP, non-UDP and non-SIP-port traffic goes to the kernel (XDP_PASS) so ARP, ICMP,
//!    SSH, … keep working. Truncated/inconsistent headers are dropped.
//! 2. IP fragments go to the kernel: only the first fragment carries the UDP header and XDP
//!    cannot reassemble, so the kernel reassembles and the socket path serves them.
//! 3. Deny list (hash on the source; value = expiry in CLOCK_MONOTONIC ns, 0 = forever).
//! 4. Longest-prefix match of the source (v4 / v6 trie) → IP Group. Unclassified: drop or pass
//!    per config.
//! 5. Per-source token bucket (LRU hash), rate and burst from the group.
//! 6. Write `XdpMeta` (group id, class) before the packet with `bpf_xdp_adjust_meta` and
//!    redirect into the XSKMAP at `rx_queue_index * MAX_CLASSES + class`. No socket there →
//!    XDP_PASS (default, so socket mode keeps working) or XDP_DROP per config.
//!
//! Every packet read goes through `Cursor`, which checks bounds against `data_end` right
//! before each access so the verifier can see the check. Loops are bounded by constants.
//!
//! The object also carries `turnstile_flood` (`flood.rs`), the benchmark's packet generator;
//! the daemon never loads it.
//!
//! On the host this crate builds a stub binary, so `cargo build --workspace` and
//! `cargo clippy --workspace` work; the real program is compiled for `bpfel-unknown-none` by
//! `userspace/daemon/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod flood;
#[cfg(target_arch = "bpf")]
mod prog;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "turnstile-xdp is an eBPF program; it is built for bpfel-unknown-none by \
         userspace/daemon/build.rs and embedded in the daemon"
    );
    std::process::exit(2);
}
