//! Configuration: the TOML contract of DESIGN.md, loaded with byte spans so that every problem
//! is reported as `file:line:col: message` followed by a `hint:` line saying how to fix it.
//!
//! Two phases:
//! 1. serde + `toml` 0.8 into `Raw*` structs whose values are `toml::Spanned`. Syntax errors,
//!    type errors and unknown keys (`deny_unknown_fields`) stop here: serde gives one error.
//! 2. Semantic validation of the raw values. It collects *all* problems, so `check-config`
//!    shows an operator everything to fix in one pass.
//!
//! Relative paths (`state_dir`, `users_file`) resolve against the config file's directory,
//! not the working directory, so a config behaves the same whoever starts the daemon.

use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use turnstile_core::auth::{Algorithm, AuthConfig, UserDb};
use turnstile_core::engine::EngineConfig;
use turnstile_core::group::{AuthMode, GroupKind, GroupTable, IpGroup, Unclassified};
use turnstile_core::registrar::RegistrarConfig;

use crate::deny::DenyPolicy;

/// Default SIP port when nothing else is said.
pub const DEFAULT_QUEUE_DEPTH: usize = 4096;
const MAX_QUEUE_DEPTH: i64 = 1_000_000;
const MAX_WEIGHT: i64 = 1000;
const MAX_WORKERS: i64 = 1024;
/// Workers index their sockets with a `u8`.
const MAX_LISTEN: usize = 64;
/// Product token for Server / User-Agent headers.
pub const SERVER_NAME: &str = concat!("Turnstile/", env!("CARGO_PKG_VERSION"));

// ---------------------------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------------------------

/// One problem in a config (or users) file, with its position and a fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (e.g. the file cannot be read).
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )?;
        }
        write!(f, "\n  hint: {}", self.hint)
    }
}

/// All problems found in a config; `Display` prints one per entry.
#[derive(Debug, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Byte offset → 1-based (line, column in characters).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut off = offset;
    while !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

struct Collector<'a> {
    file: &'a Path,
    text: &'a str,
    out: Vec<Diagnostic>,
}

impl Collector<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.out.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
            hint: hint.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) structure
// ---------------------------------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    dataplane: Option<RawDataplane>,
    #[serde(default)]
    registrar: Option<RawRegistrar>,
    #[serde(default)]
    auth: Option<S<RawAuth>>,
    #[serde(default)]
    ip_group: Vec<RawIpGroup>,
    #[serde(default)]
    proxy_set: Vec<RawProxySet>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    domain: S<String>,
    listen: S<Vec<S<String>>>,
    workers: Option<S<i64>>,
    state_dir: Option<S<String>>,
    unclassified: Option<S<String>>,
    snapshot_interval: Option<S<i64>>,
    log_format: Option<S<String>>,
    metrics_listen: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    mode: Option<S<String>>,
    interface: Option<S<String>>,
    xdp_mode: Option<S<String>>,
    queue_depth: Option<S<i64>>,
    steering: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistrar {
    min_expires: Option<S<i64>>,
    max_expires: Option<S<i64>>,
    default_expires: Option<S<i64>>,
    max_contacts_per_aor: Option<S<i64>>,
    expires_jitter_percent: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    users_file: S<String>,
    algorithms: Option<S<Vec<S<String>>>>,
    nonce_ttl: Option<S<i64>>,
    realm: Option<S<String>>,
    deny_after: Option<S<i64>>,
    deny_window: Option<S<i64>>,
    deny_seconds: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpGroup {
    name: S<String>,
    #[serde(rename = "type")]
    kind: S<String>,
    sources: S<Vec<S<String>>>,
    auth: Option<S<String>>,
    serving: Option<S<String>>,
    weight: Option<S<i64>>,
    queue_depth: Option<S<i64>>,
    source_rate_pps: Option<S<i64>>,
    source_burst: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxySet {
    name: S<String>,
    addresses: S<Vec<S<String>>>,
    keepalive_interval: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    source: S<String>,
    methods: Option<S<Vec<S<String>>>>,
    user: Option<S<String>>,
    host: Option<S<String>>,
    to: S<RawTarget>,
    #[serde(default)]
    alternatives: Vec<S<RawTarget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    proxy_set: Option<S<String>>,
    group: Option<S<String>>,
    address: Option<S<String>>,
    local: Option<S<bool>>,
}

// ---------------------------------------------------------------------------------------------
// Validated config
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataplaneMode {
    Socket,
    Xdp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Driver,
    Skb,
}

#[derive(Clone, Debug)]
pub struct Dataplane {
    pub mode: DataplaneMode,
    pub interface: Option<String>,
    pub xdp_mode: XdpMode,
    /// Default bounded queue depth per IP Group (datagrams, per worker).
    pub queue_depth: usize,
    /// Socket mode: one kernel socket per (group, worker), steered by a reuseport BPF
    /// program, so a flood overflows its own group's receive buffer only.
    pub steering: bool,
}

#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Absolute (resolved against the config file's directory).
    pub users_file: PathBuf,
    pub algorithms: Vec<Algorithm>,
    pub nonce_ttl: u32,
    pub realm: String,
    /// The users file, parsed (plain passwords already hashed into HA1s).
    pub users: UserDb,
}

/// An IP Group as the daemon needs it: the engine's view plus data-plane settings.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    pub group: IpGroup,
    /// Bounded queue depth of this group's fair queue, per worker.
    pub queue_depth: usize,
    /// XDP mode: per-source token bucket at the NIC (packets/s, burst); `None` = unlimited.
    pub source_rate: Option<(u32, u32)>,
}

#[derive(Clone, Debug)]
pub struct ProxySet {
    pub name: String,
    pub addresses: Vec<SocketAddr>,
    /// OPTIONS keep-alive period; `None` = off.
    pub keepalive_interval: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    ProxySet(String),
    /// The registered users of a user group.
    Group(String),
    Address(SocketAddr),
    /// Answer locally (survivability).
    Local,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub source: String,
    /// Empty = any method.
    pub methods: Vec<String>,
    pub user: Option<String>,
    pub host: Option<String>,
    pub to: RouteTarget,
    pub alternatives: Vec<RouteTarget>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub domain: String,
    pub listen: Vec<SocketAddr>,
    /// 0 = one per available core (resolved by the daemon at start).
    pub workers: usize,
    pub state_dir: PathBuf,
    pub unclassified: Unclassified,
    /// Periodic registration snapshot; `None` = only at shutdown.
    pub snapshot_interval: Option<Duration>,
    pub log_format: LogFormat,
    /// Prometheus text exposition over HTTP (`GET /metrics`); `None` = off.
    pub metrics_listen: Option<SocketAddr>,
    pub dataplane: Dataplane,
    pub registrar: RegistrarConfig,
    pub auth: Option<AuthSettings>,
    /// `[auth] deny_after / deny_window / deny_seconds`; disabled without `[auth]`.
    pub deny: DenyPolicy,
    pub groups: Vec<GroupSettings>,
    pub proxy_sets: Vec<ProxySet>,
    pub routes: Vec<Route>,
}

impl Config {
    /// Reads and validates `path`. `Err` holds every problem found.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("cannot read config file: {e}"),
                hint: "pass an existing, readable file with --config FILE".into(),
            }])
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Config::parse(&text, path, &base)
    }

    /// Validates `text` as if read from `file`; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<Config, Diagnostics> {
        let mut c = Collector {
            file,
            text,
            out: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let (message, hint) = explain_toml_error(e.message());
                c.at(span, message, hint);
                return Err(Diagnostics(c.out));
            }
        };
        let cfg = validate(&mut c, raw, base_dir);
        if c.out.is_empty() {
            Ok(cfg.expect("validation without problems yields a config"))
        } else {
            Err(Diagnostics(c.out))
        }
    }

    /// The part of the config the sans-IO engine sees.
    pub fn engine_config(&self) -> EngineConfig {
        let mut aliases = Vec::new();
        for a in &self.listen {
            if a.ip().is_unspecified() {
                continue;
            }
            let s = a.ip().to_string();
            if !aliases.contains(&s) {
                aliases.push(s);
            }
            if let IpAddr::V6(v6) = a.ip() {
                let b = format!("[{v6}]");
                if !aliases.contains(&b) {
                    aliases.push(b);
                }
            }
        }
        EngineConfig {
            domain: self.domain.clone(),
            aliases,
            registrar: self.registrar.clone(),
            auth: self.auth.as_ref().map(|a| AuthConfig {
                realm: a.realm.clone(),
                algorithms: a.algorithms.clone(),
                nonce_ttl: a.nonce_ttl,
            }),
            groups: GroupTable::new(self.groups.iter().map(|g| g.group.clone()).collect()),
            unclassified: self.unclassified,
            server_name: SERVER_NAME.to_string(),
        }
    }

    /// Path of the control socket of the instance running with this config.
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("turnstile.sock")
    }

    /// Path of the registration snapshot.
    pub fn snapshot_path(&self) -> PathBuf {
        self.state_dir.join("registrations.bin")
    }
}

/// Turns serde/toml messages into (message, hint).
fn explain_toml_error(msg: &str) -> (String, String) {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        if let Some((field, expected)) = rest.split_once(", expected ") {
            let expected = expected.trim_start_matches("one of ");
            return (
                format!("unknown key {field}"),
                format!("valid keys here are {expected}; check the spelling"),
            );
        }
        if let Some((field, _)) = rest.split_once(", there are no fields") {
            return (
                format!("unknown key {field}"),
                "this table takes no keys; remove it".into(),
            );
        }
        return (
            format!("unknown key {rest}"),
            "remove the key or check its spelling".into(),
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return (
            format!("missing required key {rest}"),
            format!("add {rest} to this table (etc/turnstile.toml has a complete example)"),
        );
    }
    if msg.starts_with("invalid type") {
        return (
            msg.to_string(),
            "use the type shown in DESIGN.md: strings in quotes, numbers bare, lists in [ ]".into(),
        );
    }
    if msg.starts_with("duplicate key") {
        return (
            msg.to_string(),
            "each key may appear once per table; remove one".into(),
        );
    }
    (
        format!("invalid TOML: {msg}"),
        "fix the TOML syntax: strings need quotes, tables are [name], lists of tables [[name]]"
            .into(),
    )
}

fn one_of<T: Copy>(
    c: &mut Collector,
    v: &S<String>,
    what: &str,
    options: &[(&str, T)],
) -> Option<T> {
    if let Some((_, t)) = options.iter().find(|(n, _)| *n == v.get_ref().as_str()) {
        return Some(*t);
    }
    let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    c.at(
        v.span(),
        format!("invalid {what} \"{}\"", v.get_ref()),
        format!("use one of {}", names.join(", ")),
    );
    None
}

fn ranged(c: &mut Collector, v: &S<i64>, what: &str, min: i64, max: i64) -> Option<i64> {
    let n = *v.get_ref();
    if n < min || n > max {
        c.at(
            v.span(),
            format!("{what} = {n} is out of range"),
            format!("use a value from {min} to {max}"),
        );
        None
    } else {
        Some(n)
    }
}

fn parse_socket_addr(c: &mut Collector, v: &S<String>, what: &str) -> Option<SocketAddr> {
    match v.get_ref().trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.at(
                v.span(),
                format!(
                    "{what} \"{}\" is not an IP address with a port",
                    v.get_ref()
                ),
                "write e.g. \"127.0.0.1:5060\" or \"[::1]:5060\" (host names are not resolved)",
            );
            None
        }
    }
}

fn parse_prefix(c: &mut Collector, v: &S<String>) -> Option<IpNet> {
    let s = v.get_ref().trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        // A plain address is a host route.
        return Some(IpNet::from(ip));
    }
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            c.at(
                v.span(),
                format!("prefix \"{s}\" has host bits set"),
                format!("did you mean \"{}\"?", net.trunc()),
            );
            None
        }
        Err(_) => {
            c.at(
                v.span(),
                format!("\"{s}\" is not an IP prefix"),
                "write an address or a prefix, e.g. \"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"",
            );
            None
        }
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn validate(c: &mut Collector, raw: RawConfig, base: &Path) -> Option<Config> {
    // ----- [server]
    let s = &raw.server;
    let domain = s.domain.get_ref().trim().to_string();
    if domain.is_empty() {
        c.at(
            s.domain.span(),
            "domain is empty",
            "set the SIP domain served, e.g. domain = \"example.test\"",
        );
    } else if domain.contains(|ch: char| ch.is_whitespace() || ch == '@' || ch == '/') {
        c.at(
            s.domain.span(),
            format!("domain \"{domain}\" is not a host name"),
            "use a bare host name such as \"example.test\" (no user part, scheme or path)",
        );
    }
    let mut listen = Vec::new();
    if s.listen.get_ref().is_empty() {
        c.at(
            s.listen.span(),
            "listen is empty",
            "add at least one address, e.g. listen = [\"127.0.0.1:5060\"]",
        );
    }
    if s.listen.get_ref().len() > MAX_LISTEN {
        c.at(
            s.listen.span(),
            format!("{} listen addresses; at most {MAX_LISTEN} are supported", s.listen.get_ref().len()),
            "listen on a wildcard address (\"0.0.0.0:5060\", \"[::]:5060\") instead of many single ones",
        );
    }
    for l in s.listen.get_ref() {
        if let Some(a) = parse_socket_addr(c, l, "listen address") {
            if listen.contains(&a) {
                c.at(
                    l.span(),
                    format!("listen address {a} appears twice"),
                    "remove the duplicate",
                );
            } else {
                listen.push(a);
            }
        }
    }
    let workers = s
        .workers
        .as_ref()
        .and_then(|w| ranged(c, w, "workers", 0, MAX_WORKERS))
        .unwrap_or(0) as usize;
    let state_dir = match &s.state_dir {
        Some(d) if d.get_ref().trim().is_empty() => {
            c.at(
                d.span(),
                "state_dir is empty",
                "name a directory, e.g. state_dir = \"var\"",
            );
            PathBuf::new()
        }
        Some(d) => {
            let p = resolve(base, d.get_ref());
            if p.exists() && !p.is_dir() {
                c.at(
                    d.span(),
                    format!("state_dir {} exists and is not a directory", p.display()),
                    "point state_dir at a directory (it is created if missing); relative paths resolve against the config file's directory",
                );
            }
            p
        }
        None => resolve(base, "var"),
    };
    let unclassified = s
        .unclassified
        .as_ref()
        .and_then(|u| {
            one_of(
                c,
                u,
                "unclassified",
                &[
                    ("reject", Unclassified::Reject),
                    ("drop", Unclassified::Drop),
                ],
            )
        })
        .unwrap_or(Unclassified::Reject);
    let snapshot_interval = match &s.snapshot_interval {
        Some(v) => ranged(c, v, "snapshot_interval", 0, 86_400)
            .and_then(|n| (n > 0).then(|| Duration::from_secs(n as u64))),
        None => Some(Duration::from_secs(30)),
    };
    let log_format = s
        .log_format
        .as_ref()
        .and_then(|v| {
            one_of(
                c,
                v,
                "log_format",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )
        })
        .unwrap_or(LogFormat::Text);
    let metrics_listen = s
        .metrics_listen
        .as_ref()
        .and_then(|v| parse_socket_addr(c, v, "metrics_listen"));

    // ----- [dataplane]
    let mut dataplane = Dataplane {
        mode: DataplaneMode::Socket,
        interface: None,
        xdp_mode: XdpMode::Driver,
        queue_depth: DEFAULT_QUEUE_DEPTH,
        steering: true,
    };
    if let Some(d) = &raw.dataplane {
        if let Some(m) = &d.mode {
            dataplane.mode = one_of(
                c,
                m,
                "dataplane mode",
                &[
                    ("socket", DataplaneMode::Socket),
                    ("xdp", DataplaneMode::Xdp),
                ],
            )
            .unwrap_or(DataplaneMode::Socket);
        }
        if let Some(m) = &d.xdp_mode {
            dataplane.xdp_mode = one_of(
                c,
                m,
                "xdp_mode",
                &[("driver", XdpMode::Driver), ("skb", XdpMode::Skb)],
            )
            .unwrap_or(XdpMode::Driver);
        }
        if let Some(i) = &d.interface {
            let name = i.get_ref().trim();
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                c.at(
                    i.span(),
                    format!("\"{name}\" is not a network interface name"),
                    "use the interface name shown by `ip link`, e.g. \"eth0\" (at most 15 characters)",
                );
            } else {
                dataplane.interface = Some(name.to_string());
            }
        }
        if let Some(q) = &d.queue_depth {
            dataplane.queue_depth =
                ranged(c, q, "queue_depth", 1, MAX_QUEUE_DEPTH).unwrap_or(1) as usize;
        }
        if let Some(v) = &d.steering {
            dataplane.steering = *v.get_ref();
        }
        if dataplane.mode == DataplaneMode::Xdp && d.interface.is_none() {
            let span = d.mode.as_ref().map(|m| m.span()).unwrap_or(0..0);
            c.at(
                span,
                "mode = \"xdp\" needs an interface",
                "add interface = \"eth0\" (the NIC to attach to) under [dataplane]",
            );
        }
    }

    // ----- [registrar]
    let mut registrar = RegistrarConfig::default();
    if let Some(r) = &raw.registrar {
        let max = u32::MAX as i64;
        let min_e = r
            .min_expires
            .as_ref()
            .and_then(|v| ranged(c, v, "min_expires", 1, max));
        let max_e = r
            .max_expires
            .as_ref()
            .and_then(|v| ranged(c, v, "max_expires", 1, max));
        let def_e = r
            .default_expires
            .as_ref()
            .and_then(|v| ranged(c, v, "default_expires", 1, max));
        if let Some(v) = min_e {
            registrar.min_expires = v as u32;
        }
        if let Some(v) = max_e {
            registrar.max_expires = v as u32;
        }
        if let Some(v) = def_e {
            registrar.default_expires = v as u32;
        }
        let hint = "require 0 < min_expires <= default_expires <= max_expires";
        let span_of = |o: &Option<S<i64>>| o.as_ref().map(|v| v.span());
        if registrar.min_expires > registrar.default_expires {
            let span = span_of(&r.min_expires)
                .or(span_of(&r.default_expires))
                .unwrap_or(0..0);
            c.at(
                span,
                format!(
                    "min_expires ({}) is greater than default_expires ({})",
                    registrar.min_expires, registrar.default_expires
                ),
                hint,
            );
        }
        if registrar.default_expires > registrar.max_expires {
            let span = span_of(&r.default_expires)
                .or(span_of(&r.max_expires))
                .unwrap_or(0..0);
            c.at(
                span,
                format!(
                    "default_expires ({}) is greater than max_expires ({})",
                    registrar.default_expires, registrar.max_expires
                ),
                hint,
            );
        }
        if let Some(v) = &r.max_contacts_per_aor {
            registrar.max_contacts_per_aor =
                ranged(c, v, "max_contacts_per_aor", 1, 10_000).unwrap_or(1) as usize;
        }
        if let Some(v) = &r.expires_jitter_percent {
            registrar.expires_jitter_percent =
                ranged(c, v, "expires_jitter_percent", 0, 50).unwrap_or(0) as u8;
        }
    }

    // ----- [auth]
    let auth = raw.auth.as_ref().map(|a| {
        let a = a.get_ref();
        let mut algorithms = Vec::new();
        match &a.algorithms {
            None => algorithms = vec![Algorithm::Sha256, Algorithm::Md5],
            Some(list) => {
                if list.get_ref().is_empty() {
                    c.at(list.span(), "algorithms is empty", "offer at least one: algorithms = [\"SHA-256\", \"MD5\"]");
                }
                for v in list.get_ref() {
                    let alg = match v.get_ref().as_str() {
                        "SHA-256" => Some(Algorithm::Sha256),
                        "MD5" => Some(Algorithm::Md5),
                        other if other.ends_with("-sess") => {
                            c.at(
                                v.span(),
                                format!("digest algorithm \"{other}\" is not supported"),
                                "session variants (-sess) are not used for SIP; use \"SHA-256\" and/or \"MD5\"",
                            );
                            None
                        }
                        other => {
                            let upper = other.to_ascii_uppercase();
                            let hint = if upper == "SHA-256" || upper == "MD5" || upper == "SHA256" {
                                format!("algorithm names are case-sensitive: write \"{}\"", if upper == "MD5" { "MD5" } else { "SHA-256" })
                            } else {
                                "use \"SHA-256\" and/or \"MD5\" (RFC 8760)".to_string()
                            };
                            c.at(v.span(), format!("unknown digest algorithm \"{other}\""), hint);
                            None
                        }
                    };
                    if let Some(alg) = alg {
                        if algorithms.contains(&alg) {
                            c.at(v.span(), format!("algorithm \"{}\" listed twice", v.get_ref()), "remove the duplicate");
                        } else {
                            algorithms.push(alg);
                        }
                    }
                }
            }
        }
        let nonce_ttl = a
            .nonce_ttl
            .as_ref()
            .and_then(|v| ranged(c, v, "nonce_ttl", 1, 86_400))
            .unwrap_or(300) as u32;
        let realm = match &a.realm {
            Some(r) if r.get_ref().trim().is_empty() => {
                c.at(r.span(), "realm is empty", "remove realm to use the domain, or set a non-empty realm");
                String::new()
            }
            Some(r) => r.get_ref().clone(),
            None => domain.clone(),
        };
        let users_file = resolve(base, a.users_file.get_ref());
        let users = if a.users_file.get_ref().trim().is_empty() {
            c.at(a.users_file.span(), "users_file is empty", "name the users file, e.g. users_file = \"users.txt\"");
            UserDb::new()
        } else {
            load_users_file(c, &a.users_file, &users_file, &realm)
        };
        AuthSettings { users_file, algorithms, nonce_ttl, realm, users }
    });
    let deny = raw.auth.as_ref().map_or(DenyPolicy::DISABLED, |a| {
        let a = a.get_ref();
        let d = DenyPolicy::default();
        let after = a
            .deny_after
            .as_ref()
            .and_then(|v| ranged(c, v, "deny_after", 0, 1_000_000))
            .map_or(d.after, |v| v as u32);
        let window = a
            .deny_window
            .as_ref()
            .and_then(|v| ranged(c, v, "deny_window", 1, 86_400))
            .map_or(d.window_ms, |v| v as u64 * 1000);
        let seconds = a
            .deny_seconds
            .as_ref()
            .and_then(|v| ranged(c, v, "deny_seconds", 1, 30 * 86_400))
            .map_or(d.deny_ms, |v| v as u64 * 1000);
        DenyPolicy {
            after,
            window_ms: window,
            deny_ms: seconds,
        }
    });

    // ----- [[proxy_set]]
    let mut proxy_sets = Vec::new();
    let mut proxy_names = HashSet::new();
    for p in &raw.proxy_set {
        let name = p.name.get_ref().trim().to_string();
        if name.is_empty() {
            c.at(
                p.name.span(),
                "proxy_set name is empty",
                "give every proxy set a unique name",
            );
        } else if !proxy_names.insert(name.clone()) {
            c.at(
                p.name.span(),
                format!("proxy_set \"{name}\" is defined twice"),
                "proxy set names must be unique; rename or merge them",
            );
        }
        if p.addresses.get_ref().is_empty() {
            c.at(
                p.addresses.span(),
                format!("proxy_set \"{name}\" has no addresses"),
                "add at least one, e.g. addresses = [\"127.0.0.1:5070\"]",
            );
        }
        let addresses = p
            .addresses
            .get_ref()
            .iter()
            .filter_map(|a| parse_socket_addr(c, a, "proxy address"))
            .collect();
        let keepalive_interval = match &p.keepalive_interval {
            Some(v) => ranged(c, v, "keepalive_interval", 0, 3600)
                .and_then(|n| (n > 0).then(|| Duration::from_secs(n as u64))),
            None => Some(Duration::from_secs(10)),
        };
        proxy_sets.push(ProxySet {
            name,
            addresses,
            keepalive_interval,
        });
    }

    // ----- [[ip_group]]
    let mut groups = Vec::new();
    let mut group_names: HashMap<String, GroupKind> = HashMap::new();
    let mut prefixes: HashMap<IpNet, String> = HashMap::new();
    if raw.ip_group.len() > turnstile_core::group::GroupId::MAX as usize {
        c.at(
            raw.ip_group[0].name.span(),
            "too many ip_group entries",
            "use at most 65535 groups",
        );
    }
    for g in &raw.ip_group {
        let name = g.name.get_ref().trim().to_string();
        let kind = one_of(
            c,
            &g.kind,
            "ip_group type",
            &[("user", GroupKind::User), ("server", GroupKind::Server)],
        );
        if name.is_empty() {
            c.at(
                g.name.span(),
                "ip_group name is empty",
                "give every ip_group a unique name",
            );
        } else if group_names.contains_key(&name) {
            c.at(
                g.name.span(),
                format!("ip_group \"{name}\" is defined twice"),
                "ip_group names must be unique; rename or merge them",
            );
        } else {
            group_names.insert(name.clone(), kind.unwrap_or(GroupKind::User));
        }
        if g.sources.get_ref().is_empty() {
            c.at(
                g.sources.span(),
                format!("ip_group \"{name}\" has no sources"),
                "add the prefixes its peers send from, e.g. sources = [\"10.0.0.0/8\"]",
            );
        }
        let mut sources = Vec::new();
        for src in g.sources.get_ref() {
            if let Some(net) = parse_prefix(c, src) {
                match prefixes.get(&net) {
                    Some(other) if *other == name => {
                        c.at(
                            src.span(),
                            format!("prefix {net} is listed twice in ip_group \"{name}\""),
                            "remove the duplicate",
                        );
                    }
                    Some(other) => {
                        c.at(
                            src.span(),
                            format!("prefix {net} is already in ip_group \"{other}\""),
                            "a prefix may belong to one group only; longer prefixes may carve out part of a shorter one",
                        );
                    }
                    None => {
                        prefixes.insert(net, name.clone());
                        sources.push(net);
                    }
                }
            }
        }
        let auth_mode = match &g.auth {
            Some(a) => one_of(
                c,
                a,
                "auth mode",
                &[
                    ("local", AuthMode::Local),
                    ("none", AuthMode::None),
                    ("upstream", AuthMode::Upstream),
                ],
            )
            .unwrap_or(AuthMode::None),
            None => AuthMode::None,
        };
        if auth_mode == AuthMode::Local && raw.auth.is_none() {
            c.at(
                g.auth.as_ref().expect("local comes from the file").span(),
                format!("ip_group \"{name}\" uses auth = \"local\" but there is no [auth] section"),
                "add [auth] with users_file = \"users.txt\", or use auth = \"none\"",
            );
        }
        let serving = g.serving.as_ref().and_then(|sv| {
            let sname = sv.get_ref().trim().to_string();
            if kind == Some(GroupKind::Server) {
                c.at(sv.span(), format!("server group \"{name}\" has serving"), "only user groups have a serving proxy set; remove serving");
                None
            } else if !proxy_names.contains(&sname) {
                let known: Vec<_> = proxy_sets.iter().map(|p| format!("\"{}\"", p.name)).collect();
                let hint = if known.is_empty() {
                    "define it with [[proxy_set]] name = \"...\", or remove serving to be the registrar".to_string()
                } else {
                    format!("known proxy sets: {}; or remove serving to be the registrar", known.join(", "))
                };
                c.at(sv.span(), format!("serving = \"{sname}\" names no proxy_set"), hint);
                None
            } else {
                Some(sname)
            }
        });
        if auth_mode == AuthMode::Upstream && g.serving.is_none() && kind == Some(GroupKind::User) {
            c.at(
                g.auth.as_ref().expect("upstream comes from the file").span(),
                format!("ip_group \"{name}\" uses auth = \"upstream\" but has no serving proxy set"),
                "set serving = \"<proxy_set>\" so challenges can come from upstream, or use auth = \"local\"",
            );
        }
        let weight = g
            .weight
            .as_ref()
            .and_then(|w| ranged(c, w, "weight", 1, MAX_WEIGHT))
            .unwrap_or(1) as u32;
        let queue_depth = g
            .queue_depth
            .as_ref()
            .and_then(|q| ranged(c, q, "queue_depth", 1, MAX_QUEUE_DEPTH))
            .map(|q| q as usize)
            .unwrap_or(dataplane.queue_depth);
        let rate = g
            .source_rate_pps
            .as_ref()
            .and_then(|v| ranged(c, v, "source_rate_pps", 1, 1 << 24));
        let burst = g
            .source_burst
            .as_ref()
            .and_then(|v| ranged(c, v, "source_burst", 1, 1 << 24));
        if let (None, Some(b)) = (&g.source_rate_pps, &g.source_burst) {
            c.at(
                b.span(),
                "source_burst without source_rate_pps",
                "set source_rate_pps (packets per second per source) too, or remove source_burst",
            );
        }
        if let (Some(v), DataplaneMode::Socket) = (&g.source_rate_pps, dataplane.mode) {
            c.at(
                v.span(),
                "source_rate_pps is enforced by the XDP program only",
                "use [dataplane] mode = \"xdp\", or remove source_rate_pps (socket mode isolates groups with fair queues)",
            );
        }
        let source_rate = rate.map(|r| (r as u32, burst.unwrap_or(r) as u32));
        groups.push(GroupSettings {
            group: IpGroup {
                name,
                kind: kind.unwrap_or(GroupKind::User),
                sources,
                auth: auth_mode,
                serving,
                weight,
            },
            queue_depth,
            source_rate,
        });
    }

    // ----- [[route]]
    let mut routes = Vec::new();
    for r in &raw.route {
        let source = r.source.get_ref().trim().to_string();
        if !group_names.contains_key(&source) {
            let known: Vec<_> = groups
                .iter()
                .map(|g| format!("\"{}\"", g.group.name))
                .collect();
            c.at(
                r.source.span(),
                format!("route source \"{source}\" names no ip_group"),
                if known.is_empty() {
                    "define the group with [[ip_group]] first".to_string()
                } else {
                    format!("known groups: {}", known.join(", "))
                },
            );
        }
        let mut methods = Vec::new();
        if let Some(ms) = &r.methods {
            if ms.get_ref().is_empty() {
                c.at(
                    ms.span(),
                    "methods is empty",
                    "remove methods to match any method, or list some, e.g. [\"REGISTER\"]",
                );
            }
            for m in ms.get_ref() {
                let s = m.get_ref();
                if s.is_empty()
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
                {
                    c.at(
                        m.span(),
                        format!("\"{s}\" is not a SIP method"),
                        "write methods in upper case, e.g. \"REGISTER\", \"INVITE\"",
                    );
                } else {
                    methods.push(s.clone());
                }
            }
        }
        for (pat, what) in [(&r.user, "user"), (&r.host, "host")] {
            if let Some(p) = pat {
                if p.get_ref().is_empty() {
                    c.at(
                        p.span(),
                        format!("{what} pattern is empty"),
                        format!("remove {what} to match anything"),
                    );
                }
            }
        }
        let to = target(c, &r.to, &group_names, &proxy_names);
        let alternatives: Vec<_> = r
            .alternatives
            .iter()
            .map(|a| target(c, a, &group_names, &proxy_names))
            .collect();
        if let (Some(to), true) = (to, alternatives.iter().all(Option::is_some)) {
            routes.push(Route {
                source,
                methods,
                user: r.user.as_ref().map(|u| u.get_ref().clone()),
                host: r.host.as_ref().map(|h| h.get_ref().clone()),
                to,
                alternatives: alternatives.into_iter().flatten().collect(),
            });
        }
    }

    if !c.out.is_empty() {
        return None;
    }
    Some(Config {
        path: c.file.to_path_buf(),
        domain,
        listen,
        workers,
        state_dir,
        unclassified,
        snapshot_interval,
        log_format,
        metrics_listen,
        dataplane,
        registrar,
        auth,
        deny,
        groups,
        proxy_sets,
        routes,
    })
}

fn target(
    c: &mut Collector,
    t: &S<RawTarget>,
    groups: &HashMap<String, GroupKind>,
    proxies: &HashSet<String>,
) -> Option<RouteTarget> {
    let r = t.get_ref();
    let set = [
        r.proxy_set.is_some(),
        r.group.is_some(),
        r.address.is_some(),
        r.local.is_some(),
    ];
    if set.iter().filter(|b| **b).count() != 1 {
        c.at(
            t.span(),
            "a route target needs exactly one of proxy_set, group, address, local",
            "write e.g. { proxy_set = \"core\" }, { group = \"phones\" }, { address = \"127.0.0.1:5070\" } or { local = true }",
        );
        return None;
    }
    if let Some(p) = &r.proxy_set {
        if !proxies.contains(p.get_ref()) {
            c.at(
                p.span(),
                format!("proxy_set \"{}\" is not defined", p.get_ref()),
                "define it with [[proxy_set]] or fix the name",
            );
            return None;
        }
        return Some(RouteTarget::ProxySet(p.get_ref().clone()));
    }
    if let Some(g) = &r.group {
        return match groups.get(g.get_ref()) {
            Some(GroupKind::User) => Some(RouteTarget::Group(g.get_ref().clone())),
            Some(GroupKind::Server) => {
                c.at(
                    g.span(),
                    format!("group \"{}\" is a server group", g.get_ref()),
                    "route to a server group through its proxy set: { proxy_set = \"...\" }",
                );
                None
            }
            None => {
                c.at(
                    g.span(),
                    format!("ip_group \"{}\" is not defined", g.get_ref()),
                    "define it with [[ip_group]] or fix the name",
                );
                None
            }
        };
    }
    if let Some(a) = &r.address {
        return parse_socket_addr(c, a, "route address").map(RouteTarget::Address);
    }
    let l = r.local.as_ref().expect("exactly one target is set");
    if !*l.get_ref() {
        c.at(
            l.span(),
            "local = false is not a target",
            "write { local = true } or remove this target",
        );
        return None;
    }
    Some(RouteTarget::Local)
}

/// Loads the users file through the core's parser; its problems carry the users file's own
/// file:line. `at` is the `users_file` value, blamed when the file cannot be read.
fn load_users_file(c: &mut Collector, at: &S<String>, path: &Path, realm: &str) -> UserDb {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            c.at(
                at.span(),
                format!("cannot read users_file {}: {e}", path.display()),
                "relative paths are resolved against the config file's directory; create the file or fix the path",
            );
            return UserDb::new();
        }
    };
    match users_file_db(&text, path, realm) {
        Ok(db) => db,
        Err(d) => {
            c.out.push(d);
            UserDb::new()
        }
    }
}

/// Parses a users file (`user:password` or `user:md5:<HA1>:sha256:<HA1>`, `#` comments) into a
/// [`UserDb`]; an error is a [`Diagnostic`] at the offending line of `path`.
pub fn users_file_db(text: &str, path: &Path, realm: &str) -> Result<UserDb, Diagnostic> {
    UserDb::parse(text, realm).map_err(|e| Diagnostic {
        file: path.to_path_buf(),
        line: e.line,
        col: 1,
        message: e.hint,
        hint: "one user per line: `user:password` or `user:md5:<32 hex>:sha256:<64 hex>` \
               where HA1 = H(user:realm:password); `#` starts a comment"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const GOOD: &str = r#"
[server]
domain = "example.test"
listen = ["127.0.0.1:5060", "[::1]:5060"]
workers = 2
state_dir = "var"

[dataplane]
mode = "socket"

[registrar]
min_expires = 60
max_expires = 7200
default_expires = 3600
max_contacts_per_aor = 10

[auth]
users_file = "users.txt"
algorithms = ["SHA-256", "MD5"]
nonce_ttl = 300

[[ip_group]]
name = "phones"
type = "user"
sources = ["127.0.0.0/8", "::1"]
auth = "local"
serving = "core"
weight = 3

[[ip_group]]
name = "core-servers"
type = "server"
sources = ["127.0.0.5"]
auth = "none"

[[proxy_set]]
name = "core"
addresses = ["127.0.0.1:5070"]
keepalive_interval = 10

[[route]]
source = "phones"
methods = ["REGISTER"]
to = { proxy_set = "core" }
alternatives = [{ local = true }]
"#;

    fn dir_with_users() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(d.path().join("users.txt")).unwrap();
        writeln!(f, "# demo\nalice:alice-secret\nbob:bob-secret").unwrap();
        d
    }

    fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
        let d = dir_with_users();
        Config::parse(text, Path::new("t.toml"), d.path()).map_err(|e| e.0)
    }

    /// Applies a textual edit to GOOD and returns the (single expected) problems.
    fn problems(from: &str, to: &str) -> Vec<Diagnostic> {
        assert!(GOOD.contains(from), "test edit {from:?} does not apply");
        let text = GOOD.replacen(from, to, 1);
        match parse(&text) {
            Ok(_) => panic!("expected a problem after replacing {from:?} by {to:?}"),
            Err(e) => e,
        }
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn good_config_parses_and_converts() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.listen.len(), 2);
        assert_eq!(cfg.workers, 2);
        assert_eq!(cfg.groups.len(), 2);
        assert_eq!(cfg.groups[0].group.weight, 3);
        assert_eq!(
            cfg.groups[0].group.sources[1],
            "::1/128".parse::<IpNet>().unwrap()
        );
        assert_eq!(cfg.groups[0].queue_depth, DEFAULT_QUEUE_DEPTH);
        assert_eq!(cfg.unclassified, Unclassified::Reject);
        assert_eq!(cfg.routes[0].to, RouteTarget::ProxySet("core".into()));
        assert_eq!(cfg.routes[0].alternatives, vec![RouteTarget::Local]);
        assert!(cfg.state_dir.ends_with("var"));
        let ec = cfg.engine_config();
        assert_eq!(ec.groups.classify("127.0.0.5".parse().unwrap()), Some(1));
        assert_eq!(ec.groups.classify("127.9.0.5".parse().unwrap()), Some(0));
        assert_eq!(ec.auth.as_ref().unwrap().realm, "example.test");
        assert_eq!(
            ec.auth.unwrap().algorithms,
            vec![Algorithm::Sha256, Algorithm::Md5]
        );
        assert!(ec.aliases.contains(&"127.0.0.1".to_string()));
        assert!(ec.aliases.contains(&"[::1]".to_string()));
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }

    #[test]
    fn unknown_key_has_position_and_valid_keys() {
        let text = GOOD.replacen("workers = 2", "wrokers = 2", 1);
        let e = parse(&text).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, line_of(&text, "wrokers"));
        assert!(e[0].message.contains("wrokers"), "{}", e[0].message);
        assert!(e[0].hint.contains("workers"), "{}", e[0].hint);
        let shown = e[0].to_string();
        assert!(
            shown.starts_with(&format!("t.toml:{}:1: ", e[0].line)),
            "{shown}"
        );
        assert!(shown.contains("\n  hint: "), "{shown}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = problems("domain = \"example.test\"", "domain = example.test");
        assert_eq!(e[0].line, 3);
        assert!(!e[0].hint.is_empty());
    }

    #[test]
    fn empty_domain() {
        let e = problems("domain = \"example.test\"", "domain = \"\"");
        assert!(e[0].message.contains("domain is empty"));
        assert_eq!((e[0].line, e[0].col), (3, 10));
    }

    #[test]
    fn bad_listen() {
        let e = problems("\"[::1]:5060\"", "\"localhost:5060\"");
        assert!(e[0].message.contains("localhost:5060"));
        assert!(e[0].hint.contains("[::1]:5060"));
        let e = problems(
            "listen = [\"127.0.0.1:5060\", \"[::1]:5060\"]",
            "listen = []",
        );
        assert!(e[0].message.contains("listen is empty"));
    }

    #[test]
    fn negative_workers() {
        let e = problems("workers = 2", "workers = -1");
        assert!(e[0].message.contains("workers"));
        assert!(e[0].hint.contains("0 to"));
    }

    #[test]
    fn expires_ordering() {
        let e = problems("min_expires = 60", "min_expires = 4000");
        assert_eq!(e.len(), 1);
        assert!(e[0]
            .message
            .contains("min_expires (4000) is greater than default_expires (3600)"));
        let e = problems("max_expires = 7200", "max_expires = 100");
        assert!(e[0]
            .message
            .contains("default_expires (3600) is greater than max_expires (100)"));
        let e = problems("min_expires = 60", "min_expires = 0");
        assert!(e[0].message.contains("min_expires = 0"));
    }

    #[test]
    fn max_contacts_and_jitter() {
        let e = problems("max_contacts_per_aor = 10", "max_contacts_per_aor = 0");
        assert!(e[0].message.contains("max_contacts_per_aor"));
        let e = problems(
            "max_contacts_per_aor = 10",
            "max_contacts_per_aor = 10\nexpires_jitter_percent = 51",
        );
        assert!(e[0].message.contains("expires_jitter_percent"));
        let cfg = parse(&GOOD.replacen(
            "max_contacts_per_aor = 10",
            "expires_jitter_percent = 50",
            1,
        ))
        .unwrap();
        assert_eq!(cfg.registrar.expires_jitter_percent, 50);
    }

    #[test]
    fn algorithms() {
        let e = problems("[\"SHA-256\", \"MD5\"]", "[\"SHA-256-sess\"]");
        assert!(e[0].hint.contains("-sess"));
        let e = problems("[\"SHA-256\", \"MD5\"]", "[\"sha-256\"]");
        assert!(e[0].hint.contains("case-sensitive"));
        let e = problems("[\"SHA-256\", \"MD5\"]", "[\"MD5\", \"MD5\"]");
        assert!(e[0].message.contains("twice"));
        let e = problems("[\"SHA-256\", \"MD5\"]", "[]");
        assert!(e[0].message.contains("empty"));
        let cfg = parse(&GOOD.replacen("[\"SHA-256\", \"MD5\"]", "[\"MD5\"]", 1)).unwrap();
        assert_eq!(cfg.auth.unwrap().algorithms, vec![Algorithm::Md5]);
    }

    #[test]
    fn nonce_ttl_positive() {
        let e = problems("nonce_ttl = 300", "nonce_ttl = 0");
        assert!(e[0].message.contains("nonce_ttl"));
    }

    #[test]
    fn duplicate_group_names() {
        let e = problems("name = \"core-servers\"", "name = \"phones\"");
        assert!(e[0].message.contains("defined twice"));
        assert_eq!(e[0].line, line_of(GOOD, "name = \"core-servers\""));
    }

    #[test]
    fn group_type_and_auth_values() {
        let e = problems("type = \"server\"", "type = \"trunk\"");
        assert!(e[0].hint.contains("\"user\", \"server\""));
        let e = problems("auth = \"none\"", "auth = \"digest\"");
        assert!(e[0].hint.contains("\"local\""));
    }

    #[test]
    fn bad_and_duplicate_prefixes() {
        let e = problems("\"127.0.0.0/8\", \"::1\"", "\"127.0.0.0/33\"");
        assert!(e[0].message.contains("not an IP prefix"));
        let e = problems("\"127.0.0.0/8\", \"::1\"", "\"127.0.0.1/8\"");
        assert!(e[0].hint.contains("127.0.0.0/8"));
        let e = problems("sources = [\"127.0.0.5\"]", "sources = [\"127.0.0.0/8\"]");
        assert!(e[0].message.contains("already in ip_group \"phones\""));
        // The same address written as /32 and bare is the same prefix.
        let e = problems(
            "sources = [\"127.0.0.5\"]",
            "sources = [\"127.0.0.5\", \"127.0.0.5/32\"]",
        );
        assert!(e[0].message.contains("listed twice"));
        let e = problems("sources = [\"127.0.0.5\"]", "sources = []");
        assert!(e[0].message.contains("no sources"));
    }

    #[test]
    fn local_auth_needs_auth_section_and_readable_users_file() {
        let start = GOOD.find("[auth]").unwrap();
        let end = GOOD.find("[[ip_group]]").unwrap();
        let text = format!("{}{}", &GOOD[..start], &GOOD[end..]);
        let e = parse(&text).unwrap_err();
        assert!(e[0].message.contains("no [auth] section"), "{:?}", e);
        let e = problems("users_file = \"users.txt\"", "users_file = \"nope.txt\"");
        assert!(e[0].message.contains("cannot read users_file"));
        assert!(e[0].hint.contains("config file's directory"));
    }

    #[test]
    fn users_file_errors_carry_their_own_line() {
        let e = users_file_db("# c\nalice:x\nbroken\n", Path::new("u.txt"), "r").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("u.txt:3:1: "), "{e}");
        let e = users_file_db("alice:x\nalice:y\n", Path::new("u.txt"), "r").unwrap_err();
        assert_eq!(e.line, 2);
        let md5 = "0".repeat(32);
        let sha = "a".repeat(64);
        let db = users_file_db(
            &format!("carol:md5:{md5}:sha256:{sha}\nbob:pw\n"),
            Path::new("u"),
            "r",
        )
        .unwrap();
        assert_eq!(db.len(), 2);
        // Through the config: the users file's problem is reported against the users file.
        let d = dir_with_users();
        std::fs::write(d.path().join("users.txt"), "alice:a\n\nnocolon\n").unwrap();
        let e = Config::parse(GOOD, Path::new("t.toml"), d.path())
            .unwrap_err()
            .0;
        assert_eq!(e.len(), 1);
        assert!(e[0].file.ends_with("users.txt"));
        assert_eq!(e[0].line, 3);
    }

    #[test]
    fn serving_rules() {
        let e = problems("serving = \"core\"", "serving = \"edge\"");
        assert!(e[0].message.contains("names no proxy_set"));
        assert!(e[0].hint.contains("\"core\""));
        let e = problems("auth = \"none\"", "auth = \"none\"\nserving = \"core\"");
        assert!(e[0].message.contains("server group"));
    }

    #[test]
    fn unclassified_and_log_format() {
        let cfg = parse(&GOOD.replacen(
            "workers = 2",
            "unclassified = \"drop\"\nlog_format = \"json\"",
            1,
        ))
        .unwrap();
        assert_eq!(cfg.unclassified, Unclassified::Drop);
        assert_eq!(cfg.log_format, LogFormat::Json);
        let e = problems("workers = 2", "unclassified = \"403\"");
        assert!(e[0].hint.contains("\"reject\", \"drop\""));
    }

    #[test]
    fn dataplane_values() {
        let e = problems("mode = \"socket\"", "mode = \"xdp\"");
        assert!(e[0].message.contains("needs an interface"));
        let cfg = parse(&GOOD.replacen(
            "mode = \"socket\"",
            "mode = \"xdp\"\ninterface = \"eth0\"\nxdp_mode = \"skb\"",
            1,
        ))
        .unwrap();
        assert_eq!(cfg.dataplane.mode, DataplaneMode::Xdp);
        assert_eq!(cfg.dataplane.xdp_mode, XdpMode::Skb);
        let e = problems("mode = \"socket\"", "mode = \"dpdk\"");
        assert!(e[0].hint.contains("\"xdp\""));
        let e = problems("mode = \"socket\"", "xdp_mode = \"generic\"");
        assert!(e[0].hint.contains("\"skb\""));
    }

    #[test]
    fn source_rate_needs_xdp() {
        let xdp = GOOD.replacen(
            "mode = \"socket\"",
            "mode = \"xdp\"\ninterface = \"eth0\"",
            1,
        );
        let cfg = parse(&xdp.replacen("weight = 3", "source_rate_pps = 20\nsource_burst = 40", 1))
            .unwrap();
        assert_eq!(cfg.groups[0].source_rate, Some((20, 40)));
        let cfg = parse(&xdp.replacen("weight = 3", "source_rate_pps = 20", 1)).unwrap();
        assert_eq!(
            cfg.groups[0].source_rate,
            Some((20, 20)),
            "burst defaults to one second"
        );
        let e = problems("weight = 3", "source_rate_pps = 20");
        assert!(e[0].message.contains("XDP program only"), "{e:?}");
        let e = problems("weight = 3", "source_burst = 5");
        assert!(e[0].message.contains("without source_rate_pps"), "{e:?}");
        let e = parse(&xdp.replacen("weight = 3", "source_rate_pps = 0", 1)).unwrap_err();
        assert!(
            e[0].message.contains("source_rate_pps = 0 is out of range"),
            "{e:?}"
        );
    }

    #[test]
    fn weight_and_queue_depth() {
        let e = problems("weight = 3", "weight = 0");
        assert!(e[0].message.contains("weight"));
        let cfg = parse(&GOOD.replacen("weight = 3", "queue_depth = 10", 1)).unwrap();
        assert_eq!(cfg.groups[0].queue_depth, 10);
        assert_eq!(cfg.groups[0].group.weight, 1);
        let e = problems("weight = 3", "queue_depth = 0");
        assert!(e[0].message.contains("queue_depth"));
    }

    #[test]
    fn proxy_sets_and_routes() {
        let e = problems(
            "addresses = [\"127.0.0.1:5070\"]",
            "addresses = [\"core.example:5070\"]",
        );
        assert!(e[0].message.contains("core.example:5070"));
        let e = problems("source = \"phones\"", "source = \"nobody\"");
        assert!(e[0].message.contains("names no ip_group"));
        let e = problems(
            "to = { proxy_set = \"core\" }",
            "to = { proxy_set = \"edge\" }",
        );
        assert!(e[0].message.contains("\"edge\" is not defined"));
        let e = problems(
            "to = { proxy_set = \"core\" }",
            "to = { proxy_set = \"core\", local = true }",
        );
        assert!(e[0].message.contains("exactly one"));
        assert_eq!(e[0].line, line_of(GOOD, "to = {"));
        let e = problems(
            "to = { proxy_set = \"core\" }",
            "to = { group = \"core-servers\" }",
        );
        assert!(e[0].message.contains("server group"));
        let e = problems("methods = [\"REGISTER\"]", "methods = [\"register\"]");
        assert!(e[0].hint.contains("upper case"));
        let e = problems("[{ local = true }]", "[{ local = false }]");
        assert!(e[0].message.contains("local = false"));
    }

    #[test]
    fn server_scalars() {
        let e = problems("state_dir = \"var\"", "state_dir = \"\"");
        assert!(e[0].message.contains("state_dir is empty"));
        let e = problems("state_dir = \"var\"", "state_dir = \"users.txt\"");
        assert!(e[0].message.contains("is not a directory"), "{e:?}");
        let e = problems("workers = 2", "snapshot_interval = -5");
        assert!(e[0].message.contains("snapshot_interval"));
        let cfg = parse(&GOOD.replacen("workers = 2", "snapshot_interval = 0", 1)).unwrap();
        assert_eq!(cfg.snapshot_interval, None);
        let e = problems("workers = 2", "metrics_listen = \"localhost\"");
        assert!(e[0].message.contains("metrics_listen"));
        let cfg =
            parse(&GOOD.replacen("workers = 2", "metrics_listen = \"127.0.0.1:9464\"", 1)).unwrap();
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let e = problems("workers = 2", "log_format = \"xml\"");
        assert!(e[0].hint.contains("\"json\""));
        let many: Vec<String> = (0..65)
            .map(|i| format!("\"127.0.0.1:{}\"", 6000 + i))
            .collect();
        let e = problems(
            "listen = [\"127.0.0.1:5060\", \"[::1]:5060\"]",
            &format!("listen = [{}]", many.join(",")),
        );
        assert!(e[0].message.contains("at most 64"));
        let e = problems("\"[::1]:5060\"", "\"127.0.0.1:5060\"");
        assert!(e[0].message.contains("appears twice"));
    }

    #[test]
    fn duplicate_proxy_sets_and_empty_addresses() {
        let text = GOOD.replacen(
            "[[route]]",
            "[[proxy_set]]\nname = \"core\"\naddresses = []\n\n[[route]]",
            1,
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].message.contains("\"core\" is defined twice"));
        assert!(e[1].message.contains("has no addresses"));
        let e = problems("keepalive_interval = 10", "keepalive_interval = 99999");
        assert!(e[0].message.contains("keepalive_interval"));
    }

    #[test]
    fn auth_without_local_groups_and_realm() {
        let cfg = parse(&GOOD.replacen(
            "nonce_ttl = 300",
            "nonce_ttl = 300\nrealm = \"sip.example\"",
            1,
        ))
        .unwrap();
        assert_eq!(cfg.auth.as_ref().unwrap().realm, "sip.example");
        assert_eq!(cfg.auth.as_ref().unwrap().users.len(), 2);
        assert_eq!(cfg.engine_config().auth.unwrap().realm, "sip.example");
        let e = problems("nonce_ttl = 300", "nonce_ttl = 300\nrealm = \"\"");
        assert!(e[0].message.contains("realm is empty"));
        // upstream auth needs someone upstream.
        let e = problems(
            "auth = \"local\"\nserving = \"core\"",
            "auth = \"upstream\"",
        );
        assert!(e[0].message.contains("no serving proxy set"), "{e:?}");
    }

    #[test]
    fn all_problems_are_reported_not_just_the_first() {
        let text = GOOD
            .replacen("domain = \"example.test\"", "domain = \"\"", 1)
            .replacen("nonce_ttl = 300", "nonce_ttl = 0", 1)
            .replacen("type = \"server\"", "type = \"x\"", 1);
        let e = parse(&text).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        let mut lines: Vec<_> = e.iter().map(|d| d.line).collect();
        lines.sort();
        assert_eq!(
            lines,
            vec![
                3,
                line_of(&text, "nonce_ttl"),
                line_of(&text, "type = \"x\"")
            ]
        );
    }

    #[test]
    fn deny_settings() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.deny, DenyPolicy::default());
        let cfg = parse(&GOOD.replacen(
            "nonce_ttl = 300",
            "nonce_ttl = 300\ndeny_after = 3\ndeny_window = 5\ndeny_seconds = 7",
            1,
        ))
        .unwrap();
        assert_eq!(
            cfg.deny,
            DenyPolicy {
                after: 3,
                window_ms: 5_000,
                deny_ms: 7_000
            }
        );
        let cfg =
            parse(&GOOD.replacen("nonce_ttl = 300", "nonce_ttl = 300\ndeny_after = 0", 1)).unwrap();
        assert!(!cfg.deny.enabled());
        let text = GOOD.replacen(
            "nonce_ttl = 300",
            "nonce_ttl = 300\ndeny_after = -1\ndeny_window = 0\ndeny_seconds = 99999999",
            1,
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].message.contains("deny_after = -1 is out of range"),
            "{e:?}"
        );
        assert_eq!(e[0].line, line_of(&text, "deny_after"));
        assert_eq!(e[1].line, line_of(&text, "deny_window"));
        assert!(e[2].hint.contains("from 1 to"), "{e:?}");
        // No [auth] section: nobody is challenged, so nothing to deny.
        let start = GOOD.find("[auth]").unwrap();
        let end = GOOD.find("[[ip_group]]").unwrap();
        let no_auth = format!("{}{}", &GOOD[..start], &GOOD[end..])
            .replace("auth = \"local\"", "auth = \"none\"");
        assert!(!parse(&no_auth).unwrap().deny.enabled());
    }

    #[test]
    fn minimal_config_defaults() {
        let cfg = parse("[server]\ndomain = \"d.test\"\nlisten = [\"127.0.0.1:0\"]\n").unwrap();
        assert_eq!(cfg.workers, 0);
        assert_eq!(cfg.snapshot_interval, Some(Duration::from_secs(30)));
        assert_eq!(cfg.dataplane.mode, DataplaneMode::Socket);
        assert!(cfg.auth.is_none());
        assert_eq!(cfg.registrar.default_expires, 3600);
        let e = parse("[server]\nlisten = [\"127.0.0.1:0\"]\n").unwrap_err();
        assert!(
            e[0].message.contains("missing required key `domain`"),
            "{:?}",
            e
        );
    }
}
