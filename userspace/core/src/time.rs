//! Time as an input. The core never reads a clock: callers pass `now` into every `handle_*`.
//!
//! One timeline is used everywhere: milliseconds since the Unix epoch. Binding expiry is
//! persisted, so it must survive a restart; a monotonic clock would not.

/// Milliseconds since the Unix epoch, as given by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub const fn from_secs(s: u64) -> Self {
        Millis(s * 1000)
    }
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }
    pub const fn plus_secs(self, s: u64) -> Self {
        Millis(self.0.saturating_add(s.saturating_mul(1000)))
    }
    pub const fn plus_ms(self, ms: u64) -> Self {
        Millis(self.0.saturating_add(ms))
    }
    /// Whole seconds from `self` until `later`, rounded up; 0 if `later` is not after `self`.
    pub const fn secs_until(self, later: Millis) -> u64 {
        if later.0 <= self.0 {
            0
        } else {
            (later.0 - self.0).div_ceil(1000)
        }
    }
}
