//! The real binary over real UDP on loopback: RFC 4475 torture messages with liveness checks,
//! retransmission absorption, location routing of a call between two registered phones, and
//! OPTIONS keep-alives to the server itself.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use turnstile_e2e::daemon::{client, recv_text, status, Daemon, Setup};
use turnstile_e2e::rfc4475::{load, torture_dir, CASES};

/// A loopback address of our own so the fixed ports RFC 3261 §18.2.2 sends to (the Via
/// port, 5060 by default, 5050 for quotbal) do not collide with other tests or services.
fn own_loopback() -> String {
    format!(
        "127.0.{}.{}",
        10 + std::process::id() % 200,
        10 + (std::process::id() / 200) % 200
    )
}

/// The first value of a header (any of its names), from the header section.
fn header(msg: &str, names: &[&str]) -> Option<String> {
    msg.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        names
            .iter()
            .any(|x| n.eq_ignore_ascii_case(x))
            .then(|| v.trim().to_string())
    })
}

/// The Call-ID of a message (long or compact form), to match answers to what was sent.
fn call_id(msg: &str) -> Option<String> {
    header(msg, &["call-id", "i"])
}

/// The first final response whose Call-ID is `cid` (any, when the request had none).
fn final_response(socks: &[&UdpSocket], cid: Option<&str>, wait: Duration) -> Option<u16> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        for s in socks {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                if cid.is_some() && call_id(&text).as_deref() != cid {
                    eprintln!("ignoring an answer to another request:\n{text}");
                    continue;
                }
                match status(&text) {
                    Some(c) if c >= 200 => return Some(c),
                    _ => {}
                }
            }
        }
    }
    None
}

#[test]
fn rfc4475_torture_over_udp_and_still_serving() {
    assert!(
        torture_dir().is_dir(),
        "RFC 4475 messages missing at {}",
        torture_dir().display()
    );
    let d = Daemon::start(Setup {
        domain: "example.com".into(),
        ..Setup::default()
    });
    let ip = own_loopback();
    let socks: Vec<UdpSocket> = [5060u16, 5050]
        .iter()
        .map(|p| {
            let s = UdpSocket::bind(format!("{ip}:{p}")).expect("bind own loopback address");
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            s
        })
        .collect();
    let refs: Vec<&UdpSocket> = socks.iter().collect();
    let mut failures = Vec::new();
    for case in CASES {
        let want = case.expected_for("example.com");
        let data = load(case.file);
        let cid = call_id(&String::from_utf8_lossy(&data));
        socks[0].send_to(&data, d.addr()).unwrap();
        let wait = if want.codes().is_empty() {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(5)
        };
        let got = final_response(&refs, cid.as_deref(), wait);
        if !want.accepts(got) {
            failures.push(format!("{}: got {got:?}, want {want:?}", case.file));
        }
        // Each case starts from an empty location service, as in the engine-level test:
        // a REGISTER case (cparam01/02, regescrt…) would otherwise turn the next INVITE to
        // the same user into a proxied request instead of its 404/480.
        let text = String::from_utf8_lossy(&data);
        if text.starts_with("REGISTER ") {
            let to = header(&text, &["to", "t"]).unwrap_or_default();
            let star = format!(
                "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK-clean-{f};rport\r\n\
From: {to};tag=clean\r\nTo: {to}\r\nCall-ID: clean-{f}\r\nCSeq: 1 REGISTER\r\nContact: *\r\nExpires: 0\r\n\
Content-Length: 0\r\n\r\n",
                f = case.file
            );
            socks[0].send_to(star.as_bytes(), d.addr()).unwrap();
            let _ = final_response(
                &refs,
                Some(&format!("clean-{}", case.file)),
                Duration::from_secs(5),
            );
            assert_eq!(d.bindings(), 0, "cleanup after {}", case.file);
        }
    }
    // Still serving: OPTIONS to the server and a REGISTER.
    let opts = format!(
        "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK-alive;rport\r\n\
From: <sip:p@example.com>;tag=1\r\nTo: <sip:example.com>\r\nCall-ID: alive\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    socks[0].send_to(opts.as_bytes(), d.addr()).unwrap();
    assert_eq!(
        final_response(&refs, Some("alive"), Duration::from_secs(2)),
        Some(200),
        "server stopped answering"
    );
    assert!(
        failures.is_empty(),
        "{} of {} wrong over UDP:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    assert!(d.stop());
}

/// Sends a REGISTER from `phone` and returns what was sent (to replay it).
fn register(
    phone: &UdpSocket,
    server: SocketAddr,
    user: &str,
    branch: &str,
    cseq: u32,
    expires: u32,
) -> String {
    let me = phone.local_addr().unwrap();
    let msg = format!(
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{user}@example.test>;tag=t-{user}\r\nTo: <sip:{user}@example.test>\r\nCall-ID: reg-{user}@{me}\r\n\
CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{me}>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send_to(msg.as_bytes(), server).unwrap();
    msg
}

#[test]
fn retransmitted_register_is_answered_identically_once_applied() {
    let d = Daemon::start(Setup::default());
    let phone = client("127.0.0.1:0");
    let req = register(&phone, d.addr(), "alice", "retx1", 1, 600);
    let (first, _) = recv_text(&phone).expect("200 OK");
    assert_eq!(status(&first), Some(200), "{first}");
    phone.send_to(req.as_bytes(), d.addr()).unwrap();
    let (again, _) = recv_text(&phone).expect("answer to the retransmission");
    assert_eq!(first, again, "same bytes for the retransmission");
    let s = d.show(&["stats"]);
    assert_eq!(s["engine"]["register_ok"].as_u64(), Some(1));
    assert_eq!(s["engine"]["retransmissions_absorbed"].as_u64(), Some(1));
    assert!(first.contains("Date: "), "{first}");
    assert!(
        first.contains(&format!("rport={}", phone.local_addr().unwrap().port())),
        "{first}"
    );
}

#[test]
fn call_between_registered_phones_is_routed_and_answered() {
    // A users list (so "known user, no binding" is 480) while the group does not challenge.
    let d = Daemon::start(Setup {
        users_list_only: true,
        ..Setup::default()
    });
    let alice = client("127.0.0.1:0");
    let bob = client("127.0.0.1:0");
    register(&alice, d.addr(), "alice", "ra", 1, 600);
    assert_eq!(recv_text(&alice).and_then(|(t, _)| status(&t)), Some(200));

    // OPTIONS keep-alive to the server itself.
    let b = bob.local_addr().unwrap();
    let opts = format!(
        "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {b};branch=z9hG4bKka1;rport\r\nFrom: <sip:bob@example.test>;tag=k\r\n\
To: <sip:example.test>\r\nCall-ID: ka1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    bob.send_to(opts.as_bytes(), d.addr()).unwrap();
    assert_eq!(recv_text(&bob).and_then(|(t, _)| status(&t)), Some(200));

    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let invite = format!(
        "INVITE sip:alice@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {b};branch=z9hG4bKinv1;rport\r\nMax-Forwards: 70\r\n\
From: <sip:bob@example.test>;tag=b1\r\nTo: <sip:alice@example.test>\r\nCall-ID: call1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:bob@{b}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    bob.send_to(invite.as_bytes(), d.addr()).unwrap();
    let (fwd, from) = recv_text(&alice).expect("INVITE reaches alice");
    assert_eq!(from, d.addr());
    assert!(
        fwd.starts_with(&format!(
            "INVITE sip:alice@{} SIP/2.0\r\n",
            alice.local_addr().unwrap()
        )),
        "{fwd}"
    );
    assert!(fwd.contains("Max-Forwards: 69\r\n"), "{fwd}");
    assert!(fwd.ends_with(sdp), "body intact: {fwd}");
    // Alice answers with the Vias she got; the server strips its own and relays to bob.
    let vias: Vec<&str> = fwd.lines().filter(|l| l.starts_with("Via: ")).collect();
    assert_eq!(vias.len(), 2, "{fwd}");
    let ok = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\nFrom: <sip:bob@example.test>;tag=b1\r\nTo: <sip:alice@example.test>;tag=a1\r\n\
Call-ID: call1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{}>\r\nContent-Length: 0\r\n\r\n",
        vias[0],
        vias[1],
        alice.local_addr().unwrap()
    );
    alice.send_to(ok.as_bytes(), d.addr()).unwrap();
    let (resp, _) = recv_text(&bob).expect("200 relayed to bob");
    assert_eq!(status(&resp), Some(200), "{resp}");
    assert_eq!(
        resp.lines().filter(|l| l.starts_with("Via: ")).count(),
        1,
        "our Via removed: {resp}"
    );
    assert!(resp.contains("branch=z9hG4bKinv1"));

    // Unknown user: 404; known user without a binding: 480.
    for (user, code) in [("nobody", 404), ("bob", 480)] {
        let inv = invite
            .replace("alice@example.test", &format!("{user}@example.test"))
            .replace("z9hG4bKinv1", &format!("z9hG4bK{user}"));
        bob.send_to(inv.as_bytes(), d.addr()).unwrap();
        assert_eq!(
            recv_text(&bob).and_then(|(t, _)| status(&t)),
            Some(code),
            "{user}"
        );
    }
}
