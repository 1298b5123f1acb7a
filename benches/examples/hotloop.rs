//! A fixed workload for instruction-count profiling (`valgrind --tool=callgrind`), which is
//! repeatable on a loaded machine where wall-clock benchmarks are not:
//! `cargo build --release -p turnstile-benches --example hotloop && valgrind --tool=callgrind target/release/examples/hotloop parse 100000`
//!
//! Workloads: `parse` (one REGISTER, parse only), `engine` (10,000 AORs, refreshes with the
//! same Call-ID) and `storm` (the XDP flood: 65,536 AORs registered once, then every request
//! a new transaction and a new Call-ID, so each one replaces its AOR's binding). Count only the
//! per-request step, without set-up (`parse_step` for `parse`):
//! `valgrind --tool=callgrind --toggle-collect='hotloop::engine_step' target/release/examples/hotloop storm 200000`

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
                black_box(parse_step(black_box(REGISTER), &mut scratch));
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
                let now = turnstile_core::Millis(1_700_000_000_000);
                black_box(engine_step(&mut e, now, src, local, r));
            }
        }
        "storm" => storm(n),
        other => panic!("unknown workload {other}"),
    }
}

/// Users in the flood (the XDP benchmark's `flood<4hex>`).
const STORM_USERS: u32 = 65_536;

/// The flood request, with fixed-width hex fields overwritten per request (so building it
/// costs a few dozen instructions and no allocation).
const STORM_TEMPLATE: &str = "REGISTER sip:bench.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.18.1.2:5060;rport;branch=z9hG4bK################\r\n\
Max-Forwards: 70\r\n\
From: <sip:flood####@bench.test>;tag=################\r\n\
To: <sip:flood####@bench.test>\r\n\
Call-ID: ################@flood\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:flood####@198.18.1.2:5060>\r\n\
Expires: 60\r\n\
Content-Length: 0\r\n\r\n";

struct StormReq {
    buf: Vec<u8>,
    /// Offsets of the 16-hex fields (branch, From tag, Call-ID) and the 4-hex user fields.
    hex16: Vec<usize>,
    hex4: Vec<usize>,
}

impl StormReq {
    fn new() -> Self {
        let buf = STORM_TEMPLATE.as_bytes().to_vec();
        let (mut hex16, mut hex4) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < buf.len() {
            if buf[i] == b'#' {
                let run = buf[i..].iter().take_while(|&&c| c == b'#').count();
                if run == 16 {
                    hex16.push(i);
                } else {
                    assert_eq!(run, 4);
                    hex4.push(i);
                }
                i += run;
            } else {
                i += 1;
            }
        }
        StormReq { buf, hex16, hex4 }
    }

    /// Request number `seq` for user `user`: every 16-hex field is unique per request.
    fn fill(&mut self, seq: u64, user: u32) {
        fn hex(out: &mut [u8], v: u64) {
            const H: &[u8; 16] = b"0123456789abcdef";
            let w = out.len();
            for (i, c) in out.iter_mut().enumerate() {
                *c = H[((v >> ((w - 1 - i) * 4)) & 0xf) as usize];
            }
        }
        for (k, &o) in self.hex16.iter().enumerate() {
            // Distinct per field, scrambled so the hash tables see no pattern.
            let v = (seq ^ (k as u64) << 60).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            hex(&mut self.buf[o..o + 16], v);
        }
        for &o in &self.hex4 {
            hex(&mut self.buf[o..o + 4], user as u64);
        }
    }
}

/// One parse. Not inlined so callgrind can count exactly this (`--toggle-collect`).
#[inline(never)]
fn parse_step(req: &[u8], scratch: &mut Vec<u8>) -> u32 {
    let m = msg::parse(req, scratch).unwrap();
    m.hot.unwrap().cseq.seq
}

/// One request through the engine, answers drained and dropped (as the daemon does after
/// sending them). Not inlined so callgrind can count exactly this (`--toggle-collect`).
#[inline(never)]
fn engine_step(
    e: &mut turnstile_core::engine::Engine,
    now: turnstile_core::Millis,
    src: std::net::SocketAddr,
    local: std::net::SocketAddr,
    req: &[u8],
) -> usize {
    e.handle_datagram(now, src, local, req);
    let mut sent = 0;
    while let Some(t) = e.poll_transmit() {
        sent += t.payload.len();
    }
    sent
}

fn storm(n: u64) {
    use std::sync::Arc;
    use turnstile_core::engine::{Engine, EngineConfig, Shared};
    use turnstile_core::group::{AuthMode, GroupKind, GroupTable, IpGroup, Unclassified};
    use turnstile_core::Millis;
    let cfg = EngineConfig {
        domain: "bench.test".into(),
        aliases: vec![],
        registrar: turnstile_core::registrar::RegistrarConfig::default(),
        auth: None,
        groups: GroupTable::new(vec![IpGroup {
            name: "flood".into(),
            kind: GroupKind::User,
            sources: vec!["198.18.0.0/15".parse().unwrap()],
            auth: AuthMode::None,
            serving: None,
            weight: 1,
        }]),
        unclassified: Unclassified::Drop,
        server_name: "turnstile".into(),
    };
    let shared = Arc::new(Shared::new(cfg, Default::default(), [7; 32]));
    let mut e = Engine::new(shared.clone(), 1);
    let src = "198.18.1.2:5060".parse().unwrap();
    let local = "198.18.0.1:5060".parse().unwrap();
    let mut req = StormReq::new();
    let mut now = Millis(1_700_000_000_000);
    // Pre-registration: every AOR once (not counted with --toggle-collect).
    for u in 0..STORM_USERS {
        req.fill(u64::MAX - u as u64, u);
        e.handle_datagram(now, src, local, &req.buf);
        let t = e.poll_transmit().expect("answered");
        assert!(
            t.payload.starts_with(b"SIP/2.0 200 "),
            "pre-registration failed"
        );
    }
    assert_eq!(shared.registrar().aor_count(), STORM_USERS as usize);
    let mut bytes = 0usize;
    for i in 0..n {
        // ~200k requests/s of virtual time; the daemon runs the timers about every ms.
        if i % 256 == 0 {
            now = Millis(now.0 + 1);
            e.handle_timeout(now);
        }
        // A stride coprime with 2^16 visits the users in a scattered order, as a flood of
        // many senders does.
        let user = (i.wrapping_mul(40_503) % STORM_USERS as u64) as u32;
        req.fill(i, user);
        bytes += engine_step(&mut e, now, src, local, black_box(&req.buf));
    }
    black_box(bytes);
    // Every request was a 200 that replaced its AOR's one binding.
    use turnstile_core::stats::Counter;
    assert_eq!(
        e.stats().get(Counter::RegisterOk),
        STORM_USERS as u64 + n,
        "not every storm request was answered 200"
    );
    assert_eq!(shared.registrar().binding_count(), STORM_USERS as usize);
}
