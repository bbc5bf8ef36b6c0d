//! `dig` for Cloud Map: prints a service's endpoints as a table and, with `--watch`,
//! what changes on each refresh.
//!
//! ```text
//! cargo run --example discover -- shared web --attr stage=prod
//! cargo run --example discover -- prod.internal api --dns 10.0.0.2
//! cargo run --example discover -- shared web --endpoint-url http://127.0.0.1:5000 --watch
//! ```
//!
//! Exit codes: 0 endpoints found; 1 other failure; 2 bad arguments (usage is
//! printed); 3 namespace or service not found; 4 no endpoint matched; 5 throttled by
//! the registry; 6 registry unreachable or timed out. Errors are one line on stderr.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use cloudmap_resolver::{
    CloudMapDiscovery, DnsDiscovery, Endpoint, Error, ErrorKind, HealthFilter, Resolver,
    ResolverOptions,
};

const USAGE: &str = "\
usage: discover NAMESPACE SERVICE [options]

Prints the endpoints of SERVICE in NAMESPACE (AWS Cloud Map) as a table.

options:
  --attr KEY=VALUE        only instances with this attribute (repeatable)
  --optional KEY=VALUE    prefer instances with this attribute (repeatable)
  --health FILTER         healthy | unhealthy | all | healthy-or-else-all (default)
  --dns SERVER[:PORT]     read the DNS records of a DNS namespace from SERVER
                          instead of calling the Cloud Map API
  --endpoint-url URL      send Cloud Map API calls to URL (LocalStack, moto)
  --region REGION         AWS region (default: the AWS configuration; us-east-1
                          with --endpoint-url when none is configured)
  --timeout SECONDS       give up on the registry after this long (default 10)
  --watch                 keep refreshing and print what changed (Ctrl-C stops)
  --interval SECONDS      time between refreshes with --watch (default 5)
  --count N               stop after N refreshes with --watch
  -h, --help              print this help";

#[derive(Debug)]
struct Args {
    namespace: String,
    service: String,
    attrs: Vec<(String, String)>,
    optional: Vec<(String, String)>,
    health: HealthFilter,
    dns: Option<SocketAddr>,
    endpoint_url: Option<String>,
    region: Option<String>,
    timeout: Duration,
    watch: bool,
    interval: Duration,
    count: Option<u64>,
}

/// What the command line asks for, or why it cannot be understood.
enum Parsed {
    Run(Box<Args>),
    Help,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut positional = Vec::new();
    let mut args = Args {
        namespace: String::new(),
        service: String::new(),
        attrs: Vec::new(),
        optional: Vec::new(),
        health: HealthFilter::HealthyOrElseAll,
        dns: None,
        endpoint_url: None,
        region: None,
        timeout: Duration::from_secs(10),
        watch: false,
        interval: Duration::from_secs(5),
        count: None,
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--attr" => args.attrs.push(pair(&value("--attr")?)?),
            "--optional" => args.optional.push(pair(&value("--optional")?)?),
            "--health" => {
                args.health = match value("--health")?.as_str() {
                    "healthy" => HealthFilter::Healthy,
                    "unhealthy" => HealthFilter::Unhealthy,
                    "all" => HealthFilter::All,
                    "healthy-or-else-all" => HealthFilter::HealthyOrElseAll,
                    other => return Err(format!("unknown health filter {other:?}")),
                }
            }
            "--dns" => args.dns = Some(server(&value("--dns")?)?),
            "--endpoint-url" => args.endpoint_url = Some(value("--endpoint-url")?),
            "--region" => args.region = Some(value("--region")?),
            "--timeout" => args.timeout = seconds("--timeout", &value("--timeout")?)?,
            "--watch" => args.watch = true,
            "--interval" => args.interval = seconds("--interval", &value("--interval")?)?,
            "--count" => {
                let v = value("--count")?;
                match v.parse::<u64>() {
                    Ok(n) if n > 0 => args.count = Some(n),
                    _ => return Err(format!("--count takes a positive number, not {v:?}")),
                }
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => positional.push(arg),
        }
    }
    if args.dns.is_some() && args.endpoint_url.is_some() {
        return Err("--dns and --endpoint-url cannot be combined".into());
    }
    match <[String; 2]>::try_from(positional) {
        Ok([ns, svc]) => {
            args.namespace = ns;
            args.service = svc;
            Ok(Parsed::Run(Box::new(args)))
        }
        Err(p) => Err(format!(
            "expected NAMESPACE and SERVICE, got {} argument{}",
            p.len(),
            if p.len() == 1 { "" } else { "s" }
        )),
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
        .map_err(|_| format!("--dns takes an IP address with an optional port, not {s:?}"))
}

fn seconds(name: &str, s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x < 1e9 => Ok(Duration::from_secs_f64(x)),
        _ => Err(format!(
            "{name} takes a positive number of seconds, not {s:?}"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("discover: {why}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("discover: {}", one_line(&err));
            ExitCode::from(exit_code(err.kind()))
        }
    }
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::NamespaceNotFound | ErrorKind::ServiceNotFound => 3,
        ErrorKind::NoEndpoints => 4,
        ErrorKind::Throttled => 5,
        ErrorKind::Unavailable => 6,
        _ => 1,
    }
}

/// The error and its causes on one line.
fn one_line(err: &Error) -> String {
    let mut line = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn run(args: &Args) -> Result<(), Error> {
    let mut opts = ResolverOptions::default();
    opts.health_filter = args.health;
    opts.fetch_timeout = args.timeout;
    if args.watch {
        // Every refresh asks the registry afresh (health changes do not move Cloud
        // Map's revision) and a failure shows rather than an old answer.
        opts.ttl = args.interval / 2;
        opts.max_stale = args.interval / 2;
        opts.refresh_ahead = false;
        opts.full_refresh_interval = None;
    }
    let resolver = match args.dns {
        Some(server) => Resolver::builder(DnsDiscovery::with_name_servers([server])),
        None => Resolver::builder(CloudMapDiscovery::new(&sdk_config(args).await)),
    }
    .options(opts)
    .build()?;

    let mut previous = fetch(&resolver, args).await?;
    print_table(&previous);
    if !args.watch {
        return Ok(());
    }
    let mut n = 0u64;
    while args.count.is_none_or(|c| n < c) {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        n += 1;
        match fetch(&resolver, args).await {
            Ok(now) => {
                let changes = diff(&previous, &now);
                if changes.is_empty() {
                    println!("refresh {n}: no change");
                }
                for c in changes {
                    println!("refresh {n}: {c}");
                }
                previous = now;
            }
            Err(err) => println!("refresh {n}: error: {}", one_line(&err)),
        }
    }
    Ok(())
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
        .map(|ep| (ep.instance_id().to_owned(), row(ep)))
        .collect())
}

fn row(ep: &Endpoint) -> Row {
    let address = match (ep.ip(), ep.host()) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(h)) => h.to_owned(),
        (None, None) => "-".to_owned(),
    };
    let attributes = ep
        .attributes()
        .iter()
        .filter(|(k, _)| !k.starts_with("AWS_INSTANCE_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    Row {
        address,
        port: ep.port().map_or_else(|| "-".to_owned(), |p| p.to_string()),
        health: ep.health().to_string(),
        attributes,
    }
}

fn print_table(rows: &Rows) {
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
        println!("{}", cells.join("  ").trim_end());
    }
    println!(
        "{} endpoint{}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
}

fn describe(id: &str, r: &Row) -> String {
    format!(
        "{id} {}:{} {} {}",
        r.address, r.port, r.health, r.attributes
    )
    .trim_end()
    .to_owned()
}

/// What changed between two answers: `+` added, `-` removed, `~` changed.
fn diff(before: &Rows, after: &Rows) -> Vec<String> {
    let mut out = Vec::new();
    for (id, r) in after {
        match before.get(id) {
            None => out.push(format!("+ {}", describe(id, r))),
            Some(old) if old != r => {
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
                if old.attributes != r.attributes {
                    what.push(format!(
                        "attributes [{}] -> [{}]",
                        old.attributes, r.attributes
                    ));
                }
                out.push(format!("~ {id} {}", what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for (id, r) in before {
        if !after.contains_key(id) {
            out.push(format!("- {}", describe(id, r)));
        }
    }
    out
}
