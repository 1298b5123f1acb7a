//! The XDP program on a real veth inside test-owned network namespaces, in driver (native)
//! and skb (generic) mode:
//!
//! - counters: classified SIP is counted (no socket bound → fallback XDP_PASS), an
//!   unclassified source is dropped, non-SIP UDP and ICMP echo (ping) still reach the kernel;
//! - AF_XDP end to end: two classes on one rx queue sharing a UMEM; each source lands on its
//!   group's socket with the right metadata, and the reply sent on the XSK TX ring reaches the
//!   sender's ordinary UDP socket.
//!
//! Namespace A holds the device under test, namespace B the peer (see `turnstile_e2e::netns`).
//! Traffic stays inside 198.18.0.0/24 between the two namespaces.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use turnstile_daemon::xdp::{
    xsk::{BindMode, XskConfig, XskQueue},
    AttachMode, GroupPrefix, GroupSpec, Verdict, XdpDataplane, XdpParams,
};
use turnstile_e2e::netns::{require_privileged, VethPair};

const SIP: u16 = 5060;

fn group(prefix: &str, group_id: u16, class: u8) -> GroupPrefix {
    GroupPrefix {
        prefix: prefix.parse().unwrap(),
        group: GroupSpec {
            group_id,
            class,
            ..Default::default()
        },
    }
}

fn add_addr(pair: &VethPair, ns: &str, ifname: &str, cidr: &str) {
    let (ok, out) = pair.exec(ns, &["ip", "addr", "add", cidr, "dev", ifname]);
    assert!(ok, "ip addr add {cidr}: {out}");
}

/// ICMP echo from the current namespace to `dst` over a raw socket; true if answered.
fn ping(dst: Ipv4Addr) -> bool {
    // SAFETY: plain socket syscalls on a local fd, closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        if fd < 0 {
            return false;
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut pkt = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let mut sum: u32 = pkt
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        pkt[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let mut answered = false;
        let deadline = Instant::now() + Duration::from_secs(3);
        'outer: while Instant::now() < deadline {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            for _ in 0..5 {
                let mut buf = [0u8; 1500];
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n <= 0 {
                    break;
                }
                let n = n as usize;
                let ihl = (buf[0] & 0xf) as usize * 4;
                // Echo reply (type 0) from dst with our id.
                if n >= ihl + 8
                    && buf[ihl] == 0
                    && buf[12..16] == dst.octets()
                    && buf[ihl + 4..ihl + 6] == [0x12, 0x34]
                {
                    answered = true;
                    break 'outer;
                }
            }
        }
        libc::close(fd);
        answered
    }
}

fn counters_case(mode: AttachMode) {
    let pair = VethPair::create(1).expect("create namespaces");
    // A second source address in B that belongs to no group.
    add_addr(&pair, &pair.ns_b, &pair.if_b, "198.18.0.3/24");
    let (v4_a, v4_b) = (pair.v4_a, pair.v4_b);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();

    std::thread::scope(|s| {
        let pr = &pair;
        let server = s.spawn(move || {
            pr.run_in(&pr.ns_a, move || {
                let pair = pr;
                let groups = [group(&format!("{v4_b}/32"), 7, 0)];
                let dp = XdpDataplane::load(&pair.if_a, mode, &XdpParams::default(), &groups)
                    .unwrap_or_else(|e| panic!("attach in {mode:?} mode: {e}"));
                assert_eq!(dp.attached(), Some((pair.if_a.as_str(), mode)));
                let (_, link) = pair.exec(&pair.ns_a, &["ip", "link", "show", &pair.if_a]);
                assert!(link.contains("prog/xdp"), "not attached? {link}");
                // A kernel listener on a non-SIP port: XDP must pass its traffic.
                let other = UdpSocket::bind((v4_a, 9999)).unwrap();
                other
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                let got = other.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
                done_rx.recv_timeout(Duration::from_secs(20)).ok();
                (dp.read_counters().unwrap(), got)
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        pair.run_in(&pair.ns_b, || {
            assert!(ping(v4_a), "ping through XDP_PASS ({mode:?})");
            let classified = UdpSocket::bind((v4_b, 0)).unwrap();
            let unclassified = UdpSocket::bind((Ipv4Addr::new(198, 18, 0, 3), 0)).unwrap();
            for i in 0..10u8 {
                classified.send_to(&[b'R', i], (v4_a, SIP)).unwrap();
                unclassified.send_to(&[b'U', i], (v4_a, SIP)).unwrap();
            }
            classified.send_to(b"other", (v4_a, 9999)).unwrap();
        });
        // Give the last packets time to cross the veth.
        std::thread::sleep(Duration::from_millis(200));
        done_tx.send(()).unwrap();
        let (snap, other) = server.join().unwrap();
        assert_eq!(other.expect("non-SIP UDP delivered"), b"other");
        // The dataplane was dropped with the server thread: the program must be detached.
        let (ok, link) = pair.exec(&pair.ns_a, &["ip", "link", "show", &pair.if_a]);
        assert!(ok, "{link}");
        assert!(
            !link.contains("prog/xdp"),
            "still attached after drop: {link}"
        );
        assert_eq!(
            snap.get(Verdict::RedirectFailedPass),
            10,
            "{mode:?}: {snap:?}"
        );
        assert_eq!(snap.group(7, Verdict::RedirectFailedPass), 10);
        assert_eq!(snap.get(Verdict::DropUnclassified), 10, "{mode:?}");
        assert!(snap.get(Verdict::PassNonSip) >= 1, "{mode:?}");
        assert!(
            snap.get(Verdict::PassNotUdp) >= 1,
            "ICMP counted ({mode:?})"
        );
        assert!(snap.get(Verdict::PassNotIp) >= 1, "ARP counted ({mode:?})");
        assert_eq!(snap.get(Verdict::DropMalformed), 0);
    });
}

#[test]
fn counters_driver_mode() {
    if !require_privileged("xdp_netns::counters_driver_mode") {
        return;
    }
    counters_case(AttachMode::Driver);
}

#[test]
fn counters_skb_mode() {
    if !require_privileged("xdp_netns::counters_skb_mode") {
        return;
    }
    counters_case(AttachMode::Skb);
}

/// What the AF_XDP server saw: (class, group id, source, payload).
type Seen = Vec<(u8, u16, SocketAddr, Vec<u8>)>;

fn af_xdp_case(mode: AttachMode) {
    let pair = VethPair::create(1).expect("create namespaces");
    add_addr(&pair, &pair.ns_b, &pair.if_b, "198.18.0.3/24");
    let (v4_a, v4_b) = (pair.v4_a, pair.v4_b);
    let v4_c = Ipv4Addr::new(198, 18, 0, 3);
    let (v6_a, v6_b) = (pair.v6_a, pair.v6_b);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();

    std::thread::scope(|s| {
        let pr = &pair;
        let server = s.spawn(move || {
            pr.run_in(&pr.ns_a, move || {
                let pair = pr;
                let groups = [
                    group(&format!("{v4_b}/32"), 7, 1),
                    group(&format!("{v4_c}/32"), 8, 0),
                    group(&format!("{v6_b}/128"), 9, 1),
                ];
                let mut dp = XdpDataplane::open(&XdpParams::default(), &groups).unwrap();
                let cfg = XskConfig {
                    frame_size: 2048,
                    frames: 256,
                    ring_size: 64,
                    classes: 2,
                    bind_mode: BindMode::Copy,
                    tx_reserve: 16,
                };
                let mut q = XskQueue::open(&pair.if_a, 0, &cfg).expect("AF_XDP sockets");
                q.register(&mut dp).unwrap();
                dp.attach(&pair.if_a, mode).unwrap();
                ready_tx.send(()).unwrap();

                let mut seen: Seen = Vec::new();
                let mut batch = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && done_rx.try_recv().is_err() {
                    q.poll(50);
                    for class in 0..q.classes() {
                        batch.clear();
                        q.recv_batch(class, 32, &mut batch);
                        for p in batch.drain(..) {
                            let m = p.meta.expect("metadata present");
                            assert_eq!(m.class, class, "steered to its class socket");
                            let payload = q.payload(&p).to_vec();
                            seen.push((class, m.group_id, p.src().unwrap(), payload.clone()));
                            let mut reply = b"SIP/2.0 200 OK ".to_vec();
                            reply.extend_from_slice(&payload);
                            q.reply(p, &reply).unwrap();
                        }
                    }
                    q.flush();
                }
                q.flush();
                let acct = q.frame_accounting();
                let stats = q.statistics(0).unwrap();
                (seen, dp.read_counters().unwrap(), acct, stats)
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        let replies = pair.run_in(&pair.ns_b, || {
            let mut replies = Vec::new();
            let to_a: [(SocketAddr, SocketAddr, u8); 3] = [
                ((v4_b, 0).into(), (v4_a, SIP).into(), b'B'),
                ((v4_c, 0).into(), (v4_a, SIP).into(), b'C'),
                ((v6_b, 0).into(), (v6_a, SIP).into(), b'6'),
            ];
            for (src, dst, tag) in to_a {
                let sock = UdpSocket::bind(src).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                for i in 0..5u8 {
                    let msg = [b'R', b'E', b'G', tag, b'0' + i];
                    // Retry: the first datagram may wait for ARP / neighbour discovery.
                    let mut got = None;
                    for _ in 0..10 {
                        sock.send_to(&msg, dst).unwrap();
                        let mut buf = [0u8; 256];
                        if let Ok((n, from)) = sock.recv_from(&mut buf) {
                            got = Some((from, buf[..n].to_vec()));
                            break;
                        }
                    }
                    let (from, data) = got.unwrap_or_else(|| panic!("no reply to {msg:?}"));
                    // The kernel accepted the datagram: IP and UDP checksums were right.
                    assert_eq!(from, dst, "reply source");
                    let mut want = b"SIP/2.0 200 OK ".to_vec();
                    want.extend_from_slice(&msg);
                    assert_eq!(data, want);
                    replies.push(data);
                }
            }
            replies
        });
        done_tx.send(()).unwrap();
        let (seen, snap, acct, stats) = server.join().unwrap();
        assert_eq!(replies.len(), 15);
        for (class, gid, src, payload) in &seen {
            match payload[3] {
                b'B' => {
                    assert_eq!((*class, *gid), (1, 7), "{mode:?}");
                    assert_eq!(src.ip(), v4_b);
                }
                b'C' => {
                    assert_eq!((*class, *gid), (0, 8), "{mode:?}");
                    assert_eq!(src.ip(), v4_c);
                }
                b'6' => {
                    assert_eq!((*class, *gid), (1, 9), "{mode:?}");
                    assert_eq!(src.ip(), v6_b);
                }
                _ => panic!("unexpected payload {payload:?}"),
            }
        }
        assert!(seen.len() >= 15, "{mode:?}: {seen:?}");
        assert_eq!(
            snap.get(Verdict::Redirect),
            seen.len() as u64,
            "{mode:?}: {snap:?}"
        );
        assert_eq!(
            snap.group(7, Verdict::Redirect)
                + snap.group(8, Verdict::Redirect)
                + snap.group(9, Verdict::Redirect),
            seen.len() as u64
        );
        assert_eq!(snap.get(Verdict::RedirectFailedPass), 0);
        assert!(acct.balanced(), "frames leaked: {acct:?}");
        assert_eq!(acct.held, 0, "{acct:?}");
        assert_eq!(stats.rx_invalid_descs, 0);
        assert_eq!(stats.tx_invalid_descs, 0);
    });
}

#[test]
fn af_xdp_end_to_end_driver_mode() {
    if !require_privileged("xdp_netns::af_xdp_end_to_end_driver_mode") {
        return;
    }
    af_xdp_case(AttachMode::Driver);
}

#[test]
fn af_xdp_end_to_end_skb_mode() {
    if !require_privileged("xdp_netns::af_xdp_end_to_end_skb_mode") {
        return;
    }
    af_xdp_case(AttachMode::Skb);
}

#[test]
fn missing_interface_is_reported() {
    if !require_privileged("xdp_netns::missing_interface_is_reported") {
        return;
    }
    let e = XdpDataplane::load("tsnope0", AttachMode::Skb, &XdpParams::default(), &[])
        .err()
        .expect("attach to a missing interface must fail");
    assert!(e.to_string().contains("no such network interface"), "{e}");
}

#[test]
fn queue_mismatch_is_explained() {
    if !require_privileged("xdp_netns::queue_mismatch_is_explained") {
        return;
    }
    // Peer has 2 tx queues, the device under test only 1 rx queue: native XDP refuses.
    let pair = VethPair::create_asym(1, 2).expect("create namespaces");
    let err = pair.run_in(&pair.ns_a, || {
        XdpDataplane::load(&pair.if_a, AttachMode::Driver, &XdpParams::default(), &[])
            .err()
            .map(|e| e.to_string())
    });
    let err = err.expect("native attach with fewer rx than peer tx queues must fail");
    assert!(
        err.contains("ENOSPC") && err.contains("numrxqueues"),
        "{err}"
    );
    // Generic mode has no such constraint.
    let ok = pair.run_in(&pair.ns_a, || {
        XdpDataplane::load(&pair.if_a, AttachMode::Skb, &XdpParams::default(), &[]).is_ok()
    });
    assert!(ok, "skb mode attaches regardless of queue counts");
}

/// Small rings (16 slots, 64 frames) under bursts larger than the rings: the kernel drops
/// what does not fit (counted in XDP_STATISTICS), but no frame may leak — every burst,
/// including the last ones, still gets answers, and at the end all frames are back.
#[test]
fn af_xdp_small_rings_do_not_leak_frames() {
    if !require_privileged("xdp_netns::af_xdp_small_rings_do_not_leak_frames") {
        return;
    }
    const BURSTS: usize = 60;
    const BURST: usize = 40;
    let pair = VethPair::create(1).expect("create namespaces");
    let (v4_a, v4_b) = (pair.v4_a, pair.v4_b);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let pr = &pair;
        let server = s.spawn(move || {
            pr.run_in(&pr.ns_a, move || {
                let groups = [group(&format!("{v4_b}/32"), 1, 0)];
                let mut dp = XdpDataplane::open(&XdpParams::default(), &groups).unwrap();
                let cfg = XskConfig {
                    frame_size: 2048,
                    frames: 64,
                    ring_size: 16,
                    classes: 1,
                    bind_mode: BindMode::Copy,
                    tx_reserve: 8,
                };
                let mut q = XskQueue::open(&pr.if_a, 0, &cfg).unwrap();
                q.register(&mut dp).unwrap();
                dp.attach(&pr.if_a, AttachMode::Driver).unwrap();
                ready_tx.send(()).unwrap();
                let mut batch = Vec::new();
                let mut served = 0u64;
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline && done_rx.try_recv().is_err() {
                    q.poll(20);
                    batch.clear();
                    q.recv_batch(0, 64, &mut batch);
                    for p in batch.drain(..) {
                        let payload = q.payload(&p).to_vec();
                        q.reply(p, &payload).unwrap();
                        served += 1;
                    }
                    q.flush();
                    let a = q.frame_accounting();
                    assert!(a.balanced(), "frame accounting broken: {a:?}");
                }
                // Drain outstanding TX completions (bounded).
                for _ in 0..200 {
                    q.flush();
                    if q.frame_accounting().tx_out == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                (
                    served,
                    q.frame_accounting(),
                    q.statistics(0).unwrap(),
                    dp.read_counters().unwrap(),
                )
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let t0 = Instant::now();
        let per_burst = pair.run_in(&pair.ns_b, || {
            let sock = UdpSocket::bind((v4_b, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            // Resolve ARP first so bursts are not eaten by the neighbour queue.
            for _ in 0..20 {
                sock.send_to(b"warmup", (v4_a, SIP)).unwrap();
                let mut b = [0u8; 64];
                if sock.recv_from(&mut b).is_ok() {
                    break;
                }
            }
            let mut per_burst = Vec::with_capacity(BURSTS);
            for burst in 0..BURSTS {
                for i in 0..BURST {
                    let msg = format!("b{burst}-{i}");
                    sock.send_to(msg.as_bytes(), (v4_a, SIP)).unwrap();
                }
                let mut got = 0usize;
                let mut buf = [0u8; 256];
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if buf[..n].starts_with(format!("b{burst}-").as_bytes()) {
                        got += 1;
                    }
                }
                per_burst.push(got);
            }
            per_burst
        });
        let elapsed = t0.elapsed();
        done_tx.send(()).unwrap();
        let (served, acct, stats, snap) = server.join().unwrap();
        let answered: usize = per_burst.iter().sum();
        eprintln!(
            "small rings: sent {} answered {answered} served {served} in {elapsed:?}; \
             stats {stats:?}; redirect {}",
            BURSTS * BURST,
            snap.get(Verdict::Redirect)
        );
        assert!(
            per_burst[BURSTS - 10..].iter().all(|&n| n > 0),
            "late bursts unanswered (frames leaked?): {per_burst:?}"
        );
        assert!(acct.balanced(), "{acct:?}");
        assert_eq!(acct.held + acct.tx_pending + acct.tx_out, 0, "{acct:?}");
        assert_eq!(acct.free + acct.fill_out, acct.total);
        assert_eq!(stats.rx_invalid_descs + stats.tx_invalid_descs, 0);
    });
}

/// Two rx queues, one AF_XDP queue object each: the program must index the XSKMAP by
/// `rx_queue_index * MAX_CLASSES + class`, and every flow is answered whichever queue the
/// veth hashed it to.
#[test]
fn af_xdp_two_rx_queues() {
    if !require_privileged("xdp_netns::af_xdp_two_rx_queues") {
        return;
    }
    const FLOWS: u16 = 32;
    let pair = VethPair::create(2).expect("create namespaces");
    let (v4_a, v4_b) = (pair.v4_a, pair.v4_b);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let pr = &pair;
        let server = s.spawn(move || {
            pr.run_in(&pr.ns_a, move || {
                assert_eq!(
                    turnstile_daemon::xdp::xsk::rx_queue_count(&pr.if_a).unwrap(),
                    2
                );
                let groups = [group(&format!("{v4_b}/32"), 5, 1)];
                let cfg = XskConfig {
                    frame_size: 2048,
                    frames: 128,
                    ring_size: 64,
                    classes: 2,
                    bind_mode: BindMode::Copy,
                    tx_reserve: 8,
                };
                // One XskQueue per rx queue, registered before the attach.
                let (dp, mut qs) = turnstile_daemon::xdp::open_backend(
                    &pr.if_a,
                    AttachMode::Driver,
                    &XdpParams::default(),
                    &groups,
                    &cfg,
                )
                .unwrap();
                assert_eq!(qs.len(), 2);
                assert_eq!((qs[0].queue_id(), qs[1].queue_id()), (0, 1));
                ready_tx.send(()).unwrap();
                let mut per_queue = [0u32; 2];
                let mut batch = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline && done_rx.try_recv().is_err() {
                    for (qi, q) in qs.iter_mut().enumerate() {
                        q.poll(5);
                        batch.clear();
                        q.recv_batch(1, 32, &mut batch);
                        for p in batch.drain(..) {
                            assert_eq!(p.queue, qi as u32);
                            assert_eq!(p.group_id(), Some(5));
                            per_queue[qi] += 1;
                            let payload = q.payload(&p).to_vec();
                            q.reply(p, &payload).unwrap();
                        }
                        q.flush();
                    }
                }
                (per_queue, dp.read_counters().unwrap())
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let answered = pair.run_in(&pair.ns_b, || {
            let mut answered = 0;
            for f in 0..FLOWS {
                // A distinct source port per flow so the veth spreads them over queues.
                let sock = UdpSocket::bind((v4_b, 41000 + f)).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let msg = format!("flow{f}");
                for _ in 0..10 {
                    sock.send_to(msg.as_bytes(), (v4_a, SIP)).unwrap();
                    let mut buf = [0u8; 64];
                    if let Ok((n, _)) = sock.recv_from(&mut buf) {
                        assert_eq!(&buf[..n], msg.as_bytes());
                        answered += 1;
                        break;
                    }
                }
            }
            answered
        });
        done_tx.send(()).unwrap();
        let (per_queue, snap) = server.join().unwrap();
        eprintln!("two queues: per-queue packets {per_queue:?}, counters {snap:?}");
        assert_eq!(answered, FLOWS, "every flow answered");
        assert_eq!(
            snap.get(Verdict::RedirectFailedPass),
            0,
            "no queue without socket"
        );
        assert!(
            per_queue[0] > 0 && per_queue[1] > 0,
            "flows not spread over both queues: {per_queue:?}"
        );
    });
}
