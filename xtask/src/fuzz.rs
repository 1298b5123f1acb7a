//! `cargo xtask fuzz <target> [--seconds N]`: cargo-fuzz (nightly) on one target of `fuzz/`.
//!
//! Installs cargo-fuzz when missing, seeds `fuzz/corpus/<target>/` from the RFC 4475 torture
//! messages (read from `$SUT_TORTURE_DIR` or `../shared/rfc4475`; the corpus is gitignored, the
//! messages are never committed), then fuzzes for a bounded time. Crash inputs land in
//! `fuzz/artifacts/<target>/` (also gitignored).

use crate::run;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const TARGETS: &[&str] = &["frame", "uri", "digest", "engine"];

pub fn fuzz(root: &Path, target: &str, seconds: u64) -> Result<()> {
    if !TARGETS.contains(&target) {
        bail!("unknown fuzz target {target:?}; one of {TARGETS:?}");
    }
    ensure_cargo_fuzz()?;
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let n = seed(&torture_dir(root), target, &corpus)?;
    eprintln!("fuzz {target}: {n} seed inputs in {}", corpus.display());
    run(Command::new("cargo")
        .current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", "run", target])
        .arg(&corpus)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ]))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("cargo-fuzz missing: cargo install cargo-fuzz --locked");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn torture_dir(root: &Path) -> PathBuf {
    match std::env::var_os("SUT_TORTURE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => root.join("../shared/rfc4475"),
    }
}

/// Writes the seed inputs for `target` (idempotent: same names, same bytes). Returns how many.
fn seed(torture: &Path, target: &str, corpus: &Path) -> Result<usize> {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut dats: Vec<PathBuf> = match std::fs::read_dir(torture) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "dat"))
            .collect(),
        Err(e) => {
            eprintln!(
                "no torture messages at {} ({e}); seeding only built-ins",
                torture.display()
            );
            Vec::new()
        }
    };
    dats.sort();
    for p in &dats {
        let name = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        match target {
            "frame" => seeds.push((format!("rfc4475-{name}"), bytes)),
            "engine" => {
                // Selector byte: 0 = no-auth user group, 1 = digest user group.
                for sel in [0u8, 1] {
                    let mut v = vec![sel];
                    v.extend_from_slice(&bytes);
                    seeds.push((format!("rfc4475-{name}-{sel}"), v));
                }
            }
            "uri" => {
                for (i, u) in uris_in(&bytes).into_iter().enumerate() {
                    seeds.push((format!("rfc4475-{name}-{i}"), u));
                }
            }
            _ => {}
        }
    }
    if target == "digest" {
        let auth = br#"Digest username="alice", realm="example.test", nonce="AAAAAAAAAAAAAAAAAAAAAAAAAAAA", uri="sip:example.test", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001, opaque="5ccc069c403ebaf9""#;
        let mut m0 = vec![0u8];
        m0.extend_from_slice(auth);
        seeds.push(("auth-md5".into(), m0));
        seeds.push(("valid-mutate".into(), b"\x01\x00\x30XYZ".to_vec()));
        seeds.push(("valid-check".into(), b"\x02\x01".to_vec()));
        let mut m3 = vec![3u8];
        m3.extend_from_slice(br#"Digest realm="example.test", nonce="abc", opaque="x", algorithm=SHA-256-sess, qop="auth,auth-int", stale=true"#);
        seeds.push(("challenge".into(), m3));
        seeds.push((
            "users".into(),
            b"\x03alice:wonderland\nbob:md5:00112233445566778899aabbccddeeff\n# comment\n".to_vec(),
        ));
        seeds.push((
            "unknown-scheme".into(),
            b"\x00NoOneKnowsThisScheme opaque-data=here".to_vec(),
        ));
    }
    if target == "engine" {
        // Two datagrams: a REGISTER from the digest group, then the same again (retransmission).
        let reg = b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.2.0.5:5062;rport;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:alice@example.com>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@10.2.0.5:5062>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n";
        let mut v = vec![1u8];
        v.extend_from_slice(reg);
        v.extend_from_slice(b"\xff\xfe\xfd\xfc\x01");
        v.extend_from_slice(reg);
        seeds.push(("register-twice".into(), v));
    }
    for (name, bytes) in &seeds {
        let path = corpus.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(seeds.len())
}

/// The Request-URI of the start line and every `<…>`-enclosed URI of a message.
fn uris_in(msg: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let first = msg.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Some(u) = first.split(|&b| b == b' ').filter(|t| !t.is_empty()).nth(1) {
        if !first.starts_with(b"SIP/") {
            out.push(u.to_vec());
        }
    }
    let mut rest = msg;
    while let Some(open) = rest.iter().position(|&b| b == b'<') {
        let after = &rest[open + 1..];
        let Some(close) = after.iter().position(|&b| b == b'>' || b == b'\n') else {
            break;
        };
        if after[close] == b'>' && close > 0 {
            out.push(after[..close].to_vec());
        }
        rest = &after[close..];
    }
    out
}
