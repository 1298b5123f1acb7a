//! `storm-veth`: the storm generator for the XDP-vs-socket benchmark (`cargo xtask bench --xdp`),
//! run by the benchmark inside a network namespace it created (`ip netns exec`). Same
//! generator as `storm` (RFC 3261 non-INVITE client transactions, JSON report on stdout), but
//! the target and the local address must be inside the benchmarking range 198.18.0.0/15
//! (RFC 2544) instead of loopback: that range only exists inside the benchmark's namespaces.
//!
//! `--blast RATE` is the flood of the isolation case instead: fire-and-forget REGISTERs
//! (each with its own branch and Call-ID, so the server cannot absorb them as
//! retransmissions), paced at up to RATE per second with `sendmmsg`, for `--duration` seconds;
//! responses are not read (they overflow the sockets' buffers). Prints
//! `{"sent":…, "seconds":…, "rate":…, "send_errors":…}`.

use clap::Parser;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use turnstile_benches::{run_storm, Plan, StormConfig};

#[derive(Parser)]
#[command(about = "SIP REGISTER storm inside a benchmark network namespace (198.18.0.0/15 only)")]
struct Args {
    #[arg(long)]
    target: SocketAddr,
    /// Local address (must be configured in the namespace this runs in).
    #[arg(long)]
    bind: IpAddr,
    #[arg(long, default_value = "bench.test")]
    domain: String,
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    #[arg(long, default_value_t = 0)]
    first_user: u32,
    /// Open-loop rate (ops/s); omit for closed loop.
    #[arg(long)]
    rate: Option<u32>,
    #[arg(long, default_value_t = 512)]
    window: usize,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 64)]
    sockets: usize,
    #[arg(long, default_value_t = 4000)]
    timeout_ms: u64,
    /// Flood mode: fire-and-forget REGISTERs at up to this many per second.
    #[arg(long)]
    blast: Option<u32>,
}

/// 198.18.0.0/15 (RFC 2544 benchmarking range).
fn in_bench_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) & 0xfffe_0000 == u32::from(Ipv4Addr::new(198, 18, 0, 0)),
        IpAddr::V6(_) => false,
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        in_bench_range(a.target.ip()) && in_bench_range(a.bind),
        "storm-veth only sends inside 198.18.0.0/15 (target {}, bind {})",
        a.target,
        a.bind
    );
    let duration = Duration::from_secs_f64(a.duration.clamp(0.1, 120.0));
    if let Some(rate) = a.blast {
        let r = blast(&a, rate, duration)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let cfg = StormConfig {
        target: a.target,
        domain: a.domain,
        users: a.first_user..a.first_user + a.users.max(1),
        auth: None,
        rate: a.rate,
        window: a.window,
        duration,
        total: None,
        threads: a.threads.max(1),
        sockets: a.sockets.max(1),
        timeout_ms: a.timeout_ms,
        plan: Plan::Register,
        progress: false,
        bind_ip: a.bind,
        ..Default::default()
    };
    let r = run_storm(&cfg)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

#[derive(serde::Serialize)]
struct BlastReport {
    sent: u64,
    attempted: u64,
    seconds: f64,
    rate: f64,
    send_errors: u64,
}

/// Width of the per-datagram counter patched into branch, tag and Call-ID.
const CTR: usize = 16;

fn blast(a: &Args, rate: u32, duration: Duration) -> anyhow::Result<BlastReport> {
    const BATCH: usize = 64;
    let socks: Vec<UdpSocket> = (0..a.sockets.clamp(1, 256))
        .map(|_| turnstile_benches::storm::client_socket(a.bind, a.target))
        .collect::<Result<_, _>>()?;
    // One template per batch slot; the counter placeholders are rewritten before each send.
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut marks: Vec<Vec<usize>> = Vec::with_capacity(BATCH);
    let ph = "#".repeat(CTR);
    for _ in 0..BATCH {
        let mut m = Vec::new();
        write!(
            m,
            "REGISTER sip:{d} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {b}:5060;branch=z9hG4bK{ph}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:flood@{d}>;tag={ph}\r\n\
             To: <sip:flood@{d}>\r\n\
             Call-ID: {ph}@flood\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:flood@{b}:5060>\r\n\
             Expires: 60\r\n\
             Content-Length: 0\r\n\r\n",
            d = a.domain,
            b = a.bind
        )?;
        let pos: Vec<usize> = m
            .windows(CTR)
            .enumerate()
            .filter(|(_, w)| w.iter().all(|&c| c == b'#'))
            .map(|(i, _)| i)
            .collect();
        // Non-overlapping occurrences only.
        let mut keep = Vec::new();
        for p in pos {
            if keep.last().is_none_or(|&l: &usize| p >= l + CTR) {
                keep.push(p);
            }
        }
        bufs.push(m);
        marks.push(keep);
    }
    let t0 = Instant::now();
    // `attempted` paces the loop; `sent` counts what the kernel accepted.
    let (mut sent, mut attempted, mut errors, mut ctr, mut si) = (0u64, 0u64, 0u64, 0u64, 0usize);
    let hex = b"0123456789abcdef";
    while t0.elapsed() < duration {
        // Pace: never ahead of `rate` since t0.
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        if attempted >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let n = ((due - attempted) as usize).min(BATCH);
        attempted += n as u64;
        for (b, ms) in bufs.iter_mut().zip(&marks).take(n) {
            ctr += 1;
            for &p in ms {
                for k in 0..CTR {
                    b[p + k] = hex[((ctr >> (4 * (CTR - 1 - k))) & 0xf) as usize];
                }
            }
        }
        let mut iov: Vec<libc::iovec> = bufs[..n]
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; each points at one iovec that outlives the call.
        let mut hdrs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v as *mut _;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let fd = socks[si % socks.len()].as_raw_fd();
        si += 1;
        // SAFETY: fd is a connected UDP socket; hdrs holds n valid headers.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
        if r > 0 {
            sent += r as u64;
        } else {
            // Full socket buffer: count it and move on (the pacing catches up, bounded by time).
            errors += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(BlastReport {
        sent,
        attempted,
        seconds: secs,
        rate: sent as f64 / secs,
        send_errors: errors,
    })
}
