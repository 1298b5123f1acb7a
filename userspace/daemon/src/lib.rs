//! The Turnstile daemon: config loading, IO backends, worker pool, persistence, control plane.

pub mod xdp;
