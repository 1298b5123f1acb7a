//! End-to-end tests of the `turnstile` binary: check-config diagnostics and exit codes,
//! run → control socket → SIGTERM → clean exit with a snapshot. Traffic goes to 127.0.0.1 only.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{free_udp_port, Daemon, BIN};

fn repo_etc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc")
}

fn turnstile(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run turnstile")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn config(port: u16, extra: &str) -> String {
    format!(
        r#"[server]
domain = "example.test"
listen = ["127.0.0.1:{port}"]
workers = 2
state_dir = "state"
snapshot_interval = 1
{extra}
[auth]
users_file = "users.txt"

[[ip_group]]
name = "phones"
type = "user"
sources = ["127.0.0.0/8"]
auth = "local"
"#
    )
}

fn setup(port: u16, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "users.txt", "alice:alice-secret\n");
    let cfg = write(d.path(), "turnstile.toml", &config(port, extra));
    (d, cfg)
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not appear at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn show_json(cfg: &Path, what: &str) -> serde_json::Value {
    let out = turnstile(&["show", what, "--json", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "show {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn shipped_config_is_valid() {
    let out = turnstile(&[
        "check-config",
        "--config",
        repo_etc().join("turnstile.toml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_config_reports_every_problem_with_position_and_hint() {
    let (d, _) = setup(5060, "");
    let text = config(5060, "")
        .replace("workers = 2", "workers = -3")
        .replace("sources = [\"127.0.0.0/8\"]", "sources = [\"127.0.0.1/8\"]");
    let cfg = write(d.path(), "bad.toml", &text);
    let out = turnstile(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = cfg.display().to_string();
    assert!(
        err.contains(&format!("{f}:4:11: workers = -3 is out of range")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:14:12: prefix \"127.0.0.1/8\" has host bits set"
        )),
        "{err}"
    );
    assert!(err.contains("hint: did you mean \"127.0.0.0/8\"?"), "{err}");
    assert!(err.contains("2 problems found"), "{err}");
}

#[test]
fn check_config_unknown_key_and_users_file_line() {
    let (d, _) = setup(5060, "");
    let cfg = write(
        d.path(),
        "typo.toml",
        &config(5060, "snapshot_intervall = 3"),
    );
    let out = turnstile(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:7:1: unknown key `snapshot_intervall`",
            cfg.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: valid keys here are") && err.contains("`snapshot_interval`"),
        "{err}"
    );

    write(d.path(), "users.txt", "alice:a\n# comment\nmallory\n");
    let cfg = d.path().join("turnstile.toml");
    let out = turnstile(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3:1: ", d.path().join("users.txt").display())),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");
}

#[test]
fn run_with_invalid_config_exits_2() {
    let (d, _) = setup(5060, "");
    let cfg = write(
        d.path(),
        "bad.toml",
        &config(5060, "").replace("127.0.0.1:5060", "127.0.0.1"),
    );
    let out = turnstile(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an IP address with a port"));
    assert!(
        !d.path().join("state").exists(),
        "nothing is written for an invalid config"
    );
}

#[test]
fn xdp_mode_on_a_missing_interface_fails_clearly() {
    let (d, _) = setup(free_udp_port(), "");
    let text = format!(
        "{}\n[dataplane]\nmode = \"xdp\"\ninterface = \"tsnope0\"\n",
        config(free_udp_port(), "")
    );
    let cfg = write(d.path(), "xdp.toml", &text);
    let out = turnstile(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tsnope0"));
}

#[test]
fn run_serves_control_socket_and_stops_cleanly_on_sigterm() {
    let port = free_udp_port();
    let (d, cfg) = setup(port, "");
    let daemon = Daemon::start(&cfg);
    let sock = d.path().join("state/turnstile.sock");
    wait_for(&sock, "control socket");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A second instance with the same config is refused (exit 1) and leaves the first alone.
    let out = turnstile(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another turnstile instance"));

    // Datagrams reach the workers and are counted in the merged stats.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..5 {
        client
            .send_to(
                format!("OPTIONS sip:example.test SIP/2.0\r\nX: {i}\r\n\r\n").as_bytes(),
                ("127.0.0.1", port),
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = show_json(&cfg, "stats");
        assert_eq!(stats["workers"], 2);
        assert!(stats["engine"]["rx_datagrams"].is_u64());
        if stats["dataplane"]["rx_datagrams"].as_u64().unwrap() >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "datagrams not counted: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGHUP does not stop the daemon.
    // SAFETY: signalling our own child by PID.
    assert_eq!(unsafe { libc::kill(daemon.pid(), libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(200));
    let groups = show_json(&cfg, "groups");
    assert_eq!(groups["groups"][0]["name"], "phones");
    assert_eq!(groups["groups"][0]["sources"][0], "127.0.0.0/8");
    assert_eq!(groups["unclassified"]["policy"], "reject");

    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("turnstile started"), "{log}");
    assert!(log.contains("final snapshot written"), "{log}");
    assert!(log.contains("SIGHUP received"), "{log}");
    assert!(d.path().join("state/registrations.bin").exists());
    assert!(!d.path().join("state/registrations.bin.tmp").exists());
    assert!(!sock.exists(), "control socket removed on shutdown");

    // show against a stopped instance is a runtime error.
    let out = turnstile(&["show", "stats", "--socket", sock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn restart_restores_snapshot_and_periodic_snapshot_runs() {
    let port = free_udp_port();
    let (d, cfg) = setup(port, "");
    let snap = d.path().join("state/registrations.bin");
    let daemon = Daemon::start(&cfg);
    // snapshot_interval = 1: the periodic snapshot appears while running.
    wait_for(&snap, "periodic snapshot");
    let (status, _) = daemon.terminate();
    assert_eq!(status.code(), Some(0));

    let daemon = Daemon::start(&cfg);
    wait_for(&d.path().join("state/turnstile.sock"), "control socket");
    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("registration snapshot restored"), "{log}");
}

fn register(client: &UdpSocket, port: u16, user: &str, expires: u32, cseq: u32) -> String {
    let me = client.local_addr().unwrap();
    let msg = format!(
        "REGISTER sip:example.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-{user}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.test>;tag=t{cseq}\r\n\
         To: <sip:{user}@example.test>\r\n\
         Call-ID: {user}-call@test\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{me}>\r\n\
         Expires: {expires}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    client.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = client.recv_from(&mut buf).expect("a response to REGISTER");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn registrations_are_served_listed_and_survive_restart() {
    let port = free_udp_port();
    let (d, _) = setup(port, "");
    let text = config(port, "").replace("auth = \"local\"", "auth = \"none\"");
    let cfg = write(d.path(), "open.toml", &text);
    let sock = d.path().join("state/turnstile.sock");

    let daemon = Daemon::start(&cfg);
    wait_for(&sock, "control socket");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resp = register(&client, port, "alice", 600, 1);
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    let regs = show_json(&cfg, "registrations");
    assert_eq!(regs["total"], 1, "{regs}");
    assert_eq!(regs["bindings"][0]["aor"], "sip:alice@example.test");
    assert_eq!(regs["bindings"][0]["group"], "phones");
    assert_eq!(
        regs["bindings"][0]["source"],
        client.local_addr().unwrap().to_string()
    );
    let stats = show_json(&cfg, "stats");
    assert_eq!(stats["registrations"]["bindings"], 1);
    assert!(
        stats["engine"]["register_ok"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    let (status, _) = daemon.terminate();
    assert_eq!(status.code(), Some(0));

    // The binding comes back from the snapshot, with the remaining (not a fresh) lifetime.
    let daemon = Daemon::start(&cfg);
    wait_for(&sock, "control socket");
    let out = turnstile(&[
        "show",
        "registrations",
        "alice",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("sip:alice@example.test") && listing.contains("1 binding(s)"),
        "{listing}"
    );
    let regs = show_json(&cfg, "registrations");
    let left = regs["bindings"][0]["expires_in"].as_u64().unwrap();
    assert!(left > 500 && left <= 600, "{regs}");
    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("bindings=1"), "{log}");
}

#[test]
fn local_auth_group_is_challenged() {
    let port = free_udp_port();
    let (_d, cfg) = setup(port, "");
    let daemon = Daemon::start(&cfg);
    wait_for(&_d.path().join("state/turnstile.sock"), "control socket");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resp = register(&client, port, "alice", 600, 1);
    assert!(resp.starts_with("SIP/2.0 401"), "{resp}");
    assert!(
        resp.contains("WWW-Authenticate: Digest") && resp.contains("realm=\"example.test\""),
        "{resp}"
    );
    let (status, _) = daemon.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn prometheus_metrics_endpoint() {
    let port = free_udp_port();
    let mport = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (d, cfg) = setup(port, &format!("metrics_listen = \"127.0.0.1:{mport}\""));
    let daemon = Daemon::start(&cfg);
    wait_for(&d.path().join("state/turnstile.sock"), "control socket");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resp = register(&client, port, "alice", 600, 1);
    assert!(resp.starts_with("SIP/2.0 401"), "{resp}");

    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let m = get("/metrics");
    assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
    assert!(m.contains("# TYPE turnstile_engine_total counter"), "{m}");
    assert!(
        m.contains("turnstile_engine_total{counter=\"auth_challenges\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("turnstile_group_total{group=\"phones\",counter=\"rx\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("turnstile_registrations{kind=\"bindings\"} 0"),
        "{m}"
    );
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    let (status, _) = daemon.terminate();
    assert_eq!(status.code(), Some(0));
}
