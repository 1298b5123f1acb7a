//! The per-worker sans-IO engine: datagrams in, datagrams out.
//!
//! Driven quinn/str0m style: `handle_datagram(now, …)` → `poll_transmit()` until `None`;
//! `poll_timeout()` says when `handle_timeout(now)` wants to run next. State shared between
//! workers (registrations, nonce replay window) lives in [`Shared`]; counters are per worker
//! and merged on read.
//!
//! What it implements:
//! - RFC 3261 §8.2 request validation (answers from [`msg::Defect`]), §8.2.2.1 416,
//!   §8.2.2.3 420 with Unsupported, §10.3 the registrar (steps 1–8; the binding rules
//!   themselves live in [`crate::registrar`]), §11 OPTIONS to the server itself.
//! - RFC 3261 §17.2.2 non-INVITE server transactions for UDP, reduced to what a registrar
//!   needs: a retransmission (same branch, sent-by and method) gets the stored response
//!   again without a second update (Timer J = 64·T1 = 32 s).
//! - RFC 7616 / RFC 8760 digest authentication via [`crate::auth`].
//! - RFC 3261 §16.11 stateless proxying of requests to registered users (location service)
//!   and §16.7/§18.2.2 relaying of their responses back by Via; RFC 3581 rport/received.

use crate::auth::{AuthConfig, AuthOutcome, DigestAuth, FailReason, UserDb};
use crate::group::{AuthMode, GroupId, GroupKind, GroupTable, Unclassified};
use crate::msg::build::{finish, push_num, response_destination, response_head, write_top_via};
use crate::msg::fields::{self, NameAddr, Via};
use crate::msg::uri::{Scheme, Uri};
use crate::msg::{self, HeaderName, Message, Method, StartLine};
use crate::registrar::{
    Bindings, ContactReq, RegisterError, RegisterReq, Registrar, RegistrarConfig,
    Transport as RegTransport,
};
use crate::stats::{Counter, GroupCounter, WorkerStats};
use crate::time::Millis;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Everything the engine needs from the config, already validated by the daemon.
pub struct EngineConfig {
    /// SIP domain served (Request-URI host check of REGISTER, default realm).
    pub domain: String,
    /// Other host names / addresses that mean "us" in a Request-URI (listen addresses).
    pub aliases: Vec<String>,
    pub registrar: RegistrarConfig,
    /// `None`: no group may use `auth = "local"` (the daemon checks that).
    pub auth: Option<AuthConfig>,
    pub groups: GroupTable,
    pub unclassified: Unclassified,
    /// Product token for Server / User-Agent headers.
    pub server_name: String,
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    /// Local address to send from (the one the request arrived on), when it matters.
    pub src: Option<SocketAddr>,
    pub payload: Vec<u8>,
}

/// Something the daemon may act on, beyond datagrams to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request carried credentials that failed verification (wrong response, unknown
    /// user, replayed nonce count, wrong uri), or an authenticated user tried to register
    /// an AOR that is not theirs. Repeated failures from one source are what the daemon
    /// turns into a deny-list entry (XDP deny map in XDP mode).
    AuthFailed { src: IpAddr },
}

/// Events a worker buffers before the oldest are dropped: the daemon drains them after each
/// batch, so this only bounds memory if nobody does.
const MAX_EVENTS: usize = 4096;

/// Option tags we support (RFC 3261 §8.2.2.3): Path (RFC 3327) is stored and echoed.
const SUPPORTED: &[&str] = &["path"];
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, INFO, UPDATE, PRACK, REFER";
/// Our branch prefix on requests we proxy: magic cookie + a tag that lets us recognise
/// responses to them (RFC 3261 §16.11 stateless proxy branch).
const OUR_BRANCH: &[u8] = b"z9hG4bKts";
/// Timer J for UDP (64·T1): how long a non-INVITE server transaction absorbs retransmissions.
const TIMER_J_MS: u64 = 32_000;
/// Bound on remembered transactions per worker. Beyond it the oldest are forgotten early; a
/// late retransmission then reaches the registrar, which answers it as a duplicate (same
/// Call-ID and CSeq) with the current bindings, so correctness does not depend on the cache.
const MAX_TXNS: usize = 65_536;
/// Longest accepted REGISTER expiry parameter string etc. are bounded by the parser; this
/// bounds the contacts one REGISTER may carry before we even ask the registrar.
const MAX_CONTACTS_PER_REQUEST: usize = 64;

/// State shared by all workers.
pub struct Shared {
    pub config: EngineConfig,
    registrar: Registrar,
    auth: Option<DigestAuth>,
    users: UserDb,
    domain_lc: String,
    aliases_lc: Vec<String>,
}

impl Shared {
    /// `secret` keys the stateless nonces (keep it across restarts to keep nonces valid).
    pub fn new(config: EngineConfig, users: UserDb, secret: [u8; 32]) -> Self {
        let registrar = Registrar::new(config.registrar.clone(), 256);
        let auth = config.auth.clone().map(|a| DigestAuth::new(a, secret));
        let domain_lc = config.domain.to_ascii_lowercase();
        let aliases_lc = config
            .aliases
            .iter()
            .map(|a| a.to_ascii_lowercase())
            .collect();
        Shared {
            config,
            registrar,
            auth,
            users,
            domain_lc,
            aliases_lc,
        }
    }

    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    pub fn users(&self) -> &UserDb {
        &self.users
    }

    /// Shared housekeeping (binding expiry). The daemon's control thread calls it about once
    /// a second; it is cheap when nothing expires.
    pub fn handle_timeout(&self, now: Millis) -> usize {
        self.registrar.expire(now)
    }

    pub fn poll_timeout(&self) -> Option<Millis> {
        self.registrar.next_expiry()
    }

    /// Is `host` (from a URI) one of our names? IPv6 brackets are ignored.
    fn is_local_host(&self, host: &[u8]) -> bool {
        let h = if host.len() >= 2 && host[0] == b'[' {
            &host[1..host.len() - 1]
        } else {
            host
        };
        // Exact bytes first: hosts are almost always sent lower-case already.
        h == self.domain_lc.as_bytes()
            || h.eq_ignore_ascii_case(self.domain_lc.as_bytes())
            || self
                .aliases_lc
                .iter()
                .any(|a| h.eq_ignore_ascii_case(a.as_bytes()))
    }
}

/// A remembered server transaction: where its final response went, and the slot of
/// [`TxnCache::slots`] holding the response.
struct Txn {
    dst: SocketAddr,
    slot: u32,
}

/// Retransmission absorption (RFC 3261 §17.2.2 for UDP, keyed per §17.2.3).
///
/// Keyed by a 64-bit keyed hash of (branch, sent-by, method): with at most [`MAX_TXNS`]
/// entries a collision is ~1e-10 likely, and the stored response is only ever sent back to
/// the address it was built for.
struct TxnCache {
    map: HashMap<u64, Txn, BuildNoHash>,
    /// (expiry, key) in insertion order; insertion order is expiry order (fixed Timer J).
    order: VecDeque<(Millis, u64)>,
    hasher: ahash::RandomState,
    /// Stored responses as (key, bytes), reused round-robin: once the cache is full every
    /// new transaction forgets one, so storing a response costs no malloc/free and never
    /// touches the forgotten one's memory. A slot is only trusted while its key matches.
    slots: Vec<(u64, Vec<u8>)>,
    next_slot: usize,
}

/// A reused slot whose buffer grew beyond this (a rare big response) gets a fresh one, so
/// outliers do not stay pinned in the cache.
const SLOT_KEEP_CAPACITY: usize = 2048;

/// The keys are already hashes.
#[derive(Clone, Copy, Default)]
struct BuildNoHash;
impl std::hash::BuildHasher for BuildNoHash {
    type Hasher = NoHash;
    fn build_hasher(&self) -> NoHash {
        NoHash(0)
    }
}
struct NoHash(u64);
impl std::hash::Hasher for NoHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl TxnCache {
    fn new(seed: u64) -> Self {
        TxnCache {
            map: HashMap::with_hasher(BuildNoHash),
            order: VecDeque::new(),
            hasher: ahash::RandomState::with_seeds(seed, 0x7475726e, 0x7374696c, 0x65),
            slots: Vec::new(),
            next_slot: 0,
        }
    }

    /// Transaction key of a request (RFC 3261 §17.2.3): branch, sent-by and method, with
    /// ACK matching INVITE — strengthened with the source address, Call-ID and CSeq number.
    /// A real retransmission matches all of them; a different request that merely reuses a
    /// branch (constant-branch clients exist; RFC 4475 reuses `z9hG4bKkdjuw` across
    /// messages) is then a new request instead of getting someone else's answer. Only RFC
    /// 3261 branches are keyed; RFC 2543 requests fall through to the registrar's duplicate
    /// handling.
    fn key(&self, m: &Message<'_>, via: &Via<'_>, method: &[u8], src: SocketAddr) -> Option<u64> {
        let branch = via.branch.filter(|_| via.has_rfc3261_branch())?;
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.hasher.build_hasher();
        branch.hash(&mut h);
        // The host lower-cased, in one write for the usual short host (byte by byte beyond).
        let mut lc = [0u8; 64];
        match lc.get_mut(..via.host.len()) {
            Some(buf) => {
                buf.copy_from_slice(via.host);
                buf.make_ascii_lowercase();
                h.write(buf);
            }
            None => {
                for &c in via.host {
                    h.write_u8(c.to_ascii_lowercase());
                }
            }
        }
        via.port.unwrap_or(5060).hash(&mut h);
        let m_: &[u8] = if method == b"ACK" { b"INVITE" } else { method };
        m_.hash(&mut h);
        src.hash(&mut h);
        m.header(HeaderName::CallId).unwrap_or(b"").hash(&mut h);
        m.hot.map(|hot| hot.cseq.seq).hash(&mut h);
        Some(h.finish())
    }

    /// Where the answer to `key` went and what it was.
    fn get(&self, key: u64) -> Option<(SocketAddr, &[u8])> {
        let t = self.map.get(&key)?;
        match self.slots.get(t.slot as usize) {
            Some((k, bytes)) if *k == key => Some((t.dst, bytes)),
            _ => None,
        }
    }

    fn insert(&mut self, now: Millis, key: u64, dst: SocketAddr, response: &[u8]) {
        if self.map.len() >= MAX_TXNS {
            if let Some((_, old)) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        // The slot written MAX_TXNS stores ago: its transaction has been forgotten (FIFO, at
        // most MAX_TXNS remembered); if not, the key check in `get` stops trusting it.
        let slot = self.next_slot;
        self.next_slot = (slot + 1) % MAX_TXNS;
        if slot == self.slots.len() {
            self.slots.push((key, Vec::with_capacity(response.len())));
        }
        let (k, buf) = &mut self.slots[slot];
        if buf.capacity() > SLOT_KEEP_CAPACITY && buf.capacity() > 2 * response.len() {
            *buf = Vec::with_capacity(response.len());
        }
        buf.clear();
        buf.extend_from_slice(response);
        *k = key;
        let txn = Txn {
            dst,
            slot: slot as u32,
        };
        if self.map.insert(key, txn).is_none() {
            self.order.push_back((now.plus_ms(TIMER_J_MS), key));
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some(&(at, key)) = self.order.front() {
            if at > now {
                break;
            }
            self.order.pop_front();
            if let Some(t) = self.map.remove(&key) {
                // Timer J ran out (a quiet period): give the memory back, as before.
                if let Some((k, buf)) = self.slots.get_mut(t.slot as usize) {
                    if *k == key {
                        *buf = Vec::new();
                    }
                }
            }
        }
    }

    fn next_expiry(&self) -> Option<Millis> {
        self.order.front().map(|(at, _)| *at)
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    w: Worker,
}

/// The mutable half of an engine. Kept apart from the `Arc<Shared>` so request handling can
/// borrow both without cloning the `Arc` (an atomic shared by all workers) per datagram.
struct Worker {
    stats: Arc<WorkerStats>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    scratch: Vec<u8>,
    bindings: Bindings,
    txns: TxnCache,
    rng: SmallRng,
    server_name: String,
    /// RFC 1123 date of the last second seen, formatted once per second.
    date: (u64, String),
    /// Transaction key of the request being handled (`None`: not keyed), computed once in
    /// `on_request` for the retransmission lookup and reused when the answer is stored.
    txn_key: Option<u64>,
    reg_bufs: RegBufs,
}

/// Buffers reused by every REGISTER so the hot path does not allocate.
#[derive(Default)]
struct RegBufs {
    /// The canonical AOR.
    aor: String,
    /// The Contacts' comparison keys laid end to end; `key_ends[i]` is where key `i` ends,
    /// `None` when the key is the Contact URI's own text.
    keys: String,
    key_ends: smallvec::SmallVec<[Option<usize>; 4]>,
}

impl Engine {
    pub fn new(shared: Arc<Shared>, seed: u64) -> Self {
        let server_name = shared.config.server_name.clone();
        Engine {
            shared,
            w: Worker {
                stats: Arc::default(),
                out: VecDeque::new(),
                events: VecDeque::new(),
                scratch: Vec::new(),
                bindings: Bindings::new(),
                txns: TxnCache::new(seed),
                rng: SmallRng::seed_from_u64(seed),
                server_name,
                date: (u64::MAX, String::new()),
                txn_key: None,
                reg_bufs: RegBufs::default(),
            },
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// This worker's counters; the control plane keeps a clone and merges on read.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.w.stats
    }

    /// One UDP datagram from `src`, received on local address `local`; classifies `src` itself.
    pub fn handle_datagram(
        &mut self,
        now: Millis,
        src: SocketAddr,
        local: SocketAddr,
        data: &[u8],
    ) {
        let group = self.shared.config.groups.classify(src.ip());
        self.handle_classified(now, src, local, group, data)
    }

    /// Same, with the IP Group already known (XDP metadata, or the socket worker's own
    /// classification that decided which fair queue the datagram waited in).
    pub fn handle_classified(
        &mut self,
        now: Millis,
        src: SocketAddr,
        local: SocketAddr,
        group: Option<GroupId>,
        data: &[u8],
    ) {
        self.w.handle(&self.shared, now, src, local, group, data)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.w.out.pop_front()
    }

    /// The next event (see [`Event`]), in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.w.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Millis> {
        self.w.txns.next_expiry()
    }

    pub fn handle_timeout(&mut self, now: Millis) {
        self.w.txns.expire(now);
    }
}

impl Worker {
    fn handle(
        &mut self,
        shared: &Shared,
        now: Millis,
        src: SocketAddr,
        local: SocketAddr,
        group: Option<GroupId>,
        data: &[u8],
    ) {
        self.stats.inc(Counter::RxDatagrams);
        if let Some(g) = group {
            self.stats.inc_group(g, GroupCounter::Rx);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        self.txn_key = None;
        // Matched by reference: the message view is large, and moving it out of the
        // `Result` is a memcpy per datagram.
        match &msg::parse(data, &mut scratch) {
            Ok(m) => {
                if m.is_request() {
                    self.stats.inc(Counter::RxRequests);
                    self.on_request(shared, now, src, local, group, m);
                } else {
                    self.stats.inc(Counter::RxResponses);
                    self.on_response(src, local, m);
                }
            }
            Err(msg::ParseError::KeepAlive) => {}
            Err(_) => self.stats.inc(Counter::DropMalformed),
        }
        self.scratch = scratch;
    }

    fn event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    fn send(&mut self, dst: SocketAddr, local: SocketAddr, payload: Vec<u8>) {
        self.stats.inc(Counter::TxDatagrams);
        self.out.push_back(Transmit {
            dst,
            src: Some(local),
            payload,
        });
    }

    /// Sends a final response and, for transaction-keyed requests, remembers it so a
    /// retransmission gets the same bytes.
    fn respond(
        &mut self,
        now: Millis,
        m: &Message<'_>,
        src: SocketAddr,
        local: SocketAddr,
        out: Vec<u8>,
    ) {
        let Some(via) = m.top_via else {
            // Unparseable Via: the packet's source is the only return address we have
            // (RFC 3261 §18.2.2 falls back to the source for unreliable transports).
            self.send(src, local, out);
            return;
        };
        let dst = response_destination(&via, src);
        if m.is_request() {
            // `on_request` keyed this very request (same top Via, method and source).
            if let Some(key) = self.txn_key {
                self.txns.insert(now, key, dst, &out);
            }
        }
        self.send(dst, local, out);
    }

    /// A response with no headers beyond the mandatory ones.
    fn reply(
        &mut self,
        now: Millis,
        m: &Message<'_>,
        src: SocketAddr,
        local: SocketAddr,
        code: u16,
        reason: &str,
    ) {
        self.reply_with(now, m, src, local, code, reason, |_| {});
    }

    #[allow(clippy::too_many_arguments)]
    fn reply_with(
        &mut self,
        now: Millis,
        m: &Message<'_>,
        src: SocketAddr,
        local: SocketAddr,
        code: u16,
        reason: &str,
        extra: impl FnOnce(&mut Vec<u8>),
    ) {
        if m.method() == Some(Method::Ack) {
            return; // ACK is never answered (RFC 3261 §17.2.1 / §8.2.7)
        }
        let mut out = Vec::with_capacity(512);
        if !response_head(&mut out, m, src, code, reason) {
            self.stats.inc(Counter::DropMalformed);
            return;
        }
        extra(&mut out);
        finish(&mut out, &self.server_name, b"");
        if code >= 400 && code != 401 && code != 407 {
            self.stats.inc(Counter::Rejected400);
        }
        self.respond(now, m, src, local, out);
    }

    /// 420 Bad Extension listing the unsupported option tags (RFC 3261 §8.2.2.3).
    fn reply_unsupported(
        &mut self,
        now: Millis,
        m: &Message<'_>,
        src: SocketAddr,
        local: SocketAddr,
        tags: &str,
    ) {
        self.reply_with(now, m, src, local, 420, "Bad Extension", |o| {
            o.extend_from_slice(b"Unsupported: ");
            o.extend_from_slice(tags.as_bytes());
            o.extend_from_slice(b"\r\n");
        });
    }

    /// 200 to an OPTIONS for the server itself (RFC 3261 §11.2): what we allow and support.
    fn reply_options(&mut self, now: Millis, m: &Message<'_>, src: SocketAddr, local: SocketAddr) {
        self.reply_with(now, m, src, local, 200, "OK", |o| {
            let _ = write!(
                o,
                "Allow: {ALLOW}\r\nAccept: application/sdp\r\nSupported: path\r\n"
            );
        });
    }

    fn on_request(
        &mut self,
        shared: &Shared,
        now: Millis,
        src: SocketAddr,
        local: SocketAddr,
        group: Option<GroupId>,
        m: &Message<'_>,
    ) {
        // Retransmission of a request we answered: same bytes again, no second update.
        if let (Some(via), StartLine::Request { method_raw, .. }) = (m.top_via, m.start) {
            self.txn_key = self.txns.key(m, &via, method_raw, src);
            if let Some((dst, bytes)) = self.txn_key.and_then(|k| self.txns.get(k)) {
                let payload = bytes.to_vec();
                self.stats.inc(Counter::Retransmissions);
                if method_raw != b"ACK" {
                    self.send(dst, local, payload);
                }
                return;
            }
        }
        let Some(gid) = group else {
            self.stats.inc(Counter::DropUnclassified);
            if shared.config.unclassified == Unclassified::Reject {
                self.reply(
                    now,
                    m,
                    src,
                    local,
                    403,
                    "Forbidden - Source Not In Any IP Group",
                );
            }
            return;
        };
        let Some(grp) = shared.config.groups.get(gid) else {
            self.stats.inc(Counter::DropUnclassified);
            return;
        };

        if let Some(d) = m.defect {
            self.stats.inc(Counter::DropMalformed);
            self.reply(now, m, src, local, d.status(), d.reason());
            return;
        }
        let Some(hot) = m.hot else {
            // No defect but no hot fields cannot happen for requests; be safe anyway.
            self.stats.inc(Counter::DropMalformed);
            return;
        };
        let StartLine::Request {
            method,
            uri: ruri_raw,
            ..
        } = m.start
        else {
            return;
        };

        // RFC 3261 §8.2.2.1: the Request-URI scheme must be one we understand.
        let ruri = match Uri::parse(ruri_raw) {
            Ok(u) if u.is_sip() => u,
            Ok(_) => {
                self.reply_with(now, m, src, local, 416, "Unsupported URI Scheme", |_| {});
                return;
            }
            Err(_) => {
                self.reply(now, m, src, local, 400, "Malformed Request-URI");
                return;
            }
        };

        match method {
            Method::Register => {
                if let Some(bad) = unsupported_requires(m, HeaderName::Require) {
                    self.reply_unsupported(now, m, src, local, &bad);
                    return;
                }
                self.on_register(
                    shared, now, src, local, gid, grp.kind, grp.auth, m, &hot, &ruri,
                );
            }
            Method::Options if ruri.user.is_none() && shared.is_local_host(ruri.host) => {
                if let Some(bad) = unsupported_requires(m, HeaderName::Require) {
                    self.reply_unsupported(now, m, src, local, &bad);
                    return;
                }
                self.stats.inc(Counter::LocalOptions);
                self.reply_options(now, m, src, local);
            }
            _ => self.route_to_user(shared, now, src, local, m, &hot, &ruri),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_register(
        &mut self,
        shared: &Shared,
        now: Millis,
        src: SocketAddr,
        local: SocketAddr,
        gid: GroupId,
        kind: GroupKind,
        auth_mode: AuthMode,
        m: &Message<'_>,
        hot: &msg::Hot<'_>,
        ruri: &Uri<'_>,
    ) {
        let mut bufs = std::mem::take(&mut self.reg_bufs);
        self.register_with(
            shared, now, src, local, gid, kind, auth_mode, m, hot, ruri, &mut bufs,
        );
        self.reg_bufs = bufs;
    }

    #[allow(clippy::too_many_arguments)]
    fn register_with(
        &mut self,
        shared: &Shared,
        now: Millis,
        src: SocketAddr,
        local: SocketAddr,
        gid: GroupId,
        kind: GroupKind,
        auth_mode: AuthMode,
        m: &Message<'_>,
        hot: &msg::Hot<'_>,
        ruri: &Uri<'_>,
        bufs: &mut RegBufs,
    ) {
        let fail = |e: &mut Worker| {
            e.stats.inc(Counter::RegisterFailed);
            e.stats.inc_group(gid, GroupCounter::RegisterFailed);
        };
        // §10.3 step 1: the Request-URI must name the domain we serve.
        if !shared.is_local_host(ruri.host) {
            fail(self);
            self.reply(now, m, src, local, 403, "Forbidden - Domain Not Served");
            return;
        }
        if kind == GroupKind::Server {
            // Forwarding REGISTERs from server-type groups is the forwarding issue's job;
            // until then a clear refusal, and never a stored binding.
            fail(self);
            self.reply(
                now,
                m,
                src,
                local,
                403,
                "Forbidden - REGISTER From Server IP Group Not Accepted",
            );
            return;
        }
        // §10.3 step 5: the AOR, from To, canonical, and valid for our domain.
        let to_uri = hot.to_uri;
        if !to_uri.is_sip() {
            fail(self);
            self.reply(now, m, src, local, 404, "Not Found - AOR Must Be A SIP URI");
            return;
        }
        if to_uri.user.is_none() || !shared.is_local_host(to_uri.host) {
            fail(self);
            self.reply(
                now,
                m,
                src,
                local,
                404,
                "Not Found - AOR Not In This Domain",
            );
            return;
        }
        bufs.aor.clear();
        write_canonical_aor(&to_uri, &shared.domain_lc, &mut bufs.aor);
        let aor = bufs.aor.as_str();

        // §10.3 steps 2-3 (auth) come before touching bindings.
        if auth_mode == AuthMode::Local {
            let Some(auth) = shared.auth.as_ref() else {
                fail(self);
                self.reply(
                    now,
                    m,
                    src,
                    local,
                    500,
                    "Server Internal Error - No Auth Configured",
                );
                return;
            };
            let uri_str = std::str::from_utf8(m.request_uri().unwrap_or(b"")).unwrap_or("");
            let outcome = auth.verify(
                now,
                "REGISTER",
                uri_str,
                m.header_lines(HeaderName::Authorization),
                &shared.users,
            );
            match outcome {
                AuthOutcome::Authenticated { username } => {
                    // §10.3 step 3: may this user modify this AOR? Our policy: the
                    // authenticated username must be the AOR's user part.
                    let to_user = aor_user(aor);
                    if to_user != username {
                        self.stats.inc(Counter::AuthFailures);
                        self.event(Event::AuthFailed { src: src.ip() });
                        fail(self);
                        self.reply(
                            now,
                            m,
                            src,
                            local,
                            403,
                            "Forbidden - User Not Allowed To Register This AOR",
                        );
                        return;
                    }
                }
                AuthOutcome::BadRequest(reason) => {
                    fail(self);
                    self.reply(now, m, src, local, 400, reason);
                    return;
                }
                other => {
                    let stale = matches!(other, AuthOutcome::Stale);
                    match other {
                        AuthOutcome::Stale => self.stats.inc(Counter::AuthStale),
                        AuthOutcome::Failed(FailReason::BadNonce) | AuthOutcome::NoCredentials => {}
                        AuthOutcome::Failed(_) => {
                            self.stats.inc(Counter::AuthFailures);
                            self.event(Event::AuthFailed { src: src.ip() });
                        }
                        _ => {}
                    }
                    self.stats.inc(Counter::AuthChallenges);
                    self.reply_with(now, m, src, local, 401, "Unauthorized", |o| {
                        auth.challenge(now, stale, o)
                    });
                    return;
                }
            }
        }

        // Contacts (§10.3 step 6).
        let mut star = false;
        bufs.keys.clear();
        bufs.key_ends.clear();
        let mut parsed: smallvec::SmallVec<[(NameAddr<'_>, Uri<'_>); 4]> =
            smallvec::SmallVec::new();
        for item in m.list(HeaderName::Contact) {
            if item == b"*" {
                star = true;
                continue;
            }
            let Ok(na) = NameAddr::parse(item) else {
                fail(self);
                self.reply(now, m, src, local, 400, "Malformed Contact");
                return;
            };
            let Ok(uri) = na.parsed_uri() else {
                fail(self);
                self.reply(now, m, src, local, 400, "Malformed Contact URI");
                return;
            };
            if !na.params_ok() {
                fail(self);
                self.reply(now, m, src, local, 400, "Malformed Contact Parameters");
                return;
            }
            if parsed.len() >= MAX_CONTACTS_PER_REQUEST {
                fail(self);
                self.reply(
                    now,
                    m,
                    src,
                    local,
                    403,
                    "Forbidden - Too Many Contacts In Request",
                );
                return;
            }
            if uri.key_is_raw() {
                // The usual plain Contact: its key is its own text, nothing to build.
                bufs.key_ends.push(None);
            } else {
                uri.write_key(&mut bufs.keys);
                bufs.key_ends.push(Some(bufs.keys.len()));
            }
            parsed.push((na, uri));
        }
        let mut contacts: smallvec::SmallVec<[ContactReq<'_>; 4]> = smallvec::SmallVec::new();
        let mut key_start = 0;
        for (i, (na, _uri)) in parsed.iter().enumerate() {
            let uri = std::str::from_utf8(na.uri).unwrap_or("");
            let key = match bufs.key_ends[i] {
                Some(end) => {
                    let k = &bufs.keys[key_start..end];
                    key_start = end;
                    k
                }
                None => uri,
            };
            // One pass over the contact's parameters.
            let (mut expires, mut q, mut instance, mut reg_id) = (None, None, None, None);
            for (n, v) in fields::params(na.params) {
                let Some(v) = v else { continue };
                if n.eq_ignore_ascii_case(b"expires") {
                    match fields::parse_u32(fields::unquote(v), true) {
                        Ok(e) => expires = Some(e),
                        Err(_) => {
                            fail(self);
                            self.reply(
                                now,
                                m,
                                src,
                                local,
                                400,
                                "Malformed Contact expires Parameter",
                            );
                            return;
                        }
                    }
                } else if n.eq_ignore_ascii_case(b"q") {
                    match parse_q(v) {
                        Some(x) => q = Some(x),
                        None => {
                            fail(self);
                            self.reply(now, m, src, local, 400, "Malformed q Value");
                            return;
                        }
                    }
                } else if n.eq_ignore_ascii_case(b"+sip.instance") {
                    instance = std::str::from_utf8(v).ok();
                } else if n.eq_ignore_ascii_case(b"reg-id") {
                    reg_id = fields::parse_u32(v, false).ok();
                }
            }
            contacts.push(ContactReq {
                uri,
                key,
                expires,
                q,
                instance,
                reg_id,
            });
        }
        let expires_header = match m.expires() {
            Ok(e) => e,
            Err(_) => {
                fail(self);
                self.reply(now, m, src, local, 400, "Malformed Expires");
                return;
            }
        };
        let mut path: smallvec::SmallVec<[&str; 2]> = smallvec::SmallVec::new();
        if m.header(HeaderName::Path).is_some() {
            path.extend(
                m.list(HeaderName::Path)
                    .filter_map(|p| std::str::from_utf8(p).ok()),
            );
        }
        let call_id = std::str::from_utf8(hot.call_id).unwrap_or("");
        let transport = transport_of(hot.via.transport);
        let req = RegisterReq {
            aor,
            call_id,
            cseq: hot.cseq.seq,
            star,
            contacts: &contacts,
            expires_header,
            source: src,
            transport,
            path: &path,
            group: gid,
        };
        let jitter: u32 = self.rng.gen();
        let mut bindings = std::mem::take(&mut self.bindings);
        let result = shared
            .registrar
            .register_into(now, &req, jitter, &mut bindings);
        match result {
            Ok(_) | Err(RegisterError::Duplicate) => {
                self.stats.inc(Counter::RegisterOk);
                self.stats.inc_group(gid, GroupCounter::RegisterOk);
                let echo_path = !path.is_empty();
                let bref = &bindings;
                if self.date.0 != now.as_secs() {
                    self.date = (now.as_secs(), http_date(now));
                }
                let date = std::mem::take(&mut self.date.1);
                self.reply_with(now, m, src, local, 200, "OK", |o| {
                    for b in bref.iter() {
                        o.extend_from_slice(b"Contact: <");
                        o.extend_from_slice(b.uri.as_bytes());
                        o.extend_from_slice(b">;expires=");
                        push_num(o, b.expires);
                        if let Some(q) = b.q {
                            write_q(o, q);
                        }
                        if let Some(inst) = b.instance {
                            o.extend_from_slice(b";+sip.instance=");
                            o.extend_from_slice(inst.as_bytes());
                        }
                        if let Some(r) = b.reg_id {
                            let _ = write!(o, ";reg-id={r}");
                        }
                        o.extend_from_slice(b"\r\n");
                    }
                    if echo_path {
                        // RFC 3327 §5.3: the registrar echoes the Path it stored.
                        for p in m.header_lines(HeaderName::Path) {
                            o.extend_from_slice(b"Path: ");
                            o.extend_from_slice(p);
                            o.extend_from_slice(b"\r\n");
                        }
                    }
                    o.extend_from_slice(b"Date: ");
                    o.extend_from_slice(date.as_bytes());
                    o.extend_from_slice(b"\r\n");
                });
                self.date.1 = date;
            }
            Err(e) => {
                fail(self);
                match e {
                    RegisterError::IntervalTooBrief { min_expires } => {
                        self.reply_with(now, m, src, local, 423, "Interval Too Brief", |o| {
                            let _ = write!(o, "Min-Expires: {min_expires}\r\n");
                        });
                    }
                    RegisterError::BadRequest(reason) => {
                        self.reply(now, m, src, local, 400, reason)
                    }
                    RegisterError::OutOfOrder => self.reply(
                        now,
                        m,
                        src,
                        local,
                        500,
                        "Server Internal Error - Out Of Order CSeq",
                    ),
                    RegisterError::TooManyContacts { .. } => self.reply(
                        now,
                        m,
                        src,
                        local,
                        503,
                        "Service Unavailable - Too Many Registered Contacts",
                    ),
                    RegisterError::Full => self.reply_with(
                        now,
                        m,
                        src,
                        local,
                        503,
                        "Service Unavailable - Location Service Full",
                        |o| {
                            o.extend_from_slice(b"Retry-After: 60\r\n");
                        },
                    ),
                    RegisterError::Duplicate => unreachable!("handled above"),
                }
            }
        }
        self.bindings = bindings;
    }

    /// Location service (RFC 3261 §16): requests for our domain's users go statelessly to
    /// the best current binding (highest q, then most recent: the registrar's order).
    #[allow(clippy::too_many_arguments)]
    fn route_to_user(
        &mut self,
        shared: &Shared,
        now: Millis,
        src: SocketAddr,
        local: SocketAddr,
        m: &Message<'_>,
        hot: &msg::Hot<'_>,
        ruri: &Uri<'_>,
    ) {
        let method = m.method().unwrap_or(Method::Other);
        if !shared.is_local_host(ruri.host) {
            // We are no open relay; outbound routing to other domains is the routing issue.
            if method != Method::Ack {
                self.reply(now, m, src, local, 403, "Forbidden - Relaying Denied");
            }
            return;
        }
        if ruri.user.is_none() {
            // Addressed to the server itself, but not something we serve.
            let code = if method == Method::Other { 501 } else { 405 };
            let reason = if code == 501 {
                "Not Implemented"
            } else {
                "Method Not Allowed"
            };
            self.reply_with(now, m, src, local, code, reason, |o| {
                let _ = write!(o, "Allow: {ALLOW}\r\n");
            });
            return;
        }
        // RFC 3261 §16.3 step 5: a proxy rejects unsupported Proxy-Require.
        if let Some(bad) = unsupported_requires(m, HeaderName::ProxyRequire) {
            self.reply_unsupported(now, m, src, local, &bad);
            return;
        }
        // §16.3 step 3: Max-Forwards.
        let mf = hot.max_forwards.unwrap_or(70);
        if mf == 0 {
            if method == Method::Options {
                // §16.3: a proxy may answer an OPTIONS whose Max-Forwards is exhausted.
                self.reply_options(now, m, src, local);
            } else {
                self.reply(now, m, src, local, 483, "Too Many Hops");
            }
            return;
        }
        let aor = canonical_aor(ruri, &shared.config.domain);
        let mut target: Option<(String, SocketAddr, Vec<String>)> = None;
        shared.registrar.lookup_with(&aor, now, |b| {
            if target.is_none() {
                target = Some((
                    b.uri.to_string(),
                    b.source,
                    b.path().map(str::to_string).collect(),
                ));
            }
        });
        let Some((contact, source, path)) = target else {
            if method == Method::Ack {
                return;
            }
            self.stats.inc(Counter::NotFound);
            let user = aor_user(&aor);
            if shared.users.contains(user) {
                self.reply(now, m, src, local, 480, "Temporarily Unavailable");
            } else {
                self.reply(now, m, src, local, 404, "Not Found");
            }
            return;
        };
        // RFC 3327 §5.4: with a stored Path the request goes to its first hop (loose route).
        let first_path_uri = path
            .first()
            .and_then(|p| NameAddr::parse(p.as_bytes()).ok())
            .and_then(|n| std::str::from_utf8(n.uri).ok().map(str::to_string));
        let dst = next_hop(first_path_uri.as_deref().unwrap_or(&contact), source);
        // §16.6: copy, new Request-URI, Route from the stored Path, Max-Forwards - 1, our Via.
        let mut out = Vec::with_capacity(m.body.len() + 1024);
        let StartLine::Request { method_raw, .. } = m.start else {
            return;
        };
        out.extend_from_slice(method_raw);
        out.push(b' ');
        out.extend_from_slice(contact.as_bytes());
        out.extend_from_slice(b" SIP/2.0\r\n");
        // Our Via, with a branch derived from the incoming one so that a CANCEL or a
        // non-2xx ACK takes the same branch as its INVITE (§16.11).
        let mut h: u64 = 0xcbf29ce484222325;
        for &b in hot
            .via
            .branch
            .unwrap_or(b"")
            .iter()
            .chain(hot.call_id)
            .chain(hot.via.host)
        {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        let via_host = via_sent_by(local, &shared.config.domain);
        out.extend_from_slice(b"Via: SIP/2.0/UDP ");
        out.extend_from_slice(via_host.as_bytes());
        out.extend_from_slice(b";branch=");
        out.extend_from_slice(OUR_BRANCH);
        let _ = write!(out, "{h:016x}\r\n");
        let mut first_via = true;
        for p in &path {
            let _ = write!(out, "Route: {p}\r\n");
        }
        for hdr in m.headers() {
            match hdr.name {
                HeaderName::MaxForwards | HeaderName::ContentLength => continue,
                HeaderName::Via if first_via => {
                    first_via = false;
                    // The received/rport of the previous hop, so responses find it (§18.2.1).
                    out.extend_from_slice(b"Via: ");
                    write_top_via(&mut out, &hot.via, src);
                    let mut rest = fields::split_list(hdr.value);
                    rest.next();
                    for r in rest {
                        out.extend_from_slice(b", ");
                        out.extend_from_slice(r);
                    }
                    out.extend_from_slice(b"\r\n");
                    continue;
                }
                // Loose routing (§16.4): a Route naming us was for us; drop it.
                HeaderName::Route
                    if NameAddr::parse(hdr.value)
                        .ok()
                        .and_then(|n| n.parsed_uri().ok())
                        .is_some_and(|u| shared.is_local_host(u.host)) =>
                {
                    continue;
                }
                _ => {}
            }
            if hdr.name == HeaderName::Other || hdr.name.canonical().is_empty() {
                out.extend_from_slice(hdr.raw_name);
            } else {
                out.extend_from_slice(hdr.name.canonical().as_bytes());
            }
            out.extend_from_slice(b": ");
            out.extend_from_slice(hdr.value);
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(
            out,
            "Max-Forwards: {}\r\nContent-Length: {}\r\n\r\n",
            mf - 1,
            m.body.len()
        );
        out.extend_from_slice(m.body);
        self.stats.inc(Counter::Forwarded);
        self.send(dst, local, out);
    }

    /// A response to something we proxied: drop our Via and send it on by the next one
    /// (§16.7 step 9 / §18.2.2). Anything else is a stray response and is dropped.
    fn on_response(&mut self, _src: SocketAddr, local: SocketAddr, m: &Message<'_>) {
        let Some(top) = m.top_via else {
            self.stats.inc(Counter::DropResponseNoVia);
            return;
        };
        if !top.branch.is_some_and(|b| b.starts_with(OUR_BRANCH)) {
            self.stats.inc(Counter::DropResponseNoVia);
            return;
        }
        // The next Via: the rest of the first Via line, or the next Via line.
        let mut vias = m.list(HeaderName::Via);
        vias.next();
        let Some(next_raw) = vias.next() else {
            self.stats.inc(Counter::DropResponseNoVia);
            return;
        };
        let Ok(next) = Via::parse(next_raw) else {
            self.stats.inc(Counter::DropResponseNoVia);
            return;
        };
        let ip_str = next.received.map(fields::trim).unwrap_or(next.host);
        let ip_str = std::str::from_utf8(ip_str)
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let Ok(ip) = ip_str.parse::<IpAddr>() else {
            // A sent-by host name would need DNS (RFC 3263); not resolvable in the core.
            self.stats.inc(Counter::DropResponseNoVia);
            return;
        };
        let port = match next.rport {
            Some(Some(p)) => p,
            _ => next.port.unwrap_or(5060),
        };
        let mut out = Vec::with_capacity(m.body.len() + 512);
        let StartLine::Response { code, reason } = m.start else {
            return;
        };
        let _ = write!(out, "SIP/2.0 {code} ");
        out.extend_from_slice(reason);
        out.extend_from_slice(b"\r\n");
        let mut removed = false;
        for hdr in m.headers() {
            if hdr.name == HeaderName::ContentLength {
                continue;
            }
            if hdr.name == HeaderName::Via && !removed {
                removed = true;
                let mut items = fields::split_list(hdr.value);
                items.next();
                let rest: Vec<&[u8]> = items.collect();
                if rest.is_empty() {
                    continue;
                }
                out.extend_from_slice(b"Via: ");
                out.extend_from_slice(&rest.join(&b", "[..]));
                out.extend_from_slice(b"\r\n");
                continue;
            }
            if hdr.name == HeaderName::Other {
                out.extend_from_slice(hdr.raw_name);
            } else {
                out.extend_from_slice(hdr.name.canonical().as_bytes());
            }
            out.extend_from_slice(b": ");
            out.extend_from_slice(hdr.value);
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", m.body.len());
        out.extend_from_slice(m.body);
        self.stats.inc(Counter::RelayedResponses);
        self.send(SocketAddr::new(ip, port), local, out);
    }
}

/// Where a request for a binding goes (RFC 3261 §16.6 step 6 / §16.11: the Contact is the
/// new Request-URI and its host:port the next hop). Two SBC exceptions, both sending to the
/// address the REGISTER came from instead: a Contact host that is a name (resolving it, RFC
/// 3263, is not the core's job; the phone's flow is the best route anyway), and a Contact
/// with a private, shared (CGNAT) or link-local address different from that source — the
/// phone is behind NAT and its Contact is unreachable (what Kamailio's `fix_nated_register`
/// handles).
fn next_hop(contact: &str, source: SocketAddr) -> SocketAddr {
    let Ok(uri) = Uri::parse(contact.as_bytes()) else {
        return source;
    };
    let Some(ip) = std::str::from_utf8(uri.host_bare())
        .ok()
        .and_then(|h| h.parse::<IpAddr>().ok())
    else {
        return source;
    };
    let behind_nat = ip != source.ip()
        && match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
            }
            IpAddr::V6(v6) => {
                (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        };
    if behind_nat || ip.is_unspecified() {
        return source;
    }
    let default_port = if uri.scheme == Scheme::Sips {
        5061
    } else {
        5060
    };
    SocketAddr::new(ip, uri.port.unwrap_or(default_port))
}

/// Canonical AOR with our domain name substituted when the host is one of our aliases, so
/// `sip:alice@127.0.0.1` and `sip:alice@example.test` are the same user.
fn canonical_aor(uri: &Uri<'_>, domain: &str) -> String {
    let mut s = String::with_capacity(uri.raw.len() + domain.len());
    write_canonical_aor(uri, &domain.to_ascii_lowercase(), &mut s);
    s
}

/// [`canonical_aor`] appended to `out`, with the domain already lower-case.
fn write_canonical_aor(uri: &Uri<'_>, domain_lc: &str, out: &mut String) {
    out.push_str(if uri.scheme == Scheme::Sips {
        "sips:"
    } else {
        "sip:"
    });
    if let Some(u) = uri.user {
        crate::msg::uri::unescape_into(u, out);
        out.push('@');
    }
    out.push_str(domain_lc);
}

/// The user part of a canonical AOR.
fn aor_user(aor: &str) -> &str {
    let rest = aor.split_once(':').map(|(_, r)| r).unwrap_or(aor);
    rest.rsplit_once('@').map(|(u, _)| u).unwrap_or("")
}

/// First option tag of `Require`/`Proxy-Require` we do not support, comma-joined with the
/// others (RFC 3261 §8.2.2.3 lists them all in Unsupported).
fn unsupported_requires(m: &Message<'_>, which: HeaderName) -> Option<String> {
    // Usually absent: one pass over the header names, no iterator chain.
    m.header(which)?;
    let bad: Vec<String> = m
        .list(which)
        .filter(|t| {
            !SUPPORTED
                .iter()
                .any(|s| t.eq_ignore_ascii_case(s.as_bytes()))
        })
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    (!bad.is_empty()).then(|| bad.join(", "))
}

/// `q` value (RFC 3261 §25.1 qvalue: "0" ["." 0*3DIGIT] / "1" ["." 0*3("0")]) → ×1000.
fn parse_q(v: &[u8]) -> Option<u16> {
    let v = fields::trim(v);
    let (int, frac) = match memchr::memchr(b'.', v) {
        Some(d) => (&v[..d], &v[d + 1..]),
        None => (v, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut milli = 0u16;
    for i in 0..3 {
        milli = milli * 10 + frac.get(i).map(|d| (d - b'0') as u16).unwrap_or(0);
    }
    match int[0] {
        b'0' => Some(milli),
        b'1' if milli == 0 => Some(1000),
        _ => None,
    }
}

fn write_q(o: &mut Vec<u8>, q: u16) {
    if q >= 1000 {
        o.extend_from_slice(b";q=1");
    } else {
        let s = format!("{:03}", q);
        let s = s.trim_end_matches('0');
        let _ = write!(o, ";q=0.{}", if s.is_empty() { "0" } else { s });
    }
}

fn transport_of(t: &[u8]) -> RegTransport {
    if t.eq_ignore_ascii_case(b"TCP") {
        RegTransport::Tcp
    } else if t.eq_ignore_ascii_case(b"TLS") {
        RegTransport::Tls
    } else if t.eq_ignore_ascii_case(b"SCTP") {
        RegTransport::Sctp
    } else if t.eq_ignore_ascii_case(b"WS") {
        RegTransport::Ws
    } else if t.eq_ignore_ascii_case(b"WSS") {
        RegTransport::Wss
    } else {
        RegTransport::Udp
    }
}

/// Our sent-by: the local address the request came in on, unless that is a wildcard.
fn via_sent_by(local: SocketAddr, domain: &str) -> String {
    if local.ip().is_unspecified() {
        format!("{domain}:{}", local.port())
    } else {
        local.to_string()
    }
}

/// RFC 3261 §20.17 Date (RFC 1123 form, GMT), from the caller's clock — a pure conversion.
fn http_date(now: Millis) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.0))
}

#[cfg(test)]
mod tests;
