//! Builds the XDP program (`ebpf/xdp`, crate `turnstile-ebpf`) for `bpfel-unknown-none` with
//! `aya_build` and leaves the object at `$OUT_DIR/turnstile-xdp`, which `src/xdp/mod.rs`
//! embeds with `include_bytes_aligned!`.
//!
//! The eBPF crate needs the nightly toolchain (only for `-Z build-std=core`), its `rust-src`
//! component and `bpf-linker` 0.10.4; `bash scripts/setup.sh` installs all three. Everything
//! else in the workspace builds on stable.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (an empty object is embedded; loading the XDP data
//! plane then fails with a clear error, socket mode is unaffected).

use std::{env, fs, path::PathBuf, process::Command};

const HINT: &str =
    "run `bash scripts/setup.sh` (installs nightly rust-src and bpf-linker 0.10.4), \
or set AYA_BUILD_SKIP=1 to build without the XDP data plane";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ws = manifest_dir
        .parent()
        .and_then(|p| p.parent())
        .expect("workspace root")
        .to_path_buf();
    let ebpf_dir = ws.join("ebpf/xdp");
    let common_dir = ws.join("ebpf/common");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let object = out_dir.join("turnstile-xdp");

    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let skip = env::var("AYA_BUILD_SKIP")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if skip {
        println!("cargo:warning=AYA_BUILD_SKIP set: the XDP program is not built; XDP mode will refuse to start");
        fs::write(&object, b"").expect("write empty eBPF object");
        return;
    }

    preflight();

    let pkg = aya_build::Package {
        name: "turnstile-ebpf",
        root_dir: ebpf_dir.to_str().expect("utf-8 path"),
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly) {
        panic!("building the XDP program failed: {e:#}\nhint: {HINT}");
    }
    if !object.exists() {
        panic!(
            "aya_build finished but {} is missing\nhint: {HINT}",
            object.display()
        );
    }
}

/// Fail early with an actionable message instead of a wall of linker errors.
fn preflight() {
    let nightly_ok = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match nightly_ok {
        None => panic!("the nightly Rust toolchain is not installed\nhint: {HINT}"),
        Some(sysroot) => {
            if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
                panic!("rust-src is missing for the nightly toolchain\nhint: {HINT}");
            }
        }
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !linker_ok {
        panic!("bpf-linker is not on PATH\nhint: {HINT}");
    }
}
