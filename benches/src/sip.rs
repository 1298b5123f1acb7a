//! Just enough SIP for a REGISTER load generator and a null responder
//! (RFC 3261 §7 message shape, §8.1.1 mandatory headers, §10.2 REGISTER, §20 compact forms).
//!
//! Deliberately not a general parser: the generator must parse ~100k responses per second
//! per core without allocating, so it scans header lines once and borrows slices.

/// Header fields of a response the generator needs.
#[derive(Debug, Default)]
pub struct ResponseView<'a> {
    pub code: u16,
    pub call_id: &'a [u8],
    pub cseq: u32,
    pub cseq_method: &'a [u8],
    /// Up to four `WWW-Authenticate` / `Proxy-Authenticate` values, in order.
    pub challenges: [&'a [u8]; 4],
    pub n_challenges: usize,
}

impl<'a> ResponseView<'a> {
    pub fn challenges(&self) -> &[&'a [u8]] {
        &self.challenges[..self.n_challenges]
    }
}

/// Iterates header lines (name, value) of a message, stopping at the blank line.
/// Folded continuation lines (RFC 3261 §7.3.1) are rare on loopback; they are
/// returned as part of no header and ignored, which is the safe choice for matching.
pub struct Headers<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Headers<'a> {
    /// `buf` is the whole message; iteration starts after the start line.
    pub fn new(buf: &'a [u8]) -> (Option<&'a [u8]>, Headers<'a>) {
        match memchr::memchr(b'\n', buf) {
            Some(e) => (Some(trim_cr(&buf[..e])), Headers { buf, pos: e + 1 }),
            None => (
                None,
                Headers {
                    buf,
                    pos: buf.len(),
                },
            ),
        }
    }
}

fn trim_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pos >= self.buf.len() {
                return None;
            }
            let rest = &self.buf[self.pos..];
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let line = trim_cr(&rest[..end]);
            self.pos += end + 1;
            if line.is_empty() {
                self.pos = self.buf.len();
                return None;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                continue;
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            return Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()));
        }
    }
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u64;
    }
    u32::try_from(v).ok()
}

/// Parses a response; `None` for requests and anything we cannot match.
pub fn parse_response(buf: &[u8]) -> Option<ResponseView<'_>> {
    let (start, headers) = Headers::new(buf);
    let start = start?;
    let rest = start.strip_prefix(b"SIP/2.0 ")?;
    if rest.len() < 3 {
        return None;
    }
    let code = parse_u32(&rest[..3])? as u16;
    let mut v = ResponseView {
        code,
        ..Default::default()
    };
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"Call-ID") || name.eq_ignore_ascii_case(b"i") {
            v.call_id = value;
        } else if name.eq_ignore_ascii_case(b"CSeq") {
            let mut it = value
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|s| !s.is_empty());
            v.cseq = parse_u32(it.next()?)?;
            v.cseq_method = it.next().unwrap_or(b"");
        } else if (name.eq_ignore_ascii_case(b"WWW-Authenticate")
            || name.eq_ignore_ascii_case(b"Proxy-Authenticate"))
            && v.n_challenges < v.challenges.len()
        {
            v.challenges[v.n_challenges] = value;
            v.n_challenges += 1;
        }
    }
    if v.call_id.is_empty() {
        return None;
    }
    Some(v)
}

/// The user part used for user number `n` (`user000042`).
pub fn user_name(n: u32) -> String {
    format!("user{n:06}")
}

/// Fields of one REGISTER request.
pub struct RegisterParams<'a> {
    pub domain: &'a str,
    pub user: &'a str,
    /// Sent-by of the Via (the socket's address).
    pub local: std::net::SocketAddr,
    /// Host and port of the Contact.
    pub contact: std::net::SocketAddr,
    pub branch: &'a str,
    pub from_tag: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub expires: u32,
}

/// Writes a REGISTER without `Content-Length`/end of headers; the caller may append
/// `Authorization` and then calls [`finish_request`].
pub fn write_register_head(out: &mut Vec<u8>, p: &RegisterParams<'_>) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        "REGISTER sip:{d} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {l};rport;branch={b}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{u}@{d}>;tag={t}\r\n\
         To: <sip:{u}@{d}>\r\n\
         Call-ID: {c}\r\n\
         CSeq: {s} REGISTER\r\n\
         Contact: <sip:{u}@{ct}>\r\n\
         Expires: {e}\r\n\
         User-Agent: turnstile-storm\r\n",
        d = p.domain,
        l = p.local,
        ct = p.contact,
        b = p.branch,
        u = p.user,
        t = p.from_tag,
        c = p.call_id,
        s = p.cseq,
        e = p.expires,
    );
}

pub fn finish_request(out: &mut Vec<u8>) {
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

/// Builds `200 OK` for a REGISTER (or any request) copying Via/From/To/Call-ID/CSeq and
/// Contact (RFC 3261 §8.2.6.2), adding a To tag when the request had none.
/// Returns `false` (nothing written) if the datagram is not a request with those headers.
pub fn null_200(req: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let (start, headers) = Headers::new(req);
    let Some(start) = start else { return false };
    if start.starts_with(b"SIP/2.0") || !start.ends_with(b"SIP/2.0") {
        return false;
    }
    out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
    let mut have = 0u8;
    let mut expires: Option<&[u8]> = None;
    let mut contact: Option<&[u8]> = None;
    for (name, value) in headers {
        let tag = if name.eq_ignore_ascii_case(b"Via") || name.eq_ignore_ascii_case(b"v") {
            have |= 1;
            &b"Via"[..]
        } else if name.eq_ignore_ascii_case(b"From") || name.eq_ignore_ascii_case(b"f") {
            have |= 2;
            &b"From"[..]
        } else if name.eq_ignore_ascii_case(b"To") || name.eq_ignore_ascii_case(b"t") {
            have |= 4;
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(value);
            if memchr::memmem::find(value, b";tag=").is_none() {
                out.extend_from_slice(b";tag=nr1");
            }
            out.extend_from_slice(b"\r\n");
            continue;
        } else if name.eq_ignore_ascii_case(b"Call-ID") || name.eq_ignore_ascii_case(b"i") {
            have |= 8;
            &b"Call-ID"[..]
        } else if name.eq_ignore_ascii_case(b"CSeq") {
            have |= 16;
            &b"CSeq"[..]
        } else if name.eq_ignore_ascii_case(b"Expires") {
            expires = Some(value);
            continue;
        } else if name.eq_ignore_ascii_case(b"Contact") || name.eq_ignore_ascii_case(b"m") {
            contact = Some(value);
            continue;
        } else {
            continue;
        };
        out.extend_from_slice(tag);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if have != 31 {
        out.clear();
        return false;
    }
    if let Some(c) = contact {
        out.extend_from_slice(b"Contact: ");
        out.extend_from_slice(c);
        if let Some(e) = expires {
            out.extend_from_slice(b";expires=");
            out.extend_from_slice(e);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_register() -> Vec<u8> {
        let mut out = Vec::new();
        write_register_head(
            &mut out,
            &RegisterParams {
                domain: "bench.test",
                user: "user000007",
                local: "127.0.0.1:40000".parse().unwrap(),
                contact: "127.0.0.1:40000".parse().unwrap(),
                branch: "z9hG4bK1.7.1",
                from_tag: "ft7",
                call_id: "7-1-abc@storm",
                cseq: 3,
                expires: 600,
            },
        );
        finish_request(&mut out);
        out
    }

    #[test]
    fn register_is_well_formed() {
        let r = sample_register();
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("REGISTER sip:bench.test SIP/2.0\r\n"));
        assert!(s.contains("\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK1.7.1\r\n"));
        assert!(s.contains("\r\nCSeq: 3 REGISTER\r\n"));
        assert!(s.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn null_200_round_trips_through_parse_response() {
        let mut resp = Vec::new();
        assert!(null_200(&sample_register(), &mut resp));
        let v = parse_response(&resp).unwrap();
        assert_eq!(v.code, 200);
        assert_eq!(v.call_id, b"7-1-abc@storm");
        assert_eq!(v.cseq, 3);
        assert_eq!(v.cseq_method, b"REGISTER");
        let s = std::str::from_utf8(&resp).unwrap();
        assert!(s.contains("To: <sip:user000007@bench.test>;tag=nr1\r\n"));
        assert!(s.contains("Contact: <sip:user000007@127.0.0.1:40000>;expires=600\r\n"));
    }

    #[test]
    fn null_200_refuses_responses_and_garbage() {
        let mut out = Vec::new();
        assert!(!null_200(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", &mut out));
        assert!(!null_200(b"garbage", &mut out));
        assert!(!null_200(
            b"REGISTER sip:x SIP/2.0\r\nVia: x\r\n\r\n",
            &mut out
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn parses_challenge_response_with_compact_call_id() {
        let m =
            b"SIP/2.0 401 Unauthorized\r\nv: SIP/2.0/UDP x\r\ni: abc\r\nCSeq:  12   REGISTER\r\n\
WWW-Authenticate: Digest realm=\"a\", nonce=\"1\", algorithm=SHA-256\r\n\
WWW-Authenticate: Digest realm=\"a\", nonce=\"2\"\r\nContent-Length: 0\r\n\r\n";
        let v = parse_response(m).unwrap();
        assert_eq!(v.code, 401);
        assert_eq!(v.call_id, b"abc");
        assert_eq!(v.cseq, 12);
        assert_eq!(v.challenges().len(), 2);
        assert!(v.challenges()[1].ends_with(b"nonce=\"2\""));
    }

    #[test]
    fn rejects_requests_and_truncated() {
        assert!(parse_response(&sample_register()).is_none());
        assert!(parse_response(b"SIP/2.0 20").is_none());
        assert!(
            parse_response(b"SIP/2.0 200 OK\r\nCSeq: x REGISTER\r\nCall-ID: a\r\n\r\n").is_none()
        );
        assert!(parse_response(b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\n\r\n").is_none());
    }
}
