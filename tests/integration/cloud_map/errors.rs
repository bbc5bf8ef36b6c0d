//! Misconfigurations, refusals and error texts against moto: each a typed error
//! naming its cause once.

use super::*;

/// An SDK configuration with explicit settings only, nothing from the environment,
/// so that no credentials chain can fall back to the metadata service.
fn bare_sdk(
    region: bool,
    credentials: Option<aws_sdk_servicediscovery::config::SharedCredentialsProvider>,
    url: &str,
) -> aws_config::SdkConfig {
    let mut b = aws_config::SdkConfig::builder();
    b.set_behavior_version(Some(aws_config::BehaviorVersion::latest()));
    b.set_region(region.then(|| aws_config::Region::new("us-east-1")));
    b.set_credentials_provider(credentials);
    b.set_endpoint_url(Some(url.to_owned()));
    b.build()
}

fn test_credentials() -> aws_sdk_servicediscovery::config::SharedCredentialsProvider {
    aws_sdk_servicediscovery::config::SharedCredentialsProvider::new(
        aws_sdk_servicediscovery::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ),
    )
}

/// Each misconfiguration is a `Configuration` error, not retryable, naming its cause;
/// a closed port is an outage (retryable) naming the URL and the root cause.
#[tokio::test]
async fn misconfigurations_are_configuration_errors() {
    let (dead, _held) = test_support::net::closed_port();
    let dead_url = format!("http://{dead}");

    // No region.
    let sdk = bare_sdk(false, Some(test_credentials()), &dead_url);
    let e = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("no AWS region"), "{e}");

    // No credentials provider: nothing to fall back on, so no metadata-service call.
    let sdk = bare_sdk(true, None, &dead_url);
    let e = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("no credentials provider"), "{e}");

    // An endpoint URL without its scheme.
    let sdk = bare_sdk(true, Some(test_credentials()), &dead.to_string());
    let e = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(!e.is_retryable());
    assert!(
        e.to_string().contains(&format!("`{dead}` has no scheme")),
        "{e}"
    );

    // Credentials that fail to load when a call is made (profile files that do not
    // exist; no network involved): a configuration error too, naming the URL. The
    // profile types are deprecated aliases, still the public way to point the
    // provider at files.
    #[allow(deprecated)]
    let failing = {
        use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
        let files = ProfileFiles::builder()
            .with_file(ProfileFileKind::Credentials, "/nonexistent/credentials")
            .with_file(ProfileFileKind::Config, "/nonexistent/config")
            .build();
        aws_config::profile::ProfileFileCredentialsProvider::builder()
            .profile_files(files)
            .profile_name("nobody")
            .build()
    };
    let failing = aws_sdk_servicediscovery::config::SharedCredentialsProvider::new(failing);
    let sdk = bare_sdk(true, Some(failing), &dead_url);
    let r = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap();
    let e = r.resolve("shared", "web").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("credentials"), "{e}");
    assert!(e.to_string().contains(&dead_url), "{e}");

    // A closed port: the registry is unreachable, worth retrying; the URL and the
    // root cause are named.
    let sdk = bare_sdk(true, Some(test_credentials()), &dead_url);
    let r = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap();
    let e = r.resolve("shared", "web").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains(&format!("could not connect to {dead_url}")),
        "{e}"
    );
    assert!(text.to_lowercase().contains("refused"), "{e}");
    println!("{e}");
}

/// Error texts say each thing once: the not-found answer without the SDK's
/// "service error" wrapper, and a filter that matched nothing by name.
#[tokio::test]
async fn error_texts_name_the_cause_once() {
    let (ns, _) = fleet().await;
    let (_p, b) = proxied().await;
    let r = b.build().unwrap();
    let e = r.resolve("shopp", "api").await.unwrap_err();
    let mut chain = vec![e.to_string()];
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        chain.push(s.to_string());
        src = s.source();
    }
    assert!(!chain.iter().any(|t| t == "service error"), "{chain:?}");
    assert!(
        chain[0].starts_with(
            "namespace not found: service \"api\" in namespace \"shopp\": \
             DiscoverInstances: NamespaceNotFound"
        ),
        "{chain:?}"
    );

    let e = r
        .query(&ns, "api")
        .attribute("stage", "nope")
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoEndpoints, "{e}");
    assert_eq!(
        e.to_string(),
        format!("no endpoints: service \"api\" in namespace \"{ns}\" has no usable instance matching stage=nope")
    );
}

/// A registry failure names the key it was returned for (service, namespace and the
/// query's attributes) before the registry's words, which name none: a process
/// resolving many keys can tell which one fails. The kind and the SDK's error as
/// `source()` stay. Before, the texts were "registry unavailable: DiscoverInstances:
/// bad response from http://127.0.0.1:N (HTTP 503): Error" and "throttled by the registry:
/// DiscoverInstances: RequestLimitExceeded: ...", naming no key.
#[tokio::test]
async fn registry_failures_name_the_key() {
    let (ns, _) = fleet().await;
    let (proxy, builder) = proxied().await;
    let r = builder.startup_wait(Duration::ZERO).build().unwrap();
    for (n, (fault, kind)) in [
        (
            test_support::proxy::Fault::Status(503),
            ErrorKind::Unavailable,
        ),
        (test_support::proxy::Fault::Throttle, ErrorKind::Throttled),
    ]
    .into_iter()
    .enumerate()
    {
        proxy.set_fault(fault);
        // A fresh key each time: nothing remembered from the last case.
        let svc = format!("api-{n}");
        let err = r
            .query(&ns, &svc)
            .attribute("stage", "prod")
            .resolve()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        let named = format!(
            "service \"{svc}\" in namespace \"{ns}\" matching stage=prod: DiscoverInstances: "
        );
        assert!(err.to_string().contains(&named), "{err}");
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
        assert!(std::error::Error::source(&err).is_some(), "{err}");
    }
}

/// The registry refusing the caller is reported as `Configuration` (not retryable,
/// the AWS code and message in the text), not as an outage; a quota code is its own
/// kind, and an unknown code stays `Unavailable` with its name (issue 25).
#[tokio::test]
async fn registry_refusals_are_configuration_not_outages() {
    let (ns, _) = fleet().await;
    let (proxy, builder) = proxied().await;
    let r = builder.build().unwrap();
    let cases = [
        ("AccessDeniedException", ErrorKind::Configuration),
        ("ExpiredTokenException", ErrorKind::Configuration),
        ("MissingAuthenticationToken", ErrorKind::Configuration),
        ("SignatureDoesNotMatch", ErrorKind::Configuration),
        ("ResourceLimitExceeded", ErrorKind::QuotaExceeded),
        ("SomethingNewException", ErrorKind::Unavailable),
    ];
    for (n, (code, kind)) in cases.into_iter().enumerate() {
        proxy.set_fault(test_support::proxy::Fault::AwsError {
            status: 400,
            code,
            message: "refused by the test proxy",
        });
        // A fresh key each time: nothing remembered from the last case.
        let svc = format!("api-{n}");
        let err = r.resolve(&ns, &svc).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{code}: {err}");
        assert_eq!(err.is_retryable(), kind == ErrorKind::Unavailable, "{code}");
        assert!(err.message().contains(code), "{err}");
        assert!(err.message().contains("refused by the test proxy"), "{err}");
    }
}

/// A connection closed after the request left and before the answer (a reused
/// keep-alive connection the far side closed) is an outage, worth retrying: not a
/// configuration error, which would be held as final.
#[tokio::test]
async fn a_connection_closed_before_the_answer_is_an_outage() {
    let (ns, _) = fleet().await;
    let (proxy, builder) = proxied().await;
    let r = builder.build().unwrap();
    proxy.set_fault(test_support::proxy::Fault::Close);
    let err = r.resolve(&ns, "api").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.message().contains(&proxy.url()), "{err}");
    assert_eq!(proxy.count("DiscoverInstances"), 1);
}

/// An IAM policy that allows DiscoverInstances but not DiscoverInstancesRevision:
/// the refused revision poll falls back to the full call at once, and later
/// refreshes are full calls only. Answers stay as fresh as the TTL (not the 30 s
/// full-refresh interval), and the refused call is not repeated.
#[tokio::test]
async fn a_refused_revision_call_falls_back_to_full_refreshes() {
    let (ns, svc) = fleet().await;
    let (proxy, builder) = proxied().await;
    proxy.fault_operation(
        "DiscoverInstancesRevision",
        test_support::proxy::Fault::AwsError {
            status: 400,
            code: "AccessDeniedException",
            message: "not authorized to perform servicediscovery:DiscoverInstancesRevision",
        },
        None,
    );
    let r = builder.ttl(Duration::from_secs(1)).build().unwrap();
    assert_eq!(r.resolve_all(&ns, "api").await.unwrap().len(), 3);
    register(
        &svc,
        "d",
        &[("AWS_INSTANCE_IPV4", &ip(4)), ("AWS_INSTANCE_PORT", "80")],
    )
    .await;
    // Bounded: within 10 s (the TTL is 1 s; polling the refused revision, the new
    // instance would show only at the full refresh, 30 s on).
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if r.resolve_all(&ns, "api").await.unwrap().len() == 4 {
            seen = true;
            break;
        }
    }
    assert!(seen, "the new instance is seen within 10 s");
    // Three more TTLs of refreshes, all of them full calls.
    let full = proxy.count("DiscoverInstances");
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        r.resolve(&ns, "api").await.unwrap();
    }
    assert!(proxy.count("DiscoverInstances") > full, "still refreshing");
    assert_eq!(proxy.count("DiscoverInstancesRevision"), 1, "refused once");
}

/// A revision poll refused for the clock (the machine's clock jumped 10 minutes:
/// `InvalidSignatureException`, the answer dated 10 minutes off) is not the caller
/// lacking permission for DiscoverInstancesRevision: the SDK signs its next call
/// with the registry's time, and revision polling goes on. Before, the full call
/// that followed answered, and revision polling was turned off for good (1 revision
/// call in all; now the polls go on: at least 3).
#[tokio::test]
async fn a_clock_skew_refusal_does_not_turn_revision_polling_off() {
    let (ns, _) = fleet().await;
    let (proxy, builder) = proxied().await;
    let r = builder.ttl(Duration::from_secs(1)).build().unwrap();
    assert_eq!(r.resolve_all(&ns, "api").await.unwrap().len(), 3);
    proxy.fault_operation(
        "DiscoverInstancesRevision",
        test_support::proxy::Fault::SkewedAwsError {
            status: 400,
            code: "InvalidSignatureException",
            message: "Signature not yet current: 20260101T001000Z is still later than \
                      20260101T000500Z (20260101T000000Z + 5 min.)",
            ahead: -600,
        },
        Some(1),
    );
    // Bounded: 20 s (three polls take about 3 s at a 1 s TTL).
    for _ in 0..200 {
        if proxy.count("DiscoverInstancesRevision") >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        r.resolve(&ns, "api").await.unwrap();
    }
    assert!(
        proxy.count("DiscoverInstancesRevision") >= 3,
        "revision polling stopped after {} calls",
        proxy.count("DiscoverInstancesRevision")
    );
}

/// A bare HTTP status from a proxy or gateway in front of the registry: 429 is
/// throttling (`Throttled`), a 5xx an outage (`Unavailable`); both retryable and
/// named by their status.
#[tokio::test]
async fn bare_statuses_are_throttling_or_outages() {
    let (ns, _) = fleet().await;
    let (proxy, builder) = proxied().await;
    // A throttled cold load fails at once rather than waiting for a turn (and holds
    // the next cold loads back: the 429 comes last).
    let r = builder.startup_wait(Duration::ZERO).build().unwrap();
    for (n, (status, kind)) in [(503, ErrorKind::Unavailable), (429, ErrorKind::Throttled)]
        .into_iter()
        .enumerate()
    {
        proxy.set_fault(test_support::proxy::Fault::Status(status));
        let err = r.resolve(&ns, &format!("api-{n}")).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{status}: {err}");
        assert!(err.is_retryable());
        assert!(err.message().contains(&format!("HTTP {status}")), "{err}");
    }
}

/// The registry's error message is its (or a proxy's) to choose: a 100 KB one with
/// line breaks and terminal escapes is shown in the error's text on one line, escaped
/// and cut to 512 characters with its length, and kept whole in `source()`. Before,
/// the text was 101,063 bytes with 1,000 line breaks, printed whole in every log
/// line and CLI error naming it.
#[tokio::test]
async fn a_hostile_registry_message_is_shown_escaped_and_cut() {
    let (ns, _) = fleet().await;
    let (proxy, builder) = proxied().await;
    let r = builder.build().unwrap();
    let line = format!("{}\n\u{1b}[2J", "x".repeat(96));
    let message: &'static str = line.repeat(1000).leak();
    for code in ["AccessDeniedException", "Weird\nCode\u{1b}]0;t\u{7}"] {
        let code: &'static str = code.to_owned().leak();
        proxy.set_fault(test_support::proxy::Fault::AwsError {
            status: 400,
            code,
            message,
        });
        let svc = format!("api-{}", code.len());
        let err = r.resolve(&ns, &svc).await.unwrap_err();
        let text = err.to_string();
        assert!(text.len() < 1500, "{} bytes: {}", text.len(), &text[..200]);
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains(r"xx\n\u{1b}[2Jxx"), "{text}");
        assert!(
            text.ends_with(&format!("… ({} bytes)", message.len())),
            "{text}"
        );
        // The source, the SDK's error, keeps the registry's whole answer.
        let source = std::error::Error::source(&err).expect("the AWS error");
        let kept = format!("{source:?}");
        assert!(kept.len() > message.len(), "{} bytes", kept.len());
    }
    // The kinds are read from the code, not from its shown form.
    proxy.set_fault(test_support::proxy::Fault::AwsError {
        status: 400,
        code: "AccessDeniedException",
        message,
    });
    let err = r.resolve(&ns, "api-kind").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
}
