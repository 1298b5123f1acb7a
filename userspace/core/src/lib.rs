//! turnstile-core: the sans-IO SIP engine.
//!
//! Nothing in this crate opens a socket, spawns a thread, reads a clock or touches tokio.
//! Bytes, time ([`Millis`]) and configuration go in; bytes, events and timeouts come out.
//!
//! Module map (one concern each):
//! - [`msg`]: datagram framing, the zero-copy message view, URIs, header parsers, response building
//! - [`auth`]: digest authentication (RFC 7616 / RFC 8760), stateless nonces
//! - [`registrar`]: the location service and RFC 3261 §10.3 REGISTER processing
//! - [`group`]: IP Group classification (longest prefix match)
//! - [`engine`]: the per-worker sans-IO engine tying it together

pub mod auth;
pub mod engine;
pub mod group;
pub mod msg;
pub mod registrar;
#[cfg(feature = "rsip")]
pub mod rsip_adapter;
pub mod stats;
pub mod time;

pub use time::Millis;
