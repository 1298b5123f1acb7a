//! `cargo xtask bench --xdp`: Turnstile's XDP data plane against its socket data plane on the
//! same REGISTER storm over a veth pair, in one run (see BENCHMARKS.md, "XDP vs socket over
//! veth", and the isolation budget in DESIGN.md).
//!
//! Topology (created here, removed by a Drop guard on every exit path; nothing is touched in
//! the root namespace, all addresses are in 198.18.0.0/15):
//!
//! ```text
//!  ns "tsbx-<pid>-s"  (server cores)          ns "tsbx-<pid>-g"  (client cores)
//!  turnstile  198.18.0.1/24, 198.18.1.1/24 ──veth (2 rx/tx queues each end)── 198.18.0.2/24  storm-veth (group B "measured")
//!   XDP attached here (driver mode)                                             198.18.1.2/24  storm-veth --blast (group A "flood")
//! ```
//!
//! The machine's cores are split: the daemon (one worker per server core) runs on the first
//! half, every load generator on the other half (`taskset`). Phones are other machines; a
//! generator sharing the server's cores measures the scheduler, not the server. On the
//! client cores the flooder runs at `nice 19` and the isolation phases' measured client
//! (group B) at `SCHED_FIFO`, so B's latency is the server's and not its wait for the client
//! core (see `Side::Measured`).
//!
//! Where veth does the kernel's receive work, and where this benchmark puts it:
//! - the generator namespace's receive of the answers: veth runs it synchronously on the
//!   sending core, the server's (15–26 % of the daemon's CPU at capacity, perf). A phone
//!   does that on its own CPU, so in the capacity phases RPS on the generator end hands it
//!   to the client cores (`ClientRps`, which says why not in the others);
//! - the server's own receive (the XDP program and the copy into the UMEM in XDP mode; IP,
//!   UDP and the socket queue in socket mode): veth runs it in the softirq of the core that
//!   sent the frame, i.e. on the client cores, where it costs the server nothing — which
//!   hides exactly the kernel work XDP exists to avoid. On a host with a NIC that work runs
//!   on the host's cores. The capacity phase is therefore run twice: as veth places it
//!   (`capacity`, the daemon's own work only) and with threaded NAPI on the server end,
//!   its kernel threads pinned to the server cores and their CPU counted as the server's
//!   (`capacity-nic`, the XDP/socket goal's basis). The isolation phases keep veth's
//!   placement: with the NAPI threads and the worker time-sharing one core, B's latency
//!   would measure the scheduler's slices on this 2-core VM, not the data plane.
//!
//! The same server binary runs alternately with `[dataplane] mode = "xdp"` and `"socket"`
//! (X, S, X, S …), a fresh process per run. Per run:
//!
//! 1. peak: closed loop, 512 outstanding, plain REGISTER (no auth) from group B — bounded by
//!    the generator on the client cores as much as by the server (see the null responder);
//! 2. half-load: open loop at 50 % of that peak (latency columns);
//! 3. capacity: a flood of fire-and-forget REGISTERs from group A (raw frames, every one a new
//!    transaction, 65,536 AORs), faster than the server can answer: REGISTERs answered per
//!    second by the server cores — the daemon-bound number; then `capacity-nic`, the same
//!    with the server's kernel receive on the server cores (the XDP/socket ratio's basis);
//! 4. isolation, unloaded: group B alone at a modest open-loop rate;
//! 5. isolation, flooded: the same group B load while group A floods (asked for 10× the
//!    capacity; what the flooder achieves is reported as the real multiple);
//! 6. isolation, control: the same flood, never reaching the daemon — in XDP mode from an
//!    unclassified source (the XDP program drops it where it redirects group A's frames, so
//!    the client cores do the same work), in socket mode to a closed port (an unclassified
//!    datagram would be the daemon's to read there) — what the client cores alone do to B;
//! 7. isolation, unloaded again: the baseline is the better of 4 and 7, so a noisy
//!    unloaded run cannot make the flooded/unloaded ratio look good.
//!
//! Server CPU is `utime + stime` of the daemon (`taskset` and `ip netns exec` exec in place,
//! so the child's PID is the daemon's) around each phase.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use turnstile_benches::procstat;

use crate::bench::BenchArgs;

const SERVER_V4: &str = "198.18.0.1";
const GROUP_B_SRC: &str = "198.18.0.2";
const GROUP_A_SRC: &str = "198.18.1.2";
const PORT: u16 = 5060;
/// The socket-mode control flood's port: nobody listens, so the flood never reaches the
/// daemon (the stack answers with rate-limited ICMP).
const CONTROL_PORT: u16 = 5999;
/// The XDP-mode control flood's source: in no IP Group, so the XDP program drops it
/// (`unclassified = "drop"`) on exactly the path group A's flood takes up to the
/// classification, and the daemon never sees it.
const CONTROL_SRC: &str = "198.18.2.2";
/// veth rx/tx queues on both ends (native XDP needs the host side's rx queues ≥ the peer's
/// tx queues). Two, so the shared-UMEM-per-queue path is exercised even when one worker
/// drives both.
const QUEUES: u32 = 2;

/// The cores for the daemon and for the load generators: the first half and the rest (a
/// `taskset -c` list each), and the daemon's worker count. `None` on a 1-core machine.
fn cpu_split() -> Option<(String, String, usize)> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        return None;
    }
    let k = n / 2;
    let list = |a: usize, b: usize| {
        if a + 1 == b {
            a.to_string()
        } else {
            format!("{a}-{}", b - 1)
        }
    };
    Some((list(0, k), list(k, n), k))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The hex CPU mask (`/sys/class/net/*/queues/rx-*/rps_cpus`) of a `taskset -c` list
/// such as `1`, `2-3` or `0,2-3`. `None` if the list does not parse.
fn cpu_mask(list: &str) -> Option<String> {
    let mut mask: u128 = 0;
    for part in list.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let a = part.trim().parse::<u32>().ok()?;
                (a, a)
            }
        };
        if a > b || b >= 128 {
            return None;
        }
        for c in a..=b {
            mask |= 1 << c;
        }
    }
    (mask != 0).then(|| format!("{mask:x}"))
}

/// Writes `value` into a sysfs file as seen from namespace `ns` (`ip netns exec` mounts the
/// namespace's own /sys, where its interfaces live).
fn sysfs_write(ns: &str, path: &str, value: &str) -> Result<()> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            "printf '%s\n' \"$1\" > \"$2\"",
            "sh",
        ])
        .args([value, path])
        .output()
        .with_context(|| format!("writing {path} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "writing {value} to {path} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Two namespaces joined by a veth pair created inside the server namespace with its peer
/// moved straight into the generator namespace. Dropping deletes both namespaces (and with
/// them the pair).
struct Veth {
    ns_s: String,
    ns_g: String,
    if_s: String,
    if_g: String,
}

impl Veth {
    fn create() -> Result<Veth> {
        Self::remove_stale();
        let tag = std::process::id();
        let v = Veth {
            ns_s: format!("tsbx-{tag}-s"),
            ns_g: format!("tsbx-{tag}-g"),
            if_s: format!("tb{tag}s"),
            if_g: format!("tb{tag}g"),
        };
        let if_g = v.if_g.clone();
        // Leftovers of an earlier run of a process with the same PID (killed before its guard
        // ran): names are ours, so removing them is safe.
        let _ = ip(&["netns", "del", &v.ns_s]);
        let _ = ip(&["netns", "del", &v.ns_g]);
        // From here on the guard (`v`) removes whatever exists.
        ip(&["netns", "add", &v.ns_s])?;
        let guard = v;
        ip(&["netns", "add", &guard.ns_g])?;
        let q = QUEUES.to_string();
        #[rustfmt::skip]
        ip(&[
            "-n", &guard.ns_s, "link", "add", &guard.if_s, "numrxqueues", &q, "numtxqueues", &q,
            "type", "veth", "peer", "name", &if_g, "netns", &guard.ns_g, "numrxqueues", &q,
            "numtxqueues", &q,
        ])?;
        for (ns, ifn, addrs) in [
            (
                &guard.ns_s,
                &guard.if_s,
                &["198.18.0.1/24", "198.18.1.1/24"][..],
            ),
            // .2.2: the XDP-mode control flood's unclassified source.
            (
                &guard.ns_g,
                &if_g,
                &["198.18.0.2/24", "198.18.1.2/24", "198.18.2.2/24"][..],
            ),
        ] {
            for &a in addrs {
                ip(&["-n", ns, "addr", "add", a, "dev", ifn])?;
            }
            ip(&["-n", ns, "link", "set", ifn, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // GRO gives the server's veth end a NAPI context without an XDP program, which is
        // what lets the XDP flood generator's frames (ndo_xdp_xmit) in during socket-mode
        // runs; it is on in both modes so they differ only in the data plane.
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &guard.ns_s,
                "ethtool",
                "-K",
                &guard.if_s,
                "gro",
                "on",
            ])
            .output()
            .context("ethtool (run scripts/setup.sh)")?;
        if !out.status.success() {
            bail!(
                "ethtool -K {} gro on: {}",
                guard.if_s,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(guard)
    }
}

impl Veth {
    /// Namespaces of earlier runs whose process is gone (interrupted before the guard ran):
    /// `tsbx-<pid>-{s,g}` with no process `<pid>`. Only our own naming scheme is touched.
    fn remove_stale() {
        let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(pid) = name
                .strip_prefix("tsbx-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("bench --xdp: removing stale namespace {name}");
                let _ = ip(&["netns", "del", name]);
            }
        }
    }

    /// MAC address of `ifn` in namespace `ns`.
    fn mac(ns: &str, ifn: &str) -> Option<String> {
        let o = Command::new("ip")
            .args(["-n", ns, "link", "show", "dev", ifn])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&o.stdout);
        let mut it = s.split_whitespace();
        it.find(|w| *w == "link/ether")?;
        it.next().map(str::to_string)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns_s]);
        let _ = ip(&["netns", "del", &self.ns_g]);
    }
}

/// The generator end's receive of the server's answers on the client cores, by RPS, for the
/// capacity phases. Without it veth runs the generator namespace's IP/UDP receive of every
/// answer synchronously on the sending core — the server's — where it was 15–26 % of the
/// daemon's CPU at capacity (perf, `net_rx_action`); a phone does that work on its own CPU.
/// Not in the isolation phases: there RPS queues B's answers behind A's in one backlog on
/// the client core, and B's latency becomes the generator's (p99 6× unloaded with the
/// daemon answering within its budget); without it the server core pays for A's answers'
/// receive, which only makes the isolation case harder. Dropping turns RPS off again.
struct ClientRps<'a> {
    veth: &'a Veth,
}

impl<'a> ClientRps<'a> {
    fn enable(veth: &'a Veth, client_cpus: &str) -> Result<ClientRps<'a>> {
        let mask =
            cpu_mask(client_cpus).with_context(|| format!("no CPU mask for `{client_cpus}`"))?;
        let guard = ClientRps { veth };
        guard.write(&mask)?;
        Ok(guard)
    }

    fn write(&self, mask: &str) -> Result<()> {
        for q in 0..QUEUES {
            sysfs_write(
                &self.veth.ns_g,
                &format!("/sys/class/net/{}/queues/rx-{q}/rps_cpus", self.veth.if_g),
                mask,
            )?;
        }
        Ok(())
    }
}

impl Drop for ClientRps<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.write("0") {
            eprintln!("bench --xdp: {e:#}");
        }
    }
}

/// The server end's receive on the server cores, as with a NIC: threaded NAPI on the
/// server's veth end, its kernel threads (`napi/<if>-<id>`) pinned to the server cores.
/// Without it veth runs the server's receive — the XDP program and the copy into the UMEM
/// in XDP mode, IP/UDP receive and the socket queue in socket mode — in the softirq of the
/// core that sent the frame, i.e. on the client cores, where none of it counts against the
/// server. A NIC raises its interrupt on a core of the host that owns it. Dropping switches
/// back to softirq NAPI.
struct NicRx<'a> {
    veth: &'a Veth,
    threads: Vec<u32>,
}

impl<'a> NicRx<'a> {
    fn enable(veth: &'a Veth, server_cpus: &str) -> Result<NicRx<'a>> {
        let path = format!("/sys/class/net/{}/threaded", veth.if_s);
        sysfs_write(&veth.ns_s, &path, "1")?;
        // From here on the guard switches threaded NAPI off again on every exit path.
        let mut guard = NicRx {
            veth,
            threads: Vec::new(),
        };
        let prefix = format!("napi/{}-", veth.if_s);
        let threads: Vec<u32> = std::fs::read_dir("/proc")?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end().starts_with(&prefix))
            })
            .collect();
        if threads.is_empty() {
            bail!(
                "threaded NAPI on {}: no {prefix}* kernel thread appeared",
                veth.if_s
            );
        }
        for t in &threads {
            let o = Command::new("taskset")
                .args(["-pc", server_cpus, &t.to_string()])
                .output()
                .context("taskset")?;
            if !o.status.success() {
                bail!(
                    "pinning NAPI thread {t} to {server_cpus}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
        guard.threads = threads;
        Ok(guard)
    }

    /// CPU seconds of the NAPI threads so far.
    fn cpu(&self) -> f64 {
        self.threads.iter().map(|&t| procstat::cpu_seconds(t)).sum()
    }
}

impl Drop for NicRx<'_> {
    fn drop(&mut self) {
        let path = format!("/sys/class/net/{}/threaded", self.veth.if_s);
        if let Err(e) = sysfs_write(&self.veth.ns_s, &path, "0") {
            eprintln!("bench --xdp: {e:#}");
        }
    }
}

/// The daemon, started by us inside the server namespace, stopped by PID.
struct Server {
    child: Option<Child>,
    pid: u32,
    sock: PathBuf,
}

impl Server {
    fn cpu(&self) -> f64 {
        procstat::tree_cpu_seconds(self.pid)
    }

    /// Seconds the daemon's threads have waited for a CPU while runnable.
    fn runq_wait(&self) -> f64 {
        procstat::runqueue_wait_seconds(self.pid)
    }

    fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Serialize, Default, Clone)]
struct PhaseResult {
    name: String,
    rate: Option<u32>,
    throughput: f64,
    started: u64,
    completed: u64,
    failed: u64,
    timeouts: u64,
    backlog: u64,
    retransmissions: u64,
    /// completed / (started + backlog), percent.
    success_pct: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    server_cpu_s: f64,
    /// Milliseconds per second the daemon's threads were runnable but waiting for their
    /// core: other tasks (kernel threads) taking it from a busy worker.
    server_runq_wait_ms_per_s: f64,
    /// Server CPU per REGISTER answered (µs).
    cpu_us_per_register: f64,
    /// Flooded phase only: what the flooder sent to group A.
    flood: Option<Value>,
    /// Capacity phase, when `perf` is installed: the share of the daemon's CPU spent in
    /// `net_rx_action` — on veth, the generator namespace's receive of the answers, which
    /// the kernel runs on the sending (server) core; on a NIC the phone does that work.
    peer_rx_share: Option<f64>,
    /// Capacity phases: the generator end's receive of the answers ran on the client cores
    /// (`ClientRps`).
    answers_rx_on_client: bool,
    /// `capacity-nic` phase: CPU seconds of the server end's NAPI threads (the server's
    /// kernel receive work), included in `server_cpu_s`.
    napi_cpu_s: Option<f64>,
    storm: Value,
}

#[derive(Serialize, Default, Clone)]
struct Run {
    mode: String,
    round: u32,
    phases: Vec<PhaseResult>,
    peak: f64,
    /// REGISTERs answered per second under the capacity flood (daemon-bound), the server's
    /// kernel receive on the client cores (veth's default).
    capacity: f64,
    /// The same with the server's kernel receive on the server cores (`NicRx`); 0 if not run.
    capacity_nic: f64,
    /// `turnstile show stats --json` and `show groups --json` at the end of the run.
    stats: Value,
    groups: Value,
    error: Option<String>,
}

#[derive(Serialize)]
struct XdpResults {
    started_utc: String,
    quick: bool,
    loadavg_before: String,
    loadavg_after: String,
    users: u32,
    phase_s: f64,
    isolation_rate: u32,
    server_cpus: Option<String>,
    client_cpus: Option<String>,
    workers: usize,
    runs: Vec<Run>,
}

struct Ctx<'a> {
    release: &'a Path,
    out: &'a Path,
    veth: &'a Veth,
    users: u32,
    phase: Duration,
    window: usize,
    gen_threads: usize,
    gen_sockets: usize,
    iso_rate: u32,
    /// `taskset -c` lists for the daemon and the generators (`None`: no pinning) and the
    /// daemon's workers (one per server core).
    server_cpus: Option<String>,
    client_cpus: Option<String>,
    workers: usize,
}

/// Which side of the benchmark a process belongs to (its namespace and cores).
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Server,
    Client,
    /// The isolation phases' measured client (group B, 2,000/s): `SCHED_FIFO` on the client
    /// cores. Its phones would be other machines; here the flood's kernel-side work runs on
    /// the same client core in softirq, where `nice` does not reach, and delayed B's own
    /// sends and wake-ups by milliseconds (3–5× its unloaded p99 with the flood aimed at a
    /// closed port, i.e. without the daemon involved). Real-time priority takes the client
    /// core out of B's latency, so what is left is the server's.
    Measured,
    /// A client at `nice 19`: the flooder, which must not delay the measured client.
    Flooder,
}

/// What the XDP section produced: its Markdown report, or why it was skipped.
pub enum Outcome {
    Report(String),
    Skipped(String),
}

/// Entry point from `cargo xtask bench` (after the loopback matrix, into the same directory)
/// and `cargo xtask bench --xdp` (alone): writes `xdp.md` and `xdp.json` into `out`, or into
/// `bench-results/<UTC timestamp>` when `out` is `None`.
pub fn run(root: &Path, args: &BenchArgs, out: Option<&Path>) -> Result<Outcome> {
    let t0 = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(skipped("needs root (network namespaces, veth, BPF)"));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Ok(skipped(
            "`ip` (iproute2) not installed; run `bash scripts/setup.sh`",
        ));
    }
    let release = root.join("target/release");
    if !args.no_build {
        crate::run(Command::new("cargo").current_dir(root).args([
            "build",
            "--release",
            "-p",
            "turnstile-benches",
            "--bin",
            "storm-veth",
            "--features",
            "xdp-flood",
        ]))?;
        let ok = Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "-p", "turnstile"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Ok(skipped("target/release/turnstile did not build"));
        }
    }
    for b in ["turnstile", "storm-veth"] {
        if !release.join(b).exists() {
            return Ok(skipped(&format!("target/release/{b} missing")));
        }
    }
    let stamp = stamp();
    let out = out
        .map(Path::to_path_buf)
        .or_else(|| args.out.clone())
        .unwrap_or_else(|| root.join("bench-results").join(&stamp));
    std::fs::create_dir_all(&out)?;
    eprintln!("bench --xdp: results in {}", out.display());
    let loadavg_before = loadavg();
    let veth = Veth::create().context("creating the benchmark namespaces")?;
    let split = cpu_split();
    if split.is_none() {
        eprintln!("bench --xdp: one core only: server and generators share it (numbers are the machine's, not the server's)");
    }
    let ctx = Ctx {
        release: &release,
        out: &out,
        veth: &veth,
        users: args
            .users
            .unwrap_or(if args.quick { 10_000 } else { 100_000 }),
        phase: Duration::from_secs_f64(
            args.phase_seconds
                .unwrap_or(if args.quick { 2.5 } else { 6.0 })
                .clamp(0.5, 30.0),
        ),
        window: args.window,
        gen_threads: args.gen_threads.max(1),
        gen_sockets: args.gen_sockets.max(1),
        iso_rate: 2_000,
        server_cpus: split.as_ref().map(|s| s.0.clone()),
        client_cpus: split.as_ref().map(|s| s.1.clone()),
        workers: split.as_ref().map_or(1, |s| s.2),
    };
    eprintln!(
        "bench --xdp: server cores {}, client cores {}, {} worker(s)",
        ctx.server_cpus.as_deref().unwrap_or("all"),
        ctx.client_cpus.as_deref().unwrap_or("all"),
        ctx.workers
    );
    let rounds = args.rounds.unwrap_or(2).clamp(1, 5);
    let mut runs = Vec::new();
    let mut null = Run {
        mode: "null-responder".into(),
        ..Default::default()
    };
    if let Err(e) = ctx.run_null(&mut null) {
        eprintln!("bench --xdp: null responder: {e:#}");
        null.error = Some(format!("{e:#}"));
    }
    runs.push(null);
    for round in 0..rounds {
        for mode in ["xdp", "socket"] {
            let mut r = Run {
                mode: mode.into(),
                round,
                ..Default::default()
            };
            if let Err(e) = ctx.run_one(mode, &mut r) {
                eprintln!("bench --xdp: {mode} round {round}: {e:#}");
                r.error = Some(format!("{e:#}"));
            }
            runs.push(r);
        }
    }
    let users = ctx.users;
    let phase_s = ctx.phase.as_secs_f64();
    let iso_rate = ctx.iso_rate;
    let (server_cpus, client_cpus, workers) = (
        ctx.server_cpus.clone(),
        ctx.client_cpus.clone(),
        ctx.workers,
    );
    drop(veth);
    let res = XdpResults {
        started_utc: stamp,
        quick: args.quick,
        loadavg_before,
        loadavg_after: loadavg(),
        users,
        phase_s,
        isolation_rate: iso_rate,
        server_cpus,
        client_cpus,
        workers,
        runs,
    };
    std::fs::write(out.join("xdp.json"), serde_json::to_string_pretty(&res)?)?;
    let md = report_md(&res);
    std::fs::write(out.join("xdp.md"), &md)?;
    eprintln!(
        "bench --xdp: done in {:.0}s: {}/xdp.md, xdp.json",
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(Outcome::Report(md))
}

fn skipped(why: &str) -> Outcome {
    eprintln!("XDP rows skipped: {why}");
    Outcome::Skipped(why.to_string())
}

fn stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn config(mode: &str, iface: &str, workers: usize) -> String {
    let xdp = if mode == "xdp" {
        format!("interface = \"{iface}\"\nxdp_mode = \"driver\"\n")
    } else {
        String::new()
    };
    format!(
        r#"# Generated by `cargo xtask bench --xdp` ({mode}).
[server]
domain = "bench.test"
listen = ["{SERVER_V4}:{PORT}"]
workers = {workers}
state_dir = "var"
snapshot_interval = 0
# Unknown sources are dropped (in XDP mode by the XDP program): the XDP control flood.
unclassified = "drop"

[dataplane]
mode = "{mode}"
{xdp}
[registrar]
min_expires = 60
max_expires = 7200
default_expires = 3600
max_contacts_per_aor = 10

# Group B: the measured phones.
[[ip_group]]
name = "measured"
type = "user"
sources = ["198.18.0.0/24"]
auth = "none"

# Group A: the flooded one in the isolation case.
[[ip_group]]
name = "flood"
type = "user"
sources = ["198.18.1.0/24"]
auth = "none"
"#
    )
}

impl Ctx<'_> {
    /// `[taskset -c CPUS] [nice -n 19 | chrt -f 10] ip netns exec NS`: every program of the
    /// benchmark starts through this (each wrapper execs in place, so the PID is the
    /// program's).
    fn cmd(&self, side: Side) -> Command {
        let (ns, cpus) = match side {
            Side::Server => (&self.veth.ns_s, &self.server_cpus),
            Side::Client | Side::Measured | Side::Flooder => (&self.veth.ns_g, &self.client_cpus),
        };
        let mut argv: Vec<String> = Vec::new();
        if let Some(c) = cpus {
            argv.extend(["taskset".into(), "-c".into(), c.clone()]);
        }
        if side == Side::Flooder {
            argv.extend(["nice".into(), "-n".into(), "19".into()]);
        }
        if side == Side::Measured {
            argv.extend(["chrt".into(), "-f".into(), "10".into()]);
        }
        argv.extend(["ip".into(), "netns".into(), "exec".into(), ns.clone()]);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    fn start(&self, mode: &str, dir: &Path) -> Result<Server> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let cfg = dir.join("turnstile.toml");
        std::fs::write(&cfg, config(mode, &self.veth.if_s, self.workers))?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = self
            .cmd(Side::Server)
            .arg(self.release.join("turnstile"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning turnstile")?;
        let mut s = Server {
            pid: child.id(),
            child: Some(child),
            sock: dir.join("var/turnstile.sock"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.sock.exists() {
            if let Some(c) = s.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    s.child = None;
                    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                    bail!(
                        "turnstile ({mode}) exited at start-up ({st}): {}",
                        tail(&log)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("turnstile ({mode}) did not start within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Ready = answers: a short trickle until something completes (the first frames may
        // race the XDP attach).
        for _ in 0..10 {
            let r = self.storm(Side::Client, 100, Some(200), 0.3, 1000)?;
            if r["completed"].as_u64().unwrap_or(0) > 0 {
                return Ok(s);
            }
        }
        bail!("turnstile ({mode}) started but answers no REGISTER over the veth")
    }

    /// One storm-veth run from group B's address (users from 0) in the generator namespace;
    /// its JSON report.
    fn storm(
        &self,
        side: Side,
        users: u32,
        rate: Option<u32>,
        secs: f64,
        timeout_ms: u64,
    ) -> Result<Value> {
        let mut c = self.cmd(side);
        c.arg(self.release.join("storm-veth"))
            .args([
                "--target",
                &format!("{SERVER_V4}:{PORT}"),
                "--bind",
                GROUP_B_SRC,
            ])
            .args(["--users", &users.to_string()])
            .args(["--window", &self.window.to_string()])
            .args(["--threads", &self.gen_threads.to_string()])
            .args(["--sockets", &self.gen_sockets.to_string()])
            .args(["--duration", &secs.to_string()])
            .args(["--timeout-ms", &timeout_ms.to_string()]);
        if let Some(r) = rate {
            c.args(["--rate", &r.to_string()]);
        }
        let o = c.stderr(Stdio::inherit()).output().context("storm-veth")?;
        if !o.status.success() {
            bail!("storm-veth failed: {}", o.status);
        }
        serde_json::from_slice(&o.stdout).context("storm-veth output")
    }

    fn phase(
        &self,
        server: &Server,
        name: &str,
        rate: Option<u32>,
        flood_rate: Option<u32>,
    ) -> Result<PhaseResult> {
        self.phase_to(server, name, rate, flood_rate, (GROUP_A_SRC, PORT))
    }

    /// The group A flooder (`nice 19` on the client cores): fire-and-forget REGISTERs at up
    /// to `rate`/s for `secs`. When the MACs are known, as frames built in the kernel by the
    /// XDP flood generator (`--xdp-flood`: ~1M/s from one core, where a UDP socket sender
    /// manages ~300k/s), falling back to raw AF_PACKET frames.
    fn flooder(&self, src: &str, port: u16, rate: u32, secs: f64) -> Result<Child> {
        let mut c = self.cmd(Side::Flooder);
        c.arg(self.release.join("storm-veth"))
            .args(["--target", &format!("{SERVER_V4}:{port}")])
            .args(["--bind", src, "--sockets", "16"])
            .args(["--blast", &rate.to_string()])
            .args(["--duration", &secs.to_string()]);
        if let (Some(sm), Some(dm)) = (
            Veth::mac(&self.veth.ns_g, &self.veth.if_g),
            Veth::mac(&self.veth.ns_s, &self.veth.if_s),
        ) {
            c.args(["--raw-iface", &self.veth.if_g, "--xdp-flood"])
                .args(["--src-mac", &sm, "--dst-mac", &dm]);
        }
        c.stdout(Stdio::piped())
            .spawn()
            .context("spawning the flooder")
    }

    /// `turnstile show WHAT --json` of the running server (`Null` if it does not answer).
    fn show(&self, server: &Server, what: &str) -> Value {
        Command::new(self.release.join("turnstile"))
            .args(["show", what, "--json", "--socket"])
            .arg(&server.sock)
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or(Value::Null)
    }

    /// REGISTERs the server answered 200 for group A ("flood", the second group) so far.
    fn flood_answered(&self, server: &Server) -> Result<u64> {
        let g = self.show(server, "groups");
        g["groups"][1]["counters"]["register_ok"]
            .as_u64()
            .with_context(|| format!("no group A counters in `show groups`: {g}"))
    }

    /// Capacity: group A floods alone, faster than the server answers; the rate of 200 OKs
    /// the server produced and its CPU per answer. Nothing on the client side limits this
    /// number (unlike `peak`): the flooder never waits for answers. With `nic`, the server's
    /// kernel receive runs on the server cores (`NicRx`) and its CPU counts as the server's.
    fn capacity(&self, server: &Server, nic: bool) -> Result<PhaseResult> {
        let secs = self.phase.as_secs_f64();
        let nic_rx = match (nic, &self.server_cpus) {
            (false, _) => None,
            (true, Some(cpus)) => Some(NicRx::enable(self.veth, cpus)?),
            (true, None) => bail!("one core only: no server core to move the receive to"),
        };
        let napi_cpu = || nic_rx.as_ref().map_or(0.0, NicRx::cpu);
        let rps = match self
            .client_cpus
            .as_deref()
            .map(|c| ClientRps::enable(self.veth, c))
        {
            Some(Ok(g)) => Some(g),
            Some(Err(e)) => {
                eprintln!("bench --xdp: the answers' receive stays on the server cores: {e:#}");
                None
            }
            None => None,
        };
        // perf attribution in the veth-default phase only; there the flood outlasts the
        // measurement by the profiling window that follows it.
        let profile = !nic;
        let tail = if profile { PROFILE_S + 0.5 } else { 0.0 };
        let f = self.flooder(GROUP_A_SRC, PORT, 5_000_000, secs + 0.6 + tail)?;
        // Past the flooder's start-up, into the steady state.
        std::thread::sleep(Duration::from_millis(300));
        let (a0, c0, k0, q0, t0) = (
            self.flood_answered(server)?,
            server.cpu(),
            napi_cpu(),
            server.runq_wait(),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (a1, c1, k1, q1, dt) = (
            self.flood_answered(server)?,
            server.cpu(),
            napi_cpu(),
            server.runq_wait(),
            t0.elapsed().as_secs_f64(),
        );
        // After the measured window, so perf's own cost does not touch the capacity number.
        let peer_rx_share = if profile {
            self.profile_peer_rx(server)
        } else {
            None
        };
        let o = f.wait_with_output()?;
        let flood = serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null);
        let answered = a1.saturating_sub(a0);
        let napi = k1 - k0;
        let cpu = c1 - c0 + napi;
        let p = PhaseResult {
            name: if nic { "capacity-nic" } else { "capacity" }.into(),
            throughput: answered as f64 / dt,
            completed: answered,
            success_pct: 0.0,
            server_cpu_s: cpu,
            server_runq_wait_ms_per_s: (q1 - q0) * 1e3 / dt,
            cpu_us_per_register: if answered > 0 {
                cpu * 1e6 / answered as f64
            } else {
                0.0
            },
            flood: Some(flood),
            peer_rx_share,
            napi_cpu_s: nic.then_some(napi),
            answers_rx_on_client: rps.is_some(),
            ..Default::default()
        };
        eprintln!(
            "--- {}: {:.0} REGISTER/s answered, server {:.2} µs/REGISTER{} ({:.2} CPU-s{} in {:.1} s), flood {:.0}/s offered",
            p.name,
            p.throughput,
            p.cpu_us_per_register,
            peer_rx_share
                .map(|f| format!(" ({:.0} % of it the generator side's receive, perf)", f * 100.0))
                .unwrap_or_default(),
            cpu,
            if nic {
                format!(", {napi:.2} of them NAPI threads")
            } else {
                String::new()
            },
            dt,
            p.flood
                .as_ref()
                .and_then(|f| f["rate"].as_f64())
                .unwrap_or(0.0)
        );
        Ok(p)
    }

    /// With `perf` installed: samples the daemon for `PROFILE_S` and returns the share of its
    /// CPU under `net_rx_action`. In the capacity phase all of it is the generator
    /// namespace's IP/UDP receive of the answers, which veth runs synchronously on the
    /// sending core (the flood's own receive runs on the client core). `None` when perf is
    /// missing or fails (not root, perf_event_paranoid, no samples).
    fn profile_peer_rx(&self, server: &Server) -> Option<f64> {
        let data = self.out.join(format!("perf-{}.data", server.pid));
        let rec = Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "999",
                "-g",
                "-p",
                &server.pid.to_string(),
                "-o",
            ])
            .arg(&data)
            .args(["--", "sleep", &PROFILE_S.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !rec.success() {
            return None;
        }
        let rep = Command::new("perf")
            .args([
                "report",
                "--children",
                "--sort",
                "sym",
                "-g",
                "none",
                "--stdio",
                "-i",
            ])
            .arg(&data)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&data);
        net_rx_share(&String::from_utf8_lossy(&rep.stdout))
    }

    /// `phase` with the flood sent from `flood.0` to port `flood.1` (the control case: a
    /// flood that costs the client cores what group A's does but never reaches the daemon).
    fn phase_to(
        &self,
        server: &Server,
        name: &str,
        rate: Option<u32>,
        flood_rate: Option<u32>,
        (flood_src, flood_port): (&str, u16),
    ) -> Result<PhaseResult> {
        let (c0, q0, t0) = (server.cpu(), server.runq_wait(), Instant::now());
        // The flooder starts first and outlasts the measured load on both ends.
        let flood = flood_rate
            .map(|fr| self.flooder(flood_src, flood_port, fr, self.phase.as_secs_f64() + 1.0))
            .transpose()?;
        if flood.is_some() {
            std::thread::sleep(Duration::from_millis(300));
        }
        // The isolation phases' client at real-time priority (see `Side::Measured`); the
        // throughput phases' client alone on its core, as is.
        let side = if name.starts_with("isolation") {
            Side::Measured
        } else {
            Side::Client
        };
        let rep = self.storm(side, self.users, rate, self.phase.as_secs_f64(), 4000);
        let flood = match flood {
            Some(f) => {
                let o = f.wait_with_output()?;
                Some(serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null))
            }
            None => None,
        };
        let rep = rep?;
        let cpu = server.cpu() - c0;
        let runq = (server.runq_wait() - q0) * 1e3 / t0.elapsed().as_secs_f64();
        let u = |k: &str| rep[k].as_u64().unwrap_or(0);
        let requests: u64 = rep["per_code"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let due = u("started") + u("backlog");
        let p = PhaseResult {
            name: name.into(),
            rate,
            throughput: rep["throughput"].as_f64().unwrap_or(0.0),
            started: u("started"),
            completed: u("completed"),
            failed: u("failed"),
            timeouts: u("timeouts"),
            backlog: u("backlog"),
            retransmissions: u("retransmissions"),
            success_pct: if due > 0 {
                100.0 * u("completed") as f64 / due as f64
            } else {
                0.0
            },
            p50_us: rep["latency_us"]["p50"].as_u64().unwrap_or(0),
            p99_us: rep["latency_us"]["p99"].as_u64().unwrap_or(0),
            max_us: rep["latency_us"]["max"].as_u64().unwrap_or(0),
            server_cpu_s: cpu,
            server_runq_wait_ms_per_s: runq,
            cpu_us_per_register: if requests > 0 {
                cpu * 1e6 / requests as f64
            } else {
                0.0
            },
            flood,
            peer_rx_share: None,
            napi_cpu_s: None,
            answers_rx_on_client: false,
            storm: rep,
        };
        eprintln!(
            "--- {name}: {:.0}/s ok {} failed {} timeouts {} backlog {} success {:.2}% p50 {}µs p99 {}µs, server {:.2} µs/REGISTER, waited for its core {:.1} ms/s{}",
            p.throughput,
            p.completed,
            p.failed,
            p.timeouts,
            p.backlog,
            p.success_pct,
            p.p50_us,
            p.p99_us,
            p.cpu_us_per_register,
            p.server_runq_wait_ms_per_s,
            p.flood
                .as_ref()
                .map(|f| format!(", flood {:.0}/s offered", f["rate"].as_f64().unwrap_or(0.0)))
                .unwrap_or_default()
        );
        Ok(p)
    }

    /// The generator's ceiling over this veth: the do-nothing responder (two threads, as
    /// many as the daemon has workers) in the server namespace, peak phase only.
    fn run_null(&self, r: &mut Run) -> Result<()> {
        eprintln!("=== null responder over veth (generator ceiling)");
        let child = self
            .cmd(Side::Server)
            .arg(self.release.join("storm-veth"))
            .args(["--respond", "--threads", &self.workers.to_string()])
            .args(["--duration", "60"])
            .args([
                "--target",
                &format!("{SERVER_V4}:{PORT}"),
                "--bind",
                SERVER_V4,
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("spawning the null responder")?;
        let server = Server {
            pid: child.id(),
            child: Some(child),
            sock: PathBuf::new(),
        };
        let mut ready = false;
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            let p = self.storm(Side::Client, 100, Some(200), 0.3, 1000)?;
            if p["completed"].as_u64().unwrap_or(0) > 0 {
                ready = true;
                break;
            }
        }
        if !ready {
            bail!("null responder does not answer over the veth");
        }
        let peak = self.phase(&server, "peak", None, None)?;
        r.peak = peak.throughput;
        r.phases.push(peak);
        Ok(())
    }

    fn run_one(&self, mode: &str, r: &mut Run) -> Result<()> {
        eprintln!("=== turnstile {mode} over veth, round {}", r.round);
        let dir = self.out.join(format!("xdp-{mode}-r{}", r.round));
        let mut server = self.start(mode, &dir)?;
        let peak = self.phase(&server, "peak", None, None)?;
        r.peak = peak.throughput;
        r.phases.push(peak);
        let half = ((r.peak * 0.5) as u32).max(100);
        r.phases
            .push(self.phase(&server, "half-load", Some(half), None)?);
        let cap = self.capacity(&server, false)?;
        // 10× what the server answers: more than the client cores can send over veth, so the
        // flood runs flat out and its real multiple is reported.
        let flood_rate = ((cap.throughput.max(r.peak) * 10.0) as u32).max(10_000);
        r.capacity = cap.throughput;
        r.phases.push(cap);
        if self.server_cpus.is_some() {
            match self.capacity(&server, true) {
                Ok(p) => {
                    r.capacity_nic = p.throughput;
                    r.phases.push(p);
                }
                // Reported, not fatal: the other phases do not depend on it.
                Err(e) => {
                    eprintln!("bench --xdp: capacity with the receive on the server cores: {e:#}")
                }
            }
        }
        r.phases
            .push(self.phase(&server, "isolation-unloaded", Some(self.iso_rate), None)?);
        r.phases.push(self.phase(
            &server,
            "isolation-flooded",
            Some(self.iso_rate),
            Some(flood_rate),
        )?);
        // The control: the same flood, never reaching the daemon. In XDP mode from an
        // unclassified source, which the XDP program drops where it would have redirected
        // group A's frames (the client core's work is the same); in socket mode an
        // unclassified datagram is the daemon's to read and drop, so there the flood goes to a
        // closed port (a different, slower kernel path: a weaker flood).
        let control = if mode == "xdp" {
            (CONTROL_SRC, PORT)
        } else {
            (GROUP_A_SRC, CONTROL_PORT)
        };
        r.phases.push(self.phase_to(
            &server,
            "isolation-control",
            Some(self.iso_rate),
            Some(flood_rate),
            control,
        )?);
        r.phases.push(self.phase(
            &server,
            "isolation-unloaded-after",
            Some(self.iso_rate),
            None,
        )?);
        r.stats = self.show(&server, "stats");
        r.groups = self.show(&server, "groups");
        let code = server.stop();
        if mode == "xdp" && r.stats["dataplane"]["xsk_rx"].as_u64().unwrap_or(0) == 0 {
            bail!("xdp mode but no frame came through AF_XDP: {}", r.stats);
        }
        if code != Some(0) {
            eprintln!("bench --xdp: turnstile ({mode}) exited with {code:?}");
        }
        Ok(())
    }
}

/// Seconds of `perf record` after the capacity measurement.
const PROFILE_S: f64 = 1.5;

/// The "Children" share of `net_rx_action` in `perf report --children --sort sym -g none
/// --stdio` output (lines like `  25.20%  1.63%  [k] net_rx_action`), as a fraction.
fn net_rx_share(report: &str) -> Option<f64> {
    report.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let children = f.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
        let _self = f.next()?;
        let (_kind, sym) = (f.next()?, f.next()?);
        (sym == "net_rx_action").then_some(children / 100.0)
    })
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn fmt_us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.0}ms", v as f64 / 1000.0)
    } else if v >= 1_000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{v}µs")
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Group B's unloaded p99 baseline: the better of the two unloaded runs (before and after
/// the floods), so one noisy unloaded run cannot flatter the flooded/unloaded ratio.
fn baseline_p99(r: &Run) -> u64 {
    r.phases
        .iter()
        .filter(|p| p.name.starts_with("isolation-unloaded") && p.p99_us > 0)
        .map(|p| p.p99_us)
        .min()
        .unwrap_or(0)
}

fn report_md(res: &XdpResults) -> String {
    let mut md = String::new();
    // Whether every capacity phase had the answers' receive on the client cores (RPS).
    let rps = {
        let mut caps = res
            .runs
            .iter()
            .flat_map(|r| &r.phases)
            .filter(|p| p.name.starts_with("capacity"))
            .peekable();
        caps.peek().is_some() && caps.all(|p| p.answers_rx_on_client)
    };
    let _ = writeln!(
        md,
        "# XDP vs socket over veth ({})\n\n{} users, {:.1} s phases, {} runs alternated (X, S, …); \
         server on core(s) {} with {} worker(s), generators on core(s) {}{}; load average before `{}`, after `{}`.\n",
        res.started_utc,
        res.users,
        res.phase_s,
        res.runs.len(),
        res.server_cpus.as_deref().unwrap_or("all"),
        res.workers,
        res.client_cpus.as_deref().unwrap_or("all"),
        if rps {
            " (in the capacity phases their receive of the answers too, by RPS)"
        } else {
            " (their receive of the answers NOT steered: it runs on the server cores)"
        },
        res.loadavg_before,
        res.loadavg_after
    );
    let _ = writeln!(
        md,
        "| mode | round | peak reg/s (closed loop) | half-load p50 | p99 | capacity: answered /s | server µs/REGISTER at capacity | of it, generator side's receive (perf) | capacity, server's receive on its cores: answered /s | µs/REGISTER incl. NAPI threads | B unloaded p99 (best of 2) | B with A flooded: success | p99 | p99 × unloaded | daemon waiting for its core meanwhile (ms/s) | control: the flood not reaching the daemon, B p99 | flood sent /s (× capacity) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &res.runs {
        if let Some(e) = &r.error {
            let _ = writeln!(
                md,
                "| {} | {} | error: {} |",
                r.mode,
                r.round,
                e.replace('|', "/").replace('\n', " ")
            );
            continue;
        }
        if r.mode == "null-responder" {
            let pk = r.phases.first().cloned().unwrap_or_default();
            let _ = writeln!(
                md,
                "| null-responder (generator ceiling) | | {:.0} | | | | | | | | | | | | | | |",
                pk.throughput
            );
            continue;
        }
        let ph = |n: &str| {
            r.phases
                .iter()
                .find(|p| p.name == n)
                .cloned()
                .unwrap_or_default()
        };
        let (pk, half, cap, capn, fl, ctl) = (
            ph("peak"),
            ph("half-load"),
            ph("capacity"),
            ph("capacity-nic"),
            ph("isolation-flooded"),
            ph("isolation-control"),
        );
        let base = baseline_p99(r);
        let frate = fl
            .flood
            .as_ref()
            .and_then(|f| f["rate"].as_f64())
            .unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {} | {} | {:.0}{} | {} | {} | {:.0} | {:.2} | {} | {:.0} | {:.2} | {} | {:.2} %{} | {} | {:.2}× | {:.1} | {} | {:.0} ({:.1}×) |",
            r.mode,
            r.round,
            pk.throughput,
            if pk.failed + pk.timeouts > 0 {
                format!(" ({} failed, {} timeouts)", pk.failed, pk.timeouts)
            } else {
                String::new()
            },
            fmt_us(half.p50_us),
            fmt_us(half.p99_us),
            cap.throughput,
            cap.cpu_us_per_register,
            cap.peer_rx_share
                .map(|f| format!("{:.0} %", f * 100.0))
                .unwrap_or_default(),
            capn.throughput,
            capn.cpu_us_per_register,
            fmt_us(base),
            fl.success_pct,
            if fl.retransmissions > 0 {
                format!(" ({} retrans.)", fl.retransmissions)
            } else {
                String::new()
            },
            fmt_us(fl.p99_us),
            if base > 0 { fl.p99_us as f64 / base as f64 } else { 0.0 },
            fl.server_runq_wait_ms_per_s,
            fmt_us(ctl.p99_us),
            frate,
            if r.capacity > 0.0 { frate / r.capacity } else { 0.0 },
        );
    }
    fn ok<'a>(res: &'a XdpResults, m: &'a str) -> impl Iterator<Item = &'a Run> + 'a {
        res.runs
            .iter()
            .filter(move |r| r.mode == m && r.error.is_none())
    }
    let phase_mean = |m: &str, name: &str, f: fn(&PhaseResult) -> f64| {
        mean(ok(res, m).filter_map(|r| r.phases.iter().find(|p| p.name == name).map(f)))
    };
    let _ = writeln!(md);
    // Capacity ratios: with the server's kernel receive on the server cores (`NicRx`, the
    // goal's basis: what a host with a NIC does) and with veth's default placement (that
    // receive on the client cores: only the daemon's own work counts against the server).
    let mut goal_checked = false;
    for (phase, field, label) in [
        (
            "capacity-nic",
            (|r: &Run| r.capacity_nic) as fn(&Run) -> f64,
            "the server's kernel receive on the server cores (threaded NAPI, as a NIC's \
             interrupt on the host that owns it), CPU including the NAPI threads",
        ),
        (
            "capacity",
            |r: &Run| r.capacity,
            "veth's default: the server's kernel receive (XDP program and UMEM copy, or \
             IP/UDP receive) runs on the client cores, so only the daemon's own work counts; \
             this understates what XDP saves",
        ),
    ] {
        let (cx, cs) = (
            mean(ok(res, "xdp").map(field).filter(|&c| c > 0.0)),
            mean(ok(res, "socket").map(field).filter(|&c| c > 0.0)),
        );
        if cx <= 0.0 || cs <= 0.0 {
            continue;
        }
        let ratio = cx / cs;
        let per_round: Vec<String> = ok(res, "xdp")
            .filter_map(|x| {
                let s = ok(res, "socket").find(|s| s.round == x.round)?;
                (field(s) > 0.0 && field(x) > 0.0).then(|| format!("{:.2}×", field(x) / field(s)))
            })
            .collect();
        let (ux, us) = (
            phase_mean("xdp", phase, |p| p.cpu_us_per_register),
            phase_mean("socket", phase, |p| p.cpu_us_per_register),
        );
        let goal = if goal_checked {
            String::new()
        } else {
            goal_checked = true;
            format!(
                "; goal ≥ 1.5×: {}",
                if ratio >= 1.5 { "met" } else { "NOT met" }
            )
        };
        let _ = writeln!(
            md,
            "**Capacity, XDP / socket: {ratio:.2}×** ({cx:.0} vs {cs:.0} REGISTER/s answered by {} \
             server core(s) under a flood it cannot keep up with, mean over rounds{goal}) — {label}. \
             Per round: {}. Server CPU per REGISTER answered: XDP {ux:.2} µs, socket {us:.2} µs.\n",
            res.workers,
            per_round.join(", "),
        );
    }
    if !goal_checked {
        let _ = writeln!(
            md,
            "**No XDP/socket capacity ratio**: a mode has no successful run (see errors above).\n"
        );
    }
    // perf's view of the veth-default capacity phase: the share of the daemon's CPU under
    // `net_rx_action`, i.e. the generator side's receive of the answers run on the server
    // core. With RPS it should be near zero; without, it is subtracted to show the server's
    // own work.
    let share = |m: &str| {
        mean(ok(res, m).filter_map(|r| {
            r.phases
                .iter()
                .find(|p| p.name == "capacity")?
                .peer_rx_share
        }))
    };
    let own = |m: &str| {
        mean(ok(res, m).filter_map(|r| {
            let p = r.phases.iter().find(|p| p.name == "capacity")?;
            Some(p.cpu_us_per_register * (1.0 - p.peer_rx_share?))
        }))
    };
    let (ox, os) = (own("xdp"), own("socket"));
    if ox > 0.0 && os > 0.0 {
        let _ = writeln!(
            md,
            "perf, veth-default capacity phase: {:.0} % (XDP) and {:.0} % (socket) of the daemon's \
             CPU under `net_rx_action` — the generator namespace's receive of the answers, which \
             veth runs on the sending core{}. Without it: XDP {ox:.2} µs vs socket {os:.2} µs of \
             server work per REGISTER, {:.2}×.\n",
            share("xdp") * 100.0,
            share("socket") * 100.0,
            if rps {
                " unless RPS hands it to the client cores (done here)"
            } else {
                " (not steered in this run)"
            },
            os / ox
        );
    }
    let (px, ps, pn) = (
        mean(ok(res, "xdp").map(|r| r.peak)),
        mean(ok(res, "socket").map(|r| r.peak)),
        mean(ok(res, "null-responder").map(|r| r.peak)),
    );
    if px > 0.0 && ps > 0.0 {
        let _ = writeln!(
            md,
            "Closed-loop peak, XDP / socket: {:.2}× ({px:.0} vs {ps:.0} reg/s). The generator runs \
             on the client core(s) and waits for every answer: its ceiling over the same veth \
             (null responder on the server cores) is {pn:.0} reg/s{}.\n",
            px / ps,
            if pn > 0.0 && px.min(ps) > 0.8 * pn {
                ", and both modes are within 20 % of it: this row measures the generator, \
                 the capacity row the server"
            } else {
                ""
            },
        );
    }
    for m in ["xdp", "socket"] {
        struct Iso {
            success: f64,
            ratio: f64,
            control: f64,
            multiple: f64,
            via: String,
            runq: f64,
        }
        let iso: Vec<Iso> = ok(res, m)
            .filter_map(|r| {
                let fl = r.phases.iter().find(|p| p.name == "isolation-flooded")?;
                let ctl = r.phases.iter().find(|p| p.name == "isolation-control");
                let u = baseline_p99(r).max(1) as f64;
                let sent = fl.flood.as_ref().and_then(|f| f["rate"].as_f64())?;
                Some(Iso {
                    success: fl.success_pct,
                    ratio: fl.p99_us as f64 / u,
                    control: ctl.map_or(0.0, |c| c.p99_us as f64 / u),
                    multiple: if r.capacity > 0.0 {
                        sent / r.capacity
                    } else {
                        0.0
                    },
                    via: fl
                        .flood
                        .as_ref()
                        .and_then(|f| f["via"].as_str())
                        .unwrap_or("?")
                        .to_string(),
                    runq: fl.server_runq_wait_ms_per_s,
                })
            })
            .collect();
        if iso.is_empty() {
            continue;
        }
        let met = iso.iter().all(|i| i.success >= 100.0 && i.ratio <= 2.0);
        let join = |f: &dyn Fn(&Iso) -> String| iso.iter().map(f).collect::<Vec<_>>().join(" / ");
        let _ = writeln!(
            md,
            "Isolation, {m}: group A flooded at {} its capacity (flood sent by {}); group B \
             success {} %, p99 flooded/unloaded {} (budget: 100 % and ≤ 2×: {}); control (the \
             same flood, never reaching the daemon: {}) p99/unloaded {}. Meanwhile the busy \
             daemon waited for its core {} ms/s (other tasks on it: each takes a scheduler \
             tick, 4 ms at HZ=250, from the worker).",
            join(&|i| format!("{:.1}×", i.multiple)),
            join(&|i| i.via.clone()),
            join(&|i| format!("{:.2}", i.success)),
            join(&|i| format!("{:.2}×", i.ratio)),
            if met { "met" } else { "NOT met" },
            if m == "xdp" {
                "from an unclassified source, dropped by the XDP program"
            } else {
                "to a closed port"
            },
            join(&|i| format!("{:.2}×", i.control)),
            join(&|i| format!("{:.1}", i.runq)),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_mask_of_taskset_lists() {
        assert_eq!(cpu_mask("1").as_deref(), Some("2"));
        assert_eq!(cpu_mask("2-3").as_deref(), Some("c"));
        assert_eq!(cpu_mask("0,2-3").as_deref(), Some("d"));
        assert_eq!(cpu_mask("64").as_deref(), Some("10000000000000000"));
        assert_eq!(cpu_mask("3-2"), None);
        assert_eq!(cpu_mask("x"), None);
        assert_eq!(cpu_mask(""), None);
    }

    #[test]
    fn net_rx_share_reads_the_children_column() {
        let rep = "# Children      Self  Symbol\n\
                   #\n\
                   \x20   39.57%     0.07%  [.] __libc_sendto\n\
                   \x20   25.20%     0.51%  [k] do_softirq.part.0\n\
                   \x20   24.33%     1.63%  [k] net_rx_action\n";
        assert_eq!(net_rx_share(rep), Some(0.2433));
        assert_eq!(net_rx_share("    1.00%  1.00%  [k] something_else\n"), None);
        assert_eq!(net_rx_share(""), None);
    }
}
