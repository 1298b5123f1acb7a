//! Digest authentication (RFC 7616, RFC 8760 for SIP).
//!
//! Implemented:
//! - RFC 7616 §3.3 (challenge: realm, nonce, opaque, algorithm, qop, stale), §3.4 (credentials,
//!   response computation with qop=auth, `-sess` HA1), §3.4.6 (stale), §3.9.1 (test vectors).
//! - RFC 8760 §2.4/§2.5: one `WWW-Authenticate` per algorithm, strongest (SHA-256) first; MD5
//!   kept for older phones. SHA-512-256 is not offered and is refused if a client picks it.
//! - RFC 3261 §22.4 (401 / 407 challenge headers), §25.1 grammar (auth-param, LWS, quoted-string
//!   with quoted-pair), RFC 2617/2069 compatibility: MD5 credentials without qop are accepted.
//! - Not implemented: qop=auth-int (body hashing; nobody registers with it), userhash,
//!   `username*` (RFC 8187 encoding).
//!
//! Design:
//! - Nonces are stateless: `base64url(issue_ms[6] ‖ salt[6] ‖ HMAC-SHA256(secret, tag ‖ issue_ms ‖
//!   salt)[..12])`, 32 characters. Any worker can validate any nonce without shared state;
//!   a bad MAC is an invalid nonce (plain re-challenge), a good MAC older than `nonce_ttl` is
//!   stale (401 with `stale=true` so the phone retries without asking its user).
//! - The only shared mutable state is the nonce-count replay window: a sharded, bounded map
//!   (nonce → highest nc + 64-bit reorder bitmap), [`REPLAY_CAPACITY`] entries in total. When a
//!   live entry has to be evicted, its shard remembers the eviction "floor" (the newest issue time
//!   evicted); an untracked nonce issued at or before the floor might have been used already, so
//!   it is answered as stale (the client simply retries with a fresh nonce). Memory stays bounded
//!   and no replay is ever accepted because of eviction.
//! - Hot path allocates nothing unless a quoted-string contains backslash escapes: hashes are
//!   fed piecewise, hex goes to stack buffers, the HMAC key schedule is computed once.
//! - Response digests are compared in constant time (`subtle`); an unknown user is verified
//!   against a dummy HA1 so the work done does not reveal whether the user exists.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::RandomState;
use hmac::{Hmac, Mac};
use md5::Md5;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::time::Millis;

type HmacSha256 = Hmac<Sha256>;

/// Digest algorithms we offer, in RFC 8760 strength order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    /// The token used on the wire and in the config (`SHA-256`, `MD5`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    /// Parses a config / wire token, case-insensitively; `-sess` variants are refused here
    /// (see [`parse_algorithm_token`] for the wire form).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match parse_algorithm_token(name.as_bytes()) {
            Some((alg, false)) => Some(alg),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Md5 => 16,
        }
    }
}

/// Parses an `algorithm=` value: `MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess` (case-insensitive).
/// Returns the base algorithm and whether it is a `-sess` variant.
pub fn parse_algorithm_token(t: &[u8]) -> Option<(Algorithm, bool)> {
    let (base, sess) = match t.len().checked_sub(5) {
        Some(n) if t[n..].eq_ignore_ascii_case(b"-sess") => (&t[..n], true),
        _ => (t, false),
    };
    if base.eq_ignore_ascii_case(b"SHA-256") {
        Some((Algorithm::Sha256, sess))
    } else if base.eq_ignore_ascii_case(b"MD5") {
        Some((Algorithm::Md5, sess))
    } else {
        None
    }
}

/// `[auth]` of the config (DESIGN.md), already validated by the daemon.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Realm in challenges; the daemon defaults it to `server.domain`.
    pub realm: String,
    /// Offered in this order, one WWW-Authenticate each.
    pub algorithms: Vec<Algorithm>,
    /// Seconds a nonce stays valid; after that, 401 with `stale=true`.
    pub nonce_ttl: u32,
}

// ---------------------------------------------------------------------------------------------
// Users database
// ---------------------------------------------------------------------------------------------

/// A users-file problem, with the 1-based line it was found on (for `check-config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {hint}")]
pub struct UsersFileError {
    pub line: usize,
    pub hint: String,
}

/// The HA1 values of one user (`H(user:realm:password)`), stored as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    md5: Option<[u8; 16]>,
    sha256: Option<[u8; 32]>,
}

impl UserEntry {
    /// HA1 for `alg`, if the users file gave (or let us compute) one.
    pub fn ha1(&self, alg: Algorithm) -> Option<&[u8]> {
        match alg {
            Algorithm::Md5 => self.md5.as_ref().map(|h| &h[..]),
            Algorithm::Sha256 => self.sha256.as_ref().map(|h| &h[..]),
        }
    }

    fn from_password(user: &str, realm: &str, password: &str) -> UserEntry {
        let ha1 = |alg| {
            let mut h = Hasher::new(alg);
            h.put(user.as_bytes());
            h.put(b":");
            h.put(realm.as_bytes());
            h.put(b":");
            h.put(password.as_bytes());
            h.finish()
        };
        let mut md5 = [0u8; 16];
        md5.copy_from_slice(ha1(Algorithm::Md5).bytes());
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(ha1(Algorithm::Sha256).bytes());
        UserEntry {
            md5: Some(md5),
            sha256: Some(sha256),
        }
    }
}

/// Username → HA1s. Plain passwords are hashed at load and never kept.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: HashMap<Box<str>, UserEntry, RandomState>,
}

/// Fixed seeds: keys come from the operator's file, not from the wire, and fixed seeds keep
/// iteration order reproducible in tests.
fn fixed_state() -> RandomState {
    RandomState::with_seeds(0x5eed_0001, 0x5eed_0002, 0x5eed_0003, 0x5eed_0004)
}

impl UserDb {
    pub fn new() -> UserDb {
        UserDb {
            users: HashMap::with_hasher(fixed_state()),
        }
    }

    /// Parses a users file (DESIGN.md): one entry per line, `user:password` or
    /// `user:md5:<hex HA1>:sha256:<hex HA1>` (either hash part may be absent). Blank lines and
    /// `#` comments are skipped; surrounding whitespace on a line is ignored. A plain password
    /// may contain ':'; the hash form is recognised only when the second field is exactly `md5`
    /// or `sha256` followed by hex of the right length.
    pub fn parse(text: &str, realm: &str) -> Result<UserDb, UsersFileError> {
        let mut db = UserDb::new();
        let mut first_line: HashMap<&str, usize, RandomState> = HashMap::with_hasher(fixed_state());
        // Editors on some systems save UTF-8 with a byte-order mark; it is not part of a name.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let err = |hint: String| UsersFileError {
                line: line_no,
                hint,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, rest)) = line.split_once(':') else {
                return Err(err(
                    "expected `user:password` or `user:md5:<HA1>:sha256:<HA1>`".into(),
                ));
            };
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            if user
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(err(
                    "user name must not contain whitespace or control characters".into(),
                ));
            }
            if rest.is_empty() {
                return Err(err(format!("empty password for user `{user}`")));
            }
            let entry = match parse_hash_form(rest) {
                Ok(Some(e)) => e,
                Ok(None) => UserEntry::from_password(user, realm, rest),
                Err(hint) => return Err(err(hint.into())),
            };
            if let Some(first) = first_line.insert(user, line_no) {
                return Err(err(format!(
                    "duplicate user `{user}` (first defined on line {first})"
                )));
            }
            db.users.insert(user.into(), entry);
        }
        Ok(db)
    }

    /// Adds (or replaces) a user with a plain password; for tests, benches and tooling.
    pub fn insert_password(&mut self, user: &str, realm: &str, password: &str) {
        self.users
            .insert(user.into(), UserEntry::from_password(user, realm, password));
    }

    pub fn get(&self, user: &str) -> Option<&UserEntry> {
        self.users.get(user)
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn get_key_value(&self, user: &str) -> Option<(&str, &UserEntry)> {
        self.users.get_key_value(user).map(|(k, v)| (&**k, v))
    }
}

/// `md5:<hex>[:sha256:<hex>]` or `sha256:<hex>[:md5:<hex>]`.
/// `Ok(None)`: not the hash form, so a plain password.
fn parse_hash_form(rest: &str) -> Result<Option<UserEntry>, &'static str> {
    let mut parts = rest.split(':');
    let mut entry = UserEntry {
        md5: None,
        sha256: None,
    };
    let tag = parts.next().unwrap_or("");
    let Some(hex) = parts.next() else {
        return Ok(None);
    };
    if !set_ha1(&mut entry, tag, hex) {
        return Ok(None);
    }
    // From here on the line clearly is the hash form: anything odd is an error, not a password.
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Ok(Some(entry)),
        (Some(tag2), Some(hex2), None) => {
            if tag2 == tag {
                return Err("the same hash algorithm is given twice");
            }
            if tag2 != "md5" && tag2 != "sha256" {
                return Err("expected `md5:<32 hex digits>` or `sha256:<64 hex digits>` after the first HA1");
            }
            if !set_ha1(&mut entry, tag2, hex2) {
                return Err(if tag2 == "md5" {
                    "md5 HA1 must be 32 hex digits"
                } else {
                    "sha256 HA1 must be 64 hex digits"
                });
            }
            Ok(Some(entry))
        }
        _ => Err("expected `user:md5:<HA1>:sha256:<HA1>`: unexpected fields after the HA1"),
    }
}

fn set_ha1(entry: &mut UserEntry, tag: &str, hex: &str) -> bool {
    match tag {
        "md5" => {
            let mut b = [0u8; 16];
            if !decode_hex_exact(hex.as_bytes(), &mut b) {
                return false;
            }
            entry.md5 = Some(b);
            true
        }
        "sha256" => {
            let mut b = [0u8; 32];
            if !decode_hex_exact(hex.as_bytes(), &mut b) {
                return false;
            }
            entry.sha256 = Some(b);
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Hashing and hex helpers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct HashOut {
    buf: [u8; 32],
    len: usize,
}

impl HashOut {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
}

impl Hasher {
    fn new(alg: Algorithm) -> Hasher {
        match alg {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }

    fn put(&mut self, b: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
        }
    }

    fn finish(self) -> HashOut {
        let mut out = HashOut {
            buf: [0; 32],
            len: 0,
        };
        match self {
            Hasher::Md5(h) => {
                out.buf[..16].copy_from_slice(&h.finalize());
                out.len = 16;
            }
            Hasher::Sha256(h) => {
                out.buf.copy_from_slice(&h.finalize());
                out.len = 32;
            }
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex (RFC 7616 LHEX) into a stack buffer.
fn hex_into<'b>(bytes: &[u8], out: &'b mut [u8; 64]) -> &'b [u8] {
    let n = bytes.len().min(32);
    for (i, b) in bytes[..n].iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    &out[..2 * n]
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `2 * out.len()` hex digits (either case).
fn decode_hex_exact(s: &[u8], out: &mut [u8]) -> bool {
    if s.len() != 2 * out.len() {
        return false;
    }
    for (i, o) in out.iter_mut().enumerate() {
        match (hex_val(s[2 * i]), hex_val(s[2 * i + 1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

/// Everything of a request that goes into the response digest besides HA1.
struct ResponseInput<'x> {
    alg: Algorithm,
    sess: bool,
    method: &'x [u8],
    uri: &'x [u8],
    nonce: &'x [u8],
    cnonce: &'x [u8],
    /// `(nc, qop)` as sent, when qop is in use; `None` is the RFC 2069 form.
    qop: Option<(&'x [u8], &'x [u8])>,
}

/// RFC 7616 §3.4.1-§3.4.3: response = KD(H(A1), nonce ":" nc ":" cnonce ":" qop ":" H(A2)).
fn response_digest(inp: &ResponseInput<'_>, ha1: &[u8]) -> HashOut {
    let mut ha1_hex = [0u8; 64];
    let sess_ha1;
    let ha1 = if inp.sess {
        // §3.4.2: A1 = H(user:realm:password) ":" nonce ":" cnonce.
        let mut h = Hasher::new(inp.alg);
        h.put(hex_into(ha1, &mut ha1_hex));
        h.put(b":");
        h.put(inp.nonce);
        h.put(b":");
        h.put(inp.cnonce);
        sess_ha1 = h.finish();
        sess_ha1.bytes()
    } else {
        ha1
    };
    let mut h2 = Hasher::new(inp.alg);
    h2.put(inp.method);
    h2.put(b":");
    h2.put(inp.uri);
    let ha2 = h2.finish();
    let mut ha2_hex = [0u8; 64];

    let mut h = Hasher::new(inp.alg);
    h.put(hex_into(ha1, &mut ha1_hex));
    h.put(b":");
    h.put(inp.nonce);
    h.put(b":");
    if let Some((nc, qop)) = inp.qop {
        h.put(nc);
        h.put(b":");
        h.put(inp.cnonce);
        h.put(b":");
        h.put(qop);
        h.put(b":");
    }
    h.put(hex_into(ha2.bytes(), &mut ha2_hex));
    h.finish()
}

#[cfg(test)]
thread_local! {
    /// Counts constant-time response comparisons, so tests can check every verdict went
    /// through the same comparison.
    static CT_COMPARES: Cell<u64> = const { Cell::new(0) };
}

/// Constant-time equality of the expected digest and the client's hex `response`.
fn response_matches(expected: &HashOut, response_hex: &[u8]) -> bool {
    #[cfg(test)]
    CT_COMPARES.with(|c| c.set(c.get() + 1));
    let mut got = [0u8; 32];
    let n = expected.len;
    // A malformed response still runs the comparison (against zeros) so every path costs alike.
    let well_formed = decode_hex_exact(response_hex, &mut got[..n]);
    let eq: bool = expected.bytes().ct_eq(&got[..n]).into();
    eq & well_formed
}

// ---------------------------------------------------------------------------------------------
// Header grammar (RFC 3261 §25.1 / RFC 7616 §3.4)
// ---------------------------------------------------------------------------------------------

/// A parameter value as it appears on the wire: the inside of a quoted-string (escapes still in)
/// or a bare token.
#[derive(Clone, Copy, Debug)]
struct Value<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Value<'a> {
    /// The value with quoted-pairs resolved; borrows unless there were escapes.
    fn get(&self) -> Cow<'a, [u8]> {
        if !self.escaped {
            return Cow::Borrowed(self.raw);
        }
        let mut v = Vec::with_capacity(self.raw.len());
        let mut i = 0;
        while i < self.raw.len() {
            if self.raw[i] == b'\\' && i + 1 < self.raw.len() {
                i += 1;
            }
            v.push(self.raw[i]);
            i += 1;
        }
        Cow::Owned(v)
    }

    fn get_str(&self) -> Option<Cow<'a, str>> {
        match self.get() {
            Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
            Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
        }
    }
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// RFC 3261 token characters, as a table (the parser's innermost loop).
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    t
};

fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// Splits `Scheme SP params` into the scheme and the rest. `None` when the value does not start
/// with a token followed by whitespace or the end.
fn split_scheme(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = 0;
    while i < v.len() && is_lws(v[i]) {
        i += 1;
    }
    let start = i;
    while i < v.len() && is_token(v[i]) {
        i += 1;
    }
    if i == start || (i < v.len() && !is_lws(v[i])) {
        return None;
    }
    Some((&v[start..i], &v[i..]))
}

/// Iterates `name = value` pairs separated by commas (empty list elements tolerated).
struct Params<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Params<'a> {
    fn new(s: &'a [u8]) -> Self {
        Params { s, i: 0 }
    }

    fn skip_lws(&mut self) {
        while self.i < self.s.len() && is_lws(self.s[self.i]) {
            self.i += 1;
        }
    }

    fn next_param(&mut self) -> Result<Option<(&'a [u8], Value<'a>)>, &'static str> {
        loop {
            self.skip_lws();
            match self.s.get(self.i) {
                None => return Ok(None),
                Some(b',') => self.i += 1,
                Some(_) => break,
            }
        }
        let start = self.i;
        while self.i < self.s.len() && is_token(self.s[self.i]) {
            self.i += 1;
        }
        if self.i == start {
            return Err("malformed auth-param name");
        }
        let name = &self.s[start..self.i];
        self.skip_lws();
        if self.s.get(self.i) != Some(&b'=') {
            return Err("auth-param without '='");
        }
        self.i += 1;
        self.skip_lws();
        let value = match self.s.get(self.i) {
            None => return Err("auth-param without value"),
            Some(b'"') => {
                self.i += 1;
                let vstart = self.i;
                let mut escaped = false;
                loop {
                    let Some(off) = memchr::memchr2(b'"', b'\\', &self.s[self.i..]) else {
                        return Err("unterminated quoted-string");
                    };
                    self.i += off;
                    if self.s[self.i] == b'"' {
                        break;
                    }
                    // quoted-pair: the backslash and the byte it escapes.
                    if self.i + 1 >= self.s.len() {
                        return Err("unterminated quoted-string");
                    }
                    escaped = true;
                    self.i += 2;
                }
                let raw = &self.s[vstart..self.i];
                self.i += 1; // closing quote
                Value { raw, escaped }
            }
            Some(_) => {
                // Tokens per the grammar; be lenient about which bytes (some phones send bare
                // URIs), but stop at the list separator and whitespace.
                let vstart = self.i;
                while self.i < self.s.len()
                    && self.s[self.i] != b','
                    && self.s[self.i] != b'"'
                    && !is_lws(self.s[self.i])
                {
                    self.i += 1;
                }
                if self.i == vstart {
                    return Err("auth-param without value");
                }
                Value {
                    raw: &self.s[vstart..self.i],
                    escaped: false,
                }
            }
        };
        self.skip_lws();
        match self.s.get(self.i) {
            None => {}
            Some(b',') => self.i += 1,
            Some(_) => return Err("expected ',' between auth-params"),
        }
        Ok(Some((name, value)))
    }
}

/// The directives of one `Digest` credentials value we care about.
#[derive(Default, Debug)]
struct Creds<'a> {
    username: Option<Value<'a>>,
    realm: Option<Value<'a>>,
    nonce: Option<Value<'a>>,
    uri: Option<Value<'a>>,
    response: Option<Value<'a>>,
    algorithm: Option<Value<'a>>,
    cnonce: Option<Value<'a>>,
    opaque: Option<Value<'a>>,
    qop: Option<Value<'a>>,
    nc: Option<Value<'a>>,
    userhash: Option<Value<'a>>,
}

/// Credentials whose mandatory directives are all present.
struct FullCreds<'a> {
    username: Value<'a>,
    realm: Value<'a>,
    nonce: Value<'a>,
    uri: Value<'a>,
    response: Value<'a>,
    rest: Creds<'a>,
}

#[derive(Debug, PartialEq, Eq)]
enum CredsError {
    /// Another scheme (Basic, NTLM, …) or not even a scheme: no Digest credentials here.
    NotDigest,
    Malformed(&'static str),
}

fn set_once<'a>(slot: &mut Option<Value<'a>>, v: Value<'a>) -> Result<(), CredsError> {
    if slot.is_some() {
        return Err(CredsError::Malformed("duplicate auth-param"));
    }
    *slot = Some(v);
    Ok(())
}

/// Parses one `Authorization` / `Proxy-Authorization` value.
fn parse_credentials(v: &[u8]) -> Result<FullCreds<'_>, CredsError> {
    let (scheme, rest) = split_scheme(v).ok_or(CredsError::NotDigest)?;
    if !scheme.eq_ignore_ascii_case(b"Digest") {
        return Err(CredsError::NotDigest);
    }
    let mut c = Creds::default();
    let mut p = Params::new(rest);
    while let Some((name, value)) = p.next_param().map_err(CredsError::Malformed)? {
        let slot = match name.len() {
            2 if name.eq_ignore_ascii_case(b"nc") => &mut c.nc,
            3 if name.eq_ignore_ascii_case(b"uri") => &mut c.uri,
            3 if name.eq_ignore_ascii_case(b"qop") => &mut c.qop,
            5 if name.eq_ignore_ascii_case(b"realm") => &mut c.realm,
            5 if name.eq_ignore_ascii_case(b"nonce") => &mut c.nonce,
            6 if name.eq_ignore_ascii_case(b"cnonce") => &mut c.cnonce,
            6 if name.eq_ignore_ascii_case(b"opaque") => &mut c.opaque,
            8 if name.eq_ignore_ascii_case(b"username") => &mut c.username,
            8 if name.eq_ignore_ascii_case(b"response") => &mut c.response,
            8 if name.eq_ignore_ascii_case(b"userhash") => &mut c.userhash,
            9 if name.eq_ignore_ascii_case(b"algorithm") => &mut c.algorithm,
            _ => continue, // extension directives are ignored (RFC 7616 §3.4: auth-param)
        };
        set_once(slot, value)?;
    }
    let missing = |what| CredsError::Malformed(what);
    Ok(FullCreds {
        username: c.username.take().ok_or(missing("missing username"))?,
        realm: c.realm.take().ok_or(missing("missing realm"))?,
        nonce: c.nonce.take().ok_or(missing("missing nonce"))?,
        uri: c.uri.take().ok_or(missing("missing uri"))?,
        response: c.response.take().ok_or(missing("missing response"))?,
        rest: c,
    })
}

// ---------------------------------------------------------------------------------------------
// Nonces
// ---------------------------------------------------------------------------------------------

const NONCE_TIME_LEN: usize = 6;
const NONCE_SALT_LEN: usize = 6;
const NONCE_MAC_LEN: usize = 12;
const NONCE_RAW_LEN: usize = NONCE_TIME_LEN + NONCE_SALT_LEN + NONCE_MAC_LEN;
/// Length of a nonce on the wire (base64url, no padding).
pub const NONCE_LEN: usize = NONCE_RAW_LEN / 3 * 4;

/// HMAC domain-separation tags, so the nonce MAC never equals another derived value.
const TAG_NONCE: u8 = 1;
const TAG_OPAQUE: u8 = 2;
const TAG_DUMMY: u8 = 3;

/// A nonce issued this far in the future is accepted (instances sharing a secret may disagree
/// a little on the clock); further than that it is invalid.
const FUTURE_SKEW_MS: u64 = 30_000;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_val(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some((c - b'A') as u32),
        b'a'..=b'z' => Some((c - b'a' + 26) as u32),
        b'0'..=b'9' => Some((c - b'0' + 52) as u32),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

fn b64_encode(raw: &[u8; NONCE_RAW_LEN]) -> [u8; NONCE_LEN] {
    let mut out = [0u8; NONCE_LEN];
    for (i, ch) in raw.chunks_exact(3).enumerate() {
        let n = (ch[0] as u32) << 16 | (ch[1] as u32) << 8 | ch[2] as u32;
        for k in 0..4 {
            out[4 * i + k] = B64[((n >> (18 - 6 * k)) & 63) as usize];
        }
    }
    out
}

fn b64_decode(s: &[u8]) -> Option<[u8; NONCE_RAW_LEN]> {
    if s.len() != NONCE_LEN {
        return None;
    }
    let mut out = [0u8; NONCE_RAW_LEN];
    for (i, ch) in s.chunks_exact(4).enumerate() {
        let mut n = 0u32;
        for &c in ch {
            n = n << 6 | b64_val(c)?;
        }
        out[3 * i] = (n >> 16) as u8;
        out[3 * i + 1] = (n >> 8) as u8;
        out[3 * i + 2] = n as u8;
    }
    Some(out)
}

/// Per-thread nonce salt: 16 bits of thread index (taken once per thread from a global counter)
/// and a 32-bit per-thread counter. Nonces only need to be unique (their MAC is what makes them
/// unforgeable), and this keeps shared atomics off the challenge path.
fn next_salt() -> u64 {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SALT: Cell<u64> = const { Cell::new(u64::MAX) };
    }
    SALT.with(|c| {
        let mut v = c.get();
        if v == u64::MAX {
            v = (THREADS.fetch_add(1, Ordering::Relaxed) & 0xFFFF) << 32;
        }
        let next = (v & 0xFFFF_0000_0000) | (v.wrapping_add(1) & 0xFFFF_FFFF);
        c.set(next);
        v & 0xFFFF_FFFF_FFFF
    })
}

// ---------------------------------------------------------------------------------------------
// Replay window
// ---------------------------------------------------------------------------------------------

/// Total number of nonces whose nonce-count window is remembered (all shards together).
/// About 83 bytes per tracked nonce (hash map bucket pair + insertion queue), allocated on
/// demand: up to ~85 MiB when full. Sized for a storm: every phone that registered within
/// the nonce TTL keeps its cached nonce usable for its refresh (nc+1). With 65,536 the
/// storm benchmark's 100k-user refresh run saw every refresh re-challenged (the evicted
/// nonces come back as stale), which made refreshes cost a second round trip.
pub const REPLAY_CAPACITY: usize = 1 << 20;
const REPLAY_SHARDS: usize = 64;
/// nc values up to this far below the highest seen are accepted once each (UDP reordering).
const REPLAY_WINDOW: u32 = 64;

#[derive(Clone, Copy, Debug)]
struct NcWindow {
    top: u32,
    /// Bit i set: nc `top - i` was accepted.
    seen: u64,
}

impl NcWindow {
    fn first(nc: u32) -> Self {
        NcWindow { top: nc, seen: 1 }
    }

    fn accept(&mut self, nc: u32) -> bool {
        if nc > self.top {
            let shift = nc - self.top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = nc;
            true
        } else {
            let d = self.top - nc;
            if d >= REPLAY_WINDOW || self.seen & (1u64 << d) != 0 {
                return false;
            }
            self.seen |= 1u64 << d;
            true
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum ReplayVerdict {
    Fresh,
    Replay,
    /// Not tracked and possibly seen before (its entry was evicted): ask for a fresh nonce.
    Forgotten,
}

struct ReplayShard {
    map: HashMap<u128, NcWindow, RandomState>,
    /// Insertion order, for eviction.
    order: VecDeque<u128>,
    /// Newest issue time (ms) of an evicted live entry.
    floor_ms: u64,
}

#[repr(align(128))]
struct Padded<T>(T);

struct ReplayStore {
    shards: Box<[Padded<Mutex<ReplayShard>>]>,
    per_shard: usize,
}

/// The replay key carries the issue time in its high bits (see [`DigestAuth::open_nonce`]).
fn key_issue_ms(key: u128) -> u64 {
    (key >> 48) as u64
}

impl ReplayStore {
    fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(REPLAY_SHARDS).max(1);
        let shards = (0..REPLAY_SHARDS)
            .map(|_| {
                Padded(Mutex::new(ReplayShard {
                    map: HashMap::with_hasher(fixed_state()),
                    order: VecDeque::new(),
                    floor_ms: 0,
                }))
            })
            .collect();
        ReplayStore { shards, per_shard }
    }

    fn shard_of(key: u128) -> usize {
        let x = (key as u64) ^ ((key >> 64) as u64);
        (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % REPLAY_SHARDS
    }

    fn record(&self, key: u128, nc: u32, now_ms: u64, ttl_ms: u64) -> ReplayVerdict {
        let mut s = self.shards[Self::shard_of(key)].0.lock();
        if let Some(w) = s.map.get_mut(&key) {
            return if w.accept(nc) {
                ReplayVerdict::Fresh
            } else {
                ReplayVerdict::Replay
            };
        }
        if key_issue_ms(key) <= s.floor_ms {
            return ReplayVerdict::Forgotten;
        }
        // Make room: drop expired entries at the front freely; evicting a live one raises the
        // floor so the nonce cannot come back as "never seen".
        while let Some(&front) = s.order.front() {
            let expired = key_issue_ms(front).saturating_add(ttl_ms) < now_ms;
            if !expired && s.map.len() < self.per_shard {
                break;
            }
            s.order.pop_front();
            s.map.remove(&front);
            if !expired {
                s.floor_ms = s.floor_ms.max(key_issue_ms(front));
            }
        }
        s.map.insert(key, NcWindow::first(nc));
        s.order.push_back(key);
        ReplayVerdict::Fresh
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().map.len()).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// Why credentials were rejected (for counters, logs and the deny list; never sent on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    WrongResponse,
    UnknownUser,
    /// The user exists but the users file has no HA1 for the algorithm used.
    NoHa1ForAlgorithm,
    /// Bad MAC, wrong length, or issued in the future: not one of ours.
    BadNonce,
    /// nc already used (or too old) for this nonce.
    Replay,
    /// The `uri` directive is not the Request-URI.
    UriMismatch,
    /// An algorithm we did not offer (or do not implement).
    AlgorithmNotOffered,
    /// A qop other than `auth`.
    QopNotSupported,
    UserhashNotSupported,
}

impl FailReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            FailReason::WrongResponse => "wrong response",
            FailReason::UnknownUser => "unknown user",
            FailReason::NoHa1ForAlgorithm => "no HA1 for algorithm",
            FailReason::BadNonce => "bad nonce",
            FailReason::Replay => "nonce-count replay",
            FailReason::UriMismatch => "uri mismatch",
            FailReason::AlgorithmNotOffered => "algorithm not offered",
            FailReason::QopNotSupported => "qop not supported",
            FailReason::UserhashNotSupported => "userhash not supported",
        }
    }
}

/// The verdict on a request's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome<'u> {
    /// `username` is borrowed from the [`UserDb`].
    Authenticated { username: &'u str },
    /// No Digest credentials for our realm: challenge (401/407).
    NoCredentials,
    /// Right password, nonce expired (or forgotten): challenge with `stale=true`.
    Stale,
    /// Challenge again (and count the failure).
    Failed(FailReason),
    /// Malformed credentials: 400 with this reason phrase.
    BadRequest(&'static str),
}

/// Which challenge header to emit: registrar (401) or proxy (407), RFC 3261 §22.2/§22.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeHeader {
    WwwAuthenticate,
    ProxyAuthenticate,
}

impl ChallengeHeader {
    const fn prefix(self) -> &'static [u8] {
        match self {
            ChallengeHeader::WwwAuthenticate => b"WWW-Authenticate: ",
            ChallengeHeader::ProxyAuthenticate => b"Proxy-Authenticate: ",
        }
    }
}

/// The digest authenticator shared (via `Arc`) by all workers.
pub struct DigestAuth {
    config: AuthConfig,
    ttl_ms: u64,
    /// HMAC-SHA256 with the key schedule done; cloned per nonce.
    mac: HmacSha256,
    /// `Digest realm="…", nonce="`.
    head: Vec<u8>,
    /// Per offered algorithm: `", opaque="…", algorithm=X, qop="auth"`.
    tails: Vec<Vec<u8>>,
    /// HA1 used for unknown users so their verification costs the same.
    dummy_ha1: [u8; 32],
    replay: ReplayStore,
}

fn push_quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

impl DigestAuth {
    /// `secret` keys the nonce MAC; instances sharing it accept each other's nonces.
    pub fn new(config: AuthConfig, secret: [u8; 32]) -> DigestAuth {
        Self::with_replay_capacity(config, secret, REPLAY_CAPACITY)
    }

    /// As [`DigestAuth::new`] with a different replay-window bound (number of nonces).
    pub fn with_replay_capacity(
        config: AuthConfig,
        secret: [u8; 32],
        capacity: usize,
    ) -> DigestAuth {
        let mac = HmacSha256::new_from_slice(&secret).expect("HMAC accepts any key length");
        let derive = |tag: u8| -> [u8; 32] {
            let mut m = mac.clone();
            m.update(&[tag]);
            m.finalize().into_bytes().into()
        };
        let mut opaque_hex = [0u8; 64];
        let opaque = hex_into(&derive(TAG_OPAQUE)[..8], &mut opaque_hex).to_vec();

        let mut head = b"Digest realm=".to_vec();
        push_quoted(&mut head, config.realm.as_bytes());
        head.extend_from_slice(b", nonce=\"");
        let tails = config
            .algorithms
            .iter()
            .map(|alg| {
                let mut t = b"\", opaque=\"".to_vec();
                t.extend_from_slice(&opaque);
                t.extend_from_slice(b"\", algorithm=");
                t.extend_from_slice(alg.as_str().as_bytes());
                t.extend_from_slice(b", qop=\"auth\"");
                t
            })
            .collect();
        DigestAuth {
            ttl_ms: u64::from(config.nonce_ttl) * 1000,
            dummy_ha1: derive(TAG_DUMMY),
            mac,
            head,
            tails,
            config,
            replay: ReplayStore::new(capacity),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Appends one `WWW-Authenticate` line (CRLF-terminated) per configured algorithm, in
    /// configured order (strongest first per RFC 8760), all carrying the same fresh nonce.
    pub fn challenge(&self, now: Millis, stale: bool, out: &mut Vec<u8>) {
        self.challenge_as(ChallengeHeader::WwwAuthenticate, now, stale, out)
    }

    /// As [`DigestAuth::challenge`] with the header name chosen (407 uses Proxy-Authenticate).
    pub fn challenge_as(
        &self,
        header: ChallengeHeader,
        now: Millis,
        stale: bool,
        out: &mut Vec<u8>,
    ) {
        let nonce = self.make_nonce(now.0, next_salt());
        for tail in &self.tails {
            out.extend_from_slice(header.prefix());
            out.extend_from_slice(&self.head);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(tail);
            if stale {
                out.extend_from_slice(b", stale=true");
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    fn nonce_mac(&self, body: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(&[TAG_NONCE]);
        m.update(body);
        m.finalize().into_bytes().into()
    }

    fn make_nonce(&self, issue_ms: u64, salt: u64) -> [u8; NONCE_LEN] {
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..6].copy_from_slice(&issue_ms.to_be_bytes()[2..]);
        raw[6..12].copy_from_slice(&salt.to_be_bytes()[2..]);
        let mac = self.nonce_mac(&raw[..12]);
        raw[12..].copy_from_slice(&mac[..NONCE_MAC_LEN]);
        b64_encode(&raw)
    }

    /// Checks a nonce's MAC; returns its issue time (ms) and replay key (`issue_ms << 48 | salt`).
    fn open_nonce(&self, nonce: &[u8]) -> Option<(u64, u128)> {
        let raw = b64_decode(nonce)?;
        let mac = self.nonce_mac(&raw[..12]);
        if !bool::from(mac[..NONCE_MAC_LEN].ct_eq(&raw[12..])) {
            return None;
        }
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(&raw[..6]);
        let mut s = [0u8; 8];
        s[2..].copy_from_slice(&raw[6..12]);
        let issue_ms = u64::from_be_bytes(t);
        let key = (u128::from(issue_ms) << 48) | u128::from(u64::from_be_bytes(s));
        Some((issue_ms, key))
    }

    /// Verifies the request's `Authorization` (or `Proxy-Authorization`) values.
    ///
    /// Values of other schemes and Digest credentials for other realms are ignored (RFC 3261
    /// §22.4: a request may carry credentials for several realms). A malformed Digest value is a
    /// bad request only if no usable credentials for our realm were found.
    pub fn verify<'u, I>(
        &self,
        now: Millis,
        method: &str,
        request_uri: &str,
        authorization_values: I,
        users: &'u UserDb,
    ) -> AuthOutcome<'u>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut malformed: Option<&'static str> = None;
        for v in authorization_values {
            match parse_credentials(v.as_ref()) {
                Err(CredsError::NotDigest) => {}
                Err(CredsError::Malformed(why)) => {
                    malformed.get_or_insert(why);
                }
                Ok(c) => {
                    if *c.realm.get() == *self.config.realm.as_bytes() {
                        return self.check(now, method, request_uri, &c, users);
                    }
                }
            }
        }
        match malformed {
            Some(why) => AuthOutcome::BadRequest(why),
            None => AuthOutcome::NoCredentials,
        }
    }

    fn check<'u>(
        &self,
        now: Millis,
        method: &str,
        request_uri: &str,
        c: &FullCreds<'_>,
        users: &'u UserDb,
    ) -> AuthOutcome<'u> {
        use AuthOutcome::{BadRequest, Failed};
        let r = &c.rest;

        // Algorithm: absent means MD5 (RFC 7616 §3.3); -sess only where its base is offered.
        let (alg, sess) = match &r.algorithm {
            None => (Algorithm::Md5, false),
            Some(v) => match parse_algorithm_token(&v.get()) {
                Some(x) => x,
                None => return Failed(FailReason::AlgorithmNotOffered),
            },
        };
        if !self.config.algorithms.contains(&alg) {
            return Failed(FailReason::AlgorithmNotOffered);
        }
        if let Some(u) = &r.userhash {
            if u.get().eq_ignore_ascii_case(b"true") {
                return Failed(FailReason::UserhashNotSupported);
            }
        }

        let qop = r.qop.as_ref().map(|q| q.get());
        let cnonce = r.cnonce.as_ref().map(|v| v.get());
        let nc_raw = r.nc.as_ref().map(|v| v.get());
        let nc = match &qop {
            Some(q) => {
                if !q.eq_ignore_ascii_case(b"auth") {
                    return Failed(FailReason::QopNotSupported);
                }
                let (Some(nc), Some(_)) = (&nc_raw, &cnonce) else {
                    return BadRequest("qop without nc or cnonce");
                };
                match parse_nc(nc) {
                    Some(n) => n,
                    None => return BadRequest("malformed nc"),
                }
            }
            None => {
                // RFC 2069 form: legacy MD5 phones only. RFC 7616 makes qop mandatory.
                if alg != Algorithm::Md5 {
                    return BadRequest("qop missing");
                }
                if sess && cnonce.is_none() {
                    return BadRequest("cnonce missing");
                }
                1
            }
        };

        let uri = c.uri.get();
        if uri.trim_ascii() != request_uri.trim().as_bytes() {
            return Failed(FailReason::UriMismatch);
        }

        let nonce = c.nonce.get();
        let Some((issue_ms, key)) = self.open_nonce(&nonce) else {
            return Failed(FailReason::BadNonce);
        };
        if issue_ms > now.0.saturating_add(FUTURE_SKEW_MS) {
            return Failed(FailReason::BadNonce);
        }
        let stale = now.0.saturating_sub(issue_ms) > self.ttl_ms;

        let username = c.username.get();
        let found = std::str::from_utf8(&username)
            .ok()
            .and_then(|u| users.get_key_value(u));
        let (ha1, miss, name) = match found {
            Some((name, e)) => match e.ha1(alg) {
                Some(h) => (h, None, name),
                None => (
                    &self.dummy_ha1[..alg.digest_len()],
                    Some(FailReason::NoHa1ForAlgorithm),
                    name,
                ),
            },
            None => (
                &self.dummy_ha1[..alg.digest_len()],
                Some(FailReason::UnknownUser),
                "",
            ),
        };
        let input = ResponseInput {
            alg,
            sess,
            method: method.as_bytes(),
            uri: &uri,
            nonce: &nonce,
            cnonce: cnonce.as_deref().unwrap_or(b""),
            qop: match (&qop, &nc_raw) {
                (Some(q), Some(n)) => Some((&n[..], &q[..])),
                _ => None,
            },
        };
        let expected = response_digest(&input, ha1);
        let ok = response_matches(&expected, &c.response.get());
        if let Some(reason) = miss {
            return Failed(reason);
        }
        if !ok {
            return Failed(FailReason::WrongResponse);
        }
        // RFC 7616 §3.3: stale only when the digest itself was right.
        if stale {
            return AuthOutcome::Stale;
        }
        match self.replay.record(key, nc, now.0, self.ttl_ms) {
            ReplayVerdict::Fresh => AuthOutcome::Authenticated { username: name },
            // Without qop a phone simply reuses the nonce; make it fetch a fresh one rather
            // than calling its password wrong.
            ReplayVerdict::Replay if qop.is_none() => AuthOutcome::Stale,
            ReplayVerdict::Replay => Failed(FailReason::Replay),
            ReplayVerdict::Forgotten => AuthOutcome::Stale,
        }
    }
}

/// nc: 8 hex digits per the grammar; 1 to 8 accepted.
fn parse_nc(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 8 {
        return None;
    }
    let mut n = 0u32;
    for &c in s {
        n = n << 4 | u32::from(hex_val(c)?);
    }
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// Client side (load generator, end-to-end tests)
// ---------------------------------------------------------------------------------------------

/// The response digest a client sends (lowercase hex). `qop = None` is the RFC 2069 form
/// (then `nc` and `cnonce` are not used).
#[allow(clippy::too_many_arguments)]
pub fn client_response(
    alg: Algorithm,
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: u32,
    cnonce: &str,
    qop: Option<&str>,
) -> String {
    client_response_sess(
        alg, false, user, realm, password, method, uri, nonce, nc, cnonce, qop,
    )
}

/// As [`client_response`], with `sess` selecting the `-sess` variant of `alg`.
#[allow(clippy::too_many_arguments)]
pub fn client_response_sess(
    alg: Algorithm,
    sess: bool,
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: u32,
    cnonce: &str,
    qop: Option<&str>,
) -> String {
    let entry = UserEntry::from_password(user, realm, password);
    let ha1 = entry.ha1(alg).unwrap_or_default();
    let nc_hex = nc_hex(nc);
    let input = ResponseInput {
        alg,
        sess,
        method: method.as_bytes(),
        uri: uri.as_bytes(),
        nonce: nonce.as_bytes(),
        cnonce: cnonce.as_bytes(),
        qop: qop.map(|q| (&nc_hex[..], q.as_bytes())),
    };
    let d = response_digest(&input, ha1);
    let mut buf = [0u8; 64];
    String::from_utf8_lossy(hex_into(d.bytes(), &mut buf)).into_owned()
}

fn nc_hex(nc: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((nc >> (28 - 4 * i)) & 15) as usize];
    }
    out
}

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub realm: Cow<'a, str>,
    pub nonce: Cow<'a, str>,
    /// `None`: an algorithm we do not implement (e.g. SHA-512-256). Absent means MD5.
    pub algorithm: Option<Algorithm>,
    /// A `-sess` variant.
    pub sess: bool,
    /// The raw qop-options list, e.g. `auth` or `auth,auth-int`.
    pub qop: Option<Cow<'a, str>>,
    pub opaque: Option<Cow<'a, str>>,
    pub stale: bool,
}

impl Challenge<'_> {
    /// Whether `auth` is among the qop options.
    pub fn offers_qop_auth(&self) -> bool {
        self.qop
            .as_deref()
            .is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")))
    }
}

/// Parses a challenge header value (`Digest realm="…", nonce="…", …`). `None` for other schemes
/// or malformed values (missing realm or nonce, duplicates, bad syntax).
pub fn parse_challenge(value: &str) -> Option<Challenge<'_>> {
    let (scheme, rest) = split_scheme(value.as_bytes())?;
    if !scheme.eq_ignore_ascii_case(b"Digest") {
        return None;
    }
    let (mut realm, mut nonce, mut alg, mut qop, mut opaque, mut stale) =
        (None, None, None, None, None, None);
    let mut p = Params::new(rest);
    while let Some((name, v)) = p.next_param().ok()? {
        let slot = if name.eq_ignore_ascii_case(b"realm") {
            &mut realm
        } else if name.eq_ignore_ascii_case(b"nonce") {
            &mut nonce
        } else if name.eq_ignore_ascii_case(b"algorithm") {
            &mut alg
        } else if name.eq_ignore_ascii_case(b"qop") {
            &mut qop
        } else if name.eq_ignore_ascii_case(b"opaque") {
            &mut opaque
        } else if name.eq_ignore_ascii_case(b"stale") {
            &mut stale
        } else {
            continue;
        };
        if slot.replace(v).is_some() {
            return None;
        }
    }
    let (algorithm, sess) = match alg {
        None => (Some(Algorithm::Md5), false),
        Some(v) => match parse_algorithm_token(&v.get()) {
            Some((a, s)) => (Some(a), s),
            None => (None, false),
        },
    };
    Some(Challenge {
        realm: realm?.get_str()?,
        nonce: nonce?.get_str()?,
        algorithm,
        sess,
        qop: match qop {
            Some(v) => Some(v.get_str()?),
            None => None,
        },
        opaque: match opaque {
            Some(v) => Some(v.get_str()?),
            None => None,
        },
        stale: stale.is_some_and(|v| v.get().eq_ignore_ascii_case(b"true")),
    })
}

/// Builds the `Authorization` value answering `ch` (`Digest username="…", …`). Uses qop=auth
/// when offered, otherwise the RFC 2069 form. `None` when the challenge's algorithm is one we
/// do not implement.
pub fn build_authorization(
    ch: &Challenge<'_>,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> Option<String> {
    let alg = ch.algorithm?;
    let qop = ch.offers_qop_auth().then_some("auth");
    let response = client_response_sess(
        alg, ch.sess, user, &ch.realm, password, method, uri, &ch.nonce, nc, cnonce, qop,
    );
    let mut out = Vec::with_capacity(256 + user.len() + uri.len() + ch.nonce.len());
    out.extend_from_slice(b"Digest username=");
    push_quoted(&mut out, user.as_bytes());
    out.extend_from_slice(b", realm=");
    push_quoted(&mut out, ch.realm.as_bytes());
    out.extend_from_slice(b", nonce=");
    push_quoted(&mut out, ch.nonce.as_bytes());
    out.extend_from_slice(b", uri=");
    push_quoted(&mut out, uri.as_bytes());
    out.extend_from_slice(b", response=\"");
    out.extend_from_slice(response.as_bytes());
    out.extend_from_slice(b"\", algorithm=");
    out.extend_from_slice(alg.as_str().as_bytes());
    if ch.sess {
        out.extend_from_slice(b"-sess");
    }
    if qop.is_some() || ch.sess {
        out.extend_from_slice(b", cnonce=");
        push_quoted(&mut out, cnonce.as_bytes());
    }
    if qop.is_some() {
        out.extend_from_slice(b", qop=auth, nc=");
        out.extend_from_slice(&nc_hex(nc));
    }
    if let Some(o) = &ch.opaque {
        out.extend_from_slice(b", opaque=");
        push_quoted(&mut out, o.as_bytes());
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "example.test";
    const URI: &str = "sip:example.test";
    const T0: Millis = Millis(1_700_000_000_000);

    fn config(algs: &[Algorithm]) -> AuthConfig {
        AuthConfig {
            realm: REALM.into(),
            algorithms: algs.to_vec(),
            nonce_ttl: 300,
        }
    }

    fn auth() -> DigestAuth {
        DigestAuth::new(config(&[Algorithm::Sha256, Algorithm::Md5]), [7; 32])
    }

    fn users() -> UserDb {
        UserDb::parse("alice:wonderland\nbob:builder\n", REALM).unwrap()
    }

    /// Challenge lines as header values (without the header name and CRLF).
    fn challenge_values(a: &DigestAuth, now: Millis, stale: bool) -> Vec<String> {
        let mut out = Vec::new();
        a.challenge(now, stale, &mut out);
        let text = String::from_utf8(out).unwrap();
        text.split_terminator("\r\n")
            .map(|l| l.strip_prefix("WWW-Authenticate: ").unwrap().to_string())
            .collect()
    }

    fn answer(ch_value: &str, user: &str, pass: &str, nc: u32) -> String {
        let ch = parse_challenge(ch_value).unwrap();
        build_authorization(&ch, user, pass, "REGISTER", URI, nc, "0a4f113b").unwrap()
    }

    fn verify_one<'u>(a: &DigestAuth, now: Millis, value: &str, db: &'u UserDb) -> AuthOutcome<'u> {
        a.verify(now, "REGISTER", URI, [value.as_bytes()], db)
    }

    // RFC 7616 §3.9.1.
    const RFC_REALM: &str = "http-auth@example.org";
    const RFC_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    const RFC_MD5: &str = "8ca523f5e9506fed4657c9700eebdbec";
    const RFC_SHA256: &str = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1";

    #[test]
    fn rfc7616_example_client_response() {
        let r = |alg| {
            client_response(
                alg,
                "Mufasa",
                RFC_REALM,
                "Circle of Life",
                "GET",
                "/dir/index.html",
                RFC_NONCE,
                1,
                RFC_CNONCE,
                Some("auth"),
            )
        };
        assert_eq!(r(Algorithm::Md5), RFC_MD5);
        assert_eq!(r(Algorithm::Sha256), RFC_SHA256);
    }

    #[test]
    fn rfc7616_example_server_side_computation() {
        // The RFC's Authorization header, parsed by our parser, checked against a users file entry.
        let db = UserDb::parse("Mufasa:Circle of Life", RFC_REALM).unwrap();
        for (alg, resp) in [("MD5", RFC_MD5), ("SHA-256", RFC_SHA256)] {
            let value = format!(
                "Digest username=\"Mufasa\",\r\n realm=\"{RFC_REALM}\",\r\n uri=\"/dir/index.html\", \
                 algorithm={alg}, nonce=\"{RFC_NONCE}\", nc=00000001, cnonce=\"{RFC_CNONCE}\", \
                 qop=auth, response=\"{resp}\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            );
            let c = parse_credentials(value.as_bytes()).unwrap();
            let (a, sess) = parse_algorithm_token(&c.rest.algorithm.unwrap().get()).unwrap();
            assert!(!sess);
            let nc = c.rest.nc.unwrap().get();
            let qop = c.rest.qop.unwrap().get();
            let input = ResponseInput {
                alg: a,
                sess,
                method: b"GET",
                uri: &c.uri.get(),
                nonce: &c.nonce.get(),
                cnonce: &c.rest.cnonce.unwrap().get(),
                qop: Some((&nc, &qop)),
            };
            let d = response_digest(&input, db.get("Mufasa").unwrap().ha1(a).unwrap());
            assert!(response_matches(&d, &c.response.get()), "{alg}");
            assert!(!response_matches(&d, &RFC_MD5.as_bytes()[..30]));
        }
    }

    #[test]
    fn users_file_forms() {
        let md5 = "939e7578ed9e3c518a452acee763bce9";
        let sha = "a".repeat(64);
        let text = format!(
            "# comment\n\n  alice:wonderland  \r\ncarol:pa:ss:word\nbob:md5:{md5}:sha256:{sha}\n\
             dave:md5:{md5}\nerin:sha256:{sha}\nfrank:md5:nothex\n"
        );
        let db = UserDb::parse(&text, REALM).unwrap();
        assert_eq!(db.len(), 6);
        assert!(db.contains("alice") && !db.contains("mallory") && !db.contains("# comment"));
        let alice = db.get("alice").unwrap();
        assert_eq!(
            alice,
            &UserEntry::from_password("alice", REALM, "wonderland")
        );
        // A password with ':' stays a password.
        assert_eq!(
            db.get("carol").unwrap(),
            &UserEntry::from_password("carol", REALM, "pa:ss:word")
        );
        let bob = db.get("bob").unwrap();
        assert_eq!(hex::encode(bob.ha1(Algorithm::Md5).unwrap()), md5);
        assert_eq!(hex::encode(bob.ha1(Algorithm::Sha256).unwrap()), sha);
        assert!(db.get("dave").unwrap().ha1(Algorithm::Sha256).is_none());
        assert!(db.get("erin").unwrap().ha1(Algorithm::Md5).is_none());
        // `md5:` followed by something that is not a HA1: a plain password.
        assert_eq!(
            db.get("frank").unwrap(),
            &UserEntry::from_password("frank", REALM, "md5:nothex")
        );
        let bom = UserDb::parse("\u{feff}alice:wonderland\n", REALM).unwrap();
        assert_eq!(bom.get("alice"), Some(alice));
        // The HA1 of a plain password depends on the realm.
        let other = UserDb::parse("alice:wonderland", "other.test").unwrap();
        assert_ne!(other.get("alice").unwrap(), alice);
    }

    #[test]
    fn users_file_errors_carry_line_numbers() {
        let md5 = "939e7578ed9e3c518a452acee763bce9";
        let cases: Vec<(String, usize, &str)> = vec![
            ("# c\nalice:x\nnocolon\n".into(), 3, "expected"),
            ("\n:pw\n".into(), 2, "empty user"),
            ("al ice:pw\n".into(), 1, "whitespace"),
            ("alice:\n".into(), 1, "empty password"),
            ("a:1\nb:2\n\na:3\n".into(), 4, "first defined on line 1"),
            (format!("x:md5:{md5}:sha256:abc"), 1, "64 hex"),
            (format!("x:md5:{md5}:md5:{md5}"), 1, "twice"),
            (format!("x:md5:{md5}:foo:bar:baz"), 1, "unexpected fields"),
            (format!("x:md5:{md5}:bogus:{md5}"), 1, "expected `md5"),
        ];
        for (text, line, hint) in cases {
            let e = UserDb::parse(&text, REALM).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.hint.contains(hint), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")));
        }
    }

    #[test]
    fn challenge_shape() {
        let a = auth();
        let mut out = Vec::new();
        a.challenge(T0, false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n"));
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("WWW-Authenticate: Digest realm=\"example.test\", nonce=\""));
        assert!(
            lines[0].ends_with(", algorithm=SHA-256, qop=\"auth\""),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(", algorithm=MD5, qop=\"auth\""),
            "{}",
            lines[1]
        );
        assert!(!text.contains("stale"));
        let c0 = parse_challenge(lines[0].strip_prefix("WWW-Authenticate: ").unwrap()).unwrap();
        let c1 = parse_challenge(lines[1].strip_prefix("WWW-Authenticate: ").unwrap()).unwrap();
        assert_eq!(c0.algorithm, Some(Algorithm::Sha256));
        assert_eq!(c1.algorithm, Some(Algorithm::Md5));
        assert_eq!(c0.realm, REALM);
        assert_eq!(c0.nonce, c1.nonce, "one nonce per challenge");
        assert_eq!(c0.nonce.len(), NONCE_LEN);
        assert!(c0.offers_qop_auth() && !c0.stale && c0.opaque.is_some());
        assert_eq!(c0.opaque, c1.opaque);

        // Each challenge has a fresh nonce.
        let again = challenge_values(&a, T0, false);
        assert_ne!(parse_challenge(&again[0]).unwrap().nonce, c0.nonce);

        let stale = challenge_values(&a, T0, true);
        assert_eq!(stale.len(), 2);
        assert!(stale.iter().all(|l| parse_challenge(l).unwrap().stale));

        let mut proxy = Vec::new();
        a.challenge_as(ChallengeHeader::ProxyAuthenticate, T0, false, &mut proxy);
        let proxy = String::from_utf8(proxy).unwrap();
        assert_eq!(proxy.matches("Proxy-Authenticate: Digest ").count(), 2);

        // Configured order is kept; a single algorithm gives a single line.
        let md5_only = DigestAuth::new(config(&[Algorithm::Md5]), [1; 32]);
        let v = challenge_values(&md5_only, T0, false);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("algorithm=MD5"));
    }

    #[test]
    fn realm_is_escaped_in_challenge() {
        let mut cfg = config(&[Algorithm::Sha256]);
        cfg.realm = "we\"ird\\realm".into();
        let a = DigestAuth::new(cfg, [2; 32]);
        let v = challenge_values(&a, T0, false);
        assert!(
            v[0].starts_with("Digest realm=\"we\\\"ird\\\\realm\""),
            "{}",
            v[0]
        );
        let ch = parse_challenge(&v[0]).unwrap();
        assert_eq!(ch.realm, "we\"ird\\realm");
        // And the round trip through escaped quoted-strings verifies.
        let mut db = UserDb::new();
        db.insert_password("alice", "we\"ird\\realm", "pw");
        let value = build_authorization(&ch, "alice", "pw", "REGISTER", URI, 1, "c").unwrap();
        assert_eq!(
            verify_one(&a, T0, &value, &db),
            AuthOutcome::Authenticated { username: "alice" }
        );
    }

    #[test]
    fn round_trip_all_forms() {
        let a = auth();
        let db = users();
        for (i, v) in challenge_values(&a, T0, false).iter().enumerate() {
            // Both lines carry the same nonce, so each answer uses its own nc.
            let value = answer(v, "alice", "wonderland", 1 + i as u32);
            let want = if i == 0 {
                "algorithm=SHA-256"
            } else {
                "algorithm=MD5"
            };
            assert!(value.contains(want), "{value}");
            assert_eq!(
                verify_one(&a, T0.plus_secs(1), &value, &db),
                AuthOutcome::Authenticated { username: "alice" }
            );
            let wrong = answer(v, "bob", "wonderland", 10 + i as u32);
            assert_eq!(
                verify_one(&a, T0.plus_secs(1), &wrong, &db),
                AuthOutcome::Failed(FailReason::WrongResponse)
            );
        }

        // RFC 2069 (no qop) for MD5, and the -sess variants, against a fresh nonce each.
        for (alg, extra) in [
            ("MD5", ""),
            ("MD5-sess", ", qop=\"auth\""),
            ("SHA-256-sess", ", qop=\"auth\""),
            ("md5-SESS", ""),
        ] {
            let v = &challenge_values(&a, T0, false)[1];
            let ch = parse_challenge(v).unwrap();
            let legacy = format!(
                "Digest realm=\"{REALM}\", nonce=\"{}\", algorithm={alg}{extra}",
                ch.nonce
            );
            let value = answer(&legacy, "bob", "builder", 1);
            assert_eq!(value.contains("qop="), !extra.is_empty(), "{value}");
            assert_eq!(
                verify_one(&a, T0, &value, &db),
                AuthOutcome::Authenticated { username: "bob" },
                "{value}"
            );
        }
    }

    #[test]
    fn stale_versus_invalid_nonce_on_virtual_clock() {
        let a = auth();
        let db = users();
        let v = challenge_values(&a, T0, false);
        let ttl = u64::from(a.config().nonce_ttl);

        // At exactly ttl the nonce is still good (nc=1 is consumed here).
        let ok = answer(&v[0], "alice", "wonderland", 1);
        assert!(matches!(
            verify_one(&a, T0.plus_secs(ttl), &ok, &db),
            AuthOutcome::Authenticated { .. }
        ));
        // One second later it is stale, with the right password...
        let late = answer(&v[0], "alice", "wonderland", 2);
        assert_eq!(
            verify_one(&a, T0.plus_secs(ttl + 1), &late, &db),
            AuthOutcome::Stale
        );
        // ...but a wrong password on a stale nonce is a failure, not "stale" (RFC 7616 §3.3).
        let bad = answer(&v[0], "alice", "guess", 3);
        assert_eq!(
            verify_one(&a, T0.plus_secs(ttl + 1), &bad, &db),
            AuthOutcome::Failed(FailReason::WrongResponse)
        );

        // A nonce with a broken MAC is invalid, not stale, even when fresh.
        let mut ch = parse_challenge(&v[0]).unwrap();
        let mut n = ch.nonce.clone().into_owned().into_bytes();
        n[NONCE_LEN - 1] = if n[NONCE_LEN - 1] == b'A' { b'B' } else { b'A' };
        ch.nonce = Cow::Owned(String::from_utf8(n).unwrap());
        let forged =
            build_authorization(&ch, "alice", "wonderland", "REGISTER", URI, 1, "x").unwrap();
        assert_eq!(
            verify_one(&a, T0, &forged, &db),
            AuthOutcome::Failed(FailReason::BadNonce)
        );
        // The RFC's nonce (not ours, wrong length) too.
        ch.nonce = Cow::Borrowed(RFC_NONCE);
        let foreign =
            build_authorization(&ch, "alice", "wonderland", "REGISTER", URI, 1, "x").unwrap();
        assert_eq!(
            verify_one(&a, T0, &foreign, &db),
            AuthOutcome::Failed(FailReason::BadNonce)
        );
        // A nonce from another secret is invalid.
        let other = DigestAuth::new(config(&[Algorithm::Sha256]), [8; 32]);
        let ov = challenge_values(&other, T0, false);
        assert_eq!(
            verify_one(&a, T0, &answer(&ov[0], "alice", "wonderland", 1), &db),
            AuthOutcome::Failed(FailReason::BadNonce)
        );
        // A nonce from far in the future (clock jumped back) is invalid.
        let fv = challenge_values(&a, T0.plus_secs(3600), false);
        assert_eq!(
            verify_one(&a, T0, &answer(&fv[0], "alice", "wonderland", 1), &db),
            AuthOutcome::Failed(FailReason::BadNonce)
        );
    }

    #[test]
    fn nonce_count_replay_is_rejected() {
        let a = auth();
        let db = users();
        let v = &challenge_values(&a, T0, false)[0];
        let with_nc = |nc| answer(v, "alice", "wonderland", nc);
        let ok = AuthOutcome::Authenticated { username: "alice" };
        let replay = AuthOutcome::Failed(FailReason::Replay);
        assert_eq!(verify_one(&a, T0, &with_nc(1), &db), ok);
        assert_eq!(verify_one(&a, T0, &with_nc(1), &db), replay);
        assert_eq!(verify_one(&a, T0, &with_nc(2), &db), ok);
        assert_eq!(verify_one(&a, T0, &with_nc(5), &db), ok);
        // Reordered but unseen: accepted once.
        assert_eq!(verify_one(&a, T0, &with_nc(4), &db), ok);
        assert_eq!(verify_one(&a, T0, &with_nc(4), &db), replay);
        assert_eq!(verify_one(&a, T0, &with_nc(2), &db), replay);
        // Far ahead, then anything below the window is refused.
        assert_eq!(verify_one(&a, T0, &with_nc(1000), &db), ok);
        assert_eq!(verify_one(&a, T0, &with_nc(3), &db), replay);
        assert_eq!(verify_one(&a, T0, &with_nc(1000 - 63), &db), ok);
        assert_eq!(verify_one(&a, T0, &with_nc(1000 - 64), &db), replay);

        // RFC 2069 clients reuse the nonce: the second use is answered as stale.
        let md5 = &challenge_values(&a, T0, false)[1];
        let ch = parse_challenge(md5).unwrap();
        let legacy = format!("Digest realm=\"{REALM}\", nonce=\"{}\"", ch.nonce);
        let value = answer(&legacy, "alice", "wonderland", 1);
        assert_eq!(verify_one(&a, T0, &value, &db), ok);
        assert_eq!(verify_one(&a, T0, &value, &db), AuthOutcome::Stale);
    }

    #[test]
    fn replay_store_is_bounded_and_never_forgets_into_acceptance() {
        // 64 shards × 1 entry.
        let a = DigestAuth::with_replay_capacity(config(&[Algorithm::Sha256]), [3; 32], 64);
        let db = users();
        let mut values = Vec::new();
        for i in 0..400u64 {
            let now = T0.plus_ms(i);
            let v = challenge_values(&a, now, false);
            let value = answer(&v[0], "alice", "wonderland", 1);
            assert!(matches!(
                verify_one(&a, now, &value, &db),
                AuthOutcome::Authenticated { .. }
            ));
            values.push(value);
            assert!(a.replay.len() <= 64);
        }
        // Every nonce's nc=1 was used once: none may be accepted again, whether its entry was
        // kept (replay) or evicted (stale: fetch a new nonce).
        let mut evicted = 0;
        for value in &values {
            match verify_one(&a, T0.plus_ms(500), value, &db) {
                AuthOutcome::Failed(FailReason::Replay) => {}
                AuthOutcome::Stale => evicted += 1,
                other => panic!("replayed credentials accepted: {other:?}"),
            }
        }
        assert!(evicted >= 400 - 64, "{evicted}");
        // A fresh nonce still works after evictions.
        let later = T0.plus_secs(1);
        let v = challenge_values(&a, later, false);
        assert!(matches!(
            verify_one(&a, later, &answer(&v[0], "alice", "wonderland", 1), &db),
            AuthOutcome::Authenticated { .. }
        ));
    }

    #[test]
    fn expired_entries_make_room_without_raising_the_floor() {
        let a = DigestAuth::with_replay_capacity(config(&[Algorithm::Sha256]), [3; 32], 64);
        let s = &a.replay;
        let key = |ms: u64, salt: u64| (u128::from(ms) << 48) | u128::from(salt);
        let ttl = 300_000;
        // Fill one shard's single slot, then insert into the same shard after expiry.
        let k1 = key(1_000, 1);
        assert_eq!(s.record(k1, 1, 1_000, ttl), ReplayVerdict::Fresh);
        let shard = ReplayStore::shard_of(k1);
        let k2 = (2..)
            .map(|salt| key(400_000, salt))
            .find(|k| ReplayStore::shard_of(*k) == shard)
            .unwrap();
        assert_eq!(s.record(k2, 1, 400_000, ttl), ReplayVerdict::Fresh);
        assert_eq!(s.shards[shard].0.lock().floor_ms, 0);
        // A live eviction raises the floor.
        let k3 = (1000..)
            .map(|salt| key(400_001, salt))
            .find(|k| ReplayStore::shard_of(*k) == shard)
            .unwrap();
        assert_eq!(s.record(k3, 1, 400_001, ttl), ReplayVerdict::Fresh);
        assert_eq!(s.shards[shard].0.lock().floor_ms, 400_000);
        assert_eq!(s.record(k2, 2, 400_002, ttl), ReplayVerdict::Forgotten);
    }

    #[test]
    fn realm_mismatch_is_ignored() {
        let a = auth();
        let db = users();
        let v = &challenge_values(&a, T0, false)[0];
        let ours = answer(v, "alice", "wonderland", 1);
        let theirs = ours.replace("realm=\"example.test\"", "realm=\"elsewhere.test\"");
        assert_ne!(ours, theirs);
        assert_eq!(
            a.verify(T0, "REGISTER", URI, [theirs.as_bytes()], &db),
            AuthOutcome::NoCredentials
        );
        // Several values: the one for our realm is used wherever it is.
        assert_eq!(
            a.verify(
                T0,
                "REGISTER",
                URI,
                [
                    b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".as_slice(),
                    theirs.as_bytes(),
                    ours.as_bytes()
                ],
                &db
            ),
            AuthOutcome::Authenticated { username: "alice" }
        );
        // Realm comparison is exact.
        let upper = ours.replace("realm=\"example.test\"", "realm=\"EXAMPLE.test\"");
        assert_eq!(verify_one(&a, T0, &upper, &db), AuthOutcome::NoCredentials);
    }

    #[test]
    fn unknown_scheme_means_no_credentials() {
        let a = auth();
        let db = users();
        for v in [
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            "NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==",
            "Digestive username=\"alice\"",
            "\"Digest\" username=x",
            "",
            "   ",
            "=garbage",
            "Digest=foo",
            "\u{0}\u{1}",
        ] {
            assert_eq!(
                verify_one(&a, T0, v, &db),
                AuthOutcome::NoCredentials,
                "{v:?}"
            );
        }
        let none: [&[u8]; 0] = [];
        assert_eq!(
            a.verify(T0, "REGISTER", URI, none, &db),
            AuthOutcome::NoCredentials
        );
        // Scheme and parameter names are case-insensitive.
        let v = &challenge_values(&a, T0, false)[0];
        let value = answer(v, "alice", "wonderland", 1)
            .replacen("Digest", "dIGEST", 1)
            .replace("username=", "UserName=")
            .replace("response=", "RESPONSE =  ");
        assert_eq!(
            verify_one(&a, T0, &value, &db),
            AuthOutcome::Authenticated { username: "alice" }
        );
    }

    #[test]
    fn malformed_digest_is_bad_request() {
        let a = auth();
        let db = users();
        let v = &challenge_values(&a, T0, false)[0];
        let good = answer(v, "alice", "wonderland", 1);
        let cases = [
            (format!("{good}, nonce=\"x\""), "duplicate"),
            (
                good.replace("NONCE=", "x=").replacen("nonce=", "foo=", 1),
                "missing nonce",
            ),
            (good.replacen("uri=", "url=", 1), "missing uri"),
            (good.replacen("username=", "user=", 1), "missing username"),
            (good.replacen("response=", "resp=", 1), "missing response"),
            (good.replacen(", nc=00000001", "", 1), "qop without nc"),
            (good.replacen("cnonce=", "xnonce=", 1), "qop without nc"),
            (good.replacen("nc=00000001", "nc=zz", 1), "malformed nc"),
            (good.replacen("\", realm", "\" realm", 1), "expected ','"),
            (
                good.trim_end_matches('"').to_string() + "\\",
                "unterminated",
            ),
            ("Digest username".to_string(), "'='"),
            ("Digest".to_string(), "missing username"),
        ];
        for (value, want) in cases {
            match verify_one(&a, T0, &value, &db) {
                AuthOutcome::BadRequest(why) => assert!(why.contains(want), "{value}: {why}"),
                other => panic!("{value}: {other:?}"),
            }
        }
        // SHA-256 without qop is not RFC 2069 territory.
        let ch = parse_challenge(v).unwrap();
        let no_qop = format!(
            "Digest realm=\"{REALM}\", nonce=\"{}\", algorithm=SHA-256",
            ch.nonce
        );
        assert_eq!(
            verify_one(&a, T0, &answer(&no_qop, "alice", "wonderland", 1), &db),
            AuthOutcome::BadRequest("qop missing")
        );
        // A malformed value does not hide valid credentials for our realm in another value.
        assert_eq!(
            a.verify(
                T0,
                "REGISTER",
                URI,
                ["Digest realm=".as_bytes(), good.as_bytes()],
                &db
            ),
            AuthOutcome::Authenticated { username: "alice" }
        );
    }

    #[test]
    fn failures_and_constant_time_path() {
        let a = auth();
        let db = UserDb::parse(
            "alice:wonderland\nhashonly:md5:939e7578ed9e3c518a452acee763bce9\n",
            REALM,
        )
        .unwrap();
        let v = challenge_values(&a, T0, false);
        let ct = || CT_COMPARES.with(|c| c.get());

        let cases = [
            (
                answer(&v[0], "mallory", "wonderland", 1),
                FailReason::UnknownUser,
            ),
            (
                answer(&v[0], "alice", "wrong", 2),
                FailReason::WrongResponse,
            ),
            (
                answer(&v[0], "hashonly", "x", 3),
                FailReason::NoHa1ForAlgorithm,
            ),
            (
                answer(&v[0], "alice", "wonderland", 4).replace("response=\"", "response=\"zz"),
                FailReason::WrongResponse,
            ),
        ];
        for (value, reason) in cases {
            let before = ct();
            assert_eq!(
                verify_one(&a, T0, &value, &db),
                AuthOutcome::Failed(reason),
                "{value}"
            );
            assert_eq!(
                ct(),
                before + 1,
                "{reason:?} must go through the constant-time compare"
            );
        }
        // Checks that need no secret fail before hashing.
        let before = ct();
        let wrong_uri = answer(&v[0], "alice", "wonderland", 5);
        assert_eq!(
            a.verify(
                T0,
                "REGISTER",
                "sip:other.test",
                [wrong_uri.as_bytes()],
                &db
            ),
            AuthOutcome::Failed(FailReason::UriMismatch)
        );
        assert_eq!(ct(), before);
        // Surrounding whitespace in the Request-URI is not a mismatch.
        assert_eq!(
            a.verify(
                T0,
                "REGISTER",
                " sip:example.test ",
                [wrong_uri.as_bytes()],
                &db
            ),
            AuthOutcome::Authenticated { username: "alice" }
        );
        // The method is part of the digest.
        let v2 = answer(&v[0], "alice", "wonderland", 6);
        assert_eq!(
            a.verify(T0, "INVITE", URI, [v2.as_bytes()], &db),
            AuthOutcome::Failed(FailReason::WrongResponse)
        );
    }

    #[test]
    fn algorithm_and_qop_policy() {
        let sha_only = DigestAuth::new(config(&[Algorithm::Sha256]), [4; 32]);
        let db = users();
        let v = &challenge_values(&sha_only, T0, false)[0];
        let ch = parse_challenge(v).unwrap();
        for alg in ["MD5", "SHA-512-256", "SHA-256-bogus"] {
            let c = format!(
                "Digest realm=\"{REALM}\", nonce=\"{}\", algorithm={alg}, qop=\"auth\"",
                ch.nonce
            );
            let mut parsed = parse_challenge(&c).unwrap();
            parsed.algorithm = parsed.algorithm.or(Some(Algorithm::Md5));
            let value =
                build_authorization(&parsed, "alice", "wonderland", "REGISTER", URI, 1, "c")
                    .unwrap()
                    .replace("algorithm=MD5", &format!("algorithm={alg}"));
            assert_eq!(
                verify_one(&sha_only, T0, &value, &db),
                AuthOutcome::Failed(FailReason::AlgorithmNotOffered),
                "{value}"
            );
        }
        // No algorithm directive means MD5, which is not offered here.
        let value = answer(v, "alice", "wonderland", 1).replace(", algorithm=SHA-256", "");
        assert_eq!(
            verify_one(&sha_only, T0, &value, &db),
            AuthOutcome::Failed(FailReason::AlgorithmNotOffered)
        );
        let auth_int = answer(v, "alice", "wonderland", 1).replace("qop=auth", "qop=auth-int");
        assert_eq!(
            verify_one(&sha_only, T0, &auth_int, &db),
            AuthOutcome::Failed(FailReason::QopNotSupported)
        );
        let userhash = answer(v, "alice", "wonderland", 1) + ", userhash=true";
        assert_eq!(
            verify_one(&sha_only, T0, &userhash, &db),
            AuthOutcome::Failed(FailReason::UserhashNotSupported)
        );
        // Quoted qop/nc/algorithm values (seen in the wild) are accepted.
        let quoted = answer(v, "alice", "wonderland", 2)
            .replace("qop=auth", "qop=\"auth\"")
            .replace("algorithm=SHA-256", "algorithm=\"SHA-256\"")
            .replace("nc=00000002", "nc=\"00000002\"");
        assert_eq!(
            verify_one(&sha_only, T0, &quoted, &db),
            AuthOutcome::Authenticated { username: "alice" }
        );
    }

    #[test]
    fn escaped_username() {
        let a = auth();
        let mut db = UserDb::new();
        db.insert_password("a\"b\\c", REALM, "pw");
        let v = &challenge_values(&a, T0, false)[0];
        let value = answer(v, "a\"b\\c", "pw", 1);
        assert!(value.contains("username=\"a\\\"b\\\\c\""), "{value}");
        assert_eq!(
            verify_one(&a, T0, &value, &db),
            AuthOutcome::Authenticated {
                username: "a\"b\\c"
            }
        );
    }

    #[test]
    fn parse_challenge_variants() {
        let c = parse_challenge(
            "digest realm=\"r\", nonce=\"n\", qop=\"auth,auth-int\", stale=TRUE, algorithm=SHA-256-sess, domain=\"sip:x\"",
        )
        .unwrap();
        assert_eq!(
            (c.algorithm, c.sess, c.stale, c.offers_qop_auth()),
            (Some(Algorithm::Sha256), true, true, true)
        );
        let c = parse_challenge("Digest realm=\"r\", nonce=\"n\"").unwrap();
        assert_eq!(
            (c.algorithm, c.qop, c.stale),
            (Some(Algorithm::Md5), None, false)
        );
        let c = parse_challenge("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256").unwrap();
        assert_eq!(c.algorithm, None);
        assert!(build_authorization(&c, "u", "p", "REGISTER", URI, 1, "c").is_none());
        assert!(parse_challenge("Digest realm=\"r\"").is_none());
        assert!(parse_challenge("Basic realm=\"r\"").is_none());
        assert!(parse_challenge("Digest realm=\"r\", realm=\"s\", nonce=\"n\"").is_none());
        assert_eq!(Algorithm::from_name("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_name("MD5-sess"), None);
    }

    #[test]
    fn nonce_encoding_round_trips() {
        let a = auth();
        for (ms, salt) in [(0, 0), (T0.0, 1), ((1 << 48) - 1, (1 << 48) - 1)] {
            let n = a.make_nonce(ms, salt);
            assert!(n
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'));
            let (issue, key) = a.open_nonce(&n).unwrap();
            assert_eq!(issue, ms);
            assert_eq!(key, (u128::from(ms) << 48) | u128::from(salt));
            assert_eq!(b64_decode(&n).map(|r| b64_encode(&r)), Some(n));
        }
        assert!(a.open_nonce(b"").is_none());
        assert!(a.open_nonce(&[b'='; NONCE_LEN]).is_none());
        // Distinct salts on one thread.
        assert_ne!(next_salt(), next_salt());
    }

    #[test]
    fn shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DigestAuth>();
        assert_send_sync::<UserDb>();
        let a = std::sync::Arc::new(auth());
        let db = std::sync::Arc::new(users());
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (a, db) = (a.clone(), db.clone());
                std::thread::spawn(move || {
                    (0..50)
                        .map(|_| {
                            let v = challenge_values(&a, T0, false);
                            let value = answer(&v[1], "bob", "builder", 1);
                            assert!(matches!(
                                verify_one(&a, T0, &value, &db),
                                AuthOutcome::Authenticated { .. }
                            ));
                            parse_challenge(&v[1]).unwrap().nonce.into_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "nonces are unique across threads");
    }

    /// Small deterministic PRNG for the robustness test.
    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn garbage_never_panics() {
        let a = auth();
        let db = users();
        let v = &challenge_values(&a, T0, false)[0];
        let good = answer(v, "alice", "wonderland", 1).into_bytes();
        let alphabet = b"Digest=,\"\\ \t\r\nabcnoqpuri0123456789-_:/@\xff\x00";
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut accepted = 0;
        for i in 0..20_000 {
            let input: Vec<u8> = if i % 2 == 0 {
                // Mutations of a valid value.
                let mut m = good.clone();
                for _ in 0..(1 + xorshift(&mut s) % 4) {
                    let pos = (xorshift(&mut s) as usize) % (m.len() + 1);
                    match xorshift(&mut s) % 3 {
                        0 if pos < m.len() => {
                            m[pos] = alphabet[xorshift(&mut s) as usize % alphabet.len()]
                        }
                        1 if pos < m.len() => {
                            m.truncate(pos);
                        }
                        _ => m.insert(pos, alphabet[xorshift(&mut s) as usize % alphabet.len()]),
                    }
                }
                m
            } else {
                let len = xorshift(&mut s) as usize % 64;
                let mut m = b"Digest ".to_vec();
                m.extend((0..len).map(|_| alphabet[xorshift(&mut s) as usize % alphabet.len()]));
                m
            };
            if let AuthOutcome::Authenticated { .. } =
                a.verify(T0, "REGISTER", URI, [input.as_slice()], &db)
            {
                accepted += 1;
            }
            if let Ok(text) = std::str::from_utf8(&input) {
                let _ = parse_challenge(text);
            }
            let _ = UserDb::parse(&String::from_utf8_lossy(&input), REALM);
        }
        // Only mutations that leave the digest inputs intact (e.g. whitespace) can pass, and
        // each nonce-count once: the good value itself is consumed at most once.
        assert!(accepted <= 1, "{accepted}");
    }
}
