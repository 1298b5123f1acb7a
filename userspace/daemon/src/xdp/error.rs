//! Errors of the XDP data plane. Each message says what the operator should do, because the
//! raw errno from `bpf(2)` / netlink / `setsockopt(SOL_XDP)` rarely does.

use std::error::Error as StdError;

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "{op}: permission denied (EPERM). The XDP data plane needs root, or CAP_BPF + \
         CAP_NET_ADMIN (+ CAP_NET_RAW for AF_XDP, CAP_IPC_LOCK for large UMEMs): \
         run as root or `setcap cap_bpf,cap_net_admin,cap_net_raw,cap_ipc_lock+ep <binary>`; \
         or use dataplane.mode = \"socket\""
    )]
    NotPermitted { op: String },

    #[error(
        "{op}: out of locked memory ({errno}). BPF maps and AF_XDP UMEM are charged to \
         RLIMIT_MEMLOCK: raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in the systemd \
         unit), grant CAP_IPC_LOCK, or configure fewer/smaller UMEM frames"
    )]
    Memlock { op: String, errno: &'static str },

    #[error("no such network interface `{0}` (check `ip link`; in a namespace, run inside it)")]
    NoSuchInterface(String),

    #[error(
        "attaching XDP to `{iface}` failed with ENOSPC: the device has fewer rx queues than \
         XDP needs. On veth the host side needs at least as many rx queues as the peer has tx \
         queues (`ip link add … numrxqueues N numtxqueues N` on both ends); on a NIC check \
         `ethtool -l {iface}`; or use xdp_mode = \"skb\""
    )]
    QueueMismatch { iface: String },

    #[error(
        "the driver of `{iface}` does not support native XDP in this configuration \
         (EOPNOTSUPP/EINVAL); use xdp_mode = \"skb\" (generic XDP)"
    )]
    DriverUnsupported { iface: String },

    #[error(
        "`{iface}` already has an XDP program attached (EBUSY/EEXIST); remove it with \
         `ip link set dev {iface} xdp off` (and `xdpgeneric off`) if it is stale"
    )]
    Busy { iface: String },

    #[error("the kernel verifier rejected the XDP program (this is a bug in Turnstile): {0}")]
    Verifier(String),

    #[error(
        "this build has no XDP program (built with AYA_BUILD_SKIP=1 or without the eBPF \
         toolchain); run `bash scripts/setup.sh` and rebuild, or use dataplane.mode = \"socket\""
    )]
    NotBuilt,

    #[error("invalid XDP data-plane parameter: {0}")]
    InvalidParam(String),

    #[error("AF_XDP: {op} failed: {source}")]
    Xsk {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{op}: {msg}")]
    Other { op: String, msg: String },
}

/// Find the first `std::io::Error` with an errno in an error's source chain.
pub(crate) fn errno_of(e: &(dyn StdError + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    let mut depth = 0;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        depth += 1;
        if depth > 16 {
            break;
        }
        cur = err.source();
    }
    None
}

/// Translate an aya error into an actionable `XdpError` (generic cases; attach-specific
/// errnos are handled where the interface name is known).
pub(crate) fn classify(op: &str, e: &(dyn StdError + 'static)) -> XdpError {
    // Full chain text, so `Other` keeps the details (verifier log included).
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    match errno_of(e) {
        Some(libc::EPERM) => XdpError::NotPermitted { op: op.into() },
        Some(libc::ENOBUFS) => XdpError::Memlock {
            op: op.into(),
            errno: "ENOBUFS",
        },
        Some(libc::ENOMEM) => XdpError::Memlock {
            op: op.into(),
            errno: "ENOMEM",
        },
        Some(libc::EACCES) if msg.contains("Verifier output") || msg.contains("verifier") => {
            XdpError::Verifier(msg)
        }
        Some(libc::EINVAL) if msg.contains("Verifier output") => XdpError::Verifier(msg),
        _ => XdpError::Other { op: op.into(), msg },
    }
}

pub(crate) fn classify_attach(iface: &str, e: &(dyn StdError + 'static)) -> XdpError {
    match errno_of(e) {
        Some(libc::ENOSPC) => XdpError::QueueMismatch {
            iface: iface.into(),
        },
        Some(libc::EOPNOTSUPP) => XdpError::DriverUnsupported {
            iface: iface.into(),
        },
        Some(libc::EBUSY) | Some(libc::EEXIST) => XdpError::Busy {
            iface: iface.into(),
        },
        Some(libc::ENODEV) => XdpError::NoSuchInterface(iface.into()),
        _ => classify(&format!("attach XDP to `{iface}`"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn errno_found_in_chain() {
        let e = Outer(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(errno_of(&e), Some(libc::ENOSPC));
        let x = classify_attach("veth0", &e);
        assert!(matches!(x, XdpError::QueueMismatch { .. }), "{x}");
        assert!(x.to_string().contains("numrxqueues"));
    }

    #[test]
    fn eperm_and_memlock_are_actionable() {
        let e = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        let x = classify("create map", &e);
        assert!(x.to_string().contains("CAP_BPF"), "{x}");
        let e = Outer(std::io::Error::from_raw_os_error(libc::ENOBUFS));
        let x = classify("create map", &e);
        assert!(x.to_string().contains("CAP_IPC_LOCK"), "{x}");
    }
}
