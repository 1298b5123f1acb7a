//! Client side of HTTP Digest for SIP (RFC 3261 §22.4, RFC 7616 §3.4, RFC 8760).
//!
//! A small, allocation-light parser for one `WWW-Authenticate` challenge and the
//! response computation (MD5 / SHA-256, `qop=auth` with nc/cnonce, or the RFC 2069
//! form when the server offers no qop). The generator answers tens of thousands of
//! challenges per second, so the parser borrows from the datagram and never builds
//! a map.

use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;

/// Digest algorithm (RFC 7616 §3.3 / RFC 8760). The `-sess` variants are not used by SIP phones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl Algorithm {
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses the `algorithm=` token; absent means MD5 (RFC 7616 §3.3).
    pub fn from_token(t: &[u8]) -> Option<Algorithm> {
        if t.eq_ignore_ascii_case(b"MD5") {
            Some(Algorithm::Md5)
        } else if t.eq_ignore_ascii_case(b"SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of H(data), appended to `out`.
    pub fn hex_into(self, data: &[u8], out: &mut String) {
        match self {
            Algorithm::Md5 => push_hex(out, &Md5::digest(data)),
            Algorithm::Sha256 => push_hex(out, &Sha256::digest(data)),
        }
    }

    pub fn hex(self, data: &[u8]) -> String {
        let mut s = String::with_capacity(64);
        self.hex_into(data, &mut s);
        s
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

/// One parsed `Digest` challenge, borrowing from the header value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub realm: &'a [u8],
    pub nonce: &'a [u8],
    pub opaque: Option<&'a [u8]>,
    /// `None` when the parameter is absent (MD5 by default); `Some(Err)` for an unknown token.
    pub algorithm: Option<Result<Algorithm, ()>>,
    /// The server offered `qop` containing the `auth` token.
    pub qop_auth: bool,
    pub stale: bool,
}

impl Challenge<'_> {
    /// The algorithm to use, or `None` if the server asks for one we do not implement.
    pub fn algorithm(&self) -> Option<Algorithm> {
        match self.algorithm {
            None => Some(Algorithm::Md5),
            Some(Ok(a)) => Some(a),
            Some(Err(())) => None,
        }
    }
}

/// Why a challenge could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    NotDigest,
    Malformed,
    MissingNonce,
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r' || b == b'\n'
}

/// Parses the value of one `WWW-Authenticate` / `Proxy-Authenticate` header
/// (`Digest realm="x", nonce="y", qop="auth,auth-int", algorithm=MD5, opaque="z", stale=TRUE`).
/// Unknown parameters are skipped; quoted strings may contain commas and `\"` escapes
/// (the escape is kept verbatim: realms and nonces with escapes are not produced by any
/// server we test against, and a verbatim copy is what RFC 7616 clients echo).
pub fn parse_challenge(value: &[u8]) -> Result<Challenge<'_>, ParseError> {
    let mut i = 0;
    while i < value.len() && is_ws(value[i]) {
        i += 1;
    }
    if value.len() < i + 6 || !value[i..i + 6].eq_ignore_ascii_case(b"Digest") {
        return Err(ParseError::NotDigest);
    }
    i += 6;
    if i < value.len() && !is_ws(value[i]) {
        return Err(ParseError::NotDigest);
    }
    let mut ch = Challenge::default();
    let mut have_nonce = false;
    loop {
        while i < value.len() && (is_ws(value[i]) || value[i] == b',') {
            i += 1;
        }
        if i >= value.len() {
            break;
        }
        let name_start = i;
        while i < value.len() && value[i] != b'=' && !is_ws(value[i]) && value[i] != b',' {
            i += 1;
        }
        let name = &value[name_start..i];
        while i < value.len() && is_ws(value[i]) {
            i += 1;
        }
        if i >= value.len() || value[i] != b'=' {
            return Err(ParseError::Malformed);
        }
        i += 1;
        while i < value.len() && is_ws(value[i]) {
            i += 1;
        }
        let val;
        if i < value.len() && value[i] == b'"' {
            i += 1;
            let s = i;
            loop {
                if i >= value.len() {
                    return Err(ParseError::Malformed);
                }
                match value[i] {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            val = &value[s..i.min(value.len())];
            i += 1;
        } else {
            let s = i;
            while i < value.len() && value[i] != b',' && !is_ws(value[i]) {
                i += 1;
            }
            val = &value[s..i];
        }
        if name.eq_ignore_ascii_case(b"realm") {
            ch.realm = val;
        } else if name.eq_ignore_ascii_case(b"nonce") {
            ch.nonce = val;
            have_nonce = true;
        } else if name.eq_ignore_ascii_case(b"opaque") {
            ch.opaque = Some(val);
        } else if name.eq_ignore_ascii_case(b"algorithm") {
            ch.algorithm = Some(Algorithm::from_token(val).ok_or(()));
        } else if name.eq_ignore_ascii_case(b"qop") {
            ch.qop_auth = val
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"auth"));
        } else if name.eq_ignore_ascii_case(b"stale") {
            ch.stale = val.eq_ignore_ascii_case(b"true");
        }
    }
    if !have_nonce {
        return Err(ParseError::MissingNonce);
    }
    Ok(ch)
}

/// What the client needs to answer a challenge.
pub struct ResponseInput<'a> {
    pub algorithm: Algorithm,
    pub username: &'a str,
    pub realm: &'a [u8],
    pub password: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub nonce: &'a [u8],
    /// `Some((nc, cnonce))` for qop=auth; `None` for the RFC 2069 form.
    pub qop_auth: Option<(u32, &'a str)>,
}

/// HA1 = H(username ":" realm ":" password) (RFC 7616 §3.4.2).
pub fn ha1(alg: Algorithm, username: &str, realm: &[u8], password: &str) -> String {
    let mut a1 = Vec::with_capacity(username.len() + realm.len() + password.len() + 2);
    a1.extend_from_slice(username.as_bytes());
    a1.push(b':');
    a1.extend_from_slice(realm);
    a1.push(b':');
    a1.extend_from_slice(password.as_bytes());
    alg.hex(&a1)
}

/// The `response=` value (RFC 7616 §3.4.1; RFC 2617 §3.2.2.1 without qop).
pub fn response(inp: &ResponseInput<'_>) -> String {
    let ha1 = ha1(inp.algorithm, inp.username, inp.realm, inp.password);
    response_with_ha1(inp, &ha1)
}

/// As [`response`], with a precomputed HA1 (the generator caches it per user).
pub fn response_with_ha1(inp: &ResponseInput<'_>, ha1: &str) -> String {
    let alg = inp.algorithm;
    let ha2 = alg.hex(format!("{}:{}", inp.method, inp.uri).as_bytes());
    let mut kd = Vec::with_capacity(256);
    kd.extend_from_slice(ha1.as_bytes());
    kd.push(b':');
    kd.extend_from_slice(inp.nonce);
    kd.push(b':');
    if let Some((nc, cnonce)) = inp.qop_auth {
        let _ = write!(VecWriter(&mut kd), "{nc:08x}:{cnonce}:auth:");
    }
    kd.extend_from_slice(ha2.as_bytes());
    alg.hex(&kd)
}

struct VecWriter<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends a complete `Authorization: Digest …\r\n` header line to `out`.
pub fn write_authorization(
    out: &mut Vec<u8>,
    inp: &ResponseInput<'_>,
    ha1: &str,
    opaque: Option<&[u8]>,
) {
    let resp = response_with_ha1(inp, ha1);
    out.extend_from_slice(b"Authorization: Digest username=\"");
    out.extend_from_slice(inp.username.as_bytes());
    out.extend_from_slice(b"\", realm=\"");
    out.extend_from_slice(inp.realm);
    out.extend_from_slice(b"\", nonce=\"");
    out.extend_from_slice(inp.nonce);
    out.extend_from_slice(b"\", uri=\"");
    out.extend_from_slice(inp.uri.as_bytes());
    out.extend_from_slice(b"\", response=\"");
    out.extend_from_slice(resp.as_bytes());
    out.extend_from_slice(b"\", algorithm=");
    out.extend_from_slice(inp.algorithm.token().as_bytes());
    if let Some((nc, cnonce)) = inp.qop_auth {
        let _ = write!(
            VecWriter(out),
            ", cnonce=\"{cnonce}\", qop=auth, nc={nc:08x}"
        );
    }
    if let Some(o) = opaque {
        out.extend_from_slice(b", opaque=\"");
        out.extend_from_slice(o);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7616 §3.9.1: the challenge for both algorithms.
    const NONCE: &[u8] = b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc7616_input(alg: Algorithm) -> ResponseInput<'static> {
        ResponseInput {
            algorithm: alg,
            username: "Mufasa",
            realm: b"http-auth@example.org",
            password: "Circle of Life",
            method: "GET",
            uri: "/dir/index.html",
            nonce: NONCE,
            qop_auth: Some((1, CNONCE)),
        }
    }

    #[test]
    fn rfc7616_md5_vector() {
        assert_eq!(
            response(&rfc7616_input(Algorithm::Md5)),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    #[test]
    fn rfc7616_sha256_vector() {
        assert_eq!(
            response(&rfc7616_input(Algorithm::Sha256)),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn rfc2617_without_qop() {
        // RFC 2069 form: H(HA1:nonce:HA2). Computed independently of response_with_ha1.
        let mut inp = rfc7616_input(Algorithm::Md5);
        inp.qop_auth = None;
        let ha1 = Algorithm::Md5.hex(b"Mufasa:http-auth@example.org:Circle of Life");
        let ha2 = Algorithm::Md5.hex(b"GET:/dir/index.html");
        let want = Algorithm::Md5
            .hex(format!("{ha1}:{}:{ha2}", std::str::from_utf8(NONCE).unwrap()).as_bytes());
        assert_eq!(response(&inp), want);
        assert_ne!(response(&inp), response(&rfc7616_input(Algorithm::Md5)));
    }

    #[test]
    fn parses_rfc7616_challenge() {
        let v = br#"Digest
    realm="http-auth@example.org",
    qop="auth, auth-int",
    algorithm=SHA-256,
    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        let c = parse_challenge(v).unwrap();
        assert_eq!(c.realm, b"http-auth@example.org");
        assert_eq!(c.nonce, NONCE);
        assert_eq!(c.algorithm(), Some(Algorithm::Sha256));
        assert!(c.qop_auth);
        assert!(!c.stale);
        assert_eq!(
            c.opaque,
            Some(&b"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"[..])
        );
    }

    #[test]
    fn parses_kamailio_style_challenge() {
        let v = b"Digest realm=\"bench.test\", nonce=\"Z1x2Y3abc\", qop=\"auth\"";
        let c = parse_challenge(v).unwrap();
        assert_eq!(c.realm, b"bench.test");
        assert_eq!(c.nonce, b"Z1x2Y3abc");
        assert_eq!(c.algorithm(), Some(Algorithm::Md5));
        assert!(c.qop_auth);
        assert_eq!(c.opaque, None);
    }

    #[test]
    fn qop_without_auth_and_stale_and_unknown_alg() {
        let v = b"digest realm=\"r,with,commas\",nonce=n1,qop=\"auth-int\",stale=TRUE,algorithm=SHA-512-256,foo=bar";
        let c = parse_challenge(v).unwrap();
        assert_eq!(c.realm, b"r,with,commas");
        assert_eq!(c.nonce, b"n1");
        assert!(!c.qop_auth);
        assert!(c.stale);
        assert_eq!(c.algorithm(), None);
    }

    #[test]
    fn rejects_bad_challenges() {
        assert_eq!(
            parse_challenge(b"Basic realm=\"x\""),
            Err(ParseError::NotDigest)
        );
        assert_eq!(
            parse_challenge(b"Digestrealm=\"x\""),
            Err(ParseError::NotDigest)
        );
        assert_eq!(
            parse_challenge(b"Digest realm=\"x\""),
            Err(ParseError::MissingNonce)
        );
        assert_eq!(
            parse_challenge(b"Digest realm=\"x, nonce=\"y"),
            Err(ParseError::Malformed)
        );
        assert_eq!(parse_challenge(b"Digest realm"), Err(ParseError::Malformed));
        // Trailing backslash inside an unterminated quoted string must not panic.
        assert!(parse_challenge(b"Digest nonce=\"abc\\").is_err());
    }

    #[test]
    fn authorization_header_shape() {
        let inp = ResponseInput {
            algorithm: Algorithm::Md5,
            username: "user000001",
            realm: b"bench.test",
            password: "pw",
            method: "REGISTER",
            uri: "sip:bench.test",
            nonce: b"abc",
            qop_auth: Some((2, "c0ffee")),
        };
        let ha1 = ha1(Algorithm::Md5, "user000001", b"bench.test", "pw");
        let mut out = Vec::new();
        write_authorization(&mut out, &inp, &ha1, Some(b"op"));
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("Authorization: Digest username=\"user000001\", realm=\"bench.test\", nonce=\"abc\", uri=\"sip:bench.test\", response=\""));
        assert!(s.ends_with(
            "algorithm=MD5, cnonce=\"c0ffee\", qop=auth, nc=00000002, opaque=\"op\"\r\n"
        ));
        assert!(s.contains(&response(&inp)));
    }
}
