//! The `turnstile` binary in socket mode, on loopback only (127.0.0.0/8):
//! - the deny list: repeated digest failures from one source silence it, others still served;
//! - flood isolation (functional): one group floods, the other group's registrations all
//!   succeed (with one retransmission, as a SIP UA would);
//! - SIGHUP reload: live-changeable settings applied, an invalid config rejected and the
//!   running one kept.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{free_udp_port, serial, Daemon, BIN};

fn register_msg(me: SocketAddr, user: &str, cseq: u32, authz: Option<&str>) -> String {
    let authz = authz
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:example.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-{user}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.test>;tag=t{cseq}\r\n\
         To: <sip:{user}@example.test>\r\n\
         Call-ID: {user}-call@test\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{me}>\r\n\
         {authz}\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Sends `msg` and waits up to `wait` for one answer.
fn transact(s: &UdpSocket, to: SocketAddr, msg: &str, wait: Duration) -> Option<String> {
    s.send_to(msg.as_bytes(), to).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    s.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `Authorization` answering the first challenge in `resp`, with `password`.
fn authorization(resp: &str, user: &str, password: &str, nc: u32) -> String {
    let value = resp
        .lines()
        .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .unwrap_or_else(|| panic!("no challenge in {resp}"));
    let ch = turnstile_core::auth::parse_challenge(value.trim()).expect("challenge parses");
    turnstile_core::auth::build_authorization(
        &ch,
        user,
        password,
        "REGISTER",
        "sip:example.test",
        nc,
        "c0ffee",
    )
    .expect("supported algorithm")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    std::fs::write(
        dir.join("users.txt"),
        "alice:alice-secret\nbob:bob-secret\n",
    )
    .unwrap();
    let p = dir.join("turnstile.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn deny_config(port: u16, deny_after: u32, weight: u32) -> String {
    format!(
        r#"[server]
domain = "example.test"
listen = ["127.0.0.1:{port}"]
workers = 1
state_dir = "state"

[auth]
users_file = "users.txt"
deny_after = {deny_after}
deny_window = 60
deny_seconds = 600

[[ip_group]]
name = "phones"
type = "user"
sources = ["127.0.0.0/9"]
auth = "local"
weight = {weight}

[[ip_group]]
name = "others"
type = "user"
sources = ["127.128.0.0/9"]
auth = "local"
"#
    )
}

#[test]
fn repeated_auth_failures_deny_the_source_only() {
    let _serial = serial();
    let port = free_udp_port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), &deny_config(port, 3, 1));
    let daemon = Daemon::start(&cfg);
    let wait = Duration::from_secs(5);

    // 127.0.0.21 guesses alice's password three times (one challenge, nc 1..3).
    let bad = UdpSocket::bind("127.0.0.21:0").unwrap();
    let me = bad.local_addr().unwrap();
    let ch = transact(&bad, server, &register_msg(me, "alice", 1, None), wait).unwrap();
    assert!(ch.starts_with("SIP/2.0 401"), "{ch}");
    for nc in 1..=3 {
        let a = authorization(&ch, "alice", "guess", nc);
        let r = transact(
            &bad,
            server,
            &register_msg(me, "alice", 1 + nc, Some(&a)),
            wait,
        )
        .expect("failures are still answered");
        assert!(r.starts_with("SIP/2.0 401"), "{r}");
    }
    let stats = daemon.wait_show("stats", |s| s["deny"]["denied_now"] == 1);
    assert_eq!(
        stats["deny"]["sources"][0]["source"], "127.0.0.21",
        "{stats}"
    );
    assert_eq!(stats["deny"]["deny_after"], 3);
    let left = stats["deny"]["sources"][0]["remaining_s"].as_u64().unwrap();
    assert!(left > 590 && left <= 600, "{stats}");

    // The 4th request from that source, even a correct one, gets no answer.
    let a = authorization(&ch, "alice", "alice-secret", 4);
    let r = transact(
        &bad,
        server,
        &register_msg(me, "alice", 10, Some(&a)),
        Duration::from_millis(1500),
    );
    assert_eq!(r, None, "denied source was answered");

    // Another source is served: challenged, then registered.
    let good = UdpSocket::bind("127.0.0.22:0").unwrap();
    let me = good.local_addr().unwrap();
    let ch = transact(&good, server, &register_msg(me, "bob", 1, None), wait).unwrap();
    assert!(ch.starts_with("SIP/2.0 401"), "{ch}");
    let a = authorization(&ch, "bob", "bob-secret", 1);
    let r = transact(&good, server, &register_msg(me, "bob", 2, Some(&a)), wait).unwrap();
    assert!(r.starts_with("SIP/2.0 200"), "{r}");

    let stats = daemon.wait_show("stats", |s| s["deny"]["drops"].as_u64() >= Some(1));
    assert_eq!(stats["deny"]["denials_total"], 1, "{stats}");
    assert_eq!(stats["engine"]["auth_failures"], 3, "{stats}");
    let groups = daemon.show("groups");
    assert_eq!(groups["groups"][0]["counters"]["deny_drops"], 1, "{groups}");
    let text = Command::new(BIN)
        .args(["show", "stats", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("denied sources:") && text.contains("127.0.0.21"),
        "{text}"
    );
    assert_eq!(groups["deny"]["denied_now"], 1, "{groups}");

    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("source denied") && log.contains("127.0.0.21"),
        "{log}"
    );
}

#[test]
fn deny_after_zero_never_denies() {
    let _serial = serial();
    let port = free_udp_port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), &deny_config(port, 0, 1));
    let daemon = Daemon::start(&cfg);
    let bad = UdpSocket::bind("127.0.0.23:0").unwrap();
    let me = bad.local_addr().unwrap();
    let wait = Duration::from_secs(5);
    let ch = transact(&bad, server, &register_msg(me, "alice", 1, None), wait).unwrap();
    for nc in 1..=6 {
        let a = authorization(&ch, "alice", "guess", nc);
        let r = transact(
            &bad,
            server,
            &register_msg(me, "alice", 1 + nc, Some(&a)),
            wait,
        );
        assert!(r.is_some_and(|r| r.starts_with("SIP/2.0 401")));
    }
    std::thread::sleep(Duration::from_millis(300));
    let a = authorization(&ch, "alice", "alice-secret", 7);
    let r = transact(&bad, server, &register_msg(me, "alice", 20, Some(&a)), wait).unwrap();
    assert!(r.starts_with("SIP/2.0 200"), "{r}");
    let stats = daemon.show("stats");
    assert_eq!(stats["deny"]["enabled"], false, "{stats}");
    assert_eq!(stats["deny"]["denials_total"], 0, "{stats}");
    let (status, _) = daemon.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_applies_live_settings_and_keeps_config_on_error() {
    let _serial = serial();
    let port = free_udp_port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), &deny_config(port, 5, 1));
    let daemon = Daemon::start(&cfg);
    let groups = daemon.show("groups");
    assert_eq!(groups["groups"][0]["weight"], 1);
    assert_eq!(groups["deny"]["deny_after"], 5);

    // weight 1 → 4, deny_after 5 → 2, and a prefix change (needs a restart).
    let text = deny_config(port, 2, 4).replace("127.128.0.0/9", "127.192.0.0/10");
    std::fs::write(&cfg, text).unwrap();
    daemon.signal(libc::SIGHUP);
    let groups = daemon.wait_show("groups", |g| g["groups"][0]["weight"] == 4);
    assert_eq!(groups["deny"]["deny_after"], 2, "{groups}");
    assert_eq!(
        groups["groups"][1]["sources"][0], "127.128.0.0/9",
        "prefixes are not reloaded: {groups}"
    );

    // The new deny threshold is live: two failures deny.
    let bad = UdpSocket::bind("127.0.0.31:0").unwrap();
    let me = bad.local_addr().unwrap();
    let wait = Duration::from_secs(5);
    let ch = transact(&bad, server, &register_msg(me, "alice", 1, None), wait).unwrap();
    for nc in 1..=2 {
        let a = authorization(&ch, "alice", "guess", nc);
        transact(
            &bad,
            server,
            &register_msg(me, "alice", 1 + nc, Some(&a)),
            wait,
        )
        .unwrap();
    }
    daemon.wait_show("stats", |s| s["deny"]["denied_now"] == 1);

    // An invalid config is rejected; the running one stays.
    std::fs::write(
        &cfg,
        deny_config(port, 2, 4).replace("workers = 1", "workers = -1"),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let groups = daemon.show("groups");
    assert_eq!(groups["groups"][0]["weight"], 4, "{groups}");
    assert_eq!(groups["deny"]["deny_after"], 2, "{groups}");
    // Still serving.
    let other = UdpSocket::bind("127.0.0.32:0").unwrap();
    let me = other.local_addr().unwrap();
    let r = transact(&other, server, &register_msg(me, "bob", 1, None), wait).unwrap();
    assert!(r.starts_with("SIP/2.0 401"), "{r}");

    // Turning the deny list off lifts the deny.
    std::fs::write(&cfg, deny_config(port, 0, 4)).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_show("stats", |s| s["deny"]["denied_now"] == 0);
    let me = bad.local_addr().unwrap();
    let r = transact(&bad, server, &register_msg(me, "alice", 9, None), wait);
    assert!(r.is_some_and(|r| r.starts_with("SIP/2.0 401")));

    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(
        log.contains("restart required for ip_group \"others\" sources"),
        "{log}"
    );
    assert!(log.contains("workers = -1 is out of range"), "{log}");
    assert!(log.contains("configuration reload rejected"), "{log}");
}

/// Answers (Call-ID → first status line) collected on `s` until `until`.
fn collect(s: &UdpSocket, ok: &mut HashSet<String>, until: Instant) {
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if !text.starts_with("SIP/2.0 200") {
                continue;
            }
            if let Some(id) = text.lines().find_map(|l| l.strip_prefix("Call-ID: ")) {
                ok.insert(id.trim().to_string());
            }
        }
    }
}

/// Group A (127.0.0.0/25) floods; group B (127.0.0.128/25) registers 200 users, retrying
/// once after 1 s as a UA would. All 200 must succeed. One worker: the contention is real.
#[test]
fn flood_from_one_group_does_not_starve_another() {
    let _serial = serial();
    let port = free_udp_port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(
        d.path(),
        &format!(
            r#"[server]
domain = "example.test"
listen = ["127.0.0.1:{port}"]
workers = 1
state_dir = "state"

[dataplane]
queue_depth = 1024

[[ip_group]]
name = "a"
type = "user"
sources = ["127.0.0.0/25"]
auth = "none"

[[ip_group]]
name = "b"
type = "user"
sources = ["127.0.0.128/25"]
auth = "none"
"#
        ),
    );
    let daemon = Daemon::start(&cfg);

    // The flood: 2 threads, at most 200k datagrams or 5 s in all.
    const FLOOD_MAX: u64 = 200_000;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..2)
        .map(|t| {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let s = UdpSocket::bind(format!("127.0.0.{}:0", 10 + t)).unwrap();
                s.connect(server).unwrap();
                let me = s.local_addr().unwrap();
                let msgs: Vec<String> = (0..500)
                    .map(|i| register_msg(me, &format!("flood{t}x{i}"), 1, None))
                    .collect();
                // Paced to about 20k/s per thread, so the flood lasts through group B's
                // registrations (about 4 s) however fast this machine sends.
                let t0 = Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed)
                    && t0.elapsed() < Duration::from_secs(5)
                    && sent.fetch_add(1, Ordering::Relaxed) < FLOOD_MAX
                {
                    let _ = s.send(msgs[i % msgs.len()].as_bytes());
                    i += 1;
                    if i.is_multiple_of(1000) {
                        let due = Duration::from_micros(i as u64 * 50);
                        if let Some(ahead) = due.checked_sub(t0.elapsed()) {
                            std::thread::sleep(ahead);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let b = UdpSocket::bind("127.0.0.200:0").unwrap();
    let me = b.local_addr().unwrap();
    let users: Vec<String> = (0..200).map(|i| format!("b{i}")).collect();
    let mut ok = HashSet::new();
    for chunk in users.chunks(20) {
        for u in chunk {
            b.send_to(register_msg(me, u, 1, None).as_bytes(), server)
                .unwrap();
        }
        collect(&b, &mut ok, Instant::now() + Duration::from_millis(50));
    }
    collect(&b, &mut ok, Instant::now() + Duration::from_secs(1));
    let first_try = ok.len();
    let flooding_during_first_try = !flooders.iter().all(|h| h.is_finished());
    // One retransmission of what is still unanswered (same transaction).
    for u in &users {
        if !ok.contains(&format!("{u}-call@test")) {
            b.send_to(register_msg(me, u, 1, None).as_bytes(), server)
                .unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(4);
    while ok.len() < users.len() && Instant::now() < deadline {
        collect(&b, &mut ok, Instant::now() + Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for h in flooders {
        h.join().unwrap();
    }
    let groups = daemon.show("groups");
    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    eprintln!(
        "flood: {} datagrams sent; group B: {first_try}/200 on the first try, {}/200 in all; flood still running after the first try: {flooding_during_first_try}; groups: {groups}",
        sent.load(Ordering::Relaxed).min(FLOOD_MAX),
        ok.len()
    );
    assert_eq!(ok.len(), 200, "group B registrations lost under the flood");
    // The flood was real and concurrent: group A kept the worker busy.
    assert!(flooding_during_first_try);
    assert!(
        groups["groups"][0]["counters"]["rx"].as_u64().unwrap() >= 1000,
        "{groups}"
    );
}
