//! The location service and REGISTER processing (RFC 3261 §10.3).
//!
//! Implements, over plain data extracted by the message layer:
//! - RFC 3261 §10.3 steps 6–8: `Contact: *` rules, expiry precedence (contact `expires`
//!   param > Expires header > default), 423 Interval Too Brief (§10.3 step 7, §21.4.17),
//!   shortening to the maximum, per-binding Call-ID/CSeq ordering, all-or-nothing commit,
//!   and the list of all current bindings for the 200 OK.
//! - RFC 5626 §6 / RFC 5627: a contact with `+sip.instance` (and `reg-id`) replaces the
//!   binding with the same instance (and reg-id) even when the URI differs.
//! - RFC 3327: the Path of the REGISTER is stored with each binding.
//!
//! Storage is sharded by AOR hash; one AOR's update happens entirely under its shard's
//! lock, so updates to one AOR are atomic and applied in arrival order. See `store.rs` for
//! the compact layout and `snapshot.rs` for persistence.
//!
//! API at a glance (all `&self`, safe to share across worker threads):
//! - [`Registrar::register_into`] (hot path, reusable [`Bindings`] output) /
//!   [`Registrar::register`] (owned [`RegisterOutcome`]): one REGISTER.
//! - [`Registrar::lookup_with`] (zero-copy visitor) / [`Registrar::lookup`]: bindings alive
//!   now, q descending then most recently refreshed first.
//! - [`Registrar::expire`] every ~second, [`Registrar::next_expiry`]: O(expired · log n).
//! - [`Registrar::for_each_binding`], counts, [`Registrar::group_binding_count`]: show/stats.
//! - [`Registrar::write_snapshot`], [`Registrar::restore_snapshot`] (slice, atomic),
//!   [`Registrar::restore_snapshot_from`] (streaming, for startup).
//!
//! Choices where the RFC leaves room: a request that would grow an AOR past
//! `max_contacts_per_aor` is rejected (Kamailio's behaviour), not served by evicting the
//! oldest binding; same Call-ID with the *same* CSeq is reported as `Duplicate` (with the
//! current bindings) rather than a plain failure, since it is almost always a retransmission.

mod snapshot;
mod store;

pub use snapshot::{SnapshotError, SnapshotStats};

use ahash::RandomState;
use hashbrown::HashTable;
use parking_lot::Mutex;
use smallvec::SmallVec;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::time::Millis;
use store::{AorRecord, Binding, PathSrc, Strs, MAX_SLOTS, PATH_SEP, Q_NONE};

/// `[registrar]` of the config (DESIGN.md), already validated by the daemon.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// Below this: 423 Interval Too Brief with Min-Expires.
    pub min_expires: u32,
    /// Above this: shortened to it.
    pub max_expires: u32,
    /// When neither the contact's expires param nor an Expires header is present.
    pub default_expires: u32,
    pub max_contacts_per_aor: usize,
    /// Storm spreading: granted expiry is reduced by a random 0..=N % (0 = off).
    pub expires_jitter_percent: u8,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts_per_aor: 10,
            expires_jitter_percent: 0,
        }
    }
}

/// Transport the REGISTER arrived on (stored to reach the UA later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Transport {
    #[default]
    Udp = 0,
    Tcp = 1,
    Tls = 2,
    Sctp = 3,
    Ws = 4,
    Wss = 5,
}

impl Transport {
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Transport> {
        Some(match v {
            0 => Transport::Udp,
            1 => Transport::Tcp,
            2 => Transport::Tls,
            3 => Transport::Sctp,
            4 => Transport::Ws,
            5 => Transport::Wss,
            _ => return None,
        })
    }
}

/// One Contact of a REGISTER, already parsed by the message layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContactReq<'a> {
    /// The addr-spec inside `<>` as received (echoed back in the 200 OK).
    pub uri: &'a str,
    /// Canonical comparison key per RFC 3261 §19.1.4, computed by the caller.
    pub key: &'a str,
    /// `;expires=` (None if absent or invalid).
    pub expires: Option<u32>,
    /// q × 1000, 0..=1000. None: unspecified (ordered as 1.0, not echoed).
    pub q: Option<u16>,
    /// `+sip.instance` value as received (e.g. `"<urn:uuid:…>"`), RFC 5626.
    pub instance: Option<&'a str>,
    /// `reg-id`, RFC 5626.
    pub reg_id: Option<u32>,
}

/// A REGISTER reduced to what §10.3 needs.
#[derive(Clone, Copy, Debug)]
pub struct RegisterReq<'a> {
    /// Canonical AOR (e.g. `sip:alice@example.test`), computed by the caller.
    pub aor: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    /// `Contact: *`.
    pub star: bool,
    /// Empty (and `star == false`): a query, bindings are returned unchanged.
    pub contacts: &'a [ContactReq<'a>],
    pub expires_header: Option<u32>,
    pub source: SocketAddr,
    pub transport: Transport,
    /// Path header values in order (RFC 3327), stored with every binding of the request.
    pub path: &'a [&'a str],
    /// IP Group id of the source.
    pub group: u16,
}

/// Why a REGISTER was refused. Nothing was changed in any of these cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// 423 Interval Too Brief, with `Min-Expires: min_expires`.
    IntervalTooBrief { min_expires: u32 },
    /// 400 with this reason phrase.
    BadRequest(&'static str),
    /// Same Call-ID as a stored binding and a lower CSeq (§10.3 step 7: "the update MUST be
    /// aborted and the request fails"). Suggested answer: 500 Server Internal Error
    /// ("Out of order CSeq"), as the RFC names no code.
    OutOfOrder,
    /// Same Call-ID and the *same* CSeq as a stored binding: by §10.3 also aborted, but this is
    /// almost always a retransmission that no transaction layer absorbed. `register_into`
    /// still fills `out` with the current bindings, so the engine may re-answer 200 OK.
    Duplicate,
    /// The AOR would hold more than `max_contacts_per_aor` bindings. Rejected rather than
    /// evicting the oldest, as Kamailio's `max_contacts` does: suggested answer
    /// 503 "Too many registered contacts".
    TooManyContacts { max: usize },
    /// The location service is out of capacity (slots per shard, or 64 KiB per AOR). 503.
    Full,
}

/// What a successful REGISTER changed (for metrics and per-group accounting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterOk {
    pub added: u16,
    pub refreshed: u16,
    pub removed: u16,
    /// The AOR had no binding before and has one now.
    pub aor_created: bool,
    /// The AOR had bindings before and has none now.
    pub aor_removed: bool,
}

/// Result of [`Registrar::register`]: the flat form the engine matches on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// 200 OK listing these bindings (all current bindings of the AOR).
    Ok(Bindings),
    IntervalTooBrief {
        min_expires: u32,
    },
    BadRequest(&'static str),
    OutOfOrder,
    /// See [`RegisterError::Duplicate`]; carries the current bindings.
    Duplicate(Bindings),
    TooManyContacts {
        max: usize,
    },
    Full,
}

/// The current bindings of one AOR as the 200 OK needs them (RFC 3261 §10.3 step 8).
/// Reusable: keep one per worker and pass it to [`Registrar::register_into`]; after warm-up
/// filling it does not allocate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bindings {
    text: String,
    items: SmallVec<[Item; 2]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    uri_end: u32,
    inst_end: u32,
    expires: u32,
    reg_id: Option<u32>,
    q: Option<u16>,
}

/// One entry of [`Bindings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantedBinding<'a> {
    pub uri: &'a str,
    /// Remaining seconds (rounded up) — the `expires` param to send.
    pub expires: u32,
    pub q: Option<u16>,
    pub instance: Option<&'a str>,
    pub reg_id: Option<u32>,
}

impl Bindings {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn clear(&mut self) {
        self.text.clear();
        self.items.clear();
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn get(&self, i: usize) -> Option<GrantedBinding<'_>> {
        let it = self.items.get(i)?;
        let start = if i == 0 {
            0
        } else {
            self.items[i - 1].inst_end as usize
        };
        let uri = &self.text[start..it.uri_end as usize];
        let inst = &self.text[it.uri_end as usize..it.inst_end as usize];
        Some(GrantedBinding {
            uri,
            expires: it.expires,
            q: it.q,
            instance: (!inst.is_empty()).then_some(inst),
            reg_id: it.reg_id,
        })
    }
    /// In lookup order: q descending, then most recently refreshed first.
    pub fn iter(&self) -> impl Iterator<Item = GrantedBinding<'_>> + '_ {
        (0..self.items.len()).filter_map(move |i| self.get(i))
    }

    fn fill(&mut self, rec: &AorRecord, now: Millis) {
        self.clear();
        for i in rec.ordered(now.0) {
            let b = &rec.bindings[i as usize];
            self.text.push_str(rec.uri(b));
            let uri_end = self.text.len() as u32;
            self.text.push_str(rec.instance(b));
            self.items.push(Item {
                uri_end,
                inst_end: self.text.len() as u32,
                expires: now.secs_until(Millis(b.expires_at)).min(u32::MAX as u64) as u32,
                reg_id: b.reg_id(),
                q: b.q(),
            });
        }
    }
}

/// A binding as stored, borrowed under the shard lock (visitor APIs).
#[derive(Clone, Copy, Debug)]
pub struct BindingRef<'a> {
    pub aor: &'a str,
    pub uri: &'a str,
    pub key: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub q: Option<u16>,
    pub expires_at: Millis,
    /// Time of the REGISTER that created or last refreshed the binding.
    pub registered_at: Millis,
    pub source: SocketAddr,
    pub transport: Transport,
    pub group: u16,
    pub instance: Option<&'a str>,
    pub reg_id: Option<u32>,
    path_joined: &'a str,
}

impl<'a> BindingRef<'a> {
    fn new(rec: &'a AorRecord, b: &Binding) -> Self {
        let inst = rec.instance(b);
        BindingRef {
            aor: rec.aor(),
            uri: rec.uri(b),
            key: rec.key(b),
            call_id: rec.call_id(b),
            cseq: b.cseq,
            q: b.q(),
            expires_at: Millis(b.expires_at),
            registered_at: Millis(b.updated_at),
            source: b.source(),
            transport: Transport::from_u8(b.transport).unwrap_or_default(),
            group: b.group,
            instance: (!inst.is_empty()).then_some(inst),
            reg_id: b.reg_id(),
            path_joined: rec.path(b),
        }
    }

    /// Path entries in order (RFC 3327), to become the Route set toward the UA.
    pub fn path(&self) -> impl Iterator<Item = &'a str> + 'a {
        let p = self.path_joined;
        p.split(PATH_SEP).filter(move |_| !p.is_empty())
    }

    /// Remaining lifetime in whole seconds, rounded up.
    pub fn expires_in(&self, now: Millis) -> u32 {
        now.secs_until(self.expires_at).min(u32::MAX as u64) as u32
    }

    pub fn to_view(&self) -> BindingView {
        BindingView {
            aor: self.aor.into(),
            uri: self.uri.into(),
            key: self.key.into(),
            call_id: self.call_id.into(),
            cseq: self.cseq,
            q: self.q,
            expires_at: self.expires_at,
            registered_at: self.registered_at,
            source: self.source,
            transport: self.transport,
            group: self.group,
            instance: self.instance.map(Into::into),
            reg_id: self.reg_id,
            path: self.path().map(Into::into).collect(),
        }
    }
}

/// An owned copy of a binding (from [`Registrar::lookup`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingView {
    pub aor: String,
    pub uri: String,
    pub key: String,
    pub call_id: String,
    pub cseq: u32,
    pub q: Option<u16>,
    pub expires_at: Millis,
    pub registered_at: Millis,
    pub source: SocketAddr,
    pub transport: Transport,
    pub group: u16,
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    pub path: Vec<String>,
}

impl BindingView {
    pub fn expires_in(&self, now: Millis) -> u32 {
        now.secs_until(self.expires_at).min(u32::MAX as u64) as u32
    }
}

/// Contacts one request may carry (more: TooManyContacts).
const MAX_CONTACTS_PER_REQUEST: usize = 256;
/// Longest single string accepted (URI, key, Call-ID, instance, AOR, Path total).
const MAX_STR: usize = 4096;
/// Expiry work done per lock acquisition in `expire`, so workers are not stalled.
const EXPIRE_BATCH: usize = 1024;
/// Records visited per lock acquisition by whole-registrar walks (show, snapshot).
const VISIT_CHUNK: usize = 256;

#[repr(align(64))]
struct Padded(Mutex<Shard>);

#[derive(Default)]
struct Shard {
    table: HashTable<u32>,
    slab: Vec<AorRecord>,
    free: Vec<u32>,
    /// Packed (earliest expiry, slot), a min-heap with lazy deletion: an entry is live only
    /// while it equals its record's current `index_key`. A refresh pushes the new key and
    /// leaves the old one to be dropped when it reaches the top (or by `compact`), so the
    /// REGISTER path pays a push at the tail of a vector — usually no sift at all, new
    /// expiries being later than most — instead of a B-tree removal and insertion, two
    /// walks through cold nodes per refresh. Processing an entry is a `purge(now)` of its
    /// record, which is idempotent, so a duplicate or stale-but-equal entry costs a purge
    /// and never a wrong result.
    index: BinaryHeap<Reverse<u64>>,
    bindings: usize,
}

/// What shard operations need besides the shard: the AOR hasher and the per-IP-Group
/// binding counters (relaxed atomics, updated under the shard lock, read without it).
struct Ctx {
    hasher: RandomState,
    /// Two-level (by high byte) so that only pages of group ids in use are allocated.
    groups: [OnceLock<Box<[AtomicU32; 256]>>; 256],
}

/// IP Groups of a record's bindings, to update the per-group counters by difference.
type Groups = SmallVec<[u16; 4]>;

impl Ctx {
    fn groups(rec: &AorRecord) -> Groups {
        rec.bindings.iter().map(|b| b.group).collect()
    }

    /// Counters follow a change of a record from `before` to `after` (no-op when equal,
    /// the common refresh, so workers do not bounce the counter cache lines).
    fn account(&self, before: &[u16], after: &[u16]) {
        if before == after {
            return;
        }
        for &g in before {
            self.counter(g).fetch_sub(1, Ordering::Relaxed);
        }
        for &g in after {
            self.counter(g).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`account`](Self::account) from `before` to `rec`'s groups, collecting them only
    /// when they changed (a refresh or a replaced binding keeps its group).
    fn account_to(&self, before: &[u16], rec: &AorRecord) {
        if rec
            .bindings
            .iter()
            .map(|b| b.group)
            .eq(before.iter().copied())
        {
            return;
        }
        self.account(before, &Ctx::groups(rec));
    }

    fn counter(&self, g: u16) -> &AtomicU32 {
        let page = self.groups[(g >> 8) as usize]
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU32::new(0))));
        &page[(g & 0xff) as usize]
    }
}

/// The location service: AOR → bindings, shared by all workers.
pub struct Registrar {
    cfg: RegistrarConfig,
    cx: Ctx,
    shards: Box<[Padded]>,
    mask: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Existing(u16),
    New,
    /// Superseded by a later contact of the same request with the same identity.
    Skip,
}

impl Registrar {
    /// `shards` is rounded up to a power of two (1..=4096); 64–256 suits a few workers.
    pub fn new(cfg: RegistrarConfig, shards: usize) -> Self {
        let n = shards.clamp(1, 4096).next_power_of_two();
        Registrar {
            cfg,
            cx: Ctx {
                hasher: RandomState::new(),
                groups: std::array::from_fn(|_| OnceLock::new()),
            },
            shards: (0..n)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            mask: n - 1,
        }
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    fn hash(&self, aor: &str) -> u64 {
        self.cx.hasher.hash_one(aor)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // hashbrown uses the low bits for the bucket and the top 7 for tags; take the middle.
        &self.shards[(hash >> 32) as usize & self.mask].0
    }

    /// Granted lifetime for a nonzero requested one that passed the 423 check.
    fn grant(&self, requested: u32, jitter: u32) -> u32 {
        let c = &self.cfg;
        let g = requested.min(c.max_expires);
        let pct = c.expires_jitter_percent.min(100) as u64;
        let g = if pct == 0 {
            g
        } else {
            let span = g as u64 * pct / 100;
            let cut = (span * jitter as u64 / u32::MAX as u64) as u32;
            (g - cut).max(g.min(c.min_expires))
        };
        g.max(1)
    }

    /// RFC 3261 §10.3 steps 6–8 for one REGISTER. `jitter` is a uniformly random value from
    /// the caller (used only when `expires_jitter_percent > 0`).
    pub fn register(&self, now: Millis, req: &RegisterReq<'_>, jitter: u32) -> RegisterOutcome {
        let mut out = Bindings::new();
        match self.register_into(now, req, jitter, &mut out) {
            Ok(_) => RegisterOutcome::Ok(out),
            Err(RegisterError::IntervalTooBrief { min_expires }) => {
                RegisterOutcome::IntervalTooBrief { min_expires }
            }
            Err(RegisterError::BadRequest(r)) => RegisterOutcome::BadRequest(r),
            Err(RegisterError::OutOfOrder) => RegisterOutcome::OutOfOrder,
            Err(RegisterError::Duplicate) => RegisterOutcome::Duplicate(out),
            Err(RegisterError::TooManyContacts { max }) => RegisterOutcome::TooManyContacts { max },
            Err(RegisterError::Full) => RegisterOutcome::Full,
        }
    }

    /// Allocation-free form of [`register`](Self::register): on success (and on
    /// `Duplicate`) `out` holds every current binding of the AOR for the 200 OK; on any
    /// other error `out` is empty. Nothing changes unless `Ok` is returned.
    pub fn register_into(
        &self,
        now: Millis,
        req: &RegisterReq<'_>,
        jitter: u32,
        out: &mut Bindings,
    ) -> Result<RegisterOk, RegisterError> {
        out.clear();
        let grants = self.validate(req, jitter)?;
        let hash = self.hash(req.aor);
        let mut shard = self.shard(hash).lock();
        shard.register(hash, now, req, &grants, &self.cfg, out, &self.cx)
    }

    /// Everything that does not depend on stored state: syntax-level rules, then 423.
    /// Returns the granted seconds per contact (0 = remove).
    fn validate(
        &self,
        req: &RegisterReq<'_>,
        jitter: u32,
    ) -> Result<SmallVec<[u32; 4]>, RegisterError> {
        use RegisterError::BadRequest;
        if req.aor.is_empty() || req.aor.len() > MAX_STR {
            return Err(BadRequest("Invalid address of record"));
        }
        if req.call_id.is_empty() || req.call_id.len() > MAX_STR {
            return Err(BadRequest("Invalid Call-ID"));
        }
        let path_len = PathSrc::List(req.path).len();
        if path_len > MAX_STR
            || req
                .path
                .iter()
                .any(|p| p.is_empty() || p.contains(PATH_SEP))
        {
            return Err(BadRequest("Invalid Path"));
        }
        if req.star {
            // §10.3 step 6.
            if !req.contacts.is_empty() {
                return Err(BadRequest("Contact * must be the only contact"));
            }
            if req.expires_header != Some(0) {
                return Err(BadRequest("Contact * requires Expires: 0"));
            }
            return Ok(SmallVec::new());
        }
        if req.contacts.len() > MAX_CONTACTS_PER_REQUEST {
            return Err(RegisterError::TooManyContacts {
                max: self.cfg.max_contacts_per_aor,
            });
        }
        let mut grants = SmallVec::with_capacity(req.contacts.len());
        let mut too_brief = false;
        for c in req.contacts {
            if c.uri.is_empty() || c.uri.len() > MAX_STR || c.key.len() > MAX_STR {
                return Err(BadRequest("Invalid Contact URI"));
            }
            if c.q.is_some_and(|q| q > 1000) {
                return Err(BadRequest("Invalid q value"));
            }
            if c.instance
                .is_some_and(|i| i.is_empty() || i.len() > MAX_STR)
            {
                return Err(BadRequest("Invalid +sip.instance"));
            }
            // §10.3 step 7: param, else header, else the local default.
            let requested = c
                .expires
                .or(req.expires_header)
                .unwrap_or(self.cfg.default_expires);
            if requested == 0 {
                grants.push(0);
                continue;
            }
            if requested < self.cfg.min_expires {
                too_brief = true;
            }
            grants.push(self.grant(requested, jitter));
        }
        if too_brief {
            return Err(RegisterError::IntervalTooBrief {
                min_expires: self.cfg.min_expires,
            });
        }
        Ok(grants)
    }

    /// Bindings of `aor` alive at `now`, by q descending then most recently refreshed first.
    pub fn lookup(&self, aor: &str, now: Millis) -> Vec<BindingView> {
        let mut v = Vec::new();
        self.lookup_with(aor, now, |b| v.push(b.to_view()));
        v
    }

    /// Zero-copy [`lookup`](Self::lookup): `f` runs under the shard lock (keep it short, and
    /// never call back into the registrar from it). Returns the number visited.
    pub fn lookup_with(&self, aor: &str, now: Millis, mut f: impl FnMut(&BindingRef<'_>)) -> usize {
        let hash = self.hash(aor);
        let shard = self.shard(hash).lock();
        let Some(&slot) = shard.find(hash, aor) else {
            return 0;
        };
        let rec = &shard.slab[slot as usize];
        let order = rec.ordered(now.0);
        for &i in &order {
            f(&BindingRef::new(rec, &rec.bindings[i as usize]));
        }
        order.len()
    }

    /// Removes every binding with `expires_at <= now`; returns how many. Cost is
    /// O(expired · log n): only index entries that are due are touched.
    pub fn expire(&self, now: Millis) -> usize {
        let mut total = 0;
        for s in self.shards.iter() {
            loop {
                let mut shard = s.0.lock();
                let (n, more) = shard.expire(now.0, EXPIRE_BATCH, &self.cx);
                total += n;
                if !more {
                    break;
                }
                // Let workers in between batches.
                drop(shard);
            }
        }
        total
    }

    /// Earliest binding expiry (possibly already past), if any binding exists.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.shards
            .iter()
            .filter_map(|s| s.0.lock().first_live().map(|k| Millis(store::unpack(k).0)))
            .min()
    }

    /// Number of AORs with at least one stored binding (expired but not yet purged included).
    pub fn aor_count(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().table.len()).sum()
    }

    /// Same as [`aor_count`](Self::aor_count).
    pub fn len(&self) -> usize {
        self.aor_count()
    }

    pub fn is_empty(&self) -> bool {
        self.aor_count() == 0
    }

    /// Stored bindings (expired but not yet purged included).
    pub fn binding_count(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().bindings).sum()
    }

    /// Stored bindings whose last REGISTER came from IP Group `group` (expired but not yet
    /// purged included). O(1) and lock-free, for CAC's registered-user limit and stats.
    pub fn group_binding_count(&self, group: u16) -> u32 {
        self.cx.groups[(group >> 8) as usize]
            .get()
            .map_or(0, |p| p[(group & 0xff) as usize].load(Ordering::Relaxed))
    }

    /// Visits every binding alive at `now`, in order within each AOR. For `show
    /// registrations`: `f` runs under a shard lock, a few hundred AORs at a time, so a full
    /// walk of a million bindings never stalls the workers for long. Each AOR is seen
    /// consistently; AORs created or removed during the walk may or may not be visited.
    pub fn for_each_binding(&self, now: Millis, mut f: impl FnMut(&BindingRef<'_>)) {
        self.for_each_record(|rec| {
            if let Some(rec) = rec {
                for i in rec.ordered(now.0) {
                    f(&BindingRef::new(rec, &rec.bindings[i as usize]));
                }
            }
        });
    }

    /// Every stored record (`Some`), each shard in chunks of `VISIT_CHUNK` slots per lock
    /// hold; `None` after each chunk, with no lock held (the moment for slow work like IO).
    fn for_each_record(&self, mut f: impl FnMut(Option<&AorRecord>)) {
        let mut slots: Vec<u32> = Vec::new();
        for s in self.shards.iter() {
            slots.clear();
            slots.extend(s.0.lock().table.iter().copied());
            for chunk in slots.chunks(VISIT_CHUNK) {
                let shard = s.0.lock();
                for &slot in chunk {
                    // Records never move; a slot freed meanwhile is empty (or reused by
                    // another AOR, which is then visited in its current state).
                    if let Some(rec) = shard.slab.get(slot as usize) {
                        if !rec.bindings.is_empty() {
                            f(Some(rec));
                        }
                    }
                }
                drop(shard);
                f(None);
            }
        }
    }

    /// Pre-sizes every shard for about `aors` more AORs (e.g. before a bulk restore), so the
    /// tables grow once instead of rehashing repeatedly.
    pub fn reserve(&self, aors: usize) {
        let per = aors / self.shards.len() + aors / self.shards.len() / 16 + 16;
        for s in self.shards.iter() {
            let mut shard = s.0.lock();
            let Shard {
                table, slab, free, ..
            } = &mut *shard;
            table.reserve(per, |&i| self.cx.hasher.hash_one(slab[i as usize].aor()));
            slab.reserve(per.saturating_sub(free.len()));
        }
    }

    /// Removes every binding of every AOR; returns how many.
    pub fn clear(&self) -> usize {
        let mut n = 0;
        for s in self.shards.iter() {
            let mut shard = s.0.lock();
            for &slot in shard.table.iter() {
                self.cx
                    .account(&Ctx::groups(&shard.slab[slot as usize]), &[]);
            }
            n += shard.bindings;
            *shard = Shard::default();
        }
        n
    }

    /// Removes every binding of `aor` unconditionally (administrative); returns how many.
    pub fn remove_aor(&self, aor: &str) -> usize {
        let hash = self.hash(aor);
        let mut shard = self.shard(hash).lock();
        let Some(&slot) = shard.find(hash, aor) else {
            return 0;
        };
        let n = shard.slab[slot as usize].bindings.len();
        shard.replace(hash, slot, AorRecord::default(), &self.cx);
        n
    }

    /// Replaces the whole record of an AOR (snapshot restore). Returns bindings stored.
    fn put_record(&self, rec: AorRecord) -> Result<usize, RegisterError> {
        let hash = self.hash(rec.aor());
        let mut shard = self.shard(hash).lock();
        let n = rec.bindings.len();
        let aor = rec.aor();
        match shard.find(hash, aor) {
            Some(&slot) => shard.replace(hash, slot, rec, &self.cx),
            None => {
                shard.insert_new(hash, rec, &self.cx)?;
            }
        }
        Ok(n)
    }
}

impl Shard {
    /// Whether index entry `key` is its record's current key (see `Shard::index`).
    fn is_live(&self, key: u64) -> bool {
        let slot = store::unpack(key).1;
        self.slab
            .get(slot as usize)
            .is_some_and(|r| r.index_key(slot) == Some(key))
    }

    /// The earliest live index entry, dropping stale ones on top.
    fn first_live(&mut self) -> Option<u64> {
        while let Some(&Reverse(k)) = self.index.peek() {
            if self.is_live(k) {
                return Some(k);
            }
            self.index.pop();
        }
        None
    }

    /// Adds `key`; rebuilds the heap from the live records once stale entries make up more
    /// than half of it, so refresh-heavy traffic cannot grow it without bound (amortised
    /// O(1) per push).
    fn push_index(&mut self, key: u64) {
        self.index.push(Reverse(key));
        if self.index.len() > 2 * self.table.len() + 64 {
            self.compact_index();
        }
    }

    fn compact_index(&mut self) {
        let mut v = std::mem::take(&mut self.index).into_vec();
        v.clear();
        v.extend(
            self.table
                .iter()
                .filter_map(|&s| self.slab[s as usize].index_key(s))
                .map(Reverse),
        );
        self.index = BinaryHeap::from(v);
    }

    fn find(&self, hash: u64, aor: &str) -> Option<&u32> {
        self.table
            .find(hash, |&s| self.slab[s as usize].aor() == aor)
    }

    /// Puts `rec` at `slot` (keeping table, index and counters right); an empty `rec`
    /// removes the AOR.
    fn replace(&mut self, hash: u64, slot: u32, rec: AorRecord, cx: &Ctx) {
        let old = &mut self.slab[slot as usize];
        cx.account(&Ctx::groups(old), &Ctx::groups(&rec));
        let old_key = old.index_key(slot);
        self.bindings -= old.bindings.len();
        self.bindings += rec.bindings.len();
        *old = rec;
        let new_key = old.index_key(slot);
        if old_key != new_key {
            if let Some(k) = new_key {
                self.push_index(k);
            }
        }
        if new_key.is_none() {
            if let Ok(e) = self.table.find_entry(hash, |&s| s == slot) {
                e.remove();
            }
            self.free.push(slot);
        }
    }

    /// Stores a record for an AOR not in the table yet.
    fn insert_new(&mut self, hash: u64, rec: AorRecord, cx: &Ctx) -> Result<u32, RegisterError> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.slab.len() < MAX_SLOTS => {
                self.slab.push(AorRecord::default());
                (self.slab.len() - 1) as u32
            }
            None => return Err(RegisterError::Full),
        };
        self.bindings += rec.bindings.len();
        cx.account(&[], &Ctx::groups(&rec));
        let key = rec.index_key(slot);
        self.slab[slot as usize] = rec;
        let Shard { table, slab, .. } = self;
        table.insert_unique(hash, slot, |&s| cx.hasher.hash_one(slab[s as usize].aor()));
        // After the table insert: a compaction rebuilds the index from the table.
        if let Some(k) = key {
            self.push_index(k);
        }
        Ok(slot)
    }

    /// Pops due index entries (at most `budget`); returns (bindings removed, more due).
    fn expire(&mut self, now: u64, budget: usize, cx: &Ctx) -> (usize, bool) {
        let mut removed = 0;
        for _ in 0..budget {
            let Some(&Reverse(key)) = self.index.peek() else {
                return (removed, false);
            };
            let (at, slot) = store::unpack(key);
            if at > now {
                return (removed, false);
            }
            self.index.pop();
            if !self.is_live(key) {
                continue;
            }
            let rec = &mut self.slab[slot as usize];
            let hash = cx.hasher.hash_one(rec.aor());
            let before = Ctx::groups(rec);
            let n = rec.purge(now);
            cx.account(&before, &Ctx::groups(rec));
            removed += n;
            self.bindings -= n;
            if let Some(k) = rec.index_key(slot) {
                self.push_index(k);
            } else {
                if let Ok(e) = self.table.find_entry(hash, |&s| s == slot) {
                    e.remove();
                }
                self.free.push(slot);
            }
        }
        (removed, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        hash: u64,
        now: Millis,
        req: &RegisterReq<'_>,
        grants: &[u32],
        cfg: &RegistrarConfig,
        out: &mut Bindings,
        cx: &Ctx,
    ) -> Result<RegisterOk, RegisterError> {
        let found = self.find(hash, req.aor).copied();
        let Some(slot) = found else {
            // No bindings yet: only additions can happen.
            let mut rec = AorRecord::default();
            let res = update(&mut rec, now, req, grants, cfg, out);
            if res.is_ok() && !rec.bindings.is_empty() {
                self.insert_new(hash, rec, cx)?;
            }
            return res;
        };
        let rec = &mut self.slab[slot as usize];
        let old_key = rec.index_key(slot);
        let before = rec.bindings.len();
        let groups_before = Ctx::groups(rec);
        // Expired bindings no longer exist (§10.3): drop them first so they neither conflict
        // on Call-ID/CSeq nor count against max_contacts. Kept even if the update fails.
        rec.purge(now.0);
        let res = update(rec, now, req, grants, cfg, out);
        cx.account_to(&groups_before, rec);
        let after = rec.bindings.len();
        let new_key = rec.index_key(slot);
        self.bindings = self.bindings + after - before;
        if old_key != new_key {
            if let Some(k) = new_key {
                self.push_index(k);
            }
        }
        if after == 0 {
            if let Ok(e) = self.table.find_entry(hash, |&s| s == slot) {
                e.remove();
            }
            self.free.push(slot);
        }
        res
    }
}

/// `+sip.instance` values are URNs in quotes and angle brackets (RFC 5626 §4.1); compare the
/// URN itself, case-insensitively as urn:uuid (RFC 4122 §3) is.
fn same_instance(a: &str, b: &str) -> bool {
    fn strip(s: &str) -> &str {
        s.trim_matches('"')
            .trim_start_matches('<')
            .trim_end_matches('>')
    }
    strip(a).eq_ignore_ascii_case(strip(b))
}

/// Identity of a contact for matching (RFC 5626 §6: instance + reg-id; else the URI key).
fn same_identity(a: &ContactReq<'_>, b: &ContactReq<'_>) -> bool {
    match (a.instance, b.instance) {
        (Some(x), Some(y)) => same_instance(x, y) && a.reg_id == b.reg_id,
        (None, None) => a.key == b.key,
        _ => false,
    }
}

fn key_of<'a>(c: &ContactReq<'a>) -> &'a str {
    if c.key.is_empty() {
        c.uri
    } else {
        c.key
    }
}

/// The stored binding a contact refers to, if any.
fn find_binding(rec: &AorRecord, c: &ContactReq<'_>) -> Option<usize> {
    let key = key_of(c);
    if let Some(inst) = c.instance {
        // RFC 5626 §6: same instance-id and reg-id is the same binding, whatever the URI.
        if let Some(i) = rec.bindings.iter().position(|b| {
            b.flags & store::F_INSTANCE != 0
                && same_instance(rec.instance(b), inst)
                && b.reg_id() == c.reg_id
        }) {
            return Some(i);
        }
        // A UA that now sends an instance-id refreshes its old plain binding.
        return rec
            .bindings
            .iter()
            .position(|b| b.flags & store::F_INSTANCE == 0 && rec.key(b) == key);
    }
    rec.bindings.iter().position(|b| rec.key(b) == key)
}

/// Applies one REGISTER to one record, all or nothing (§10.3 steps 6–8). `rec` holds no
/// expired bindings. On success `out` lists all current bindings.
fn update(
    rec: &mut AorRecord,
    now: Millis,
    req: &RegisterReq<'_>,
    grants: &[u32],
    cfg: &RegistrarConfig,
    out: &mut Bindings,
) -> Result<RegisterOk, RegisterError> {
    let n_old = rec.bindings.len();
    let mut ok = RegisterOk::default();

    // Query: no Contact, just list.
    if !req.star && req.contacts.is_empty() {
        out.fill(rec, now);
        return Ok(ok);
    }

    // Per-binding Call-ID/CSeq rule (§10.3 steps 6 and 7).
    let mut duplicate = false;
    // Some matched binding belongs to another Call-ID (so its strings change).
    let mut other_call_id = false;
    let mut check = |b: &Binding| -> Result<(), RegisterError> {
        if rec.call_id(b) == req.call_id {
            if req.cseq < b.cseq {
                return Err(RegisterError::OutOfOrder);
            }
            if req.cseq == b.cseq {
                duplicate = true;
            }
        } else {
            other_call_id = true;
        }
        Ok(())
    };

    if req.star {
        for b in rec.bindings.iter() {
            check(b)?;
        }
        if duplicate {
            out.fill(rec, now);
            return Err(RegisterError::Duplicate);
        }
        ok.removed = n_old as u16;
        ok.aor_removed = n_old > 0;
        *rec = AorRecord::default();
        return Ok(ok);
    }

    // Match every contact; a later contact with the same identity supersedes an earlier one.
    let mut targets: SmallVec<[Target; 4]> = SmallVec::with_capacity(req.contacts.len());
    for (i, c) in req.contacts.iter().enumerate() {
        let t = match find_binding(rec, c) {
            Some(j) => Target::Existing(j as u16),
            None => Target::New,
        };
        for k in 0..i {
            let same = match (targets[k], t) {
                (Target::Existing(a), Target::Existing(b)) => a == b,
                (Target::New, Target::New) => same_identity(&req.contacts[k], c),
                _ => false,
            };
            if same {
                targets[k] = Target::Skip;
            }
        }
        if let Target::Existing(j) = t {
            check(&rec.bindings[j as usize])?;
        }
        targets.push(t);
    }
    if duplicate {
        out.fill(rec, now);
        return Err(RegisterError::Duplicate);
    }

    // Count the result before touching anything.
    let mut removed = 0usize;
    let mut added = 0usize;
    let mut strings_change = other_call_id;
    for (i, t) in targets.iter().enumerate() {
        let c = &req.contacts[i];
        match *t {
            Target::Existing(j) if grants[i] == 0 => {
                let _ = j;
                removed += 1;
            }
            Target::Existing(j) => {
                let b = &rec.bindings[j as usize];
                // Call-ID was compared in `check`; without an instance the match was by key.
                strings_change |= rec.uri(b) != c.uri
                    || (c.instance.is_some() && rec.key(b) != key_of(c))
                    || rec.instance(b) != c.instance.unwrap_or("")
                    || !PathSrc::List(req.path).eq_joined(rec.path(b));
            }
            Target::New if grants[i] > 0 => added += 1,
            Target::New | Target::Skip => {}
        }
    }
    let n_new = n_old - removed + added;
    if n_new > cfg.max_contacts_per_aor && n_new > n_old {
        // Growing past the limit is refused; an AOR already over it (limit lowered by a
        // reload) can still refresh and shrink.
        return Err(RegisterError::TooManyContacts {
            max: cfg.max_contacts_per_aor,
        });
    }

    let fresh = |c: &ContactReq<'_>, grant: u32, mut b: Binding| -> Binding {
        b.expires_at = now.plus_secs(grant as u64).0;
        b.updated_at = now.0;
        b.set_source(req.source);
        b.cseq = req.cseq;
        b.reg_id = c.reg_id.unwrap_or(0);
        if c.reg_id.is_some() {
            b.flags |= store::F_REG_ID;
        } else {
            b.flags &= !store::F_REG_ID;
        }
        b.q = c.q.unwrap_or(Q_NONE);
        b.group = req.group;
        b.transport = req.transport as u8;
        b
    };

    // Which contact (if any) updates each existing binding.
    let mut by_existing: SmallVec<[Option<u16>; 4]> = SmallVec::from_elem(None, n_old);
    for (i, t) in targets.iter().enumerate() {
        if let Target::Existing(j) = *t {
            by_existing[j as usize] = Some(i as u16);
        }
    }
    ok.removed = removed as u16;
    ok.added = added as u16;
    ok.refreshed = targets
        .iter()
        .enumerate()
        .filter(|(i, t)| matches!(t, Target::Existing(_)) && grants[*i] > 0)
        .count() as u16;
    ok.aor_created = n_old == 0 && n_new > 0;
    ok.aor_removed = n_old > 0 && n_new == 0;

    if removed == 0 && added == 0 && !strings_change {
        // The hot refresh path: fixed-size fields only, in place.
        for (j, by) in by_existing.iter().enumerate() {
            if let Some(i) = *by {
                let i = i as usize;
                let b = rec.bindings[j].clone();
                rec.bindings[j] = fresh(&req.contacts[i], grants[i], b);
            }
        }
        out.fill(rec, now);
        return Ok(ok);
    }

    // Rebuild the record: surviving/updated bindings in their order, then new ones.
    fn req_strs<'a>(req: &RegisterReq<'a>, c: &ContactReq<'a>) -> Strs<'a> {
        Strs {
            uri: c.uri,
            key: key_of(c),
            call_id: req.call_id,
            instance: c.instance.unwrap_or(""),
            path: PathSrc::List(req.path),
        }
    }
    if by_existing.iter().all(Option::is_some) {
        // Every stored binding is updated or removed by this request (a phone re-registering
        // with a new Call-ID): no string of the old record survives, so its blob's allocation
        // can hold the new one — no malloc/free, and memory that is already in cache.
        let mut parts: SmallVec<[(Binding, Strs<'_>); 4]> = SmallVec::new();
        for (j, by) in by_existing.iter().enumerate() {
            let i = by.map_or(0, |i| i as usize);
            if grants[i] > 0 {
                let c = &req.contacts[i];
                parts.push((
                    fresh(c, grants[i], rec.bindings[j].clone()),
                    req_strs(req, c),
                ));
            }
        }
        for (i, t) in targets.iter().enumerate() {
            if *t == Target::New && grants[i] > 0 {
                let c = &req.contacts[i];
                parts.push((fresh(c, grants[i], Binding::zeroed()), req_strs(req, c)));
            }
        }
        let total: usize = parts.iter().map(|(_, s)| s.blob_len()).sum();
        if parts.is_empty() {
            *rec = AorRecord::default();
        } else if req.aor.len() + total > store::MAX_BLOB {
            // What `build` would refuse; checked first so `rec` is untouched on failure.
            return Err(RegisterError::Full);
        } else {
            let buf = std::mem::take(rec).into_blob();
            *rec = AorRecord::build_in(buf, req.aor, total, parts.drain(..))
                .map_err(|_| RegisterError::Full)?;
        }
        out.fill(rec, now);
        return Ok(ok);
    }
    let mut parts: SmallVec<[(Binding, Strs<'_>); 4]> = SmallVec::new();
    for (j, by) in by_existing.iter().enumerate() {
        let b = &rec.bindings[j];
        match *by {
            None => parts.push((b.clone(), rec.strs(b))),
            Some(i) if grants[i as usize] == 0 => {}
            Some(i) => {
                let (i, c) = (i as usize, &req.contacts[i as usize]);
                parts.push((fresh(c, grants[i], b.clone()), req_strs(req, c)));
            }
        }
    }
    for (i, t) in targets.iter().enumerate() {
        if *t == Target::New && grants[i] > 0 {
            let c = &req.contacts[i];
            parts.push((fresh(c, grants[i], Binding::zeroed()), req_strs(req, c)));
        }
    }
    let total = parts.iter().map(|(_, s)| s.blob_len()).sum();
    let new_rec = if parts.is_empty() {
        AorRecord::default()
    } else {
        AorRecord::build(req.aor, total, parts.drain(..)).map_err(|_| RegisterError::Full)?
    };
    drop(parts);
    *rec = new_rec;
    out.fill(rec, now);
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = Millis(1_800_000_000_000);
    const AOR: &str = "sip:alice@example.test";

    fn src() -> SocketAddr {
        "127.0.0.1:5062".parse().unwrap()
    }

    fn c(uri: &str) -> ContactReq<'_> {
        ContactReq {
            uri,
            key: uri,
            ..Default::default()
        }
    }

    fn c_exp(uri: &str, e: u32) -> ContactReq<'_> {
        ContactReq {
            expires: Some(e),
            ..c(uri)
        }
    }

    fn req<'a>(call_id: &'a str, cseq: u32, contacts: &'a [ContactReq<'a>]) -> RegisterReq<'a> {
        RegisterReq {
            aor: AOR,
            call_id,
            cseq,
            star: false,
            contacts,
            expires_header: None,
            source: src(),
            transport: Transport::Udp,
            path: &[],
            group: 1,
        }
    }

    fn reg() -> Registrar {
        Registrar::new(RegistrarConfig::default(), 4)
    }

    fn ok(o: RegisterOutcome) -> Bindings {
        match o {
            RegisterOutcome::Ok(b) => b,
            other => panic!("expected Ok, got {other:?}"),
        }
    }

    fn uris(r: &Registrar, now: Millis) -> Vec<String> {
        r.lookup(AOR, now).into_iter().map(|b| b.uri).collect()
    }

    #[test]
    fn expiry_precedence_param_header_default() {
        let r = reg();
        let cs = [c_exp("sip:a@1.1.1.1", 300), c("sip:b@1.1.1.1")];
        let mut q = req("cid", 1, &cs);
        q.expires_header = Some(600);
        let b = ok(r.register(T0, &q, 0));
        let got: Vec<_> = b.iter().map(|g| (g.uri, g.expires)).collect();
        assert!(got.contains(&("sip:a@1.1.1.1", 300)));
        assert!(got.contains(&("sip:b@1.1.1.1", 600)));

        let r = reg();
        let cs = [c("sip:a@1.1.1.1")];
        let b = ok(r.register(T0, &req("cid", 1, &cs), 0));
        assert_eq!(b.get(0).unwrap().expires, 3600);
    }

    #[test]
    fn too_brief_fails_whole_request_but_zero_is_fine() {
        let r = reg();
        let cs = [c_exp("sip:a@h", 3600), c_exp("sip:b@h", 59)];
        assert_eq!(
            r.register(T0, &req("cid", 1, &cs), 0),
            RegisterOutcome::IntervalTooBrief { min_expires: 60 }
        );
        assert_eq!(r.binding_count(), 0);
        // Header too brief applies to contacts without their own param.
        let cs = [c("sip:a@h")];
        let mut q = req("cid", 2, &cs);
        q.expires_header = Some(30);
        assert_eq!(
            r.register(T0, &q, 0),
            RegisterOutcome::IntervalTooBrief { min_expires: 60 }
        );
        // Exactly the minimum is fine; zero never is "too brief".
        let cs = [c_exp("sip:a@h", 60), c_exp("sip:gone@h", 0)];
        let b = ok(r.register(T0, &req("cid", 3, &cs), 0));
        assert_eq!(b.len(), 1);
        assert_eq!(b.get(0).unwrap().expires, 60);
    }

    /// The expiry index is lazy (stale entries stay until they surface): thousands of
    /// refreshes of one AOR must neither grow it without bound nor make an old expiry
    /// fire, and the next expiry stays exact.
    #[test]
    fn refreshes_keep_the_expiry_index_small_and_exact() {
        let r = Registrar::new(RegistrarConfig::default(), 1);
        let cs = [c_exp("sip:a@h", 3600)];
        let other = [c_exp("sip:o@h", 600)];
        let mut q = req("o", 1, &other);
        q.aor = "sip:other@example.test";
        ok(r.register(T0, &q, 0));
        let mut now = T0;
        for i in 0..10_000u32 {
            now = Millis(T0.0 + u64::from(i) * 250);
            ok(r.register(now, &req("cid", i + 1, &cs), 0));
        }
        let len = r.shards[0].0.lock().index.len();
        assert!(len <= 2 * 2 + 64, "index holds {len} entries for 2 AORs");
        // The other AOR expires first, then alice exactly 3600 s after her last refresh.
        assert_eq!(r.next_expiry(), Some(T0.plus_secs(600)));
        // None of alice's superseded expiries removes her binding.
        assert_eq!(r.expire(T0.plus_secs(3600)), 1);
        assert_eq!(uris(&r, T0.plus_secs(3600)), vec!["sip:a@h".to_string()]);
        assert_eq!(r.next_expiry(), Some(now.plus_secs(3600)));
        assert_eq!(r.expire(Millis(now.plus_secs(3600).0 - 1)), 0);
        assert_eq!(r.expire(now.plus_secs(3600)), 1);
        assert_eq!((r.binding_count(), r.next_expiry()), (0, None));
    }

    #[test]
    fn long_expiry_is_shortened() {
        let r = reg();
        let cs = [c_exp("sip:a@h", 999_999)];
        let b = ok(r.register(T0, &req("cid", 1, &cs), 0));
        assert_eq!(b.get(0).unwrap().expires, 7200);
        assert_eq!(r.next_expiry(), Some(T0.plus_secs(7200)));
    }

    #[test]
    fn jitter_reduces_but_not_below_min() {
        let cfg = RegistrarConfig {
            expires_jitter_percent: 20,
            ..Default::default()
        };
        let r = Registrar::new(cfg, 4);
        assert_eq!(r.grant(3600, 0), 3600);
        assert_eq!(r.grant(3600, u32::MAX), 2880);
        let mid = r.grant(3600, u32::MAX / 2);
        assert!((3230..=3250).contains(&mid), "{mid}");
        assert_eq!(r.grant(70, u32::MAX), 60);
        let cs = [c_exp("sip:a@h", 3600)];
        let b = ok(r.register(T0, &req("cid", 1, &cs), u32::MAX));
        assert_eq!(b.get(0).unwrap().expires, 2880);
    }

    #[test]
    fn star_rules() {
        let r = reg();
        let cs = [c("sip:a@h"), c("sip:b@h")];
        ok(r.register(T0, &req("cid", 1, &cs), 0));
        let mut star = req("cid", 2, &[]);
        star.star = true;
        assert!(matches!(
            r.register(T0, &star, 0),
            RegisterOutcome::BadRequest(_)
        ));
        star.expires_header = Some(60);
        assert!(matches!(
            r.register(T0, &star, 0),
            RegisterOutcome::BadRequest(_)
        ));
        let one = [c("sip:x@h")];
        let mut mixed = req("cid", 2, &one);
        mixed.star = true;
        mixed.expires_header = Some(0);
        assert!(matches!(
            r.register(T0, &mixed, 0),
            RegisterOutcome::BadRequest(_)
        ));
        assert_eq!(r.binding_count(), 2);
        // Same Call-ID, CSeq not higher: aborted, nothing removed.
        star.expires_header = Some(0);
        star.cseq = 0;
        assert_eq!(r.register(T0, &star, 0), RegisterOutcome::OutOfOrder);
        assert_eq!(r.binding_count(), 2);
        star.cseq = 2;
        let b = ok(r.register(T0, &star, 0));
        assert!(b.is_empty());
        assert_eq!((r.binding_count(), r.aor_count()), (0, 0));
        assert_eq!(r.next_expiry(), None);
        // A different Call-ID removes regardless of CSeq.
        ok(r.register(T0, &req("cid", 10, &cs), 0));
        let mut star2 = req("other", 1, &[]);
        star2.star = true;
        star2.expires_header = Some(0);
        ok(r.register(T0, &star2, 0));
        assert_eq!(r.binding_count(), 0);
    }

    #[test]
    fn out_of_order_same_call_id_and_retransmission() {
        let r = reg();
        let cs = [c_exp("sip:a@h", 600)];
        ok(r.register(T0, &req("cid", 5, &cs), 0));
        let cs2 = [c_exp("sip:a@h", 1200)];
        assert_eq!(
            r.register(T0, &req("cid", 4, &cs2), 0),
            RegisterOutcome::OutOfOrder
        );
        match r.register(T0.plus_secs(1), &req("cid", 5, &cs2), 0) {
            RegisterOutcome::Duplicate(b) => assert_eq!(b.get(0).unwrap().expires, 599),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.lookup(AOR, T0)[0].expires_in(T0), 600);
        let b = ok(r.register(T0, &req("cid", 6, &cs2), 0));
        assert_eq!(b.get(0).unwrap().expires, 1200);
        assert_eq!(r.lookup(AOR, T0)[0].cseq, 6);
    }

    #[test]
    fn new_call_id_replaces_even_with_lower_cseq() {
        let r = reg();
        let cs = [c("sip:a@h")];
        ok(r.register(T0, &req("cid-1", 100, &cs), 0));
        let mut q = req("cid-2", 1, &cs);
        q.source = "127.0.0.9:7000".parse().unwrap();
        q.transport = Transport::Tcp;
        ok(r.register(T0.plus_secs(5), &q, 0));
        let v = r.lookup(AOR, T0.plus_secs(5));
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].call_id.as_str(), v[0].cseq), ("cid-2", 1));
        assert_eq!(v[0].source, q.source);
        assert_eq!(v[0].transport, Transport::Tcp);
        assert_eq!(v[0].registered_at, T0.plus_secs(5));
    }

    #[test]
    fn atomic_failure_leaves_state_unchanged() {
        let r = reg();
        let cs = [c_exp("sip:a@h", 600), c_exp("sip:b@h", 600)];
        ok(r.register(T0, &req("cid", 5, &cs), 0));
        let before = r.lookup(AOR, T0);
        // First contact would be a valid removal, second conflicts on CSeq of the same dialog:
        // nothing may change.
        let other = [c_exp("sip:a@h", 0), c_exp("sip:b@h", 900)];
        let mut bad = req("cid", 3, &other);
        bad.expires_header = Some(600);
        assert_eq!(r.register(T0, &bad, 0), RegisterOutcome::OutOfOrder);
        // Adding two and refreshing one past the contact limit: nothing changes either.
        let cfg = RegistrarConfig {
            max_contacts_per_aor: 3,
            ..Default::default()
        };
        let r2 = Registrar::new(cfg, 1);
        ok(r2.register(T0, &req("cid", 5, &cs), 0));
        let grow = [c_exp("sip:a@h", 900), c("sip:c@h"), c("sip:d@h")];
        assert_eq!(
            r2.register(T0, &req("cid", 6, &grow), 0),
            RegisterOutcome::TooManyContacts { max: 3 }
        );
        assert_eq!(r2.lookup(AOR, T0), before_with(&r2, T0));
        assert_eq!(r2.lookup(AOR, T0)[0].cseq, 5);
        assert_eq!(r.lookup(AOR, T0), before);
        assert_eq!(r.binding_count(), 2);
    }

    fn before_with(r: &Registrar, now: Millis) -> Vec<BindingView> {
        let v = r.lookup(AOR, now);
        assert!(v.iter().all(|b| b.cseq == 5 && b.expires_in(now) == 600));
        v
    }

    #[test]
    fn max_contacts_reject_and_swap_allowed() {
        let cfg = RegistrarConfig {
            max_contacts_per_aor: 2,
            ..Default::default()
        };
        let r = Registrar::new(cfg, 2);
        ok(r.register(T0, &req("c1", 1, &[c("sip:a@h")]), 0));
        ok(r.register(T0, &req("c2", 1, &[c("sip:b@h")]), 0));
        assert_eq!(
            r.register(T0, &req("c3", 1, &[c("sip:c@h")]), 0),
            RegisterOutcome::TooManyContacts { max: 2 }
        );
        // Removing one and adding one in the same request stays within the limit.
        let swap = [c_exp("sip:a@h", 0), c("sip:c@h")];
        ok(r.register(T0, &req("c1", 2, &swap), 0));
        let mut u = uris(&r, T0);
        u.sort();
        assert_eq!(u, ["sip:b@h", "sip:c@h"]);
    }

    #[test]
    fn lookup_orders_by_q_then_most_recent() {
        let r = reg();
        let mk = |uri, q| ContactReq { q, ..c(uri) };
        ok(r.register(T0, &req("c1", 1, &[mk("sip:low@h", Some(100))]), 0));
        ok(r.register(
            T0.plus_secs(1),
            &req("c2", 1, &[mk("sip:old@h", Some(700))]),
            0,
        ));
        ok(r.register(
            T0.plus_secs(2),
            &req("c3", 1, &[mk("sip:new@h", Some(700))]),
            0,
        ));
        ok(r.register(T0.plus_secs(3), &req("c4", 1, &[mk("sip:none@h", None)]), 0));
        assert_eq!(
            uris(&r, T0.plus_secs(4)),
            ["sip:none@h", "sip:new@h", "sip:old@h", "sip:low@h"]
        );
        // Refreshing "old" makes it the most recent of its q.
        ok(r.register(
            T0.plus_secs(5),
            &req("c2", 2, &[mk("sip:old@h", Some(700))]),
            0,
        ));
        assert_eq!(
            uris(&r, T0.plus_secs(6)),
            ["sip:none@h", "sip:old@h", "sip:new@h", "sip:low@h"]
        );
        // The 200 OK uses the same order and echoes q only when given.
        let b = ok(r.register(T0.plus_secs(6), &req("c9", 1, &[]), 0));
        let qs: Vec<_> = b.iter().map(|g| g.q).collect();
        assert_eq!(qs, [None, Some(700), Some(700), Some(100)]);
    }

    #[test]
    fn query_returns_bindings_unchanged() {
        let r = reg();
        ok(r.register(T0, &req("c1", 1, &[c_exp("sip:a@h", 100)]), 0));
        let b = ok(r.register(T0.plus_secs(40), &req("other", 1, &[]), 0));
        assert_eq!(b.len(), 1);
        assert_eq!(b.get(0).unwrap().expires, 60);
        assert_eq!(r.lookup(AOR, T0)[0].call_id, "c1");
        // Unknown AOR: empty 200.
        let mut q = req("x", 1, &[]);
        q.aor = "sip:nobody@example.test";
        assert!(ok(r.register(T0, &q, 0)).is_empty());
        assert_eq!(r.aor_count(), 1);
    }

    #[test]
    fn expiry_exactly_on_time_and_expire_counts() {
        let r = reg();
        ok(r.register(T0, &req("c1", 1, &[c_exp("sip:a@h", 60)]), 0));
        let mut q = req("c2", 1, &[]);
        let cs = [c_exp("sip:b@h", 120)];
        q.contacts = &cs;
        q.aor = "sip:bob@example.test";
        ok(r.register(T0, &q, 0));
        let end = T0.plus_secs(60);
        assert_eq!(uris(&r, Millis(end.0 - 1)), ["sip:a@h"]);
        assert!(uris(&r, end).is_empty());
        assert_eq!(r.next_expiry(), Some(end));
        assert_eq!(r.expire(Millis(end.0 - 1)), 0);
        assert_eq!(r.binding_count(), 2);
        assert_eq!(r.expire(end), 1);
        assert_eq!((r.binding_count(), r.aor_count()), (1, 1));
        assert_eq!(r.expire(end), 0);
        assert_eq!(r.next_expiry(), Some(T0.plus_secs(120)));
        assert_eq!(r.expire(T0.plus_secs(10_000)), 1);
        assert_eq!(
            (r.binding_count(), r.aor_count(), r.next_expiry()),
            (0, 0, None)
        );
    }

    #[test]
    fn expire_handles_mixed_records_and_many_batches() {
        let r = Registrar::new(RegistrarConfig::default(), 1);
        let names: Vec<String> = (0..3000)
            .map(|i| format!("sip:u{i}@example.test"))
            .collect();
        for (i, aor) in names.iter().enumerate() {
            let cs = [c_exp("sip:short@h", 60), c_exp("sip:long@h", 600)];
            let mut q = req("cid", 1, &cs);
            q.aor = aor;
            ok(r.register(T0.plus_ms(i as u64), &q, 0));
        }
        assert_eq!(r.binding_count(), 6000);
        assert_eq!(r.expire(T0.plus_secs(60).plus_ms(1499)), 1500);
        assert_eq!(r.expire(T0.plus_secs(63)), 1500);
        assert_eq!((r.aor_count(), r.binding_count()), (3000, 3000));
        let mut q = req("x", 1, &[]);
        q.aor = &names[10];
        let b = ok(r.register(T0.plus_secs(63), &q, 0));
        assert_eq!(b.iter().map(|g| g.uri).collect::<Vec<_>>(), ["sip:long@h"]);
        assert_eq!(r.expire(T0.plus_secs(700)), 3000);
        assert!(r.is_empty());
        // Slots are reused.
        ok(r.register(T0.plus_secs(700), &req("c", 1, &[c("sip:z@h")]), 0));
        assert_eq!(r.aor_count(), 1);
    }

    #[test]
    fn register_replaces_expired_binding_of_same_dialog() {
        // An expired binding is gone: a stale CSeq for it must not be "out of order".
        let r = reg();
        ok(r.register(T0, &req("cid", 9, &[c_exp("sip:a@h", 60)]), 0));
        let later = T0.plus_secs(60);
        let b = ok(r.register(later, &req("cid", 3, &[c_exp("sip:a@h", 60)]), 0));
        assert_eq!(b.len(), 1);
        assert_eq!(r.lookup(AOR, later)[0].cseq, 3);
        assert_eq!(r.binding_count(), 1);
        assert_eq!(r.next_expiry(), Some(later.plus_secs(60)));
    }

    #[test]
    fn instance_id_replaces_binding_with_other_uri() {
        let r = reg();
        let inst = "\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"";
        let c1 = ContactReq {
            instance: Some(inst),
            reg_id: Some(1),
            ..c("sip:alice@192.0.2.1:5060")
        };
        ok(r.register(T0, &req("c1", 1, &[c1]), 0));
        // Same instance, other reg-id: a second flow (RFC 5626), same URI allowed.
        let c2 = ContactReq {
            reg_id: Some(2),
            ..c1
        };
        ok(r.register(T0, &req("c1", 2, &[c2]), 0));
        assert_eq!(r.binding_count(), 2);
        // Reboot behind a new NAT port: new URI, new Call-ID, same instance + reg-id 1.
        let c3 = ContactReq {
            uri: "sip:alice@198.51.100.7:40000",
            key: "sip:alice@198.51.100.7:40000",
            ..c1
        };
        let b = ok(r.register(T0.plus_secs(1), &req("c2", 1, &[c3]), 0));
        assert_eq!(b.len(), 2);
        let v = r.lookup(AOR, T0.plus_secs(1));
        assert_eq!(v[0].uri, "sip:alice@198.51.100.7:40000");
        assert_eq!(v[0].instance.as_deref(), Some(inst));
        assert_eq!(v[0].reg_id, Some(1));
        assert_eq!(v[1].reg_id, Some(2));
        let g = b.get(0).unwrap();
        assert_eq!((g.instance, g.reg_id), (Some(inst), Some(1)));
        // The URN compares case-insensitively and without its quoting.
        let c4 = ContactReq {
            instance: Some("<urn:uuid:00000000-0000-1000-8000-aabbccddeeff>"),
            uri: "sip:alice@198.51.100.7:40001",
            key: "sip:alice@198.51.100.7:40001",
            ..c1
        };
        ok(r.register(T0.plus_secs(2), &req("c2", 2, &[c4]), 0));
        let v = r.lookup(AOR, T0.plus_secs(2));
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].uri, "sip:alice@198.51.100.7:40001");
    }

    #[test]
    fn key_not_text_decides_identity_and_uri_is_updated() {
        let r = reg();
        let c1 = ContactReq {
            key: "sip:a@h",
            ..c("sip:a@H")
        };
        ok(r.register(T0, &req("c", 1, &[c1]), 0));
        let c2 = ContactReq {
            key: "sip:a@h",
            ..c("sip:a@h;transport=udp")
        };
        ok(r.register(T0, &req("c", 2, &[c2]), 0));
        let v = r.lookup(AOR, T0);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].uri, "sip:a@h;transport=udp");
        assert_eq!(v[0].key, "sip:a@h");
    }

    #[test]
    fn path_group_and_duplicate_contacts_in_one_request() {
        let r = reg();
        let path = ["<sip:edge1.test;lr>", "<sip:edge2.test;lr>"];
        let cs = [c_exp("sip:a@h", 100), c_exp("sip:a@h", 200)];
        let mut q = req("c", 1, &cs);
        q.path = &path;
        q.group = 7;
        let b = ok(r.register(T0, &q, 0));
        assert_eq!(b.len(), 1);
        assert_eq!(b.get(0).unwrap().expires, 200);
        let v = r.lookup(AOR, T0);
        assert_eq!(v[0].path, path);
        assert_eq!(v[0].group, 7);
        // Refresh without Path drops it (the Path of the latest REGISTER applies).
        ok(r.register(T0, &req("c", 2, &[c("sip:a@h")]), 0));
        assert!(r.lookup(AOR, T0)[0].path.is_empty());
        let mut bad = req("c", 3, &[]);
        let bad_path = ["a\0b"];
        bad.path = &bad_path;
        assert!(matches!(
            r.register(T0, &bad, 0),
            RegisterOutcome::BadRequest(_)
        ));
    }

    #[test]
    fn removal_of_unknown_contact_and_bad_input() {
        let r = reg();
        assert!(ok(r.register(T0, &req("c", 1, &[c_exp("sip:a@h", 0)]), 0)).is_empty());
        assert_eq!(r.aor_count(), 0);
        let q = ContactReq {
            q: Some(1001),
            ..c("sip:a@h")
        };
        assert!(matches!(
            r.register(T0, &req("c", 1, &[q]), 0),
            RegisterOutcome::BadRequest(_)
        ));
        assert!(matches!(
            r.register(T0, &req("", 1, &[c("sip:a@h")]), 0),
            RegisterOutcome::BadRequest(_)
        ));
        assert!(matches!(
            r.register(T0, &req("c", 1, &[c("")]), 0),
            RegisterOutcome::BadRequest(_)
        ));
        let many = vec![c("sip:a@h"); MAX_CONTACTS_PER_REQUEST + 1];
        assert!(matches!(
            r.register(T0, &req("c", 1, &many), 0),
            RegisterOutcome::TooManyContacts { .. }
        ));
        let long = "x".repeat(5000);
        assert!(matches!(
            r.register(T0, &req("c", 1, &[c(&long)]), 0),
            RegisterOutcome::BadRequest(_)
        ));
        // 10 contacts of 4 KiB each exceed the 64 KiB record: refused, not a panic.
        let big: Vec<String> = (0..20)
            .map(|i| format!("sip:{i}@{}", "h".repeat(4000)))
            .collect();
        let cs: Vec<_> = big.iter().map(|u| c(u)).collect();
        let cfg = RegistrarConfig {
            max_contacts_per_aor: 100,
            ..Default::default()
        };
        let r = Registrar::new(cfg, 1);
        assert_eq!(r.register(T0, &req("c", 1, &cs), 0), RegisterOutcome::Full);
        assert_eq!(r.aor_count(), 0);
    }

    #[test]
    fn group_counts_follow_every_change() {
        let r = reg();
        let g = |r: &Registrar| [1u16, 2, 300].map(|x| r.group_binding_count(x));
        let cs = [c_exp("sip:a@h", 60), c_exp("sip:b@h", 120)];
        ok(r.register(T0, &req("c", 1, &cs), 0));
        assert_eq!(g(&r), [2, 0, 0]);
        // Refresh of one binding from another group moves it.
        let mut q = req("c", 2, &cs[1..]);
        q.group = 300;
        ok(r.register(T0, &q, 0));
        assert_eq!(g(&r), [1, 0, 1]);
        let mut q = req("c", 1, &[]);
        let bob = [c("sip:bob@h")];
        q.contacts = &bob;
        q.aor = "sip:bob@example.test";
        q.group = 2;
        ok(r.register(T0, &q, 0));
        assert_eq!(g(&r), [1, 1, 1]);
        // Failed updates change nothing.
        let mut q2 = req("c", 0, &cs[..1]);
        q2.group = 2;
        assert_eq!(r.register(T0, &q2, 0), RegisterOutcome::OutOfOrder);
        assert_eq!(g(&r), [1, 1, 1]);
        // Expiry, snapshot restore and administrative removal.
        let snap = r.snapshot_to_vec(T0);
        assert_eq!(r.expire(T0.plus_secs(60)), 1);
        assert_eq!(g(&r), [0, 1, 1]);
        assert_eq!(r.remove_aor("sip:bob@example.test"), 1);
        assert_eq!(g(&r), [0, 0, 1]);
        let r2 = reg();
        assert_eq!(r2.restore_snapshot(&snap, T0), Ok(3));
        assert_eq!(g(&r2), [1, 1, 1]);
        // Restoring over existing AORs replaces (not double counts).
        assert_eq!(r2.restore_snapshot(&snap, T0.plus_secs(60)), Ok(2));
        assert_eq!(g(&r2), [0, 1, 1]);
        assert_eq!(r2.expire(T0.plus_secs(100_000)), 2);
        assert_eq!(g(&r2), [0, 0, 0]);
    }

    #[test]
    fn for_each_and_remove_aor() {
        let r = reg();
        for i in 0..50 {
            let aor = format!("sip:u{i}@example.test");
            let cs = [c("sip:x@h"), c("sip:y@h")];
            let mut q = req("c", 1, &cs);
            q.aor = &aor;
            ok(r.register(T0, &q, 0));
        }
        let mut n = 0;
        let mut aors = std::collections::HashSet::new();
        r.for_each_binding(T0, |b| {
            n += 1;
            aors.insert(b.aor.to_string());
        });
        assert_eq!((n, aors.len()), (100, 50));
        assert_eq!(r.remove_aor("sip:u7@example.test"), 2);
        assert_eq!(r.remove_aor("sip:u7@example.test"), 0);
        assert_eq!((r.aor_count(), r.binding_count()), (49, 98));
        assert!(r.lookup("sip:u7@example.test", T0).is_empty());
        assert_eq!(r.expire(T0.plus_secs(3600)), 98);
    }

    /// A straightforward reference model of §10.3 (sequential application on a copy),
    /// driven with random requests against the real registrar; outcomes and resulting
    /// bindings must agree. Catches blob/offset, purge, index and counter mistakes.
    mod model {
        use super::*;
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        use std::collections::HashMap;

        #[derive(Clone, Debug, PartialEq)]
        struct Mb {
            uri: String,
            ident: String,
            call_id: String,
            cseq: u32,
            expires_at: u64,
            updated_at: u64,
            q: Option<u16>,
            orig: bool,
        }

        #[derive(Debug, PartialEq)]
        enum Res {
            Ok,
            TooBrief,
            Bad,
            OutOfOrder,
            Duplicate,
            TooMany,
        }

        // (uri, instance, reg-id): u2/u3 share an instance+reg-id (same binding, other URI).
        const POOL: [(&str, Option<&str>, Option<u32>); 5] = [
            ("sip:u0@h", None, None),
            ("sip:u1@h", None, None),
            ("sip:u2@h", Some("\"<urn:uuid:i0>\""), Some(1)),
            ("sip:u3@h", Some("\"<urn:uuid:i0>\""), Some(1)),
            ("sip:u4@h", Some("\"<urn:uuid:i0>\""), Some(2)),
        ];

        fn ident(c: &ContactReq<'_>) -> String {
            match c.instance {
                Some(i) => format!("{i}/{:?}", c.reg_id),
                None => c.key.to_string(),
            }
        }

        fn model_register(
            m: &mut Vec<Mb>,
            cfg: &RegistrarConfig,
            now: u64,
            req: &RegisterReq<'_>,
        ) -> Res {
            if req.star && (!req.contacts.is_empty() || req.expires_header != Some(0)) {
                return Res::Bad;
            }
            let mut grants = Vec::new();
            for c in req.contacts {
                let e = c
                    .expires
                    .or(req.expires_header)
                    .unwrap_or(cfg.default_expires);
                if e != 0 && e < cfg.min_expires {
                    return Res::TooBrief;
                }
                grants.push(e.min(cfg.max_expires));
            }
            m.retain(|b| b.expires_at > now);
            let conflict = |b: &Mb| -> Option<Res> {
                if b.orig && b.call_id == req.call_id {
                    if req.cseq < b.cseq {
                        return Some(Res::OutOfOrder);
                    }
                    if req.cseq == b.cseq {
                        return Some(Res::Duplicate);
                    }
                }
                None
            };
            let mut work: Vec<Mb> = m.iter().cloned().map(|b| Mb { orig: true, ..b }).collect();
            let mut dup = false;
            if req.star {
                for b in &work {
                    match conflict(b) {
                        Some(Res::Duplicate) => dup = true,
                        Some(o) => return o,
                        None => {}
                    }
                }
                if dup {
                    return Res::Duplicate;
                }
                m.clear();
                return Res::Ok;
            }
            // Conflicts are judged against the stored bindings, all before applying.
            for c in req.contacts {
                if let Some(b) = work.iter().find(|b| b.ident == ident(c)) {
                    match conflict(b) {
                        Some(Res::Duplicate) => dup = true,
                        Some(o) => return o,
                        None => {}
                    }
                }
            }
            if dup {
                return Res::Duplicate;
            }
            let n_old = work.len();
            for (c, &g) in req.contacts.iter().zip(&grants) {
                let pos = work.iter().position(|b| b.ident == ident(c));
                if g == 0 {
                    if let Some(p) = pos {
                        work.remove(p);
                    }
                    continue;
                }
                let nb = Mb {
                    uri: c.uri.to_string(),
                    ident: ident(c),
                    call_id: req.call_id.to_string(),
                    cseq: req.cseq,
                    expires_at: now + g as u64 * 1000,
                    updated_at: now,
                    q: c.q,
                    orig: false,
                };
                match pos {
                    Some(p) => work[p] = nb,
                    None => work.push(nb),
                }
            }
            if work.len() > cfg.max_contacts_per_aor && work.len() > n_old {
                return Res::TooMany;
            }
            *m = work;
            Res::Ok
        }

        fn outcome(o: &RegisterOutcome) -> Res {
            match o {
                RegisterOutcome::Ok(_) => Res::Ok,
                RegisterOutcome::IntervalTooBrief { .. } => Res::TooBrief,
                RegisterOutcome::BadRequest(_) => Res::Bad,
                RegisterOutcome::OutOfOrder => Res::OutOfOrder,
                RegisterOutcome::Duplicate(_) => Res::Duplicate,
                RegisterOutcome::TooManyContacts { .. } => Res::TooMany,
                RegisterOutcome::Full => panic!("unexpected Full"),
            }
        }

        fn run(seed: u64, steps: usize) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let cfg = RegistrarConfig {
                min_expires: 20,
                max_expires: 300,
                default_expires: 120,
                max_contacts_per_aor: 3,
                expires_jitter_percent: 0,
            };
            let r = Registrar::new(cfg.clone(), 2);
            let aors = ["sip:a@x", "sip:b@x", "sip:c@x"];
            let mut model: HashMap<&str, Vec<Mb>> = HashMap::new();
            let mut now = T0.0;
            for step in 0..steps {
                now += rng.gen_range(0..40_000u64);
                if rng.gen_bool(0.1) {
                    r.expire(Millis(now));
                }
                let aor = aors[rng.gen_range(0..aors.len())];
                let n = rng.gen_range(0..4);
                let contacts: Vec<ContactReq<'_>> = (0..n)
                    .map(|_| {
                        let (uri, instance, reg_id) = POOL[rng.gen_range(0..POOL.len())];
                        ContactReq {
                            uri,
                            key: uri,
                            expires: [None, Some(0), Some(10), Some(60), Some(1000)]
                                [rng.gen_range(0..5)],
                            q: [None, Some(0), Some(500), Some(1000)][rng.gen_range(0..4)],
                            instance,
                            reg_id,
                        }
                    })
                    .collect();
                let call_id = ["c1", "c2"][rng.gen_range(0..2)];
                let req = RegisterReq {
                    aor,
                    call_id,
                    cseq: rng.gen_range(1..8),
                    star: rng.gen_bool(0.08),
                    contacts: &contacts,
                    expires_header: [None, Some(0), Some(90)][rng.gen_range(0..3)],
                    source: src(),
                    transport: Transport::Udp,
                    path: &[],
                    group: 0,
                };
                let got = r.register(Millis(now), &req, 0);
                let m = model.entry(aor).or_default();
                let want = model_register(m, &cfg, now, &req);
                assert_eq!(outcome(&got), want, "seed {seed} step {step}: {req:?}");

                // Same bindings (as sets), and lookup order is q desc then most recent.
                for a in aors {
                    let mut live: Vec<_> = model
                        .get(a)
                        .map(|v| v.iter().filter(|b| b.expires_at > now).cloned().collect())
                        .unwrap_or_default();
                    let got = r.lookup(a, Millis(now));
                    let mut got_set: Vec<_> = got
                        .iter()
                        .map(|b| {
                            (
                                b.uri.clone(),
                                b.call_id.clone(),
                                b.cseq,
                                b.expires_at.0,
                                b.q,
                            )
                        })
                        .collect();
                    let mut want_set: Vec<_> = live
                        .drain(..)
                        .map(|b| (b.uri, b.call_id, b.cseq, b.expires_at, b.q))
                        .collect();
                    got_set.sort();
                    want_set.sort();
                    assert_eq!(got_set, want_set, "seed {seed} step {step} aor {a}");
                    for w in got.windows(2) {
                        let qa = w[0].q.unwrap_or(1000);
                        let qb = w[1].q.unwrap_or(1000);
                        assert!(qa > qb || (qa == qb && w[0].registered_at >= w[1].registered_at));
                    }
                }
                if let RegisterOutcome::Ok(b) = &got {
                    assert_eq!(b.len(), r.lookup(aor, Millis(now)).len());
                }
            }
            // Counters and index agree with the contents.
            r.expire(Millis(now));
            let mut n = 0;
            let mut min = None::<Millis>;
            r.for_each_binding(Millis(now), |b| {
                n += 1;
                min = Some(min.map_or(b.expires_at, |m| m.min(b.expires_at)));
            });
            assert_eq!(r.binding_count(), n);
            assert_eq!(r.group_binding_count(0) as usize, n);
            assert_eq!(r.next_expiry(), min);
            assert_eq!(r.expire(Millis(u64::MAX / 2)), n);
            assert_eq!(
                (r.binding_count(), r.aor_count(), r.next_expiry()),
                (0, 0, None)
            );
        }

        #[test]
        fn random_requests_match_reference_model() {
            for seed in 0..40 {
                run(seed, 400);
            }
        }
    }

    #[test]
    fn concurrent_updates_keep_counters_and_index_consistent() {
        let r = std::sync::Arc::new(Registrar::new(RegistrarConfig::default(), 8));
        let threads: Vec<_> = (0..2u32)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let aor = format!("sip:u{}@example.test", i % 500);
                        let uri = format!("sip:x{}@h", (i / 500 + t) % 4);
                        let cs = [c_exp(&uri, if i % 7 == 0 { 0 } else { 60 + i % 100 })];
                        let mut q = req("cid", 0, &cs);
                        q.aor = &aor;
                        q.call_id = if t == 0 { "t0" } else { "t1" };
                        q.cseq = i + 1;
                        let _ = r.register(T0.plus_ms(i as u64), &q, 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut n = 0;
        r.for_each_binding(Millis(0), |_| n += 1);
        assert_eq!(r.binding_count(), n);
        assert_eq!(r.group_binding_count(1) as usize, n);
        assert!(n > 0 && n <= 500 * 4);
        assert_eq!(r.expire(T0.plus_secs(100_000)), n);
        assert!(r.is_empty());
        assert_eq!(r.group_binding_count(1), 0);
    }
}
