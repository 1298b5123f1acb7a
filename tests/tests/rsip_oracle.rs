//! Differential test: on every message both can read, our framing + view agrees with rsip
//! (through `turnstile_core::rsip_adapter`) on method, Request-URI, Call-ID and CSeq.

use rsip::prelude::*;
use turnstile_core::msg::{parse, StartLine};
use turnstile_core::rsip_adapter::to_rsip;
use turnstile_e2e::rfc4475::{load, CASES};

#[test]
fn our_view_agrees_with_rsip_on_rfc4475_messages() {
    let mut compared = 0;
    for case in CASES {
        let data = load(case.file);
        let mut s = Vec::new();
        let Ok(m) = parse(&data, &mut s) else {
            continue;
        };
        let (Some(hot), None) = (m.hot, m.defect) else {
            continue;
        };
        let StartLine::Request {
            method_raw, uri, ..
        } = m.start
        else {
            continue;
        };
        let Ok(rsip::SipMessage::Request(r)) = to_rsip(&m) else {
            continue;
        };
        assert_eq!(
            r.method().to_string().as_bytes(),
            method_raw,
            "{}",
            case.file
        );
        assert_eq!(
            r.uri().to_string().to_ascii_lowercase(),
            String::from_utf8_lossy(uri).to_ascii_lowercase(),
            "{}",
            case.file
        );
        assert_eq!(
            r.call_id_header().unwrap().value().as_bytes(),
            hot.call_id,
            "{}",
            case.file
        );
        assert_eq!(
            r.cseq_header().unwrap().typed().unwrap().seq,
            hot.cseq.seq,
            "{}",
            case.file
        );
        compared += 1;
    }
    assert!(compared >= 10, "only {compared} messages were comparable");
}
