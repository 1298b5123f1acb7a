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

/// A veth pair for the flood (sent from b, received in a) and the MACs of a and b. The
/// receiving end gets a NAPI context without an XDP program, GRO: veth accepts
/// `ndo_xdp_xmit` frames only then.
fn flood_pair() -> (VethPair, [u8; 6], [u8; 6]) {
    let pair = VethPair::create(1).expect("create namespaces");
    let (ok, out) = pair.exec(&pair.ns_a, &["ethtool", "-K", &pair.if_a, "gro", "on"]);
    assert!(ok, "ethtool: {out}");
    let (mac_a, mac_b) = (
        mac(&pair, &pair.ns_a, &pair.if_a),
        mac(&pair, &pair.ns_b, &pair.if_b),
    );
    (pair, mac_a, mac_b)
}

/// The generator's template payload and the offsets of its 16-digit counter and 4-digit user
/// fields.
fn template() -> (&'static [u8], usize, usize) {
    let payload: &[u8] =
        b"REGISTER sip:x.test SIP/2.0\r\nCall-ID: ################@f\r\nTo: <sip:u%%%%@x.test>\r\n\r\n";
    let ctr = payload
        .windows(16)
        .position(|w| w == b"################")
        .unwrap();
    let user = payload.windows(4).position(|w| w == b"%%%%").unwrap();
    (payload, ctr, user)
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
    let (pair, mac_a, mac_b) = flood_pair();
    let (v4_a, v4_b) = (pair.v4_a, pair.v4_b);
    let (payload, ctr, user) = template();
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

/// `XdpFlood::hold_on`: with the program attached to an idle device (which keeps it in the
/// kernel's XDP dispatcher, so `BPF_PROG_RUN` skips two RCU grace periods a call), traffic
/// that really arrives on that device passes untouched — not stamped, not redirected out
/// of the flood interface — and the flood itself still works.
#[test]
fn held_flood_program_passes_real_traffic() {
    if !require_privileged("xdp_flood::held_flood_program_passes_real_traffic") {
        return;
    }
    let (pair, mac_a, mac_b) = flood_pair();
    // A second link between the namespaces, b's end the one the program is held on.
    let (hold, hold_peer) = (format!("{}h", pair.if_b), format!("{}p", pair.if_a));
    let (hold_v4, peer_v4) = (Ipv4Addr::new(198, 18, 9, 1), Ipv4Addr::new(198, 18, 9, 2));
    for cmd in [
        vec![
            "ip", "link", "add", &hold, "type", "veth", "peer", "name", &hold_peer, "netns",
            &pair.ns_a,
        ],
        vec!["ip", "addr", "add", "198.18.9.1/30", "dev", &hold],
        vec!["ip", "link", "set", &hold, "up"],
    ] {
        let (ok, out) = pair.exec(&pair.ns_b, &cmd);
        assert!(ok, "{cmd:?}: {out}");
    }
    for cmd in [
        vec!["ip", "addr", "add", "198.18.9.2/30", "dev", &hold_peer],
        vec!["ip", "link", "set", &hold_peer, "up"],
    ] {
        let (ok, out) = pair.exec(&pair.ns_a, &cmd);
        assert!(ok, "{cmd:?}: {out}");
    }
    let (v4_a, v4_b) = (pair.v4_a, pair.v4_b);
    let (payload, ctr, user) = template();

    // The flood's receiver in a, and a's socket that sends real traffic to the held device.
    let flood_rx = pair.run_in(&pair.ns_a, || {
        let s = UdpSocket::bind((v4_a, 5060)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    });
    let real_tx = pair.run_in(&pair.ns_a, || UdpSocket::bind((peer_v4, 0)).unwrap());
    let (real_rx, mut flood) = pair.run_in(&pair.ns_b, || {
        let (f, off) = frame(mac_a, mac_b, v4_b, v4_a, payload);
        let mut flood = XdpFlood::open(
            &pair.if_b,
            f,
            &[(off + ctr) as u16],
            &[(off + user) as u16],
            SALT,
        )
        .expect("load the flood generator");
        flood
            .hold_on(&hold)
            .expect("hold the program on the idle link");
        let s = UdpSocket::bind((hold_v4, 5061)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (s, flood)
    });

    // Real traffic through the held device: delivered as sent.
    real_tx.send_to(payload, (hold_v4, 5061)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = real_rx
        .recv_from(&mut buf)
        .expect("datagram over the held link");
    assert_eq!(from.ip(), peer_v4);
    assert_eq!(&buf[..n], payload, "passed untouched");

    // The flood, held: every frame arrives, stamped.
    pair.run_in(&pair.ns_b, || {
        flood.send(40).expect("BPF_PROG_RUN live frames")
    });
    let mut seen = BTreeSet::new();
    while let Ok((n, _)) = flood_rx.recv_from(&mut buf) {
        assert_eq!(&buf[..ctr], &payload[..ctr]);
        assert!(seen.insert(buf[ctr..ctr + 16].to_vec()), "counter repeated");
        assert_eq!(n, payload.len());
        if seen.len() == 40 {
            break;
        }
    }
    assert_eq!(seen.len(), 40, "every flood frame arrives");
    assert!(
        flood_rx.recv_from(&mut buf).is_err(),
        "nothing else reaches the flood's receiver (the real datagram was not redirected)"
    );
}
