//! A fixed workload for instruction-count profiling (`valgrind --tool=callgrind`), which is
//! repeatable on a loaded machine where wall-clock benchmarks are not:
//! `cargo build --release -p turnstile-benches --example hotloop && valgrind --tool=callgrind target/release/examples/hotloop parse 100000`

use std::hint::black_box;
use turnstile_core::msg;

const REGISTER: &[u8] = b"REGISTER sip:example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:user000123@example.test>\r\n\
From: <sip:user000123@example.test>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.test\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:user000123@192.0.2.10:5062;transport=udp>;expires=3600\r\n\
User-Agent: storm/1.0\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("parse");
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let mut scratch = Vec::new();
    match what {
        "parse" => {
            for _ in 0..n {
                let m = msg::parse(black_box(REGISTER), &mut scratch).unwrap();
                black_box(m.hot.unwrap().cseq.seq);
            }
        }
        "engine" => {
            use std::sync::Arc;
            use turnstile_core::engine::{Engine, EngineConfig, Shared};
            use turnstile_core::group::{AuthMode, GroupKind, GroupTable, IpGroup, Unclassified};
            let cfg = EngineConfig {
                domain: "example.test".into(),
                aliases: vec![],
                registrar: turnstile_core::registrar::RegistrarConfig::default(),
                auth: None,
                groups: GroupTable::new(vec![IpGroup {
                    name: "phones".into(),
                    kind: GroupKind::User,
                    sources: vec!["0.0.0.0/0".parse().unwrap()],
                    auth: AuthMode::None,
                    serving: None,
                    weight: 1,
                }]),
                unclassified: Unclassified::Drop,
                server_name: "turnstile".into(),
            };
            let mut e = Engine::new(Arc::new(Shared::new(cfg, Default::default(), [0; 32])), 1);
            let reqs: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    format!(
                        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK{i:x};rport\r\n\
Max-Forwards: 70\r\nTo: <sip:user{u:06}@example.test>\r\nFrom: <sip:user{u:06}@example.test>;tag=f{u}\r\n\
Call-ID: c{u}@bench\r\nCSeq: {c} REGISTER\r\nContact: <sip:user{u:06}@192.0.2.10:5062>;expires=3600\r\n\
Content-Length: 0\r\n\r\n",
                        u = i % 10_000,
                        c = 1 + i / 10_000
                    )
                    .into_bytes()
                })
                .collect();
            let src = "192.0.2.10:5062".parse().unwrap();
            let local = "192.0.2.1:5060".parse().unwrap();
            for r in &reqs {
                e.handle_datagram(turnstile_core::Millis(1_700_000_000_000), src, local, r);
                black_box(e.poll_transmit());
            }
        }
        other => panic!("unknown workload {other}"),
    }
}
