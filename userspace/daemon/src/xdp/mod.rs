//! XDP data plane: the embedded XDP program, its loader (aya) and AF_XDP sockets.
//!
//! - [`loader::XdpDataplane`]: load/attach the program, fill the LPM tries from IP Group
//!   prefixes, deny list, counters, XSKMAP registration, `BPF_PROG_TEST_RUN`.
//! - [`xsk`]: AF_XDP sockets with one shared UMEM per rx queue and one socket per
//!   (queue, class), batch RX/TX for the worker loop.
//! - [`flood`]: the benchmark's packet generator (live-frames `BPF_PROG_RUN`), not used by
//!   the daemon.
//!
//! Shared layouts (map keys/values, metadata, counters) live in `turnstile_common`.

pub mod error;
pub mod flood;
pub mod loader;
pub mod packet;
pub mod xsk;

pub use error::XdpError;
pub use loader::{
    AttachMode, CounterSnapshot, GroupPrefix, GroupSpec, RedirectFallback, TestRunOutput,
    UnclassifiedPolicy, XdpDataplane, XdpParams,
};
pub use turnstile_common::{Verdict, XdpMeta, MAX_CLASSES, MAX_GROUPS, META_MAGIC, VERDICT_COUNT};

/// The XDP object built by `build.rs` from `ebpf/xdp` (empty when built with
/// `AYA_BUILD_SKIP=1`; loading then fails with [`XdpError::NotBuilt`]).
pub static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/turnstile-xdp"));

/// Everything the XDP backend needs, opened in the right order: the program is loaded and
/// its maps filled, one [`xsk::XskQueue`] per rx queue of `iface` is created and registered
/// in the XSKMAP, and only then is the program attached, so no SIP packet hits the
/// "no socket" fallback during start-up. Run in the network namespace of `iface`.
///
/// The worker for rx queue `q` owns `queues[q]` (it is `Send`, not `Sync`).
pub fn open_backend(
    iface: &str,
    mode: AttachMode,
    params: &XdpParams,
    groups: &[GroupPrefix],
    xsk_cfg: &xsk::XskConfig,
) -> Result<(XdpDataplane, Vec<xsk::XskQueue>), XdpError> {
    let nq = xsk::rx_queue_count(iface)?;
    if nq > turnstile_common::MAX_QUEUES {
        return Err(XdpError::InvalidParam(format!(
            "{iface} has {nq} rx queues; at most {} supported (reduce with `ethtool -L`)",
            turnstile_common::MAX_QUEUES
        )));
    }
    let mut dp = XdpDataplane::open(params, groups)?;
    let mut queues = Vec::with_capacity(nq as usize);
    for q in 0..nq {
        let xq = xsk::XskQueue::open(iface, q, xsk_cfg)?;
        xq.register(&mut dp)?;
        queues.push(xq);
    }
    dp.attach(iface, mode)?;
    Ok((dp, queues))
}
