//! The per-worker sans-IO engine: datagrams in, datagrams out.
//!
//! Driven quinn/str0m style:
//! `handle_datagram(now, …)` → `poll_transmit()` until `None`; `poll_timeout()` says when
//! `handle_timeout(now)` wants to run next. State shared between workers (registrations,
//! nonce replay window, counters merged on read) lives in [`Shared`].

use crate::auth::AuthConfig;
use crate::group::{GroupId, GroupTable, Unclassified};
use crate::stats::WorkerStats;
use crate::registrar::RegistrarConfig;
use crate::time::Millis;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything the engine needs from the config, already validated by the daemon.
pub struct EngineConfig {
    /// SIP domain served (Request-URI host check of REGISTER, default realm).
    pub domain: String,
    /// Other host names / addresses that mean "us" in a Request-URI (listen addresses).
    pub aliases: Vec<String>,
    pub registrar: RegistrarConfig,
    /// `None`: no group may use `auth = "local"` (the daemon checks that).
    pub auth: Option<AuthConfig>,
    pub groups: GroupTable,
    pub unclassified: Unclassified,
    /// Product token for Server / User-Agent headers.
    pub server_name: String,
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    /// Local address to send from (the one the request arrived on), when it matters.
    pub src: Option<SocketAddr>,
    pub payload: Vec<u8>,
}

/// State shared by all workers.
pub struct Shared {
    pub config: EngineConfig,
}

impl Shared {
    pub fn new(config: EngineConfig) -> Self {
        Shared { config }
    }

    /// Shared housekeeping (binding expiry). The daemon's control thread calls it.
    pub fn handle_timeout(&self, _now: Millis) {}
}

pub struct Engine {
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    out: VecDeque<Transmit>,
}

impl Engine {
    pub fn new(shared: Arc<Shared>, _seed: u64) -> Self {
        Engine { shared, stats: Arc::default(), out: VecDeque::new() }
    }

    /// This worker's counters; the control plane keeps a clone and merges on read.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// One UDP datagram from `src`, received on local address `local`; classifies `src` itself.
    pub fn handle_datagram(&mut self, now: Millis, src: SocketAddr, local: SocketAddr, data: &[u8]) {
        let group = self.shared.config.groups.classify(src.ip());
        self.handle_classified(now, src, local, group, data)
    }

    /// Same, with the IP Group already known (XDP metadata, or the socket worker's own
    /// classification that decided which fair queue the datagram waited in).
    pub fn handle_classified(
        &mut self,
        _now: Millis,
        _src: SocketAddr,
        _local: SocketAddr,
        _group: Option<GroupId>,
        _data: &[u8],
    ) {
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Millis> {
        None
    }

    pub fn handle_timeout(&mut self, _now: Millis) {}
}
