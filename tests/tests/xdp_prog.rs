//! The XDP program on crafted frames via BPF_PROG_TEST_RUN: a fixture table of
//! (frame, expected action, expected counter, expected metadata).
//!
//! In test-run mode no AF_XDP socket can be bound at (queue 0, class), so
//! `bpf_redirect_map` fails its lookup and the program takes its fallback: XDP_PASS with
//! `redirect_failed_pass` by default, XDP_DROP with `redirect_failed_drop` when configured.
//! The metadata is written before the redirect attempt, so it is checked on those rows.
//! (The successful redirect into a bound socket is covered by `xdp_netns`.)

use std::{net::SocketAddr, time::Duration};

use turnstile_daemon::xdp::{
    packet::write_udp, GroupPrefix, GroupSpec, RedirectFallback, UnclassifiedPolicy, Verdict,
    XdpDataplane, XdpMeta, XdpParams, META_MAGIC,
};
use turnstile_e2e::netns::require_privileged;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp(src: &str, dst: &str, vlans: &[(u16, u16)]) -> Vec<u8> {
    let mut buf = vec![0u8; 1600];
    let n = write_udp(
        &mut buf,
        MAC_B,
        MAC_A,
        vlans,
        sa(src),
        sa(dst),
        b"REGISTER sip:example.test SIP/2.0\r\n\r\n",
    )
    .unwrap();
    buf.truncate(n);
    buf
}

/// IPv4 frame built by hand: protocol, options, fragment field, IHL override.
fn v4_raw(src: [u8; 4], proto: u8, opts: &[u8], frag: u16, ihl_override: Option<u8>) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ihl = ihl_override.unwrap_or(((20 + opts.len()) / 4) as u8);
    let payload = b"REGISTER sip:x SIP/2.0\r\n\r\n";
    let total = 20 + opts.len() + 8 + payload.len();
    f.push(0x40 | ihl);
    f.push(0);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.push(64);
    f.push(proto);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[198, 18, 0, 1]);
    f.extend_from_slice(opts);
    // UDP (or the first 8 bytes of whatever `proto` is).
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&5060u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// IPv6 frame with a hop-by-hop header (8 bytes) or a fragment header before UDP.
fn v6_ext(ext: u8) -> Vec<u8> {
    let mut f = udp("[2001:2:0:1::7]:40000", "[2001:2::1]:5060", &[]);
    // Insert an 8-byte extension header after the 40-byte IPv6 header.
    let ip = 14;
    let next = f[ip + 6];
    f[ip + 6] = ext;
    let plen = u16::from_be_bytes([f[ip + 4], f[ip + 5]]) + 8;
    f[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
    let hdr = [next, 0, 0, 0, 0, 0, 0, 0];
    f.splice(ip + 40..ip + 40, hdr);
    f
}

fn arp() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&[198, 18, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[198, 18, 0, 1]);
    f
}

fn groups() -> Vec<GroupPrefix> {
    vec![
        GroupPrefix {
            prefix: "198.18.0.0/16".parse().unwrap(),
            group: GroupSpec {
                group_id: 1,
                class: 0,
                ..Default::default()
            },
        },
        // More specific prefix wins: /24 inside the /16.
        GroupPrefix {
            prefix: "198.18.2.0/24".parse().unwrap(),
            group: GroupSpec {
                group_id: 2,
                class: 1,
                rate_pps: 1,
                burst: 2,
                drop: false,
            },
        },
        GroupPrefix {
            prefix: "198.18.3.0/24".parse().unwrap(),
            group: GroupSpec {
                group_id: 4,
                class: 3,
                drop: true,
                ..Default::default()
            },
        },
        GroupPrefix {
            prefix: "2001:2:0:1::/64".parse().unwrap(),
            group: GroupSpec {
                group_id: 3,
                class: 2,
                ..Default::default()
            },
        },
    ]
}

fn meta_of(m: &[u8]) -> Option<XdpMeta> {
    if m.len() != 8 {
        return None;
    }
    Some(XdpMeta {
        magic: u32::from_ne_bytes(m[0..4].try_into().unwrap()),
        group_id: u16::from_ne_bytes(m[4..6].try_into().unwrap()),
        class: m[6],
        flags: m[7],
    })
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    verdict: Verdict,
    /// (group id, class, flags) expected in the metadata, for classified rows.
    meta: Option<(u16, u8, u8)>,
}

fn run_case(dp: &XdpDataplane, c: &Case) {
    let before = dp.read_counters().unwrap();
    let out = dp
        .test_run(&c.frame)
        .unwrap_or_else(|e| panic!("{}: test_run: {e}", c.name));
    let after = dp.read_counters().unwrap();
    assert_eq!(out.action, c.action, "{}: action", c.name);
    for v in Verdict::ALL {
        let d = after.get(v) - before.get(v);
        let want = u64::from(v == c.verdict || v == Verdict::Seen);
        assert_eq!(d, want, "{}: counter {} moved by {d}", c.name, v.name());
    }
    match c.meta {
        Some((gid, class, flags)) => {
            let m = meta_of(&out.meta)
                .unwrap_or_else(|| panic!("{}: no metadata ({:?})", c.name, out.meta));
            assert_eq!(m.magic, META_MAGIC, "{}: magic", c.name);
            assert_eq!(
                (m.group_id, m.class, m.flags),
                (gid, class, flags),
                "{}",
                c.name
            );
            assert_eq!(out.packet, c.frame, "{}: packet unchanged", c.name);
        }
        None => assert!(out.meta.is_empty(), "{}: unexpected metadata", c.name),
    }
}

fn params() -> XdpParams {
    XdpParams {
        sip_ports: vec![5060, 5080],
        ..XdpParams::default()
    }
}

#[test]
fn fixture_table() {
    if !require_privileged("xdp_prog::fixture_table") {
        return;
    }
    let mut dp = XdpDataplane::open(&params(), &groups()).expect("load XDP program");
    dp.deny("198.18.1.66".parse().unwrap(), None).unwrap();

    let v4 = udp("198.18.1.7:40000", "198.18.0.1:5060", &[]);
    let vlan1 = udp("198.18.1.7:40000", "198.18.0.1:5060", &[(0x8100, 10)]);
    let vlan2 = udp(
        "198.18.1.7:40000",
        "198.18.0.1:5080",
        &[(0x88a8, 10), (0x8100, 20)],
    );
    let mut vlan3 = udp(
        "198.18.1.7:40000",
        "198.18.0.1:5060",
        &[(0x88a8, 10), (0x8100, 20)],
    );
    // A third tag: the program stops after two and sees a VLAN ethertype → not IP.
    vlan3.splice(20..20, [0x81, 0x00, 0x00, 0x1e]);
    let v6 = udp("[2001:2:0:1::7]:40000", "[2001:2::1]:5060", &[]);
    let v6_unclassified = udp("[2001:2:0:9::7]:40000", "[2001:2::1]:5060", &[]);

    let mut short_udp_len = v4.clone();
    short_udp_len[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&7u16.to_be_bytes());
    let mut bad_version = v4.clone();
    bad_version[14] = 0x65;
    let mut v6_bad_version = v6.clone();
    v6_bad_version[14] = 0x45;

    let src_g1 = [198, 18, 1, 7];
    let rows = vec![
        Case {
            name: "v4 classified",
            frame: v4.clone(),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((1, 0, 0)),
        },
        Case {
            name: "v4 single VLAN",
            frame: vlan1,
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((1, 0, 2)),
        },
        Case {
            name: "v4 double VLAN, 2nd SIP port",
            frame: vlan2,
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((1, 0, 2)),
        },
        Case {
            name: "three VLAN tags",
            frame: vlan3,
            action: XDP_PASS,
            verdict: Verdict::PassNotIp,
            meta: None,
        },
        Case {
            name: "v6 classified",
            frame: v6.clone(),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((3, 2, 1)),
        },
        Case {
            name: "v6 hop-by-hop then UDP",
            frame: v6_ext(0),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((3, 2, 1)),
        },
        Case {
            name: "v6 fragment header",
            frame: v6_ext(44),
            action: XDP_PASS,
            verdict: Verdict::PassFragment,
            meta: None,
        },
        Case {
            name: "v6 unclassified",
            frame: v6_unclassified,
            action: XDP_DROP,
            verdict: Verdict::DropUnclassified,
            meta: None,
        },
        Case {
            name: "v4 with options (IHL 6)",
            frame: v4_raw(src_g1, 17, &[1, 1, 1, 0], 0, None),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((1, 0, 0)),
        },
        Case {
            name: "v4 IHL 4",
            frame: v4_raw(src_g1, 17, &[], 0, Some(4)),
            action: XDP_DROP,
            verdict: Verdict::DropMalformed,
            meta: None,
        },
        Case {
            name: "v4 IHL 15 beyond the frame",
            frame: v4_raw(src_g1, 17, &[], 0, Some(15))[..14 + 40].to_vec(),
            action: XDP_DROP,
            verdict: Verdict::DropMalformed,
            meta: None,
        },
        Case {
            name: "v4 bad version",
            frame: bad_version,
            action: XDP_DROP,
            verdict: Verdict::DropMalformed,
            meta: None,
        },
        Case {
            name: "v6 bad version",
            frame: v6_bad_version,
            action: XDP_DROP,
            verdict: Verdict::DropMalformed,
            meta: None,
        },
        Case {
            name: "UDP length < 8",
            frame: short_udp_len,
            action: XDP_DROP,
            verdict: Verdict::DropMalformed,
            meta: None,
        },
        Case {
            name: "ARP",
            frame: arp(),
            action: XDP_PASS,
            verdict: Verdict::PassNotIp,
            meta: None,
        },
        Case {
            name: "TCP to 5060",
            frame: v4_raw(src_g1, 6, &[], 0, None),
            action: XDP_PASS,
            verdict: Verdict::PassNotUdp,
            meta: None,
        },
        Case {
            name: "UDP to 53",
            frame: udp("198.18.1.7:40000", "198.18.0.1:53", &[]),
            action: XDP_PASS,
            verdict: Verdict::PassNonSip,
            meta: None,
        },
        Case {
            name: "v4 first fragment (MF)",
            frame: v4_raw(src_g1, 17, &[], 0x2000, None),
            action: XDP_PASS,
            verdict: Verdict::PassFragment,
            meta: None,
        },
        Case {
            name: "v4 later fragment (offset)",
            frame: v4_raw(src_g1, 17, &[], 0x0010, None),
            action: XDP_PASS,
            verdict: Verdict::PassFragment,
            meta: None,
        },
        Case {
            name: "v4 DF is not a fragment",
            frame: v4_raw(src_g1, 17, &[], 0x4000, None),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((1, 0, 0)),
        },
        Case {
            name: "v4 unclassified",
            frame: udp("198.19.0.9:40000", "198.18.0.1:5060", &[]),
            action: XDP_DROP,
            verdict: Verdict::DropUnclassified,
            meta: None,
        },
        Case {
            name: "denied source",
            frame: udp("198.18.1.66:40000", "198.18.0.1:5060", &[]),
            action: XDP_DROP,
            verdict: Verdict::DropDenied,
            meta: None,
        },
        Case {
            name: "group with drop flag",
            frame: udp("198.18.3.1:40000", "198.18.0.1:5060", &[]),
            action: XDP_DROP,
            verdict: Verdict::DropGroup,
            meta: None,
        },
        // Token bucket: rate 1/s, burst 2 → two pass, the third within the same second drops.
        Case {
            name: "bucket 1/2",
            frame: udp("198.18.2.9:40000", "198.18.0.1:5060", &[]),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((2, 1, 0)),
        },
        Case {
            name: "bucket 2/2",
            frame: udp("198.18.2.9:40001", "198.18.0.1:5060", &[]),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((2, 1, 0)),
        },
        Case {
            name: "bucket over budget",
            frame: udp("198.18.2.9:40002", "198.18.0.1:5060", &[]),
            action: XDP_DROP,
            verdict: Verdict::DropRate,
            meta: None,
        },
        // Another source in the same group has its own bucket.
        Case {
            name: "bucket per source",
            frame: udp("198.18.2.10:40000", "198.18.0.1:5060", &[]),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((2, 1, 0)),
        },
    ];
    for c in &rows {
        run_case(&dp, c);
    }

    // Truncated at each layer (frames shorter than an Ethernet header are refused by the
    // kernel's test-run itself, so cuts start at 14).
    let vlan_v6 = udp("[2001:2:0:1::7]:40000", "[2001:2::1]:5060", &[(0x8100, 5)]);
    for (name, frame, cuts) in [
        ("v4", &v4, vec![14, 14 + 1, 14 + 19, 14 + 20, 14 + 27]),
        ("v6", &v6, vec![14, 14 + 39, 14 + 40, 14 + 47]),
        ("vlan+v6", &vlan_v6, vec![14, 14 + 3, 18 + 20, 18 + 47]),
    ] {
        for cut in cuts {
            run_case(
                &dp,
                &Case {
                    name: Box::leak(format!("{name} truncated at {cut}").into_boxed_str()),
                    frame: frame[..cut].to_vec(),
                    action: XDP_DROP,
                    verdict: Verdict::DropMalformed,
                    meta: None,
                },
            );
        }
    }

    // Per-group counters saw the classified verdicts.
    let snap = dp.read_counters().unwrap();
    assert_eq!(snap.group(2, Verdict::DropRate), 1);
    assert_eq!(snap.group(2, Verdict::RedirectFailedPass), 3);
    assert_eq!(snap.group(4, Verdict::DropGroup), 1);
    // The denied source (198.18.1.66) is dropped before classification, yet attributed to
    // its group.
    assert_eq!(snap.group(1, Verdict::DropDenied), 1);
    assert!(snap.group(1, Verdict::RedirectFailedPass) >= 5);
    assert_eq!(snap.group(3, Verdict::RedirectFailedPass), 2);

    // Policy switches: unclassified → pass; redirect failure → drop.
    dp.set_params(&XdpParams {
        unclassified: UnclassifiedPolicy::Pass,
        redirect_fallback: RedirectFallback::Drop,
        ..params()
    })
    .unwrap();
    run_case(
        &dp,
        &Case {
            name: "unclassified, pass policy",
            frame: udp("198.19.0.9:40000", "198.18.0.1:5060", &[]),
            action: XDP_PASS,
            verdict: Verdict::PassUnclassified,
            meta: None,
        },
    );
    run_case(
        &dp,
        &Case {
            name: "no socket, drop fallback",
            frame: v4.clone(),
            action: XDP_DROP,
            verdict: Verdict::RedirectFailedDrop,
            meta: Some((1, 0, 0)),
        },
    );
    // Metadata off.
    dp.set_params(&XdpParams {
        write_metadata: false,
        ..params()
    })
    .unwrap();
    run_case(
        &dp,
        &Case {
            name: "metadata disabled",
            frame: v4.clone(),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: None,
        },
    );
    // Port no longer configured.
    dp.set_params(&XdpParams {
        sip_ports: vec![5080],
        ..params()
    })
    .unwrap();
    run_case(
        &dp,
        &Case {
            name: "5060 not configured",
            frame: v4.clone(),
            action: XDP_PASS,
            verdict: Verdict::PassNonSip,
            meta: None,
        },
    );
    dp.set_params(&params()).unwrap();

    // Deny: lifting it restores the group; a timed entry expires.
    dp.allow("198.18.1.66".parse().unwrap()).unwrap();
    run_case(
        &dp,
        &Case {
            name: "allowed again",
            frame: udp("198.18.1.66:40000", "198.18.0.1:5060", &[]),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((1, 0, 0)),
        },
    );
    dp.deny(
        "2001:2:0:1::7".parse().unwrap(),
        Some(Duration::from_millis(200)),
    )
    .unwrap();
    run_case(
        &dp,
        &Case {
            name: "v6 denied (timed)",
            frame: v6.clone(),
            action: XDP_DROP,
            verdict: Verdict::DropDenied,
            meta: None,
        },
    );
    std::thread::sleep(Duration::from_millis(250));
    run_case(
        &dp,
        &Case {
            name: "v6 deny expired",
            frame: v6.clone(),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((3, 2, 1)),
        },
    );

    // Reload: the /24 is removed, its sources fall back to the /16 (group 1).
    let reloaded: Vec<GroupPrefix> = groups()
        .into_iter()
        .filter(|g| g.group.group_id != 2)
        .collect();
    dp.update_groups(&reloaded).unwrap();
    run_case(
        &dp,
        &Case {
            name: "after reload, /16 wins",
            frame: udp("198.18.2.9:40000", "198.18.0.1:5060", &[]),
            action: XDP_PASS,
            verdict: Verdict::RedirectFailedPass,
            meta: Some((1, 0, 0)),
        },
    );
}

#[test]
fn bucket_refills_over_time() {
    if !require_privileged("xdp_prog::bucket_refills_over_time") {
        return;
    }
    let g = vec![GroupPrefix {
        prefix: "198.18.0.0/15".parse().unwrap(),
        group: GroupSpec {
            group_id: 9,
            class: 0,
            rate_pps: 20,
            burst: 1,
            drop: false,
        },
    }];
    let dp = XdpDataplane::open(&params(), &g).unwrap();
    let f = udp("198.18.9.9:40000", "198.18.0.1:5060", &[]);
    assert_eq!(dp.test_run(&f).unwrap().action, XDP_PASS);
    assert_eq!(dp.test_run(&f).unwrap().action, XDP_DROP, "burst 1 spent");
    // 20 pps → one token per 50 ms.
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(dp.test_run(&f).unwrap().action, XDP_PASS, "refilled");
    assert_eq!(dp.test_run(&f).unwrap().action, XDP_DROP);
    let s = dp.read_counters().unwrap();
    assert_eq!(s.group(9, Verdict::DropRate), 2);
}

#[test]
fn bad_parameters_are_refused() {
    // No privileges needed: validation happens before anything touches the kernel... except
    // `open` loads first when parameters are fine, so only the invalid cases are tried here.
    let bad = GroupPrefix {
        prefix: "198.18.0.0/15".parse().unwrap(),
        group: GroupSpec {
            group_id: 5000,
            ..Default::default()
        },
    };
    match XdpDataplane::open(&params(), &[bad]) {
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains("group id") || s.contains("EPERM") || s.contains("permission"),
                "{s}"
            );
        }
        Ok(_) => panic!("group id 5000 accepted"),
    }
}

/// Kernel-measured cost of the program per packet (BPF_PROG_TEST_RUN with repeat). Prints
/// the numbers; asserts only that the repeated runs take the expected path.
#[test]
fn program_cost_per_packet() {
    if !require_privileged("xdp_prog::program_cost_per_packet") {
        return;
    }
    let g: Vec<GroupPrefix> = (0..200u16)
        .map(|i| GroupPrefix {
            prefix: format!("198.18.{}.0/24", i).parse().unwrap(),
            group: GroupSpec {
                group_id: i % 64,
                class: (i % 8) as u8,
                ..Default::default()
            },
        })
        .chain([GroupPrefix {
            prefix: "198.19.0.0/16".parse().unwrap(),
            group: GroupSpec {
                group_id: 100,
                class: 1,
                rate_pps: 1_000_000,
                burst: 1_000_000,
                drop: false,
            },
        }])
        .collect();
    let dp = XdpDataplane::open(&params(), &g).unwrap();
    for (name, frame, action) in [
        (
            "classified v4 (LPM, meta, redirect attempt)",
            udp("198.18.77.7:40000", "198.18.0.1:5060", &[]),
            XDP_PASS,
        ),
        (
            "classified v4 + token bucket",
            udp("198.19.1.1:40000", "198.18.0.1:5060", &[]),
            XDP_PASS,
        ),
        (
            "unclassified v4 (drop)",
            udp("198.20.0.1:40000", "198.18.0.1:5060", &[]),
            XDP_DROP,
        ),
        (
            "non-SIP UDP (pass)",
            udp("198.18.77.7:40000", "198.18.0.1:53", &[]),
            XDP_PASS,
        ),
        ("ARP (pass)", arp(), XDP_PASS),
    ] {
        let (a, avg) = dp.test_run_repeat(&frame, 200_000).unwrap();
        assert_eq!(a, action, "{name}");
        eprintln!("xdp cost: {name}: {} ns/packet", avg.as_nanos());
    }
}
