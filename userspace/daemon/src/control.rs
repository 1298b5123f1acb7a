//! The control plane: one thread running a tokio current-thread runtime that
//! - waits for SIGINT / SIGTERM (or a worker failure) and then returns, so `run` can stop the
//!   workers and write the final snapshot;
//! - calls `shared.handle_timeout(now)` every second (binding expiry);
//! - writes the periodic registration snapshot;
//! - serves the control socket (`<state_dir>/turnstile.sock`): JSON lines, one request
//!   `{"cmd": "stats" | "groups" | "registrations" | "ping", "aor": ...}` per line, one
//!   response `{"ok": true, ...}` or `{"ok": false, "error": "..."}` per line.
//!
//! Counters are merged on read: each worker is the only writer of its own counters.

use crate::config::Config;
use crate::persist;
use crate::worker::{now_millis, DataplaneStats};
use crate::xdp::{CounterSnapshot, Verdict, XdpDataplane};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Write};
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
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub engine_stats: Vec<Arc<WorkerStats>>,
    pub dataplane_stats: Vec<Arc<DataplaneStats>>,
    pub mode: &'static str,
    pub started: Instant,
    /// XDP mode: the loaded program (its per-CPU verdict counters are merged on read).
    pub xdp: Option<parking_lot::Mutex<XdpDataplane>>,
}

fn sum(v: &[Arc<DataplaneStats>], f: impl Fn(&DataplaneStats) -> u64) -> u64 {
    v.iter().map(|s| f(s)).sum()
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl ControlState {
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
                "kernel_drops": sum(dp, |s| s.kernel_drops.iter().map(load).sum::<u64>() + load(&s.kernel_drops_unsteered)),
            },
            "registrations": {
                "aors": self.shared.registrar().aor_count(),
                "bindings": self.shared.registrar().binding_count(),
            },
        })
    }

    pub fn groups_json(&self) -> Value {
        let xdp = self.xdp_counters();
        let groups: Vec<Value> = self
            .config
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let id = i as u16;
                let gc = |c: GroupCounter| -> u64 { self.engine_stats.iter().map(|w| w.get_group(id, c)).sum() };
                let drops: u64 = self.dataplane_stats.iter().map(|s| s.queue_drops.get(i).map_or(0, load)).sum();
                let kdrops: u64 = self.dataplane_stats.iter().map(|s| s.kernel_drops.get(i).map_or(0, load)).sum();
                json!({
                    "name": g.group.name,
                    "type": match g.group.kind { GroupKind::User => "user", GroupKind::Server => "server" },
                    "auth": match g.group.auth { AuthMode::Local => "local", AuthMode::None => "none", AuthMode::Upstream => "upstream" },
                    "sources": g.group.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "serving": g.group.serving,
                    "weight": g.group.weight,
                    "queue_depth": g.queue_depth,
                    "counters": {
                        "rx": gc(GroupCounter::Rx),
                        "register_ok": gc(GroupCounter::RegisterOk),
                        "register_failed": gc(GroupCounter::RegisterFailed),
                        "queue_drops": drops,
                        "kernel_drops": kdrops,
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
        let n = self.config.groups.len();
        let unclassified_drops: u64 = self
            .dataplane_stats
            .iter()
            .map(|s| s.queue_drops.get(n).map_or(0, load))
            .sum();
        json!({
            "groups": groups,
            "unclassified": {
                "policy": match self.config.unclassified { Unclassified::Drop => "drop", Unclassified::Reject => "reject" },
                "queue_drops": unclassified_drops,
            },
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
        let path = state.config.control_socket();
        let listener = match bind_control(&path) {
            Ok(l) => l,
            Err(e) => return ready(Err(e)),
        };
        let metrics = match state.config.metrics_listen {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => return ready(Err(anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))),
            },
            None => None,
        };
        ready(Ok(()));

        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let snapshot_every = state.config.snapshot_interval;
        let mut last_snapshot = Instant::now();
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received, shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT received, shutting down"); break; }
                // SIGHUP would kill the process by default (a `reload` or a closed terminal
                // taking the edge down without its snapshot); until reload exists, say so.
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP received: configuration reload is not supported yet; restart to apply changes (state is kept across restarts)");
                }
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let expired = state.shared.handle_timeout(now_millis());
                    if expired > 0 {
                        tracing::debug!(expired, "bindings expired");
                    }
                    if let Some(every) = snapshot_every {
                        if last_snapshot.elapsed() >= every {
                            last_snapshot = Instant::now();
                            if let Err(e) = persist::save(&state.shared, &state.config.snapshot_path(), now_millis()) {
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
