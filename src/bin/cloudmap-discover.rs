//! `dig` for Cloud Map: prints a service's endpoints as a table and, with `--watch`,
//! what changes on each refresh.
//!
//! ```text
//! cargo install cloudmap-resolver --features cli
//! cloudmap-discover shared web --attr stage=prod
//! cloudmap-discover prod.internal api --dns 10.0.0.2
//! cloudmap-discover shared web --endpoint-url http://127.0.0.1:5000 --watch
//! cloudmap-discover shared web --owner-account 111122223333
//! cloudmap-discover shared web --watch --health-check http:/healthz
//! ```
//!
//! Exit codes: 0 endpoints found; 1 other failure; 2 bad arguments or an invalid
//! name (usage); 3 namespace or service not found; 4 no endpoint matched; 5
//! throttled by the registry; 6 registry unreachable or timed out; 7 the AWS
//! configuration is unusable (region, credentials, endpoint URL) or the registry
//! refused the caller (access denied, unknown or expired credentials). With
//! `--watch`, a run whose last refresh failed exits with that refresh's code. Errors
//! are one line on stderr. A closed output (`| head`) ends the tool quietly, with 0.
//!
//! Registry strings (ids, addresses, attributes) are printed with their control
//! characters escaped (`\u{1b}`), so that an attribute cannot clear or retitle the
//! terminal.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use cloudmap_resolver::{
    CloudMapDiscovery, DnsDiscovery, Endpoint, Error, ErrorKind, HealthCheck, HealthFilter,
    Resolver, ResolverOptions,
};

/// Prints the endpoints of SERVICE in NAMESPACE (AWS Cloud Map) as a table.
#[derive(Debug, Parser)]
#[command(name = "cloudmap-discover", version)]
struct Args {
    /// The namespace (Cloud Map namespace name, or a DNS namespace with --dns).
    namespace: String,
    /// The service in the namespace.
    service: String,
    /// Only instances with this attribute (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = pair)]
    attrs: Vec<(String, String)>,
    /// Prefer instances with this attribute (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = pair)]
    optional: Vec<(String, String)>,
    /// Which instances by health.
    #[arg(long, value_enum, default_value_t = Health::HealthyOrElseAll)]
    health: Health,
    /// Read the DNS records of a DNS namespace from SERVER instead of calling the
    /// Cloud Map API.
    #[arg(long, value_name = "SERVER[:PORT]", value_parser = server, conflicts_with = "endpoint_url")]
    dns: Option<SocketAddr>,
    /// The AWS account that owns the namespace, for a namespace shared with this
    /// account from another one (AWS RAM): 12 digits, sent as OwnerAccount.
    #[arg(long, value_name = "ACCOUNT_ID")]
    owner_account: Option<String>,
    /// Send Cloud Map API calls to URL (LocalStack, moto).
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// AWS region (default: the AWS configuration; us-east-1 with --endpoint-url when
    /// none is configured).
    #[arg(long)]
    region: Option<String>,
    /// Give up on the registry after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = seconds, default_value = "10")]
    timeout: Duration,
    /// Keep refreshing and print what changed, one timestamped line per change
    /// (Ctrl-C stops).
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, value_name = "SECONDS", value_parser = seconds, default_value = "5")]
    interval: Duration,
    /// Stop after N refreshes with --watch.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// With --watch, also probe each endpoint (`tcp`: a connection opens;
    /// `http:PATH`: a GET of PATH answers 2xx or 3xx) four times per interval, and
    /// print when one goes down or comes back.
    #[arg(long, value_name = "tcp|http:PATH", value_parser = health_check, requires = "watch")]
    health_check: Option<HealthCheck>,
}

fn health_check(s: &str) -> Result<HealthCheck, String> {
    match s.split_once(':') {
        None if s == "tcp" => Ok(HealthCheck::tcp()),
        Some(("http", path)) if path.starts_with('/') => Ok(HealthCheck::http(path)),
        _ => Err(format!("expected tcp or http:/PATH, not {s:?}")),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Health {
    Healthy,
    Unhealthy,
    All,
    HealthyOrElseAll,
}

impl From<Health> for HealthFilter {
    fn from(h: Health) -> Self {
        match h {
            Health::Healthy => HealthFilter::Healthy,
            Health::Unhealthy => HealthFilter::Unhealthy,
            Health::All => HealthFilter::All,
            Health::HealthyOrElseAll => HealthFilter::HealthyOrElseAll,
        }
    }
}

fn pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("expected an IP address with an optional port, not {s:?}"))
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x < 1e9 => Ok(Duration::from_secs_f64(x)),
        _ => Err(format!("expected a positive number of seconds, not {s:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // clap prints usage and exits 2 on bad arguments, 0 for --help and --version.
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head -2`): nothing more to say, and no one to
        // say it to.
        Err(Stop::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Stop::Output(e)) => {
            eprintln!("cloudmap-discover: cannot write the output: {e}");
            ExitCode::from(1)
        }
        Err(Stop::Registry(err)) => {
            eprintln!("cloudmap-discover: {}", one_line(&err));
            if err.kind() == ErrorKind::InvalidInput {
                eprintln!("For more information, try '--help'.");
            }
            ExitCode::from(exit_code(err.kind()))
        }
    }
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        // A name that breaks Cloud Map's rules is a usage error, as clap's are.
        ErrorKind::InvalidInput => 2,
        ErrorKind::NamespaceNotFound | ErrorKind::ServiceNotFound => 3,
        ErrorKind::NoEndpoints => 4,
        ErrorKind::Throttled => 5,
        ErrorKind::Unavailable => 6,
        ErrorKind::Configuration => 7,
        _ => 1,
    }
}

/// Why a run ended early: the registry's answer, or the output could not be written.
#[derive(Debug)]
enum Stop {
    Registry(Error),
    Output(std::io::Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Registry(e)
    }
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Output(e)
    }
}

/// Writes one line to stdout, flushed (a watch's lines are read as they come). An
/// error, a closed pipe among them, is returned instead of `println!`'s panic.
fn say(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// `s` with every control or invisible formatting character escaped as the
/// library's logs do (Rust's `{:?}` escapes: `\u{1b}`, `\n`), and backslashes
/// doubled so that an escape cannot be forged: the registry's strings are not the
/// terminal's commands.
fn clean(s: &str) -> String {
    let risky = |c: char| {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}')
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

/// The error on one line. Its `Display` already names the root cause; causes are
/// appended only when they add text not yet shown.
fn one_line(err: &Error) -> String {
    let mut line = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        // The SDK's wrappers say only what layer failed ("service error",
        // "dispatch failure"); the message already carries the cause.
        if !line.contains(&text) && s.source().is_none() {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    clean(&line.split_whitespace().collect::<Vec<_>>().join(" "))
}

async fn run(args: &Args) -> Result<(), Stop> {
    let mut opts = ResolverOptions::default();
    // Watching asks for every instance and filters here, so that an instance whose
    // health changes shows as a change (`~`) rather than leaving the answer.
    opts.health_filter = if args.watch {
        HealthFilter::All
    } else {
        args.health.into()
    };
    opts.cache.fetch_timeout = args.timeout;
    // A diagnostic reports throttling as it happens (exit 5) rather than waiting for
    // a turn the way a service starting up does.
    opts.cache.startup_wait = Duration::ZERO;
    opts.owner_account = args.owner_account.clone();
    if args.watch {
        // Every refresh asks the registry afresh (health changes do not move Cloud
        // Map's revision) and a failure shows rather than an old answer.
        opts.cache.ttl = args.interval / 2;
        opts.cache.max_stale = args.interval / 2;
        opts.cache.refresh_ahead = false;
        opts.cache.full_refresh_interval = None;
    }
    // Probes run while the key's answer is in use, half of each interval here (the
    // answer lives interval / 2): four per interval leave two or more in that half, the
    // two failures in a row that take an endpoint out.
    opts.health_check = args
        .health_check
        .clone()
        .map(|c| c.interval(args.interval / 4));
    let resolver = match args.dns {
        Some(server) => Resolver::builder(DnsDiscovery::with_name_servers([server])),
        None => Resolver::builder(CloudMapDiscovery::new(&sdk_config(args).await)),
    }
    .options(opts)
    .build()?;

    let mut previous = fetch(&resolver, args).await?;
    let shown = filter_health(&previous, args.health.into());
    if shown.is_empty() {
        return Err(Stop::Registry(Error::new(
            ErrorKind::NoEndpoints,
            format!(
                "no instance of service {:?} in namespace {:?} has health {}",
                args.service,
                args.namespace,
                HealthFilter::from(args.health)
            ),
        )));
    }
    print_table(&shown)?;
    if !args.watch {
        return Ok(());
    }
    // The last refresh's error, if it failed: the run ends with it, so a script
    // watching a registry that went away hears so in the exit code.
    let mut failed: Option<Error> = None;
    let mut n = 0u64;
    while args.count.is_none_or(|c| n < c) {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        n += 1;
        let at = rfc3339(SystemTime::now());
        match fetch(&resolver, args).await {
            Ok(now) => {
                let changes = diff(&previous, &now, args.health.into());
                if changes.is_empty() {
                    say(&format!("{at} refresh {n}: no change"))?;
                }
                for c in changes {
                    say(&format!("{at} refresh {n}: {c}"))?;
                }
                previous = now;
                failed = None;
            }
            Err(err) => {
                say(&format!("{at} refresh {n}: error: {}", one_line(&err)))?;
                failed = Some(err);
            }
        }
    }
    failed.map_or(Ok(()), |e| Err(Stop::Registry(e)))
}

async fn sdk_config(args: &Args) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(url) = &args.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let region = match &args.region {
        Some(r) => Some(aws_config::Region::new(r.clone())),
        None => aws_config::meta::region::ProvideRegion::region(
            &aws_config::default_provider::region::default_provider(),
        )
        .await
        .or_else(|| {
            args.endpoint_url
                .as_ref()
                .map(|_| aws_config::Region::from_static("us-east-1"))
        }),
    };
    if let Some(r) = region {
        loader = loader.region(r);
    }
    loader.load().await
}

/// One row per endpoint, by instance id.
type Rows = BTreeMap<String, Row>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    address: String,
    port: String,
    health: String,
    attributes: String,
    /// Out of the picks: its health check (`--health-check`) found it down.
    down: bool,
}

async fn fetch(resolver: &Resolver, args: &Args) -> Result<Rows, Error> {
    let mut q = resolver.query(&args.namespace, &args.service);
    for (k, v) in &args.attrs {
        q = q.attribute(k, v);
    }
    for (k, v) in &args.optional {
        q = q.optional_attribute(k, v);
    }
    let all = tokio::time::timeout(args.timeout, q.resolve_all())
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Unavailable,
                format!("no answer from the registry within {:?}", args.timeout),
            )
        })??;
    Ok(all
        .iter()
        .map(|ep| (clean(ep.instance_id()), row(ep)))
        .collect())
}

/// The rows the health filter lets through, by Cloud Map's rules.
fn filter_health(rows: &Rows, health: HealthFilter) -> Rows {
    let healthy = |r: &Row| r.health == "HEALTHY";
    let keep = |r: &Row| match health {
        HealthFilter::Healthy => healthy(r),
        HealthFilter::Unhealthy => r.health == "UNHEALTHY",
        HealthFilter::HealthyOrElseAll => !rows.values().any(healthy) || healthy(r),
        _ => true,
    };
    rows.iter()
        .filter(|(_, r)| keep(r))
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect()
}

fn row(ep: &Endpoint) -> Row {
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
        attributes,
        // The tool makes no requests, so only a probe can eject an endpoint.
        down: ep.is_ejected(),
    }
}

fn print_table(rows: &Rows) -> std::io::Result<()> {
    let header = ["ID", "ADDRESS", "PORT", "HEALTH", "ATTRIBUTES"];
    let lines: Vec<[&str; 5]> = rows
        .iter()
        .map(|(id, r)| [id.as_str(), &r.address, &r.port, &r.health, &r.attributes])
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
    format!(
        "{id} {}:{} {} {}",
        r.address, r.port, r.health, r.attributes
    )
    .trim_end()
    .to_owned()
}

/// What changed between two answers (every instance, whatever its health), as seen
/// through `health`: `+` added, `-` removed, `~` changed. An instance whose health
/// changed is a change with its new status, even when the filter now hides it or
/// newly shows it: it is still registered.
fn diff(before: &Rows, after: &Rows, health: HealthFilter) -> Vec<String> {
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
                    what.push(format!(
                        "address {}:{} -> {}:{}",
                        old.address, old.port, r.address, r.port
                    ));
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

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2025-01-02T03:04:05.678Z`.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64, ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.789.
        assert_eq!(at(951_827_696, 789), "2000-02-29T12:34:56.789Z");
        assert_eq!(at(1_735_689_599, 999), "2024-12-31T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    fn rows(v: &[(&str, &str)]) -> Rows {
        v.iter()
            .map(|(id, h)| {
                let r = Row {
                    address: "10.0.0.1".into(),
                    port: "80".into(),
                    health: (*h).into(),
                    attributes: String::new(),
                    down: false,
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
}
