//! The REGISTER storm generator: many users, many source ports, open or closed loop,
//! honest UDP client transactions (RFC 3261 §17.1.2: Timer E retransmissions doubling
//! from T1 up to T2, Timer F timeout), digest answered (RFC 3261 §22.4, RFC 7616, RFC 8760),
//! refresh with cached nonce and nc+1 (RFC 7616 §3.4), unregister with Expires: 0 (§10.2.2).
//!
//! Shape: `threads` OS threads, each owning a contiguous slice of the users and
//! `sockets / threads` connected UDP sockets (users spread round-robin over them, so a
//! SO_REUSEPORT server hashes them over its workers). Each thread runs a single loop:
//! `recvmmsg` all sockets → fire due timers → start due operations → `sendmmsg` per socket →
//! `ppoll` only when idle. No locks on the hot path; statistics are merged at the end.
//!
//! An *operation* is one registration, refresh or unregistration from the user's point of
//! view: it may take two transactions (401 challenge, then the authenticated request) and
//! its latency runs from its (scheduled) start to the final response. In open-loop mode the
//! latency starts at the *scheduled* time, so a stalled generator or server cannot hide
//! queueing delay (no coordinated omission).

use crate::digest::{self, Algorithm};
use crate::sip;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// What each user does, operation after operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Plan {
    /// Every operation is an initial registration: new Call-ID, CSeq 1, no cached nonce
    /// (with auth: REGISTER → 401 → REGISTER with credentials → 200).
    Register,
    /// Each user registers once in an unmeasured warm-up; the measured operations are
    /// refreshes: same Call-ID, CSeq+1, cached nonce with nc+1 (no challenge round trip
    /// while the server accepts the nonce).
    Refresh,
    /// Per user: register → refresh → unregister (Expires: 0) → register …
    RegisterRefreshUnregister,
}

/// Load generator configuration. `Default` is a small closed-loop run against 127.0.0.1:5060.
#[derive(Clone, Debug, Serialize)]
pub struct StormConfig {
    pub target: SocketAddr,
    pub domain: String,
    /// User numbers; user `n` is `sip:userNNNNNN@domain` (at least six digits).
    pub users: Range<u32>,
    /// Password template: `{user}` → `user000042`, `{n}` → `42`. A fixed string has neither.
    pub password: String,
    /// Answer digest challenges, preferring this algorithm when several are offered.
    /// `None`: a 401/407 is a failed operation.
    pub auth: Option<Algorithm>,
    /// Open loop: operations started per second (over all threads). `None`: closed loop.
    pub rate: Option<u32>,
    /// Maximum outstanding operations over all threads (the closed-loop window). In open
    /// loop the cap is at least `rate` (one second of operations); beyond it overload turns
    /// into scheduling backlog instead of unbounded memory.
    pub window: usize,
    /// Stop starting operations after this long (measured phase).
    pub duration: Duration,
    /// Stop starting operations after this many (over all threads).
    pub total: Option<u64>,
    pub expires: u32,
    pub threads: usize,
    /// Total UDP source sockets (spread over the threads).
    pub sockets: usize,
    /// RFC 3261 T1 (first retransmission) and T2 (cap), milliseconds.
    pub t1_ms: u64,
    pub t2_ms: u64,
    /// Timer F: a transaction without final response after this long is a timeout.
    pub timeout_ms: u64,
    pub plan: Plan,
    /// Print one progress line per second to stderr.
    pub progress: bool,
    /// Local address to bind (must be loopback for benchmarks).
    pub bind_ip: IpAddr,
    /// Called once when the measured phase starts (after the warm-up of the Refresh plan),
    /// e.g. to sample the server's CPU time so that the warm-up is not charged.
    #[serde(skip)]
    pub on_measure_start: Option<MeasureHook>,
}

/// A callback for [`StormConfig::on_measure_start`].
#[derive(Clone)]
pub struct MeasureHook(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for MeasureHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeasureHook")
    }
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 5060)),
            domain: "bench.test".into(),
            users: 0..1000,
            password: "{user}-pw".into(),
            auth: None,
            rate: None,
            window: 256,
            duration: Duration::from_secs(10),
            total: None,
            expires: 3600,
            threads: 1,
            sockets: 16,
            t1_ms: 500,
            t2_ms: 4000,
            timeout_ms: 32_000,
            plan: Plan::Register,
            progress: false,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            on_measure_start: None,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One second of the measured phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Interval {
    /// Seconds since the start of the measured phase.
    pub t: u32,
    pub completed: u64,
    pub failed: u64,
    pub timeouts: u64,
    pub retransmissions: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StormReport {
    pub plan: Option<Plan>,
    pub rate: Option<u32>,
    pub window: usize,
    pub users: u64,
    pub threads: usize,
    pub sockets: usize,
    /// Operations started in the measured phase.
    pub started: u64,
    /// Operations that ended in 2xx.
    pub completed: u64,
    /// Operations that ended in a non-2xx final response (after any auth round).
    pub failed: u64,
    /// Operations whose transaction saw no final response within `timeout_ms`.
    pub timeouts: u64,
    /// Open loop only: operations due by the schedule but never started because the
    /// window was full or every user already had an operation in flight (overload shows
    /// up here instead of as unbounded memory).
    pub backlog: u64,
    pub retransmissions: u64,
    /// Datagrams the kernel refused (EAGAIN on a full socket buffer); the retransmission
    /// timer resends them, so they are also visible as retransmissions.
    pub send_errors: u64,
    /// Responses matching no outstanding transaction (late, duplicate, foreign).
    pub stray: u64,
    /// Unmeasured warm-up (Refresh plan): operations that did not end in 2xx.
    pub warmup_failed: u64,
    pub warmup_seconds: f64,
    /// Every final response received in the measured phase, by status code.
    pub per_code: BTreeMap<u16, u64>,
    /// Seconds from the start of the measured phase to the last completion.
    pub elapsed_s: f64,
    /// Completed operations per second.
    pub throughput: f64,
    pub latency_us: Latency,
    pub series: Vec<Interval>,
}

impl StormReport {
    /// (failed + timeouts + backlog) / (started + backlog); 0 when nothing was due.
    pub fn failure_ratio(&self) -> f64 {
        let due = self.started + self.backlog;
        if due == 0 {
            return 0.0;
        }
        (self.failed + self.timeouts + self.backlog) as f64 / due as f64
    }
}

/// Live counters for the progress line (one cache line per thread).
#[repr(align(64))]
#[derive(Default)]
struct Progress {
    completed: AtomicU64,
    failed: AtomicU64,
    timeouts: AtomicU64,
    retrans: AtomicU64,
    outstanding: AtomicU64,
}

/// Runs one storm to completion and returns the merged report.
pub fn run(cfg: &StormConfig) -> std::io::Result<StormReport> {
    let threads = cfg.threads.max(1);
    let n_users = cfg.users.end.saturating_sub(cfg.users.start);
    if n_users == 0 {
        return Err(std::io::Error::other("no users"));
    }
    let threads = threads.min(n_users as usize);
    let sockets_per = (cfg.sockets / threads).max(1);
    let run_id: u32 = rand::random();
    // Open loop: the window is only a memory bound, at least one second of operations, so
    // that a server that drops and recovers by retransmission is not turned into backlog.
    let window = match cfg.rate {
        Some(r) => cfg.window.max(r as usize),
        None => cfg.window,
    };
    // Warm-up may take long for big N; it is still bounded.
    let barrier = Barrier::new(threads);
    let progress: Vec<Progress> = (0..threads).map(|_| Progress::default()).collect();
    let done = AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        let mut handles = Vec::new();
        #[allow(clippy::needless_range_loop)]
        for t in 0..threads {
            let lo = cfg.users.start + (n_users as u64 * t as u64 / threads as u64) as u32;
            let hi = cfg.users.start + (n_users as u64 * (t as u64 + 1) / threads as u64) as u32;
            let share =
                |x: u64| x * (t as u64 + 1) / threads as u64 - x * t as u64 / threads as u64;
            let w = Worker::new(
                cfg,
                t,
                lo..hi,
                sockets_per,
                run_id,
                cfg.total.map(share),
                cfg.rate.map(|r| share(r as u64) as f64),
                (share(window as u64) as usize).max(1),
            );
            let barrier = &barrier;
            let prog = &progress[t];
            handles.push(s.spawn(move || w?.run(barrier, prog)));
        }
        if cfg.progress {
            let t0 = Instant::now();
            let mut last = 0u64;
            while !handles.iter().all(|h| h.is_finished()) && !done.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let el = t0.elapsed().as_secs();
                if el > last {
                    last = el;
                    let sum = |f: fn(&Progress) -> &AtomicU64| -> u64 {
                        progress.iter().map(|p| f(p).load(Relaxed)).sum()
                    };
                    eprintln!(
                        "storm {el:>4}s  ok {:>9}  failed {:>6}  timeouts {:>6}  retrans {:>7}  outstanding {:>6}",
                        sum(|p| &p.completed),
                        sum(|p| &p.failed),
                        sum(|p| &p.timeouts),
                        sum(|p| &p.retrans),
                        sum(|p| &p.outstanding),
                    );
                }
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("storm worker panicked"))
            .collect::<Vec<_>>()
    });
    done.store(true, Relaxed);
    let mut rep = StormReport {
        plan: Some(cfg.plan),
        rate: cfg.rate,
        window: cfg.window,
        users: n_users as u64,
        threads,
        sockets: sockets_per * threads,
        ..Default::default()
    };
    let mut hist = new_hist(3);
    let mut series: Vec<(Interval, Histogram<u64>)> = Vec::new();
    let mut elapsed_us = 0u64;
    for r in results {
        let r = r?;
        rep.started += r.c.started;
        rep.completed += r.c.completed;
        rep.failed += r.c.failed;
        rep.timeouts += r.c.timeouts;
        rep.backlog += r.c.backlog;
        rep.retransmissions += r.c.retrans;
        rep.send_errors += r.c.send_errors;
        rep.stray += r.c.stray;
        rep.warmup_failed += r.c.warmup_failed;
        rep.warmup_seconds = rep.warmup_seconds.max(r.warmup_s);
        for (code, &n) in r.per_code.iter().enumerate() {
            if n > 0 {
                *rep.per_code.entry(code as u16).or_default() += n;
            }
        }
        hist.add(&r.hist).ok();
        elapsed_us = elapsed_us.max(r.last_completion_us);
        for (i, (iv, h)) in r.intervals.into_iter().enumerate() {
            if series.len() <= i {
                series.resize_with(i + 1, || {
                    (
                        Interval {
                            t: 0,
                            ..Default::default()
                        },
                        new_hist(2),
                    )
                });
            }
            let (m, mh) = &mut series[i];
            m.t = i as u32;
            m.completed += iv.completed;
            m.failed += iv.failed;
            m.timeouts += iv.timeouts;
            m.retransmissions += iv.retransmissions;
            mh.add(&h).ok();
        }
    }
    rep.latency_us = Latency::of(&hist);
    rep.elapsed_s = elapsed_us as f64 / 1e6;
    rep.throughput = if rep.elapsed_s > 0.0 {
        rep.completed as f64 / rep.elapsed_s
    } else {
        0.0
    };
    rep.series = series
        .into_iter()
        .map(|(mut iv, h)| {
            let l = Latency::of(&h);
            iv.p50_us = l.p50;
            iv.p99_us = l.p99;
            iv.max_us = l.max;
            iv
        })
        .collect();
    Ok(rep)
}

fn new_hist(sigfig: u8) -> Histogram<u64> {
    // 1 µs .. 120 s; values beyond are clamped by `saturating_record`.
    Histogram::new_with_bounds(1, 120_000_000, sigfig).expect("histogram bounds")
}

const NONE: u32 = u32::MAX;
const RECV_BATCH: usize = 64;
const SEND_BATCH: usize = 64;
const RECV_BUF: usize = 4096;
const START_BUDGET: usize = 512;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OpKind {
    Register,
    Refresh,
    Unregister,
}

struct NonceCache {
    alg: Algorithm,
    realm: Box<[u8]>,
    nonce: Box<[u8]>,
    opaque: Option<Box<[u8]>>,
    qop: bool,
    nc: u32,
    ha1: String,
}

#[derive(Default)]
struct User {
    /// Call-ID generation: a new registration takes a new Call-ID.
    gen: u32,
    cseq: u32,
    /// 0 register, 1 refresh, 2 unregister (RegisterRefreshUnregister plan).
    phase: u8,
    registered: bool,
    op: u32,
    nonce: Option<Box<NonceCache>>,
}

struct Op {
    user: u32,
    kind: OpKind,
    start_us: u64,
    tx_start_us: u64,
    interval_ms: u64,
    /// Bumped whenever timers or queued sends for this slot become obsolete.
    gen: u32,
    auth_rounds: u8,
    sock: u16,
    buf: Vec<u8>,
}

#[derive(Default)]
struct Counters {
    started: u64,
    completed: u64,
    failed: u64,
    timeouts: u64,
    backlog: u64,
    retrans: u64,
    send_errors: u64,
    stray: u64,
    warmup_failed: u64,
}

struct WorkerResult {
    c: Counters,
    per_code: Vec<u64>,
    hist: Histogram<u64>,
    intervals: Vec<(Interval, Histogram<u64>)>,
    last_completion_us: u64,
    warmup_s: f64,
}

struct Worker<'a> {
    cfg: &'a StormConfig,
    idx: usize,
    first_user: u32,
    users: Vec<User>,
    socks: Vec<UdpSocket>,
    local: Vec<SocketAddr>,
    run_id: u32,
    total: Option<u64>,
    rate: Option<f64>,
    window: usize,
    ops: Vec<Op>,
    free: Vec<u32>,
    outstanding: usize,
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    sendq: Vec<Vec<(u32, u32)>>,
    cursor: usize,
    t0: Instant,
    measuring: bool,
    c: Counters,
    per_code: Vec<u64>,
    hist: Histogram<u64>,
    intervals: Vec<(Interval, Histogram<u64>)>,
    last_completion_us: u64,
    rng: u64,
}

fn set_buf(fd: i32, opt_force: i32, opt: i32, size: i32) {
    // SO_*BUFFORCE works as root beyond rmem_max; fall back silently otherwise.
    unsafe {
        let p = &size as *const i32 as *const libc::c_void;
        let l = std::mem::size_of::<i32>() as libc::socklen_t;
        if libc::setsockopt(fd, libc::SOL_SOCKET, opt_force, p, l) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, l);
        }
    }
}

/// A non-blocking UDP socket bound to `bind:0`, connected to `target`, with big buffers.
pub fn client_socket(bind: IpAddr, target: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(bind, 0))?;
    s.connect(target)?;
    s.set_nonblocking(true)?;
    set_buf(
        s.as_raw_fd(),
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        4 << 20,
    );
    set_buf(
        s.as_raw_fd(),
        libc::SO_SNDBUFFORCE,
        libc::SO_SNDBUF,
        4 << 20,
    );
    Ok(s)
}

impl<'a> Worker<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &'a StormConfig,
        idx: usize,
        users: Range<u32>,
        sockets: usize,
        run_id: u32,
        total: Option<u64>,
        rate: Option<f64>,
        window: usize,
    ) -> std::io::Result<Worker<'a>> {
        let n = (users.end - users.start) as usize;
        let sockets = sockets.min(n).max(1);
        let mut socks = Vec::with_capacity(sockets);
        let mut local = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            let s = client_socket(cfg.bind_ip, cfg.target)?;
            local.push(s.local_addr()?);
            socks.push(s);
        }
        let mut us = Vec::with_capacity(n);
        us.resize_with(n, || User {
            op: NONE,
            ..Default::default()
        });
        Ok(Worker {
            cfg,
            idx,
            first_user: users.start,
            users: us,
            socks,
            local,
            run_id,
            total,
            rate,
            window,
            ops: Vec::new(),
            free: Vec::new(),
            outstanding: 0,
            timers: BinaryHeap::new(),
            sendq: vec![Vec::new(); sockets],
            cursor: 0,
            t0: Instant::now(),
            measuring: false,
            c: Counters::default(),
            per_code: vec![0; 700],
            hist: new_hist(3),
            intervals: Vec::new(),
            last_completion_us: 0,
            rng: (run_id as u64) << 32 | users.start as u64 | 1,
        })
    }

    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*: cnonces only need to differ, not to be secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn run(mut self, barrier: &Barrier, prog: &Progress) -> std::io::Result<WorkerResult> {
        let mut warmup_s = 0.0;
        if self.cfg.plan == Plan::Refresh {
            let w0 = Instant::now();
            self.t0 = w0;
            self.measuring = false;
            let n = self.users.len() as u64;
            let cap = Duration::from_secs(600);
            self.drive(Some(n), None, cap, prog)?;
            warmup_s = w0.elapsed().as_secs_f64();
            self.cursor = 0;
            barrier.wait();
        }
        if self.idx == 0 {
            if let Some(h) = &self.cfg.on_measure_start {
                (h.0)();
            }
        }
        if self.cfg.plan == Plan::Refresh {
            // Nobody starts measuring before the hook has run.
            barrier.wait();
        }
        self.t0 = Instant::now();
        self.measuring = true;
        self.c.started = 0;
        self.drive(self.total, self.rate, self.cfg.duration, prog)?;
        Ok(WorkerResult {
            c: self.c,
            per_code: self.per_code,
            hist: self.hist,
            intervals: self.intervals,
            last_completion_us: self.last_completion_us,
            warmup_s,
        })
    }

    /// One phase: start operations until `total`/`duration`, then drain.
    fn drive(
        &mut self,
        total: Option<u64>,
        rate: Option<f64>,
        duration: Duration,
        prog: &Progress,
    ) -> std::io::Result<()> {
        let dur_us = duration.as_micros() as u64;
        let drain_us = self.cfg.timeout_ms * 1000 + 500_000;
        let mut started = 0u64;
        let mut recv = RecvBufs::new();
        let mut pfds: Vec<libc::pollfd> = self
            .socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut stop_at: Option<u64> = None;
        let mut wait_us = 0u64;
        loop {
            let mut busy = false;
            // 1. one ppoll over all sockets (blocking only when idle), then recvmmsg on the
            //    readable ones: an empty recvmmsg per socket per iteration would dominate
            //    the loop at moderate open-loop rates.
            let ts = libc::timespec {
                tv_sec: (wait_us / 1_000_000) as libc::time_t,
                tv_nsec: ((wait_us % 1_000_000) * 1000) as libc::c_long,
            };
            // SAFETY: pfds is a live, correctly sized array.
            let nready = unsafe {
                libc::ppoll(
                    pfds.as_mut_ptr(),
                    pfds.len() as libc::nfds_t,
                    &ts,
                    std::ptr::null(),
                )
            };
            #[allow(clippy::needless_range_loop)]
            for si in 0..self.socks.len() {
                if nready <= 0 || pfds[si].revents & libc::POLLIN == 0 {
                    continue;
                }
                loop {
                    let fd = self.socks[si].as_raw_fd();
                    let n = recv.recv(fd);
                    if n == 0 {
                        break;
                    }
                    busy = true;
                    let now = self.now_us();
                    for i in 0..n {
                        self.handle_response(recv.data(i), now, prog);
                    }
                    if n < RECV_BATCH {
                        break;
                    }
                }
            }
            // 2. timers
            let now = self.now_us();
            while let Some(&Reverse((deadline, slot, gen))) = self.timers.peek() {
                if deadline > now {
                    break;
                }
                self.timers.pop();
                if self.ops[slot as usize].gen != gen || self.ops[slot as usize].user == NONE {
                    continue;
                }
                busy = true;
                self.fire_timer(slot, now, prog);
            }
            // 3. start due operations
            let sending = stop_at.is_none();
            if sending {
                let elapsed = now;
                let limit = total.unwrap_or(u64::MAX);
                if elapsed >= dur_us || started >= limit {
                    stop_at = Some(now);
                    if let Some(r) = rate {
                        // Due by the schedule but never started: overload backlog.
                        // Ops due in the final millisecond are forgiven: the loop may not
                        // have iterated between their schedule and the end of the phase.
                        let end = elapsed.min(dur_us).saturating_sub(1000);
                        let due = ((end as f64 * r / 1e6) as u64).min(limit);
                        if self.measuring {
                            self.c.backlog += due.saturating_sub(started);
                        }
                    }
                } else {
                    let due = match rate {
                        Some(r) => {
                            ((elapsed as f64 * r / 1e6) as u64 + 1).min(limit) - started.min(limit)
                        }
                        None => limit - started,
                    };
                    let mut budget = START_BUDGET.min(due.min(usize::MAX as u64) as usize);
                    while budget > 0 && self.outstanding < self.window {
                        let sched = match rate {
                            Some(r) => (started as f64 * 1e6 / r) as u64,
                            None => now,
                        };
                        if !self.start_next(sched, now) {
                            break;
                        }
                        started += 1;
                        budget -= 1;
                        busy = true;
                    }
                }
            }
            // 4. flush
            self.flush();
            prog.outstanding.store(self.outstanding as u64, Relaxed);
            // 5. termination
            if let Some(sa) = stop_at {
                if self.outstanding == 0 {
                    break;
                }
                if now > sa + drain_us {
                    // Should not happen: Timer F fires first. Count what is left as timeouts.
                    self.c.timeouts += self.outstanding as u64;
                    break;
                }
            }
            // 6. how long the next readiness poll may block: not at all while busy
            wait_us = 0;
            if !busy {
                wait_us = 1000;
                if let Some(&Reverse((d, _, _))) = self.timers.peek() {
                    wait_us = wait_us.min(d.saturating_sub(now));
                }
                if stop_at.is_none() {
                    if let Some(r) = rate {
                        let next = (started as f64 * 1e6 / r) as u64;
                        wait_us = wait_us.min(next.saturating_sub(now));
                    }
                    if rate.is_none() && self.outstanding < self.window {
                        wait_us = 0;
                    }
                }
            }
        }
        Ok(())
    }

    /// Picks the next idle user (round robin) and starts its next operation.
    fn start_next(&mut self, sched_us: u64, now: u64) -> bool {
        let n = self.users.len();
        if self.outstanding >= n {
            // Every user has an operation in flight: nothing to start (open loop counts
            // the shortfall as backlog), and no O(n) scan.
            return false;
        }
        let mut scanned = 0;
        while scanned < n {
            let u = self.cursor;
            self.cursor += 1;
            if self.cursor == n {
                self.cursor = 0;
            }
            scanned += 1;
            if self.users[u].op != NONE {
                continue;
            }
            let kind = match (self.measuring, self.cfg.plan) {
                (false, _) | (true, Plan::Register) => OpKind::Register,
                (true, Plan::Refresh) => {
                    if self.users[u].registered {
                        OpKind::Refresh
                    } else {
                        OpKind::Register
                    }
                }
                (true, Plan::RegisterRefreshUnregister) => match self.users[u].phase {
                    0 => OpKind::Register,
                    1 => OpKind::Refresh,
                    _ => OpKind::Unregister,
                },
            };
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.ops.push(Op {
                        user: NONE,
                        kind,
                        start_us: 0,
                        tx_start_us: 0,
                        interval_ms: 0,
                        gen: 0,
                        auth_rounds: 0,
                        sock: 0,
                        buf: Vec::with_capacity(768),
                    });
                    (self.ops.len() - 1) as u32
                }
            };
            let user = &mut self.users[u];
            if kind == OpKind::Register {
                user.gen = user.gen.wrapping_add(1);
                user.cseq = 1;
                user.nonce = None;
            } else {
                user.cseq += 1;
            }
            user.op = slot;
            let op = &mut self.ops[slot as usize];
            op.user = u as u32;
            op.kind = kind;
            op.start_us = sched_us.min(now);
            op.auth_rounds = 0;
            op.sock = (u % self.socks.len()) as u16;
            self.outstanding += 1;
            if self.measuring {
                self.c.started += 1;
            }
            self.build_request(slot);
            self.start_tx(slot, now);
            return true;
        }
        false
    }

    /// (Re)builds the request of the op's current transaction (the user's current CSeq).
    fn build_request(&mut self, slot: u32) {
        let cnonce = format!("{:016x}", self.rand());
        let op = &mut self.ops[slot as usize];
        let u = op.user as usize;
        let user = &mut self.users[u];
        let n = self.first_user + u as u32;
        let name = sip::user_name(n);
        let local = self.local[op.sock as usize];
        // The Contact is stable per user across runs (a phone keeps its contact when it
        // re-registers); the socket's ephemeral port would add a binding per run.
        let contact = SocketAddr::new(local.ip(), 10_000 + (n % 50_000) as u16);
        let branch = format!(
            "z9hG4bK{:x}.{:x}.{:x}.{:x}",
            self.run_id, n, user.gen, user.cseq
        );
        let tag = format!("{:x}.{:x}", n, user.gen);
        let call_id = format!("{:x}-{:x}-{:x}@storm", n, user.gen, self.run_id);
        let expires = if op.kind == OpKind::Unregister {
            0
        } else {
            self.cfg.expires
        };
        sip::write_register_head(
            &mut op.buf,
            &sip::RegisterParams {
                domain: &self.cfg.domain,
                user: &name,
                local,
                contact,
                branch: &branch,
                from_tag: &tag,
                call_id: &call_id,
                cseq: user.cseq,
                expires,
            },
        );
        if let Some(nc) = user.nonce.as_mut() {
            nc.nc += 1;
            let uri = format!("sip:{}", self.cfg.domain);
            let inp = digest::ResponseInput {
                algorithm: nc.alg,
                username: &name,
                realm: &nc.realm,
                password: "",
                method: "REGISTER",
                uri: &uri,
                nonce: &nc.nonce,
                qop_auth: if nc.qop { Some((nc.nc, &cnonce)) } else { None },
            };
            digest::write_authorization(&mut op.buf, &inp, &nc.ha1, nc.opaque.as_deref());
        }
        sip::finish_request(&mut op.buf);
    }

    fn start_tx(&mut self, slot: u32, now: u64) {
        let op = &mut self.ops[slot as usize];
        op.gen = op.gen.wrapping_add(1);
        op.tx_start_us = now;
        op.interval_ms = self.cfg.t1_ms;
        let gen = op.gen;
        let sock = op.sock as usize;
        let deadline = now + (self.cfg.t1_ms * 1000).min(self.cfg.timeout_ms * 1000);
        self.timers.push(Reverse((deadline, slot, gen)));
        self.sendq[sock].push((slot, gen));
    }

    fn fire_timer(&mut self, slot: u32, now: u64, prog: &Progress) {
        let f_deadline = self.ops[slot as usize].tx_start_us + self.cfg.timeout_ms * 1000;
        if now >= f_deadline {
            self.finish(slot, now, Outcome::Timeout, prog);
            return;
        }
        let op = &mut self.ops[slot as usize];
        self.sendq[op.sock as usize].push((slot, op.gen));
        op.interval_ms = (op.interval_ms * 2).min(self.cfg.t2_ms);
        let next = (now + op.interval_ms * 1000).min(f_deadline);
        self.timers.push(Reverse((next, slot, op.gen)));
        if self.measuring {
            self.c.retrans += 1;
            prog.retrans.fetch_add(1, Relaxed);
            self.interval_mut(now).0.retransmissions += 1;
        }
    }

    fn handle_response(&mut self, msg: &[u8], now: u64, prog: &Progress) {
        let Some(v) = sip::parse_response(msg) else {
            self.c.stray += 1;
            return;
        };
        // Call-ID is "<user hex>-<gen hex>-<run hex>@storm".
        let mut parts = v.call_id.split(|&b| b == b'-');
        let parse_hex = |s: Option<&[u8]>| -> Option<u32> {
            let s = std::str::from_utf8(s?).ok()?;
            u32::from_str_radix(s, 16).ok()
        };
        let (Some(n), Some(gen)) = (parse_hex(parts.next()), parse_hex(parts.next())) else {
            self.c.stray += 1;
            return;
        };
        let Some(u) = n.checked_sub(self.first_user).map(|u| u as usize) else {
            self.c.stray += 1;
            return;
        };
        if u >= self.users.len() {
            self.c.stray += 1;
            return;
        }
        let user = &self.users[u];
        if user.op == NONE || user.gen != gen || user.cseq != v.cseq {
            self.c.stray += 1;
            return;
        }
        let slot = user.op;
        if v.code < 200 {
            // RFC 3261 §17.1.2.2: Proceeding, retransmit every T2 (timer entry stays valid).
            self.ops[slot as usize].interval_ms = self.cfg.t2_ms / 2;
            return;
        }
        if self.measuring && (v.code as usize) < self.per_code.len() {
            self.per_code[v.code as usize] += 1;
        }
        if v.code < 300 {
            self.finish(slot, now, Outcome::Ok, prog);
            return;
        }
        if (v.code == 401 || v.code == 407) && self.cfg.auth.is_some() {
            let op = &self.ops[slot as usize];
            if op.auth_rounds < 2 {
                if let Some(cache) = self.pick_challenge(n, &v) {
                    let user = &mut self.users[u];
                    user.nonce = Some(Box::new(cache));
                    user.cseq += 1;
                    self.ops[slot as usize].auth_rounds += 1;
                    self.build_request(slot);
                    self.start_tx(slot, now);
                    return;
                }
            }
        }
        self.finish(slot, now, Outcome::Failed, prog);
    }

    /// Chooses the preferred algorithm among the offered challenges (RFC 8760 §2.4: the
    /// server lists its preference first; the client picks what it supports).
    fn pick_challenge(&self, n: u32, v: &sip::ResponseView<'_>) -> Option<NonceCache> {
        let want = self.cfg.auth?;
        let mut chosen = None;
        for raw in v.challenges() {
            let Ok(c) = digest::parse_challenge(raw) else {
                continue;
            };
            let Some(alg) = c.algorithm() else { continue };
            if alg == want || chosen.is_none() {
                let exact = alg == want;
                chosen = Some((alg, c));
                if exact {
                    break;
                }
            }
        }
        let (alg, c) = chosen?;
        let name = sip::user_name(n);
        let pw = self
            .cfg
            .password
            .replace("{user}", &name)
            .replace("{n}", &n.to_string());
        Some(NonceCache {
            alg,
            ha1: digest::ha1(alg, &name, c.realm, &pw),
            realm: c.realm.into(),
            nonce: c.nonce.into(),
            opaque: c.opaque.map(Into::into),
            qop: c.qop_auth,
            nc: 0,
        })
    }

    fn finish(&mut self, slot: u32, now: u64, outcome: Outcome, prog: &Progress) {
        let op = &mut self.ops[slot as usize];
        let u = op.user as usize;
        let kind = op.kind;
        let lat = now.saturating_sub(op.start_us).max(1);
        op.user = NONE;
        op.gen = op.gen.wrapping_add(1);
        self.free.push(slot);
        self.outstanding -= 1;
        let user = &mut self.users[u];
        user.op = NONE;
        match outcome {
            Outcome::Ok => {
                user.registered = kind != OpKind::Unregister;
                user.phase = match kind {
                    OpKind::Register => 1,
                    OpKind::Refresh => 2,
                    OpKind::Unregister => 0,
                };
            }
            _ => {
                user.phase = 0;
                user.registered = false;
            }
        }
        if !self.measuring {
            if outcome != Outcome::Ok {
                self.c.warmup_failed += 1;
            }
            return;
        }
        let (iv, h) = Self::interval_at(&mut self.intervals, now);
        match outcome {
            Outcome::Ok => {
                self.c.completed += 1;
                iv.completed += 1;
                prog.completed.fetch_add(1, Relaxed);
                self.hist.saturating_record(lat);
                h.saturating_record(lat);
                self.last_completion_us = self.last_completion_us.max(now);
            }
            Outcome::Failed => {
                self.c.failed += 1;
                iv.failed += 1;
                prog.failed.fetch_add(1, Relaxed);
            }
            Outcome::Timeout => {
                self.c.timeouts += 1;
                iv.timeouts += 1;
                prog.timeouts.fetch_add(1, Relaxed);
            }
        }
    }

    fn interval_mut(&mut self, now: u64) -> &mut (Interval, Histogram<u64>) {
        Self::interval_at(&mut self.intervals, now)
    }

    fn interval_at(
        v: &mut Vec<(Interval, Histogram<u64>)>,
        now: u64,
    ) -> &mut (Interval, Histogram<u64>) {
        let sec = (now / 1_000_000) as usize;
        if v.len() <= sec {
            v.resize_with(sec + 1, || (Interval::default(), new_hist(2)));
        }
        &mut v[sec]
    }

    /// `sendmmsg` every queued datagram, per socket, in batches.
    fn flush(&mut self) {
        let mut iov: [libc::iovec; SEND_BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; SEND_BATCH];
        let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
        for si in 0..self.sendq.len() {
            if self.sendq[si].is_empty() {
                continue;
            }
            let q = std::mem::take(&mut self.sendq[si]);
            let fd = self.socks[si].as_raw_fd();
            let live: Vec<u32> = q
                .iter()
                .filter(|&&(slot, gen)| {
                    let op = &self.ops[slot as usize];
                    op.gen == gen && op.user != NONE
                })
                .map(|&(slot, _)| slot)
                .collect();
            for chunk in live.chunks(SEND_BATCH) {
                for (i, &slot) in chunk.iter().enumerate() {
                    let b = &self.ops[slot as usize].buf;
                    iov[i] = libc::iovec {
                        iov_base: b.as_ptr() as *mut _,
                        iov_len: b.len(),
                    };
                    hdrs[i] = unsafe { std::mem::zeroed() };
                    hdrs[i].msg_hdr.msg_iov = &mut iov[i];
                    hdrs[i].msg_hdr.msg_iovlen = 1;
                }
                let mut off = 0usize;
                while off < chunk.len() {
                    // SAFETY: hdrs[off..] point into live buffers owned by self.ops.
                    let r = unsafe {
                        libc::sendmmsg(
                            fd,
                            hdrs.as_mut_ptr().add(off),
                            (chunk.len() - off) as u32,
                            0,
                        )
                    };
                    if r <= 0 {
                        // EAGAIN (full buffer) or error: the retransmission timer resends.
                        self.c.send_errors += (chunk.len() - off) as u64;
                        break;
                    }
                    off += r as usize;
                }
            }
            let mut q = q;
            q.clear();
            self.sendq[si] = q;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Timeout,
}

/// Reusable `recvmmsg` buffers.
pub(crate) struct RecvBufs {
    pub bufs: Vec<u8>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    names: Vec<libc::sockaddr_storage>,
}

impl RecvBufs {
    pub fn new() -> RecvBufs {
        let mut r = RecvBufs {
            bufs: vec![0u8; RECV_BATCH * RECV_BUF],
            iov: Vec::with_capacity(RECV_BATCH),
            hdrs: Vec::with_capacity(RECV_BATCH),
            names: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
        };
        for i in 0..RECV_BATCH {
            r.iov.push(libc::iovec {
                iov_base: unsafe { r.bufs.as_mut_ptr().add(i * RECV_BUF) } as *mut _,
                iov_len: RECV_BUF,
            });
        }
        for i in 0..RECV_BATCH {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = unsafe { r.iov.as_mut_ptr().add(i) };
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = unsafe { r.names.as_mut_ptr().add(i) } as *mut _;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            r.hdrs.push(h);
        }
        r
    }

    /// Non-blocking `recvmmsg`; returns the number of datagrams (0 when none).
    pub fn recv(&mut self, fd: i32) -> usize {
        self.recv_flags(fd, libc::MSG_DONTWAIT)
    }

    pub fn recv_flags(&mut self, fd: i32, flags: i32) -> usize {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: all pointers refer to buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                RECV_BATCH as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            0
        } else {
            n as usize
        }
    }

    pub fn len(&self, i: usize) -> usize {
        (self.hdrs[i].msg_len as usize).min(RECV_BUF)
    }

    pub fn data(&self, i: usize) -> &[u8] {
        &self.bufs[i * RECV_BUF..i * RECV_BUF + self.len(i)]
    }

    pub fn name(&self, i: usize) -> (&libc::sockaddr_storage, u32) {
        (&self.names[i], self.hdrs[i].msg_hdr.msg_namelen)
    }

    pub const BATCH: usize = RECV_BATCH;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NullResponder;

    fn responder() -> NullResponder {
        NullResponder::spawn("127.0.0.1:0".parse().unwrap(), 1).unwrap()
    }

    #[test]
    fn closed_loop_against_null_responder_completes_every_registration() {
        let r = responder();
        let calls = std::sync::Arc::new(AtomicU64::new(0));
        let c2 = calls.clone();
        let cfg = StormConfig {
            on_measure_start: Some(MeasureHook(std::sync::Arc::new(move || {
                c2.fetch_add(1, Relaxed);
            }))),
            target: r.addr,
            users: 0..1000,
            total: Some(1000),
            window: 64,
            threads: 2,
            sockets: 8,
            duration: Duration::from_secs(20),
            t1_ms: 200,
            timeout_ms: 5000,
            ..Default::default()
        };
        let rep = run(&cfg).unwrap();
        assert_eq!(rep.started, 1000);
        assert_eq!(rep.completed, 1000, "{rep:?}");
        assert_eq!(rep.failed + rep.timeouts + rep.backlog, 0);
        assert_eq!(rep.per_code.get(&200), Some(&1000));
        assert_eq!(rep.latency_us.count, 1000);
        assert!(rep.latency_us.p50 > 0 && rep.latency_us.p50 <= rep.latency_us.max);
        assert!(r.answered() >= 1000);
        assert_eq!(calls.load(Relaxed), 1, "hook runs once, from one thread");
    }

    #[test]
    fn open_loop_paces_to_the_rate() {
        let r = responder();
        let cfg = StormConfig {
            target: r.addr,
            users: 0..500,
            rate: Some(2000),
            duration: Duration::from_millis(500),
            ..Default::default()
        };
        let rep = run(&cfg).unwrap();
        // 2000/s for 0.5 s = 1000 operations, give or take the final millisecond.
        assert!((997..=1001).contains(&rep.started), "{rep:?}");
        assert_eq!(rep.completed, rep.started);
        assert_eq!(rep.backlog, 0);
    }

    #[test]
    fn silent_server_times_out_with_timer_e_retransmissions() {
        // A bound socket that never answers: every transaction must retransmit at
        // T1, 2·T1 … and end as a timeout after timeout_ms, not hang.
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = StormConfig {
            target: sink.local_addr().unwrap(),
            users: 0..10,
            total: Some(10),
            window: 10,
            t1_ms: 20,
            timeout_ms: 150,
            ..Default::default()
        };
        let t = Instant::now();
        let rep = run(&cfg).unwrap();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(rep.timeouts, 10);
        assert_eq!(rep.completed, 0);
        // Sends at 0, 20, 60, 140 ms (intervals 20, 40, 80): 3 retransmissions each.
        assert_eq!(rep.retransmissions, 30, "{rep:?}");
    }

    #[test]
    fn digest_challenges_are_answered_and_refresh_reuses_the_nonce() {
        // A tiny challenging registrar on a thread: 401 unless the request carries an
        // Authorization whose response verifies for the user's password.
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let srv = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let (mut challenged, mut accepted) = (0u32, 0u32);
            while !stop2.load(Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = &buf[..n];
                let text = std::str::from_utf8(req).unwrap();
                let mut ok200 = Vec::new();
                assert!(sip::null_200(req, &mut ok200));
                let auth = text.lines().find(|l| l.starts_with("Authorization: "));
                let verified = auth.is_some_and(|a| {
                    let user = a
                        .split("username=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap();
                    let field = |k: &str| {
                        a.split(&format!("{k}="))
                            .nth(1)
                            .unwrap()
                            .split([',', '\r'])
                            .next()
                            .unwrap()
                            .trim_matches('"')
                            .to_string()
                    };
                    let nc = u32::from_str_radix(&field("nc"), 16).unwrap();
                    let cn = field("cnonce");
                    let want = digest::response(&digest::ResponseInput {
                        algorithm: Algorithm::Sha256,
                        username: user,
                        realm: b"bench.test",
                        password: &format!("{user}-pw"),
                        method: "REGISTER",
                        uri: "sip:bench.test",
                        nonce: b"n0nce",
                        qop_auth: Some((nc, &cn)),
                    });
                    field("response") == want
                });
                let resp = if verified {
                    accepted += 1;
                    ok200
                } else {
                    challenged += 1;
                    let s = String::from_utf8(ok200).unwrap().replacen("200 OK", "401 Unauthorized", 1).replacen(
                        "Content-Length: 0",
                        "WWW-Authenticate: Digest realm=\"bench.test\", nonce=\"x\", algorithm=MD5, qop=\"auth\"\r\n\
WWW-Authenticate: Digest realm=\"bench.test\", nonce=\"n0nce\", algorithm=SHA-256, qop=\"auth\"\r\nContent-Length: 0",
                        1,
                    );
                    s.into_bytes()
                };
                sock.send_to(&resp, from).unwrap();
            }
            (challenged, accepted)
        });
        let cfg = StormConfig {
            target: addr,
            users: 0..20,
            auth: Some(Algorithm::Sha256),
            plan: Plan::Refresh,
            total: Some(40),
            window: 8,
            t1_ms: 100,
            timeout_ms: 2000,
            ..Default::default()
        };
        let rep = run(&cfg).unwrap();
        stop.store(true, Relaxed);
        let (challenged, accepted) = srv.join().unwrap();
        assert_eq!(rep.completed, 40, "{rep:?}");
        assert_eq!(rep.warmup_failed, 0);
        // Warm-up: 20 challenges; the 40 measured refreshes carry cached credentials.
        assert_eq!(challenged, 20);
        assert_eq!(accepted, 60);
        assert_eq!(rep.per_code.get(&401), None);
    }
}
