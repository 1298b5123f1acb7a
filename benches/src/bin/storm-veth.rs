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
    /// Flood mode: send the flood as raw Ethernet frames (AF_PACKET) on this interface
    /// instead of through UDP sockets: no socket-layer cost on the sending side, so the
    /// flooder gets closer to "10× what the server sustains". Needs --src-mac/--dst-mac.
    #[arg(long)]
    raw_iface: Option<String>,
    #[arg(long)]
    src_mac: Option<String>,
    /// Flood mode with --raw-iface: generate the frames in the kernel with the XDP flood
    /// program (BPF_PROG_RUN live frames) instead of AF_PACKET, for floods of millions of
    /// packets per second (needs the `xdp-flood` build feature and root).
    #[arg(long, requires = "raw_iface")]
    xdp_flood: bool,
    /// `--xdp-flood` pacing: milliseconds' worth of frames per `BPF_PROG_RUN` (default: 10,
    /// or 50 when the program cannot be held in the dispatcher; see `XdpFlood::hold_on`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    flood_chunk_ms: Option<u32>,
    #[arg(long)]
    dst_mac: Option<String>,
    /// Generator-ceiling mode: be the do-nothing responder (200 to everything) on `--target`
    /// with `--threads` threads for `--duration` seconds (or until SIGTERM).
    #[arg(long)]
    respond: bool,
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
    if a.respond {
        let r = turnstile_benches::NullResponder::spawn(a.target, a.threads.max(1))?;
        // Bounded by `--duration`; the benchmark stops it earlier by PID (SIGTERM's default
        // action ends the process).
        std::thread::sleep(duration);
        eprintln!("storm-veth --respond: answered {}", r.answered());
        r.stop();
        return Ok(());
    }
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
    /// How the frames were sent: "xdp" (kernel generator), "af_packet" or "udp".
    via: &'static str,
    sent: u64,
    attempted: u64,
    seconds: f64,
    rate: f64,
    send_errors: u64,
}

/// Width of the per-datagram counter patched into branch, tag and Call-ID.
const CTR: usize = 16;
/// Hex digits of the flood's user part (`flood0000` … `floodffff`).
const USER_DIGITS: usize = 4;

/// Start offsets of the non-overlapping runs of `len` × `ch` in `m`.
fn placeholders(m: &[u8], ch: u8, len: usize) -> Vec<usize> {
    let mut keep: Vec<usize> = Vec::new();
    for (i, w) in m.windows(len).enumerate() {
        if w.iter().all(|&c| c == ch) && keep.last().is_none_or(|&l| i >= l + len) {
            keep.push(i);
        }
    }
    keep
}

fn blast(a: &Args, rate: u32, duration: Duration) -> anyhow::Result<BlastReport> {
    const BATCH: usize = 64;
    let raw = match &a.raw_iface {
        Some(i) => Some(Raw::open(a, i)?),
        None => None,
    };
    let batch = BATCH;
    let socks: Vec<UdpSocket> = if raw.is_some() {
        // Raw frames come from ports RAW_PORT0.. (see `frame_head`): hold those ports so
        // the answers land in a socket buffer (and overflow there, silently) instead of
        // drawing ICMP port-unreachables that would load the server's side as well.
        (0..RAW_PORTS)
            .filter_map(|i| UdpSocket::bind((a.bind, RAW_PORT0 + i)).ok())
            .collect()
    } else {
        (0..a.sockets.clamp(1, 256))
            .map(|_| turnstile_benches::storm::client_socket(a.bind, a.target))
            .collect::<Result<_, _>>()?
    };
    // One template per batch slot; the counter placeholders are rewritten before each send.
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(batch);
    let mut marks: Vec<Vec<usize>> = Vec::with_capacity(BATCH);
    let mut umarks: Vec<Vec<usize>> = Vec::with_capacity(BATCH);
    let ph = "#".repeat(CTR);
    for _ in 0..batch {
        let mut m = Vec::new();
        write!(
            m,
            "REGISTER sip:{d} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {b}:5060;rport;branch=z9hG4bK{ph}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:flood{u}@{d}>;tag={ph}\r\n\
             To: <sip:flood{u}@{d}>\r\n\
             Call-ID: {ph}@flood\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:flood{u}@{b}:5060>\r\n\
             Expires: 60\r\n\
             Content-Length: 0\r\n\r\n",
            d = a.domain,
            b = a.bind,
            u = "%".repeat(USER_DIGITS),
        )?;
        let mut keep = placeholders(&m, b'#', CTR);
        let mut ukeep = placeholders(&m, b'%', USER_DIGITS);
        if let Some(r) = &raw {
            let off = r.frame_head(&mut m, bufs.len() as u16)?;
            keep.iter_mut().for_each(|p| *p += off);
            ukeep.iter_mut().for_each(|p| *p += off);
        }
        bufs.push(m);
        marks.push(keep);
        umarks.push(ukeep);
    }
    if a.xdp_flood {
        // One template (slot 0's frame); the kernel rewrites its counters per frame.
        match xdp_blast(a, rate, duration, &bufs[0], &marks[0], &umarks[0]) {
            Ok(r) => return Ok(r),
            Err(e) => eprintln!("storm-veth: XDP flood unavailable ({e:#}); AF_PACKET instead"),
        }
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
        for ((b, ms), us) in bufs.iter_mut().zip(&marks).zip(&umarks).take(n) {
            ctr += 1;
            for &p in ms {
                for k in 0..CTR {
                    b[p + k] = hex[((ctr >> (4 * (CTR - 1 - k))) & 0xf) as usize];
                }
            }
            // The user cycles through 16^USER_DIGITS AORs, so the flood exercises the
            // registrar like a population of phones instead of rewriting one binding.
            for &p in us {
                for k in 0..USER_DIGITS {
                    b[p + k] = hex[((ctr >> (4 * (USER_DIGITS - 1 - k))) & 0xf) as usize];
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
                if let Some(r) = &raw {
                    h.msg_hdr.msg_name = &r.addr as *const _ as *mut _;
                    h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                }
                h
            })
            .collect();
        let fd = match &raw {
            Some(r) => r.fd,
            None => socks[si % socks.len()].as_raw_fd(),
        };
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
        via: if raw.is_some() { "af_packet" } else { "udp" },
        sent,
        attempted,
        seconds: secs,
        rate: sent as f64 / secs,
        send_errors: errors,
    })
}

/// `--xdp-flood`: the template frame through the kernel-side generator, paced in chunks of
/// 50 ms worth each.
#[cfg(feature = "xdp-flood")]
fn xdp_blast(
    a: &Args,
    rate: u32,
    duration: Duration,
    frame: &[u8],
    ctr: &[usize],
    user: &[usize],
) -> anyhow::Result<BlastReport> {
    let iface = a.raw_iface.as_deref().unwrap_or_default();
    let to16 = |v: &[usize]| v.iter().map(|&p| p as u16).collect::<Vec<u16>>();
    let salt = (std::process::id() as u64) << 40
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut f = turnstile_daemon::xdp::flood::XdpFlood::open(
        iface,
        frame.to_vec(),
        &to16(ctr),
        &to16(user),
        salt,
    )?;
    // Held in the XDP dispatcher (attached to an idle device), a BPF_PROG_RUN costs ~0.6 ms
    // of CPU beyond its frames (page pool set-up), so 10 ms chunks lose ~6 % at full speed
    // and a flat-out flood has no gaps. Otherwise each call also sleeps ~25 ms for two RCU
    // grace periods and chunks must be large (50 ms worth): the flood then comes in bursts
    // at the generator's full speed with gaps between them, where the server idles.
    let hold = IdleLink::create(&format!("tsfl{}", std::process::id()))
        .and_then(|d| f.hold_on(&d.name).map(|()| d).map_err(Into::into));
    let hold = match hold {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("storm-veth: flood program not held in the dispatcher ({e:#}): bursty flood");
            None
        }
    };
    let chunk_ms = a
        .flood_chunk_ms
        .unwrap_or(if hold.is_some() { 10 } else { 50 });
    let chunk = (rate as u64 * chunk_ms as u64 / 1000).clamp(64, 1 << 20);
    let t0 = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    while t0.elapsed() < duration {
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let n = (due - sent).min(chunk);
        match f.send(n as u32) {
            Ok(()) => sent += n,
            Err(e) => {
                errors += 1;
                anyhow::ensure!(errors < 10, "XDP flood: {e}");
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(f);
    drop(hold);
    Ok(BlastReport {
        via: "xdp",
        sent,
        attempted: sent,
        seconds: secs,
        rate: sent as f64 / secs,
        send_errors: errors,
    })
}

/// An idle network device of our own in this namespace (one end of a veth pair that stays
/// down: the `dummy` driver is not built into every kernel, veth is what the benchmark
/// runs on anyway), deleted with its peer on drop.
#[cfg(feature = "xdp-flood")]
struct IdleLink {
    name: String,
}

#[cfg(feature = "xdp-flood")]
impl IdleLink {
    fn create(name: &str) -> anyhow::Result<IdleLink> {
        // IFNAMSIZ: at most 15 characters, the peer's name one more.
        let name: String = name.chars().take(14).collect();
        let peer = format!("{name}p");
        let o = std::process::Command::new("ip")
            .args(["link", "add", &name, "type", "veth", "peer", "name", &peer])
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "ip link add {name} type veth: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(IdleLink { name })
    }
}

#[cfg(feature = "xdp-flood")]
impl Drop for IdleLink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

#[cfg(not(feature = "xdp-flood"))]
fn xdp_blast(
    _: &Args,
    _: u32,
    _: Duration,
    _: &[u8],
    _: &[usize],
    _: &[usize],
) -> anyhow::Result<BlastReport> {
    anyhow::bail!("--xdp-flood needs storm-veth built with `--features xdp-flood`")
}

/// Source ports of the raw flood's frames.
const RAW_PORT0: u16 = 40_000;
const RAW_PORTS: u16 = 16;

/// A send-only AF_PACKET socket: protocol 0 (it receives nothing); each frame is addressed
/// with a `sockaddr_ll` naming the interface and ETH_P_IP.
struct Raw {
    fd: i32,
    addr: libc::sockaddr_ll,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: SocketAddr,
}

fn mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC address {s}"))
}

impl Raw {
    fn open(a: &Args, iface: &str) -> anyhow::Result<Raw> {
        let (IpAddr::V4(src), Some(sm), Some(dm)) = (a.bind, &a.src_mac, &a.dst_mac) else {
            anyhow::bail!("--raw-iface needs an IPv4 --bind, --src-mac and --dst-mac");
        };
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no interface {iface} in this namespace");
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        anyhow::ensure!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: zeroed sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        let dst_mac = mac(dm)?;
        addr.sll_addr[..6].copy_from_slice(&dst_mac);
        Ok(Raw {
            fd,
            addr,
            src_mac: mac(sm)?,
            dst_mac,
            src,
            dst: a.target,
        })
    }

    /// Prefix the SIP message `m` with Ethernet, IPv4 and UDP headers (UDP checksum 0, allowed
    /// over IPv4: the payload counter is rewritten per frame). Returns the header length.
    fn frame_head(&self, m: &mut Vec<u8>, slot: u16) -> anyhow::Result<usize> {
        let IpAddr::V4(dst) = self.dst.ip() else {
            anyhow::bail!("IPv4 target only");
        };
        let udp_len = 8 + m.len();
        let ip_len = 20 + udp_len;
        let mut h = Vec::with_capacity(42);
        h.extend_from_slice(&self.dst_mac);
        h.extend_from_slice(&self.src_mac);
        h.extend_from_slice(&0x0800u16.to_be_bytes());
        let ip_start = h.len();
        h.extend_from_slice(&[0x45, 0]);
        h.extend_from_slice(&(ip_len as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&dst.octets());
        let mut sum: u32 = h[ip_start..]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let ck = !(sum as u16);
        h[ip_start + 10..ip_start + 12].copy_from_slice(&ck.to_be_bytes());
        // Source ports vary by slot: flows hash over the veth queues like real phones.
        h.extend_from_slice(&(RAW_PORT0 + slot % RAW_PORTS).to_be_bytes());
        h.extend_from_slice(&self.dst.port().to_be_bytes());
        h.extend_from_slice(&(udp_len as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        let off = h.len();
        h.extend_from_slice(m);
        *m = h;
        Ok(off)
    }
}
