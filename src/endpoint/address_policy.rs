//! Which addresses may be handed out: the guard against a poisoned registry entry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
/// to ("special" addresses):
///
/// - link-local: `169.254.0.0/16` (which holds the instance metadata service at
///   `169.254.169.254` and the ECS task metadata endpoints `169.254.170.2` and
///   `169.254.170.23`) and `fe80::/10`;
/// - unspecified and "this network": `0.0.0.0/8` and `::`;
/// - multicast (`224.0.0.0/4`, `ff00::/8`) and the IPv4 broadcast address;
/// - the EC2 service addresses in `fd00:ec2::/64`: the instance metadata service over
///   IPv6 (`fd00:ec2::254`), the Route 53 Resolver (`fd00:ec2::253`), the Amazon Time
///   Sync Service (`fd00:ec2::123`) and the EKS Pod Identity agent (`fd00:ec2::23`).
///
/// Loopback is allowed, for local development.
///
/// [`Registration`](crate::Registration) refuses to register an address the default
/// policy refuses, since every resolver keeping the default would skip it.
///
/// An IPv6 address that carries an IPv4 address is judged as the IPv4 address it
/// carries, so that no spelling smuggles a refused address through: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, other than `::` and `::1`),
/// IPv4-translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::/96`, and the local-use
/// `64:ff9b:1::/48` read at the `/96` position, its last 32 bits, the layout NAT64
/// gateways use; the other RFC 6052 positions are not read, since in a `/96` address
/// they hold zeros and would refuse every legitimate one as `0.0.0.0`), 6to4
/// (`2002::/16`) and Teredo (`2001::/32`, the client address). A deny network matching
/// either the IPv6 form or the IPv4 it carries refuses it; allow networks and the
/// special-address rule are applied to the IPv4 it carries.
///
/// The checks, in order: an address in a `deny` network is refused; when the `allow`
/// list is not empty, an address outside every `allow` network is refused; an address
/// in an `allow` network is accepted even if it is special (so `fd00:ec2::254/128` in
/// the allow list admits the metadata service, deliberately); otherwise special
/// addresses are refused unless [`allow_special`](Self::allow_special) was set.
/// An instance with both an IPv4 and an IPv6 address is reached at the preferred
/// one ([`prefer_ipv6`](crate::ResolverBuilder::prefer_ipv6)) if it is permitted,
/// else at the other if that one is; with neither permitted it is skipped.
///
/// Host names (`AWS_INSTANCE_CNAME`, `AWS_ALIAS_DNS_NAME`) that are IP literals in any
/// spelling a URL parser or `inet_aton` accepts (`2852039166`, `0xa9fea9fe`,
/// `0251.0376.0251.0376`, `169.254.43518`, `[::1]`, a trailing dot) are judged as the
/// address they spell, and when permitted are handed out as that IP address. A host
/// name whose last label is a number but which is not an IP literal (`1.2.3.4.5`,
/// `10.0.0.256`) is refused, as URL parsers refuse it.
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
/// assert!(policy.permits("::ffff:10.1.0.5".parse().unwrap()));
///
/// let default = AddressPolicy::default();
/// assert!(!default.permits("169.254.169.254".parse().unwrap()));
/// assert!(!default.permits("64:ff9b::a9fe:a9fe".parse().unwrap()));
/// assert!(!default.permits("fd00:ec2::254".parse().unwrap()));
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

    /// Also hands out special addresses (link-local, unspecified, multicast, the EC2
    /// service addresses). Off by default; a registry entry pointing there is far
    /// more likely an attack or a mistake than a service.
    #[must_use]
    pub fn allow_special(mut self, yes: bool) -> Self {
        self.allow_special = yes;
        self
    }

    /// Whether an endpoint may carry `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.denied(ip) {
            return false;
        }
        let IpAddr::V6(v6) = ip else {
            return self.judge(ip);
        };
        match embedded_ipv4(v6) {
            Some(v4) => !self.denied(IpAddr::V4(v4)) && self.judge(IpAddr::V4(v4)),
            None => self.judge(ip),
        }
    }

    fn denied(&self, ip: IpAddr) -> bool {
        self.deny.iter().any(|n| n.contains(ip))
    }

    /// The allow list and the special-address rule, for an address with no deny hit.
    fn judge(&self, ip: IpAddr) -> bool {
        if self.allow.iter().any(|n| n.contains(ip)) {
            return true;
        }
        if !self.allow.is_empty() {
            return false;
        }
        self.allow_special || !is_special(ip)
    }
}

/// The IPv4 address an IPv6 address carries, by the transition mechanisms that
/// deliver its traffic to an IPv4 host; `None` for a plain IPv6 address.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    let seg = v6.segments();
    let low32 = Ipv4Addr::from(bits as u32);
    if let Some(v4) = v6.to_ipv4_mapped() {
        // ::ffff:a.b.c.d
        Some(v4)
    } else if bits >> 32 == 0 {
        // IPv4-compatible ::a.b.c.d; `::` and `::1` are IPv6's own.
        (bits > 1).then_some(low32)
    } else if bits >> 32 == 0xffff_0000 {
        // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765).
        Some(low32)
    } else if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000
        || (seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 0x0001)
    {
        // NAT64: the well-known prefix 64:ff9b::/96 (RFC 6052) and the local-use
        // 64:ff9b:1::/48 (RFC 8215), read with a /96 prefix, the only length the
        // well-known prefix allows and the one NAT64 gateways use in practice.
        Some(low32)
    } else if seg[0] == 0x2002 {
        // 6to4 2002:aabb:ccdd::/48 (RFC 3056).
        Some(Ipv4Addr::from((bits >> 80) as u32))
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo 2001::/32 (RFC 4380): traffic is relayed to the client, whose address
        // is the last 32 bits inverted.
        Some(Ipv4Addr::from(!(bits as u32)))
    } else {
        None
    }
}

/// `fd00:ec2::/64`: the addresses EC2 serves inside every instance (metadata `::254`,
/// DNS `::253`, time `::123`, EKS Pod Identity `::23`). None is a service a registry
/// entry should name.
const EC2_SERVICES: u128 = 0xfd00_0ec2_0000_0000;

fn is_special(ip: IpAddr) -> bool {
    special_kind(ip).is_some()
}

/// Which kind of special address `ip` is, if it is one; named for error messages.
fn special_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("an address of \"this network\" (0.0.0.0/8)"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address (169.254.0.0/16)"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            Some("a link-local address (fe80::/10)")
        }
        IpAddr::V6(v6) if u128::from(v6) >> 64 == EC2_SERVICES => {
            Some("an EC2 service address (fd00:ec2::/64)")
        }
        _ => None,
    }
}

/// Why [`AddressPolicy::default`] refuses `ip`, or `None` when it permits it: the
/// default policy's verdict (no allow or deny networks, no `allow_special`), by the
/// same predicates, with the reason spelled out. Registration refuses these
/// addresses, since every resolver with the default policy skips an instance there.
pub(crate) fn default_refusal(ip: IpAddr) -> Option<String> {
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = embedded_ipv4(v6)
    {
        return special_kind(IpAddr::V4(v4))
            .map(|kind| format!("an IPv6 spelling of the IPv4 address {v4}, {kind}"));
    }
    special_kind(ip).map(str::to_owned)
}

/// Reads a host as an IP address the way URL parsers (WHATWG URL) and `inet_aton` do,
/// so a host name cannot carry an address past the policy in a spelling that a client
/// library later connects to.
///
/// Accepted: IPv6 with or without brackets (a `%zone` suffix is dropped); IPv4 in one
/// to four dot-separated parts, each decimal, octal (leading `0`) or hexadecimal
/// (`0x`, possibly with no digits, meaning 0), the last part filling the remaining
/// bytes (`169.254.43518`, `2852039166`); one trailing dot. Returns `None` for
/// anything else, including names that merely end in a number (see
/// [`ends_in_number`]).
pub(crate) fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let host = host.trim();
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        return parse_ipv6(inner).map(IpAddr::V6);
    }
    if host.contains(':') {
        return parse_ipv6(host).map(IpAddr::V6);
    }
    parse_ipv4(host).map(IpAddr::V4)
}

fn parse_ipv6(s: &str) -> Option<Ipv6Addr> {
    let s = s.split_once('%').map_or(s, |(addr, _zone)| addr);
    s.parse().ok()
}

/// The WHATWG "ends in a number" check: whether a URL parser would insist on reading
/// this host as IPv4 (and refuse the URL when it is not a valid one).
pub(crate) fn ends_in_number(host: &str) -> bool {
    let host = host.trim();
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

fn parse_ipv4(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let mut parts = [0u64; 4];
    let mut n = 0;
    for part in host.split('.') {
        if n == 4 {
            return None;
        }
        parts[n] = ipv4_number(part)?;
        n += 1;
    }
    let (last, head) = (parts[n - 1], &parts[..n - 1]);
    if head.iter().any(|p| *p > 255) {
        return None;
    }
    // The last part fills the bytes the others did not: 5 - n of them.
    if last >= 1u64 << (8 * (5 - n as u32)) {
        return None;
    }
    let value = head
        .iter()
        .enumerate()
        .fold(last, |acc, (i, p)| acc | (p << (8 * (3 - i as u32))));
    Some(Ipv4Addr::from(value as u32))
}

/// One part of an IPv4 literal; `None` when it is not a number or exceeds 32 bits.
fn ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is 0 to WHATWG URL.
        return Some(0);
    }
    if !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    // Leading zeros could make a long string of a small value; strip them so the
    // length check below is about magnitude.
    let digits = digits.trim_start_matches('0');
    if digits.len() > 11 {
        return None;
    }
    let v = u64::from_str_radix(if digits.is_empty() { "0" } else { digits }, radix).ok()?;
    (v <= u64::from(u32::MAX)).then_some(v)
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
    fn ipv6_forms_of_refused_addresses_are_judged_by_the_ipv4_they_carry() {
        let p = AddressPolicy::default();
        for bad in [
            "::ffff:169.254.169.254",               // IPv4-mapped
            "::169.254.169.254",                    // IPv4-compatible
            "::ffff:0:a9fe:a9fe",                   // IPv4-translated
            "64:ff9b::a9fe:a9fe",                   // NAT64 well-known prefix
            "64:ff9b::0.0.0.0",                     // NAT64 of the unspecified address
            "64:ff9b:1::a9fe:a9fe",                 // local-use NAT64, /96 layout
            "2002:a9fe:a9fe::1",                    // 6to4
            "2001:0:4136:e378:8000:63bf:5601:5601", // Teredo, client 169.254.169.254 inverted
            "::2",                                  // IPv4-compatible 0.0.0.2: "this network"
            "::ffff:224.0.0.1",                     // mapped multicast
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1", // local-use NAT64 read at /96 (its /48 position holds 0.0.0.0)
            "2002:a00:1::1",
            "::127.0.0.1",
            "::1",
            "2001:db8::1",
        ] {
            assert!(p.permits(ip(good)), "{good} must be allowed");
        }
        // A deny network catches the carried address in any form, and the IPv6 form.
        let deny10 = AddressPolicy::default().deny("10.0.0.0/8".parse().unwrap());
        for bad in ["::ffff:10.1.2.3", "64:ff9b::a01:203", "2002:a01:203::9"] {
            assert!(!deny10.permits(ip(bad)), "{bad} must be denied");
        }
        let deny_nat64 = AddressPolicy::default().deny("64:ff9b::/96".parse().unwrap());
        assert!(!deny_nat64.permits(ip("64:ff9b::a00:1")));
        // An allow list of IPv4 networks admits their IPv6 spellings.
        let allow10 = AddressPolicy::default().allow("10.0.0.0/8".parse().unwrap());
        assert!(allow10.permits(ip("::ffff:10.1.2.3")));
        assert!(!allow10.permits(ip("::ffff:11.1.2.3")));
        // Allowing all of IPv6 does not admit a refused IPv4 address in IPv6 clothing.
        let allow_v6 = AddressPolicy::default().allow("::/0".parse().unwrap());
        assert!(!allow_v6.permits(ip("::ffff:169.254.169.254")));
    }

    #[test]
    fn ec2_service_addresses_are_refused_unless_explicitly_allowed() {
        let p = AddressPolicy::default();
        for bad in [
            "fd00:ec2::254", // instance metadata over IPv6
            "fd00:ec2::23",  // EKS Pod Identity agent
            "fd00:ec2::253", // Route 53 Resolver
            "fd00:ec2::123", // Amazon Time Sync
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
        assert!(p.permits(ip("fd00:ec2:0:1::254")), "outside the /64");
        assert!(p.permits(ip("fd12:3456::1")), "other ULAs are ordinary");
        let opened = AddressPolicy::default().allow("fd00:ec2::23/128".parse().unwrap());
        assert!(opened.permits(ip("fd00:ec2::23")));
        assert!(!opened.permits(ip("fd00:ec2::254")));
    }

    #[test]
    fn ip_literals_are_read_in_every_spelling_url_parsers_accept() {
        let imds = Some(ip("169.254.169.254"));
        for s in [
            "169.254.169.254",
            "169.254.169.254.",
            "2852039166",
            "0xa9fea9fe",
            "0XA9FEA9FE",
            "0251.0376.0251.0376",
            "0xa9.0xfe.0xa9.0xfe",
            "169.254.43518",
            "169.16689662",
            "0251.0xfe.43518",
            "00000000251.254.169.254",
            " 169.254.169.254 ",
        ] {
            assert_eq!(parse_ip_literal(s), imds, "{s}");
        }
        assert_eq!(parse_ip_literal("0"), Some(ip("0.0.0.0")));
        assert_eq!(parse_ip_literal("0x"), Some(ip("0.0.0.0")));
        assert_eq!(parse_ip_literal("0.0.0.0"), Some(ip("0.0.0.0")));
        assert_eq!(parse_ip_literal("[::1]"), Some(ip("::1")));
        assert_eq!(parse_ip_literal("::1"), Some(ip("::1")));
        assert_eq!(
            parse_ip_literal("[fd00:ec2::254]"),
            Some(ip("fd00:ec2::254"))
        );
        assert_eq!(parse_ip_literal("[fe80::1%25eth0]"), Some(ip("fe80::1")));
        for not_ip in [
            "",
            ".",
            "api.example.com",
            "1.2.3.4.5",
            "256.0.0.1",
            "1.2.3.256",
            "1.2.65536",
            "4294967296",
            "08",
            "0x1g",
            "1..2",
            "[::1",
            "[1.2.3.4]",
            "99999999999999999999999999",
        ] {
            assert_eq!(parse_ip_literal(not_ip), None, "{not_ip}");
        }
        for numeric in [
            "1.2.3.4.5",
            "10.0.0.256",
            "foo.123",
            "foo.0x",
            "08",
            "a.0x1f.",
        ] {
            assert!(ends_in_number(numeric), "{numeric}");
        }
        for name in ["api.example.com", "123.example", "0x.example", "x1"] {
            assert!(!ends_in_number(name), "{name}");
        }
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
