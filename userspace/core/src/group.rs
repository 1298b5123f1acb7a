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
    /// The same prefixes as `table`, longest first, when there are few of them (the usual
    /// configuration): a linear scan of a handful of masks is ~20 instructions, the trie
    /// walk ~400, on every datagram.
    small: Option<SmallTable>,
}

/// Prefixes as (network, mask, group), each family sorted by prefix length descending, so
/// the first match is the longest.
struct SmallTable {
    v4: Vec<(u32, u32, GroupId)>,
    v6: Vec<(u128, u128, GroupId)>,
}

/// Up to this many prefixes are scanned linearly.
const SMALL_TABLE_MAX: usize = 16;

impl SmallTable {
    fn new(groups: &[IpGroup]) -> Option<SmallTable> {
        // Later duplicates win, as in the trie.
        let mut v4: Vec<(u8, u32, u32, GroupId)> = Vec::new();
        let mut v6: Vec<(u8, u128, u128, GroupId)> = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            for net in &g.sources {
                let len = net.prefix_len();
                match net {
                    IpNet::V4(n) => {
                        let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
                        let addr = u32::from(n.network()) & mask;
                        v4.retain(|e| (e.0, e.1) != (len, addr));
                        v4.push((len, addr, mask, i as GroupId));
                    }
                    IpNet::V6(n) => {
                        let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
                        let addr = u128::from(n.network()) & mask;
                        v6.retain(|e| (e.0, e.1) != (len, addr));
                        v6.push((len, addr, mask, i as GroupId));
                    }
                }
            }
        }
        if v4.len() + v6.len() > SMALL_TABLE_MAX {
            return None;
        }
        v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        Some(SmallTable {
            v4: v4.into_iter().map(|(_, a, m, g)| (a, m, g)).collect(),
            v6: v6.into_iter().map(|(_, a, m, g)| (a, m, g)).collect(),
        })
    }

    fn classify(&self, addr: IpAddr) -> Option<GroupId> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find(|e| a & e.1 == e.0).map(|e| e.2)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find(|e| a & e.1 == e.0).map(|e| e.2)
            }
        }
    }
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
        let small = SmallTable::new(&groups);
        GroupTable {
            groups,
            table,
            small,
        }
    }

    pub fn classify(&self, addr: IpAddr) -> Option<GroupId> {
        // IPv4-mapped IPv6 sources (dual-stack sockets) classify as their IPv4 address.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        match &self.small {
            Some(t) => t.classify(addr),
            None => self.table.longest_match(addr).map(|(_, id)| *id),
        }
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

    #[test]
    fn small_table_agrees_with_the_trie() {
        let t = GroupTable::new(vec![
            g("all4", GroupKind::User, &["0.0.0.0/0"]),
            g("wide", GroupKind::User, &["10.0.0.0/8", "2001:db8::/32"]),
            g("host", GroupKind::User, &["10.1.2.3/32", "2001:db8::1/128"]),
            // Host bits set (truncated), and a duplicate of "wide"'s /8: the later one wins.
            g(
                "odd",
                GroupKind::Server,
                &["10.1.2.77/24", "10.0.0.0/8", "::/0"],
            ),
        ]);
        assert!(t.small.is_some());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut addrs: Vec<IpAddr> = [
            "10.1.2.3",
            "10.1.2.4",
            "10.200.0.1",
            "11.0.0.1",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db9::1",
            "::ffff:10.1.2.3",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Concentrated near the configured prefixes so all of them get hit.
            let v4 = std::net::Ipv4Addr::from(0x0a01_0200 ^ (x as u32 & 0x0f00_ffff));
            addrs.push(IpAddr::V4(v4));
            let v6 = std::net::Ipv6Addr::from(
                0x2001_0db8_u128 << 96 ^ (x as u128 & 0x0001_0000_0000_0000_0000_0000_0000_00ff),
            );
            addrs.push(IpAddr::V6(v6));
        }
        let mut hits = std::collections::HashSet::new();
        for a in addrs {
            let small = t.classify(a);
            let m = match a {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
                v4 => v4,
            };
            let trie = t.table.longest_match(m).map(|(_, id)| *id);
            assert_eq!(small, trie, "{a}");
            hits.insert(small);
        }
        assert!(hits.len() >= 4, "{hits:?}");
    }
}
