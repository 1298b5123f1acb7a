//! Deny list after repeated digest-auth failures (DESIGN.md "Bad input").
//!
//! The engine reports every failed credential check as `Event::AuthFailed { src }`; workers
//! forward them over a bounded channel (never blocking, drops counted) to the control thread,
//! which owns a [`DenyTracker`]: `deny_after` failures from one source address within
//! `deny_window` put it on the deny list for `deny_seconds`.
//!
//! Enforcement:
//! - XDP mode: the program's deny map (`XdpDataplane::deny`), dropped at the NIC and counted
//!   as `drop_denied`;
//! - both modes: a published [`Live`] snapshot that the workers re-read only when its
//!   generation changes (one relaxed atomic load per loop iteration) and check before a
//!   datagram is queued for the engine, so there is no per-packet lock.
//!
//! Time is an input (`now` in ms, any monotonic origin) so the window logic is tested on a
//! virtual clock.

use parking_lot::RwLock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Sources with a failure window kept at once; beyond it new sources are not tracked (and
/// counted) until stale windows are pruned, so a spray of spoofed sources cannot grow memory
/// without bound.
pub const MAX_TRACKED: usize = 100_000;

/// `[auth] deny_after / deny_window / deny_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyPolicy {
    /// Failures that trigger a deny; 0 = deny list off.
    pub after: u32,
    /// Sliding window for counting failures, ms.
    pub window_ms: u64,
    /// How long a source stays denied, ms.
    pub deny_ms: u64,
}

impl DenyPolicy {
    pub const DISABLED: DenyPolicy = DenyPolicy {
        after: 0,
        window_ms: 60_000,
        deny_ms: 600_000,
    };

    pub fn enabled(&self) -> bool {
        self.after > 0
    }
}

impl Default for DenyPolicy {
    fn default() -> Self {
        DenyPolicy {
            after: 10,
            window_ms: 60_000,
            deny_ms: 600_000,
        }
    }
}

/// Per-source failure windows and the current deny list (control thread only).
pub struct DenyTracker {
    policy: DenyPolicy,
    /// Failure times (ms) per source, oldest first, at most `policy.after` entries.
    failures: HashMap<IpAddr, VecDeque<u64>>,
    /// Denied source → end of its deny period (ms).
    denied: HashMap<IpAddr, u64>,
    /// Deny decisions since start.
    pub denials_total: u64,
    /// Failures not tracked because [`MAX_TRACKED`] sources were already tracked.
    pub untracked: u64,
}

impl DenyTracker {
    pub fn new(policy: DenyPolicy) -> Self {
        DenyTracker {
            policy,
            failures: HashMap::new(),
            denied: HashMap::new(),
            denials_total: 0,
            untracked: 0,
        }
    }

    pub fn policy(&self) -> DenyPolicy {
        self.policy
    }

    /// New settings (reload). Failure windows restart; sources already denied keep their
    /// deny period, except that turning the list off lifts every deny (returned).
    pub fn set_policy(&mut self, policy: DenyPolicy) -> Vec<IpAddr> {
        self.policy = policy;
        self.failures.clear();
        if policy.enabled() {
            Vec::new()
        } else {
            self.denied.drain().map(|(a, _)| a).collect()
        }
    }

    /// Records one auth failure of `src` at `now`. `Some(until)` when this failure puts the
    /// source on the deny list (only once per deny period).
    pub fn record(&mut self, src: IpAddr, now: u64) -> Option<u64> {
        let p = self.policy;
        if !p.enabled() || self.denied.contains_key(&src) {
            return None;
        }
        if !self.failures.contains_key(&src) && self.failures.len() >= MAX_TRACKED {
            self.prune(now);
            if self.failures.len() >= MAX_TRACKED {
                self.untracked += 1;
                return None;
            }
        }
        let w = self.failures.entry(src).or_default();
        while w
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= p.window_ms)
        {
            w.pop_front();
        }
        w.push_back(now);
        if w.len() < p.after as usize {
            return None;
        }
        self.failures.remove(&src);
        let until = now.saturating_add(p.deny_ms);
        self.denied.insert(src, until);
        self.denials_total += 1;
        Some(until)
    }

    /// Lifts deny periods that ended by `now` (returned) and forgets stale failure windows.
    pub fn expire(&mut self, now: u64) -> Vec<IpAddr> {
        let mut lifted = Vec::new();
        self.denied.retain(|a, until| {
            let keep = *until > now;
            if !keep {
                lifted.push(*a);
            }
            keep
        });
        self.prune(now);
        lifted
    }

    fn prune(&mut self, now: u64) {
        let win = self.policy.window_ms;
        self.failures
            .retain(|_, w| w.back().is_some_and(|&t| now.saturating_sub(t) < win));
    }

    pub fn is_denied(&self, src: &IpAddr) -> bool {
        self.denied.contains_key(src)
    }

    /// Denied sources with the end of their deny period.
    pub fn denied(&self) -> impl Iterator<Item = (IpAddr, u64)> + '_ {
        self.denied.iter().map(|(a, u)| (*a, *u))
    }

    pub fn denied_count(&self) -> usize {
        self.denied.len()
    }

    pub fn tracked_count(&self) -> usize {
        self.failures.len()
    }
}

/// What the workers apply from the control plane, swapped as a whole.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Sources whose datagrams are dropped before the engine.
    pub deny: HashSet<IpAddr>,
    /// Fair-queue classes (weight, depth): the groups in config order, then unclassified.
    pub classes: Vec<(u32, usize)>,
}

/// A [`Live`] published by the control thread, read by the workers when it changed.
pub struct LiveCell {
    generation: AtomicU64,
    value: RwLock<Arc<Live>>,
}

impl LiveCell {
    pub fn new(live: Live) -> Self {
        LiveCell {
            generation: AtomicU64::new(1),
            value: RwLock::new(Arc::new(live)),
        }
    }

    /// Replaces the published value; workers pick it up on their next iteration.
    pub fn publish(&self, live: Live) {
        *self.value.write() = Arc::new(live);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value and its generation.
    pub fn load(&self) -> (u64, Arc<Live>) {
        // Generation first: a publish between the two reads makes us re-read next time.
        let g = self.generation();
        (g, self.value.read().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(after: u32, window_s: u64, deny_s: u64) -> DenyPolicy {
        DenyPolicy {
            after,
            window_ms: window_s * 1000,
            deny_ms: deny_s * 1000,
        }
    }

    #[test]
    fn denies_after_n_failures_within_the_window() {
        let mut t = DenyTracker::new(policy(3, 60, 600));
        let a = ip("192.0.2.1");
        assert_eq!(t.record(a, 1_000), None);
        assert_eq!(t.record(a, 2_000), None);
        assert_eq!(t.record(a, 3_000), Some(603_000));
        assert!(t.is_denied(&a));
        assert_eq!(t.denials_total, 1);
        // Further failures while denied do not extend or re-count.
        assert_eq!(t.record(a, 4_000), None);
        assert_eq!(t.denials_total, 1);
        // Another source is independent.
        assert_eq!(t.record(ip("192.0.2.2"), 4_000), None);
        assert!(!t.is_denied(&ip("192.0.2.2")));
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut t = DenyTracker::new(policy(3, 10, 600));
        let a = ip("2001:db8::1");
        assert_eq!(t.record(a, 0), None);
        assert_eq!(t.record(a, 5_000), None);
        // 0 has left the window (exactly 10 s old): only 5 000 and 10 000 count.
        assert_eq!(t.record(a, 10_000), None);
        assert!(!t.is_denied(&a));
        assert_eq!(t.record(a, 14_999), Some(614_999));
    }

    #[test]
    fn deny_expires_and_stale_windows_are_forgotten() {
        let mut t = DenyTracker::new(policy(2, 60, 100));
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        t.record(a, 0);
        assert_eq!(t.record(a, 1), Some(100_001));
        t.record(b, 50_000);
        assert_eq!(t.tracked_count(), 1);
        assert!(t.expire(100_000).is_empty());
        assert!(t.is_denied(&a));
        assert_eq!(t.expire(100_001), vec![a]);
        assert!(!t.is_denied(&a));
        // b's only failure is 50 s old: still inside the window; at 60 s it is forgotten.
        assert_eq!(t.tracked_count(), 1);
        t.expire(110_000);
        assert_eq!(t.tracked_count(), 0);
        // After the deny, the count starts again from zero.
        assert_eq!(t.record(a, 110_002), None);
        assert_eq!(t.record(a, 110_003), Some(210_003));
    }

    #[test]
    fn zero_disables_and_turning_off_lifts_denies() {
        let mut t = DenyTracker::new(policy(0, 60, 600));
        for i in 0..100 {
            assert_eq!(t.record(ip("192.0.2.1"), i), None);
        }
        assert_eq!(t.tracked_count(), 0);
        t.set_policy(policy(1, 60, 600));
        assert!(t.record(ip("192.0.2.1"), 200).is_some());
        assert_eq!(t.set_policy(policy(0, 60, 600)), vec![ip("192.0.2.1")]);
        assert_eq!(t.denied_count(), 0);
    }

    #[test]
    fn tracked_sources_are_bounded() {
        let mut t = DenyTracker::new(policy(5, 60, 600));
        for i in 0..MAX_TRACKED as u32 {
            t.record(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), 1_000);
        }
        assert_eq!(t.tracked_count(), MAX_TRACKED);
        t.record(ip("192.0.2.1"), 2_000);
        assert_eq!(t.untracked, 1);
        // Once the old windows are stale, new sources are tracked again.
        t.record(ip("192.0.2.1"), 62_000);
        assert_eq!(t.untracked, 1);
        assert_eq!(t.tracked_count(), 1);
    }

    #[test]
    fn live_cell_generation_changes_on_publish() {
        let cell = LiveCell::new(Live::default());
        let (g0, v0) = cell.load();
        assert!(v0.deny.is_empty());
        let mut l = Live::default();
        l.deny.insert(ip("192.0.2.1"));
        cell.publish(l);
        let (g1, v1) = cell.load();
        assert_ne!(g0, g1);
        assert!(v1.deny.contains(&ip("192.0.2.1")));
    }
}
