//! `cargo xtask …`: setup checks, run, test (incl. privileged netns tests), bench, fuzz.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

mod bench;
mod bench_xdp;
mod fuzz;

#[derive(Parser)]
#[command(name = "xtask", about = "Turnstile developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install (as root) or check everything a fresh machine needs: apt packages, rust-src, bpf-linker.
    Setup {
        /// Only check and report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run the daemon on the embedded default config (etc/turnstile.toml).
    Run {
        #[arg(long, default_value = "etc/turnstile.toml")]
        config: PathBuf,
    },
    /// The whole test suite: unit, end-to-end (real UDP, sipp), privileged XDP tests in netns.
    Test {
        /// Extra arguments passed to `cargo test` after `--`.
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
    /// Storm benchmarks side by side with Kamailio (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Fuzz one target for a bounded time (cargo-fuzz, nightly).
    Fuzz {
        #[arg(default_value = "frame")]
        target: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// What a fresh machine lacks, each with the command that fixes it.
fn missing_tools() -> Vec<String> {
    let mut missing = Vec::new();
    let have = |c: &str, arg: &str| {
        Command::new(c)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    match Command::new("bpf-linker").arg("--version").output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("0.10.4") => {}
        _ => missing.push("bpf-linker 0.10.4: cargo install bpf-linker@0.10.4 --locked".into()),
    }
    let src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if !src {
        missing.push("nightly rust-src: rustup component add rust-src --toolchain nightly".into());
    }
    if !have("sipp", "-v") && !Path::new("/usr/bin/sipp").exists() {
        missing.push("sipp: apt-get install sip-tester".into());
    }
    if !Path::new("/usr/sbin/kamailio").exists() {
        missing.push("kamailio: apt-get install kamailio".into());
    }
    missing
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = root();
    match cli.cmd {
        Cmd::Setup { check } => {
            if !check {
                run(Command::new("bash").arg(root.join("scripts/setup.sh")))?;
            }
            let missing = missing_tools();
            if missing.is_empty() {
                println!("setup: everything present");
            } else {
                for m in &missing {
                    eprintln!("missing: {m}");
                }
                bail!("run `bash scripts/setup.sh` (as root) to install what is missing");
            }
        }
        Cmd::Run { config } => {
            run(Command::new("cargo")
                .current_dir(&root)
                .args([
                    "run",
                    "--release",
                    "-p",
                    "turnstile",
                    "--",
                    "run",
                    "--config",
                ])
                .arg(config))?;
        }
        Cmd::Test { rest } => {
            let missing = missing_tools();
            if !missing.is_empty() {
                for m in &missing {
                    eprintln!("missing: {m}");
                }
                bail!("the test suite needs these; run `bash scripts/setup.sh` first");
            }
            run(Command::new("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--", "--check"]))
            .context("code is not rustfmt-formatted: run `cargo fmt --all`")?;
            // Debug profile: the suite's cost is compile time on 2 cores; nothing in it is
            // timed (timings live in `cargo xtask bench`).
            let mut cmd = Command::new("cargo");
            cmd.current_dir(&root).args(["test", "--workspace"]);
            // Where the privileged tests can run (root) or must run (CI), a skip is a
            // failure; elsewhere they skip loudly.
            if unsafe_is_root() || std::env::var_os("CI").is_some() {
                cmd.env("TURNSTILE_REQUIRE_PRIVILEGED", "1");
            }
            if !rest.is_empty() {
                cmd.arg("--").args(rest);
            }
            run(&mut cmd)?;
        }
        Cmd::Bench(args) => bench::run_bench(&root, args)?,
        Cmd::Fuzz { target, seconds } => fuzz::fuzz(&root, &target, seconds)?,
    }
    Ok(())
}

fn unsafe_is_root() -> bool {
    // `id -u` keeps xtask free of libc.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
