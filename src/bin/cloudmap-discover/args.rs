//! The command line: arguments and their parsers.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use cloudmap_resolver::{HealthCheck, HealthFilter};

/// Prints the endpoints of SERVICE in NAMESPACE (AWS Cloud Map) as a table.
#[derive(Debug, Parser)]
#[command(name = "cloudmap-discover", version)]
pub(crate) struct Args {
    /// The namespace (Cloud Map namespace name, or a DNS namespace with --dns).
    pub(crate) namespace: String,
    /// The service in the namespace.
    pub(crate) service: String,
    /// Only instances with this attribute (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = pair)]
    pub(crate) attrs: Vec<(String, String)>,
    /// Prefer instances with this attribute (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = pair)]
    pub(crate) optional: Vec<(String, String)>,
    /// Which instances by health.
    #[arg(long, value_enum, default_value_t = Health::HealthyOrElseAll)]
    pub(crate) health: Health,
    /// Read the DNS records of a DNS namespace from SERVER instead of calling the
    /// Cloud Map API.
    #[arg(long, value_name = "SERVER[:PORT]", value_parser = server, conflicts_with = "endpoint_url")]
    pub(crate) dns: Option<SocketAddr>,
    /// The AWS account that owns the namespace, for a namespace shared with this
    /// account from another one (AWS RAM): 12 digits, sent as OwnerAccount.
    #[arg(long, value_name = "ACCOUNT_ID")]
    pub(crate) owner_account: Option<String>,
    /// Send Cloud Map API calls to URL (LocalStack, moto).
    #[arg(long, value_name = "URL")]
    pub(crate) endpoint_url: Option<String>,
    /// AWS region (default: the AWS configuration; us-east-1 with --endpoint-url when
    /// none is configured).
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Give up on the registry after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = seconds, default_value = "10")]
    pub(crate) timeout: Duration,
    /// Keep refreshing and print what changed, one timestamped line per change
    /// (Ctrl-C stops).
    #[arg(long)]
    pub(crate) watch: bool,
    /// Seconds between refreshes with --watch, at least 0.1.
    #[arg(long, value_name = "SECONDS", value_parser = interval, default_value = "5", requires = "watch")]
    pub(crate) interval: Duration,
    /// The instance attribute shown in the ZONE column: each endpoint's
    /// availability zone, as zone-aware routing reads it.
    #[arg(long, value_name = "NAME", default_value = "AVAILABILITY_ZONE")]
    pub(crate) zone_attr: String,
    /// Stop after N refreshes with --watch.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "watch")]
    pub(crate) count: Option<u64>,
    /// With --watch, also probe each endpoint (`tcp`: a connection opens;
    /// `http:PATH`: a GET of PATH answers 2xx or 3xx) four times per interval, and
    /// print when one goes down or comes back.
    #[arg(long, value_name = "tcp|http:PATH", value_parser = health_check, requires = "watch")]
    pub(crate) health_check: Option<HealthCheck>,
}

fn health_check(s: &str) -> Result<HealthCheck, String> {
    match s.split_once(':') {
        None if s == "tcp" => Ok(HealthCheck::tcp()),
        Some(("http", path)) if path.starts_with('/') => Ok(HealthCheck::http(path)),
        _ => Err(format!("expected tcp or http:/PATH, not {s:?}")),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Health {
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

/// A positive number of seconds, at least a nanosecond: a shorter one would become
/// zero, which the resolver refuses under its own option's name (`fetch_timeout`),
/// not the argument's.
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x < 1e9 => match Duration::from_secs_f64(x) {
            d if d.is_zero() => Err(format!("{s:?} seconds is less than a nanosecond")),
            d => Ok(d),
        },
        _ => Err(format!("expected a positive number of seconds, not {s:?}")),
    }
}

/// The shortest `--interval`, as `watch(1)` allows: each refresh calls the registry
/// (DiscoverInstances, on a quota the account's services share), and the probes of
/// `--health-check` run four times per interval. Before, anything from 4 ns was
/// taken, and `--interval 0.001` called the registry back to back, as fast as it
/// answered, printing a line each time.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// `--interval`: [`seconds`], at least [`MIN_INTERVAL`].
fn interval(s: &str) -> Result<Duration, String> {
    match seconds(s)? {
        d if d < MIN_INTERVAL => Err(format!(
            "{s:?} seconds is less than 0.1 (each refresh calls the registry)"
        )),
        d => Ok(d),
    }
}
