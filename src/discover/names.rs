//! Cloud Map's naming rules, checked before any network call.

use crate::discover::instance::Shown;
use crate::error::Error;

/// Namespace names: 1 to 1,024 printable ASCII characters, no spaces.
pub(crate) fn check_namespace(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 1024 {
        return Err(Error::invalid(format!(
            "namespace name must be 1 to 1024 characters, got {}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "namespace name {name:?} has {c:?}: only printable ASCII without spaces is allowed"
        )));
    }
    Ok(())
}

/// Service names: DNS-label style (letters, digits, `_` and `-`, labels of 1 to 63
/// characters joined by dots, no label starting or ending with `-`), at most 127
/// characters in all.
pub(crate) fn check_service(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 127 {
        return Err(Error::invalid(format!(
            "service name must be 1 to 127 characters, got {}",
            name.len()
        )));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(Error::invalid(format!(
                "service name {name:?} is not DNS-label style (label {label:?})"
            )));
        }
    }
    Ok(())
}

/// Attribute keys and values of a query: keys 1 to 255 printable ASCII characters,
/// values at most 1,024 characters with no control character but the tab (Cloud
/// Map's limits for instance attributes, which `QueryParameters` and
/// `OptionalParameters` share: a value may hold tabs, and `Registration` registers
/// such values, so a query for one must not be refused here).
pub(crate) fn check_attribute(key: &str, value: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        // Shown cut short: the key is the caller's, of any length, and the error
        // text (logged, sent to a watch) must not carry all of it.
        return Err(Error::invalid(format!(
            "attribute key {} must be 1 to 255 printable ASCII characters",
            Shown(key)
        )));
    }
    if value.len() > 1024 || value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Error::invalid(format!(
            "attribute {key:?} value must be at most 1024 printable characters"
        )));
    }
    Ok(())
}

/// Owner accounts (`OwnerAccount` of DiscoverInstances): an AWS account id, exactly
/// 12 ASCII digits.
pub(crate) fn check_owner_account(account: &str) -> Result<(), Error> {
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(format!(
            "owner account {} is not an AWS account id (12 digits)",
            Shown(account)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_accounts() {
        assert!(check_owner_account("123456789012").is_ok());
        assert!(check_owner_account("000000000000").is_ok());
        for bad in [
            "",
            "12345678901",
            "1234567890123",
            "12345678901a",
            " 23456789012",
            "١٢٣٤٥٦٧٨٩٠١٢",
            "arn:aws:iam::123456789012:root",
        ] {
            let e = check_owner_account(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
        let long = "9".repeat(10_000);
        let e = check_owner_account(&long).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn namespaces() {
        for ok in ["shared", "prod.internal", "a", &"n".repeat(1024), "x_y-z/1"] {
            assert!(check_namespace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "tab\t", "é", &"n".repeat(1025)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn services() {
        for ok in ["logs", "api.v2", "_http._tcp", "a-b", "x", &"s".repeat(63)] {
            assert!(check_service(ok).is_ok(), "{ok}");
        }
        let long = format!("{}.{}", "a".repeat(63), "b".repeat(64));
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            ".",
            "a b",
            "a/b",
            &"s".repeat(64),
            &long,
        ] {
            assert!(check_service(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attributes() {
        assert!(check_attribute("stage", "prod").is_ok());
        assert!(check_attribute("", "x").is_err());
        assert!(check_attribute("k", "a\nb").is_err());
    }

    /// The refusal of a key too long names it cut short, as the other name checks
    /// do: a 100,000-character key made an error text of 100,075 characters.
    #[test]
    fn a_long_attribute_key_is_named_cut_short() {
        let long = "k".repeat(100_000);
        for (key, value) in [(long.as_str(), "v"), ("k\u{1b}", "v")] {
            let e = check_attribute(key, value).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            assert!(
                e.to_string().len() < 200,
                "{} characters",
                e.to_string().len()
            );
        }
    }

    /// Cloud Map's attribute values (`AttrValue`, which `QueryParameters` and
    /// `OptionalParameters` use too) may hold a tab, and `Registration` registers
    /// one: a query for that value must reach the registry, not be refused as
    /// `InvalidInput` before any call.
    #[tokio::test]
    async fn a_query_value_may_hold_a_tab_as_cloud_map_allows() {
        use crate::{Instance, Resolver, StaticDiscovery};
        assert!(check_attribute("team", "blue\tgreen").is_ok());
        let ip = "127.0.0.1".parse().unwrap();
        let registry = StaticDiscovery::new().with_instance(
            "shared",
            "web",
            Instance::new("a")
                .ipv4(ip)
                .port(1)
                .attribute("team", "blue\tgreen"),
        );
        let resolver = Resolver::builder(registry).build().unwrap();
        let ep = resolver
            .query("shared", "web")
            .attribute("team", "blue\tgreen")
            .resolve()
            .await
            .unwrap();
        assert_eq!(ep.instance_id(), "a");
    }
}
