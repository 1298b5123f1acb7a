//! `cargo xtask bench`: REGISTER storm benchmarks, Turnstile side by side with Kamailio 5.6
//! (see BENCHMARKS.md for what each scenario does and how to read the numbers).
//!
//! For every scenario the systems are run *alternately* (T, K, T, K …) so that drift on the
//! shared 2-core machine (other builds, thermal) hits both alike; each run gets a fresh
//! server process. Per run:
//!
//! 1. peak: closed loop with a window of outstanding operations
//! 2. sustain: open loop at 90 % of peak; if ≥ 0.1 % fail (error, timeout or backlog),
//!    retry at 85 % of the previous rate (bounded attempts)
//! 3. latency: open loop at 50 % of peak: the p50…max reported
//!
//! Server CPU seconds (utime+stime over the whole process tree, /proc) are sampled around
//! each phase; memory is the peak of the tree's summed PSS (sampled) and the main process's
//! VmHWM. The "million" scenario registers N users once and reports time and memory.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use turnstile_benches::procstat;
use turnstile_benches::{
    run_storm, Algorithm, MeasureHook, NullResponder, Plan, StormConfig, StormReport,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// The stateless 200-OK responder: the generator's ceiling.
    Null,
    Turnstile,
    Kamailio,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Null => "null-responder",
            System::Turnstile => "turnstile",
            System::Kamailio => "kamailio",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Initial REGISTERs without authentication.
    Plain,
    /// Initial REGISTERs with MD5 digest: REGISTER → 401 → REGISTER with credentials → 200.
    Md5,
    /// Refresh storm with MD5: same Call-ID, CSeq+1, cached nonce with nc+1.
    Refresh,
    /// Register N users once (no auth): time to register all and memory held.
    Million,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::Md5 => "md5",
            Scenario::Refresh => "refresh",
            Scenario::Million => "million",
        }
    }
    fn auth(self) -> Option<Algorithm> {
        match self {
            Scenario::Md5 | Scenario::Refresh => Some(Algorithm::Md5),
            _ => None,
        }
    }
    fn plan(self) -> Plan {
        match self {
            Scenario::Refresh => Plan::Refresh,
            _ => Plan::Register,
        }
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Short run (< 3 minutes): fewer users, shorter phases, one round.
    #[arg(long)]
    pub quick: bool,
    /// Systems to measure (repeatable). Default: null responder, turnstile, kamailio.
    #[arg(long, value_enum)]
    pub only: Vec<System>,
    /// Scenarios (repeatable). Default: plain, md5, refresh, million.
    #[arg(long, value_enum)]
    pub scenario: Vec<Scenario>,
    /// Rounds of alternation per scenario (default: 2, quick: 1).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Users for the throughput scenarios (default: 100000, quick: 50000).
    #[arg(long)]
    pub users: Option<u32>,
    /// Users for the million scenario (default: 1000000, quick: 100000).
    #[arg(long)]
    pub million_users: Option<u32>,
    /// Seconds per phase (default: 8, quick: 2.5).
    #[arg(long)]
    pub phase_seconds: Option<f64>,
    /// Closed-loop window of outstanding operations.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    pub gen_threads: usize,
    /// Generator source sockets.
    #[arg(long, default_value_t = 64)]
    pub gen_sockets: usize,
    /// Transaction timeout for the benchmark (Timer F); T1 stays 500 ms.
    #[arg(long, default_value_t = 4000)]
    pub timeout_ms: u64,
    /// Turnstile worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub turnstile_workers: usize,
    /// Kamailio UDP worker processes.
    #[arg(long, default_value_t = 2)]
    pub kamailio_children: usize,
    /// Null responder threads (SO_REUSEPORT sockets).
    #[arg(long, default_value_t = 2)]
    pub null_threads: usize,
    /// Only the XDP vs socket data plane section over veth between network namespaces
    /// (bench_xdp.rs), which otherwise runs after the loopback matrix.
    #[arg(long, conflicts_with = "no_xdp")]
    pub xdp: bool,
    /// Skip the XDP vs socket section.
    #[arg(long)]
    pub no_xdp: bool,
    /// Do not build release binaries first.
    #[arg(long)]
    pub no_build: bool,
    /// Output directory (default: bench-results/<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

struct Params {
    users: u32,
    million_users: u32,
    phase: Duration,
    rounds: u32,
    sustain_attempts: u32,
}

#[derive(Serialize, Default, Clone)]
struct Phase {
    name: String,
    report: StormReport,
    server_cpu_s: f64,
    /// Server CPU per completed operation (µs).
    cpu_us_per_op: f64,
    /// Server CPU per request answered (µs): with digest an operation is two requests.
    cpu_us_per_request: f64,
    generator_cpu_s: f64,
}

#[derive(Serialize, Default, Clone)]
struct RunResult {
    system: String,
    scenario: String,
    round: u32,
    users: u32,
    phases: Vec<Phase>,
    peak_ops: f64,
    sustained_ops: f64,
    sustained_ok: bool,
    /// Million scenario: seconds to register all users.
    register_all_s: f64,
    /// Peak of the summed PSS over the server's process tree (MiB).
    peak_pss_mib: f64,
    /// VmHWM of the main server process (MiB).
    main_hwm_mib: f64,
    server_processes: usize,
    error: Option<String>,
}

#[derive(Serialize)]
struct Results {
    started_utc: String,
    quick: bool,
    machine: String,
    loadavg_before: String,
    loadavg_after: String,
    kamailio_version: String,
    turnstile_skipped: Option<String>,
    xdp: String,
    runs: Vec<RunResult>,
}

pub fn run_bench(root: &Path, args: BenchArgs) -> Result<()> {
    if args.xdp {
        // XDP vs socket over veth alone: its own report (xdp.md / xdp.json, bench_xdp.rs).
        if let crate::bench_xdp::Outcome::Report(md) = crate::bench_xdp::run(root, &args, None)? {
            println!("{md}");
        }
        return Ok(());
    }
    // The generator runs inside this process: `cargo xtask` builds xtask unoptimized, and a
    // debug generator is several times slower than the release one (it would become the
    // bottleneck). Re-run ourselves from a release build.
    if cfg!(debug_assertions) && std::env::var_os("TURNSTILE_BENCH_DEBUG_GENERATOR").is_none() {
        crate::run(Command::new("cargo").current_dir(root).args([
            "build",
            "--release",
            "-p",
            "xtask",
        ]))?;
        let st = Command::new(root.join("target/release/xtask"))
            .args(std::env::args_os().skip(1))
            .status()
            .context("re-running target/release/xtask")?;
        std::process::exit(st.code().unwrap_or(1));
    }
    let t_start = Instant::now();
    let p = Params {
        users: args
            .users
            .unwrap_or(if args.quick { 50_000 } else { 100_000 }),
        million_users: args
            .million_users
            .unwrap_or(if args.quick { 100_000 } else { 1_000_000 }),
        phase: Duration::from_secs_f64(args.phase_seconds.unwrap_or(if args.quick {
            2.5
        } else {
            8.0
        })),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 2 }).max(1),
        sustain_attempts: if args.quick { 2 } else { 4 },
    };
    let mut systems = if args.only.is_empty() {
        vec![System::Null, System::Turnstile, System::Kamailio]
    } else {
        args.only.clone()
    };
    let scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::Plain,
            Scenario::Md5,
            Scenario::Refresh,
            Scenario::Million,
        ]
    } else {
        args.scenario.clone()
    };
    let release = root.join("target/release");
    if systems.contains(&System::Kamailio) {
        ensure_kamailio()?;
    }
    if !args.no_build {
        crate::run(Command::new("cargo").current_dir(root).args([
            "build",
            "--release",
            "-p",
            "turnstile-benches",
            "--bins",
        ]))?;
    }
    let mut turnstile_skipped = None;
    if systems.contains(&System::Turnstile) {
        let ok = args.no_build
            || Command::new("cargo")
                .current_dir(root)
                .args(["build", "--release", "-p", "turnstile"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if !ok || !release.join("turnstile").exists() {
            let why = "target/release/turnstile did not build; Turnstile rows skipped".to_string();
            eprintln!("bench: {why}");
            turnstile_skipped = Some(why);
            systems.retain(|s| *s != System::Turnstile);
        }
    }
    let stamp = utc_stamp();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("bench-results").join(&stamp));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!("bench: results in {}", out.display());
    let loadavg_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();

    let ctx = Ctx {
        root,
        release: &release,
        out: &out,
        args: &args,
        p: &p,
    };
    let mut runs = Vec::new();
    for &sc in &scenarios {
        // The null responder answers everything with 200 (no challenge), so one ceiling
        // per scenario kind is enough: plain (and million for memory reference).
        if systems.contains(&System::Null) && matches!(sc, Scenario::Plain) {
            runs.push(ctx.run_one(System::Null, sc, 0));
            save_partial(&out, &runs);
        }
        let alternating: Vec<System> = systems
            .iter()
            .copied()
            .filter(|s| *s != System::Null)
            .collect();
        let rounds = if sc == Scenario::Million { 1 } else { p.rounds };
        for round in 0..rounds {
            for &sys in &alternating {
                runs.push(ctx.run_one(sys, sc, round));
                save_partial(&out, &runs);
            }
        }
    }
    let results = Results {
        started_utc: stamp,
        quick: args.quick,
        machine: machine_summary(),
        loadavg_before,
        loadavg_after: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
        kamailio_version: kamailio_version(),
        turnstile_skipped,
        xdp: String::new(),
        runs,
    };
    // XDP vs socket over veth, same directory, after the loopback matrix (which must not
    // share the machine with it); its section goes at the end of report.md.
    let mut results = results;
    let xdp_md = if args.no_xdp {
        results.xdp = "skipped (--no-xdp)".into();
        None
    } else {
        match crate::bench_xdp::run(root, &args, Some(&out)) {
            Ok(crate::bench_xdp::Outcome::Report(md)) => {
                results.xdp = "see the section at the end (xdp.md, xdp.json)".into();
                Some(md)
            }
            Ok(crate::bench_xdp::Outcome::Skipped(why)) => {
                results.xdp = format!("skipped: {why}");
                None
            }
            Err(e) => {
                results.xdp = format!("failed: {e:#}");
                None
            }
        }
    };
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let mut md = report_md(&results);
    if let Some(x) = xdp_md {
        // One level down: a section of this report.
        md.push('\n');
        md.push_str(&x.replacen("# XDP vs socket", "## XDP vs socket", 1));
    }
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(out.join("throughput.svg"), svg(&results))?;
    println!("{md}");
    eprintln!(
        "bench: done in {:.0}s: {}/report.md, results.json, throughput.svg",
        t_start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn save_partial(out: &Path, runs: &[RunResult]) {
    if let Ok(s) = serde_json::to_string_pretty(runs) {
        let _ = std::fs::write(out.join("runs.partial.json"), s);
    }
}

struct Ctx<'a> {
    root: &'a Path,
    release: &'a Path,
    out: &'a Path,
    args: &'a BenchArgs,
    p: &'a Params,
}

/// A server under test, started by us, stopped by PID.
struct Server {
    child: Option<Child>,
    /// In-process responder is not used for measurement (CPU would mix with the generator),
    /// kept for completeness when the binary is missing.
    _inproc: Option<NullResponder>,
    pid: u32,
    addr: SocketAddr,
    pids: Vec<u32>,
}

/// CPU seconds of the server's process tree (re-walked: Kamailio's children are fixed after
/// start-up, but be exact) plus any process seen at start-up that left the tree.
fn tree_cpu(root: u32, known: &[u32]) -> f64 {
    let mut pids = procstat::tree_pids(root);
    for p in known {
        if !pids.contains(p) {
            pids.push(*p);
        }
    }
    pids.into_iter().map(procstat::cpu_seconds).sum()
}

impl Server {
    fn cpu(&self) -> f64 {
        tree_cpu(self.pid, &self.pids)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by PID.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let t = Instant::now();
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Kamailio's children exit with the main process; anything left of the tree
            // we started is killed by PID.
            std::thread::sleep(Duration::from_millis(100));
            for &p in &self.pids {
                if p != self.pid && Path::new(&format!("/proc/{p}")).exists() {
                    unsafe {
                        libc::kill(p as i32, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

const DOMAIN: &str = "bench.test";
const PASSWORD: &str = "{user}-pw";

impl Ctx<'_> {
    fn run_one(&self, sys: System, sc: Scenario, round: u32) -> RunResult {
        let users = if sc == Scenario::Million {
            self.p.million_users
        } else {
            self.p.users
        };
        eprintln!(
            "\n=== {} / {} / round {} ({} users) ===",
            sys.name(),
            sc.name(),
            round,
            users
        );
        let mut rr = RunResult {
            system: sys.name().into(),
            scenario: sc.name().into(),
            round,
            users,
            ..Default::default()
        };
        match self.try_run(sys, sc, users, &mut rr) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("bench: {} / {} failed: {e:#}", sys.name(), sc.name());
                rr.error = Some(format!("{e:#}"));
            }
        }
        rr
    }

    fn try_run(&self, sys: System, sc: Scenario, users: u32, rr: &mut RunResult) -> Result<()> {
        let dir = self
            .out
            .join(format!("{}-{}-r{}", sys.name(), sc.name(), rr.round));
        std::fs::create_dir_all(&dir)?;
        let mut server = self.start(sys, sc, users, &dir)?;
        rr.server_processes = server.pids.len();
        let mon = procstat::MemMonitor::start(server.pid, Duration::from_millis(500));
        let base = StormConfig {
            target: server.addr,
            domain: DOMAIN.into(),
            users: 0..users,
            password: PASSWORD.into(),
            auth: if sys == System::Null { None } else { sc.auth() },
            rate: None,
            window: self.args.window,
            duration: self.p.phase,
            total: None,
            expires: 3600,
            threads: self.args.gen_threads,
            sockets: self.args.gen_sockets,
            t1_ms: 500,
            t2_ms: 4000,
            timeout_ms: self.args.timeout_ms,
            plan: sc.plan(),
            progress: true,
            ..Default::default()
        };
        if sc == Scenario::Million {
            let cfg = StormConfig {
                total: Some(users as u64),
                duration: Duration::from_secs(600),
                ..base.clone()
            };
            let t = Instant::now();
            let ph = self.phase(&server, "register-all", &cfg)?;
            rr.register_all_s = t.elapsed().as_secs_f64();
            rr.peak_ops = ph.report.throughput;
            rr.sustained_ok = ph.report.completed == users as u64;
            rr.phases.push(ph);
            // Let timers and lazy allocations settle, then sample memory once more.
            std::thread::sleep(Duration::from_secs(1));
        } else {
            let peak = self.phase(&server, "peak", &base)?;
            let peak_ops = peak.report.throughput;
            rr.peak_ops = peak_ops;
            rr.phases.push(peak);
            if peak_ops < 10.0 {
                bail!("server answered almost nothing at peak ({peak_ops:.0}/s)");
            }
            let mut rate = peak_ops * 0.9;
            for attempt in 0..self.p.sustain_attempts {
                let cfg = StormConfig {
                    rate: Some(rate as u32),
                    ..base.clone()
                };
                let ph = self.phase(&server, &format!("sustain@{:.0}", rate), &cfg)?;
                let ok = ph.report.failure_ratio() < 0.001;
                rr.sustained_ops = ph.report.throughput;
                rr.sustained_ok = ok;
                rr.phases.push(ph);
                if ok || attempt + 1 == self.p.sustain_attempts {
                    break;
                }
                rate *= 0.85;
            }
            let cfg = StormConfig {
                rate: Some((peak_ops * 0.5) as u32),
                ..base.clone()
            };
            let ph = self.phase(&server, "half-load", &cfg)?;
            rr.phases.push(ph);
        }
        rr.main_hwm_mib = procstat::hwm_kb(server.pid) as f64 / 1024.0;
        rr.peak_pss_mib = mon.finish(server.pid) as f64 / 1024.0;
        server.stop();
        Ok(())
    }

    fn phase(&self, server: &Server, name: &str, cfg: &StormConfig) -> Result<Phase> {
        eprintln!("--- {name}: rate {:?}, window {}", cfg.rate, cfg.window);
        let me = std::process::id();
        // CPU is sampled when the measured phase starts (after any warm-up), not before.
        let start = std::sync::Arc::new(std::sync::Mutex::new((0.0f64, 0.0f64)));
        let (pid, pids, st) = (server.pid, server.pids.clone(), start.clone());
        let mut cfg = cfg.clone();
        cfg.on_measure_start = Some(MeasureHook(std::sync::Arc::new(move || {
            *st.lock().unwrap() = (tree_cpu(pid, &pids), procstat::cpu_seconds(me));
        })));
        let report = run_storm(&cfg).context("storm")?;
        let (c0, g0) = *start.lock().unwrap();
        let (c1, g1) = (server.cpu(), procstat::cpu_seconds(me));
        let cpu = c1 - c0;
        let requests: u64 = report.per_code.values().sum();
        eprintln!(
            "--- {name}: {:.0}/s ok {} failed {} timeouts {} backlog {} retrans {} p50 {}µs p99 {}µs max {}µs, server cpu {:.2}s",
            report.throughput,
            report.completed,
            report.failed,
            report.timeouts,
            report.backlog,
            report.retransmissions,
            report.latency_us.p50,
            report.latency_us.p99,
            report.latency_us.max,
            cpu
        );
        Ok(Phase {
            name: name.into(),
            cpu_us_per_op: if report.completed > 0 {
                cpu * 1e6 / report.completed as f64
            } else {
                0.0
            },
            cpu_us_per_request: if requests > 0 {
                cpu * 1e6 / requests as f64
            } else {
                0.0
            },
            server_cpu_s: cpu,
            generator_cpu_s: g1 - g0,
            report,
        })
    }

    fn start(&self, sys: System, sc: Scenario, users: u32, dir: &Path) -> Result<Server> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let mut cmd;
        match sys {
            System::Null => {
                cmd = Command::new(self.release.join("null-responder"));
                cmd.args(["--listen", &addr.to_string(), "--threads"])
                    .arg(self.args.null_threads.to_string())
                    .args(["--seconds", "3600"]);
            }
            System::Turnstile => {
                let users_file = dir.join("users.txt");
                // Without auth the users file is not consulted; keep it tiny so memory
                // compares registrations, not credentials (Kamailio loads none either).
                let n_cred = if sc.auth().is_some() { users } else { 1 };
                write_users(
                    &users_file,
                    n_cred,
                    |n| format!("user{n:06}:user{n:06}-pw\n"),
                    "",
                )?;
                let cfg = dir.join("turnstile.toml");
                std::fs::write(&cfg, turnstile_toml(addr, self.args.turnstile_workers, sc))?;
                cmd = Command::new(self.release.join("turnstile"));
                cmd.args(["run", "--config"])
                    .arg(&cfg)
                    .env("RUST_LOG", "warn");
            }
            System::Kamailio => {
                let kcfg = self.root.join("benches/kamailio/kamailio.cfg");
                let run = dir.join("run");
                std::fs::create_dir_all(&run)?;
                let shm = if sc == Scenario::Million {
                    // ~1.1 KB per binding in Kamailio's shared memory, plus headroom.
                    (users as u64 * 1700 / (1 << 20)).max(512)
                } else {
                    512
                };
                cmd = Command::new("kamailio");
                cmd.arg("-f")
                    .arg(&kcfg)
                    .args(["-DD", "-E", "-m", &shm.to_string(), "-M", "64", "-n"])
                    .arg(self.args.kamailio_children.to_string())
                    .arg("-l")
                    .arg(format!("udp:{addr}"))
                    .arg("-Y")
                    .arg(&run)
                    .arg("-P")
                    .arg(run.join("kamailio.pid"))
                    .arg("-w")
                    .arg(&run);
                if sc.auth().is_some() {
                    let db = dir.join("kamailio-db");
                    std::fs::create_dir_all(&db)?;
                    write_users(
                        &db.join("htable"),
                        users,
                        |n| format!("{}:user{n:06}:0:0:user{n:06}-pw:0\n", n + 1),
                        "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int)\n",
                    )?;
                    std::fs::write(
                        db.join("version"),
                        "table_name(string) table_version(int)\nhtable:2\n",
                    )?;
                    cmd.args(["-A", "WITH_AUTH", "-A"])
                        .arg(format!("DBURL=\"text://{}\"", db.display()));
                }
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", sys.name()))?;
        let pid = child.id();
        let mut server = Server {
            child: Some(child),
            _inproc: None,
            pid,
            addr,
            pids: vec![pid],
        };
        self.wait_ready(&mut server, sc, dir)?;
        server.pids = procstat::tree_pids(pid);
        eprintln!(
            "bench: {} ready on {addr} (pid {pid}, {} processes)",
            sys.name(),
            server.pids.len()
        );
        Ok(server)
    }

    fn wait_ready(&self, server: &mut Server, sc: Scenario, dir: &Path) -> Result<()> {
        let t = Instant::now();
        let probe = StormConfig {
            target: server.addr,
            domain: DOMAIN.into(),
            users: 0..1,
            password: PASSWORD.into(),
            auth: sc.auth(),
            total: Some(1),
            duration: Duration::from_secs(2),
            threads: 1,
            sockets: 1,
            t1_ms: 100,
            timeout_ms: 400,
            ..Default::default()
        };
        loop {
            if let Some(c) = server.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                    let tail: String = log
                        .lines()
                        .rev()
                        .take(15)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n");
                    bail!("server exited during start-up ({st}); log tail:\n{tail}");
                }
            }
            if let Ok(r) = run_storm(&probe) {
                if r.completed == 1 {
                    return Ok(());
                }
            }
            if t.elapsed() > Duration::from_secs(90) {
                bail!(
                    "server not answering REGISTER after 90 s (log: {})",
                    dir.join("server.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn write_users(path: &Path, n: u32, line: impl Fn(u32) -> String, header: &str) -> Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    w.write_all(header.as_bytes())?;
    for i in 0..n {
        w.write_all(line(i).as_bytes())?;
    }
    w.flush()?;
    Ok(())
}

fn turnstile_toml(addr: SocketAddr, workers: usize, sc: Scenario) -> String {
    let auth = if sc.auth().is_some() { "local" } else { "none" };
    format!(
        r#"# Generated by `cargo xtask bench` ({sc}).
[server]
domain = "{DOMAIN}"
listen = ["{addr}"]
workers = {workers}
state_dir = "var"
snapshot_interval = 0

[dataplane]
mode = "socket"

[registrar]
min_expires = 60
max_expires = 7200
default_expires = 3600
max_contacts_per_aor = 10

[auth]
users_file = "users.txt"
algorithms = ["MD5"]
nonce_ttl = 300
# The whole generator is one source address: never deny it (a benchmark measures, it does
# not defend).
deny_after = 0

[[ip_group]]
name = "bench"
type = "user"
sources = ["127.0.0.0/8"]
auth = "{auth}"
"#,
        sc = sc.name()
    )
}

fn ensure_kamailio() -> Result<()> {
    if Path::new("/usr/sbin/kamailio").exists() || which("kamailio") {
        return Ok(());
    }
    eprintln!("bench: kamailio missing; installing the Debian package (apt-get install -y kamailio kamailio-extra-modules)");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root {
        bail!("kamailio is not installed; run as root: apt-get update && apt-get install -y kamailio kamailio-extra-modules (or `bash scripts/setup.sh`), or pass --only turnstile");
    }
    crate::run(Command::new("apt-get").arg("update"))?;
    crate::run(Command::new("apt-get").args([
        "install",
        "-y",
        "kamailio",
        "kamailio-extra-modules",
    ]))?;
    Ok(())
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn kamailio_version() -> String {
    Command::new("kamailio")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|_| "not installed".into())
}

fn utc_stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn machine_summary() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {model}, Linux {}", kernel.trim())
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// Mean over rounds of one (system, scenario).
#[derive(Default)]
struct Summary {
    n: usize,
    peak: f64,
    sustained: f64,
    sustained_ok: bool,
    failures: u64,
    timeouts: u64,
    retrans: u64,
    lat: [f64; 5],
    cpu_op: f64,
    cpu_req: f64,
    pss: f64,
    register_all_s: f64,
    errors: Vec<String>,
}

fn summarize(runs: &[&RunResult]) -> Summary {
    let mut s = Summary {
        sustained_ok: true,
        ..Default::default()
    };
    for r in runs {
        if let Some(e) = &r.error {
            s.errors.push(e.lines().next().unwrap_or("").to_string());
            continue;
        }
        s.n += 1;
        s.peak += r.peak_ops;
        s.sustained += r.sustained_ops;
        s.sustained_ok &= r.sustained_ok;
        s.pss += r.peak_pss_mib;
        s.register_all_s += r.register_all_s;
        for ph in &r.phases {
            s.failures += ph.report.failed;
            s.timeouts += ph.report.timeouts;
            s.retrans += ph.report.retransmissions;
        }
        // Latency from the half-load phase (or the only phase in the million scenario).
        if let Some(ph) = r
            .phases
            .iter()
            .find(|p| p.name == "half-load")
            .or(r.phases.last())
        {
            let l = &ph.report.latency_us;
            for (i, v) in [l.p50, l.p90, l.p99, l.p999, l.max].into_iter().enumerate() {
                s.lat[i] += v as f64;
            }
        }
        // CPU from the last sustain attempt (open loop at ≤ 90 % of peak); million: its phase.
        if let Some(ph) = r
            .phases
            .iter()
            .rev()
            .find(|p| p.name.starts_with("sustain") || p.name == "register-all")
        {
            s.cpu_op += ph.cpu_us_per_op;
            s.cpu_req += ph.cpu_us_per_request;
        }
    }
    if s.n > 0 {
        let n = s.n as f64;
        s.peak /= n;
        s.sustained /= n;
        s.pss /= n;
        s.register_all_s /= n;
        s.cpu_op /= n;
        s.cpu_req /= n;
        for v in s.lat.iter_mut() {
            *v /= n;
        }
    }
    s
}

fn fmt_us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}ms", v / 1000.0)
    } else {
        format!("{v:.0}µs")
    }
}

fn report_md(res: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Storm benchmark {}\n", res.started_utc);
    let _ = writeln!(
        md,
        "Machine: {}. Kamailio: {}. Load average before: {}, after: {}. Mode: {}.\n",
        res.machine,
        res.kamailio_version,
        res.loadavg_before,
        res.loadavg_after,
        if res.quick { "quick" } else { "full" }
    );
    if let Some(s) = &res.turnstile_skipped {
        let _ = writeln!(md, "Turnstile: {s}.\n");
    }
    let _ = writeln!(md, "XDP: {}.\n", res.xdp);
    let ceiling = res
        .runs
        .iter()
        .find(|r| r.system == "null-responder" && r.error.is_none())
        .map(|r| r.peak_ops);
    let _ = writeln!(
        md,
        "| system | scenario | users | peak reg/s | sustained reg/s (<0.1% fail) | failed | timeouts | retrans | p50 | p90 | p99 | p99.9 | max | server CPU µs/REGISTER (per op) | memory (PSS) | vs Kamailio | generator ceiling |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut scen: Vec<&str> = Vec::new();
    for r in &res.runs {
        if !scen.contains(&r.scenario.as_str()) {
            scen.push(&r.scenario);
        }
    }
    for sc in scen {
        let mut systems: Vec<&str> = Vec::new();
        for r in res.runs.iter().filter(|r| r.scenario == sc) {
            if !systems.contains(&r.system.as_str()) {
                systems.push(&r.system);
            }
        }
        let kam: Vec<&RunResult> = res
            .runs
            .iter()
            .filter(|r| r.scenario == sc && r.system == "kamailio")
            .collect();
        let k = summarize(&kam);
        for sys in systems {
            let rs: Vec<&RunResult> = res
                .runs
                .iter()
                .filter(|r| r.scenario == sc && r.system == sys)
                .collect();
            let s = summarize(&rs);
            let users = rs.first().map(|r| r.users).unwrap_or(0);
            if s.n == 0 {
                let _ = writeln!(
                    md,
                    "| {sys} | {sc} | {users} | error: {} | | | | | | | | | | | | | |",
                    s.errors.join("; ").replace('|', "/")
                );
                continue;
            }
            let million = sc == "million";
            let ratio = if sys == "turnstile" && k.n > 0 {
                if million {
                    if k.register_all_s > 0.0 && s.register_all_s > 0.0 {
                        format!(
                            "{:.2}× faster, {:.2}× memory",
                            k.register_all_s / s.register_all_s,
                            s.pss / k.pss.max(1e-9)
                        )
                    } else {
                        String::new()
                    }
                } else if k.sustained > 0.0 {
                    format!("{:.2}×", s.sustained / k.sustained)
                } else {
                    String::new()
                }
            } else {
                String::new()
            };
            let sustained = if million {
                format!("all in {:.1}s", s.register_all_s)
            } else {
                format!(
                    "{:.0}{}",
                    s.sustained,
                    if s.sustained_ok { "" } else { " (not clean)" }
                )
            };
            let _ = writeln!(
                md,
                "| {sys} | {sc} | {users} | {:.0} | {sustained} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} ({:.1}) | {:.0} MiB | {ratio} | {} |",
                s.peak,
                s.failures,
                s.timeouts,
                s.retrans,
                fmt_us(s.lat[0]),
                fmt_us(s.lat[1]),
                fmt_us(s.lat[2]),
                fmt_us(s.lat[3]),
                fmt_us(s.lat[4]),
                s.cpu_req,
                s.cpu_op,
                s.pss,
                ceiling.map(|c| format!("{c:.0}")).unwrap_or_default(),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nPeak: closed loop (window of outstanding operations). Sustained: open loop at 90 % of peak, \
stepped down 15 % until < 0.1 % of operations fail (mean over rounds; \"not clean\" = no attempt passed). \
Latency: open loop at 50 % of peak, from scheduled start to final response (µs, mean over rounds). \
A digest operation is two REGISTER transactions (401 round trip); CPU per REGISTER divides server CPU \
(whole process tree, utime+stime) by requests answered, per op by completed operations. Memory: peak of the \
summed PSS over the server's processes. failed/timeouts/retrans sum over all phases and rounds."
    );
    let _ = writeln!(md, "\nPer run:\n");
    let _ = writeln!(md, "| system | scenario | round | phase | reg/s | ok | failed | timeouts | backlog | retrans | p50 | p99 | max | server CPU s | gen CPU s |");
    let _ = writeln!(
        md,
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &res.runs {
        if let Some(e) = &r.error {
            let _ = writeln!(
                md,
                "| {} | {} | {} | error | {} |||||||||||",
                r.system,
                r.scenario,
                r.round,
                e.lines().next().unwrap_or("").replace('|', "/")
            );
        }
        for ph in &r.phases {
            let x = &ph.report;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
                r.system,
                r.scenario,
                r.round,
                ph.name,
                x.throughput,
                x.completed,
                x.failed,
                x.timeouts,
                x.backlog,
                x.retransmissions,
                fmt_us(x.latency_us.p50 as f64),
                fmt_us(x.latency_us.p99 as f64),
                fmt_us(x.latency_us.max as f64),
                ph.server_cpu_s,
                ph.generator_cpu_s
            );
        }
    }
    md
}

/// Throughput and p99 per second over the whole run, one panel pair per scenario, one line
/// per system (round 0; phases concatenated in order).
fn svg(res: &Results) -> String {
    let colors = [
        ("turnstile", "#d9480f"),
        ("kamailio", "#1864ab"),
        ("null-responder", "#868e96"),
    ];
    let mut scen: Vec<&str> = Vec::new();
    for r in &res.runs {
        if r.error.is_none() && !scen.contains(&r.scenario.as_str()) {
            scen.push(&r.scenario);
        }
    }
    let (w, ph, gap, left) = (900.0, 160.0, 50.0, 70.0);
    let h = scen.len() as f64 * (2.0 * ph + 2.0 * gap) + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut x_legend = left;
    for (name, col) in colors {
        let _ = writeln!(
            s,
            r#"<rect x="{x_legend}" y="8" width="12" height="12" fill="{col}"/><text x="{}" y="18">{name}</text>"#,
            x_legend + 16.0
        );
        x_legend += 130.0;
    }
    for (i, sc) in scen.iter().enumerate() {
        let y0 = 40.0 + i as f64 * (2.0 * ph + 2.0 * gap);
        let series: Vec<(&str, Vec<(f64, f64)>)> = res
            .runs
            .iter()
            .filter(|r| r.scenario == *sc && r.round == 0 && r.error.is_none())
            .map(|r| {
                let mut pts = Vec::new();
                let mut t = 0.0;
                for phs in &r.phases {
                    for iv in &phs.report.series {
                        pts.push((t + iv.t as f64, iv.completed as f64));
                    }
                    t += phs.report.series.len() as f64 + 1.0;
                }
                (r.system.as_str(), pts)
            })
            .collect();
        let lat: Vec<(&str, Vec<(f64, f64)>)> = res
            .runs
            .iter()
            .filter(|r| r.scenario == *sc && r.round == 0 && r.error.is_none())
            .map(|r| {
                let mut pts = Vec::new();
                let mut t = 0.0;
                for phs in &r.phases {
                    for iv in &phs.report.series {
                        if iv.p99_us > 0 {
                            pts.push((t + iv.t as f64, (iv.p99_us as f64).log10()));
                        }
                    }
                    t += phs.report.series.len() as f64 + 1.0;
                }
                (r.system.as_str(), pts)
            })
            .collect();
        let tmax = series
            .iter()
            .chain(lat.iter())
            .flat_map(|(_, p)| p.iter().map(|q| q.0))
            .fold(1.0f64, f64::max);
        let cmax = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| q.1))
            .fold(1.0f64, f64::max)
            * 1.1;
        panel(
            &mut s,
            &format!("{sc}: completed REGISTER operations per second"),
            left,
            y0,
            w - left - 20.0,
            ph,
            tmax,
            0.0,
            cmax,
            &series,
            &colors,
            |v| format!("{:.0}k", v / 1000.0),
        );
        panel(
            &mut s,
            &format!("{sc}: p99 latency per second (log scale)"),
            left,
            y0 + ph + gap,
            w - left - 20.0,
            ph,
            tmax,
            1.0,
            7.0,
            &lat,
            &colors,
            |v| fmt_us(10f64.powf(v)),
        );
    }
    s.push_str("</svg>\n");
    s
}

#[allow(clippy::too_many_arguments)]
fn panel(
    s: &mut String,
    title: &str,
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    tmax: f64,
    vmin: f64,
    vmax: f64,
    series: &[(&str, Vec<(f64, f64)>)],
    colors: &[(&str, &str)],
    label: impl Fn(f64) -> String,
) {
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-weight="bold">{title}</text>"#,
        y0 - 6.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>"##
    );
    for k in 0..=4 {
        let v = vmin + (vmax - vmin) * k as f64 / 4.0;
        let y = y0 + h - h * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + w,
            x0 - 4.0,
            y + 4.0,
            label(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{tmax:.0} s</text>"#,
        x0 + w,
        y0 + h + 14.0
    );
    for (name, pts) in series {
        let col = colors
            .iter()
            .find(|c| c.0 == *name)
            .map(|c| c.1)
            .unwrap_or("black");
        let mut d = String::new();
        for (t, v) in pts {
            let x = x0 + w * t / tmax;
            let y = y0 + h - h * ((v - vmin) / (vmax - vmin)).clamp(0.0, 1.0);
            let _ = write!(d, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{col}" stroke-width="1.5" points="{d}"/>"#
        );
    }
}
