//! Socket-mode workers: one pinned thread per core, each with its own `SO_REUSEPORT` socket
//! per listen address, its own engine and its own per-IP-Group fair queues.
//!
//! One iteration of a worker:
//! 1. receive: up to [`RX_ROUNDS`] × `recvmmsg` batches per socket; classify each datagram by
//!    source (the engine's group table) and push it into its group's bounded queue
//!    (tail drop when full). Reading faster than we process is deliberate: under a storm the
//!    kernel buffer is emptied into *our* queues, where the drops hit the flooding group only,
//!    instead of overflowing the shared socket buffer, which would drop everyone alike;
//! 2. process: up to [`DRAIN`] datagrams in deficit-round-robin order by group weight
//!    ([`crate::fair`]) through `engine.handle_classified`;
//! 3. engine timers, then flush `poll_transmit()` with `sendmmsg`;
//! 4. idle: `poll(2)` with a short timeout so shutdown and engine timers are served.

use crate::deny::LiveCell;
use crate::fair::FairQueues;
use crate::socket::{self, BoundSocket, RecvBatch, SendBatch};
use crate::xdp::xsk::{RxPacket, XskQueue};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use turnstile_core::engine::{Engine, Event, Shared, Transmit};
use turnstile_core::group::GroupId;
use turnstile_core::stats::WorkerStats;
use turnstile_core::Millis;

/// `recvmmsg` calls per socket per iteration (at most `RX_ROUNDS × BATCH` datagrams).
pub const RX_ROUNDS: usize = 16;
/// Datagrams processed per iteration; smaller than what one iteration may receive, so a
/// backlog builds in the fair queues rather than in the kernel.
pub const DRAIN: usize = 64;
/// The short drain. XDP mode: datagrams processed per iteration. An iteration is also the
/// interval at which the rings are read and replies are kicked out, so it bounds how long a
/// newly arrived request of a quiet group waits behind a flooded one (16 × ~5 µs instead of
/// 64 × ~5 µs, twice: once before it is read, once before its reply leaves). Reading the
/// rings is syscall-free, so short iterations cost little more than the extra TX kicks.
/// Socket mode: the chunk after which replies are sent while more than one group waits.
pub const SHORT_DRAIN: usize = 16;
/// XDP mode: the kernel sockets only see what the XDP program passes (fallbacks), so an
/// iteration reads them only every this many iterations unless the last read found data;
/// their `recvmmsg` calls would otherwise dominate the short iterations.
const XSK_SOCKET_EVERY: u32 = 8;
/// Longest idle sleep: bounds shutdown latency.
const IDLE_POLL_MS: u64 = 20;
/// Receive buffers kept for reuse (beyond this, freed).
const POOL_MAX: usize = 8192;

/// The daemon's own per-worker counters (the engine keeps its own in [`WorkerStats`]).
/// Single writer (the worker), relaxed load + store; the control plane reads.
pub struct DataplaneStats {
    pub rx_datagrams: AtomicU64,
    pub rx_truncated: AtomicU64,
    pub rx_errors: AtomicU64,
    pub tx_datagrams: AtomicU64,
    pub tx_errors: AtomicU64,
    /// Tail drops per fair-queue class (groups in config order, then unclassified).
    pub queue_drops: Vec<AtomicU64>,
    /// Datagrams currently queued (gauge).
    pub queued: AtomicU64,
    /// Kernel receive-buffer drops of this worker's steered sockets per class (gauge, sampled
    /// about once a second), and of its unsteered sockets.
    pub kernel_drops: Vec<AtomicU64>,
    pub kernel_drops_unsteered: AtomicU64,
    /// XDP mode: datagrams received from AF_XDP rings / replies sent in their own frame.
    pub xsk_rx: AtomicU64,
    pub xsk_tx: AtomicU64,
    /// Datagrams whose processing panicked (a bug; the datagram is dropped, the worker lives).
    pub engine_panics: AtomicU64,
    /// Datagrams from denied sources dropped before the engine, per class.
    pub deny_drops: Vec<AtomicU64>,
    /// Engine events (auth failures) not forwarded because the control channel was full.
    pub events_dropped: AtomicU64,
    /// XDP mode, kernel `XDP_STATISTICS` (gauges, sampled about once a second): packets
    /// dropped per AF_XDP class socket (RX ring full or no frame), and receives that found
    /// the shared fill ring empty (per UMEM, summed over this worker's queues).
    pub xsk_drops: Vec<AtomicU64>,
    pub xsk_fill_ring_empty: AtomicU64,
}

impl DataplaneStats {
    pub fn new(classes: usize) -> Self {
        DataplaneStats {
            rx_datagrams: AtomicU64::new(0),
            rx_truncated: AtomicU64::new(0),
            rx_errors: AtomicU64::new(0),
            tx_datagrams: AtomicU64::new(0),
            tx_errors: AtomicU64::new(0),
            queue_drops: (0..classes).map(|_| AtomicU64::new(0)).collect(),
            queued: AtomicU64::new(0),
            kernel_drops: (0..classes).map(|_| AtomicU64::new(0)).collect(),
            kernel_drops_unsteered: AtomicU64::new(0),
            xsk_rx: AtomicU64::new(0),
            xsk_tx: AtomicU64::new(0),
            engine_panics: AtomicU64::new(0),
            deny_drops: (0..classes).map(|_| AtomicU64::new(0)).collect(),
            events_dropped: AtomicU64::new(0),
            xsk_drops: (0..classes).map(|_| AtomicU64::new(0)).collect(),
            xsk_fill_ring_empty: AtomicU64::new(0),
        }
    }
}

#[inline]
fn bump(a: &AtomicU64, n: u64) {
    if n != 0 {
        a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

/// Wall-clock now as the core's time type (the daemon is the only clock reader).
pub fn now_millis() -> Millis {
    Millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// Everything a worker thread needs.
pub struct WorkerSetup {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    /// Per listen address: one socket, or with kernel steering one per class; all bound.
    pub sockets: Vec<BoundSocket>,
    pub shared: Arc<Shared>,
    /// Fair-queue classes `(weight, depth)`: the groups in config order, then unclassified.
    pub classes: Vec<(u32, usize)>,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<DataplaneStats>,
    pub seed: u64,
    /// XDP mode: the AF_XDP queues (one UMEM per NIC rx queue, one socket per class) this
    /// worker drives. Empty in socket mode.
    pub xsks: Vec<XskQueue>,
    /// Engine events (auth failures) to the control thread; never blocks.
    pub events: crossbeam_channel::Sender<IpAddr>,
    /// Deny set and fair-queue parameters, republished by the control thread.
    pub live: Arc<LiveCell>,
}

/// A queued datagram: copied out of a kernel socket, or still in its AF_XDP frame (so the
/// reply can reuse the frame without a copy or a syscall).
enum Item {
    Socket(Datagram),
    Xsk { queue: u16, packet: RxPacket },
}

struct Datagram {
    src: SocketAddr,
    /// The local address it arrived on (the bound address, or from pktinfo on wildcard sockets).
    local: SocketAddr,
    data: Vec<u8>,
}

/// Starts the worker thread; the engine is created on it and its counters are handed back.
pub fn spawn(
    setup: WorkerSetup,
) -> std::io::Result<(std::thread::JoinHandle<()>, Arc<WorkerStats>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(format!("worker-{}", setup.index))
        .spawn(move || {
            if let Some(core) = setup.core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(
                        worker = setup.index,
                        core = core.id,
                        "could not pin worker to core"
                    );
                }
            }
            // A dying worker stops the whole instance (the control plane sees `stop`), so the
            // final snapshot is still written instead of serving on with a dead core.
            let _guard = StopOnPanic(setup.stop.clone());
            let engine = Engine::new(setup.shared.clone(), setup.seed);
            let _ = tx.send(engine.stats().clone());
            run(setup, engine);
        })?;
    let stats = rx
        .recv()
        .map_err(|_| std::io::Error::other("worker thread died during start"))?;
    Ok((handle, stats))
}

struct StopOnPanic(Arc<AtomicBool>);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

fn run(setup: WorkerSetup, mut engine: Engine) {
    let WorkerSetup {
        index,
        sockets,
        shared,
        classes,
        stop,
        stats,
        mut xsks,
        events,
        live,
        ..
    } = setup;
    let (mut live_gen, mut live_now) = live.load();
    let mut deny_drops = vec![0u64; classes.len()];
    let mut xsk_rx: Vec<RxPacket> = Vec::with_capacity(socket::BATCH);
    let mut poll_fds: Vec<i32> = Vec::new();
    let groups = shared.config.groups.groups().len();
    let unclassified = classes.len() - 1;
    // In XDP mode every queued datagram pins a UMEM frame, and the frames of an rx queue are
    // shared by all its class sockets. A flooded group with the configured depth (4096 by
    // default) could hold every frame while it waits: the fill ring then runs dry and the
    // other groups' packets wait for frames, or fall back to the kernel path behind the
    // flood. So a class may pin at most half of this worker's frames shared among the
    // classes; the other half keeps the fill ring supplied. Socket mode is unaffected.
    let xsk_frames: usize = xsks.iter().map(|q| q.umem_frames() as usize).sum();
    let depth_cap = if xsk_frames == 0 {
        usize::MAX
    } else {
        (xsk_frames / 2 / classes.len().max(1)).max(socket::BATCH)
    };
    let capped = |depth: usize| depth.min(depth_cap);
    let mut fair: FairQueues<Item> = FairQueues::new(classes.iter().map(|&(w, d)| (w, capped(d))));
    let fds: Vec<_> = sockets.iter().map(|s| socket::fd(&s.socket)).collect();
    let locals: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.socket.local_addr().expect("bound socket"))
        .collect();
    let steered: Vec<Option<usize>> = sockets.iter().map(|s| s.class).collect();
    let mut last_sample = std::time::Instant::now();
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<Vec<Transmit>> = sockets.iter().map(|_| Vec::new()).collect();
    let mut drops = vec![0u64; classes.len()];
    let drain_max = if xsks.is_empty() { DRAIN } else { SHORT_DRAIN };
    let mut socket_skip = 0u32;
    // Socket mode with more than one steered group socket: look for quiet groups' requests
    // between drain chunks (see the drain loop).
    let quiet_poll = xsks.is_empty() && steered.iter().flatten().count() > 1;
    let mut quiet_fds: Vec<(libc::pollfd, usize)> = Vec::new();
    poll_fds.extend(&fds);
    for q in &xsks {
        poll_fds.extend((0..q.classes()).map(|c| q.fd(c)));
    }
    tracing::debug!(worker = index, sockets = ?locals, xsk_queues = xsks.len(), "worker running");

    while !stop.load(Ordering::Relaxed) {
        // 0. control-plane updates (deny list, fair-queue weights/depths): one atomic load
        //    per iteration, a lock only when something was published.
        if live.generation() != live_gen {
            (live_gen, live_now) = live.load();
            for (c, &(w, depth)) in live_now.classes.iter().enumerate() {
                fair.set_class(c, w, capped(depth));
            }
        }
        let deny = &live_now.deny;
        // 1. receive + classify + enqueue
        let mut got = 0usize;
        let mut truncated = 0u64;
        let read_sockets = xsks.is_empty() || socket_skip == 0;
        socket_skip = (socket_skip + 1) % XSK_SOCKET_EVERY;
        for (si, &fd) in fds.iter().enumerate().filter(|_| read_sockets) {
            // A steered socket carries one class: read it only while that class's queue has
            // room, so a flood's excess is dropped by the kernel without costing a read.
            let rounds = match steered[si] {
                Some(c) => fair.room(c).div_ceil(socket::BATCH).min(RX_ROUNDS),
                None => RX_ROUNDS,
            };
            let n = read_socket(
                &mut KernelRead {
                    rx: &mut rx,
                    fair: &mut fair,
                    pool: &mut pool,
                    drops: &mut drops,
                    deny_drops: &mut deny_drops,
                    truncated: &mut truncated,
                },
                &shared,
                deny,
                &stats,
                index,
                fd,
                locals[si],
                rounds,
            );
            got += n;
            if n > 0 {
                socket_skip = 0;
            }
        }
        // 1b. AF_XDP: the XDP program already classified (metadata); frames stay in the UMEM.
        for (qi, q) in xsks.iter_mut().enumerate() {
            let nc = q.classes() as usize;
            for c in 0..q.classes() {
                // Class c carries group c alone, except the last class when there are more
                // groups than classes. A single-group ring is read only while that group's
                // queue has room: the excess then overflows the ring (dropped by the kernel,
                // counted in XDP_STATISTICS) instead of costing us a read.
                let max = if (c as usize) + 1 < nc || groups <= nc {
                    fair.room(c as usize).min(socket::BATCH)
                } else {
                    socket::BATCH
                };
                if max == 0 {
                    continue;
                }
                xsk_rx.clear();
                q.recv_batch(c, max as u32, &mut xsk_rx);
                got += xsk_rx.len();
                bump(&stats.xsk_rx, xsk_rx.len() as u64);
                for p in xsk_rx.drain(..) {
                    let Some(src) = p.src() else {
                        truncated += 1;
                        q.release(p);
                        continue;
                    };
                    let class = match p
                        .group_id()
                        .or_else(|| shared.config.groups.classify(src.ip()))
                    {
                        Some(g) if (g as usize) < groups => g as usize,
                        _ => unclassified,
                    };
                    // Normally dropped by the XDP deny map already; this covers the
                    // moments between a deny decision and the map write.
                    if !deny.is_empty() && deny.contains(&src.ip()) {
                        deny_drops[class] += 1;
                        q.release(p);
                        continue;
                    }
                    if let Err(Item::Xsk { packet, .. }) = fair.push(
                        class,
                        Item::Xsk {
                            queue: qi as u16,
                            packet: p,
                        },
                    ) {
                        drops[class] += 1;
                        q.release(packet);
                    }
                }
            }
        }
        if got > 0 {
            bump(&stats.rx_datagrams, got as u64);
            bump(&stats.rx_truncated, truncated);
            for (c, d) in drops.iter_mut().enumerate() {
                bump(&stats.queue_drops[c], *d);
                *d = 0;
            }
            for (c, d) in deny_drops.iter_mut().enumerate() {
                bump(&stats.deny_drops[c], *d);
                *d = 0;
            }
        }

        // 2. fair processing
        let now = now_millis();
        if !fair.is_empty() {
            let mut served = 0;
            loop {
                // Socket mode, between chunks: a quiet group's request would otherwise wait in
                // its own (steered) socket until the next iteration's reads, behind up to
                // DRAIN of a flooded group's datagrams. One poll(2) over the sockets of the
                // groups with nothing queued finds it, and the read makes the drain mixed.
                if quiet_poll && served > 0 {
                    let n = read_quiet_sockets(
                        &mut KernelRead {
                            rx: &mut rx,
                            fair: &mut fair,
                            pool: &mut pool,
                            drops: &mut drops,
                            deny_drops: &mut deny_drops,
                            truncated: &mut truncated,
                        },
                        &mut quiet_fds,
                        &fds,
                        &steered,
                        &shared,
                        deny,
                        &stats,
                        index,
                        &locals,
                    );
                    bump(&stats.rx_datagrams, n as u64);
                }
                // Socket mode while more than one group waits: short chunks, each followed by its
                // replies, so a quiet group's answer does not wait behind 64 of a flooded group's.
                // With one group (a storm, the capacity case) the long iteration stays, in
                // chunks only to look for quiet groups' requests between them: shorter reads
                // cost socket mode ~20 % of its capacity in recvmmsg calls.
                let mixed = xsks.is_empty() && fair.active_classes() > 1;
                let chunk = if mixed || quiet_poll {
                    SHORT_DRAIN.min(drain_max - served)
                } else {
                    drain_max - served
                };
                let mut n = 0;
                while n < chunk {
                    let Some((class, item)) = fair.pop() else {
                        break;
                    };
                    n += 1;
                    let q = serve(
                        &mut engine,
                        &stats,
                        now,
                        groups,
                        class,
                        item,
                        &mut xsks,
                        &mut pool,
                        &mut pending,
                        &locals,
                    );
                    // A quiet group's request, served while another group's backlog waits
                    // (a flood): its answer leaves now instead of with the rest of this
                    // iteration's, up to SHORT_DRAIN flooded-group answers later. One more
                    // kick per quiet request; the flooded group's own backlog never empties,
                    // so it adds none, nor does a storm of one group alone.
                    if let Some(q) = q {
                        if fair.class_len(class) == 0 && !fair.is_empty() {
                            xsks[q].flush();
                        }
                    }
                }
                served += n;
                if mixed {
                    while let Some(t) = engine.poll_transmit() {
                        let si = pick_socket(&locals, &t);
                        pending[si].push(t);
                    }
                    send_pending(&mut pending, &mut tx, &fds, &locals, &stats);
                }
                if n < chunk || served >= drain_max {
                    break;
                }
            }
            for q in xsks.iter_mut() {
                q.flush();
            }
            stats.queued.store(fair.len() as u64, Ordering::Relaxed);
            forward_events(&mut engine, &events, &stats);
        }

        // 3. timers + transmit
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
        }
        while let Some(t) = engine.poll_transmit() {
            let si = pick_socket(&locals, &t);
            pending[si].push(t);
        }
        send_pending(&mut pending, &mut tx, &fds, &locals, &stats);

        if last_sample.elapsed() >= std::time::Duration::from_secs(1) {
            last_sample = std::time::Instant::now();
            sample_kernel_drops(&fds, &steered, &stats);
            sample_xsk_drops(&xsks, &stats);
        }

        // 4. idle wait
        if got == 0 && fair.is_empty() {
            let mut wait = IDLE_POLL_MS;
            if let Some(t) = engine.poll_timeout() {
                wait = wait.min(t.0.saturating_sub(now_millis().0));
            }
            if wait > 0 {
                for q in xsks.iter_mut() {
                    // Frames released or completed since the last flush go back to the rings.
                    q.flush();
                }
                socket::poll_readable(&poll_fds, wait as i32);
            }
        }
    }
    stats.queued.store(fair.len() as u64, Ordering::Relaxed);
    sample_kernel_drops(&fds, &steered, &stats);
    sample_xsk_drops(&xsks, &stats);
    tracing::debug!(worker = index, "worker stopped");
}

/// Sends the queued transmits with one `sendmmsg` per socket that has any.
/// Where a kernel-socket read puts what it reads, and what it counts.
struct KernelRead<'a> {
    rx: &'a mut RecvBatch,
    fair: &'a mut FairQueues<Item>,
    pool: &'a mut Vec<Vec<u8>>,
    drops: &'a mut [u64],
    deny_drops: &'a mut [u64],
    truncated: &'a mut u64,
}

/// Reads up to `rounds` batches from kernel socket `fd` (bound to `local`), classifies each
/// datagram by source and queues it in its class (tail drop when full, counted; denied
/// sources dropped, counted). Returns the datagrams read.
#[allow(clippy::too_many_arguments)]
fn read_socket(
    k: &mut KernelRead<'_>,
    shared: &Shared,
    deny: &std::collections::HashSet<IpAddr>,
    stats: &DataplaneStats,
    index: usize,
    fd: i32,
    local: SocketAddr,
    rounds: usize,
) -> usize {
    let groups = shared.config.groups.groups().len();
    let unclassified = k.fair.class_count() - 1;
    let mut got = 0;
    for _ in 0..rounds {
        let n = match k.rx.recv(fd) {
            Ok(n) => n,
            Err(e) => {
                bump(&stats.rx_errors, 1);
                tracing::debug!(worker = index, error = %e, "recvmmsg failed");
                0
            }
        };
        for i in 0..n {
            let Some((src, data, local_ip)) = k.rx.get_with_local(i) else {
                *k.truncated += 1;
                continue;
            };
            let class = match shared.config.groups.classify(src.ip()) {
                Some(g) if (g as usize) < groups => g as usize,
                _ => unclassified,
            };
            if !deny.is_empty() && deny.contains(&src.ip()) {
                k.deny_drops[class] += 1;
                continue;
            }
            let mut buf = k.pool.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(data);
            if let Err(Item::Socket(d)) = k.fair.push(
                class,
                Item::Socket(Datagram {
                    src,
                    local: match local_ip {
                        Some(ip) => SocketAddr::new(ip, local.port()),
                        None => local,
                    },
                    data: buf,
                }),
            ) {
                k.drops[class] += 1;
                k.pool.push(d.data);
            }
        }
        got += n;
        if n < socket::BATCH {
            break;
        }
    }
    got
}

/// Socket mode: one non-blocking poll(2) over the steered sockets of the classes with nothing
/// queued; each that has a datagram waiting is read (one batch) into the fair queues. Returns
/// the datagrams read.
#[allow(clippy::too_many_arguments)]
fn read_quiet_sockets(
    k: &mut KernelRead<'_>,
    pfds: &mut Vec<(libc::pollfd, usize)>,
    fds: &[i32],
    steered: &[Option<usize>],
    shared: &Shared,
    deny: &std::collections::HashSet<IpAddr>,
    stats: &DataplaneStats,
    index: usize,
    locals: &[SocketAddr],
) -> usize {
    pfds.clear();
    for (si, (&fd, class)) in fds.iter().zip(steered).enumerate() {
        if let Some(c) = *class {
            if k.fair.class_len(c) == 0 && k.fair.room(c) > 0 {
                let p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                pfds.push((p, si));
            }
        }
    }
    if pfds.is_empty() {
        return 0;
    }
    let mut raw: [libc::pollfd; 16] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 16];
    let n = pfds.len().min(raw.len());
    for (r, (p, _)) in raw.iter_mut().zip(pfds.iter()) {
        *r = *p;
    }
    // SAFETY: `n` initialised pollfd entries; timeout 0 never blocks.
    if unsafe { libc::poll(raw.as_mut_ptr(), n as libc::nfds_t, 0) } <= 0 {
        return 0;
    }
    let mut got = 0;
    for (r, &(_, si)) in raw[..n].iter().zip(pfds.iter()) {
        if r.revents & libc::POLLIN != 0 {
            got += read_socket(k, shared, deny, stats, index, fds[si], locals[si], 1);
        }
    }
    got
}

/// One datagram from the fair queue through the engine. An AF_XDP request's answer to its
/// sender goes back in the request's own frame on the XSK TX ring; anything else (other
/// destinations, more than one datagram) is queued in `pending` for the kernel sockets.
/// Returns the XSK queue the request came from (`None` for a kernel-socket datagram).
#[allow(clippy::too_many_arguments)]
fn serve(
    engine: &mut Engine,
    stats: &DataplaneStats,
    now: Millis,
    groups: usize,
    class: usize,
    item: Item,
    xsks: &mut [XskQueue],
    pool: &mut Vec<Vec<u8>>,
    pending: &mut [Vec<Transmit>],
    locals: &[SocketAddr],
) -> Option<usize> {
    let group = (class < groups).then_some(class as GroupId);
    match item {
        Item::Socket(d) => {
            guarded(engine, stats, d.src, |e| {
                e.handle_classified(now, d.src, d.local, group, &d.data)
            });
            if pool.len() < POOL_MAX {
                pool.push(d.data);
            }
            None
        }
        Item::Xsk { queue, packet } => {
            let q = &mut xsks[queue as usize];
            let (Some(src), Some(local)) = (packet.src(), packet.dst()) else {
                q.release(packet);
                return Some(queue as usize);
            };
            let payload = q.payload(&packet);
            guarded(engine, stats, src, |e| {
                e.handle_classified(now, src, local, group, payload)
            });
            let mut frame = Some(packet);
            while let Some(t) = engine.poll_transmit() {
                if t.dst == src {
                    if let Some(p) = frame.take() {
                        match q.reply(p, &t.payload) {
                            Ok(()) => {
                                bump(&stats.tx_datagrams, 1);
                                bump(&stats.xsk_tx, 1);
                            }
                            Err(_) => bump(&stats.tx_errors, 1),
                        }
                        continue;
                    }
                }
                let si = pick_socket(locals, &t);
                pending[si].push(t);
            }
            if let Some(p) = frame {
                q.release(p);
            }
            Some(queue as usize)
        }
    }
}

fn send_pending(
    pending: &mut [Vec<Transmit>],
    tx: &mut SendBatch,
    fds: &[i32],
    locals: &[SocketAddr],
    stats: &DataplaneStats,
) {
    for (si, out) in pending.iter_mut().enumerate() {
        if out.is_empty() {
            continue;
        }
        // On a wildcard socket, the reply's source is the address the request came to.
        let wildcard = locals[si].ip().is_unspecified();
        let res = tx.send(
            fds[si],
            out.iter().map(|t| {
                let src_ip = t
                    .src
                    .map(|a| a.ip())
                    .filter(|ip| wildcard && !ip.is_unspecified());
                (t.dst, t.payload.as_slice(), src_ip)
            }),
        );
        bump(&stats.tx_datagrams, res.sent as u64);
        bump(&stats.tx_errors, res.failed as u64);
        out.clear();
    }
}

/// Hands the engine's events to the control thread without blocking: a full channel drops
/// (counted) rather than stall the data path.
fn forward_events(
    engine: &mut Engine,
    events: &crossbeam_channel::Sender<IpAddr>,
    stats: &DataplaneStats,
) {
    let mut dropped = 0;
    while let Some(ev) = engine.poll_event() {
        match ev {
            Event::AuthFailed { src } => {
                if events.try_send(src).is_err() {
                    dropped += 1;
                }
            }
        }
    }
    bump(&stats.events_dropped, dropped);
}

/// Runs one engine step so that a panic (a bug on some wire input) costs that datagram, not
/// the worker and every registration it would serve. The panic message itself is printed by
/// the panic hook; here it is counted and logged with the source.
#[inline]
fn guarded(
    engine: &mut Engine,
    stats: &DataplaneStats,
    src: SocketAddr,
    f: impl FnOnce(&mut Engine),
) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(engine))).is_err() {
        bump(&stats.engine_panics, 1);
        tracing::error!(%src, "engine panicked on a datagram; dropped it (this is a bug, please report)");
    }
}

fn sample_xsk_drops(xsks: &[XskQueue], stats: &DataplaneStats) {
    if xsks.is_empty() {
        return;
    }
    let mut per_class = vec![0u64; stats.xsk_drops.len()];
    let mut fill_empty = 0u64;
    for q in xsks {
        let mut pool_empty = 0;
        for c in 0..q.classes() {
            if let Ok(st) = q.statistics(c) {
                if let Some(v) = per_class.get_mut(c as usize) {
                    *v += st.rx_dropped + st.rx_ring_full;
                }
                // The fill ring is shared by the classes of a queue: same number on each.
                pool_empty = pool_empty.max(st.rx_fill_ring_empty_descs);
            }
        }
        fill_empty += pool_empty;
    }
    for (a, v) in stats.xsk_drops.iter().zip(per_class) {
        a.store(v, Ordering::Relaxed);
    }
    stats
        .xsk_fill_ring_empty
        .store(fill_empty, Ordering::Relaxed);
}

fn sample_kernel_drops(fds: &[i32], steered: &[Option<usize>], stats: &DataplaneStats) {
    let mut per_class = vec![0u64; stats.kernel_drops.len()];
    let mut unsteered = 0u64;
    for (fd, class) in fds.iter().zip(steered) {
        let d = u64::from(crate::steer::kernel_drops(*fd).unwrap_or(0));
        match class {
            Some(c) if *c < per_class.len() => per_class[*c] += d,
            _ => unsteered += d,
        }
    }
    for (a, v) in stats.kernel_drops.iter().zip(per_class) {
        a.store(v, Ordering::Relaxed);
    }
    stats
        .kernel_drops_unsteered
        .store(unsteered, Ordering::Relaxed);
}

/// The socket to send `t` from: the one bound to `t.src`; else a wildcard socket of the same
/// port and family (the request came in on it, pktinfo told us the address); else the first
/// of the destination's family.
fn pick_socket(locals: &[SocketAddr], t: &Transmit) -> usize {
    if let Some(src) = t.src {
        if let Some(i) = locals.iter().position(|l| *l == src) {
            return i;
        }
        if let Some(i) = locals.iter().position(|l| {
            l.ip().is_unspecified() && l.port() == src.port() && l.is_ipv4() == src.is_ipv4()
        }) {
            return i;
        }
    }
    locals
        .iter()
        .position(|l| l.is_ipv4() == t.dst.is_ipv4())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_step_is_contained_and_counted() {
        let cfg = crate::config::Config::parse(
            "[server]\ndomain = \"d.test\"\nlisten = [\"127.0.0.1:0\"]\n",
            std::path::Path::new("t.toml"),
            std::path::Path::new("."),
        )
        .unwrap();
        let shared = Arc::new(Shared::new(
            cfg.engine_config(),
            Default::default(),
            [7; 32],
        ));
        let mut engine = Engine::new(shared, 1);
        let stats = DataplaneStats::new(1);
        let src: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        guarded(&mut engine, &stats, src, |_| panic!("injected"));
        assert_eq!(stats.engine_panics.load(Ordering::Relaxed), 1);
        // The engine still works afterwards.
        let local: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        guarded(&mut engine, &stats, src, |e| {
            e.handle_classified(
                now_millis(),
                src,
                local,
                None,
                b"OPTIONS sip:d.test SIP/2.0\r\n\r\n",
            )
        });
        assert_eq!(stats.engine_panics.load(Ordering::Relaxed), 1);
        assert_eq!(
            engine
                .stats()
                .get(turnstile_core::stats::Counter::RxDatagrams),
            1
        );
    }

    #[test]
    fn picks_socket_by_source_then_family() {
        let locals: Vec<SocketAddr> = vec![
            "127.0.0.1:5060".parse().unwrap(),
            "[::1]:5060".parse().unwrap(),
            "127.0.0.2:5060".parse().unwrap(),
        ];
        let t = |dst: &str, src: Option<&str>| Transmit {
            dst: dst.parse().unwrap(),
            src: src.map(|s| s.parse().unwrap()),
            payload: vec![],
        };
        assert_eq!(
            pick_socket(&locals, &t("127.0.0.9:1", Some("127.0.0.2:5060"))),
            2
        );
        assert_eq!(pick_socket(&locals, &t("[::1]:1", None)), 1);
        let wild: Vec<SocketAddr> = vec![
            "127.0.0.1:5070".parse().unwrap(),
            "0.0.0.0:5060".parse().unwrap(),
        ];
        assert_eq!(
            pick_socket(&wild, &t("192.0.2.1:1", Some("192.0.2.9:5060"))),
            1
        );
        assert_eq!(pick_socket(&locals, &t("127.0.0.9:1", None)), 0);
        assert_eq!(
            pick_socket(&locals, &t("127.0.0.9:1", Some("10.0.0.1:5060"))),
            0
        );
    }
}
