//! RegisterInstance's rules for instance ids and attributes, checked before any call.
//!
//! From the Cloud Map API reference (RegisterInstance, `Attributes` and `InstanceId`):
//! an instance id is 1 to 64 characters of `[0-9a-zA-Z_/:.@-]`; an attribute key is 1
//! to 255 printable ASCII characters without spaces (`^[a-zA-Z0-9!-~]+$`); a value is
//! at most 1,024 printable ASCII characters, spaces and tabs allowed but not first
//! (`^([a-zA-Z0-9!-~][ \ta-zA-Z0-9!-~]*){0,1}[a-zA-Z0-9!-~]{0,1}$`); at most 30 custom
//! attributes; all keys and values together at most 5,000 characters. Keys starting
//! with `AWS_` are reserved: only the documented ones are accepted, each with its own
//! rule (an address that parses and that the default `AddressPolicy` admits, since
//! every resolver keeping that default skips the others; a port as resolvers read
//! it: plain digits, 1 to 65535; `HEALTHY`/`UNHEALTHY`), and an alias
//! (`AWS_ALIAS_DNS_NAME`) excludes the `AWS_INSTANCE_*` attributes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::discover::instance::{
    parse_port, ATTR_ALIAS, ATTR_CNAME, ATTR_IPV4, ATTR_IPV6, ATTR_PORT,
};
use crate::endpoint::address_policy::{default_refusal, ends_in_number, parse_ip_literal};
use crate::error::Error;

/// The attribute that sets a custom health check's first status.
pub(crate) const ATTR_INIT_HEALTH: &str = "AWS_INIT_HEALTH_STATUS";
/// The attribute naming an EC2 instance (HTTP namespaces only).
pub(crate) const ATTR_EC2_INSTANCE_ID: &str = "AWS_EC2_INSTANCE_ID";

/// Custom (non-`AWS_`) attributes one instance may carry.
pub(crate) const MAX_CUSTOM: usize = 30;
/// Longest key.
pub(crate) const MAX_KEY: usize = 255;
/// Longest value.
pub(crate) const MAX_VALUE: usize = 1024;
/// All keys and values together.
pub(crate) const MAX_TOTAL: usize = 5000;
/// Longest instance id (and `CreatorRequestId`).
pub(crate) const MAX_ID: usize = 64;

const RESERVED: [&str; 7] = [
    ATTR_ALIAS,
    ATTR_EC2_INSTANCE_ID,
    ATTR_INIT_HEALTH,
    ATTR_CNAME,
    ATTR_IPV4,
    ATTR_IPV6,
    ATTR_PORT,
];

/// An instance id: 1 to 64 characters of `[0-9a-zA-Z_/:.@-]`.
pub(crate) fn check_instance_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(Error::invalid(format!(
            "instance id must be 1 to {MAX_ID} characters, got {}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_/:.@-".contains(*c)))
    {
        return Err(Error::invalid(format!(
            "instance id {id:?} has {c:?}: only letters, digits and _ / : . @ - are allowed"
        )));
    }
    Ok(())
}

/// All of an instance's attributes, as RegisterInstance would judge them.
pub(crate) fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<(), Error> {
    let mut custom = 0;
    let mut total = 0;
    for (key, value) in attributes {
        check_key(key)?;
        check_value(key, value)?;
        total += key.len() + value.len();
        if key.starts_with("AWS_") {
            check_reserved(key, value)?;
        } else {
            custom += 1;
        }
    }
    if custom > MAX_CUSTOM {
        return Err(Error::invalid(format!(
            "{custom} custom attributes: Cloud Map allows at most {MAX_CUSTOM} per instance"
        )));
    }
    if total > MAX_TOTAL {
        return Err(Error::invalid(format!(
            "attributes total {total} characters (keys and values): Cloud Map allows at \
             most {MAX_TOTAL}"
        )));
    }
    if attributes.contains_key(ATTR_ALIAS)
        && let Some(k) = attributes.keys().find(|k| k.starts_with("AWS_INSTANCE_"))
    {
        return Err(Error::invalid(format!(
            "{ATTR_ALIAS} excludes the AWS_INSTANCE_* attributes, but {k} is set"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Error::invalid(format!(
            "attribute key must be 1 to {MAX_KEY} characters, got {}",
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "attribute key {key:?} has {c:?}: only printable ASCII without spaces is allowed"
        )));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_VALUE {
        return Err(Error::invalid(format!(
            "attribute {key:?} value is {} characters: at most {MAX_VALUE} are allowed",
            value.len()
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(Error::invalid(format!(
            "attribute {key:?} value has {c:?}: only printable ASCII, spaces and tabs are \
             allowed"
        )));
    }
    if value.starts_with([' ', '\t']) {
        return Err(Error::invalid(format!(
            "attribute {key:?} value starts with white space"
        )));
    }
    Ok(())
}

fn check_reserved(key: &str, value: &str) -> Result<(), Error> {
    if !RESERVED.contains(&key) {
        return Err(Error::invalid(format!(
            "attribute key {key:?}: keys starting with AWS_ are reserved; the documented \
             ones are {}",
            RESERVED.join(", ")
        )));
    }
    let address = match key {
        ATTR_IPV4 => value.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        ATTR_IPV6 => value.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        _ => None,
    };
    // Judged by the default address policy's own rule: an address it refuses is
    // skipped by every resolver that keeps the default, so the instance would be
    // registered and take no traffic.
    if let Some(why) = address.and_then(default_refusal) {
        return Err(Error::invalid(format!(
            "attribute {key} is {value}, {why}: no caller can connect to it through a \
             resolver with the default AddressPolicy, which skips it; register the address \
             callers reach this process at (an address only a resolver with an allow list \
             or allow_special admits must be registered through the AWS SDK directly)"
        )));
    }
    if key == ATTR_CNAME || key == ATTR_ALIAS {
        check_host(key, value)?;
    }
    let ok = match key {
        ATTR_IPV4 | ATTR_IPV6 => address.is_some(),
        // As every resolver reads it: `+80` and `080` would register and then be
        // skipped by every caller.
        ATTR_PORT => parse_port(value).is_some(),
        ATTR_INIT_HEALTH => value == "HEALTHY" || value == "UNHEALTHY",
        _ => !value.is_empty(),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "attribute {key} has the malformed value {value:?}"
        )))
    }
}

/// A host name as resolvers read it (`endpoint/parse.rs`): an IP literal in any
/// spelling a URL parser takes is judged as the address it spells, by the default
/// policy; a name that ends in a number but is no IP literal is skipped as malformed.
fn check_host(key: &str, value: &str) -> Result<(), Error> {
    if let Some(ip) = parse_ip_literal(value) {
        if let Some(why) = default_refusal(ip) {
            return Err(Error::invalid(format!(
                "attribute {key} is {value}, read as the IP address {ip}, {why}: a \
                 resolver with the default AddressPolicy skips it; register the address \
                 or name callers reach this process at"
            )));
        }
    } else if ends_in_number(value) {
        return Err(Error::invalid(format!(
            "attribute {key} is {value}, which ends in a number but is not an IP \
             address: resolvers (and URL parsers) refuse it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn custom(n: usize) -> BTreeMap<String, String> {
        (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect()
    }

    #[test]
    fn instance_ids() {
        for ok in ["i-0abc", "a", "ns/svc:1.2@x_y", &"x".repeat(64)] {
            assert!(check_instance_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "é", "a#b", &"x".repeat(65)] {
            let err = check_instance_id(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn thirty_custom_attributes_pass_and_thirty_one_fail() {
        assert!(check_attributes(&custom(30)).is_ok());
        let err = check_attributes(&custom(31)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("31 custom attributes"), "{err}");
        // Reserved keys do not count against the 30.
        let mut with_address = custom(30);
        with_address.insert(ATTR_IPV4.into(), "10.0.0.7".into());
        with_address.insert(ATTR_PORT.into(), "8080".into());
        assert!(check_attributes(&with_address).is_ok());
    }

    #[test]
    fn keys_and_values() {
        assert!(check_attributes(&attrs(&[("stage", "prod env\tx")])).is_ok());
        assert!(check_attributes(&attrs(&[("empty", "")])).is_ok());
        let long_key = "k".repeat(256);
        let long_value = "v".repeat(1025);
        for bad in [
            attrs(&[("", "x")]),
            attrs(&[(&long_key, "x")]),
            attrs(&[("a b", "x")]),
            attrs(&[("k", &long_value)]),
            attrs(&[("k", " leading")]),
            attrs(&[("k", "new\nline")]),
            attrs(&[("k", "é")]),
        ] {
            let err = check_attributes(&bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(check_attributes(&attrs(&[(&"k".repeat(255), &"v".repeat(1024))])).is_ok());
    }

    /// Addresses no caller can connect to are refused before any call, in every
    /// spelling; loopback, private and public ones are not.
    #[test]
    fn addresses_no_caller_can_reach_are_refused() {
        for (key, bad) in [
            (ATTR_IPV4, "0.0.0.0"),
            (ATTR_IPV4, "0.1.2.3"),
            (ATTR_IPV4, "224.0.0.1"),
            (ATTR_IPV4, "239.255.255.250"),
            (ATTR_IPV4, "255.255.255.255"),
            (ATTR_IPV6, "::"),
            (ATTR_IPV6, "0:0:0:0:0:0:0:0"),
            (ATTR_IPV6, "ff02::1"),
            (ATTR_IPV6, "::ffff:0.0.0.0"),
            (ATTR_IPV6, "::ffff:224.0.0.1"),
            (ATTR_IPV6, "::ffff:255.255.255.255"),
        ] {
            let err = check_attributes(&attrs(&[(key, bad)])).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(err.message().contains("no caller can connect"), "{err}");
        }
        for (key, ok) in [
            (ATTR_IPV4, "127.0.0.1"),
            (ATTR_IPV4, "10.0.0.7"),
            (ATTR_IPV4, "203.0.113.9"),
            (ATTR_IPV4, "255.255.255.254"),
            (ATTR_IPV6, "::1"),
            (ATTR_IPV6, "2001:db8::7"),
            (ATTR_IPV6, "fd12::7"),
            (ATTR_IPV6, "::ffff:10.0.0.7"),
        ] {
            assert!(check_attributes(&attrs(&[(key, ok)])).is_ok(), "{ok}");
        }
    }

    /// Every address the default `AddressPolicy` skips is refused, in every spelling it
    /// reads (before, link-local, the EC2 service range and the IPv4 carried by NAT64,
    /// 6to4, Teredo, compatible and translated addresses were registered, and then
    /// skipped by every resolver with the default policy, so the instance took no
    /// traffic); what it admits (loopback, private, other ULAs) is accepted. The rule is
    /// the policy's own: over a seeded sample, registration accepts an address exactly
    /// when the default policy permits it.
    #[test]
    fn addresses_the_default_policy_skips_are_refused() {
        use crate::endpoint::address_policy::AddressPolicy;
        let refused = [
            (ATTR_IPV4, "169.254.169.254", "link-local"),
            (ATTR_IPV4, "169.254.0.1", "link-local"),
            (ATTR_IPV6, "fe80::1", "link-local"),
            (ATTR_IPV6, "febf::1", "link-local"),
            (ATTR_IPV6, "fd00:ec2::254", "EC2 service"),
            (ATTR_IPV6, "fd00:ec2::23", "EC2 service"),
            (ATTR_IPV6, "::ffff:169.254.169.254", "link-local"),
            (ATTR_IPV6, "::169.254.169.254", "link-local"),
            (ATTR_IPV6, "::ffff:0:a9fe:a9fe", "link-local"),
            (ATTR_IPV6, "64:ff9b::a9fe:a9fe", "link-local"),
            (ATTR_IPV6, "64:ff9b:1::a9fe:a9fe", "link-local"),
            (ATTR_IPV6, "64:ff9b::e000:1", "multicast"),
            (ATTR_IPV6, "2002:a9fe:a9fe::1", "link-local"),
            (ATTR_IPV6, "2002:0:1::1", "this network"),
            (
                ATTR_IPV6,
                "2001:0:4136:e378:8000:63bf:5601:5601",
                "link-local",
            ),
            (ATTR_IPV6, "::2", "this network"),
        ];
        let mut refused_now = 0;
        for (key, bad, why) in refused {
            if let Err(err) = check_attributes(&attrs(&[(key, bad)])) {
                assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
                let text = err.message();
                assert!(text.contains(bad) && text.contains(why), "{bad}: {err}");
                assert!(text.contains("AddressPolicy"), "{bad}: {err}");
                refused_now += 1;
            }
        }
        assert_eq!(refused_now, refused.len(), "refused of {}", refused.len());
        for (key, ok) in [
            (ATTR_IPV4, "192.168.1.1"),
            (ATTR_IPV4, "169.253.255.255"),
            (ATTR_IPV4, "169.255.0.1"),
            (ATTR_IPV6, "fd00:ec2:0:1::254"),
            (ATTR_IPV6, "fec0::1"),
            (ATTR_IPV6, "64:ff9b::a00:7"),
            (ATTR_IPV6, "2002:a00:7::1"),
            (ATTR_IPV6, "::127.0.0.1"),
            (ATTR_IPV6, "::ffff:192.168.1.1"),
        ] {
            assert!(check_attributes(&attrs(&[(key, ok)])).is_ok(), "{ok}");
        }
        // The same verdict as the default policy, address by address: the listed
        // ones, and a seeded sample biased towards the special ranges and spellings.
        let policy = AddressPolicy::default();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            state
        };
        let prefixes: [u128; 8] = [
            0,
            0xffff << 32,
            0xffff_0000 << 32,
            0x0064_ff9b << 96,
            0x2002 << 112,
            0x2001 << 112,
            0xfd00_0ec2 << 96,
            0xfe80 << 112,
        ];
        let v4s: [u32; 6] = [
            0xa9fe_0000,
            0,
            0xe000_0000,
            0xffff_ff00,
            0x0a00_0000,
            0x7f00_0000,
        ];
        let (mut agreed, mut skipped) = (0, 0);
        for _ in 0..4000 {
            let r = next();
            let v4 = v4s[(r % 6) as usize] | ((r >> 8) as u32 & 0xffff);
            let ip: IpAddr = match (r >> 32) % 4 {
                0 => IpAddr::V4(Ipv4Addr::from(v4)),
                1 => IpAddr::V4(Ipv4Addr::from((r >> 16) as u32)),
                _ => {
                    let prefix = prefixes[((r >> 40) % 8) as usize];
                    let low = if (r >> 48) % 2 == 0 {
                        u128::from(v4)
                    } else {
                        u128::from(next())
                    };
                    // 6to4 carries the IPv4 address in bits 80..112; Teredo inverted.
                    let bits = match prefix >> 112 {
                        0x2002 => prefix | u128::from(v4) << 80 | low,
                        0x2001 => prefix | u128::from(!v4),
                        _ => prefix | low,
                    };
                    IpAddr::V6(Ipv6Addr::from(bits))
                }
            };
            let (key, value) = match ip {
                IpAddr::V4(v4) => (ATTR_IPV4, v4.to_string()),
                IpAddr::V6(v6) => (ATTR_IPV6, v6.to_string()),
            };
            let accepted = check_attributes(&attrs(&[(key, &value)])).is_ok();
            assert_eq!(accepted, policy.permits(ip), "{value}");
            agreed += 1;
            skipped += usize::from(!accepted);
        }
        assert_eq!(agreed, 4000);
        // The sample exercises both verdicts.
        assert!(
            skipped > 1000 && skipped < 3000,
            "{skipped} of 4000 skipped"
        );
    }

    /// A host name (`AWS_INSTANCE_CNAME`, `AWS_ALIAS_DNS_NAME`) that resolvers read as
    /// an IP address the default policy refuses, in any spelling a URL parser takes,
    /// or that ends in a number without being an IP address, is skipped by every
    /// resolver keeping the default; registration refuses it (before, each was
    /// registered). A name, and an IP literal the policy admits, are accepted.
    #[test]
    fn a_host_name_every_resolver_skips_is_refused() {
        let refused = [
            (ATTR_CNAME, "169.254.169.254"),
            (ATTR_CNAME, "0xa9fea9fe"),
            (ATTR_CNAME, "2852039166"),
            (ATTR_CNAME, "[fd00:ec2::254]"),
            (ATTR_CNAME, "0.0.0.0"),
            (ATTR_CNAME, "10.0.0.256"),
            (ATTR_ALIAS, "169.254.170.2"),
            (ATTR_ALIAS, "1.2.3.4.5"),
        ];
        let mut refused_now = 0;
        for (key, bad) in refused {
            if let Err(err) = check_attributes(&attrs(&[(key, bad)])) {
                assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
                assert!(err.message().contains(bad), "{bad}: {err}");
                refused_now += 1;
            }
        }
        assert_eq!(refused_now, refused.len(), "refused of {}", refused.len());
        for (key, ok) in [
            (ATTR_CNAME, "web.internal.example.com"),
            (ATTR_CNAME, "10.0.0.7"),
            (ATTR_CNAME, "123.example"),
            (ATTR_ALIAS, "lb-1.elb.amazonaws.com."),
        ] {
            assert!(check_attributes(&attrs(&[(key, ok)])).is_ok(), "{ok}");
        }
    }

    #[test]
    fn total_size_is_bounded() {
        // Five values of 1,000 characters plus their keys pass 5,000.
        let big: BTreeMap<_, _> = (0..5)
            .map(|i| (format!("k{i}"), "v".repeat(1000)))
            .collect();
        let err = check_attributes(&big).unwrap_err();
        assert!(err.message().contains("5000"), "{err}");
    }

    /// A port is judged as every resolver reads it (`+80`, `080` are refused there):
    /// such a value was registered, and then skipped by every caller as "not a
    /// port", so the instance took no traffic.
    #[test]
    fn a_port_resolvers_would_skip_is_refused() {
        for bad in ["+80", "080", "0", "00080", "8080 "] {
            let err = check_attributes(&attrs(&[(ATTR_PORT, bad)])).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        for good in ["1", "80", "65535"] {
            assert!(
                check_attributes(&attrs(&[(ATTR_PORT, good)])).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn reserved_keys_only_as_documented() {
        let ok = attrs(&[
            (ATTR_IPV4, "10.0.0.7"),
            (ATTR_IPV6, "2001:db8::7"),
            (ATTR_PORT, "8080"),
            (ATTR_INIT_HEALTH, "UNHEALTHY"),
        ]);
        assert!(check_attributes(&ok).is_ok());
        for bad in [
            attrs(&[("AWS_SECRET", "x")]),
            attrs(&[(ATTR_IPV4, "999.0.0.1")]),
            attrs(&[(ATTR_IPV6, "10.0.0.1")]),
            attrs(&[(ATTR_PORT, "abc")]),
            attrs(&[(ATTR_PORT, "70000")]),
            attrs(&[(ATTR_PORT, "0")]),
            attrs(&[(ATTR_INIT_HEALTH, "UNKNOWN")]),
            attrs(&[(ATTR_ALIAS, "lb.example.com"), (ATTR_IPV4, "10.0.0.7")]),
            attrs(&[(ATTR_CNAME, "")]),
        ] {
            let err = check_attributes(&bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
