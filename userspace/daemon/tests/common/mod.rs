//! The harness shared by the daemon's end-to-end tests: the real `turnstile` binary as a
//! child process, its control socket, signals by PID (only our own child), and a kill on drop
//! so a failing test leaves no daemon behind.
#![allow(dead_code)] // each test file uses a different subset

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Tests that start a daemon and push real traffic starve each other on the 2-core machine
/// when run in parallel (a flood test once saw 0/200 that way): one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub const BIN: &str = env!("CARGO_BIN_EXE_turnstile");

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child on drop so a failing test leaves no daemon behind.
pub struct Daemon {
    child: Option<Child>,
    cfg: PathBuf,
}

impl Daemon {
    pub fn start(cfg: &Path) -> Daemon {
        let child = Command::new(BIN)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            cfg: cfg.to_path_buf(),
        };
        let sock = cfg.parent().unwrap().join("state/turnstile.sock");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by PID.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    pub fn show(&self, what: &str) -> serde_json::Value {
        let out = Command::new(BIN)
            // By socket: the config file may be invalid on purpose (reload test).
            .args(["show", what, "--json", "--socket"])
            .arg(self.cfg.parent().unwrap().join("state/turnstile.sock"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "show {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Polls `show what` until `f` holds (bounded).
    pub fn wait_show(
        &self,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.show(what);
            if f(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "condition never held: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (bounded) for the exit; returns the status and the log.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit within 10 s of SIGTERM");
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
