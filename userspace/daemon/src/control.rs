//! The control plane: one thread running a tokio current-thread runtime that
//! - waits for SIGINT / SIGTERM (or a worker failure) and then returns, so `run` can stop the
//!   workers and write the final snapshot;
//! - calls `shared.handle_timeout(now)` every second (binding expiry);
//! - writes the periodic registration snapshot;
//! - turns the workers' auth-failure events into deny-list entries (every 100 ms) and lifts
//!   them when their period ends ([`crate::deny`]);
//! - reloads the configuration on SIGHUP ([`ControlState::reload`], [`reload_plan`]);
//! - serves the control socket (`<state_dir>/turnstile.sock`): JSON lines, one request
//!   `{"cmd": "stats" | "groups" | "registrations" | "ping", "aor": ...}` per line, one
//!   response `{"ok": true, ...}` or `{"ok": false, "error": "..."}` per line.
//!
//! Counters are merged on read: each worker is the only writer of its own counters.

use crate::config::Config;
use crate::deny::{DenyTracker, Live, LiveCell};
use crate::persist;
use crate::worker::{now_millis, DataplaneStats};
use crate::xdp::{CounterSnapshot, Verdict, XdpDataplane};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnstile_core::engine::Shared;
use turnstile_core::group::{AuthMode, GroupKind, Unclassified};
use turnstile_core::registrar::BindingRef;
use turnstile_core::stats::{Counter, GroupCounter, WorkerStats};

/// What the control plane can see of a running instance.
pub struct ControlState {
    /// The configuration in effect (replaced by a successful reload).
    pub config: parking_lot::RwLock<Arc<Config>>,
    pub shared: Arc<Shared>,
    pub engine_stats: Vec<Arc<WorkerStats>>,
    pub dataplane_stats: Vec<Arc<DataplaneStats>>,
    pub mode: &'static str,
    pub started: Instant,
    /// XDP mode: the loaded program (its per-CPU verdict counters are merged on read).
    pub xdp: Option<parking_lot::Mutex<XdpDataplane>>,
    /// Deny set and fair-queue parameters published to the workers.
    pub live: Arc<LiveCell>,
    /// Auth failures reported by the workers.
    pub events: crossbeam_channel::Receiver<IpAddr>,
    pub deny: parking_lot::Mutex<DenyTracker>,
}

fn sum(v: &[Arc<DataplaneStats>], f: impl Fn(&DataplaneStats) -> u64) -> u64 {
    v.iter().map(|s| f(s)).sum()
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Most denied sources listed by `show stats` (the count is always exact).
pub const MAX_DENIED_LISTED: usize = 1000;
/// Auth-failure events handled per control-loop turn (the channel is bounded anyway).
const EVENTS_PER_TURN: usize = 65_536;

/// Fair-queue classes of `config`: its groups in order, then unclassified (weight 1).
pub fn fair_classes(config: &Config) -> Vec<(u32, usize)> {
    let mut classes: Vec<(u32, usize)> = config
        .groups
        .iter()
        .map(|g| (g.group.weight, g.queue_depth))
        .collect();
    classes.push((1, config.dataplane.queue_depth));
    classes
}

impl ControlState {
    /// The configuration in effect.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// Monotonic ms since start: the deny tracker's clock.
    fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Publishes the current deny set and fair-queue parameters to the workers.
    fn publish_live(&self) {
        let deny = self.deny.lock().denied().map(|(a, _)| a).collect();
        let classes = fair_classes(&self.config());
        self.live.publish(Live { deny, classes });
    }

    /// Turns queued auth failures into deny decisions (XDP deny map + worker deny set).
    /// Returns how many sources were newly denied.
    pub fn process_auth_failures(&self) -> usize {
        let now = self.mono_ms();
        let mut newly = Vec::new();
        {
            let mut t = self.deny.lock();
            for src in self.events.try_iter().take(EVENTS_PER_TURN) {
                if let Some(until) = t.record(src, now) {
                    newly.push((src, until));
                }
            }
        }
        if newly.is_empty() {
            return 0;
        }
        let policy = self.deny.lock().policy();
        for (src, until) in &newly {
            tracing::warn!(
                %src,
                failures = policy.after,
                window_s = policy.window_ms / 1000,
                deny_s = (until - now) / 1000,
                "repeated auth failures: source denied"
            );
            if let Some(dp) = &self.xdp {
                let d = Duration::from_millis(until - now);
                if let Err(e) = dp.lock().deny(*src, Some(d)) {
                    tracing::error!(%src, error = %e, "cannot write the XDP deny map; the workers still drop this source");
                }
            }
        }
        self.publish_live();
        newly.len()
    }

    /// Lifts deny periods that ended (once a second).
    fn expire_denies(&self) {
        let lifted = self.deny.lock().expire(self.mono_ms());
        if let Some(dp) = &self.xdp {
            let mut dp = dp.lock();
            for a in &lifted {
                let _ = dp.allow(*a);
            }
            if let Err(e) = dp.expire_denies() {
                tracing::debug!(error = %e, "expiring XDP deny entries failed");
            }
        }
        if !lifted.is_empty() {
            for a in &lifted {
                tracing::info!(src = %a, "deny period over: source allowed again");
            }
            self.publish_live();
        }
    }

    /// SIGHUP: re-reads the config file (and the users file). An invalid config is logged
    /// and the running one kept. Of a valid one, what the data plane can change live is
    /// applied (fair-queue weights and depths, XDP per-source rates, deny settings, snapshot
    /// interval); everything the engine holds (groups' prefixes and modes, users, registrar,
    /// routes) or the process was built with (listen, workers, data-plane mode) is logged as
    /// "restart required" and stays as it was. Returns (applied, restart-required) names.
    pub fn reload(&self) -> (Vec<String>, Vec<String>) {
        let old = self.config();
        let new = match Config::load(&old.path) {
            Ok(c) => c,
            Err(d) => {
                for p in &d.0 {
                    tracing::error!("reload rejected: {p}");
                }
                tracing::error!(
                    problems = d.0.len(),
                    "configuration reload rejected; the running configuration is kept"
                );
                return (Vec::new(), Vec::new());
            }
        };
        let (eff, applied, restart) = reload_plan(&old, &new);

        if let Some(dp) = &self.xdp {
            if applied.iter().any(|a| a.ends_with("source_rate_pps")) {
                let res = crate::run::xdp_prefixes(&eff)
                    .and_then(|p| dp.lock().update_groups(&p).map_err(anyhow::Error::from));
                if let Err(e) = res {
                    tracing::error!(error = %e, "cannot update the XDP group maps; configuration reload rejected");
                    return (Vec::new(), Vec::new());
                }
            }
        }
        if eff.deny != old.deny {
            let lifted = self.deny.lock().set_policy(eff.deny);
            if let Some(dp) = &self.xdp {
                let mut dp = dp.lock();
                for a in &lifted {
                    let _ = dp.allow(*a);
                }
            }
        }
        *self.config.write() = Arc::new(eff);
        self.publish_live();
        for r in &restart {
            tracing::warn!("reload: restart required for {r} (change not applied)");
        }
        tracing::info!(
            applied = %if applied.is_empty() { "nothing".to_string() } else { applied.join(", ") },
            restart_required = restart.len(),
            "configuration reloaded"
        );
        (applied, restart)
    }

    fn deny_json(&self) -> Value {
        let now = self.mono_ms();
        let t = self.deny.lock();
        let p = t.policy();
        let mut sources: Vec<(IpAddr, u64)> = t.denied().collect();
        sources.sort_unstable();
        let listed: Vec<Value> = sources
            .iter()
            .take(MAX_DENIED_LISTED)
            .map(|(a, until)| json!({"source": a.to_string(), "remaining_s": until.saturating_sub(now).div_ceil(1000)}))
            .collect();
        let dp = &self.dataplane_stats;
        json!({
            "enabled": p.enabled(),
            "deny_after": p.after,
            "deny_window": p.window_ms / 1000,
            "deny_seconds": p.deny_ms / 1000,
            "denied_now": t.denied_count(),
            "denials_total": t.denials_total,
            "tracked_sources": t.tracked_count(),
            "untracked_failures": t.untracked,
            "drops": sum(dp, |s| s.deny_drops.iter().map(load).sum::<u64>()),
            "events_dropped": sum(dp, |s| load(&s.events_dropped)),
            "sources": listed,
        })
    }

    fn xdp_counters(&self) -> Option<CounterSnapshot> {
        let dp = self.xdp.as_ref()?;
        match dp.lock().read_counters() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read XDP counters");
                None
            }
        }
    }

    pub fn stats_json(&self) -> Value {
        let mut counters = Map::new();
        for &c in Counter::ALL {
            counters.insert(
                c.label().into(),
                json!(turnstile_core::stats::merged(&self.engine_stats, c)),
            );
        }
        let dp = &self.dataplane_stats;
        let queue_drops: u64 = dp.iter().flat_map(|s| s.queue_drops.iter()).map(load).sum();
        let xdp = self.xdp_counters().map(|c| {
            Verdict::ALL
                .iter()
                .map(|&v| (v.name().to_string(), json!(c.get(v))))
                .collect::<Map<String, Value>>()
        });
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "xdp": xdp,
            "mode": self.mode,
            "workers": dp.len(),
            "engine": counters,
            "dataplane": {
                "rx_datagrams": sum(dp, |s| load(&s.rx_datagrams)),
                "rx_truncated": sum(dp, |s| load(&s.rx_truncated)),
                "rx_errors": sum(dp, |s| load(&s.rx_errors)),
                "tx_datagrams": sum(dp, |s| load(&s.tx_datagrams)),
                "tx_errors": sum(dp, |s| load(&s.tx_errors)),
                "queue_drops": queue_drops,
                "queued": sum(dp, |s| load(&s.queued)),
                "engine_panics": sum(dp, |s| load(&s.engine_panics)),
                "xsk_rx": sum(dp, |s| load(&s.xsk_rx)),
                "xsk_tx": sum(dp, |s| load(&s.xsk_tx)),
                "xsk_drops": sum(dp, |s| s.xsk_drops.iter().map(load).sum::<u64>()),
                "xsk_fill_ring_empty": sum(dp, |s| load(&s.xsk_fill_ring_empty)),
                "kernel_drops": sum(dp, |s| s.kernel_drops.iter().map(load).sum::<u64>() + load(&s.kernel_drops_unsteered)),
            },
            "registrations": {
                "aors": self.shared.registrar().aor_count(),
                "bindings": self.shared.registrar().binding_count(),
            },
            "deny": self.deny_json(),
        })
    }

    pub fn groups_json(&self) -> Value {
        let xdp = self.xdp_counters();
        let config = self.config();
        let groups: Vec<Value> = config
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let id = i as u16;
                let gc = |c: GroupCounter| -> u64 { self.engine_stats.iter().map(|w| w.get_group(id, c)).sum() };
                let drops: u64 = self.dataplane_stats.iter().map(|s| s.queue_drops.get(i).map_or(0, load)).sum();
                let kdrops: u64 = self.dataplane_stats.iter().map(|s| s.kernel_drops.get(i).map_or(0, load)).sum();
                let denied: u64 = self.dataplane_stats.iter().map(|s| s.deny_drops.get(i).map_or(0, load)).sum();
                let xsk_drops: u64 = self.dataplane_stats.iter().map(|s| s.xsk_drops.get(i).map_or(0, load)).sum();
                json!({
                    "name": g.group.name,
                    "type": match g.group.kind { GroupKind::User => "user", GroupKind::Server => "server" },
                    "auth": match g.group.auth { AuthMode::Local => "local", AuthMode::None => "none", AuthMode::Upstream => "upstream" },
                    "sources": g.group.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "serving": g.group.serving,
                    "weight": g.group.weight,
                    "queue_depth": g.queue_depth,
                    "source_rate_pps": g.source_rate.map(|r| r.0),
                    "source_burst": g.source_rate.map(|r| r.1),
                    "counters": {
                        "rx": gc(GroupCounter::Rx),
                        "register_ok": gc(GroupCounter::RegisterOk),
                        "register_failed": gc(GroupCounter::RegisterFailed),
                        "queue_drops": drops,
                        "kernel_drops": kdrops,
                        "deny_drops": denied,
                        "xsk_drops": xsk_drops,
                    },
                    "xdp": xdp.as_ref().map(|c| json!({
                        "redirect": c.group(id, Verdict::Redirect),
                        "drop_rate": c.group(id, Verdict::DropRate),
                        "drop_group": c.group(id, Verdict::DropGroup),
                        "drop_denied": c.group(id, Verdict::DropDenied),
                        "redirect_failed": c.group(id, Verdict::RedirectFailedPass) + c.group(id, Verdict::RedirectFailedDrop),
                    })),
                })
            })
            .collect();
        let n = config.groups.len();
        let unclassified_drops: u64 = self
            .dataplane_stats
            .iter()
            .map(|s| s.queue_drops.get(n).map_or(0, load))
            .sum();
        json!({
            "groups": groups,
            "unclassified": {
                "policy": match config.unclassified { Unclassified::Drop => "drop", Unclassified::Reject => "reject" },
                "queue_drops": unclassified_drops,
            },
            "deny": self.deny_json(),
        })
    }

    /// Prometheus text exposition (format 0.0.4) of the same numbers as `show stats` and
    /// `show groups`.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let stats = self.stats_json();
        let groups = self.groups_json();
        let mut out = String::with_capacity(8192);
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let rows = |v: &Value, label: &str| -> Vec<(String, u64)> {
            v.as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((format!("{{{label}=\"{}\"}}", esc(k)), v.as_u64()?)))
                .collect()
        };
        family(
            "turnstile_uptime_seconds",
            "gauge",
            "Seconds since start.",
            vec![(String::new(), stats["uptime_s"].as_u64().unwrap_or(0))],
        );
        family(
            "turnstile_registrations",
            "gauge",
            "Stored AORs and bindings.",
            rows(&stats["registrations"], "kind"),
        );
        family(
            "turnstile_engine_total",
            "counter",
            "Engine counters, merged over workers.",
            rows(&stats["engine"], "counter"),
        );
        let mut dp = rows(&stats["dataplane"], "counter");
        let queued = dp.iter().position(|(l, _)| l.contains("\"queued\""));
        let queued = queued.map(|i| dp.remove(i).1).unwrap_or(0);
        family(
            "turnstile_dataplane_total",
            "counter",
            "Data-plane counters, merged over workers.",
            dp,
        );
        family(
            "turnstile_queued",
            "gauge",
            "Datagrams waiting in the fair queues.",
            vec![(String::new(), queued)],
        );
        if !stats["xdp"].is_null() {
            family(
                "turnstile_xdp_total",
                "counter",
                "XDP program verdicts, merged over CPUs.",
                rows(&stats["xdp"], "verdict"),
            );
        }
        let mut deny = rows(&stats["deny"], "counter");
        deny.retain(|(l, _)| {
            [
                "denied_now",
                "denials_total",
                "drops",
                "events_dropped",
                "untracked_failures",
            ]
            .iter()
            .any(|k| l.contains(&format!("\"{k}\"")))
        });
        family(
            "turnstile_deny",
            "gauge",
            "Deny list after repeated auth failures: sources denied now, decisions and drops since start.",
            deny,
        );
        let mut per_group = Vec::new();
        for g in groups["groups"].as_array().into_iter().flatten() {
            let name = esc(g["name"].as_str().unwrap_or("?"));
            for (k, v) in g["counters"].as_object().into_iter().flatten() {
                per_group.push((
                    format!("{{group=\"{name}\",counter=\"{}\"}}", esc(k)),
                    v.as_u64().unwrap_or(0),
                ));
            }
        }
        per_group.push((
            "{group=\"\",counter=\"queue_drops\"}".to_string(),
            groups["unclassified"]["queue_drops"].as_u64().unwrap_or(0),
        ));
        family(
            "turnstile_group_total",
            "counter",
            "Per IP Group counters (group=\"\" is unclassified traffic).",
            per_group,
        );
        out
    }

    /// Bindings alive now, of one AOR or of all (at most [`MAX_LISTED`], then `truncated`).
    pub fn registrations_json(&self, aor: Option<&str>) -> Value {
        let now = now_millis();
        let groups = self.shared.config.groups.groups();
        let mut list = Vec::new();
        let mut total = 0usize;
        let mut visit = |b: &BindingRef<'_>| {
            total += 1;
            if list.len() < MAX_LISTED {
                list.push(json!({
                    "aor": b.aor,
                    "contact": b.uri,
                    "expires_in": b.expires_in(now),
                    "q": b.q.map(|q| q as f64 / 1000.0),
                    "source": b.source.to_string(),
                    "transport": b.transport.as_str(),
                    "group": groups.get(b.group as usize).map(|g| g.name.as_str()),
                    "call_id": b.call_id,
                    "cseq": b.cseq,
                    "instance": b.instance,
                    "reg_id": b.reg_id,
                    "path": b.path().collect::<Vec<_>>(),
                }));
            }
        };
        match aor {
            Some(a) => {
                let aor = canonical_aor_arg(a, &self.shared.config.domain);
                self.shared.registrar().lookup_with(&aor, now, &mut visit);
            }
            None => self.shared.registrar().for_each_binding(now, &mut visit),
        }
        json!({"bindings": list, "total": total, "truncated": total > MAX_LISTED})
    }

    pub fn handle_request(&self, line: &str) -> Value {
        let req: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut resp = match req.get("cmd").and_then(Value::as_str) {
            Some("ping") => json!({"pid": std::process::id()}),
            Some("stats") => self.stats_json(),
            Some("groups") => self.groups_json(),
            Some("registrations") => {
                self.registrations_json(req.get("aor").and_then(Value::as_str))
            }
            other => return json!({"ok": false, "error": format!("unknown command {other:?}")}),
        };
        resp.as_object_mut()
            .expect("object")
            .insert("ok".into(), json!(true));
        resp
    }
}

/// What a reload from `old` to `new` does: the effective config (`old` with the
/// live-changeable fields of `new`), the names of the applied changes, and the names of the
/// changes that need a restart.
pub fn reload_plan(old: &Config, new: &Config) -> (Config, Vec<String>, Vec<String>) {
    let mut eff = old.clone();
    let mut applied = Vec::new();
    let mut restart = Vec::new();
    let dbg =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut need = |cond: bool, what: &str| {
        if cond {
            restart.push(what.to_string());
        }
    };
    need(old.domain != new.domain, "[server] domain");
    need(old.listen != new.listen, "[server] listen");
    need(old.workers != new.workers, "[server] workers");
    need(old.state_dir != new.state_dir, "[server] state_dir");
    need(
        old.unclassified != new.unclassified,
        "[server] unclassified",
    );
    need(
        old.metrics_listen != new.metrics_listen,
        "[server] metrics_listen",
    );
    need(old.log_format != new.log_format, "[server] log_format");
    need(
        old.dataplane.mode != new.dataplane.mode
            || old.dataplane.interface != new.dataplane.interface
            || old.dataplane.xdp_mode != new.dataplane.xdp_mode
            || old.dataplane.steering != new.dataplane.steering,
        "[dataplane] mode/interface/xdp_mode/steering",
    );
    need(dbg(&old.registrar, &new.registrar), "[registrar]");
    match (&old.auth, &new.auth) {
        (Some(a), Some(b)) => {
            need(
                a.algorithms != b.algorithms
                    || a.nonce_ttl != b.nonce_ttl
                    || a.realm != b.realm
                    || a.users_file != b.users_file,
                "[auth] algorithms/nonce_ttl/realm/users_file",
            );
            need(
                dbg(&a.users, &b.users),
                "the users file (users are loaded at start)",
            );
        }
        (None, None) => {}
        _ => need(true, "[auth] (added or removed)"),
    }
    need(dbg(&old.proxy_sets, &new.proxy_sets), "[[proxy_set]]");
    need(dbg(&old.routes, &new.routes), "[[route]]");
    let same_groups = old.groups.len() == new.groups.len()
        && old
            .groups
            .iter()
            .zip(&new.groups)
            .all(|(a, b)| a.group.name == b.group.name);
    if !same_groups {
        need(
            true,
            "[[ip_group]] list (groups added, removed, renamed or reordered)",
        );
    } else {
        for (i, (a, b)) in old.groups.iter().zip(&new.groups).enumerate() {
            let (ga, gb) = (&a.group, &b.group);
            let name = &ga.name;
            need(ga.sources != gb.sources, &format!("ip_group \"{name}\" sources (the engine classifies with the prefixes it started with)"));
            need(
                ga.kind != gb.kind || ga.auth != gb.auth || ga.serving != gb.serving,
                &format!("ip_group \"{name}\" type/auth/serving"),
            );
            let e = &mut eff.groups[i];
            if ga.weight != gb.weight {
                e.group.weight = gb.weight;
                applied.push(format!("ip_group \"{name}\" weight"));
            }
            if a.queue_depth != b.queue_depth {
                e.queue_depth = b.queue_depth;
                applied.push(format!("ip_group \"{name}\" queue_depth"));
            }
            if a.source_rate != b.source_rate {
                e.source_rate = b.source_rate;
                applied.push(format!("ip_group \"{name}\" source_rate_pps"));
            }
        }
    }
    if old.dataplane.queue_depth != new.dataplane.queue_depth {
        eff.dataplane.queue_depth = new.dataplane.queue_depth;
        applied.push("[dataplane] queue_depth (unclassified traffic)".into());
    }
    if old.deny != new.deny {
        eff.deny = new.deny;
        applied.push("[auth] deny_after/deny_window/deny_seconds".into());
    }
    if old.snapshot_interval != new.snapshot_interval {
        eff.snapshot_interval = new.snapshot_interval;
        applied.push("[server] snapshot_interval".into());
    }
    (eff, applied, restart)
}

/// Prometheus label value escaping.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Most bindings one `show registrations` lists (the total is always reported).
pub const MAX_LISTED: usize = 10_000;

/// The registrar's AOR key for an operator's argument: `alice`, `alice@example.test` and
/// `sip:alice@example.test` all name the same AOR (the engine keys AORs as
/// `sip:user@domain`, domain lower-cased).
pub fn canonical_aor_arg(arg: &str, domain: &str) -> String {
    let arg = arg.trim();
    let (scheme, rest) = match arg.split_once(':') {
        Some((s, r)) if s.eq_ignore_ascii_case("sip") || s.eq_ignore_ascii_case("sips") => {
            (s.to_ascii_lowercase(), r)
        }
        _ => ("sip".to_string(), arg),
    };
    let user = rest.rsplit_once('@').map(|(u, _)| u).unwrap_or(rest);
    format!("{scheme}:{user}@{}", domain.to_ascii_lowercase())
}

/// Runs the control plane on the current thread until a shutdown signal or `stop` is set.
/// `ready` is called once signals are hooked and the control socket listens.
pub fn run(
    state: Arc<ControlState>,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(anyhow::Result<()>),
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return ready(Err(e.into())),
    };
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let hooks = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        );
        let (mut term, mut int, mut hup) = match hooks {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return ready(Err(e.into())),
        };
        let path = state.config().control_socket();
        let listener = match bind_control(&path) {
            Ok(l) => l,
            Err(e) => return ready(Err(e)),
        };
        let metrics = match state.config().metrics_listen {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => return ready(Err(anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))),
            },
            None => None,
        };
        ready(Ok(()));

        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Auth failures become deny decisions within this period.
        let mut deny_tick = tokio::time::interval(Duration::from_millis(100));
        deny_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_snapshot = Instant::now();
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received, shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT received, shutting down"); break; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    state.reload();
                }
                _ = deny_tick.tick() => {
                    state.process_auth_failures();
                }
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let expired = state.shared.handle_timeout(now_millis());
                    if expired > 0 {
                        tracing::debug!(expired, "bindings expired");
                    }
                    state.expire_denies();
                    let config = state.config();
                    if let Some(every) = config.snapshot_interval {
                        if last_snapshot.elapsed() >= every {
                            last_snapshot = Instant::now();
                            if let Err(e) = persist::save(&state.shared, &config.snapshot_path(), now_millis()) {
                                tracing::error!(error = %e, "periodic snapshot failed");
                            }
                        }
                    }
                }
                conn = listener.accept() => {
                    if let Ok((stream, _)) = conn {
                        tokio::spawn(serve_conn(state.clone(), stream));
                    }
                }
                conn = async { metrics.as_ref().expect("guarded").accept().await }, if metrics.is_some() => {
                    if let Ok((stream, _)) = conn {
                        tokio::spawn(serve_metrics(state.clone(), stream));
                    }
                }
            }
        }
        drop(listener);
        let _ = std::fs::remove_file(&path);
    });
}

/// Fails if an instance is already serving `path` (a live instance answers; a stale socket
/// left by a crash does not). Checked before binding the SIP sockets too, because
/// `SO_REUSEPORT` would otherwise let a second instance silently share the port.
pub fn ensure_not_running(path: &Path) -> anyhow::Result<()> {
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another turnstile instance is running with control socket {}",
            path.display()
        );
    }
    Ok(())
}

fn bind_control(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    ensure_not_running(path)?;
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))?;
    // Registrations are personal data: only the daemon's user (and root) may ask.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Minimal HTTP/1.x for `GET /metrics` (one request per connection, bounded in size and time).
async fn serve_metrics(state: Arc<ControlState>, mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return;
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let ok = line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?");
    let (status, ctype, body) = if ok {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            state.prometheus(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "only GET /metrics here\n".to_string(),
        )
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn serve_conn(state: Arc<ControlState>, stream: tokio::net::UnixStream) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let mut out = state.handle_request(&line).to_string();
        out.push('\n');
        if w.write_all(out.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Client side (`turnstile show …`): one request, one response.
pub fn request(socket: &PathBuf, req: &Value) -> anyhow::Result<Value> {
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {}: {e} (is `turnstile run` running with this config?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = &stream;
    let mut line = req.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(&stream).read_line(&mut resp)?;
    let v: Value = serde_json::from_str(&resp)
        .map_err(|e| anyhow::anyhow!("bad response from daemon: {e}"))?;
    if v.get("ok") != Some(&json!(true)) {
        anyhow::bail!(
            "{}",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("request failed")
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        // One directory for every config of a test: paths resolve the same.
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let d = DIR.get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("users.txt"), "alice:a\n").unwrap();
            d
        });
        Config::parse(text, Path::new("t.toml"), d.path()).unwrap()
    }

    const BASE: &str = r#"[server]
domain = "d.test"
listen = ["127.0.0.1:5060"]
[auth]
users_file = "users.txt"
deny_after = 5
[[ip_group]]
name = "a"
type = "user"
sources = ["127.0.0.0/25"]
auth = "local"
weight = 2
[[ip_group]]
name = "b"
type = "user"
sources = ["127.0.0.128/25"]
auth = "none"
"#;

    #[test]
    fn reload_applies_live_settings_and_names_the_rest() {
        let old = cfg(BASE);
        let (eff, applied, restart) = reload_plan(&old, &cfg(BASE));
        assert!(
            applied.is_empty() && restart.is_empty(),
            "{applied:?} {restart:?}"
        );
        assert_eq!(format!("{:?}", eff.groups), format!("{:?}", old.groups));

        let new = cfg(&BASE
            .replace("weight = 2", "weight = 7\nqueue_depth = 33")
            .replace("deny_after = 5", "deny_after = 2\ndeny_seconds = 9")
            .replace("127.0.0.128/25", "127.0.0.192/26")
            .replace(
                "listen = [\"127.0.0.1:5060\"]",
                "listen = [\"127.0.0.1:5061\"]",
            ));
        let (eff, applied, restart) = reload_plan(&old, &new);
        assert_eq!(eff.groups[0].group.weight, 7);
        assert_eq!(eff.groups[0].queue_depth, 33);
        assert_eq!(eff.deny.after, 2);
        assert_eq!(eff.deny.deny_ms, 9_000);
        assert_eq!(fair_classes(&eff)[0], (7, 33));
        // Not applied: prefixes (the engine's table) and the listen address.
        assert_eq!(eff.groups[1].group.sources, old.groups[1].group.sources);
        assert_eq!(eff.listen, old.listen);
        assert_eq!(applied.len(), 3, "{applied:?}");
        assert!(
            restart.iter().any(|r| r.contains("\"b\" sources")),
            "{restart:?}"
        );
        assert!(restart.iter().any(|r| r.contains("listen")), "{restart:?}");
        assert_eq!(restart.len(), 2, "{restart:?}");

        // A renamed group: nothing per group is applied.
        let new = cfg(&BASE
            .replace("name = \"b\"", "name = \"c\"")
            .replace("weight = 2", "weight = 9"));
        let (eff, applied, restart) = reload_plan(&old, &new);
        assert_eq!(eff.groups[0].group.weight, 2);
        assert!(applied.is_empty(), "{applied:?}");
        assert!(restart[0].contains("[[ip_group]] list"), "{restart:?}");
    }

    #[test]
    fn label_escaping() {
        assert_eq!(esc(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(esc("x\ny"), "x\\ny");
    }

    #[test]
    fn aor_argument_forms() {
        for a in [
            "alice",
            "alice@example.test",
            "sip:alice@example.test",
            "SIP:alice@Example.Test",
            "alice@127.0.0.1",
        ] {
            assert_eq!(
                canonical_aor_arg(a, "Example.test"),
                "sip:alice@example.test",
                "{a}"
            );
        }
        assert_eq!(canonical_aor_arg("sips:bob", "d"), "sips:bob@d");
    }
}
