//! Typed errors: unknown names, bad attributes and configuration, with the calls
//! each one costs counted.

use std::net::{Ipv4Addr, Ipv6Addr};

use cloudmap_resolver::{ErrorKind, Registration};
use test_support::moto::sdk_config;
use test_support::proxy::Fault;

use super::{setup, write_calls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_namespace_and_service_are_typed() {
    let (ns, _, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    let err = Registration::new(&sdk, "no-such-namespace-xyz", "web", "i-1")
        .port(80)
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NamespaceNotFound, "{err}");
    assert_eq!(proxy.count("ListNamespaces"), 1);
    assert_eq!(proxy.count("ListServices"), 0);

    let err = Registration::new(&sdk, &ns, "nosuch", "i-1")
        .port(80)
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound, "{err}");
    assert_eq!(proxy.count("ListServices"), 1);
    assert_eq!(proxy.count("RegisterInstance"), 0);

    // A service of that name in another namespace is not ours.
    let (other_ns, _, _) = setup().await;
    test_support::moto::plain_service(&other_ns, "elsewhere").await;
    let err = Registration::new(&sdk, &ns, "elsewhere", "i-1")
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound, "{err}");
    assert_eq!(proxy.count("RegisterInstance"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_before_any_call() {
    let (ns, _, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    let base = || {
        Registration::new(&sdk, &ns, "web", "i-1")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(8080)
    };
    let thirty_one = (0..31).fold(base(), |r, i| r.attribute(format!("k{i}"), "v"));
    let thirty = (0..30).fold(base(), |r, i| r.attribute(format!("k{i}"), "v"));
    let cases = [
        ("31 custom attributes", thirty_one),
        ("empty key", base().attribute("", "v")),
        ("oversized value", base().attribute("k", "v".repeat(1025))),
        ("reserved key", base().attribute("AWS_SECRET", "x")),
        ("bad port", base().attribute("AWS_INSTANCE_PORT", "70000")),
        (
            "bad instance id",
            Registration::new(&sdk, &ns, "web", "has space"),
        ),
        (
            "bad namespace",
            Registration::new(&sdk, "has space", "web", "i-1"),
        ),
        ("bad service", Registration::new(&sdk, &ns, "-web", "i-1")),
        ("zero deadline", base().deadline(std::time::Duration::ZERO)),
        // Addresses no caller can connect to (before, each was registered).
        ("unspecified IPv4", base().ipv4(Ipv4Addr::UNSPECIFIED)),
        ("unspecified IPv6", base().ipv6(Ipv6Addr::UNSPECIFIED)),
        ("broadcast", base().ipv4(Ipv4Addr::BROADCAST)),
        ("multicast IPv4", base().ipv4(Ipv4Addr::new(224, 0, 0, 1))),
        (
            "multicast IPv6",
            base().attribute("AWS_INSTANCE_IPV6", "ff02::1"),
        ),
        // Addresses the default AddressPolicy skips (before, each was registered and
        // then skipped by every resolver keeping that default).
        (
            "link-local IPv4",
            base().ipv4(Ipv4Addr::new(169, 254, 169, 254)),
        ),
        ("link-local IPv6", base().ipv6("fe80::1".parse().unwrap())),
        (
            "EC2 service IPv6",
            base().ipv6("fd00:ec2::254".parse().unwrap()),
        ),
        (
            "NAT64 of link-local",
            base().ipv6("64:ff9b::a9fe:a9fe".parse().unwrap()),
        ),
        (
            "CNAME spelling a link-local address",
            Registration::new(&sdk, &ns, "web", "i-1")
                .attribute("AWS_INSTANCE_CNAME", "0xa9fea9fe")
                .port(8080),
        ),
    ];
    for (what, registration) in cases {
        let err = registration.register().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
    }
    assert_eq!(write_calls(&proxy), 0, "a call was made for bad input");

    // Thirty custom attributes are allowed, and a loopback address.
    let registered = thirty.register().await.unwrap();
    registered.drain(std::time::Duration::ZERO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_without_region_fails_without_a_call() {
    let (ns, _, proxy) = setup().await;
    let sdk = aws_config::SdkConfig::builder()
        .endpoint_url(proxy.url())
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let err = Registration::new(&sdk, &ns, "web", "i-1")
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert_eq!(write_calls(&proxy), 0);
}

/// The registry refusing the caller (permissions, credentials) is a configuration
/// error reported at once, with the AWS code and message: RegisterInstance is sent
/// once, not retried into a "gave up" that reads like an outage (issue 25). A quota
/// is its own kind, not retried either; an unknown code stays retryable and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_caller_are_configuration_errors_sent_once() {
    let (ns, _, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    let refusals = [
        (403, "AccessDeniedException", ErrorKind::Configuration),
        (400, "UnrecognizedClientException", ErrorKind::Configuration),
        (403, "InvalidClientTokenId", ErrorKind::Configuration),
        (400, "ExpiredTokenException", ErrorKind::Configuration),
        (403, "InvalidSignatureException", ErrorKind::Configuration),
        (400, "ResourceLimitExceeded", ErrorKind::QuotaExceeded),
    ];
    for (n, (status, code, kind)) in refusals.into_iter().enumerate() {
        proxy.fault_operation(
            "RegisterInstance",
            Fault::AwsError {
                status,
                code,
                message: "refused by the test proxy",
            },
            None,
        );
        let err = Registration::new(&sdk, &ns, "web", "i-denied")
            .port(80)
            .jitter_seed(1)
            .register()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{code}: {err}");
        assert!(!err.is_retryable(), "{code}");
        assert!(err.message().contains(code), "{err}");
        assert!(err.message().contains("refused by the test proxy"), "{err}");
        assert_eq!(
            proxy.count("RegisterInstance"),
            n as u64 + 1,
            "{code}: sent once"
        );
    }
    // A code no rule names: retried as an outage, and named in the error. The
    // deadline (10 s) leaves room for the look-ups and a slow first send on a busy
    // machine (the error names the registry's last answer however the retries end:
    // at the deadline, or at the 8 sends' bound, reached at 5.7 s at the earliest).
    proxy.reset_counts();
    proxy.fault_operation(
        "RegisterInstance",
        Fault::AwsError {
            status: 500,
            code: "SomethingNewException",
            message: "new",
        },
        None,
    );
    let err = Registration::new(&sdk, &ns, "web", "i-unknown")
        .port(80)
        .jitter_seed(1)
        .deadline(std::time::Duration::from_secs(10))
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("SomethingNewException"), "{err}");
    let sends = proxy.count("RegisterInstance");
    assert!((2..=8).contains(&sends), "{sends} sends");
}

/// A caller whose clock is 10 minutes behind the registry's is refused
/// (`InvalidSignatureException`, "Signature expired", the answer dated 10 minutes
/// on); the SDK signs its next call with the registry's time, so the refusal is
/// sent again rather than reported as the caller's configuration. Before, it was a
/// `Configuration` error after 1 RegisterInstance (and so was every new
/// `Registration`, whose client starts from the local clock again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_skew_refusal_is_sent_again_with_the_registrys_time() {
    let (ns, _, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    proxy.fault_operation(
        "RegisterInstance",
        Fault::SkewedAwsError {
            status: 400,
            code: "InvalidSignatureException",
            message: "Signature expired: 20260101T000000Z is now earlier than \
                      20260101T000500Z (20260101T001000Z - 5 min.)",
            ahead: 600,
        },
        Some(1),
    );
    let registered = Registration::new(&sdk, &ns, "web", "i-skewed")
        .port(80)
        .jitter_seed(1)
        .register()
        .await
        .unwrap();
    assert_eq!(proxy.count("RegisterInstance"), 2);
    registered.drain(std::time::Duration::ZERO).await.unwrap();

    // The clock is still off once the SDK signs with the registry's time: a refusal
    // that is not about the request's time (a permission, a wrong secret) is the
    // caller's configuration still, sent once.
    for (code, message) in [
        (
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/x is not authorized to perform: \
             servicediscovery:RegisterInstance",
        ),
        (
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ),
    ] {
        proxy.reset_counts();
        proxy.fault_operation(
            "RegisterInstance",
            Fault::SkewedAwsError {
                status: 400,
                code,
                message,
                ahead: 600,
            },
            None,
        );
        let err = Registration::new(&sdk, &ns, "web", "i-skewed-denied")
            .port(80)
            .jitter_seed(1)
            .register()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration, "{code}: {err}");
        assert_eq!(proxy.count("RegisterInstance"), 1, "{code}: sent once");
    }
}

/// Loading credentials counts against the registration's deadline: a credentials
/// chain that hangs (here a `credential_process` that sleeps) ends the call at the
/// deadline, named, instead of holding it for as long as the chain takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_credentials_chain_ends_at_the_deadline() {
    let (dead, _held) = test_support::net::closed_port();
    let slow = aws_config::credential_process::CredentialProcessProvider::new("sleep 20".into());
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(
            aws_sdk_servicediscovery::config::SharedCredentialsProvider::new(slow),
        )
        .endpoint_url(format!("http://{dead}"))
        .build();
    let register = Registration::new(&sdk, "shared", "web", "i-1")
        .deadline(std::time::Duration::from_millis(500))
        .register();
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), register)
        .await
        .expect("the deadline bounds the credentials load")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("credentials"), "{err}");
    assert!(err.message().contains("deadline"), "{err}");
}

/// With the endpoint URL set for Cloud Map alone (a profile's `services` section,
/// or `AWS_ENDPOINT_URL_SERVICEDISCOVERY`), which `SdkConfig::endpoint_url()` does
/// not show, every call goes there, and the errors say so. Before, they named
/// `https://servicediscovery.us-east-1.amazonaws.com`, where no call went (the first
/// case, ListNamespaces, failed so); now each of the six names the configured URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_endpoint_set_for_cloud_map_alone() {
    use std::time::Duration;

    let (ns, _, proxy) = setup().await;
    let sdk = test_support::moto::sdk_config_for_cloud_map_alone(&proxy.url()).await;
    assert_eq!(sdk.endpoint_url(), None);
    let names_it = |op: &str, err: &cloudmap_resolver::Error| {
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{op}: {err}");
        assert!(err.message().contains(&proxy.url()), "{op}: {err}");
        assert!(!err.message().contains("amazonaws.com"), "{op}: {err}");
    };
    // 5 s: the look-ups before a faulted GetOperation pass through moto, and must
    // leave the retries room to hear the fault (the error names the last answer).
    let registration = |id: &str| {
        Registration::new(&sdk, &ns, "web", id)
            .ipv4("127.0.0.1".parse().unwrap())
            .port(8080)
            .jitter_seed(1)
            .deadline(Duration::from_secs(5))
    };
    // The look-ups, RegisterInstance and its operation's polls.
    for op in ["ListNamespaces", "RegisterInstance", "GetOperation"] {
        proxy.fault_operation(op, Fault::Close, None);
        // An id per case: a faulted poll leaves its instance registered.
        let err = registration(&format!("i-{op}"))
            .register()
            .await
            .unwrap_err();
        proxy.fault_operation(op, Fault::None, None);
        names_it(op, &err);
        assert!(proxy.count(op) >= 1, "{op} never reached the proxy");
    }
    // The handle's calls: the entry check, the health update, the deregistration.
    let registered = registration("i-where").register().await.unwrap();
    for op in [
        "GetInstance",
        "UpdateInstanceCustomHealthStatus",
        "DeregisterInstance",
    ] {
        proxy.fault_operation(op, Fault::Close, None);
        let err = match op {
            "DeregisterInstance" => registered.drain(Duration::ZERO).await.unwrap_err(),
            _ => registered
                .set_health(cloudmap_resolver::HealthStatus::Unhealthy)
                .await
                .unwrap_err(),
        };
        proxy.fault_operation(op, Fault::None, None);
        names_it(op, &err);
    }
    assert!(registered
        .drain(Duration::ZERO)
        .await
        .unwrap()
        .deregistered());
}
