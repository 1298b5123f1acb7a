#!/usr/bin/env bash
# Installs everything Turnstile needs on a fresh Debian machine of the project's kind.
# Idempotent: each step checks first. Root is expected (CI runs as root); without it,
# the apt step is skipped with a message and the rest still runs.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages: real SIP peers for the tests and benchmarks, iproute2 for netns tests.
APT_PKGS=(sip-tester kamailio kamailio-extra-modules iproute2 ethtool)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The kamailio package would start a system service on port 5060; tests and benchmarks
    # start their own instances. policy-rc.d (exit 101) tells Debian's maintainer scripts
    # not to start services during this install; it is removed right after.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_created=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
    systemctl disable kamailio >/dev/null 2>&1 || true
  else
    log "not root: cannot install ${missing[*]}; tests needing them will say so"
  fi
fi

# --- Rust pieces for the eBPF build (see ../shared/TOOLCHAIN.md).
if ! rustup component list --installed --toolchain nightly 2>/dev/null | grep -q '^rust-src'; then
  log "rustup component add rust-src (nightly)"
  rustup component add rust-src --toolchain nightly || { log "FAILED: rustup component add rust-src --toolchain nightly"; exit 1; }
fi
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup component add rust-src (stable)"
  rustup component add rust-src || { log "FAILED: rustup component add rust-src"; exit 1; }
fi
if ! bpf-linker --version 2>/dev/null | grep -q '0.10.4'; then
  log "cargo install bpf-linker@0.10.4 --locked (about a minute)"
  cargo install bpf-linker@0.10.4 --locked || { log "FAILED: cargo install bpf-linker@0.10.4 --locked"; exit 1; }
fi
log "ok"
