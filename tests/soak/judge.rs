//! The default address policy's rules, written out independently of the crate, and
//! a test that this judge refuses every spelling of the denied registrations.

use super::*;

/// The default address policy's rules, written out independently of the crate:
/// link-local, unspecified, multicast and broadcast IPv4; unspecified, multicast and
/// link-local IPv6, EC2's IPv6 service addresses, and IPv6 forms that embed a refused
/// IPv4 address (mapped, compatible, translated, NAT64, 6to4).
pub(crate) fn refused(ip: IpAddr) -> bool {
    pub(crate) fn v4(ip: Ipv4Addr) -> bool {
        ip.is_link_local() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()
    }
    match ip {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => {
            let n = u128::from(ip);
            let low = Ipv4Addr::from(n as u32);
            let seg = ip.segments();
            let embedded = match n >> 32 {
                0 if n > 1 => Some(low),                      // ::a.b.c.d
                0xffff | 0xffff_0000 => Some(low),            // ::ffff:a.b.c.d, ::ffff:0:a.b.c.d
                0x0064_ff9b_0000_0000_0000_0000 => Some(low), // 64:ff9b::a.b.c.d
                _ if seg[0] == 0x2002 => Some(Ipv4Addr::from(
                    (u32::from(seg[1]) << 16) | u32::from(seg[2]), // 2002:aabb:ccdd::
                )),
                _ => None,
            };
            let ec2: [Ipv6Addr; 2] = [
                "fd00:ec2::254".parse().unwrap(),
                "fd00:ec2::23".parse().unwrap(),
            ];
            embedded.is_some_and(v4)
                || ip.is_unspecified()
                || ip.is_multicast()
                || seg[0] & 0xffc0 == 0xfe80
                || ec2.contains(&ip)
        }
    }
}

/// A host value read as an IP address the way URL parsers read it: IPv6 in brackets
/// or not, and IPv4 in 1 to 4 parts, each decimal, octal (leading 0) or hex (0x).
pub(crate) fn ip_literal(host: &str) -> Option<IpAddr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse() {
        return Some(ip);
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let nums = parts
        .iter()
        .map(|p| {
            let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
                (h, 16)
            } else if p.len() > 1 && p.starts_with('0') {
                (&p[1..], 8)
            } else {
                (*p, 10)
            };
            match digits {
                "" if radix == 16 => Some(0),
                "" => None,
                d if d.chars().all(|c| c.is_digit(radix)) => u64::from_str_radix(d, radix).ok(),
                _ => None,
            }
        })
        .collect::<Option<Vec<u64>>>()?;
    let (last, init) = nums.split_last()?;
    let width = 8 * (5 - nums.len() as u32);
    if init.iter().any(|&n| n > 255) || *last >= 1u64 << width {
        return None;
    }
    let addr = init
        .iter()
        .enumerate()
        .fold(*last, |acc, (i, n)| acc | n << (24 - 8 * i));
    Some(IpAddr::V4(Ipv4Addr::from(addr as u32)))
}

/// The judge the soak relies on: every denied registration is refused in every
/// spelling it may reach the operation in, and the backends' address is not.
#[test]
fn the_address_judge_refuses_every_denied_spelling() {
    for (id, _, value) in DENIED {
        let ip = ip_literal(value).unwrap_or_else(|| panic!("{id}: {value} is an address"));
        assert!(refused(ip), "{id}: {value} must be refused");
    }
    for value in [
        "0xa9fea9fe",
        "0251.0376.0251.0376",
        "169.254.43518",
        "0.0.0.0",
        "[fe80::1]",
        "64:ff9b::a9fe:a9fe",
        "::169.254.169.254",
        "::ffff:0:a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "fd00:ec2::23",
        "224.0.0.1",
        "255.255.255.255",
    ] {
        let ip = ip_literal(value).unwrap_or_else(|| panic!("{value} is an address"));
        assert!(refused(ip), "{value} must be refused");
    }
    for value in ["127.0.0.1", "10.1.2.3", "::1", "2001:db8::1", "2130706433"] {
        let ip = ip_literal(value).unwrap_or_else(|| panic!("{value} is an address"));
        assert!(!refused(ip), "{value} is allowed");
    }
    for name in ["web.shared", "example.com", "1.2.3.4.5", "08.1.1.1"] {
        assert!(
            ip_literal(name).is_none_or(|ip| !refused(ip)),
            "{name} is a host name"
        );
    }
}
