//! An answer as rows: the table, and what changed between two answers.

use std::collections::BTreeMap;

use cloudmap_resolver::{Endpoint, HealthFilter};

use crate::say;

/// `s` with every control or invisible formatting character escaped as the
/// library's logs do (Rust's `{:?}` escapes: `\u{1b}`, `\n`), and backslashes
/// doubled so that an escape cannot be forged: the registry's strings are not the
/// terminal's commands. Invisible: Unicode's format characters (bidirectional
/// marks, embeddings, overrides and isolates, joiners, the soft hyphen, the BOM)
/// and the line and paragraph separators.
pub(crate) fn clean(s: &str) -> String {
    let risky = |c: char| {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
    };
    if !s.chars().any(risky) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' | '\n' | '\r' | '\t' => out.extend(c.escape_default()),
            c if risky(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// One row per endpoint, by instance id.
pub(crate) type Rows = BTreeMap<String, Row>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    address: String,
    port: String,
    health: String,
    /// The zone attribute's value, `-` without one.
    zone: String,
    attributes: String,
    /// Out of the picks: its health check (`--health-check`) found it down.
    down: bool,
    /// Matches every `--optional` parameter (true without any).
    preferred: bool,
}

/// The rows the health filter lets through, then those the optional parameters
/// prefer when some of them match (all when none does), by Cloud Map's rules in
/// the library's order: health before optional parameters.
pub(crate) fn filter_health(rows: &Rows, health: HealthFilter) -> Rows {
    let healthy = |r: &Row| r.health == "HEALTHY";
    let keep = |r: &Row| match health {
        HealthFilter::Healthy => healthy(r),
        HealthFilter::Unhealthy => r.health == "UNHEALTHY",
        HealthFilter::HealthyOrElseAll => !rows.values().any(healthy) || healthy(r),
        _ => true,
    };
    let some_preferred = rows.values().any(|r| keep(r) && r.preferred);
    rows.iter()
        .filter(|(_, r)| keep(r) && (r.preferred || !some_preferred))
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect()
}

/// `ep`'s row; `optional` the `--optional` parameters it is preferred by.
pub(crate) fn row(ep: &Endpoint, zone_attr: &str, optional: &[(String, String)]) -> Row {
    let address = match (ep.ip(), ep.host()) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(h)) => clean(h),
        (None, None) => "-".to_owned(),
    };
    let attributes = ep
        .attributes()
        .iter()
        .filter(|(k, _)| !k.starts_with("AWS_INSTANCE_"))
        .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
        .collect::<Vec<_>>()
        .join(" ");
    Row {
        address,
        port: ep.port().map_or_else(|| "-".to_owned(), |p| p.to_string()),
        health: ep.health().to_string(),
        zone: ep
            .attribute(zone_attr)
            .filter(|z| !z.is_empty())
            .map_or_else(|| "-".to_owned(), clean),
        attributes,
        // The tool makes no requests, so only a probe can eject an endpoint.
        down: ep.is_ejected(),
        preferred: optional
            .iter()
            .all(|(k, v)| ep.attribute(k) == Some(v.as_str())),
    }
}

pub(crate) fn print_table(rows: &Rows) -> std::io::Result<()> {
    let header = ["ID", "ADDRESS", "PORT", "HEALTH", "ZONE", "ATTRIBUTES"];
    let lines: Vec<[&str; 6]> = rows
        .iter()
        .map(|(id, r)| {
            [
                id.as_str(),
                &r.address,
                &r.port,
                &r.health,
                &r.zone,
                &r.attributes,
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for l in &lines {
        for (w, cell) in width.iter_mut().zip(l) {
            *w = (*w).max(cell.len());
        }
    }
    for l in std::iter::once(&header).chain(&lines) {
        let cells: Vec<String> = l
            .iter()
            .zip(width)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        say(cells.join("  ").trim_end())?;
    }
    say(&format!(
        "{} endpoint{}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ))
}

fn describe(id: &str, r: &Row) -> String {
    format!("{id} {} {} {}", r.socket(), r.health, r.attributes)
        .trim_end()
        .to_owned()
}

impl Row {
    /// `address:port`, with an IPv6 address in brackets (`[fd00::1]:8080`), as in a
    /// URL: without them the port reads as the address's last group.
    fn socket(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// What changed between two answers (every instance, whatever its health), as seen
/// through `health`: `+` added, `-` removed, `~` changed. An instance whose health
/// changed is a change with its new status, even when the filter now hides it or
/// newly shows it: it is still registered.
pub(crate) fn diff(before: &Rows, after: &Rows, health: HealthFilter) -> Vec<String> {
    let (shown_before, shown_after) = (filter_health(before, health), filter_health(after, health));
    let mut out = Vec::new();
    for (id, r) in after {
        let old = before.get(id);
        let (was, is) = (shown_before.contains_key(id), shown_after.contains_key(id));
        match old {
            None if is => out.push(format!("+ {}", describe(id, r))),
            Some(old) if old != r && (was || is) => {
                let mut what = Vec::new();
                if (&old.address, &old.port) != (&r.address, &r.port) {
                    what.push(format!("address {} -> {}", old.socket(), r.socket()));
                }
                if old.health != r.health {
                    what.push(format!("health {} -> {}", old.health, r.health));
                }
                if old.down != r.down {
                    let state = if r.down { "down" } else { "up" };
                    what.push(format!("health check {state}"));
                }
                if old.attributes != r.attributes {
                    what.push(format!(
                        "attributes [{}] -> [{}]",
                        old.attributes, r.attributes
                    ));
                }
                out.push(format!("~ {} ({})", describe(id, r), what.join(", ")));
            }
            _ => {}
        }
    }
    for (id, r) in before {
        if !after.contains_key(id) && shown_before.contains_key(id) {
            out.push(format!("- {}", describe(id, r)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[(&str, &str)]) -> Rows {
        v.iter()
            .map(|(id, h)| {
                let r = Row {
                    address: "10.0.0.1".into(),
                    port: "80".into(),
                    health: (*h).into(),
                    zone: "-".into(),
                    attributes: String::new(),
                    down: false,
                    preferred: true,
                };
                ((*id).to_owned(), r)
            })
            .collect()
    }

    #[test]
    fn registry_strings_lose_their_terminal_escapes() {
        assert_eq!(clean("stage=prod"), "stage=prod");
        assert_eq!(
            clean("\u{1b}[2J\u{1b}[H\u{1b}[31mALL CLEAR"),
            "\\u{1b}[2J\\u{1b}[H\\u{1b}[31mALL CLEAR"
        );
        assert_eq!(clean("i\u{1b}]0;x\u{7}"), "i\\u{1b}]0;x\\u{7}");
        assert_eq!(clean("a\nb\\"), "a\\nb\\\\");
        // Right-to-left override: invisible, reorders what follows.
        assert_eq!(clean("a\u{202e}b"), "a\\u{202e}b");
        // The Arabic letter mark (bidirectional), a word joiner, a line separator.
        assert_eq!(clean("a\u{61c}b"), "a\\u{61c}b");
        assert_eq!(clean("a\u{2060}b\u{2028}"), "a\\u{2060}b\\u{2028}");
        assert_eq!(
            clean("caf\u{e9} \u{4e1c}"),
            "caf\u{e9} \u{4e1c}",
            "printable stays"
        );
        assert!(!clean("\u{9b}31m").chars().any(char::is_control));
    }

    #[test]
    fn health_change_is_a_change_not_a_removal() {
        let before = rows(&[("ok-1", "HEALTHY"), ("sick-1", "HEALTHY")]);
        let after = rows(&[("ok-1", "HEALTHY"), ("sick-1", "UNHEALTHY")]);
        assert_eq!(
            diff(&before, &after, HealthFilter::HealthyOrElseAll),
            ["~ sick-1 10.0.0.1:80 UNHEALTHY (health HEALTHY -> UNHEALTHY)"]
        );
        let gone = rows(&[("ok-1", "HEALTHY")]);
        assert_eq!(
            diff(&before, &gone, HealthFilter::All),
            ["- sick-1 10.0.0.1:80 HEALTHY"]
        );
        // Hidden by the filter before and after: not shown.
        let before = rows(&[("ok-1", "HEALTHY"), ("x", "UNHEALTHY")]);
        let mut after = before.clone();
        after.get_mut("x").unwrap().port = "81".into();
        assert!(diff(&before, &after, HealthFilter::Healthy).is_empty());
    }

    /// An IPv6 address is bracketed before its port, as in a URL: `fd00::1:80`
    /// could be the address `fd00::1:80` without a port.
    #[test]
    fn ipv6_addresses_are_bracketed_before_their_port() {
        let before = rows(&[("v6", "HEALTHY")]);
        let mut after = before.clone();
        after.get_mut("v6").unwrap().address = "fd00::1".into();
        assert_eq!(
            diff(&before, &after, HealthFilter::All),
            ["~ v6 [fd00::1]:80 HEALTHY (address 10.0.0.1:80 -> [fd00::1]:80)"]
        );
        assert_eq!(
            diff(&Rows::new(), &after, HealthFilter::All),
            ["+ v6 [fd00::1]:80 HEALTHY"]
        );
    }
}
