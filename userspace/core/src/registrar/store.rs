//! Compact in-memory storage of the location service (RFC 3261 §10.3 bindings, RFC 5626
//! instance-id / reg-id, RFC 3327 Path).
//!
//! Memory is the constraint here (DESIGN.md: 1,000,000 AORs in ≤ 400 MB for the whole
//! process), so one AOR is one slab slot plus **one** heap allocation: every string of the
//! record (the AOR, then per binding its URI, comparison key, Call-ID, instance-id and Path)
//! lives in a single `Box<str>`, and bindings keep `u16` offsets into it. A plain refresh
//! (same URI, Call-ID, instance and Path) only rewrites the fixed-size fields in place; any
//! string change rebuilds the blob, which is one allocation either way.
//!
//! Per shard, AORs are found through a `hashbrown::HashTable<u32>` of slab indices (4 bytes a
//! bucket, the AOR string is not duplicated as a key), and expiry is indexed by a
//! `BTreeSet<u64>` holding one packed `(earliest expiry ms, slot)` entry per AOR, so
//! `expire(now)` costs O(expired · log n) and never scans live records.

use smallvec::SmallVec;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// `q` absent (RFC 3261 §20.10 leaves it unspecified; ordered as 1.0, never echoed).
pub(super) const Q_NONE: u16 = u16::MAX;

pub(super) const F_V6: u8 = 1;
pub(super) const F_REG_ID: u8 = 2;
pub(super) const F_INSTANCE: u8 = 4;
/// The comparison key differs from the URI text and is stored separately.
pub(super) const F_KEY: u8 = 8;

/// Separator of Path entries inside the blob; NUL cannot occur in a SIP header value.
pub(super) const PATH_SEP: char = '\0';

/// Largest record blob (the offsets are `u16`).
pub(super) const MAX_BLOB: usize = u16::MAX as usize;

/// Expiry times are packed into 42 bits of milliseconds (good until the year 2109) next to a
/// 22-bit slot number in the expiry index.
pub(super) const SLOT_BITS: u32 = 22;
pub(super) const MAX_SLOTS: usize = 1 << SLOT_BITS;
pub(super) const MAX_EXPIRY_MS: u64 = (1 << (64 - SLOT_BITS)) - 1;

/// One binding, without its strings (those live in the record blob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Binding {
    /// Absolute expiry, unix ms. Alive while `now < expires_at`.
    pub expires_at: u64,
    /// Time of the REGISTER that created or last refreshed it, unix ms.
    pub updated_at: u64,
    /// Source address; IPv4 is stored IPv4-mapped (flag `F_V6` clear).
    pub ip: [u8; 16],
    pub cseq: u32,
    pub reg_id: u32,
    pub off: u16,
    pub uri_len: u16,
    pub key_len: u16,
    pub cid_len: u16,
    pub inst_len: u16,
    pub path_len: u16,
    pub port: u16,
    pub q: u16,
    pub group: u16,
    pub transport: u8,
    pub flags: u8,
}

impl Binding {
    pub fn source(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        if self.flags & F_V6 == 0 {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return SocketAddr::new(IpAddr::V4(v4), self.port);
            }
        }
        SocketAddr::V6(SocketAddrV6::new(v6, self.port, 0, 0))
    }

    pub fn set_source(&mut self, addr: SocketAddr) {
        match addr {
            SocketAddr::V4(a) => {
                self.ip = a.ip().to_ipv6_mapped().octets();
                self.flags &= !F_V6;
            }
            SocketAddr::V6(a) => {
                self.ip = a.ip().octets();
                self.flags |= F_V6;
            }
        }
        self.port = addr.port();
    }

    pub fn reg_id(&self) -> Option<u32> {
        (self.flags & F_REG_ID != 0).then_some(self.reg_id)
    }

    pub fn q(&self) -> Option<u16> {
        (self.q != Q_NONE).then_some(self.q)
    }

    /// q for ordering: absent counts as 1.0.
    pub fn q_order(&self) -> u16 {
        if self.q == Q_NONE {
            1000
        } else {
            self.q
        }
    }

    pub fn zeroed() -> Self {
        Binding {
            expires_at: 0,
            updated_at: 0,
            ip: [0; 16],
            cseq: 0,
            reg_id: 0,
            off: 0,
            uri_len: 0,
            key_len: 0,
            cid_len: 0,
            inst_len: 0,
            path_len: 0,
            port: 0,
            q: Q_NONE,
            group: 0,
            transport: 0,
            flags: 0,
        }
    }
}

/// The strings of one binding, wherever they come from (the old blob or a request).
#[derive(Clone, Copy, Debug)]
pub(super) struct Strs<'a> {
    pub uri: &'a str,
    pub key: &'a str,
    pub call_id: &'a str,
    pub instance: &'a str,
    pub path: PathSrc<'a>,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum PathSrc<'a> {
    /// Already NUL-joined (from a blob or a snapshot).
    Joined(&'a str),
    /// As received, one entry per Path header value.
    List(&'a [&'a str]),
}

impl PathSrc<'_> {
    pub fn len(&self) -> usize {
        match self {
            PathSrc::Joined(s) => s.len(),
            PathSrc::List(l) => {
                l.iter().map(|s| s.len()).sum::<usize>() + l.len().saturating_sub(1)
            }
        }
    }

    /// Equal to an already joined path?
    pub fn eq_joined(&self, joined: &str) -> bool {
        match self {
            PathSrc::Joined(s) => *s == joined,
            PathSrc::List(l) => {
                if l.is_empty() {
                    return joined.is_empty();
                }
                let mut parts = joined.split(PATH_SEP);
                for want in l.iter() {
                    if parts.next() != Some(*want) {
                        return false;
                    }
                }
                parts.next().is_none()
            }
        }
    }

    fn push_to(&self, out: &mut String) {
        match self {
            PathSrc::Joined(s) => out.push_str(s),
            PathSrc::List(l) => {
                for (i, p) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(PATH_SEP);
                    }
                    out.push_str(p);
                }
            }
        }
    }
}

impl Strs<'_> {
    /// Bytes this binding adds to a blob.
    pub fn blob_len(&self) -> usize {
        let key = if self.key == self.uri {
            0
        } else {
            self.key.len()
        };
        self.uri.len() + key + self.call_id.len() + self.instance.len() + self.path.len()
    }
}

/// All bindings of one AOR.
#[derive(Debug, Default)]
pub(super) struct AorRecord {
    /// `aor`, then per binding: uri, key (if `F_KEY`), call-id, instance, path.
    blob: Box<str>,
    pub bindings: SmallVec<[Binding; 1]>,
}

/// The blob would exceed 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooLarge;

impl AorRecord {
    /// Builds a record from bindings and their strings, laying the blob out in order.
    /// `parts` is (numeric fields, strings); offsets/lengths/flags are set here.
    pub fn build<'s, I>(aor: &str, total_len: usize, parts: I) -> Result<Self, TooLarge>
    where
        I: IntoIterator<Item = (Binding, Strs<'s>)>,
    {
        Self::build_in(String::new(), aor, total_len, parts)
    }

    /// [`build`](Self::build) into `buf`'s allocation (its contents are discarded): when the
    /// new blob has the length of the one `buf` came from, no allocation happens at all.
    pub fn build_in<'s, I>(
        mut buf: String,
        aor: &str,
        total_len: usize,
        parts: I,
    ) -> Result<Self, TooLarge>
    where
        I: IntoIterator<Item = (Binding, Strs<'s>)>,
    {
        let cap = aor.len() + total_len;
        if cap > MAX_BLOB {
            return Err(TooLarge);
        }
        buf.clear();
        if buf.capacity() != cap {
            // Exactly `cap`, so `into_boxed_str` below never reallocates.
            buf = String::with_capacity(cap);
        }
        let mut blob = buf;
        blob.push_str(aor);
        let mut bindings = SmallVec::new();
        for (mut b, s) in parts {
            if blob.len() + s.blob_len() > MAX_BLOB {
                return Err(TooLarge);
            }
            b.off = blob.len() as u16;
            b.uri_len = s.uri.len() as u16;
            blob.push_str(s.uri);
            if s.key != s.uri {
                b.flags |= F_KEY;
                b.key_len = s.key.len() as u16;
                blob.push_str(s.key);
            } else {
                b.flags &= !F_KEY;
                b.key_len = 0;
            }
            b.cid_len = s.call_id.len() as u16;
            blob.push_str(s.call_id);
            b.inst_len = s.instance.len() as u16;
            blob.push_str(s.instance);
            if s.instance.is_empty() {
                b.flags &= !F_INSTANCE;
            } else {
                b.flags |= F_INSTANCE;
            }
            let start = blob.len();
            s.path.push_to(&mut blob);
            b.path_len = (blob.len() - start) as u16;
            bindings.push(b);
        }
        Ok(AorRecord {
            blob: blob.into_boxed_str(),
            bindings,
        })
    }

    /// The record's string storage, for [`build_in`](Self::build_in) to reuse.
    pub fn into_blob(self) -> String {
        self.blob.into_string()
    }

    /// The AOR: the blob up to the first binding's strings. Empty records are never kept.
    pub fn aor(&self) -> &str {
        match self.bindings.first() {
            Some(b) => &self.blob[..b.off as usize],
            None => "",
        }
    }

    fn at(&self, start: usize, len: u16) -> &str {
        &self.blob[start..start + len as usize]
    }

    pub fn uri(&self, b: &Binding) -> &str {
        self.at(b.off as usize, b.uri_len)
    }

    pub fn key(&self, b: &Binding) -> &str {
        if b.flags & F_KEY != 0 {
            self.at(b.off as usize + b.uri_len as usize, b.key_len)
        } else {
            self.uri(b)
        }
    }

    fn cid_start(b: &Binding) -> usize {
        b.off as usize + b.uri_len as usize + b.key_len as usize
    }

    pub fn call_id(&self, b: &Binding) -> &str {
        self.at(Self::cid_start(b), b.cid_len)
    }

    /// Empty when absent.
    pub fn instance(&self, b: &Binding) -> &str {
        self.at(Self::cid_start(b) + b.cid_len as usize, b.inst_len)
    }

    /// NUL-joined Path entries, empty when none.
    pub fn path(&self, b: &Binding) -> &str {
        self.at(
            Self::cid_start(b) + b.cid_len as usize + b.inst_len as usize,
            b.path_len,
        )
    }

    pub fn strs(&self, b: &Binding) -> Strs<'_> {
        Strs {
            uri: self.uri(b),
            key: self.key(b),
            call_id: self.call_id(b),
            instance: self.instance(b),
            path: PathSrc::Joined(self.path(b)),
        }
    }

    /// Earliest expiry of any binding (expired ones included).
    pub fn min_expiry(&self) -> Option<u64> {
        self.bindings.iter().map(|b| b.expires_at).min()
    }

    /// The record's entry in the shard's expiry index.
    pub fn index_key(&self, slot: u32) -> Option<u64> {
        self.min_expiry().map(|e| pack(e, slot))
    }

    /// Drops bindings with `expires_at <= now`; returns how many. Rebuilds the blob only
    /// when something was dropped and something remains.
    pub fn purge(&mut self, now: u64) -> usize {
        let dead = self.bindings.iter().filter(|b| b.expires_at <= now).count();
        if dead == 0 {
            return 0;
        }
        if dead == self.bindings.len() {
            *self = AorRecord::default();
            return dead;
        }
        let aor = self.aor();
        let live = self.bindings.iter().filter(|b| b.expires_at > now);
        let total = live.clone().map(|b| self.strs(b).blob_len()).sum();
        // A subset of an existing blob always fits.
        if let Ok(rec) = AorRecord::build(aor, total, live.map(|b| (b.clone(), self.strs(b)))) {
            *self = rec;
        }
        dead
    }

    /// Indices of bindings alive at `now`, by q descending, then most recently updated first.
    pub fn ordered(&self, now: u64) -> SmallVec<[u8; 8]> {
        if let [b] = &self.bindings[..] {
            // The usual single binding: nothing to sort.
            let mut one = SmallVec::new();
            if b.expires_at > now {
                one.push(0);
            }
            return one;
        }
        let mut idx: SmallVec<[u8; 8]> = (0..self.bindings.len().min(256))
            .filter(|&i| self.bindings[i].expires_at > now)
            .map(|i| i as u8)
            .collect();
        idx.sort_by(|&a, &b| {
            let (a, b) = (&self.bindings[a as usize], &self.bindings[b as usize]);
            b.q_order()
                .cmp(&a.q_order())
                .then(b.updated_at.cmp(&a.updated_at))
        });
        idx
    }
}

pub(super) fn pack(expires_at: u64, slot: u32) -> u64 {
    (expires_at.min(MAX_EXPIRY_MS) << SLOT_BITS) | slot as u64
}

pub(super) fn unpack(key: u64) -> (u64, u32) {
    (key >> SLOT_BITS, (key & (MAX_SLOTS as u64 - 1)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs<'a>(uri: &'a str, cid: &'a str, path: &'a [&'a str]) -> Strs<'a> {
        Strs {
            uri,
            key: uri,
            call_id: cid,
            instance: "",
            path: PathSrc::List(path),
        }
    }

    #[test]
    fn blob_layout_round_trips_strings() {
        let mut b = Binding::zeroed();
        b.expires_at = 10;
        let path = ["<sip:p1.test;lr>", "<sip:p2.test;lr>"];
        let s1 = Strs {
            uri: "sip:A@h",
            key: "sip:a@h",
            call_id: "cid1",
            instance: "<urn:uuid:1>",
            path: PathSrc::List(&path),
        };
        let s2 = strs("sip:b@h", "cid2", &[]);
        let total = s1.blob_len() + s2.blob_len();
        let rec =
            AorRecord::build("sip:alice@x", total, [(b.clone(), s1), (b.clone(), s2)]).unwrap();
        assert_eq!(rec.aor(), "sip:alice@x");
        let (b1, b2) = (&rec.bindings[0], &rec.bindings[1]);
        assert_eq!(rec.uri(b1), "sip:A@h");
        assert_eq!(rec.key(b1), "sip:a@h");
        assert_eq!(rec.call_id(b1), "cid1");
        assert_eq!(rec.instance(b1), "<urn:uuid:1>");
        assert_eq!(rec.path(b1), "<sip:p1.test;lr>\0<sip:p2.test;lr>");
        assert!(PathSrc::List(&path).eq_joined(rec.path(b1)));
        assert!(!PathSrc::List(&path[..1]).eq_joined(rec.path(b1)));
        assert_eq!(rec.key(b2), "sip:b@h");
        assert_eq!(rec.call_id(b2), "cid2");
        assert_eq!(rec.instance(b2), "");
        assert_eq!(rec.path(b2), "");
        assert!(PathSrc::List(&[]).eq_joined(rec.path(b2)));
    }

    #[test]
    fn purge_keeps_live_strings() {
        let mut b1 = Binding::zeroed();
        b1.expires_at = 5;
        let mut b2 = Binding::zeroed();
        b2.expires_at = 50;
        let (s1, s2) = (strs("sip:one@h", "c1", &[]), strs("sip:two@h", "c2", &[]));
        let mut rec = AorRecord::build(
            "sip:x@y",
            s1.blob_len() + s2.blob_len(),
            [(b1, s1), (b2, s2)],
        )
        .unwrap();
        assert_eq!(rec.purge(4), 0);
        assert_eq!(rec.purge(5), 1);
        assert_eq!(rec.bindings.len(), 1);
        assert_eq!(rec.aor(), "sip:x@y");
        assert_eq!(rec.uri(&rec.bindings[0]), "sip:two@h");
        assert_eq!(rec.call_id(&rec.bindings[0]), "c2");
        assert_eq!(rec.purge(50), 1);
        assert!(rec.bindings.is_empty());
    }

    #[test]
    fn oversized_blob_is_refused() {
        let big = "x".repeat(40_000);
        let s = strs(&big, &big, &[]);
        assert_eq!(
            AorRecord::build("sip:a@b", s.blob_len(), [(Binding::zeroed(), s)]).unwrap_err(),
            TooLarge
        );
    }

    #[test]
    fn source_round_trip_and_pack() {
        let mut b = Binding::zeroed();
        for a in ["192.0.2.7:5060", "[2001:db8::1]:5070", "[::ffff:1.2.3.4]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            b.set_source(a);
            assert_eq!(b.source(), a);
        }
        assert_eq!(unpack(pack(1_800_000_000_123, 77)), (1_800_000_000_123, 77));
        assert_eq!(unpack(pack(u64::MAX, 3)), (MAX_EXPIRY_MS, 3));
        assert!(pack(10, MAX_SLOTS as u32 - 1) < pack(11, 0));
    }

    #[test]
    fn record_is_compact() {
        // The memory budget depends on these; a change here must be a conscious one.
        assert!(std::mem::size_of::<Binding>() <= 64);
        assert!(std::mem::size_of::<AorRecord>() <= 88);
    }
}
