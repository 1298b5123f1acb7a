//! Digest authentication (RFC 7616, RFC 8760 for SIP).

/// Digest algorithms we offer, in RFC 8760 strength order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Md5,
}

/// `[auth]` of the config (DESIGN.md), already validated by the daemon.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Realm in challenges; the daemon defaults it to `server.domain`.
    pub realm: String,
    /// Offered in this order, one WWW-Authenticate each.
    pub algorithms: Vec<Algorithm>,
    /// Seconds a nonce stays valid; after that, 401 with `stale=true`.
    pub nonce_ttl: u32,
}
