//! The `turnstile` binary in XDP mode, end to end, on a veth pair between two network
//! namespaces this test creates (traffic stays inside 198.18.0.0/24):
//! the daemon runs in namespace A attached to its veth end; a phone in namespace B registers;
//! the REGISTER is redirected by XDP into the group's AF_XDP socket, answered by the engine and
//! the 200 goes back in the request's own frame on the XSK TX ring.
//!
//! Needs root (namespaces, BPF); skipped with a message otherwise.

use std::fs::File;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_turnstile");

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Netns {
    a: String,
    b: String,
    if_a: String,
    if_b: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let if_b = format!("tsd{tag}b");
        let n = Netns {
            a: format!("tsdx-{tag}-a"),
            b: format!("tsdx-{tag}-b"),
            if_a: format!("tsd{tag}a"),
            if_b: if_b.clone(),
        };
        ip(&["netns", "add", &n.a])?;
        ip(&["netns", "add", &n.b])?;
        ip(&[
            "-n", &n.a, "link", "add", &n.if_a, "type", "veth", "peer", "name", &if_b, "netns",
            &n.b,
        ])?;
        for (ns, ifn, addr) in [
            (&n.a, &n.if_a, "198.18.0.1/24"),
            (&n.b, &if_b, "198.18.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", ifn])?;
            ip(&["-n", ns, "link", "set", ifn, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // A second phone address, for the rate-limited group.
        ip(&["-n", &n.b, "addr", "add", "198.18.0.3/24", "dev", &n.if_b])?;
        Ok(n)
    }

    /// Runs `f` on a thread inside namespace `ns`.
    fn run_in<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = File::open(&path).unwrap();
                // SAFETY: valid netns fd; affects only this thread.
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

fn privileged() -> bool {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !has_ip {
        eprintln!("skipping: needs root and iproute2");
    }
    root && has_ip
}

fn register(me: std::net::SocketAddr, user: &str, cseq: u32) -> String {
    format!(
        "REGISTER sip:example.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-x{user}{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.test>;tag=t{cseq}\r\n\
         To: <sip:{user}@example.test>\r\n\
         Call-ID: {user}-xdp@test\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{me}>\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn run_xdp_mode(xdp_mode: &str) {
    if !privileged() {
        return;
    }
    let ns = match Netns::create() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("skipping: cannot create namespaces: {e}");
            return;
        }
    };
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("xdp.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
domain = "example.test"
listen = ["198.18.0.1:5060"]
workers = 1
state_dir = "state"

[dataplane]
mode = "xdp"
interface = "{}"
xdp_mode = "{xdp_mode}"

[[ip_group]]
name = "phones"
type = "user"
sources = ["198.18.0.0/24"]
auth = "none"

# One source that may send only a trickle: shed per source at the NIC.
[[ip_group]]
name = "limited"
type = "user"
sources = ["198.18.0.3/32"]
auth = "none"
source_rate_pps = 1
source_burst = 2
"#,
            ns.if_a
        ),
    )
    .unwrap();

    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.a,
            BIN,
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = d.path().join("state/turnstile.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("daemon exited early ({st}): {err}");
        }
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The phone in namespace B registers (retrying: the first frames may race the attach).
    let resp = ns.run_in(&ns.b, || {
        let s = UdpSocket::bind("198.18.0.2:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let me = s.local_addr().unwrap();
        let mut buf = [0u8; 4096];
        for attempt in 1..=10 {
            s.send_to(register(me, "alice", attempt).as_bytes(), "198.18.0.1:5060")
                .unwrap();
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                assert_eq!(from.to_string(), "198.18.0.1:5060");
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        String::new()
    });

    // 30 REGISTERs in a burst from the rate-limited source: only its burst gets through.
    let limited_answers = ns.run_in(&ns.b, || {
        let s = UdpSocket::bind("198.18.0.3:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let me = s.local_addr().unwrap();
        for i in 1..=30 {
            s.send_to(register(me, "bob", i).as_bytes(), "198.18.0.1:5060")
                .unwrap();
        }
        let mut buf = [0u8; 4096];
        let mut n = 0;
        while s.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    });

    let stats = Command::new(BIN)
        .args([
            "show",
            "stats",
            "--json",
            "--socket",
            sock.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let groups = Command::new(BIN)
        .args([
            "show",
            "groups",
            "--json",
            "--socket",
            sock.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let regs = Command::new(BIN)
        .args([
            "show",
            "registrations",
            "--json",
            "--socket",
            sock.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    // SAFETY: signalling our own child (ip netns exec execs the daemon in place).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut log = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();

    assert!(
        resp.starts_with("SIP/2.0 200"),
        "no 200 from the daemon: {resp:?}\n{log}"
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["mode"], "xdp", "{stats}");
    assert!(
        stats["dataplane"]["xsk_rx"].as_u64().unwrap() >= 1,
        "request did not come through AF_XDP: {stats}"
    );
    assert!(
        stats["dataplane"]["xsk_tx"].as_u64().unwrap() >= 1,
        "reply did not leave through AF_XDP: {stats}"
    );
    assert!(
        stats["xdp"]["redirect"].as_u64().unwrap() >= 1,
        "XDP verdict counters: {stats}"
    );
    let groups: serde_json::Value = serde_json::from_slice(&groups.stdout).unwrap();
    assert!(
        groups["groups"][0]["xdp"]["redirect"].as_u64().unwrap() >= 1,
        "{groups}"
    );
    assert!(
        (1..=4).contains(&limited_answers),
        "rate-limited source got {limited_answers} answers"
    );
    assert!(
        groups["groups"][1]["xdp"]["drop_rate"].as_u64().unwrap() >= 25,
        "{groups}"
    );
    assert_eq!(groups["groups"][0]["xdp"]["drop_rate"], 0, "{groups}");
    let regs: serde_json::Value = serde_json::from_slice(&regs.stdout).unwrap();
    let alice = regs["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["aor"] == "sip:alice@example.test")
        .unwrap_or_else(|| panic!("alice not registered: {regs}"));
    assert_eq!(
        alice["source"].as_str().unwrap().split(':').next(),
        Some("198.18.0.2")
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("xdp data plane attached"), "{log}");
    assert!(Path::new(&d.path().join("state/registrations.bin")).exists());
}

#[test]
fn xdp_mode_registers_through_af_xdp_driver() {
    run_xdp_mode("driver");
}

#[test]
fn xdp_mode_registers_through_af_xdp_skb() {
    run_xdp_mode("skb");
}
