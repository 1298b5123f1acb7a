//! XDP data plane: the embedded XDP program, its loader (aya) and AF_XDP sockets.
//!
//! - [`loader::XdpDataplane`]: load/attach the program, fill the LPM tries from IP Group
//!   prefixes, deny list, counters, XSKMAP registration, `BPF_PROG_TEST_RUN`.
//! - [`xsk`]: AF_XDP sockets with one shared UMEM per rx queue and one socket per
//!   (queue, class), batch RX/TX for the worker loop.
//!
//! Shared layouts (map keys/values, metadata, counters) live in `turnstile_common`.

pub mod error;
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
