//! `turnstile`: the command line (DESIGN.md "Contracts").
//!
//! Exit codes: 0 ok, 1 runtime error, 2 invalid config (or command line).

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use turnstile_daemon::config::{Config, Diagnostics, LogFormat};
use turnstile_daemon::{control, run};

#[derive(Parser)]
#[command(name = "turnstile", version, about = "Turnstile SIP registration edge")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve until SIGINT/SIGTERM; a clean shutdown writes the registration snapshot.
    Run {
        /// Config file (TOML). Relative paths inside resolve against its directory.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config; print every problem with file:line:col and a hint.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read live state from a running instance (through its control socket).
    Show {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        what: Show,
    },
}

#[derive(Args)]
struct Target {
    /// Config of the running instance (its state_dir holds the control socket).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Control socket path (default: <state_dir>/turnstile.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Show {
    /// Registered bindings, all or of one address-of-record.
    Registrations {
        aor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// IP Groups with prefixes, kind, auth, weight and counters.
    Groups {
        #[arg(long)]
        json: bool,
    },
    /// Counters, merged over workers.
    Stats {
        #[arg(long)]
        json: bool,
    },
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} listen address(es), {} ip_group(s), {} proxy_set(s), {} route(s))",
                    config.display(),
                    cfg.listen.len(),
                    cfg.groups.len(),
                    cfg.proxy_sets.len(),
                    cfg.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(d) => config_failed(&d),
        },
        Cmd::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(d) => return config_failed(&d),
            };
            init_logging(cfg.log_format);
            match run::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("turnstile: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Cmd::Show { target, what } => {
            let socket = match (target.socket, target.config) {
                (Some(s), _) => s,
                (None, Some(c)) => match Config::load(&c) {
                    Ok(cfg) => cfg.control_socket(),
                    Err(d) => return config_failed(&d),
                },
                (None, None) => {
                    eprintln!("turnstile: show needs --config FILE (of the running instance) or --socket PATH");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match show(&socket, what) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("turnstile: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

fn config_failed(d: &Diagnostics) -> ExitCode {
    eprintln!("{d}");
    let n = d.0.len();
    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
    ExitCode::from(EXIT_CONFIG)
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn show(socket: &PathBuf, what: Show) -> anyhow::Result<()> {
    match what {
        Show::Stats { json } => {
            let v = control::request(socket, &json!({"cmd": "stats"}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_stats(&v);
            }
        }
        Show::Groups { json } => {
            let v = control::request(socket, &json!({"cmd": "groups"}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_groups(&v);
            }
        }
        Show::Registrations { aor, json } => {
            let v = control::request(socket, &json!({"cmd": "registrations", "aor": aor}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_registrations(&v);
            }
        }
    }
    Ok(())
}

fn print_stats(v: &Value) {
    println!(
        "uptime {}s, mode {}, {} worker(s)",
        v["uptime_s"],
        v["mode"].as_str().unwrap_or("?"),
        v["workers"]
    );
    for section in ["registrations", "engine", "dataplane", "xdp", "deny"] {
        let Some(m) = v[section].as_object() else {
            continue;
        };
        println!("{section}:");
        for (k, val) in m {
            if !val.is_array() {
                println!("  {k:<28} {val}");
            }
        }
    }
    let denied = v["deny"]["sources"].as_array().cloned().unwrap_or_default();
    if !denied.is_empty() {
        println!("denied sources:");
        for d in &denied {
            println!(
                "  {:<40} {}s left",
                d["source"].as_str().unwrap_or("?"),
                d["remaining_s"]
            );
        }
    }
}

fn print_registrations(v: &Value) {
    let list = v["bindings"].as_array().cloned().unwrap_or_default();
    if !list.is_empty() {
        println!(
            "{:<32} {:>8} {:<24} {:<10} contact",
            "aor", "expires", "source", "group"
        );
    }
    for b in &list {
        println!(
            "{:<32} {:>8} {:<24} {:<10} {}",
            b["aor"].as_str().unwrap_or("?"),
            b["expires_in"].to_string(),
            b["source"].as_str().unwrap_or("?"),
            b["group"].as_str().unwrap_or("-"),
            b["contact"].as_str().unwrap_or("?")
        );
    }
    let total = v["total"].as_u64().unwrap_or(0);
    if v["truncated"] == json!(true) {
        println!("{total} binding(s), first {} shown", list.len());
    } else {
        println!("{total} binding(s)");
    }
}

fn print_groups(v: &Value) {
    println!(
        "{:<16} {:<6} {:<8} {:>6} {:>12} {:>12} {:>12} {:>12} {:>12}  sources",
        "group",
        "type",
        "auth",
        "weight",
        "rx",
        "reg_ok",
        "reg_failed",
        "queue_drops",
        "kernel_drops"
    );
    for g in v["groups"].as_array().into_iter().flatten() {
        let c = &g["counters"];
        let sources: Vec<&str> = g["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<16} {:<6} {:<8} {:>6} {:>12} {:>12} {:>12} {:>12} {:>12}  {}",
            g["name"].as_str().unwrap_or("?"),
            g["type"].as_str().unwrap_or("?"),
            g["auth"].as_str().unwrap_or("?"),
            g["weight"].to_string(),
            c["rx"].to_string(),
            c["register_ok"].to_string(),
            c["register_failed"].to_string(),
            c["queue_drops"].to_string(),
            c["kernel_drops"].to_string(),
            sources.join(", ")
        );
    }
    let u = &v["unclassified"];
    println!(
        "unclassified: policy {}, queue_drops {}",
        u["policy"].as_str().unwrap_or("?"),
        u["queue_drops"]
    );
}
