//! `turnstile run`: start-up, serving, clean shutdown.
//!
//! Order matters: bind the data-plane sockets first (a busy port fails fast, before anything
//! is written), restore the snapshot, start the control plane (signals hooked, control socket
//! up), then the workers. Shutdown reverses it: control plane returns on a signal, workers are
//! stopped and joined, and only then is the final snapshot written, so it holds every update.

use crate::config::{Config, DataplaneMode};
use crate::control::{self, ControlState};
use crate::persist;
use crate::socket;
use crate::worker::{self, now_millis, DataplaneStats, WorkerSetup};
use anyhow::Context;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use turnstile_core::engine::Shared;

/// Beyond this many classes (groups + unclassified), no per-class sockets: the fd count
/// (classes × workers × listen addresses) would get silly.
const MAX_STEERED_CLASSES: usize = 64;

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

/// Starts the XDP data plane. Single entry point to wire the loader in `crate::xdp` into.
// TODO(xdp): call the loader in `crate::xdp` (attach to `config.dataplane.interface` in
// `config.dataplane.xdp_mode`, fill the LPM tries from `shared.config.groups`, open the AF_XDP
// sockets per queue and class) and feed each worker's class rings into the same
// `fair::FairQueues` the socket workers use.
fn start_xdp(_config: &Config, _shared: &Arc<Shared>) -> anyhow::Result<()> {
    anyhow::bail!(
        "xdp data plane not available in this build yet; use [dataplane] mode = \"socket\""
    )
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

    if config.dataplane.mode == DataplaneMode::Xdp {
        start_xdp(&config, &shared)?;
    }

    control::ensure_not_running(&config.control_socket())?;
    let workers = worker_count(config.workers);
    // Fair-queue classes: the groups in config order, then unclassified traffic (weight 1).
    let mut classes: Vec<(u32, usize)> = config
        .groups
        .iter()
        .map(|g| (g.group.weight, g.queue_depth))
        .collect();
    classes.push((1, config.dataplane.queue_depth));
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

    // Fair-queue classes: the groups in config order, then unclassified traffic (weight 1).
    let mut classes: Vec<(u32, usize)> = config
        .groups
        .iter()
        .map(|g| (g.group.weight, g.queue_depth))
        .collect();
    classes.push((1, config.dataplane.queue_depth));

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
        };
        let (h, es) = worker::spawn(setup).context("cannot start worker thread")?;
        handles.push(h);
        engine_stats.push(es);
        dataplane_stats.push(stats);
    }

    let state = Arc::new(ControlState {
        config: config.clone(),
        shared: shared.clone(),
        engine_stats,
        dataplane_stats,
        mode: "socket",
        started: Instant::now(),
    });
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
        mode = "socket",
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
