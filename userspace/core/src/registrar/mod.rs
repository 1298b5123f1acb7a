//! The location service and REGISTER processing (RFC 3261 §10.3).

/// `[registrar]` of the config (DESIGN.md), already validated by the daemon.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// Below this: 423 Interval Too Brief with Min-Expires.
    pub min_expires: u32,
    /// Above this: shortened to it.
    pub max_expires: u32,
    /// When neither the contact's expires param nor an Expires header is present.
    pub default_expires: u32,
    pub max_contacts_per_aor: usize,
    /// Storm spreading: granted expiry is reduced by a random 0..=N % (0 = off).
    pub expires_jitter_percent: u8,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts_per_aor: 10,
            expires_jitter_percent: 0,
        }
    }
}
