//! Types shared byte-for-byte by the XDP program (`turnstile-ebpf`) and userspace
//! (`turnstile` daemon, `userspace/daemon/src/xdp`).
//!
//! Every `#[repr(C)]` type here has its size pinned by a `const` assert, because the kernel
//! checks map key/value sizes against the object file and a silent layout change would make
//! the loader fail (or worse, read garbage). Addresses and ports are stored in network byte
//! order exactly as they appear on the wire, so neither side has to swap bytes for lookups.
//!
//! Feature `user` adds `aya::Pod` impls so userspace can put these types in maps.
#![no_std]

use core::mem::size_of;

// ---------------------------------------------------------------------------------------------
// Map names. The XDP program declares its maps under these names; the loader looks them up by
// the same strings. BPF object names are truncated by the kernel at 15 bytes, so keep them short.

pub const MAP_CONFIG: &str = "TS_CONFIG";
pub const MAP_LPM_V4: &str = "TS_LPM_V4";
pub const MAP_LPM_V6: &str = "TS_LPM_V6";
pub const MAP_DENY: &str = "TS_DENY";
pub const MAP_BUCKETS: &str = "TS_BUCKETS";
pub const MAP_COUNTERS: &str = "TS_COUNTERS";
pub const MAP_GROUP_COUNTERS: &str = "TS_GROUP_CNT";
pub const MAP_XSKS: &str = "TS_XSKS";
/// The XDP program's function name (section `xdp`).
pub const PROG_NAME: &str = "turnstile_xdp";
/// The benchmark flood generator in the same object (never attached by the daemon).
pub const FLOOD_PROG_NAME: &str = "turnstile_flood";
pub const MAP_FLOOD: &str = "TS_FLOOD";

// ---------------------------------------------------------------------------------------------
// Capacities.

/// Group ids must be `< MAX_GROUPS`; the per-group counter array has this many entries.
pub const MAX_GROUPS: u32 = 1024;
/// AF_XDP sockets (classes) per rx queue. Groups beyond this share classes by configuration.
pub const MAX_CLASSES: u32 = 8;
/// Highest rx queue count supported by the XSKMAP (`rx_queue_index * MAX_CLASSES + class`).
pub const MAX_QUEUES: u32 = 64;
/// Entries of the XSKMAP.
pub const XSK_MAP_ENTRIES: u32 = MAX_QUEUES * MAX_CLASSES;
/// Prefixes per LPM trie (each family).
pub const LPM_MAX_ENTRIES: u32 = 65_536;
/// Sources tracked by the per-source token buckets (LRU: the coldest sources are evicted).
pub const BUCKET_MAX_ENTRIES: u32 = 262_144;
/// Deny-list entries (v4 and v6 share the map, v4 as IPv4-mapped IPv6).
pub const DENY_MAX_ENTRIES: u32 = 65_536;
/// UDP ports treated as SIP.
pub const MAX_SIP_PORTS: usize = 8;

/// Token-bucket fixed point: one packet = 10^9 "nano-tokens", so refill is
/// `elapsed_ns * rate_pps` with no division in the kernel.
pub const TOKEN_ONE: u64 = 1_000_000_000;
/// Upper bound for `rate_pps` (checked by the loader) so that `elapsed * rate` cannot overflow
/// u64 with `elapsed` capped at [`BUCKET_MAX_ELAPSED_NS`]: 2^24 * 2^39 = 2^63.
pub const MAX_RATE_PPS: u32 = 1 << 24;
/// Elapsed time is clamped to this (about 550 s) before multiplying by the rate.
pub const BUCKET_MAX_ELAPSED_NS: u64 = 1 << 39;

// ---------------------------------------------------------------------------------------------
// LPM trie keys. Same layout as `aya::maps::lpm_trie::Key<[u8; N]>` and
// `aya_ebpf::maps::lpm_trie::Key<[u8; N]>` (prefix length in bits, then the address bytes in
// network order); both sides use aya's `Key` directly, these types pin and document the layout.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmKeyV4 {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<LpmKeyV4>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmKeyV6 {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<LpmKeyV6>() == 20);

/// Value of both LPM tries: what a classified source maps to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupValue {
    /// IP Group id, `< MAX_GROUPS`; also the index of the group's counters.
    pub group_id: u16,
    /// Queue class (AF_XDP socket on the rx queue), `< MAX_CLASSES`.
    pub class: u8,
    /// `GROUP_F_*`.
    pub flags: u8,
    /// Per-source rate limit, packets per second (`<= MAX_RATE_PPS`). 0 = unlimited.
    pub rate_pps: u32,
    /// Per-source burst, packets. Treated as 1 when 0 and `rate_pps != 0`.
    pub burst: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<GroupValue>() == 16);

/// Drop every packet of this group at the NIC (an operator kill switch; counted as `DropGroup`).
pub const GROUP_F_DROP: u8 = 1 << 0;

// ---------------------------------------------------------------------------------------------
// Per-source state: token buckets and the deny list. Both keyed by the source address as IPv6;
// IPv4 sources use the IPv4-mapped form `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2), so one map
// serves both families.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<AddrKey>() == 16);

impl AddrKey {
    #[inline(always)]
    pub const fn v4(a: [u8; 4]) -> Self {
        AddrKey {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ],
        }
    }
    #[inline(always)]
    pub const fn v6(addr: [u8; 16]) -> Self {
        AddrKey { addr }
    }
}

/// LRU hash value: one source's token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceBucket {
    /// Tokens left, in units of `1 / TOKEN_ONE` packet.
    pub tokens: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last refill.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<SourceBucket>() == 16);

/// Deny-list value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyValue {
    /// CLOCK_MONOTONIC ns after which the entry no longer applies; 0 = forever.
    pub until_ns: u64,
}
const _: () = assert!(size_of::<DenyValue>() == 8);

// ---------------------------------------------------------------------------------------------
// XDP metadata: written by `bpf_xdp_adjust_meta` into the bytes right before the packet, and
// delivered by AF_XDP in the same place (the frame's headroom), so userspace reads it at
// `frame[addr - size_of::<XdpMeta>() .. addr]`.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpMeta {
    /// `META_MAGIC` when the program wrote it (garbage otherwise: the headroom is not cleared).
    pub magic: u32,
    pub group_id: u16,
    pub class: u8,
    /// `META_F_*`.
    pub flags: u8,
}
const _: () = assert!(size_of::<XdpMeta>() == 8);

pub const META_MAGIC: u32 = 0x5453_4d31; // "TSM1"
/// The packet is IPv6.
pub const META_F_IPV6: u8 = 1 << 0;
/// The packet carried at least one VLAN tag.
pub const META_F_VLAN: u8 = 1 << 1;

// ---------------------------------------------------------------------------------------------
// Configuration: a single-entry array map (index 0). An all-zero config (map not yet written)
// has no SIP ports, so every packet passes to the kernel: safe by default.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// UDP destination ports treated as SIP, in network byte order; 0 = unused slot.
    pub sip_ports_be: [u16; MAX_SIP_PORTS],
    /// `CFG_F_*`.
    pub flags: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<XdpConfig>() == 24);

/// Unclassified SIP packets go to the kernel (XDP_PASS) instead of being dropped.
pub const CFG_F_UNCLASSIFIED_PASS: u32 = 1 << 0;
/// When no AF_XDP socket is bound for (rx queue, class), drop instead of passing to the kernel.
/// Default (flag clear) is pass, so a socket-mode listener on the same port still works.
pub const CFG_F_REDIRECT_FAIL_DROP: u32 = 1 << 1;
/// Skip `bpf_xdp_adjust_meta` (for drivers without metadata support; userspace classifies).
pub const CFG_F_NO_META: u32 = 1 << 2;

// ---------------------------------------------------------------------------------------------
// Counters. Global: per-CPU array with one entry, `Counters`. Per group: per-CPU array with
// `MAX_GROUPS` entries of `Counters`, indexed by group id; only the verdicts reached after
// classification (`DropGroup`, `DropRate`, `Redirect*`) are counted there.

/// Verdict counters; the discriminant is the index into `Counters::v`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Not IPv4/IPv6 (ARP, LLDP, …) → XDP_PASS.
    PassNotIp = 0,
    /// IP but not UDP (TCP, ICMP, …) → XDP_PASS.
    PassNotUdp = 1,
    /// UDP to a port that is not a SIP port → XDP_PASS.
    PassNonSip = 2,
    /// IPv4 fragment (MF set or offset ≠ 0) or IPv6 fragment header → XDP_PASS; the kernel
    /// reassembles and the socket path handles it (UDP ports are only in the first fragment).
    PassFragment = 3,
    /// Truncated or inconsistent headers → XDP_DROP.
    DropMalformed = 4,
    /// SIP from a source in no IP Group, policy drop → XDP_DROP.
    DropUnclassified = 5,
    /// SIP from a source in no IP Group, policy pass → XDP_PASS.
    PassUnclassified = 6,
    /// Source on the deny list → XDP_DROP.
    DropDenied = 7,
    /// Source over its token-bucket budget → XDP_DROP.
    DropRate = 8,
    /// Group has `GROUP_F_DROP` → XDP_DROP.
    DropGroup = 9,
    /// Redirected to the (queue, class) AF_XDP socket (XDP_REDIRECT).
    Redirect = 10,
    /// No AF_XDP socket at (queue, class), fallback XDP_PASS.
    RedirectFailedPass = 11,
    /// No AF_XDP socket at (queue, class), fallback XDP_DROP (`CFG_F_REDIRECT_FAIL_DROP`).
    RedirectFailedDrop = 12,
    /// `bpf_xdp_adjust_meta` failed (driver without metadata); redirected without metadata.
    MetaFailed = 13,
    /// Packets seen by the program (every invocation).
    Seen = 14,
}

pub const VERDICT_COUNT: usize = 15;

impl Verdict {
    pub const ALL: [Verdict; VERDICT_COUNT] = [
        Verdict::PassNotIp,
        Verdict::PassNotUdp,
        Verdict::PassNonSip,
        Verdict::PassFragment,
        Verdict::DropMalformed,
        Verdict::DropUnclassified,
        Verdict::PassUnclassified,
        Verdict::DropDenied,
        Verdict::DropRate,
        Verdict::DropGroup,
        Verdict::Redirect,
        Verdict::RedirectFailedPass,
        Verdict::RedirectFailedDrop,
        Verdict::MetaFailed,
        Verdict::Seen,
    ];

    /// Stable snake_case name, for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::PassNotIp => "pass_not_ip",
            Verdict::PassNotUdp => "pass_not_udp",
            Verdict::PassNonSip => "pass_non_sip",
            Verdict::PassFragment => "pass_fragment",
            Verdict::DropMalformed => "drop_malformed",
            Verdict::DropUnclassified => "drop_unclassified",
            Verdict::PassUnclassified => "pass_unclassified",
            Verdict::DropDenied => "drop_denied",
            Verdict::DropRate => "drop_rate",
            Verdict::DropGroup => "drop_group",
            Verdict::Redirect => "redirect",
            Verdict::RedirectFailedPass => "redirect_failed_pass",
            Verdict::RedirectFailedDrop => "redirect_failed_drop",
            Verdict::MetaFailed => "meta_failed",
            Verdict::Seen => "seen",
        }
    }
}
const _: () = assert!(Verdict::Seen as usize + 1 == VERDICT_COUNT);

/// Counter block (per CPU in the maps; userspace sums over CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub v: [u64; VERDICT_COUNT],
}
const _: () = assert!(size_of::<Counters>() == 8 * VERDICT_COUNT);

impl Default for Counters {
    fn default() -> Self {
        Counters {
            v: [0; VERDICT_COUNT],
        }
    }
}

impl Counters {
    #[inline]
    pub fn get(&self, v: Verdict) -> u64 {
        self.v[v as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Benchmark flood generator (`turnstile_flood`, run with BPF_PROG_RUN in live-frames mode):
// not part of the data plane. It rewrites counters in a template frame and redirects it out
// of an interface, so a benchmark can offer millions of packets per second where a socket
// sender manages a few hundred thousand.

/// Counter fields per template (16 lowercase hex digits each: branch, tag, Call-ID …).
pub const FLOOD_MAX_MARKS: usize = 4;
/// Width of a counter field in the frame.
pub const FLOOD_CTR_DIGITS: usize = 16;
/// Width of a user field (the low 16 bits of the counter: 65,536 AORs).
pub const FLOOD_USER_DIGITS: usize = 4;
/// Offsets are masked to this (the verifier needs a bounded packet offset).
pub const FLOOD_OFF_MASK: u16 = 0x7ff;

/// Single-entry array map `TS_FLOOD`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodConfig {
    /// Interface the frames leave by (`bpf_redirect`).
    pub ifindex: u32,
    pub _reserved: u32,
    /// Added to `sequence << 8 | cpu` (the sequence is per CPU), so two runs never repeat
    /// a branch or Call-ID.
    pub salt: u64,
    /// Frame offsets of the counter fields; 0 = unused (offset 0 is the Ethernet header).
    pub ctr_marks: [u16; FLOOD_MAX_MARKS],
    /// Frame offsets of the user fields; 0 = unused.
    pub user_marks: [u16; FLOOD_MAX_MARKS],
}
const _: () = assert!(size_of::<FloodConfig>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for LpmKeyV4 {}
    unsafe impl aya::Pod for LpmKeyV6 {}
    unsafe impl aya::Pod for GroupValue {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for SourceBucket {}
    unsafe impl aya::Pod for DenyValue {}
    unsafe impl aya::Pod for XdpMeta {}
    unsafe impl aya::Pod for XdpConfig {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for FloodConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_all_matches_discriminants() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{}", v.name());
        }
    }

    #[test]
    fn v4_mapped_key() {
        let k = AddrKey::v4([198, 18, 0, 1]);
        assert_eq!(&k.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k.addr[12..], &[198, 18, 0, 1]);
    }

    #[test]
    fn overflow_bound_holds() {
        // elapsed * rate must fit in u64 (see MAX_RATE_PPS).
        assert!((MAX_RATE_PPS as u64)
            .checked_mul(BUCKET_MAX_ELAPSED_NS)
            .is_some());
        // burst * TOKEN_ONE must fit for any u32 burst.
        assert!((u32::MAX as u64).checked_mul(TOKEN_ONE).is_some());
    }
}
