//! Parsers for the header values the engine reads (RFC 3261 §20, grammar of §25.1):
//! comma-separated lists, generic parameters, Via, name-addr / addr-spec (From, To, Contact),
//! CSeq, delta-seconds and option tags. All zero-copy over the (unfolded) message bytes.

use super::uri::{split_hostport, Uri};

/// Why a header value was rejected; becomes the reason phrase of a 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldError {
    Via,
    NameAddr,
    UnbalancedQuote,
    DisplayName,
    Uri,
    CSeq,
    Number,
    Params,
}

impl FieldError {
    pub fn reason(self) -> &'static str {
        match self {
            FieldError::Via => "Malformed Via",
            FieldError::NameAddr => "Malformed name-addr",
            FieldError::UnbalancedQuote => "Unterminated quoted string",
            FieldError::DisplayName => "Invalid display name",
            FieldError::Uri => "Malformed URI",
            FieldError::CSeq => "Malformed CSeq",
            FieldError::Number => "Malformed number",
            FieldError::Params => "Malformed parameters",
        }
    }
}

#[inline]
pub fn is_lws(c: u8) -> bool {
    c == b' ' || c == b'\t' || c == b'\r' || c == b'\n'
}

/// The LWS bytes, for [`find_any`].
const LWS: [u8; 4] = [b' ', b'\t', b'\r', b'\n'];

#[inline]
pub fn trim(s: &[u8]) -> &[u8] {
    // Most values have nothing to trim: two checks, no loop.
    match s {
        [f, .., l] if !is_lws(*f) && !is_lws(*l) => s,
        _ => trim_slow(s),
    }
}

fn trim_slow(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_lws(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_lws(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` equal to `c`. Bytes above a true match may be flagged
/// too (borrow), but the lowest flagged byte is always a true match, which is all
/// [`find_any`] uses.
#[inline(always)]
fn eq_mask(w: u64, c: u8) -> u64 {
    let x = w ^ (LO * c as u64);
    x.wrapping_sub(LO) & !x & HI
}

/// Index of the first byte of `s[from..]` that is one of `set`, or `s.len()`. Eight bytes
/// per step (SWAR): header values are short, so this beats both a byte loop and a call into
/// `memchr` (whose vector paths only pay off beyond a few dozen bytes).
#[inline]
pub fn find_any<const N: usize>(s: &[u8], from: usize, set: [u8; N]) -> usize {
    let mut i = from;
    while let Some(chunk) = s.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        let mut m = 0;
        for c in set {
            m |= eq_mask(w, c);
        }
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() {
        if set.contains(&s[i]) {
            return i;
        }
        i += 1;
    }
    s.len()
}

/// Bytes searched word by word before handing a long haystack to `memchr`, whose vector
/// loop wins only once the call and set-up cost is amortised.
const SHORT: usize = 128;

/// First `c` in `s` (`memchr` semantics; SWAR on the short head, `memchr` beyond it).
#[inline]
pub fn find_byte(s: &[u8], c: u8) -> Option<usize> {
    let head = s.len().min(SHORT);
    let i = find_any(&s[..head], 0, [c]);
    if i < head {
        Some(i)
    } else if s.len() > SHORT {
        memchr::memchr(c, &s[SHORT..]).map(|j| j + SHORT)
    } else {
        None
    }
}

/// Last `c` in `s` (`memrchr` semantics), word by word for short haystacks.
#[inline]
pub fn rfind_byte(s: &[u8], c: u8) -> Option<usize> {
    if s.len() > SHORT {
        return memchr::memrchr(c, s);
    }
    let mut end = s.len();
    while end >= 8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[end - 8..end]);
        // Exact per-byte equality (no borrow between bytes), so the highest flag is real.
        let x = u64::from_le_bytes(w) ^ (LO * c as u64);
        const M: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        let m = !(((x & M).wrapping_add(M)) | x | M);
        if m != 0 {
            return Some(end - 8 + (63 - m.leading_zeros() as usize) / 8);
        }
        end -= 8;
    }
    s[..end].iter().rposition(|&b| b == c)
}

/// Whether `s` contains LWS (SP, HTAB, CR or LF).
#[inline]
pub fn has_lws(s: &[u8]) -> bool {
    find_any(s, 0, LWS) < s.len()
}

/// Byte-class lookup tables: one load per byte instead of a chain of compares.
const fn class_table(extra: &[u8], unreserved: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || (unreserved
                && matches!(
                    c,
                    b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
                ));
        i += 1;
    }
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
}

/// RFC 3261 §25.1 `token`.
pub static TOKEN: [bool; 256] = class_table(b"-.!%*_+`'~", false);

/// RFC 3261 §25.1 `token` characters.
#[inline]
pub fn is_token_char(c: u8) -> bool {
    TOKEN[c as usize]
}

#[inline]
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| TOKEN[c as usize])
}

/// `unreserved` plus the given extras (for the URI component checks in `uri.rs`).
pub const fn unreserved_plus(extra: &[u8]) -> [bool; 256] {
    class_table(extra, true)
}

/// Index just past the quoted-string starting at `s[0] == '"'`, honouring backslash escapes.
fn skip_quoted(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Splits a list header value on commas that are outside quoted strings and `<…>`
/// (RFC 3261 §7.3.1). Yields trimmed, non-empty elements. An unbalanced quote yields the
/// remainder as one element; the element parser then reports it.
pub struct ListIter<'a> {
    rest: &'a [u8],
}

pub fn split_list(value: &[u8]) -> ListIter<'_> {
    ListIter { rest: value }
}

impl<'a> Iterator for ListIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let s = self.rest;
            if find_any(s, 0, [b',', b'"']) == s.len() {
                // No comma and no quote: the rest is one element (the usual single value).
                self.rest = &[];
                let item = trim(s);
                return (!item.is_empty()).then_some(item);
            }
            let mut i = 0;
            let mut angle = false;
            let end = loop {
                i = find_any(s, i, [b'"', b'<', b'>', b',']);
                if i >= s.len() {
                    break s.len();
                }
                match s[i] {
                    b'"' => match skip_quoted(&s[i..]) {
                        Some(n) => i += n,
                        None => break s.len(),
                    },
                    b'<' => {
                        angle = true;
                        i += 1
                    }
                    b'>' => {
                        angle = false;
                        i += 1
                    }
                    b',' if !angle => break i,
                    _ => i += 1,
                }
            };
            let item = trim(&s[..end]);
            self.rest = if end < s.len() { &s[end + 1..] } else { &[] };
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

/// Iterates `;name[=value]` generic parameters (RFC 3261 §25.1 `generic-param`), tolerating
/// LWS around `;` and `=`. Values keep their quotes; see [`unquote`].
#[derive(Clone)]
pub struct ParamIter<'a> {
    rest: &'a [u8],
    pub error: bool,
}

pub fn params(s: &[u8]) -> ParamIter<'_> {
    ParamIter {
        rest: s,
        error: false,
    }
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);
    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest;
        let mut i = 0;
        while i < s.len() && is_lws(s[i]) {
            i += 1;
        }
        if i == s.len() {
            self.rest = &[];
            return None;
        }
        if s[i] != b';' {
            self.error = true;
            self.rest = &[];
            return None;
        }
        let start = i + 1;
        // The parameter ends at the next ';' outside a quoted string.
        let mut j = start;
        let mut eq = None;
        loop {
            j = if eq.is_none() {
                find_any(s, j, [b';', b'=', b'"'])
            } else {
                find_any(s, j, [b';', b'"'])
            };
            if j >= s.len() {
                break;
            }
            match s[j] {
                b';' => break,
                b'=' if eq.is_none() => {
                    eq = Some(j);
                    j += 1;
                }
                b'"' => match skip_quoted(&s[j..]) {
                    Some(n) => j += n,
                    None => {
                        self.error = true;
                        self.rest = &[];
                        return None;
                    }
                },
                _ => j += 1,
            }
        }
        self.rest = &s[j..];
        let (name, value) = match eq {
            Some(e) => (trim(&s[start..e]), Some(trim(&s[e + 1..j]))),
            None => (trim(&s[start..j]), None),
        };
        // An empty parameter (`;;`) is yielded with an empty name: validators reject it
        // (RFC 4475 §3.1.2.1 badinv01), lookups simply never match it.
        Some((name, value))
    }
}

/// Finds parameter `name` (case-insensitive) in a `;a=b;c` string.
pub fn find_param<'a>(s: &'a [u8], name: &str) -> Option<Option<&'a [u8]>> {
    params(s)
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

/// Strips surrounding quotes (escapes are left in; callers that need them resolved compare
/// the raw bytes, which is what RFC 7616 and §20 comparisons do in practice).
pub fn unquote(v: &[u8]) -> &[u8] {
    if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// Parses decimal digits into u32. `Ok(u32::MAX)` saturates for very long digit strings
/// only when `saturate` is set (delta-seconds, RFC 3261 §20.19: larger values are legal and
/// mean "a very long time"); CSeq and friends use strict overflow errors.
pub fn parse_u32(s: &[u8], saturate: bool) -> Result<u32, FieldError> {
    let s = trim(s);
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(FieldError::Number);
    }
    let mut v: u64 = 0;
    for &d in s {
        v = v * 10 + (d - b'0') as u64;
        if v > u32::MAX as u64 {
            return if saturate {
                Ok(u32::MAX)
            } else {
                Err(FieldError::Number)
            };
        }
    }
    Ok(v as u32)
}

/// The top (or any) Via value (RFC 3261 §20.42, §18.2.1, RFC 3581).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// The whole via-parm as received.
    pub raw: &'a [u8],
    pub transport: &'a [u8],
    /// sent-by host (IPv6 keeps brackets).
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// The `;…` parameter string.
    pub params: &'a [u8],
    pub branch: Option<&'a [u8]>,
    /// `None`: no rport; `Some(None)`: rport without value (RFC 3581 request).
    pub rport: Option<Option<u16>>,
    pub received: Option<&'a [u8]>,
}

impl<'a> Via<'a> {
    /// Parses one via-parm: `SIP / 2.0 / UDP sent-by *(;param)`; LWS is allowed around the
    /// slashes (RFC 4475 §3.1.1.1 wsinv exercises that).
    pub fn parse(raw: &'a [u8]) -> Result<Via<'a>, FieldError> {
        let s = trim(raw);
        let mut parts = [&b""[..]; 3];
        // The usual exact "SIP/2.0/" is what the general loop below would split off first.
        let (skip, mut rest) = if s.starts_with(b"SIP/2.0/") {
            parts[0] = &s[..3];
            parts[1] = &s[4..7];
            (2, &s[8..])
        } else {
            (0, s)
        };
        for (i, part) in parts.iter_mut().enumerate().skip(skip) {
            let r = trim(rest);
            let end = if i < 2 {
                find_byte(r, b'/').ok_or(FieldError::Via)?
            } else {
                Some(find_any(r, 0, LWS))
                    .filter(|&e| e < r.len())
                    .ok_or(FieldError::Via)?
            };
            *part = trim(&r[..end]);
            rest = if i < 2 { &r[end + 1..] } else { &r[end..] };
        }
        // Any protocol version is kept (a SIP/7.0 request still gets its 505 routed back by
        // this Via, RFC 4475 §3.1.2.16 badvers); the request line decides about versions.
        if !parts[0].eq_ignore_ascii_case(b"SIP") || !is_token(parts[1]) || !is_token(parts[2]) {
            return Err(FieldError::Via);
        }
        let rest = trim(rest);
        let hp_end = find_any(rest, 0, [b';', b' ', b'\t', b'\r', b'\n']);
        let (host, port) = split_hostport(&rest[..hp_end]).ok_or(FieldError::Via)?;
        if host.is_empty() {
            return Err(FieldError::Via);
        }
        // sent-by may be followed by LWS before ':' port in theory; we accept the common
        // form and let odd spacing through via the params check below.
        let params_s = trim(&rest[hp_end..]);
        let mut via = Via {
            raw: s,
            transport: parts[2],
            host,
            port,
            params: params_s,
            branch: None,
            rport: None,
            received: None,
        };
        let mut it = params(params_s);
        for (n, v) in it.by_ref() {
            if !is_token(n) {
                return Err(FieldError::Via);
            }
            if n.eq_ignore_ascii_case(b"branch") {
                via.branch = v.filter(|v| !v.is_empty());
            } else if n.eq_ignore_ascii_case(b"rport") {
                via.rport = Some(match v {
                    None => None,
                    Some(p) => Some(
                        u16::try_from(parse_u32(p, false).map_err(|_| FieldError::Via)?)
                            .map_err(|_| FieldError::Via)?,
                    ),
                });
            } else if n.eq_ignore_ascii_case(b"received") {
                via.received = v;
            }
        }
        if it.error {
            return Err(FieldError::Via);
        }
        Ok(via)
    }

    /// True for an RFC 3261 branch (magic cookie), i.e. usable as a transaction key.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch
            .is_some_and(|b| b.len() > 7 && b[..7].eq_ignore_ascii_case(b"z9hG4bK"))
    }
}

/// A From / To / Contact / Route value: `[display] <uri> *(;param)` or `addr-spec *(;param)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display: Option<&'a [u8]>,
    /// The URI text (inside the angle brackets when there were any).
    pub uri: &'a [u8],
    /// Whether the URI was in `<…>` (name-addr form).
    pub angle: bool,
    /// Header parameters (`;tag=…;expires=…`), after the URI.
    pub params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<NameAddr<'a>, FieldError> {
        let s = trim(raw);
        if s.is_empty() {
            return Err(FieldError::NameAddr);
        }
        // Quoted display name.
        if s[0] == b'"' {
            let n = skip_quoted(s).ok_or(FieldError::UnbalancedQuote)?;
            let display = &s[..n];
            let rest = trim(&s[n..]);
            return Self::angle(Some(display), rest);
        }
        match find_byte(s, b'<') {
            Some(lt) => {
                // Unquoted display name: tokens separated by LWS (RFC 3261 §25.1). Anything
                // else (',', '"', '/', '@'…) is invalid (RFC 4475 §3.1.2.16 baddn).
                let d = trim(&s[..lt]);
                if !d.iter().all(|&c| is_token_char(c) || is_lws(c)) {
                    return Err(FieldError::DisplayName);
                }
                // (The common case finds '>' and never scans for the quote.)
                if find_byte(&s[lt..], b'>').is_none() && find_byte(&s[lt..], b'"').is_some() {
                    return Err(FieldError::UnbalancedQuote);
                }
                Self::angle(if d.is_empty() { None } else { Some(d) }, &s[lt..])
            }
            None => {
                if find_byte(s, b'"').is_some() {
                    return Err(FieldError::UnbalancedQuote);
                }
                // addr-spec form: the first ';' ends the URI and starts header params
                // (RFC 3261 §20.10 — which is why such URIs cannot carry URI params).
                let end = find_any(s, 0, [b';', b' ', b'\t', b'\r', b'\n']);
                let uri = &s[..end];
                let params = trim(&s[end..]);
                // An addr-spec that contains '?' (URI headers) or ',' must be in <>
                // (RFC 3261 §20.10; RFC 4475 §3.1.2.10 regbadct).
                if uri.is_empty()
                    || find_byte(uri, b'?').is_some()
                    || find_byte(uri, b',').is_some()
                {
                    return Err(FieldError::NameAddr);
                }
                if !params.is_empty() && params[0] != b';' {
                    // e.g. "sip:a@b junk": RFC 4475 §3.1.2.12 badaspec-like.
                    return Err(FieldError::NameAddr);
                }
                Ok(NameAddr {
                    display: None,
                    uri,
                    angle: false,
                    params,
                })
            }
        }
    }

    fn angle(display: Option<&'a [u8]>, s: &'a [u8]) -> Result<NameAddr<'a>, FieldError> {
        if s.first() != Some(&b'<') {
            return Err(FieldError::NameAddr);
        }
        let gt = find_byte(s, b'>').ok_or(FieldError::NameAddr)?;
        let uri = &s[1..gt];
        // No LWS is allowed inside the brackets (RFC 4475 §3.1.2.12 badaspec: "< sip:… >").
        if uri.is_empty() || has_lws(uri) {
            return Err(FieldError::NameAddr);
        }
        let params = trim(&s[gt + 1..]);
        if !params.is_empty() && params[0] != b';' {
            return Err(FieldError::NameAddr);
        }
        Ok(NameAddr {
            display,
            uri,
            angle: true,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        find_param(self.params, name)
    }

    pub fn tag(&self) -> Option<&'a [u8]> {
        self.param("tag").flatten()
    }

    pub fn parsed_uri(&self) -> Result<Uri<'a>, FieldError> {
        Uri::parse(self.uri).map_err(|_| FieldError::Uri)
    }

    /// Validates the header parameters (`;p[=v]` with token names).
    pub fn params_ok(&self) -> bool {
        let mut it = params(self.params);
        let ok = it.by_ref().all(|(n, _)| is_token(n));
        ok && !it.error
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a [u8],
}

impl<'a> CSeq<'a> {
    /// `1*DIGIT LWS Method`; the number must be below 2**31 (RFC 3261 §8.1.1.5).
    pub fn parse(raw: &'a [u8]) -> Result<CSeq<'a>, FieldError> {
        let s = trim(raw);
        let sp = Some(find_any(s, 0, LWS))
            .filter(|&e| e < s.len())
            .ok_or(FieldError::CSeq)?;
        let seq = parse_u32(&s[..sp], false).map_err(|_| FieldError::CSeq)?;
        if seq >= 1 << 31 {
            return Err(FieldError::CSeq);
        }
        let method = trim(&s[sp..]);
        if !is_token(method) {
            return Err(FieldError::CSeq);
        }
        Ok(CSeq { seq, method })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        let v: Vec<_> =
            split_list(br#""Doe, John" <sip:j@x;a=b,c>;q=0.5 , <sip:k@y>,,sip:z@w"#).collect();
        assert_eq!(
            v,
            vec![
                &br#""Doe, John" <sip:j@x;a=b,c>;q=0.5"#[..],
                b"<sip:k@y>",
                b"sip:z@w"
            ]
        );
        assert_eq!(split_list(b"  ").count(), 0);
    }

    #[test]
    fn params_with_lws_and_quotes() {
        let p: Vec<_> = params(br#" ; a = 1 ;b; c="x;y" ;"#).collect();
        assert_eq!(
            p,
            vec![
                (&b"a"[..], Some(&b"1"[..])),
                (b"b", None),
                (b"c", Some(&br#""x;y""#[..])),
                (b"", None)
            ]
        );
        let mut bad = params(b"junk");
        assert!(bad.next().is_none() && bad.error);
        assert_eq!(unquote(br#""abc""#), b"abc");
    }

    #[test]
    fn via_with_odd_spacing_and_rport() {
        let v = Via::parse(
            b"SIP  /   2.0  / UDP  192.0.2.2:5062 ;branch=z9hG4bK-1;rport;received=10.0.0.1",
        )
        .unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.2");
        assert_eq!(v.port, Some(5062));
        assert_eq!(v.branch, Some(&b"z9hG4bK-1"[..]));
        assert!(v.has_rfc3261_branch());
        assert_eq!(v.rport, Some(None));
        assert_eq!(v.received, Some(&b"10.0.0.1"[..]));
        let v6 = Via::parse(b"SIP/2.0/TCP [2001:db8::9]:5070;rport=5071").unwrap();
        assert_eq!(v6.host, b"[2001:db8::9]");
        assert_eq!(v6.rport, Some(Some(5071)));
        assert!(
            Via::parse(b"SIP/7.0/UDP host;branch=z9hG4bKx").is_ok(),
            "version is the request line's business"
        );
        for bad in [
            &b"SIP/2.0 UDP host"[..],
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDP host:99999",
            b"SIP/2.0/UDP host;rport=x",
            b"SIP/2.0/UDP 192.0.2.15;;",
            b"SIP/2.0/UDP h;branch=z9hG4bK1;",
        ] {
            assert!(Via::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(br#""Alice \"A\"" <sip:alice@example.test;transport=udp>;tag=abc"#)
            .unwrap();
        assert!(n.angle);
        assert_eq!(n.uri, b"sip:alice@example.test;transport=udp");
        assert_eq!(n.tag(), Some(&b"abc"[..]));
        let n = NameAddr::parse(b"Bob Smith <sip:bob@x>").unwrap();
        assert_eq!(n.display, Some(&b"Bob Smith"[..]));
        let n = NameAddr::parse(b"sip:carol@x;tag=9;expires=60").unwrap();
        assert_eq!(n.uri, b"sip:carol@x");
        assert_eq!(n.param("EXPIRES"), Some(Some(&b"60"[..])));
        assert!(n.params_ok());
        assert!(!NameAddr::parse(br#""Joe" <sip:joe@example.org>;;;;"#)
            .unwrap()
            .params_ok());
        assert_eq!(
            NameAddr::parse(br#""Mr. J. User <sip:j.user@example.com>"#),
            Err(FieldError::UnbalancedQuote)
        );
        assert_eq!(
            NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@example.com>"),
            Err(FieldError::DisplayName)
        );
        assert!(NameAddr::parse(b"\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert!(NameAddr::parse(b"sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(NameAddr::parse(b"<sip:x@y").is_err());
    }

    #[test]
    fn find_any_matches_a_byte_loop() {
        let naive = |s: &[u8], from: usize, set: &[u8]| {
            (from..s.len())
                .find(|&i| set.contains(&s[i]))
                .unwrap_or(s.len())
        };
        let hay: &[u8] = b"branch=z9hG4bK0123456789abcdef;rport;received=\"a;b\"\x80\xff=;";
        for from in 0..=hay.len() {
            for end in from..=hay.len() {
                let s = &hay[..end];
                assert_eq!(
                    find_any(s, from, [b';', b'=', b'"']),
                    naive(s, from, b";=\""),
                    "{from}..{end}"
                );
                assert_eq!(find_any(s, from, [0x80]), naive(s, from, &[0x80]));
            }
        }
        // A match right after a byte that borrows (0x00 next to the target) stays exact.
        assert_eq!(find_any(b"\x00\x01;;;;;;;;", 0, [b';']), 2);
        assert_eq!(find_any(b"aaaaaaaaaaaaaaaa", 3, [b';']), 16);
        assert!(has_lws(b"abcdefghij\tk") && !has_lws(b"abcdefghijk"));
        // find_byte / rfind_byte agree with memchr / memrchr, short and long haystacks.
        let long: Vec<u8> = (0..300u32)
            .map(|i| b"ab:c\n;xy"[(i * 7 % 8) as usize])
            .collect();
        for end in 0..long.len() {
            for from in [0, 1, 5, 63, 64, 65, 127, 128, 129]
                .into_iter()
                .filter(|&f| f <= end)
            {
                let s = &long[from..end];
                for c in [b':', b'\n', b'z', b'a'] {
                    assert_eq!(find_byte(s, c), memchr::memchr(c, s), "{from}..{end}");
                    assert_eq!(rfind_byte(s, c), memchr::memrchr(c, s), "{from}..{end}");
                }
            }
        }
        assert_eq!(
            rfind_byte(b"\x00:\x00\x00\x00\x00\x00\x00\x00", b':'),
            Some(1)
        );
    }

    #[test]
    fn cseq_and_numbers() {
        assert_eq!(
            CSeq::parse(b" 42  REGISTER ").unwrap(),
            CSeq {
                seq: 42,
                method: b"REGISTER"
            }
        );
        assert!(CSeq::parse(b"9292394834772304023312 OPTIONS").is_err());
        assert!(CSeq::parse(b"2147483648 OPTIONS").is_err());
        assert!(CSeq::parse(b"-1 INVITE").is_err());
        assert!(CSeq::parse(b"1").is_err());
        assert_eq!(parse_u32(b"4294967296", true), Ok(u32::MAX));
        assert_eq!(parse_u32(b"4294967296", false), Err(FieldError::Number));
        assert_eq!(parse_u32(b" 3600 ", false), Ok(3600));
        assert!(parse_u32(b"-5", true).is_err());
    }
}
