//! Starting the real `turnstile` binary for end-to-end tests: a temp directory with a config
//! and users file, a free loopback port, `show … --json` through the control socket, and
//! SIGTERM by PID (only our own child) when the test ends.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `turnstile` binary of the same profile as this test. `cargo test --workspace` builds it
/// (the daemon crate has integration tests of its own); otherwise it is built here once.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("turnstile");
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "turnstile"]);
        if release {
            cmd.arg("--release");
        }
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(
            ok && bin.exists(),
            "could not build the turnstile binary at {}",
            bin.display()
        );
    }
    bin
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the test wants in the config; the rest is the DESIGN.md shape with test defaults.
pub struct Setup {
    pub domain: String,
    /// `None`: `auth = "none"`; `Some(algs)`: local digest with these algorithms.
    pub auth: Option<Vec<&'static str>>,
    pub users: String,
    pub min_expires: u32,
    pub extra: String,
    pub workers: u32,
    /// Write an `[auth]` section (MD5) even when `auth` is `None`: the users file then tells
    /// known users (480) from unknown ones (404) while the group does not challenge.
    pub users_list_only: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            domain: "example.test".into(),
            auth: None,
            users: "alice:alice-secret\nbob:bob-secret\n".into(),
            min_expires: 60,
            extra: String::new(),
            workers: 2,
            users_list_only: false,
        }
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
}

impl Daemon {
    pub fn start(setup: Setup) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users.txt"), &setup.users).unwrap();
        let port = free_udp_port();
        let auth = match (&setup.auth, setup.users_list_only) {
            (None, true) => Some(vec!["MD5"]),
            (a, _) => a.clone(),
        };
        // Local digest for the group only when the test asks for it; `users_list_only`
        // writes the users file section alone (known vs unknown users, no challenge).
        let auth_section = match &auth {
            Some(algs) => format!(
                "[auth]\nusers_file = \"users.txt\"\nalgorithms = [{}]\nnonce_ttl = 300\n",
                algs.iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let auth_mode = if setup.auth.is_some() {
            "local"
        } else {
            "none"
        };
        let config = format!(
            "[server]\ndomain = \"{domain}\"\nlisten = [\"127.0.0.1:{port}\"]\nworkers = {workers}\nstate_dir = \"var\"\n\n\
[registrar]\nmin_expires = {min}\nmax_expires = 7200\ndefault_expires = 3600\nmax_contacts_per_aor = 10\n\n\
{auth_section}\n[[ip_group]]\nname = \"phones\"\ntype = \"user\"\nsources = [\"127.0.0.0/8\"]\nauth = \"{auth_mode}\"\n\n{extra}\n",
            domain = setup.domain,
            workers = setup.workers,
            min = setup.min_expires,
            extra = setup.extra,
        );
        let config_path = dir.path().join("turnstile.toml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(binary())
            .args(["run", "--config", config_path.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn turnstile");
        let d = Daemon {
            child: Some(child),
            dir,
            config: config_path,
            port,
        };
        d.wait_ready();
        d
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn wait_ready(&self) {
        let sock = self.dir.path().join("var").join("turnstile.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "turnstile did not come up (no {})",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `turnstile show <what> --json`.
    pub fn show(&self, what: &[&str]) -> serde_json::Value {
        let mut args = vec!["show"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["--json", "--config", self.config.to_str().unwrap()]);
        let out = Command::new(binary()).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "show {what:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn bindings(&self) -> u64 {
        self.show(&["stats"])["registrations"]["bindings"]
            .as_u64()
            .unwrap()
    }

    /// SIGTERM and a bounded wait; returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A UDP client bound to a loopback address, with a receive timeout.
pub fn client(bind: &str) -> UdpSocket {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s
}

/// Receives one datagram as text, or `None` on timeout.
pub fn recv_text(s: &UdpSocket) -> Option<(String, std::net::SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from)),
        Err(_) => None,
    }
}

/// Status code of a response text.
pub fn status(resp: &str) -> Option<u16> {
    resp.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// Whether a binary is on PATH or at a Debian location.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A test that needs an external tool: skip loudly where it is missing, fail when the
/// environment says the suite must be complete (CI sets `TURNSTILE_REQUIRE_PRIVILEGED=1`,
/// and `cargo xtask test` installs every tool first).
pub fn require_tool(tool: &str) -> bool {
    if have(tool) {
        return true;
    }
    if std::env::var_os("TURNSTILE_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{tool} is required (run `bash scripts/setup.sh`)");
    }
    eprintln!("\n*** SKIPPED: {tool} not installed (run `bash scripts/setup.sh`) ***\n");
    false
}
