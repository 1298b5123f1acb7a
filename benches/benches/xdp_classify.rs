//! XDP classification through BPF_PROG_TEST_RUN (needs root; skips loudly otherwise).
//!
//! Two numbers per case: criterion's time for one `test_run` call (syscall included, what a
//! caller pays) and, printed first, the kernel's own per-packet time from a 100k-repeat run
//! (the program alone). Cases: a classified IPv4 SIP packet (LPM hit → redirect attempt),
//! an unclassified source (LPM miss → drop) and a non-SIP UDP port (pass).
//! No DESIGN.md budget for this row; the XDP path's budget is the storm comparison
//! (≥ 1.5× socket mode, `cargo xtask bench --xdp`).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use turnstile_daemon::xdp::{GroupPrefix, GroupSpec, XdpDataplane, XdpParams};

fn frame(src: [u8; 4], dport: u16) -> Vec<u8> {
    let payload = b"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bKb\r\n\r\n";
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let total = 20 + 8 + payload.len();
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[198, 18, 0, 1]);
    let ulen = 8 + payload.len();
    f.extend_from_slice(&[
        0x13,
        0xc4,
        (dport >> 8) as u8,
        dport as u8,
        (ulen >> 8) as u8,
        ulen as u8,
        0,
        0,
    ]);
    f.extend_from_slice(payload);
    f
}

fn bench(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("\n*** SKIPPED xdp_classify: needs root (BPF_PROG_TEST_RUN) ***\n");
        return;
    }
    let groups = vec![GroupPrefix {
        prefix: "198.18.1.0/24".parse().unwrap(),
        group: GroupSpec {
            group_id: 1,
            class: 0,
            rate_pps: 0,
            burst: 0,
            drop: false,
        },
    }];
    let dp = match XdpDataplane::open(&XdpParams::default(), &groups) {
        Ok(dp) => dp,
        Err(e) => {
            eprintln!("\n*** SKIPPED xdp_classify: {e} ***\n");
            return;
        }
    };
    let cases = [
        ("classified_v4", frame([198, 18, 1, 2], 5060)),
        ("unclassified_v4", frame([198, 18, 9, 9], 5060)),
        ("non_sip_port", frame([198, 18, 1, 2], 9999)),
    ];
    let mut g = c.benchmark_group("xdp");
    for (name, f) in &cases {
        if let Ok((action, d)) = dp.test_run_repeat(f, 100_000) {
            eprintln!(
                "xdp/{name}: kernel-timed {:?} per packet (action {action})",
                d
            );
        }
        g.bench_function(*name, |b| {
            b.iter(|| black_box(dp.test_run(black_box(f)).unwrap().action))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
