//! Which addresses may be handed out: the guard against a poisoned registry entry.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::Error;

/// An IP network in CIDR notation, such as `10.0.0.0/8` or `fd00::/8`.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::Cidr;
///
/// let net: Cidr = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<Cidr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A network from an address and prefix length.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the prefix is
    /// longer than the address (32 bits for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, Error> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(Error::invalid(format!(
                "CIDR prefix /{prefix} is longer than {max} bits"
            )));
        }
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` lies in this network. An IPv4 network never contains an IPv6
    /// address, nor the reverse.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - u32::from(prefix);
    (a >> shift) == (b >> shift)
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| Error::invalid(format!("`{s}` is not a CIDR: bad address")))?;
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| Error::invalid(format!("`{s}` is not a CIDR: bad prefix")))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which IP addresses endpoints may carry.
///
/// By default every address is allowed except those no service should ever be sent
/// to: link-local (`169.254.0.0/16`, which holds the instance metadata service at
/// `169.254.169.254`, and `fe80::/10`), unspecified (`0.0.0.0`, `::`), multicast and
/// the IPv4 broadcast address. Loopback is allowed, for local development.
///
/// The checks, in order: an address in a `deny` network is refused; when the `allow`
/// list is not empty, an address outside every `allow` network is refused; an address
/// in an `allow` network is accepted even if it is special; otherwise special addresses
/// are refused unless [`allow_special`](Self::allow_special) was set.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::AddressPolicy;
///
/// let policy = AddressPolicy::default()
///     .allow("10.0.0.0/8".parse().unwrap())
///     .deny("10.9.0.0/16".parse().unwrap());
/// assert!(policy.permits("10.1.0.5".parse().unwrap()));
/// assert!(!policy.permits("10.9.0.5".parse().unwrap()));
/// assert!(!policy.permits("192.168.1.1".parse().unwrap()));
/// assert!(!AddressPolicy::default().permits("169.254.169.254".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    allow_special: bool,
}

impl AddressPolicy {
    /// Adds a network to the allow list. A non-empty allow list admits only its
    /// networks.
    #[must_use]
    pub fn allow(mut self, net: Cidr) -> Self {
        self.allow.push(net);
        self
    }

    /// Adds a network to the deny list, which wins over everything else.
    #[must_use]
    pub fn deny(mut self, net: Cidr) -> Self {
        self.deny.push(net);
        self
    }

    /// Also hands out link-local, unspecified and multicast addresses. Off by
    /// default; a registry entry pointing there is far more likely an attack or a
    /// mistake than a service.
    #[must_use]
    pub fn allow_special(mut self, yes: bool) -> Self {
        self.allow_special = yes;
        self
    }

    /// Whether an endpoint may carry `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(ip)) {
            return false;
        }
        if self.allow.iter().any(|n| n.contains(ip)) {
            return true;
        }
        if !self.allow.is_empty() {
            return false;
        }
        self.allow_special || !is_special(ip)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) is judged as the IPv4
/// address it carries, so the mapping cannot smuggle a banned address through.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_refuses_special_addresses() {
        let p = AddressPolicy::default();
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "febf::1",
            "::",
            "ff02::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
        for good in ["127.0.0.1", "10.0.0.1", "::1", "2600::1", "fec0::1"] {
            assert!(p.permits(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn allow_overrides_special_and_deny_overrides_allow() {
        let p = AddressPolicy::default()
            .allow("169.254.0.0/16".parse().unwrap())
            .deny("169.254.169.254/32".parse().unwrap());
        assert!(p.permits(ip("169.254.1.1")));
        assert!(!p.permits(ip("169.254.169.254")));
        assert!(!p.permits(ip("10.0.0.1")));
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/x",
            "::/129",
            "999.0.0.1/8",
            "a/b/c",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
