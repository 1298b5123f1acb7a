//! The one place rsip 0.4 is used: converting a framed [`Message`] into `rsip::SipMessage`
//! for tooling and as a differential oracle in tests.
//!
//! Measured (benches/benches/msg.rs, same machine, same load): rsip parses a typical
//! REGISTER in ~3.0 µs against ~1.3 µs for our framing + hot-field view, and it cannot parse
//! compact header forms or folded lines and ignores Content-Length framing (RFC 3261 §7.3.1,
//! §7.3.3, §18.3). So it is kept off the data path: framing and the view are ours, and rsip
//! checks them where it can (tests/tests/rsip_oracle.rs).

use crate::msg::{HeaderName, Message, StartLine};

/// Why a message could not be handed to rsip.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("rsip rejected the message: {0}")]
    Rsip(String),
}

/// Re-serialises the framed message in canonical form (long header names, one header per line,
/// our Content-Length) and parses it with rsip. Compact forms and folding are already resolved
/// by our framing, which is what lets rsip read messages it could not read from the wire.
pub fn to_rsip(m: &Message<'_>) -> Result<rsip::SipMessage, AdapterError> {
    let mut out = Vec::with_capacity(512 + m.body.len());
    match m.start {
        StartLine::Request {
            method_raw, uri, ..
        } => {
            out.extend_from_slice(method_raw);
            out.push(b' ');
            out.extend_from_slice(uri);
            out.extend_from_slice(b" SIP/2.0\r\n");
        }
        StartLine::Response { code, reason } => {
            out.extend_from_slice(format!("SIP/2.0 {code} ").as_bytes());
            out.extend_from_slice(reason);
            out.extend_from_slice(b"\r\n");
        }
    }
    for h in m.headers() {
        if h.name == HeaderName::ContentLength {
            continue;
        }
        let name = if h.name == HeaderName::Other {
            h.raw_name
        } else {
            h.name.canonical().as_bytes()
        };
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", m.body.len()).as_bytes());
    out.extend_from_slice(m.body);
    rsip::SipMessage::try_from(out.as_slice()).map_err(|e| AdapterError::Rsip(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsip::prelude::*;

    #[test]
    fn compact_and_folded_message_reaches_rsip_through_our_framing() {
        let wire = b"REGISTER sip:example.test SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.1:5060\r\n ;branch=z9hG4bKx\r\n\
f: <sip:a@example.test>;tag=1\r\nt: <sip:a@example.test>\r\ni: cid-1\r\nCSeq: 7 REGISTER\r\nl: 0\r\n\r\n";
        // rsip alone does not know the compact form `i:` (RFC 3261 §7.3.3): no Call-ID.
        let alone = rsip::SipMessage::try_from(&wire[..]);
        let alone_call_id = alone.ok().and_then(|m| match m {
            rsip::SipMessage::Request(r) => r.call_id_header().ok().map(|c| c.value().to_string()),
            _ => None,
        });
        assert_eq!(alone_call_id, None, "rsip learned compact forms");
        let mut s = Vec::new();
        let m = crate::msg::parse(wire, &mut s).unwrap();
        let r = to_rsip(&m).unwrap();
        let rsip::SipMessage::Request(req) = r else {
            panic!("request expected")
        };
        assert_eq!(req.call_id_header().unwrap().value(), "cid-1");
        assert_eq!(req.cseq_header().unwrap().typed().unwrap().seq, 7);
    }
}
