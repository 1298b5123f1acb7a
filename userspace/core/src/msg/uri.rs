//! SIP and SIPS URIs (RFC 3261 §19.1): a validated zero-copy view, comparison per §19.1.4,
//! and the canonical address-of-record form of §10.3 step 5.
//!
//! Other schemes (tel:, http:, unknown) are recognised by scheme only and kept opaque: a
//! registrar answers 416 to them in the Request-URI (RFC 3261 §8.2.2.1).

/// The scheme of a URI, compared case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriError {
    Empty,
    NoScheme,
    BadScheme,
    BadUser,
    BadHost,
    BadPort,
    BadParams,
    BadEscape,
}

/// A parsed URI. For `sip`/`sips` every part is validated; for other schemes only `scheme`
/// and `raw` are meaningful.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uri<'a> {
    pub raw: &'a [u8],
    pub scheme: Scheme,
    /// Escaped form, as on the wire.
    pub user: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
    /// As on the wire; IPv6 references keep their brackets.
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// Everything after the first `;` up to `?`, without the leading `;`.
    pub params: &'a [u8],
    /// Everything after `?`.
    pub headers: &'a [u8],
}

use super::fields::{find_byte, unreserved_plus};

/// RFC 3261 §25.1 character classes of the URI components (`%` is handled separately).
static USER: [bool; 256] = unreserved_plus(b"&=+$,;?/");
static PASSWORD: [bool; 256] = unreserved_plus(b"&=+$,");
static PARAMS: [bool; 256] = unreserved_plus(b"[]/:&+$;=");
static HEADERS: [bool; 256] = unreserved_plus(b"[]/?:+$&=");
/// Host name / IPv4 characters: alphanumerics, '-', '.' and '_' (see `valid_host`).
static HOSTNAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        i += 1;
    }
    t
};

/// Validates `%HH` escapes and that every other byte is in `class`.
fn check_escaped(s: &[u8], class: &[bool; 256]) -> Result<(), UriError> {
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if class[c as usize] {
            i += 1;
        } else if c == b'%' {
            if i + 2 >= s.len() || !(s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit()) {
                return Err(UriError::BadEscape);
            }
            i += 3;
        } else {
            return Err(UriError::BadUser);
        }
    }
    Ok(())
}

fn valid_host(h: &[u8]) -> bool {
    if h.is_empty() {
        return false;
    }
    if h[0] == b'[' {
        // IPv6reference: validate by the standard library's parser.
        return h.len() > 2
            && h[h.len() - 1] == b']'
            && std::str::from_utf8(&h[1..h.len() - 1])
                .ok()
                .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
                .is_some();
    }
    // hostname / IPv4address: alphanumerics, '-', '.'; RFC 3261 §25.1 also forbids a
    // leading '-' per label, which we tolerate (real devices send odd names; being strict
    // here rejects phones, not attacks).
    // (`_` is not in the grammar but appears in real host names.)
    h.iter().all(|&c| HOSTNAME[c as usize])
}

impl<'a> Uri<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<Uri<'a>, UriError> {
        if raw.is_empty() {
            return Err(UriError::Empty);
        }
        // Fast path: the lower-case `sip:` almost every URI starts with.
        let colon = if raw.starts_with(b"sip:") {
            3
        } else {
            super::fields::find_byte(raw, b':').ok_or(UriError::NoScheme)?
        };
        let scheme_raw = &raw[..colon];
        if scheme_raw.is_empty()
            || !scheme_raw[0].is_ascii_alphabetic()
            || !scheme_raw
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            return Err(UriError::BadScheme);
        }
        let scheme = if scheme_raw.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_raw.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_raw.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other
        };
        let rest = &raw[colon + 1..];
        if !matches!(scheme, Scheme::Sip | Scheme::Sips) {
            // No URI of any scheme contains raw whitespace, controls, angle brackets or
            // quotes. (SIP URIs are checked component by component below.)
            if rest
                .iter()
                .any(|&c| c <= b' ' || c == 0x7f || c == b'<' || c == b'>' || c == b'"')
            {
                return Err(UriError::BadParams);
            }
            if rest.is_empty() {
                return Err(UriError::BadScheme);
            }
            return Ok(Uri {
                raw,
                scheme,
                user: None,
                password: None,
                host: b"",
                port: None,
                params: b"",
                headers: b"",
            });
        }
        // userinfo ends at the first '@': neither params nor headers may contain a raw '@'
        // (§25.1 paramchar / hvalue), while the user part may contain ';' and '?'.
        let (user, password, hostpart) = match super::fields::find_byte(rest, b'@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let (u, p) = match super::fields::find_byte(userinfo, b':') {
                    Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                    None => (userinfo, None),
                };
                if u.is_empty() {
                    return Err(UriError::BadUser);
                }
                check_escaped(u, &USER)?;
                if let Some(p) = p {
                    check_escaped(p, &PASSWORD)?;
                }
                (Some(u), p, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let hp_end = super::fields::find_any(hostpart, 0, [b';', b'?']);
        let hostport = &hostpart[..hp_end];
        let (host, port) = split_hostport(hostport).ok_or(UriError::BadHost)?;
        if !valid_host(host) {
            return Err(UriError::BadHost);
        }
        let after = &hostpart[hp_end..];
        let (params, headers) = match after.first() {
            None => (&b""[..], &b""[..]),
            Some(b'?') => (&b""[..], &after[1..]),
            Some(_) => {
                let body = &after[1..];
                match super::fields::find_byte(body, b'?') {
                    Some(q) => (&body[..q], &body[q + 1..]),
                    None => (body, &b""[..]),
                }
            }
        };
        check_escaped(params, &PARAMS).map_err(|_| UriError::BadParams)?;
        // RFC 3261 §19.1.1: a parameter name must not appear more than once (otherwise a URI
        // need not even equal itself under §19.1.4; found by fuzzing).
        if !params.is_empty() {
            let mut seen: smallvec::SmallVec<[&[u8]; 8]> = smallvec::SmallVec::new();
            for p in params.split(|&c| c == b';') {
                let name = &p[..super::fields::find_byte(p, b'=').unwrap_or(p.len())];
                if name.is_empty() || seen.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    return Err(UriError::BadParams);
                }
                seen.push(name);
            }
        }
        check_escaped(headers, &HEADERS).map_err(|_| UriError::BadParams)?;
        Ok(Uri {
            raw,
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    /// URI parameters as (name, value) pairs; names as on the wire.
    pub fn params(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
        self.params
            .split(|&c| c == b';')
            .filter(|p| !p.is_empty())
            .map(|p| match super::fields::find_byte(p, b'=') {
                Some(e) => (&p[..e], Some(&p[e + 1..])),
                None => (p, None),
            })
    }

    /// The value of URI parameter `name` (case-insensitive); `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        if self.params.is_empty() {
            return None;
        }
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Host without IPv6 brackets.
    pub fn host_bare(&self) -> &'a [u8] {
        let h = self.host;
        if h.len() >= 2 && h[0] == b'[' {
            &h[1..h.len() - 1]
        } else {
            h
        }
    }

    /// Canonical address-of-record (RFC 3261 §10.3 step 5): scheme, unescaped user, lower-case
    /// host and the port if one was given; all parameters and headers removed.
    pub fn write_aor(&self, out: &mut String) {
        out.push_str(if self.scheme == Scheme::Sips {
            "sips:"
        } else {
            "sip:"
        });
        if let Some(u) = self.user {
            unescape_into(u, out);
            out.push('@');
        }
        push_lower(self.host, out);
        if let Some(p) = self.port {
            out.push(':');
            out.push_str(itoa::Buffer::new().format(p));
        }
    }

    pub fn aor(&self) -> String {
        let mut s = String::with_capacity(self.raw.len());
        self.write_aor(&mut s);
        s
    }

    /// A string key such that two URIs that are equal under RFC 3261 §19.1.4 get the same
    /// key: scheme, unescaped user and password, lower-case host, explicit port, the
    /// parameters that must match when present in either URI (user, ttl, method, maddr,
    /// transport; lower-cased) and the headers. Other parameters are left out — §19.1.4
    /// ignores them when only one side has them; two URIs that both carry one with different
    /// values get the same key, a deliberate simplification noted here.
    pub fn write_key(&self, out: &mut String) {
        if !self.is_sip() {
            out.push_str(&String::from_utf8_lossy(self.raw));
            return;
        }
        out.push_str(if self.scheme == Scheme::Sips {
            "sips:"
        } else {
            "sip:"
        });
        if let Some(u) = self.user {
            unescape_into(u, out);
            if let Some(p) = self.password {
                out.push(':');
                unescape_into(p, out);
            }
            out.push('@');
        }
        push_lower(self.host, out);
        if let Some(p) = self.port {
            out.push(':');
            out.push_str(itoa::Buffer::new().format(p));
        }
        for name in ["user", "ttl", "method", "maddr", "transport"] {
            if let Some(v) = self.param(name) {
                out.push(';');
                out.push_str(name);
                if let Some(v) = v {
                    out.push('=');
                    let mut tmp = String::new();
                    unescape_into(v, &mut tmp);
                    out.push_str(&tmp.to_ascii_lowercase());
                }
            }
        }
        if !self.headers.is_empty() {
            out.push('?');
            let mut hs: Vec<&[u8]> = self.headers.split(|&c| c == b'&').collect();
            hs.sort_unstable();
            for (i, h) in hs.iter().enumerate() {
                if i > 0 {
                    out.push('&');
                }
                unescape_into(h, out);
            }
        }
    }

    /// Whether [`write_key`](Self::write_key) would write `raw` unchanged: a lower-case
    /// `sip:`/`sips:` URI with user and password free of escapes, a lower-case host, a port (if
    /// any) without leading zeros, and nothing after the host-port. Then the key is `raw`
    /// itself and need not be built. (A validated SIP URI is ASCII throughout.)
    pub fn key_is_raw(&self) -> bool {
        let prefix: &[u8] = match self.scheme {
            Scheme::Sip => b"sip:",
            Scheme::Sips => b"sips:",
            _ => return false,
        };
        if !self.raw.starts_with(prefix)
            || self.user.is_some_and(|u| find_byte(u, b'%').is_some())
            || self.password.is_some_and(|p| find_byte(p, b'%').is_some())
            || self.host.iter().any(u8::is_ascii_uppercase)
        {
            return false;
        }
        // Where the host ends inside `raw` (it is a sub-slice of it).
        let Some(host_end) = (self.host.as_ptr() as usize)
            .checked_sub(self.raw.as_ptr() as usize)
            .map(|off| off + self.host.len())
        else {
            return false;
        };
        let Some(after) = self.raw.get(host_end..) else {
            return false;
        };
        match self.port {
            None => after.is_empty(),
            // ":" then exactly the digits `write_key` writes: all digits (so they are the
            // port `p` itself) without a leading zero.
            Some(_) => match after {
                [b':', digits @ ..] => {
                    !digits.is_empty()
                        && digits.iter().all(u8::is_ascii_digit)
                        && (digits.len() == 1 || digits[0] != b'0')
                }
                _ => false,
            },
        }
    }

    pub fn key(&self) -> String {
        let mut s = String::with_capacity(self.raw.len());
        self.write_key(&mut s);
        s
    }

    /// RFC 3261 §19.1.4 equality.
    pub fn equals(&self, other: &Uri<'_>) -> bool {
        if self.scheme != other.scheme {
            return false;
        }
        if !self.is_sip() {
            return self.raw.eq_ignore_ascii_case(other.raw);
        }
        if !opt_eq_unescaped(self.user, other.user)
            || !opt_eq_unescaped(self.password, other.password)
        {
            return false;
        }
        if !self.host.eq_ignore_ascii_case(other.host) || self.port != other.port {
            return false;
        }
        // Parameters present in both must match; user/ttl/method/maddr/transport must be in
        // both or neither.
        for (n, v) in self.params() {
            match other.param(std::str::from_utf8(n).unwrap_or("\u{0}")) {
                Some(ov) => {
                    if !opt_eq_ci(v, ov) {
                        return false;
                    }
                }
                None => {
                    if is_must_match_param(n) {
                        return false;
                    }
                }
            }
        }
        for (n, _) in other.params() {
            if is_must_match_param(n)
                && self
                    .param(std::str::from_utf8(n).unwrap_or("\u{0}"))
                    .is_none()
            {
                return false;
            }
        }
        // Header components are never ignored: every header must be present on both sides.
        let mut a: Vec<String> = self
            .headers
            .split(|&c| c == b'&')
            .filter(|h| !h.is_empty())
            .map(unescape)
            .collect();
        let mut b: Vec<String> = other
            .headers
            .split(|&c| c == b'&')
            .filter(|h| !h.is_empty())
            .map(unescape)
            .collect();
        a.sort_unstable();
        b.sort_unstable();
        a == b
    }
}

fn is_must_match_param(n: &[u8]) -> bool {
    ["user", "ttl", "method", "maddr", "transport"]
        .iter()
        .any(|m| n.eq_ignore_ascii_case(m.as_bytes()))
}

fn opt_eq_unescaped(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b || unescape(a) == unescape(b),
        _ => false,
    }
}

fn opt_eq_ci(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => unescape(a).eq_ignore_ascii_case(&unescape(b)),
        _ => false,
    }
}

fn push_lower(s: &[u8], out: &mut String) {
    match std::str::from_utf8(s) {
        // The common case, ASCII: one copy, lower-cased in place.
        Ok(a) if a.is_ascii() => {
            let start = out.len();
            out.push_str(a);
            out[start..].make_ascii_lowercase();
        }
        // Each byte as the char of the same value, as before (never on validated hosts).
        _ => {
            for &c in s {
                out.push(c.to_ascii_lowercase() as char);
            }
        }
    }
}

fn hexval(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Percent-decodes into `out`. Decoded bytes that are not valid UTF-8 on their own are kept
/// as `%HH` so the result is still unambiguous.
pub fn unescape_into(s: &[u8], out: &mut String) {
    // Copy the leading run with nothing to decode (usually all of it) in one go; bytes from
    // the first '%' or non-ASCII byte on take the loop below.
    let plain = s
        .iter()
        .position(|&c| c == b'%' || !c.is_ascii())
        .unwrap_or(s.len());
    out.push_str(std::str::from_utf8(&s[..plain]).unwrap_or_default());
    let mut i = plain;
    while i < s.len() {
        let c = s[i];
        if c == b'%' && i + 2 < s.len() {
            let v = hexval(s[i + 1]) << 4 | hexval(s[i + 2]);
            if v.is_ascii() && v != b'%' {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(s[i + 1].to_ascii_uppercase() as char);
                out.push(s[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            out.push(c as char);
            i += 1;
        }
    }
}

fn unescape(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    unescape_into(s, &mut out);
    out
}

/// Splits `host[:port]` / `[v6][:port]`. `None` when the port is not a valid u16.
pub fn split_hostport(hp: &[u8]) -> Option<(&[u8], Option<u16>)> {
    if hp.first() == Some(&b'[') {
        let close = super::fields::find_byte(hp, b']')?;
        let host = &hp[..=close];
        let rest = &hp[close + 1..];
        if rest.is_empty() {
            return Some((host, None));
        }
        if rest[0] != b':' {
            return None;
        }
        return Some((host, Some(parse_port(&rest[1..])?)));
    }
    match super::fields::rfind_byte(hp, b':') {
        Some(c) => Some((&hp[..c], Some(parse_port(&hp[c + 1..])?))),
        None => Some((hp, None)),
    }
}

fn parse_port(p: &[u8]) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v: u32 = p.iter().fold(0, |a, &d| a * 10 + (d - b'0') as u32);
    u16::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Uri<'_> {
        Uri::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn key_is_raw_only_when_write_key_copies_raw() {
        // (raw, expected): `false` also where the key happens to equal raw but the check is
        // conservative (parameters are never examined).
        for (raw, want) in [
            ("sip:flood1234@198.18.1.2:5060", true),
            ("sip:alice@example.test", true),
            ("sips:bob@[2001:db8::1]:5061", true),
            ("sip:example.test", true),
            ("sip:a:pw@h", true),
            ("sips:a@h:65535", true),
            ("sip:a@h:0", true),
            ("sip:a@h:05060", false),
            ("SIP:a@h", false),
            ("sip:A@h", true),
            ("sip:a@H", false),
            ("sip:a%41@h", false),
            ("sip:a:p%77@h", false),
            ("sip:a@h;transport=udp", false),
            ("sip:a@h;", false),
            ("sip:a@h?", false),
            ("sip:a@h?x=y", false),
        ] {
            let u = Uri::parse(raw.as_bytes()).unwrap();
            let mut key = String::new();
            u.write_key(&mut key);
            assert_eq!(u.key_is_raw(), want, "{raw}");
            if want {
                assert_eq!(key.as_bytes(), u.raw, "{raw}");
            }
        }
    }

    #[test]
    fn unescape_and_lower_keep_byte_semantics() {
        let mut out = String::new();
        unescape_into(b"al%69ce%2", &mut out);
        assert_eq!(out, "alice%2");
        out.clear();
        // Non-ASCII bytes become the char of the same value; %80 stays escaped (upper case).
        unescape_into(b"a\xe9b%c3%a9", &mut out);
        assert_eq!(out, "a\u{e9}b%C3%A9");
        out.clear();
        push_lower(b"Example.COM", &mut out);
        push_lower(b"X\xc9", &mut out);
        assert_eq!(out, "example.comx\u{c9}");
        assert!(valid_host(b"a_b-c.d9") && !valid_host(b"a(b)") && !valid_host(b"a~b"));
    }

    #[test]
    fn parses_parts() {
        let x = u("sip:alice:pw@Example.COM:5070;transport=udp;lr?subject=hi");
        assert_eq!(x.scheme, Scheme::Sip);
        assert_eq!(x.user, Some(&b"alice"[..]));
        assert_eq!(x.password, Some(&b"pw"[..]));
        assert_eq!(x.host, b"Example.COM");
        assert_eq!(x.port, Some(5070));
        assert_eq!(x.param("TRANSPORT"), Some(Some(&b"udp"[..])));
        assert_eq!(x.param("lr"), Some(None));
        assert_eq!(x.headers, b"subject=hi");
        let v6 = u("sips:[2001:db8::1]:5061");
        assert_eq!(v6.host_bare(), b"2001:db8::1");
        assert_eq!(v6.port, Some(5061));
        assert_eq!(u("sip:example.com").user, None);
        // RFC 4475 §3.1.1.6 semiuri: ';' inside the user part.
        let s = u("sip:user;par=u%40example.net@example.com");
        assert_eq!(s.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(s.host, b"example.com");
        assert_eq!(u("tel:+1-201-555-0123").scheme, Scheme::Tel);
        assert_eq!(u("http://x").scheme, Scheme::Other);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sip",
            ":x",
            "sip:",
            "sip:@host",
            "sip:user@",
            "sip:user@host:99999",
            "sip:user@host:5x",
            "sip:a b@host",
            "sip:user@ho st",
            "sip:<user@host>",
            "sip:user@[::1",
            "sip:user@[zz::1]",
            "sip:us%zzer@host",
            "sip:user@host;p=%4",
            "1sip:x@y",
            "sip:h;x=1;x=2",
            "sip:h;maddr=a;MADDR=b",
            "sip:h;;lr",
        ] {
            assert!(Uri::parse(bad.as_bytes()).is_err(), "{bad} should fail");
        }
    }

    /// The equal and unequal pairs listed in RFC 3261 §19.1.4.
    #[test]
    fn rfc3261_19_1_4_examples() {
        let equal = [
            (
                "sip:%61lice@atlanta.com;transport=TCP",
                "sip:alice@AtLanTa.CoM;Transport=tcp",
            ),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
            (
                "sip:carol@chicago.com;newparam=5",
                "sip:carol@chicago.com;security=on",
            ),
            (
                "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
                "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            ),
            (
                "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
                "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
            ),
        ];
        for (a, b) in equal {
            assert!(u(a).equals(&u(b)), "{a} == {b}");
            assert!(u(b).equals(&u(a)), "{b} == {a}");
        }
        let unequal = [
            (
                "SIP:ALICE@AtLanTa.CoM;Transport=udp",
                "sip:alice@AtLanTa.CoM;Transport=UDP",
            ),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
            (
                "sip:bob@biloxi.com",
                "sip:bob@biloxi.com:6000;transport=tcp",
            ),
            (
                "sip:carol@chicago.com",
                "sip:carol@chicago.com?Subject=next%20meeting",
            ),
            ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ];
        for (a, b) in unequal {
            assert!(!u(a).equals(&u(b)), "{a} != {b}");
        }
        // The keys agree with equals() on these pairs (except the "both have different
        // unknown params" case, which none of these exercise).
        for (a, b) in equal {
            if !a.contains("newparam") {
                assert_eq!(u(a).key(), u(b).key(), "{a} / {b}");
            }
        }
        for (a, b) in unequal {
            if a.starts_with("SIP:ALICE") {
                continue; // user part case differs: different users, different keys
            }
            assert_ne!(u(a).key(), u(b).key(), "{a} / {b}");
        }
    }

    #[test]
    fn aor_is_canonical() {
        assert_eq!(
            u("sip:%61lice@AtLanTa.CoM;transport=tcp?x=y").aor(),
            "sip:alice@atlanta.com"
        );
        assert_eq!(
            u("sips:bob@Example.test:5061;user=phone").aor(),
            "sips:bob@example.test:5061"
        );
        assert_eq!(u("sip:example.test").aor(), "sip:example.test");
    }

    #[test]
    fn escaped_null_stays_unambiguous() {
        // RFC 4475 §3.1.1.4 escnull: %00 is a legal escape in a user part.
        let x = u("sip:null-%00-null@example.com");
        assert_eq!(x.aor(), "sip:null-\0-null@example.com");
        assert_ne!(u("sip:a%40b@x").aor(), u("sip:a%2540b@x").aor());
    }
}
