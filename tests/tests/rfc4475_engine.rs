//! RFC 4475 torture messages through the sans-IO engine: every message gets the answer the
//! expectations table (tests/src/rfc4475.rs) gives, both when we serve the message's domain
//! and when we do not, and the engine keeps serving afterwards. The same table is checked
//! over real UDP against the binary in `rfc4475_udp.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use turnstile_core::auth::UserDb;
use turnstile_core::engine::{Engine, EngineConfig, Shared};
use turnstile_core::group::{AuthMode, GroupKind, GroupTable, IpGroup, Unclassified};
use turnstile_core::registrar::RegistrarConfig;
use turnstile_core::Millis;
use turnstile_e2e::rfc4475::{load, torture_dir, CASES};

fn engine(domain: &str) -> Engine {
    let cfg = EngineConfig {
        domain: domain.into(),
        aliases: vec!["127.0.0.1".into()],
        registrar: RegistrarConfig::default(),
        auth: None,
        groups: GroupTable::new(vec![IpGroup {
            name: "phones".into(),
            kind: GroupKind::User,
            sources: vec!["127.0.0.0/8".parse().unwrap()],
            auth: AuthMode::None,
            serving: None,
            weight: 1,
        }]),
        unclassified: Unclassified::Reject,
        server_name: "turnstile-test".into(),
    };
    Engine::new(Arc::new(Shared::new(cfg, UserDb::new(), [1; 32])), 7)
}

/// The final status code the engine sent back to the phone, if any. Anything sent elsewhere
/// (a forwarded request) makes the test fail loudly: nobody is registered.
fn answer(e: &mut Engine, data: &[u8]) -> Option<u16> {
    let phone: SocketAddr = "127.0.0.10:40000".parse().unwrap();
    e.handle_datagram(
        Millis(1_700_000_000_000),
        phone,
        "127.0.0.1:5060".parse().unwrap(),
        data,
    );
    let mut last = None;
    while let Some(t) = e.poll_transmit() {
        let text = String::from_utf8_lossy(&t.payload);
        assert!(
            text.starts_with("SIP/2.0 "),
            "engine sent a request somewhere: {text}"
        );
        let code: u16 = text[8..11].parse().unwrap();
        if code >= 200 {
            last = Some(code);
        }
    }
    last
}

fn run(served: impl Fn(&turnstile_e2e::rfc4475::TortureCase) -> String) {
    if !torture_dir().is_dir() {
        panic!(
            "RFC 4475 messages not found at {} (set SUT_TORTURE_DIR)",
            torture_dir().display()
        );
    }
    let mut failures = Vec::new();
    for case in CASES {
        let domain = served(case);
        let mut e = engine(&domain);
        let got = answer(&mut e, &load(case.file));
        let want = case.expected_for(&domain);
        if !want.accepts(got) {
            failures.push(format!(
                "{} (§{}): got {:?}, want {:?}",
                case.file, case.section, got, want
            ));
        }
        // Still serving: a plain OPTIONS to the server gets 200.
        let ping = format!(
            "OPTIONS sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:40000;branch=z9hG4bK-alive-{f}\r\n\
From: <sip:p@{domain}>;tag=1\r\nTo: <sip:{domain}>\r\nCall-ID: alive-{f}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            f = case.file
        );
        assert_eq!(
            answer(&mut e, ping.as_bytes()),
            Some(200),
            "not serving after {}",
            case.file
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} torture cases wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn torture_messages_in_our_domain() {
    run(|c| c.domain.unwrap_or("example.com").to_string());
}

#[test]
fn torture_messages_for_a_foreign_domain() {
    run(|_| "turnstile.test".to_string());
}
