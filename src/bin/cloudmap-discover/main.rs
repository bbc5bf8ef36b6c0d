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
//! `--watch`, a run whose last refresh failed exits with that refresh's code (an
//! empty answer after the first is no failure: its instances left). Errors
//! are one line on stderr (a closed stderr changes no exit code). A closed output
//! (`| head`) ends the tool quietly, with 0.
//!
//! Registry strings (ids, addresses, attributes) are printed with their control
//! characters escaped (`\u{1b}`), so that an attribute cannot clear or retitle the
//! terminal.

mod args;
mod rows;
mod when;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use cloudmap_resolver::{
    CloudMapDiscovery, DnsDiscovery, Error, ErrorKind, HealthFilter, Resolver, ResolverOptions,
};

use args::Args;
use rows::{clean, diff, filter_health, print_table, row, Rows};
use when::rfc3339;

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
            complain(&format!("cloudmap-discover: cannot write the output: {e}"));
            ExitCode::from(1)
        }
        Err(Stop::Registry(err)) => {
            let mut text = format!("cloudmap-discover: {}", one_line(&err));
            if err.kind() == ErrorKind::InvalidInput {
                text.push_str("\nFor more information, try '--help'.");
            }
            complain(&text);
            ExitCode::from(exit_code(err.kind()))
        }
    }
}

/// Writes an error to stderr. A stderr that cannot be written to (closed, `2>&1 |
/// grep -q`) is ignored rather than `eprintln!`'s panic: the exit code still says
/// what happened.
fn complain(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
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
            line.push_str(&cut(&text));
        }
        source = s.source();
    }
    clean(&line.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// How much of an appended cause the line shows.
const CAUSE_CHARS: usize = 512;

/// `text` cut to [`CAUSE_CHARS`] with the full length: a cause is the SDK's error,
/// which keeps the registry's whole answer (the error's own text shows it cut), so
/// its size is the registry's, or a proxy's, choice.
fn cut(text: &str) -> String {
    match text.char_indices().nth(CAUSE_CHARS) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
        None => text.to_owned(),
    }
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

    let mut previous = match fetch(&resolver, args).await {
        // A watch asks the registry for every instance (health ALL): its empty
        // answer is told below with the caller's filters, not the watch's.
        Err(err) if args.watch && err.kind() == ErrorKind::NoEndpoints => Rows::new(),
        fetched => fetched?,
    };
    let shown = filter_health(&previous, args.health.into());
    if shown.is_empty() {
        let matching: Vec<String> = args.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let matching = if matching.is_empty() {
            String::new()
        } else {
            format!(" matching {}", matching.join(", "))
        };
        return Err(Stop::Registry(Error::new(
            ErrorKind::NoEndpoints,
            format!(
                "no instance of service {:?} in namespace {:?}{matching} has health {}",
                args.service,
                args.namespace,
                HealthFilter::from(args.health)
            ),
        )));
    }
    print_table(&shown)?;
    // `--dns` is watched as Cloud Map is: optional parameters, which DNS
    // refuses, ended the run at the first fetch already.
    if !args.watch {
        return Ok(());
    }
    // The last refresh's error, if it failed: the run ends with it, so a script
    // watching a registry that went away hears so in the exit code.
    let mut failed: Option<Error> = None;
    let mut n = 0u64;
    // One listener for the whole watch, raced with the refreshes as well as the
    // waits: once it listens, SIGINT no longer kills the process, so a Ctrl-C
    // during a refresh (as long as `--timeout`) must end the loop too.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while args.count.is_none_or(|c| n < c) {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut ctrl_c => break,
        }
        n += 1;
        let at = rfc3339(SystemTime::now());
        let fetched = tokio::select! {
            fetched = fetch(&resolver, args) => fetched,
            _ = &mut ctrl_c => break,
        };
        // An empty answer is an answer: the instances shown before left (or no
        // longer match) and print as removals. Only the first answer, which has
        // nothing to compare with, fails on it (exit 4).
        let fetched = match fetched {
            Err(err) if err.kind() == ErrorKind::NoEndpoints => Ok(Rows::new()),
            other => other,
        };
        match fetched {
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

async fn fetch(resolver: &Resolver, args: &Args) -> Result<Rows, Error> {
    let mut q = resolver.query(&args.namespace, &args.service);
    for (k, v) in &args.attrs {
        q = q.attribute(k, v);
    }
    // A watch asks for every instance (health ALL) and applies the health filter
    // here, so it applies the optional parameters here too, after it, as the
    // library does (`filter_health`): sent with ALL, one matching only an
    // unhealthy instance narrowed the answer to that instance, which the health
    // filter then hid. DNS is still asked with them, so that it refuses them as
    // it does without `--watch` (its records carry no attributes).
    if !args.watch || args.dns.is_some() {
        for (k, v) in &args.optional {
            q = q.optional_attribute(k, v);
        }
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
        .map(|ep| {
            (
                clean(ep.instance_id()),
                row(ep, &args.zone_attr, &args.optional),
            )
        })
        .collect())
}
