//! Per-worker counters: each worker owns one [`WorkerStats`] and is its only writer, so the
//! relaxed atomics never bounce between cores; readers (the control plane) merge on read.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident => $label:literal,)*) => {
        /// Engine counters. The label is the stable name shown by `turnstile show stats`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Counter { $($name,)* }
        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];
            pub const COUNT: usize = Counter::ALL.len();
            pub const fn label(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }
        }
    };
}

counters! {
    RxDatagrams => "rx_datagrams",
    RxRequests => "rx_requests",
    RxResponses => "rx_responses",
    DropUnclassified => "drop_unclassified",
    DropMalformed => "drop_malformed",
    DropResponseNoVia => "drop_response_unroutable",
    Rejected400 => "reject_400",
    Retransmissions => "retransmissions_absorbed",
    RegisterOk => "register_ok",
    RegisterFailed => "register_failed",
    AuthChallenges => "auth_challenges",
    AuthFailures => "auth_failures",
    AuthStale => "auth_stale",
    Forwarded => "proxied_requests",
    RelayedResponses => "relayed_responses",
    LocalOptions => "options_answered",
    NotFound => "location_not_found",
    TxDatagrams => "tx_datagrams",
}

/// Maximum number of IP Groups with their own counters (more share the last slot).
pub const MAX_GROUP_COUNTERS: usize = 64;

/// Per-group counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GroupCounter {
    Rx = 0,
    RegisterOk = 1,
    RegisterFailed = 2,
}
pub const GROUP_COUNTERS: usize = 3;

#[repr(align(64))]
pub struct WorkerStats {
    counters: [AtomicU64; Counter::COUNT],
    groups: [[AtomicU64; GROUP_COUNTERS]; MAX_GROUP_COUNTERS],
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            groups: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl WorkerStats {
    /// Single writer: a load + store is cheaper than a locked RMW and exact for one writer.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        let a = &self.counters[c as usize];
        a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
    #[inline]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1)
    }
    #[inline]
    pub fn inc_group(&self, group: u16, c: GroupCounter) {
        let g = (group as usize).min(MAX_GROUP_COUNTERS - 1);
        let a = &self.groups[g][c as usize];
        a.store(a.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }
    pub fn get_group(&self, group: u16, c: GroupCounter) -> u64 {
        let g = (group as usize).min(MAX_GROUP_COUNTERS - 1);
        self.groups[g][c as usize].load(Ordering::Relaxed)
    }
}

/// Sums of several workers' counters (merge on read).
pub fn merged(workers: &[std::sync::Arc<WorkerStats>], c: Counter) -> u64 {
    workers.iter().map(|w| w.get(c)).sum()
}
