//! IP Group classification: source address → IP Group, longest prefix wins (DESIGN.md).
//!
//! The same table feeds the XDP LPM tries (via the daemon's loader) and socket-mode
//! classification here, so both data planes agree on every address.

use ip_network::IpNetwork;
use ip_network_table::IpNetworkTable;
use ipnet::IpNet;
use std::net::IpAddr;

/// Index of a group in [`GroupTable::groups`]. Small and `Copy`: it travels with every packet
/// (in socket mode as a field, in XDP mode in the packet metadata).
pub type GroupId = u16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// End devices that register; their bindings are stored.
    User,
    /// Proxies, registrars, trunks; REGISTERs from them are forwarded, never stored.
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// We challenge (digest, RFC 7616/8760).
    Local,
    /// No authentication for this group.
    None,
    /// Challenges come from the serving registrar and are passed through.
    Upstream,
}

#[derive(Clone, Debug)]
pub struct IpGroup {
    pub name: String,
    pub kind: GroupKind,
    pub sources: Vec<IpNet>,
    pub auth: AuthMode,
    /// Name of the serving proxy set; `None` means we are the registrar.
    pub serving: Option<String>,
    /// Deficit-round-robin weight of this group's queue (fair scheduling between groups).
    pub weight: u32,
}

/// What happens to traffic from an address no group claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unclassified {
    /// Silently dropped (and counted).
    Drop,
    /// Requests answered 403; other messages dropped.
    Reject,
}

pub struct GroupTable {
    groups: Vec<IpGroup>,
    table: IpNetworkTable<GroupId>,
}

impl GroupTable {
    /// Builds the table. Callers (the config loader) have already rejected duplicate prefixes
    /// and more than `GroupId::MAX` groups with a file:line message; here a later duplicate wins.
    pub fn new(groups: Vec<IpGroup>) -> Self {
        let mut table = IpNetworkTable::new();
        for (i, g) in groups.iter().enumerate() {
            for net in &g.sources {
                let net = IpNetwork::new_truncate(net.network(), net.prefix_len())
                    .expect("ipnet prefix lengths are always valid");
                table.insert(net, i as GroupId);
            }
        }
        GroupTable { groups, table }
    }

    pub fn classify(&self, addr: IpAddr) -> Option<GroupId> {
        // IPv4-mapped IPv6 sources (dual-stack sockets) classify as their IPv4 address.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        self.table.longest_match(addr).map(|(_, id)| *id)
    }

    pub fn get(&self, id: GroupId) -> Option<&IpGroup> {
        self.groups.get(id as usize)
    }

    pub fn groups(&self) -> &[IpGroup] {
        &self.groups
    }

    pub fn by_name(&self, name: &str) -> Option<GroupId> {
        self.groups
            .iter()
            .position(|g| g.name == name)
            .map(|i| i as GroupId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, kind: GroupKind, sources: &[&str]) -> IpGroup {
        IpGroup {
            name: name.into(),
            kind,
            sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
            auth: AuthMode::None,
            serving: None,
            weight: 1,
        }
    }

    #[test]
    fn longest_prefix_wins_v4_and_v6() {
        let t = GroupTable::new(vec![
            g("wide", GroupKind::User, &["10.0.0.0/8", "2001:db8::/32"]),
            g(
                "narrow",
                GroupKind::Server,
                &["10.1.2.0/24", "2001:db8:1::/48"],
            ),
        ]);
        assert_eq!(t.classify("10.9.9.9".parse().unwrap()), Some(0));
        assert_eq!(t.classify("10.1.2.3".parse().unwrap()), Some(1));
        assert_eq!(t.classify("2001:db8:ffff::1".parse().unwrap()), Some(0));
        assert_eq!(t.classify("2001:db8:1::5".parse().unwrap()), Some(1));
        assert_eq!(t.classify("192.0.2.1".parse().unwrap()), None);
        assert_eq!(t.classify("::ffff:10.1.2.3".parse().unwrap()), Some(1));
        assert_eq!(t.by_name("narrow"), Some(1));
    }
}
