//! `turnstile run`: start-up, serving, clean shutdown.
//!
//! Order matters: bind the data-plane sockets first (a busy port fails fast, before anything
//! is written), restore the snapshot, start the control plane (signals hooked, control socket
//! up), then the workers. Shutdown reverses it: control plane returns on a signal, workers are
//! stopped and joined, and only then is the final snapshot written, so it holds every update.

use crate::config::XdpMode;
use crate::config::{Config, DataplaneMode};
use crate::control::{self, ControlState};
use crate::deny::{DenyTracker, Live, LiveCell};
use crate::persist;
use crate::socket;
use crate::worker::{self, now_millis, DataplaneStats, WorkerSetup};
use crate::xdp::xsk::{self, XskConfig, XskQueue};
use crate::xdp::{
    AttachMode, GroupPrefix, GroupSpec, RedirectFallback, UnclassifiedPolicy, XdpDataplane,
    XdpParams, MAX_CLASSES, MAX_GROUPS,
};
use anyhow::Context;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use turnstile_core::engine::Shared;
use turnstile_core::group::Unclassified;

/// Beyond this many classes (groups + unclassified), no per-class sockets: the fd count
/// (classes × workers × listen addresses) would get silly.
const MAX_STEERED_CLASSES: usize = 64;
/// Auth-failure events in flight from the workers to the control thread.
const EVENT_QUEUE: usize = 16_384;

/// Number of workers for `configured` (0 = one per available core).
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    core_affinity::get_core_ids()
        .map(|c| c.len())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// The XDP program's LPM entries for `config`'s groups: group id = config index, class =
/// index (the last class shared beyond `MAX_CLASSES`), per-source rate and burst.
pub fn xdp_prefixes(config: &Config) -> anyhow::Result<Vec<GroupPrefix>> {
    let n = config.groups.len().clamp(1, MAX_CLASSES as usize);
    let mut prefixes = Vec::new();
    for (i, g) in config.groups.iter().enumerate() {
        if i as u32 >= MAX_GROUPS {
            anyhow::bail!("xdp mode supports at most {MAX_GROUPS} ip_groups");
        }
        for net in &g.group.sources {
            prefixes.push(GroupPrefix {
                prefix: *net,
                group: GroupSpec {
                    group_id: i as u16,
                    class: i.min(n - 1) as u8,
                    rate_pps: g.source_rate.map_or(0, |r| r.0),
                    burst: g.source_rate.map_or(0, |r| r.1),
                    drop: false,
                },
            });
        }
    }
    Ok(prefixes)
}

/// Starts the XDP data plane: loads the program with the IP Group prefixes (LPM tries),
/// opens one AF_XDP queue (shared UMEM, one socket per class) per NIC rx queue, registers
/// them in the XSKMAP and attaches to `[dataplane] interface`. Returns the loaded program
/// (dropping it detaches) and the queues, dealt round-robin to `workers` workers, which drain
/// them through the same fair queues as their kernel sockets.
///
/// Groups map to classes in config order; groups beyond `MAX_CLASSES` share the last class
/// (their fair-queue scheduling in userspace stays per group). Unclassified sources are
/// dropped at the NIC with `unclassified = "drop"`; with `"reject"` they are passed to the
/// kernel, where the listen sockets receive them and the engine answers 403.
fn start_xdp(
    config: &Config,
    workers: usize,
) -> anyhow::Result<(XdpDataplane, Vec<Vec<XskQueue>>)> {
    let iface = config
        .dataplane
        .interface
        .as_deref()
        .context("[dataplane] interface is required for mode = \"xdp\"")?;
    let n = config.groups.len().clamp(1, MAX_CLASSES as usize);
    let prefixes = xdp_prefixes(config)?;
    let mut ports: Vec<u16> = config.listen.iter().map(|a| a.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    let params = XdpParams {
        sip_ports: ports,
        unclassified: match config.unclassified {
            Unclassified::Drop => UnclassifiedPolicy::Drop,
            Unclassified::Reject => UnclassifiedPolicy::Pass,
        },
        redirect_fallback: RedirectFallback::Pass,
        write_metadata: true,
    };
    let mut dp = XdpDataplane::open(&params, &prefixes).context("cannot load the XDP program")?;
    let queues =
        xsk::rx_queue_count(iface).with_context(|| format!("cannot read rx queues of {iface}"))?;
    let cfg = XskConfig {
        classes: n as u8,
        ..Default::default()
    };
    let mut per_worker: Vec<Vec<XskQueue>> = (0..workers).map(|_| Vec::new()).collect();
    for q in 0..queues {
        let xq = XskQueue::open(iface, q, &cfg)
            .with_context(|| format!("cannot open AF_XDP sockets on {iface} queue {q}"))?;
        xq.register(&mut dp)
            .context("cannot register AF_XDP sockets")?;
        per_worker[q as usize % workers].push(xq);
    }
    let mode = match config.dataplane.xdp_mode {
        XdpMode::Driver => AttachMode::Driver,
        XdpMode::Skb => AttachMode::Skb,
    };
    dp.attach(iface, mode)
        .with_context(|| format!("cannot attach XDP to {iface}"))?;
    tracing::info!(interface = iface, rx_queues = queues, classes = n, mode = ?mode, "xdp data plane attached");
    Ok((dp, per_worker))
}

pub fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let t0 = Instant::now();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;

    let secret = persist::nonce_secret(&config.state_dir.join("nonce.key")).with_context(|| {
        format!(
            "cannot read or create the nonce key in {}",
            config.state_dir.display()
        )
    })?;
    let users = config
        .auth
        .as_ref()
        .map(|a| a.users.clone())
        .unwrap_or_default();
    let user_count = users.len();
    let shared = Arc::new(Shared::new(config.engine_config(), users, secret));

    control::ensure_not_running(&config.control_socket())?;
    let workers = worker_count(config.workers);
    // Fair-queue classes: the groups in config order, then unclassified traffic (weight 1).
    let classes = control::fair_classes(&config);
    let live = Arc::new(LiveCell::new(Live {
        deny: Default::default(),
        classes: classes.clone(),
    }));
    // Auth failures, workers → control thread. Bounded: a flood of bad credentials costs
    // counted drops, never memory or a blocked worker.
    let (events_tx, events_rx) = crossbeam_channel::bounded(EVENT_QUEUE);
    let prefixes: Vec<(ipnet::IpNet, usize)> = config
        .groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| g.group.sources.iter().map(move |n| (*n, i)))
        .collect();
    let steering =
        (config.dataplane.steering && classes.len() <= MAX_STEERED_CLASSES && classes.len() > 1)
            .then_some((prefixes.as_slice(), classes.len()));
    let sockets = socket::bind_listen(&config.listen, workers, steering)
        .context("cannot bind listen sockets")?;
    let bound: Vec<_> = {
        let mut v: Vec<_> = sockets[0]
            .iter()
            .filter_map(|s| s.socket.local_addr().ok())
            .collect();
        v.dedup();
        v
    };
    let steered = sockets[0].iter().any(|s| s.class.is_some());
    let xdp_mode = config.dataplane.mode == DataplaneMode::Xdp;
    let (xdp, mut xsks) = if xdp_mode {
        let (dp, q) = start_xdp(&config, workers)?;
        (Some(dp), q)
    } else {
        (None, (0..workers).map(|_| Vec::new()).collect())
    };
    let mode = if xdp_mode { "xdp" } else { "socket" };

    let snap = config.snapshot_path();
    match persist::restore(&shared, &snap, now_millis()) {
        Ok(None) => {
            tracing::info!(path = %snap.display(), "no registration snapshot; starting empty")
        }
        Ok(Some(_)) => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read snapshot {}", snap.display()))
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let seed_base = now_millis().0 ^ u64::from(std::process::id()) << 32;
    let mut handles = Vec::new();
    let mut engine_stats = Vec::new();
    let mut dataplane_stats = Vec::new();
    for (index, socks) in sockets.into_iter().enumerate() {
        let stats = Arc::new(DataplaneStats::new(classes.len()));
        let setup = WorkerSetup {
            index,
            core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
            sockets: socks,
            shared: shared.clone(),
            classes: classes.clone(),
            stop: stop.clone(),
            stats: stats.clone(),
            seed: seed_base
                .wrapping_add(index as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
            xsks: std::mem::take(&mut xsks[index]),
            events: events_tx.clone(),
            live: live.clone(),
        };
        let (h, es) = worker::spawn(setup).context("cannot start worker thread")?;
        handles.push(h);
        engine_stats.push(es);
        dataplane_stats.push(stats);
    }

    drop(events_tx);
    let state = Arc::new(ControlState {
        config: parking_lot::RwLock::new(config.clone()),
        shared: shared.clone(),
        engine_stats,
        dataplane_stats,
        mode,
        started: Instant::now(),
        xdp: xdp.map(parking_lot::Mutex::new),
        live,
        events: events_rx,
        deny: parking_lot::Mutex::new(DenyTracker::new(config.deny)),
    });
    // Kept until the workers are gone: dropping the XDP program detaches it.
    let state_keep = state.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let control_stop = stop.clone();
    let control = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            control::run(state, control_stop, move |r| {
                let _ = ready_tx.send(r);
            })
        })
        .context("cannot start control thread")?;
    let ready = ready_rx
        .recv()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("control thread died during start")));
    if let Err(e) = ready {
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        let _ = control.join();
        return Err(e);
    }

    let groups: Vec<String> = config
        .groups
        .iter()
        .map(|g| {
            format!("{}({:?},w={})", g.group.name, g.group.kind, g.group.weight).to_lowercase()
        })
        .collect();
    tracing::info!(
        listen = ?bound,
        workers,
        mode,
        kernel_steering = steered,
        groups = %groups.join(","),
        domain = %config.domain,
        users = user_count,
        bindings = shared.registrar().binding_count(),
        state_dir = %config.state_dir.display(),
        control = %config.control_socket().display(),
        startup_ms = t0.elapsed().as_millis() as u64,
        "turnstile started"
    );

    // Serve until the control plane returns (signal, or `stop` set by a failing worker).
    let control_result = control.join();
    stop.store(true, Ordering::Relaxed);
    let mut worker_panics = 0;
    for h in handles {
        if h.join().is_err() {
            worker_panics += 1;
        }
    }
    // Detach XDP only now: until the workers stopped, redirected traffic had a reader.
    drop(state_keep);
    let t = Instant::now();
    let st = persist::save(&shared, &snap, now_millis())
        .with_context(|| format!("cannot write final snapshot {}", snap.display()))?;
    tracing::info!(
        path = %snap.display(),
        aors = st.aors,
        bindings = st.bindings,
        bytes = st.bytes,
        ms = t.elapsed().as_millis() as u64,
        "final snapshot written; stopped"
    );
    if control_result.is_err() {
        anyhow::bail!("control thread panicked");
    }
    if worker_panics > 0 {
        anyhow::bail!("{worker_panics} worker thread(s) panicked");
    }
    Ok(())
}
