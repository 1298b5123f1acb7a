//! Registrar (location service) micro-benchmarks (turnstile_core::registrar).
//!
//! Budgets (DESIGN.md, 2-core dev machine):
//! - registrar update of one binding: ≤ 500 ns  (`registrar/new_binding`, `registrar/refresh`)
//! - 1,000,000 AORs with one contact each: ≤ 400 MB RSS for the whole process; the registrar's
//!   own share should stay ≤ 250 bytes per AOR+binding (printed by the one-shot report)
//! - restart: 1,000,000 bindings restored in ≤ 3 s (printed by the one-shot report)
//!
//! Before the criterion groups, a one-shot report registers 1,000,000 AORs, prints the RSS
//! growth per AOR (from /proc/self/statm), times a snapshot write and a restore of it, and
//! times `expire()` with nothing due and with everything due.
//!
//! Run: `cargo bench -p turnstile-benches --bench registrar`
//! (quick: `... -- --measurement-time 2 --warm-up-time 1`; skip the report with
//! `TURNSTILE_BENCH_NO_REPORT=1`).

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{black_box, Criterion, Throughput};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use turnstile_core::registrar::{
    Bindings, ContactReq, RegisterReq, Registrar, RegistrarConfig, Transport,
};
use turnstile_core::Millis;

const T0: Millis = Millis(1_800_000_000_000);
const MILLION: usize = 1_000_000;
/// As the engine creates it (`Registrar::new(cfg, 256)`).
const SHARDS: usize = 256;

/// Realistic field sizes: a phone's AOR, its Contact with transport param, a 40-char Call-ID.
struct Names {
    aor: String,
    contact: String,
    call_id: String,
}

impl Names {
    fn new() -> Self {
        Names {
            aor: String::with_capacity(64),
            contact: String::with_capacity(64),
            call_id: String::with_capacity(64),
        }
    }

    fn set(&mut self, i: usize) {
        self.aor.clear();
        self.contact.clear();
        self.call_id.clear();
        let _ = write!(self.aor, "sip:user{i:07}@example.test");
        let _ = write!(
            self.contact,
            "sip:user{i:07}@10.{}.{}.{}:5060;transport=udp",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        let _ = write!(
            self.call_id,
            "a84b4c76e66710-{i:07}@10.77.{}.{}",
            (i >> 8) & 255,
            i & 255
        );
    }
}

fn source(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5060))
}

fn register(r: &Registrar, now: Millis, n: &Names, i: usize, cseq: u32, out: &mut Bindings) {
    let contacts = [ContactReq {
        uri: &n.contact,
        key: &n.contact,
        expires: Some(3600),
        ..Default::default()
    }];
    let req = RegisterReq {
        aor: &n.aor,
        call_id: &n.call_id,
        cseq,
        star: false,
        contacts: &contacts,
        expires_header: None,
        source: source(i),
        transport: Transport::Udp,
        path: &[],
        group: 1,
    };
    let res = r.register_into(now, &req, i as u32, out);
    debug_assert!(res.is_ok());
    black_box(res).ok();
}

fn fill(r: &Registrar, count: usize) {
    let mut n = Names::new();
    let mut out = Bindings::new();
    for i in 0..count {
        n.set(i);
        register(r, T0, &n, i, 1, &mut out);
    }
}

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// Runs `f`, returning its value with (wall, thread CPU) time.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (w, c) = (Instant::now(), thread_cpu());
    let v = f();
    (v, w.elapsed(), thread_cpu() - c)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report() {
    println!("== registrar one-shot report ({MILLION} AORs, {SHARDS} shards; times: wall / thread CPU) ==");
    let before = rss_bytes().unwrap_or(0);
    let r = Registrar::new(RegistrarConfig::default(), SHARDS);
    let ((), w, c) = timed(|| fill(&r, MILLION));
    let after = rss_bytes().unwrap_or(0);
    let delta = after.saturating_sub(before);
    println!(
        "register 1M new AORs: {:.0} / {:.0} ms ({:.0} ns CPU each, incl. formatting the strings)",
        ms(w),
        ms(c),
        c.as_nanos() as f64 / MILLION as f64
    );
    println!(
        "memory: RSS {} MB -> {} MB, +{:.1} MB = {:.0} bytes per AOR+binding (budget: 250 own, 400 MB process)",
        before >> 20,
        after >> 20,
        delta as f64 / (1 << 20) as f64,
        delta as f64 / MILLION as f64
    );
    assert_eq!(r.binding_count(), MILLION);

    let (nothing, w, c) = timed(|| r.expire(T0.plus_secs(1)));
    println!("expire() with nothing due: {w:?} / {c:?} (removed {nothing})");

    let mut snap = Vec::new();
    let (st, w, c) = timed(|| {
        r.write_snapshot(T0.plus_secs(1), &mut snap)
            .expect("vec write")
    });
    println!(
        "snapshot write: {:.0} / {:.0} ms, {} bytes ({:.0} B/binding), {} bindings",
        ms(w),
        ms(c),
        snap.len(),
        snap.len() as f64 / MILLION as f64,
        st.bindings
    );
    drop(r);

    let r2 = Registrar::new(RegistrarConfig::default(), SHARDS);
    let (restored, w, c) = timed(|| {
        r2.restore_snapshot(&snap, T0.plus_secs(2))
            .expect("restore")
    });
    println!(
        "restore: {restored} bindings in {:.0} / {:.0} ms (budget: 1M in 3000 ms)",
        ms(w),
        ms(c)
    );
    assert_eq!(restored, MILLION);
    drop(r2);

    // Streaming restore (what a daemon should use at startup: no 170 MB file buffer).
    let r2 = Registrar::new(RegistrarConfig::default(), SHARDS);
    let (restored, w, c) = timed(|| {
        r2.restore_snapshot_from(&snap[..], T0.plus_secs(2))
            .expect("restore")
    });
    println!(
        "streaming restore: {restored} bindings in {:.0} / {:.0} ms",
        ms(w),
        ms(c)
    );
    assert_eq!(restored, MILLION);
    drop(snap);

    let (gone, w, c) = timed(|| r2.expire(T0.plus_secs(3601)));
    println!(
        "expire() with all 1M due: {:.0} / {:.0} ms (removed {gone})",
        ms(w),
        ms(c)
    );
    println!("== end of report ==");
}

/// Thread CPU time: the machine is shared by parallel builds, and wall time then mostly
/// measures the scheduler. CPU time still includes cache misses (the real cost of a large
/// location service), just not time spent descheduled.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_THREAD_CPUTIME_ID is always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NsFormatter
    }
}

struct NsFormatter;

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (f, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else if typical < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        values.iter_mut().for_each(|v| *v *= f);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n,
        };
        values.iter_mut().for_each(|v| *v = n as f64 * 1e9 / *v);
        "/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn benches<M: Measurement<Value = Duration>>(c: &mut Criterion<M>, clock: fn() -> Duration) {
    let mut g = c.benchmark_group("registrar");

    // A new AOR with one binding per iteration (allocates its record), fresh registrars of
    // up to 200k AORs built outside the timed region. Includes formatting the strings.
    let mut scratch = Names::new();
    g.bench_function("new_binding", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            let mut out = Bindings::new();
            while done < iters {
                let chunk = (iters - done).min(200_000) as usize;
                let r = Registrar::new(RegistrarConfig::default(), SHARDS);
                let t = clock();
                for i in 0..chunk {
                    scratch.set(i);
                    register(&r, T0, &scratch, i, 1, &mut out);
                }
                total += clock() - t;
                done += chunk as u64;
            }
            total
        })
    });

    // Refresh of an existing binding (same Call-ID, CSeq + 1) in random AOR order: the
    // steady-state storm path. "l1_64": 64 AORs, everything in L1/L2 (the compute cost);
    // "hot_10k": a few MB of state; "cold_1M": the realistic case, dominated by cache and
    // TLB misses (hash table, slab record, string blob, expiry index).
    // The request strings are formatted into one reused buffer per iteration, as the engine
    // hands over strings from the datagram it just parsed (hot in cache); `format_only`
    // measures that formatting alone, to subtract.
    let mut f = 0usize;
    g.bench_function("format_only", |b| {
        b.iter(|| {
            scratch.set(f % MILLION);
            f += 1;
            black_box(&scratch.aor);
        })
    });
    for (label, pool) in [
        ("l1_64", 64usize),
        ("hot_10k", 10_000),
        ("cold_1M", MILLION),
    ] {
        let r = Registrar::new(RegistrarConfig::default(), SHARDS);
        fill(&r, pool);
        // A fixed pseudo-random visiting order (LCG shuffle), each AOR once per round.
        let order: Vec<u32> = {
            let mut v: Vec<u32> = (0..pool as u32).collect();
            let mut x = 0x2545_f491_4f6c_dd1du64;
            for i in (1..v.len()).rev() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                v.swap(i, (x >> 33) as usize % (i + 1));
            }
            v
        };
        let mut i = 0usize;
        let mut out = Bindings::new();
        g.bench_function(format!("refresh_{label}"), |b| {
            b.iter(|| {
                let k = order[i % pool] as usize;
                let cseq = 2 + (i / pool) as u32;
                scratch.set(k);
                register(&r, T0.plus_ms(i as u64 / 64), &scratch, k, cseq, &mut out);
                i += 1;
            })
        });
        let mut j = 0usize;
        g.bench_function(format!("lookup_{label}"), |b| {
            b.iter(|| {
                let k = order[j % pool] as usize;
                j += 1;
                scratch.set(k);
                black_box(r.lookup_with(&scratch.aor, T0, |b| {
                    black_box(b.source);
                }))
            })
        });
    }
    g.finish();
}

fn main() {
    if std::env::var_os("TURNSTILE_BENCH_NO_REPORT").is_none() {
        report();
    }
    if std::env::var_os("TURNSTILE_BENCH_WALL").is_some() {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c, || {
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            START.get_or_init(Instant::now).elapsed()
        });
        c.final_summary();
    } else {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpu)
            .configure_from_args();
        benches(&mut c, thread_cpu);
        c.final_summary();
    }
}
