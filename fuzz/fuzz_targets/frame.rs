//! Fuzz target `frame`: the message layer (RFC 3261 §7 framing, §18.3 UDP rules, header and
//! URI parsers, response building) on arbitrary datagrams.
//!
//! Beyond "never panics", it checks invariants a caller relies on:
//! - a defect always maps to 400/505/513, and responses never carry one;
//! - the body is a slice of at most the datagram's length;
//! - for a request with no defect, the 400 we would build parses back as a response with the
//!   same status, Call-ID and CSeq (no header injection through copied values).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use turnstile_core::msg::build::{response_destination, simple_response};
use turnstile_core::msg::fields::{params, split_list, CSeq, NameAddr, Via};
use turnstile_core::msg::uri::Uri;
use turnstile_core::msg::{parse, HeaderName};

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    let Ok(m) = parse(data, &mut scratch) else {
        return;
    };
    assert!(m.body.len() <= data.len());
    if let Some(d) = m.defect {
        assert!(m.is_request(), "responses are errors, not defective: {d:?}");
        assert!(matches!(d.status(), 400 | 505 | 513), "{d:?}");
        assert!(!d.reason().is_empty());
    }

    // Every accessor the engine may call, on every header.
    let _ = m.method();
    let _ = m.status();
    let _ = m.expires();
    if let Some(ruri) = m.request_uri() {
        if let Ok(u) = Uri::parse(ruri) {
            let _ = u.aor();
            let _ = u.key();
            let _ = u.host_bare();
            let _ = u.equals(&u); // reflexivity is the `uri` target's oracle
        }
    }
    for h in m.headers() {
        let _ = HeaderName::from_bytes(h.raw_name);
        for item in split_list(h.value) {
            let _ = params(item).count();
        }
    }
    for v in m.list(HeaderName::Via) {
        if let Ok(via) = Via::parse(v) {
            let _ = via.has_rfc3261_branch();
            let src: SocketAddr = "192.0.2.7:5062".parse().unwrap();
            let _ = response_destination(&via, src);
        }
    }
    for name in [HeaderName::Contact, HeaderName::From, HeaderName::To] {
        for v in m.list(name) {
            if let Ok(na) = NameAddr::parse(v) {
                let _ = na.tag();
                let _ = na.params_ok();
                if let Ok(u) = na.parsed_uri() {
                    let _ = u.key();
                }
            }
        }
    }
    if let Some(c) = m.header(HeaderName::CSeq) {
        let _ = CSeq::parse(c);
    }

    // A response we would send must itself be a well-formed SIP response.
    if m.is_request() && m.defect.is_none() && m.hot.is_some() {
        let src: SocketAddr = "192.0.2.7:5062".parse().unwrap();
        let out = simple_response(&m, src, 400, "Bad Request", "turnstile")
            .expect("a request with valid hot fields has a top Via");
        let mut s2 = Vec::new();
        let back = match parse(&out, &mut s2) {
            Ok(b) => b,
            Err(e) => panic!(
                "built response does not parse ({e:?}):\n{}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(back.status(), Some(400));
        assert_eq!(
            back.header(HeaderName::CallId),
            m.header(HeaderName::CallId)
        );
        assert_eq!(back.header(HeaderName::CSeq), m.header(HeaderName::CSeq));
    }
});
