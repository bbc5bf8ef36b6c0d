//! A registered instance as the registry describes it: an id and its attributes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The attribute holding an instance's IPv4 address.
pub const ATTR_IPV4: &str = "AWS_INSTANCE_IPV4";
/// The attribute holding an instance's IPv6 address.
pub const ATTR_IPV6: &str = "AWS_INSTANCE_IPV6";
/// The attribute holding an instance's port.
pub const ATTR_PORT: &str = "AWS_INSTANCE_PORT";
/// The attribute holding an instance's CNAME host name.
pub const ATTR_CNAME: &str = "AWS_INSTANCE_CNAME";
/// The attribute holding an alias target's DNS name (an ELB, for example).
pub const ATTR_ALIAS: &str = "AWS_ALIAS_DNS_NAME";

/// The health the registry reports for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HealthStatus {
    /// Passing its health check (or no health check configured).
    #[default]
    Healthy,
    /// Failing its health check.
    Unhealthy,
    /// The registry does not know yet.
    Unknown,
}

impl HealthStatus {
    /// The registry's spelling: `HEALTHY`, `UNHEALTHY` or `UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "HEALTHY",
            HealthStatus::Unhealthy => "UNHEALTHY",
            HealthStatus::Unknown => "UNKNOWN",
        }
    }

    /// Parses the registry's spelling, ignoring ASCII case.
    pub fn parse(s: &str) -> Option<Self> {
        [
            HealthStatus::Healthy,
            HealthStatus::Unhealthy,
            HealthStatus::Unknown,
        ]
        .into_iter()
        .find(|h| h.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered instance: an id, its attributes and its health.
///
/// Built with chained setters that write the registry's well-known attributes.
/// Nothing is validated here; malformed values are caught when the instance is turned
/// into an [`Endpoint`](crate::Endpoint), where the instance is skipped with a warning.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::Instance;
///
/// let inst = Instance::new("i-1")
///     .ipv4("10.0.0.7".parse().unwrap())
///     .port(8080)
///     .attribute("stage", "prod");
/// assert_eq!(inst.attribute_value("AWS_INSTANCE_PORT"), Some("8080"));
/// assert_eq!(inst.attribute_value("stage"), Some("prod"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    id: String,
    attributes: BTreeMap<String, String>,
    health: HealthStatus,
}

impl Instance {
    /// An instance with this id, no attributes, healthy.
    pub fn new(id: impl Into<String>) -> Self {
        Instance {
            id: id.into(),
            attributes: BTreeMap::new(),
            health: HealthStatus::Healthy,
        }
    }

    /// Sets `AWS_INSTANCE_IPV4`.
    #[must_use]
    pub fn ipv4(self, ip: Ipv4Addr) -> Self {
        self.attribute(ATTR_IPV4, ip.to_string())
    }

    /// Sets `AWS_INSTANCE_IPV6`.
    #[must_use]
    pub fn ipv6(self, ip: Ipv6Addr) -> Self {
        self.attribute(ATTR_IPV6, ip.to_string())
    }

    /// Sets `AWS_INSTANCE_PORT`.
    #[must_use]
    pub fn port(self, port: u16) -> Self {
        self.attribute(ATTR_PORT, port.to_string())
    }

    /// Sets `AWS_INSTANCE_CNAME`: the instance is reached by host name.
    #[must_use]
    pub fn cname(self, host: impl Into<String>) -> Self {
        self.attribute(ATTR_CNAME, host)
    }

    /// Sets any attribute, replacing an earlier value.
    #[must_use]
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Sets the health the registry reports.
    #[must_use]
    pub fn health(mut self, health: HealthStatus) -> Self {
        self.health = health;
        self
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// One attribute's value.
    pub fn attribute_value(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// All attributes, sorted by key.
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.attributes
    }

    /// The health the registry reports.
    pub fn health_status(&self) -> HealthStatus {
        self.health
    }

    pub(crate) fn set_health(&mut self, health: HealthStatus) {
        self.health = health;
    }

    pub(crate) fn into_parts(self) -> (String, BTreeMap<String, String>, HealthStatus) {
        (self.id, self.attributes, self.health)
    }
}

/// Reads `AWS_INSTANCE_PORT`: ASCII digits only, no sign, no leading zero, 1-65535.
/// `u16::from_str` would also take `+80` and `080`, spellings no registration tool
/// writes; port 0 cannot be connected to. Parsing (`endpoint/parse.rs`) and the
/// registration's check (`register/attributes.rs`) both read it here, so that what
/// registers is what callers reach.
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 5 || b[0] == b'0' || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.parse::<u32>().ok().and_then(|p| u16::try_from(p).ok())
}

/// How much of a registry value a log line or error message shows.
pub(crate) const SHOWN_CHARS: usize = 64;

/// A registry value as logs show it: quoted and escaped like `{:?}`, cut to
/// [`SHOWN_CHARS`] characters with an ellipsis and the full length, so that a hostile
/// or broken 10 KB attribute cannot flood the logs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// How much of a registry's error code or message an error's text shows.
pub(crate) const MESSAGE_CHARS: usize = 512;

/// A registry's error code or message as an error's text shows it: as it is when
/// short and printable (no quotes, so an AWS message reads as AWS wrote it);
/// otherwise with control and invisible formatting characters escaped as `{:?}`
/// does (`\n`, `\u{1b}`), so that it stays one line that cannot drive a terminal
/// or forge a log line, and cut to [`MESSAGE_CHARS`] with an ellipsis and the full
/// length. The answer's size is the registry's (or a proxy's) choice; its whole
/// text stays in the error's `source()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShownMessage<'a>(pub(crate) &'a str);

impl fmt::Display for ShownMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        let risky = |c: char| {
            c.is_control()
                || matches!(c, '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
                    | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
                    | '\u{2066}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
        };
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MESSAGE_CHARS) {
            match c {
                '\n' | '\r' | '\t' => write!(f, "{}", c.escape_default())?,
                c if risky(c) => write!(f, "{}", c.escape_unicode())?,
                c => f.write_char(c)?,
            }
        }
        if chars.next().is_some() {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_messages_are_shown_on_one_line_and_cut() {
        let said = "User: arn:aws:iam::111122223333:user/x is not authorized";
        assert_eq!(
            ShownMessage(said).to_string(),
            said,
            "printable stays as it is"
        );
        assert_eq!(
            ShownMessage("a\nb\u{1b}[2J\u{202e}c").to_string(),
            "a\\nb\\u{1b}[2J\\u{202e}c"
        );
        let long = "é".repeat(100_000);
        assert_eq!(
            ShownMessage(&long).to_string(),
            format!("{}… (200000 bytes)", "é".repeat(MESSAGE_CHARS))
        );
    }

    #[test]
    fn long_registry_values_are_shown_cut() {
        assert_eq!(Shown("abc").to_string(), "\"abc\"");
        let long = "x".repeat(10_000);
        let shown = Shown(&long).to_string();
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("… (10000 bytes)"), "{shown}");
        // Cut on a character boundary, never inside one.
        let wide = "é".repeat(100);
        assert!(Shown(&wide)
            .to_string()
            .starts_with(&format!("\"{}\"", "é".repeat(64))));
    }
}
