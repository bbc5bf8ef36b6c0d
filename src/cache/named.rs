//! How error texts name a key: `service "web" in namespace "shared"`, with the
//! namespace's owner account and the query's attributes when it has them. Every
//! error a lookup returns for a key starts with it (`Error::for_key`, in
//! `cold.rs`), so that a process resolving many keys can tell from the error
//! alone which one failed: a registry's answer seldom names what was asked.
//!
//! One line and bounded whatever the caller passed (the names are checked only
//! after an error may have to name them): names are shown as [`Shown`] shows
//! registry values (quoted, escaped, cut to 64 characters), attribute keys and
//! values bare when short and plain, else as [`Shown`], and at most
//! [`MAX_PARAMS`] attributes of each list, then how many more.

use std::fmt;

use super::key::KeyRef;
use crate::discover::instance::{Shown, SHOWN_CHARS};

/// How many attributes of a list (required, preferred) a key's name shows.
pub(crate) const MAX_PARAMS: usize = 3;

/// A key as error texts name it (see the module's docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Named<'a>(pub(crate) KeyRef<'a>);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Who(self.0).fmt(f)?;
        if !self.0.query.is_empty() {
            write!(f, " matching {}", Params(self.0.query))?;
        }
        if !self.0.optional.is_empty() {
            write!(f, " preferring {}", Params(self.0.optional))?;
        }
        Ok(())
    }
}

/// The key's service, namespace and owner account, without its attributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a>(pub(crate) KeyRef<'a>);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} in namespace {}",
            Shown(self.0.service),
            Shown(self.0.namespace)
        )?;
        if let Some(owner) = self.0.owner {
            write!(f, " (owner account {})", Bare(owner))?;
        }
        Ok(())
    }
}

/// Attributes as `key=value, key=value`, at most [`MAX_PARAMS`] of them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params<'a>(pub(crate) &'a [(String, String)]);

impl fmt::Display for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().take(MAX_PARAMS).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{}={}", Bare(k), Bare(v))?;
        }
        if self.0.len() > MAX_PARAMS {
            write!(f, " and {} more", self.0.len() - MAX_PARAMS)?;
        }
        Ok(())
    }
}

/// A value as it is when it is short and plain (printable ASCII without quotes,
/// separators or backslashes: `stage`, `prod`, `123456789012`), so common texts
/// read as they always did; otherwise as [`Shown`] shows it.
#[derive(Debug, Clone, Copy)]
struct Bare<'a>(&'a str);

impl fmt::Display for Bare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | ',' | '=' | ':');
        if !self.0.is_empty() && self.0.len() <= SHOWN_CHARS && self.0.chars().all(plain) {
            f.write_str(self.0)
        } else {
            Shown(self.0).fmt(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::health_filter::HealthFilter;

    fn pairs(n: usize, value: &str) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("k{i}"), value.to_owned()))
            .collect()
    }

    #[test]
    fn a_plain_key_reads_as_written() {
        let key = KeyRef::plain("shared", "web", HealthFilter::All);
        assert_eq!(
            Named(key).to_string(),
            "service \"web\" in namespace \"shared\""
        );
        let query = pairs(1, "prod");
        let optional = vec![("AVAILABILITY_ZONE".to_owned(), "use1-az1".to_owned())];
        let key = KeyRef {
            query: &query,
            optional: &optional,
            ..key.owned_by(Some("111122223333"))
        };
        assert_eq!(
            Named(key).to_string(),
            "service \"web\" in namespace \"shared\" (owner account 111122223333) \
             matching k0=prod preferring AVAILABILITY_ZONE=use1-az1"
        );
    }

    /// Whatever the caller passed (names and attributes are checked after an
    /// error may name them), the name stays one short line.
    #[test]
    fn a_hostile_key_is_named_on_one_bounded_line() {
        let long = "x\n\u{1b}[2J".repeat(10_000);
        let query = pairs(1_000, &long);
        let key = KeyRef {
            query: &query,
            optional: &query,
            ..KeyRef::plain(&long, &long, HealthFilter::All).owned_by(Some(&long))
        };
        let text = Named(key).to_string();
        assert!(text.len() < 2_000, "{} bytes", text.len());
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains(" and 997 more preferring "), "{text}");
        // A value with a separator is quoted, so the list cannot be misread.
        let query = vec![("a".to_owned(), "b, c=d".to_owned())];
        let key = KeyRef {
            query: &query,
            ..KeyRef::plain("ns", "svc", HealthFilter::All)
        };
        assert!(Named(key).to_string().ends_with("matching a=\"b, c=d\""));
    }
}

#[cfg(test)]
#[path = "named_tests.rs"]
mod paths;
