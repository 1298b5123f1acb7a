//! The Turnstile daemon: config loading, IO backends, worker pool, persistence, control plane.

pub mod config;
pub mod control;
pub mod deny;
pub mod fair;
pub mod persist;
pub mod run;
pub mod socket;
pub mod steer;
pub mod worker;
pub mod xdp;
