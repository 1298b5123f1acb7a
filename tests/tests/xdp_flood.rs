//! The benchmark's XDP flood generator (`turnstile_flood`, run with `BPF_PROG_RUN` in
//! live-frames mode) over a real veth pair in test-owned namespaces: every frame it sends
//! arrives at an ordinary UDP socket on the peer, each with its own counter (the field a
//! benchmark puts in Via branch and Call-ID) and user digits — also when the sending thread
//! moves between CPUs (the sequence is per CPU; this test caught a repeat). If it repeated frames, the
//! isolation benchmark's flood would be absorbed as retransmissions and measure nothing.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use turnstile_daemon::xdp::{flood::XdpFlood, packet::write_udp};
use turnstile_e2e::netns::{require_privileged, VethPair};

const FRAMES: u32 = 300;
const SALT: u64 = 0x5a17_0000_0000;

fn mac(pair: &VethPair, ns: &str, ifname: &str) -> [u8; 6] {
    let (ok, out) = pair.exec(ns, &["cat", &format!("/sys/class/net/{ifname}/address")]);
    assert!(ok, "{out}");
    let v: Vec<u8> = out
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Ethernet + IPv4 + UDP around `payload` (the daemon's own frame writer), with the UDP
/// checksum set to 0 ("none", RFC 768 over IPv4) because the generator rewrites payload
/// bytes per frame. Returns the frame and the payload's offset in it.
fn frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> (Vec<u8>, usize) {
    let mut f = vec![0u8; 2048];
    let n = write_udp(
        &mut f,
        src_mac,
        dst_mac,
        &[],
        SocketAddr::new(src.into(), 40_000),
        SocketAddr::new(dst.into(), 5060),
        payload,
    )
    .expect("frame fits");
    f.truncate(n);
    let off = n - payload.len();
    f[off - 2..off].copy_from_slice(&[0, 0]);
    (f, off)
}

/// Moves the calling thread to `cpu` (best effort: a failure leaves it where it is).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it; the call only affects
    // the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn flood_frames_arrive_each_with_its_own_counter() {
    if !require_privileged("xdp_flood::flood_frames_arrive_each_with_its_own_counter") {
        return;
    }
    let pair = VethPair::create(1).expect("create namespaces");
    // A NAPI context on the receiving end without an XDP program: GRO (veth accepts
    // ndo_xdp_xmit frames only then).
    let (ok, out) = pair.exec(&pair.ns_a, &["ethtool", "-K", &pair.if_a, "gro", "on"]);
    assert!(ok, "ethtool: {out}");
    let (mac_a, mac_b) = (
        mac(&pair, &pair.ns_a, &pair.if_a),
        mac(&pair, &pair.ns_b, &pair.if_b),
    );
    let (v4_a, v4_b) = (pair.v4_a, pair.v4_b);
    let payload = b"REGISTER sip:x.test SIP/2.0\r\nCall-ID: ################@f\r\nTo: <sip:u%%%%@x.test>\r\n\r\n";
    let ctr = payload
        .windows(16)
        .position(|w| w == b"################")
        .unwrap();
    let user = payload.windows(4).position(|w| w == b"%%%%").unwrap();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();

    let got = std::thread::scope(|s| {
        let pr = &pair;
        let rx = s.spawn(move || {
            pr.run_in(&pr.ns_a, move || {
                let sock = UdpSocket::bind((v4_a, 5060)).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 2048];
                let t0 = Instant::now();
                while got.len() < FRAMES as usize && t0.elapsed() < Duration::from_secs(10) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        assert_eq!(from.ip(), v4_b);
                        got.push(buf[..n].to_vec());
                    }
                }
                got
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver ready");
        pair.run_in(&pair.ns_b, || {
            let (f, off) = frame(mac_a, mac_b, v4_b, v4_a, payload);
            let mut flood = XdpFlood::open(
                &pair.if_b,
                f,
                &[(off + ctr) as u16],
                &[(off + user) as u16],
                SALT,
            )
            .expect("load the flood generator");
            // Small chunks, so the receiver's socket buffer keeps up; each from the next CPU,
            // so the per-CPU sequences meet.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            for i in 0..FRAMES / 50 {
                pin_to(i as usize % cpus);
                flood.send(50).expect("BPF_PROG_RUN live frames");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        rx.join().unwrap()
    });

    assert_eq!(got.len(), FRAMES as usize, "every frame arrives");
    let mut seen = BTreeSet::new();
    for d in &got {
        assert_eq!(d.len(), payload.len());
        let c = std::str::from_utf8(&d[ctr..ctr + 16]).unwrap();
        let v = u64::from_str_radix(c, 16).unwrap_or_else(|_| panic!("counter {c:?}"));
        // salt + (per-CPU sequence << 8 | cpu): the sending thread may migrate.
        let n = (v - SALT) >> 8;
        assert!((1..=u64::from(FRAMES)).contains(&n), "counter {v:#x}");
        let u = std::str::from_utf8(&d[user..user + 4]).unwrap();
        assert_eq!(
            u,
            format!("{:04x}", n & 0xffff),
            "user digits follow the counter"
        );
        // Everything else is the template.
        assert_eq!(&d[..ctr], &payload[..ctr]);
        assert!(seen.insert(v), "counter {v:#x} repeated");
    }
}
