//! The program itself (compiled only for the BPF target; see `main.rs` for the overview).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_meta},
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use turnstile_common::{
    AddrKey, Counters, DenyValue, GroupValue, SourceBucket, Verdict, XdpConfig, XdpMeta,
    BUCKET_MAX_ELAPSED_NS, BUCKET_MAX_ENTRIES, CFG_F_NO_META, CFG_F_REDIRECT_FAIL_DROP,
    CFG_F_UNCLASSIFIED_PASS, DENY_MAX_ENTRIES, GROUP_F_DROP, LPM_MAX_ENTRIES, MAX_CLASSES,
    MAX_GROUPS, MAX_SIP_PORTS, META_F_IPV6, META_F_VLAN, META_MAGIC, TOKEN_ONE, XSK_MAP_ENTRIES,
};

#[map]
static TS_CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map]
static TS_LPM_V4: LpmTrie<[u8; 4], GroupValue> = LpmTrie::with_max_entries(LPM_MAX_ENTRIES, 0);
#[map]
static TS_LPM_V6: LpmTrie<[u8; 16], GroupValue> = LpmTrie::with_max_entries(LPM_MAX_ENTRIES, 0);
#[map]
static TS_DENY: HashMap<AddrKey, DenyValue> = HashMap::with_max_entries(DENY_MAX_ENTRIES, 0);
#[map]
static TS_BUCKETS: LruHashMap<AddrKey, SourceBucket> =
    LruHashMap::with_max_entries(BUCKET_MAX_ENTRIES, 0);
#[map]
static TS_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);
#[map]
static TS_GROUP_CNT: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_GROUPS, 0);
#[map]
static TS_XSKS: XskMap = XskMap::with_max_entries(XSK_MAP_ENTRIES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const V6_EXT_MAX: usize = 3;
const VLAN_MAX: usize = 2;

/// Bounds-checked reader over the packet. `pos` and `end` are packet pointers (as integers);
/// every read checks `pos + off + len <= end` immediately before dereferencing.
struct Cursor {
    pos: usize,
    end: usize,
}

impl Cursor {
    #[inline(always)]
    fn u8_at(&self, off: usize) -> Option<u8> {
        let p = self.pos + off;
        if p + 1 > self.end {
            return None;
        }
        // SAFETY: `p .. p+1` is inside the packet (checked above).
        Some(unsafe { *(p as *const u8) })
    }

    /// Big-endian u16 at `off`.
    #[inline(always)]
    fn be16_at(&self, off: usize) -> Option<u16> {
        Some(u16::from_be(self.raw16_at(off)?))
    }

    /// u16 at `off` as stored (network order bytes in a native u16).
    #[inline(always)]
    fn raw16_at(&self, off: usize) -> Option<u16> {
        let p = self.pos + off;
        if p + 2 > self.end {
            return None;
        }
        // SAFETY: in bounds (checked above); packet data may be unaligned.
        Some(unsafe { core::ptr::read_unaligned(p as *const u16) })
    }

    #[inline(always)]
    fn bytes4_at(&self, off: usize) -> Option<[u8; 4]> {
        let p = self.pos + off;
        if p + 4 > self.end {
            return None;
        }
        // SAFETY: in bounds (checked above).
        Some(unsafe { core::ptr::read_unaligned(p as *const [u8; 4]) })
    }

    #[inline(always)]
    fn bytes16_at(&self, off: usize) -> Option<[u8; 16]> {
        let p = self.pos + off;
        if p + 16 > self.end {
            return None;
        }
        // SAFETY: in bounds (checked above).
        Some(unsafe { core::ptr::read_unaligned(p as *const [u8; 16]) })
    }

    /// Advance by `n` bytes; fails (without moving) if that would pass the end.
    #[inline(always)]
    fn skip(&mut self, n: usize) -> Option<()> {
        let p = self.pos + n;
        if p > self.end {
            return None;
        }
        self.pos = p;
        Some(())
    }
}

#[inline(always)]
fn count(v: Verdict) {
    if let Some(c) = TS_COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer; index < VERDICT_COUNT by construction.
        unsafe {
            let slot = (*c).v.as_mut_ptr().add(v as usize);
            *slot += 1;
        }
    }
}

#[inline(always)]
fn count_group(group_id: u16, v: Verdict) {
    if let Some(c) = TS_GROUP_CNT.get_ptr_mut(group_id as u32) {
        // SAFETY: as in `count`.
        unsafe {
            let slot = (*c).v.as_mut_ptr().add(v as usize);
            *slot += 1;
        }
    }
}

/// What the parser found out about a packet.
enum Parsed {
    /// Verdict already decided (pass/drop for not-SIP, malformed, fragment).
    Done(Verdict, u32),
    Sip {
        src: AddrKey,
        v4: Option<[u8; 4]>,
        flags: u8,
    },
}

#[xdp]
pub fn turnstile_xdp(ctx: XdpContext) -> u32 {
    count(Verdict::Seen);
    let (v, action) = process(&ctx);
    count(v);
    action
}

#[inline(always)]
fn malformed() -> Parsed {
    Parsed::Done(Verdict::DropMalformed, xdp_action::XDP_DROP)
}

#[inline(always)]
fn parse(ctx: &XdpContext, cfg: &XdpConfig) -> Parsed {
    let mut c = Cursor {
        pos: ctx.data(),
        end: ctx.data_end(),
    };
    let mut flags = 0u8;

    let Some(mut ethertype) = c.be16_at(12) else {
        return malformed();
    };
    if c.skip(ETH_HLEN).is_none() {
        return malformed();
    }
    for _ in 0..VLAN_MAX {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        flags |= META_F_VLAN;
        // TCI (2 bytes) then the encapsulated ethertype.
        let Some(inner) = c.be16_at(2) else {
            return malformed();
        };
        if c.skip(4).is_none() {
            return malformed();
        }
        ethertype = inner;
    }

    let src;
    let mut v4 = None;
    if ethertype == ETH_P_IP {
        let Some(ver_ihl) = c.u8_at(0) else {
            return malformed();
        };
        // Check the whole fixed header is present before looking at any field of it.
        if c.bytes4_at(16).is_none() {
            return malformed();
        }
        let ihl = (ver_ihl & 0x0f) as usize;
        if ver_ihl >> 4 != 4 || ihl < 5 {
            return malformed();
        }
        let Some(tot_len) = c.be16_at(2) else {
            return malformed();
        };
        if (tot_len as usize) < ihl * 4 {
            return malformed();
        }
        let Some(proto) = c.u8_at(9) else {
            return malformed();
        };
        if proto != IPPROTO_UDP {
            return Parsed::Done(Verdict::PassNotUdp, xdp_action::XDP_PASS);
        }
        let Some(frag) = c.be16_at(6) else {
            return malformed();
        };
        // MF flag or a non-zero fragment offset: let the kernel reassemble.
        if frag & 0x3fff != 0 {
            return Parsed::Done(Verdict::PassFragment, xdp_action::XDP_PASS);
        }
        let Some(a) = c.bytes4_at(12) else {
            return malformed();
        };
        v4 = Some(a);
        src = AddrKey::v4(a);
        if c.skip(ihl * 4).is_none() {
            return malformed();
        }
    } else if ethertype == ETH_P_IPV6 {
        let Some(ver) = c.u8_at(0) else {
            return malformed();
        };
        let Some(a) = c.bytes16_at(8) else {
            return malformed();
        };
        if ver >> 4 != 6 {
            return malformed();
        }
        let Some(mut next) = c.u8_at(6) else {
            return malformed();
        };
        if c.skip(40).is_none() {
            return malformed();
        }
        flags |= META_F_IPV6;
        src = AddrKey::v6(a);
        for _ in 0..V6_EXT_MAX {
            if next != IPV6_HOPOPTS && next != IPV6_ROUTING && next != IPV6_DSTOPTS {
                break;
            }
            let (Some(nh), Some(len)) = (c.u8_at(0), c.u8_at(1)) else {
                return malformed();
            };
            if c.skip((len as usize + 1) * 8).is_none() {
                return malformed();
            }
            next = nh;
        }
        if next == IPV6_FRAGMENT {
            return Parsed::Done(Verdict::PassFragment, xdp_action::XDP_PASS);
        }
        if next != IPPROTO_UDP {
            // Also covers a 4th extension header: not worth chasing for SIP.
            return Parsed::Done(Verdict::PassNotUdp, xdp_action::XDP_PASS);
        }
    } else {
        return Parsed::Done(Verdict::PassNotIp, xdp_action::XDP_PASS);
    }

    // UDP header.
    // The whole 8-byte header must be present (checksum included) even though only the
    // port and length are used: a frame cut inside it is malformed.
    let (Some(dport), Some(ulen), Some(_csum)) = (c.raw16_at(2), c.be16_at(4), c.raw16_at(6))
    else {
        return malformed();
    };
    if ulen < 8 {
        return malformed();
    }
    let mut is_sip = false;
    for i in 0..MAX_SIP_PORTS {
        let p = cfg.sip_ports_be[i];
        if p != 0 && p == dport {
            is_sip = true;
            break;
        }
    }
    if !is_sip {
        return Parsed::Done(Verdict::PassNonSip, xdp_action::XDP_PASS);
    }
    Parsed::Sip { src, v4, flags }
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (Verdict, u32) {
    let cfg = match TS_CONFIG.get(0) {
        Some(c) => *c,
        None => return (Verdict::PassNonSip, xdp_action::XDP_PASS),
    };
    let (src, v4, meta_flags) = match parse(ctx, &cfg) {
        Parsed::Done(v, a) => return (v, a),
        Parsed::Sip { src, v4, flags } => (src, v4, flags),
    };

    // Deny list first: a denied source is dropped whatever its group.
    let mut now = 0u64;
    if let Some(d) = TS_DENY.get_ptr(src) {
        // SAFETY: pointer from a successful lookup; DenyValue is plain data.
        let until = unsafe { (*d).until_ns };
        now = unsafe { bpf_ktime_get_ns() };
        if until == 0 || now < until {
            // The group lookup only on this path, so the operator sees which group the
            // denied sources belong to without costing the normal path anything.
            let group = match v4 {
                Some(a) => TS_LPM_V4.get(Key::new(32, a)).copied(),
                None => TS_LPM_V6.get(Key::new(128, src.addr)).copied(),
            };
            if let Some(g) = group {
                count_group(g.group_id, Verdict::DropDenied);
            }
            return (Verdict::DropDenied, xdp_action::XDP_DROP);
        }
        // Expired: forget it so the next packet skips the clock read.
        let _ = TS_DENY.remove(src);
    }

    let group = match v4 {
        Some(a) => TS_LPM_V4.get(Key::new(32, a)).copied(),
        None => TS_LPM_V6.get(Key::new(128, src.addr)).copied(),
    };
    let Some(group) = group else {
        if cfg.flags & CFG_F_UNCLASSIFIED_PASS != 0 {
            return (Verdict::PassUnclassified, xdp_action::XDP_PASS);
        }
        return (Verdict::DropUnclassified, xdp_action::XDP_DROP);
    };
    let gid = group.group_id;

    if group.flags & GROUP_F_DROP != 0 {
        count_group(gid, Verdict::DropGroup);
        return (Verdict::DropGroup, xdp_action::XDP_DROP);
    }

    if group.rate_pps != 0 && !take_token(&src, &group, now) {
        count_group(gid, Verdict::DropRate);
        return (Verdict::DropRate, xdp_action::XDP_DROP);
    }

    let class = group.class as u32 & (MAX_CLASSES - 1);
    if cfg.flags & CFG_F_NO_META == 0 && !write_meta(ctx, gid, class as u8, meta_flags) {
        count(Verdict::MetaFailed);
    }

    let index = ctx.rx_queue_index() * MAX_CLASSES + class;
    // flags = 0: if no socket is bound at `index` the helper returns XDP_ABORTED (0), which
    // the wrapper turns into Err — our cue to apply the configured fallback.
    match TS_XSKS.redirect(index, 0) {
        Ok(action) => {
            count_group(gid, Verdict::Redirect);
            (Verdict::Redirect, action)
        }
        Err(_) => {
            if cfg.flags & CFG_F_REDIRECT_FAIL_DROP != 0 {
                count_group(gid, Verdict::RedirectFailedDrop);
                (Verdict::RedirectFailedDrop, xdp_action::XDP_DROP)
            } else {
                count_group(gid, Verdict::RedirectFailedPass);
                (Verdict::RedirectFailedPass, xdp_action::XDP_PASS)
            }
        }
    }
}

/// Per-source token bucket. Returns false when the source is over budget.
///
/// The read-modify-write is not atomic: two CPUs handling the same source at the same instant
/// may both spend the same token. That is tolerated on purpose: RSS hashes a source's flow to
/// one rx queue (one CPU) in the common case, the error is bounded by the number of CPUs per
/// refill interval, and this is a shedding heuristic in front of the exact per-group CAC in
/// userspace. Atomics or a spin lock would cost more than the error is worth.
#[inline(always)]
fn take_token(src: &AddrKey, group: &GroupValue, now_in: u64) -> bool {
    let now = if now_in != 0 {
        now_in
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    let burst = if group.burst == 0 { 1 } else { group.burst } as u64;
    let cap = burst * TOKEN_ONE;
    match TS_BUCKETS.get_ptr_mut(src) {
        Some(b) => {
            // SAFETY: pointer from a successful lookup (see the race note above).
            let b = unsafe { &mut *b };
            let mut elapsed = now.wrapping_sub(b.last_ns);
            if elapsed > BUCKET_MAX_ELAPSED_NS {
                elapsed = BUCKET_MAX_ELAPSED_NS;
            }
            let mut tokens = b.tokens + elapsed * group.rate_pps as u64;
            if tokens > cap {
                tokens = cap;
            }
            b.last_ns = now;
            if tokens >= TOKEN_ONE {
                b.tokens = tokens - TOKEN_ONE;
                true
            } else {
                b.tokens = tokens;
                false
            }
        }
        None => {
            // New source: a full bucket minus this packet. If the insert fails (map full of
            // busy entries) the packet still passes: fail open, never starve on our own state.
            let fresh = SourceBucket {
                tokens: cap - TOKEN_ONE,
                last_ns: now,
            };
            let _ = TS_BUCKETS.insert(src, fresh, 0);
            true
        }
    }
}

/// Prepend `XdpMeta` in front of the packet. Returns false if the driver refuses metadata.
#[inline(always)]
fn write_meta(ctx: &XdpContext, group_id: u16, class: u8, flags: u8) -> bool {
    let len = core::mem::size_of::<XdpMeta>() as i32;
    // SAFETY: helper call with the program's own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -len) } != 0 {
        return false;
    }
    // Pointers moved: reload and re-check for the verifier.
    let meta = ctx.metadata();
    let data = ctx.data();
    if meta + core::mem::size_of::<XdpMeta>() > data {
        return false;
    }
    // SAFETY: `meta .. meta + 8` is inside the metadata area (checked above).
    unsafe {
        core::ptr::write_unaligned(
            meta as *mut XdpMeta,
            XdpMeta {
                magic: META_MAGIC,
                group_id,
                class,
                flags,
            },
        );
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in practice (no indexing or arithmetic that can panic survives
    // optimisation; the verifier would reject the infinite loop if it did).
    loop {}
}
