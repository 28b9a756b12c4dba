//! The box's LAN addresses: which interfaces count, and the addresses on them now.
//!
//! Three parts use the same answer: the certificate names these addresses
//! ([`crate::trust`]), mDNS announces the box on these interfaces
//! ([`crate::discovery`]), and the landing page and the start-up log print join URLs
//! for them. Docker bridges, VPN tunnels and the like are skipped by default: a phone
//! on the venue Wi-Fi cannot reach them, and a VPN peer has no business finding the box.
//!
//! Listing uses `if-addrs` (getifaddrs); the caller polls, since the kernel's address
//! list is cheap to read and a Pi's addresses change rarely (DHCP, a cable plugged in).

use std::net::IpAddr;

/// Which interfaces are the LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanFilter {
    /// Only these interface names (patterns); empty = every interface not skipped.
    pub only: Vec<String>,
    /// Interface names (patterns) never used unless named in `only`.
    pub skip: Vec<String>,
}

/// One address of the box on the LAN.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LanAddr {
    /// The interface, e.g. `wlan0`.
    pub interface: String,
    /// The address.
    pub ip: IpAddr,
    /// Its network prefix length.
    pub prefix: u8,
}

impl LanAddr {
    /// Whether `peer` is on this address's network (same prefix).
    pub fn same_network(&self, peer: IpAddr) -> bool {
        match (self.ip, peer) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix.min(32)))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix.min(128)))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Whether `name` matches `pattern`: exact, or a prefix when the pattern ends in `*`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl LanFilter {
    /// Whether the interface `name` is part of the LAN.
    pub fn admits_interface(&self, name: &str) -> bool {
        if self.only.is_empty() {
            !self.skip.iter().any(|p| name_matches(p, name))
        } else {
            self.only.iter().any(|p| name_matches(p, name))
        }
    }

    /// Whether `ip` on interface `name` is a LAN address: an admitted interface, not
    /// loopback, not an IPv6 link-local address (useless in a URL or a certificate
    /// without its scope).
    pub fn admits(&self, name: &str, ip: IpAddr) -> bool {
        !ip.is_loopback()
            && !ip.is_unspecified()
            && !is_v6_link_local(ip)
            && self.admits_interface(name)
    }
}

fn is_v6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Whether `ip` is a private address: the RFC 1918 ranges, IPv4 link-local, IPv6
/// unique-local, or loopback. The box's certificate authority may vouch only for these
/// (its name constraints), and the systemd unit lets only these talk to the box.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || v6.is_loopback(),
    }
}

/// The LAN addresses now, sorted, IPv4 first. An error reading them is an empty list
/// and a warning: the box still serves whoever reaches it.
pub fn addresses(filter: &LanFilter) -> Vec<LanAddr> {
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the network interfaces");
            return Vec::new();
        }
    };
    let mut out: Vec<LanAddr> = interfaces
        .into_iter()
        .filter(|i| filter.admits(&i.name, i.ip()))
        .map(|i| LanAddr {
            prefix: match &i.addr {
                if_addrs::IfAddr::V4(a) => a.prefixlen,
                if_addrs::IfAddr::V6(a) => a.prefixlen,
            },
            ip: i.ip(),
            interface: i.name,
        })
        .collect();
    out.sort_by_key(|a| (a.ip.is_ipv6(), a.ip, a.interface.clone()));
    out.dedup_by(|a, b| a.ip == b.ip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(only: &[&str], skip: &[&str]) -> LanFilter {
        LanFilter {
            only: only.iter().map(|s| s.to_string()).collect(),
            skip: skip.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn docker_and_vpn_interfaces_are_skipped_unless_named() {
        let f = filter(&[], &["docker*", "wg*", "tun*"]);
        assert!(f.admits_interface("wlan0"));
        assert!(f.admits_interface("eth0"));
        assert!(!f.admits_interface("docker0"));
        assert!(!f.admits_interface("wg0"));
        assert!(!f.admits_interface("tun3"));
        let only = filter(&["wg0"], &["wg*"]);
        assert!(only.admits_interface("wg0"), "named in only wins over skip");
        assert!(!only.admits_interface("wlan0"));
    }

    #[test]
    fn loopback_and_link_local_v6_are_not_lan_addresses() {
        let f = filter(&[], &[]);
        assert!(!f.admits("lo", "127.0.0.1".parse().unwrap()));
        assert!(!f.admits("eth0", "fe80::1".parse().unwrap()));
        assert!(!f.admits("eth0", "0.0.0.0".parse().unwrap()));
        assert!(f.admits("eth0", "192.168.1.20".parse().unwrap()));
        assert!(f.admits("eth0", "fd00::20".parse().unwrap()));
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.4.1",
            "169.254.9.9",
            "fd12::1",
            "::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "100.64.0.1", "2001:db8::1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn same_network_follows_the_prefix() {
        let a = LanAddr {
            interface: "wlan0".into(),
            ip: "192.168.4.10".parse().unwrap(),
            prefix: 24,
        };
        assert!(a.same_network("192.168.4.200".parse().unwrap()));
        assert!(!a.same_network("192.168.5.200".parse().unwrap()));
        assert!(!a.same_network("fd00::1".parse().unwrap()));
        let all = LanAddr { prefix: 0, ..a };
        assert!(all.same_network("8.8.8.8".parse().unwrap()));
    }
}
