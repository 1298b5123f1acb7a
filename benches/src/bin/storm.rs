//! `storm`: REGISTER load generator CLI (see BENCHMARKS.md). Prints the JSON report on stdout.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;
use turnstile_benches::{run_storm, Algorithm, Plan, StormConfig};

#[derive(Clone, Copy, ValueEnum)]
enum PlanArg {
    Register,
    Refresh,
    Rru,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuthArg {
    None,
    Md5,
    Sha256,
}

#[derive(Parser)]
#[command(about = "SIP REGISTER storm generator (loopback only)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: SocketAddr,
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// Number of users (user000000 ..).
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    #[arg(long, default_value_t = 0)]
    first_user: u32,
    /// Password template ({user}, {n}).
    #[arg(long, default_value = "{user}-pw")]
    password: String,
    #[arg(long, value_enum, default_value = "none")]
    auth: AuthArg,
    /// Open-loop rate (ops/s); omit for closed loop.
    #[arg(long)]
    rate: Option<u32>,
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many operations.
    #[arg(long)]
    total: Option<u64>,
    #[arg(long, default_value_t = 3600)]
    expires: u32,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 32)]
    sockets: usize,
    #[arg(long, default_value_t = 500)]
    t1_ms: u64,
    #[arg(long, default_value_t = 4000)]
    t2_ms: u64,
    #[arg(long, default_value_t = 32_000)]
    timeout_ms: u64,
    #[arg(long, value_enum, default_value = "register")]
    plan: PlanArg,
    /// No per-second progress on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.target.ip().is_loopback(),
        "storm only targets loopback addresses"
    );
    let cfg = StormConfig {
        target: a.target,
        domain: a.domain,
        users: a.first_user..a.first_user + a.users,
        password: a.password,
        auth: match a.auth {
            AuthArg::None => None,
            AuthArg::Md5 => Some(Algorithm::Md5),
            AuthArg::Sha256 => Some(Algorithm::Sha256),
        },
        rate: a.rate,
        window: a.window,
        duration: Duration::from_secs_f64(a.duration.min(3600.0)),
        total: a.total,
        expires: a.expires,
        threads: a.threads,
        sockets: a.sockets,
        t1_ms: a.t1_ms,
        t2_ms: a.t2_ms,
        timeout_ms: a.timeout_ms,
        plan: match a.plan {
            PlanArg::Register => Plan::Register,
            PlanArg::Refresh => Plan::Refresh,
            PlanArg::Rru => Plan::RegisterRefreshUnregister,
        },
        progress: !a.quiet,
        ..Default::default()
    };
    let r = run_storm(&cfg)?;
    eprintln!(
        "storm: {:.0} ops/s  completed {}  failed {}  timeouts {}  backlog {}  retrans {}  p50 {}µs p99 {}µs p99.9 {}µs max {}µs  codes {:?}",
        r.throughput, r.completed, r.failed, r.timeouts, r.backlog, r.retransmissions,
        r.latency_us.p50, r.latency_us.p99, r.latency_us.p999, r.latency_us.max, r.per_code
    );
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
