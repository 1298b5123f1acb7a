//! Network-namespace fixtures for the XDP tests.
//!
//! `VethPair::create` makes two fresh namespaces (names unique per process and call) joined
//! by a veth pair that is created *inside* the first namespace with its peer moved straight
//! into the second, so nothing is ever added to the root namespace. Addresses come from the
//! benchmarking ranges (198.18.0.0/15, 2001:2::/48). The Drop guard deletes both namespaces,
//! which destroys the veth pair with them.
//!
//! Privileges: `require_privileged` prints `SKIPPED: …` to stderr and returns false when the
//! test cannot run (not root / no CAP_BPF+CAP_NET_ADMIN, no `ip`), unless
//! `TURNSTILE_REQUIRE_PRIVILEGED=1`, in which case it panics (CI sets it).

use std::{
    fs::File,
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Effective capability bits of this process (from /proc/self/status).
fn cap_eff() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// True when the XDP/netns tests can run here; otherwise says SKIPPED (or panics in CI).
pub fn require_privileged(test: &str) -> bool {
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_BPF: u64 = 1 << 39;
    let caps = cap_eff();
    let reason = if caps & CAP_NET_ADMIN == 0 {
        Some("missing CAP_NET_ADMIN (run as root)")
    } else if caps & (CAP_BPF | CAP_SYS_ADMIN) == 0 {
        Some("missing CAP_BPF (run as root)")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("`ip` (iproute2) not installed; run `bash scripts/setup.sh`")
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) => {
            if std::env::var("TURNSTILE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!("{test}: cannot run ({r}) and TURNSTILE_REQUIRE_PRIVILEGED=1");
            }
            // Written to the stderr handle directly: libtest captures `eprintln!` of passing
            // tests, and a skip must be visible in a normal `cargo test` run.
            let _ = writeln!(
                std::io::stderr(),
                "\n=====================================================\n\
                 SKIPPED: {test}: {r}\n\
                 (set TURNSTILE_REQUIRE_PRIVILEGED=1 to make this a failure)\n\
                 ====================================================="
            );
            false
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Two namespaces joined by a veth pair. `a` is the device under test, `b` the peer.
pub struct VethPair {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
    pub v4_a: Ipv4Addr,
    pub v4_b: Ipv4Addr,
    pub v6_a: Ipv6Addr,
    pub v6_b: Ipv6Addr,
    /// rx/tx queues of the `a` end.
    pub queues: u32,
}

impl VethPair {
    /// Create the namespaces, the veth pair (`queues` rx and tx queues on each end), bring
    /// everything up and assign 198.18.0.1/24 + 2001:2::1/64 (a) and .2 / ::2 (b).
    pub fn create(queues: u32) -> Result<Self, String> {
        Self::create_asym(queues, queues)
    }

    /// Like `create`, with `queues_a` rx/tx queues on the `a` end and `queues_b` on the `b`
    /// end (native XDP on `a` needs `queues_a >= queues_b`; this lets tests provoke ENOSPC).
    pub fn create_asym(queues_a: u32, queues_b: u32) -> Result<Self, String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{}", pid % 100_000, n);
        let p = VethPair {
            ns_a: format!("tsxdp-{tag}-a"),
            ns_b: format!("tsxdp-{tag}-b"),
            // Interface names: at most 15 bytes.
            if_a: format!("tx{tag}a"),
            if_b: format!("tx{tag}b"),
            v4_a: Ipv4Addr::new(198, 18, 0, 1),
            v4_b: Ipv4Addr::new(198, 18, 0, 2),
            v6_a: "2001:2::1".parse().expect("v6"),
            v6_b: "2001:2::2".parse().expect("v6"),
            queues: queues_a.max(1),
        };
        // From here on the guard cleans up whatever was created.
        ip(&["netns", "add", &p.ns_a])?;
        ip(&["netns", "add", &p.ns_b])?;
        let qa = p.queues.to_string();
        let qb = queues_b.max(1).to_string();
        #[rustfmt::skip]
        ip(&[
            "-n", &p.ns_a, "link", "add", &p.if_a, "numrxqueues", &qa, "numtxqueues", &qa,
            "type", "veth", "peer", "name", &p.if_b, "netns", &p.ns_b, "numrxqueues", &qb,
            "numtxqueues", &qb,
        ])?;
        for (ns, ifn, v4, v6) in [
            (&p.ns_a, &p.if_a, p.v4_a, p.v6_a),
            (&p.ns_b, &p.if_b, p.v4_b, p.v6_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifn])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifn,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", ifn, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(p)
    }

    /// Run `f` on a fresh thread that has joined namespace `ns` (sockets it creates, netlink
    /// and ifindex lookups all happen there). The caller's thread is unaffected.
    pub fn run_in<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: valid netns fd; affects only this thread.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// `ip netns exec <ns> <cmd…>`; returns (success, stdout+stderr).
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .output();
        match out {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and with it the pair.
        let _ = ip(&["netns", "del", &self.ns_a]);
        let _ = ip(&["netns", "del", &self.ns_b]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_ifnamsiz() {
        let tag = format!("{}{}", 99_999, 1_000);
        assert!(format!("tx{tag}a").len() <= 15);
    }
}
