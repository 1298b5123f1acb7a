//! The in-memory engine end to end: REGISTER bytes in, 200 OK bytes out, no sockets.
//!
//! Budget (DESIGN.md): in-memory engine, REGISTER without auth ≥ 1,000,000 per second per
//! core, i.e. ≤ 1 µs per REGISTER including framing, view, registrar update and the response.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::net::SocketAddr;
use std::sync::Arc;
use turnstile_core::auth::UserDb;
use turnstile_core::engine::{Engine, EngineConfig, Shared};
use turnstile_core::group::{AuthMode, GroupKind, GroupTable, IpGroup, Unclassified};
use turnstile_core::registrar::RegistrarConfig;
use turnstile_core::Millis;

fn engine() -> Engine {
    let cfg = EngineConfig {
        domain: "example.test".into(),
        aliases: vec![],
        registrar: RegistrarConfig::default(),
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
    Engine::new(Arc::new(Shared::new(cfg, UserDb::new(), [0; 32])), 1)
}

fn register(user: u32, branch: u64, cseq: u32) -> Vec<u8> {
    format!(
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK{branch:x};rport\r\n\
Max-Forwards: 70\r\nTo: <sip:user{user:06}@example.test>\r\nFrom: <sip:user{user:06}@example.test>;tag=f{user}\r\n\
Call-ID: c{user}@bench\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:user{user:06}@192.0.2.10:5062>;expires=3600\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    let src: SocketAddr = "192.0.2.10:5062".parse().unwrap();
    let local: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    // Registrations over 100k users; every request unique (fresh branch, rising CSeq per
    // pass), so each one is a real registrar update, never a retransmission hit. Requests
    // are formatted outside the timed section.
    let mut e = engine();
    let mut n: u64 = 0;
    g.bench_function("register_no_auth (budget 1us)", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(50_000);
                let reqs: Vec<Vec<u8>> = (0..chunk)
                    .map(|_| {
                        n += 1;
                        register((n % 100_000) as u32, n, 1 + (n / 100_000) as u32)
                    })
                    .collect();
                let t = std::time::Instant::now();
                for r in &reqs {
                    e.handle_datagram(Millis(1_700_000_000_000), src, local, black_box(r));
                    black_box(e.poll_transmit());
                }
                total += t.elapsed();
                left -= chunk;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
