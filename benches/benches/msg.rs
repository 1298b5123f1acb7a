//! Frame + view of a typical REGISTER, and the same message through rsip 0.4 for comparison.
//!
//! Budget (DESIGN.md): frame + view of a typical REGISTER ≤ 300 ns on the 2-core dev machine.
//! rsip is measured to justify keeping it off the hot path (it also cannot parse compact
//! forms, folded lines or honour Content-Length; see userspace/core/src/rsip_adapter.rs).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use turnstile_core::msg::{self, HeaderName};

pub const REGISTER: &[u8] = b"REGISTER sip:example.test SIP/2.0\r\n\
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

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("msg");
    g.throughput(Throughput::Elements(1));
    let mut scratch = Vec::with_capacity(2048);
    g.bench_function("frame_view_register (budget 300ns)", |b| {
        b.iter(|| {
            let m = msg::parse(black_box(REGISTER), &mut scratch).unwrap();
            let hot = m.hot.unwrap();
            black_box((
                hot.cseq.seq,
                hot.via.branch,
                hot.to.uri,
                m.list(HeaderName::Contact).next(),
            ));
        })
    });
    g.bench_function("rsip_parse_register (comparison)", |b| {
        b.iter(|| {
            let m = rsip::SipMessage::try_from(black_box(REGISTER)).unwrap();
            black_box(m);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
