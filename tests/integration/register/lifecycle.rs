//! Register, seen by a resolver; set health; drain, gone from the resolver.

use std::time::Duration;

use cloudmap_resolver::{ErrorKind, HealthStatus, Registered, Registration};
use test_support::moto::{health_status, instance_attributes, instance_ids, register, sdk_config};
use test_support::proxy::Proxy;

use super::{calls_until_shown, resolver, setup, shows_within, write_calls, SETTLE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_is_seen_then_drained_is_gone_within_ttl_plus_one_second() {
    let (ns, service_id, proxy) = setup().await;
    // The caller is warm (it has an answer cached) before the instance arrives.
    register(
        &service_id,
        "base",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", "9"),
        ],
    )
    .await;
    let ttl = Duration::from_secs(1);
    let caller = resolver(ttl);
    assert!(shows_within(&caller, &ns, "base", true, SETTLE).await);

    let registered = Registration::new(&sdk_config(&proxy.url()), &ns, "web", "i-new")
        .ipv4("127.0.0.1".parse().unwrap())
        .port(8080)
        .attribute("stage", "prod")
        .register()
        .await
        .unwrap();
    assert_eq!(registered.instance_id(), "i-new");
    assert_eq!(registered.service_id(), service_id);
    assert!(registered.has_custom_health_check());
    // Within TTL + 1 s at quiet times, as a count that a loaded machine does not
    // change: the caller's next refresh shows it (see `calls_until_shown`).
    let calls = calls_until_shown(&caller, &ns, "i-new", true).await;
    let (calls, failed) = calls.expect("registered instance not seen within 20 s");
    println!("registered instance seen after {calls} registry calls ({failed} failed refreshes)");
    assert!(
        calls <= 2 + 2 * failed,
        "registered instance seen after {calls} registry calls ({failed} failed refreshes)"
    );
    let ep = caller
        .resolve_all(&ns, "web")
        .await
        .unwrap()
        .iter()
        .find(|e| e.instance_id() == "i-new")
        .cloned()
        .unwrap();
    assert_eq!(ep.socket_addr(), Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(ep.attribute("stage"), Some("prod"));

    // One RegisterInstance, carrying the CreatorRequestId the handle reports.
    assert_eq!(proxy.count("RegisterInstance"), 1);
    let body = &proxy.bodies("RegisterInstance")[0];
    let sent: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        sent["CreatorRequestId"].as_str(),
        Some(registered.creator_request_id())
    );

    let drained = registered.drain(Duration::ZERO).await.unwrap();
    assert!(drained.deregistered());
    assert!(drained.operation_id().is_some());
    assert_eq!(proxy.count("DeregisterInstance"), 1);
    let calls = calls_until_shown(&caller, &ns, "i-new", false).await;
    let (calls, failed) = calls.expect("drained instance still handed out after 20 s");
    println!("drained instance gone after {calls} registry calls ({failed} failed refreshes)");
    assert!(
        calls <= 2 + 2 * failed,
        "drained instance gone after {calls} registry calls ({failed} failed refreshes)"
    );
    assert!(shows_within(&caller, &ns, "base", true, SETTLE).await);

    // Draining again is not an error: the instance is already gone.
    let again = registered.drain(Duration::ZERO).await.unwrap();
    assert!(!again.deregistered());

    // The SDK's `data-` host prefix is for DiscoverInstances(Revision) only: every
    // write went to the endpoint URL as given (the registration's client does not
    // carry the fix CloudMapDiscovery needs, so a prefixed host would have failed).
    let hosts = proxy.hosts();
    assert!(hosts.len() as u64 >= write_calls(&proxy) && !hosts.is_empty());
    for (op, host) in hosts {
        assert_eq!(host, proxy.addr.to_string(), "{op} sent to {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_set_on_services_with_a_custom_health_check_only() {
    let (ns, service_id, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    let registered = Registration::new(&sdk, &ns, "web", "i-h")
        .ipv4("127.0.0.1".parse().unwrap())
        .port(8080)
        .initially_unhealthy()
        .register()
        .await
        .unwrap();
    let attrs = instance_attributes(&service_id, "i-h").await;
    assert_eq!(
        attrs.get("AWS_INIT_HEALTH_STATUS").map(String::as_str),
        Some("UNHEALTHY")
    );
    registered
        .set_health(HealthStatus::Unhealthy)
        .await
        .unwrap();
    assert_eq!(
        health_status(&service_id, "i-h").await.as_deref(),
        Some("UNHEALTHY")
    );
    registered.set_health(HealthStatus::Healthy).await.unwrap();
    assert_eq!(
        health_status(&service_id, "i-h").await.as_deref(),
        Some("HEALTHY")
    );
    assert_eq!(proxy.count("UpdateInstanceCustomHealthStatus"), 2);
    let err = registered
        .set_health(HealthStatus::Unknown)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(proxy.count("UpdateInstanceCustomHealthStatus"), 2);
    registered.drain(Duration::ZERO).await.unwrap();

    // A service without a custom health check: typed errors, no write made.
    test_support::moto::plain_service(&ns, "plain").await;
    let plain = Registration::new(&sdk, &ns, "plain", "i-p")
        .ipv4("127.0.0.1".parse().unwrap())
        .register()
        .await
        .unwrap();
    assert!(!plain.has_custom_health_check());
    let err = plain.set_health(HealthStatus::Unhealthy).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CustomHealthNotFound);
    assert_eq!(proxy.count("UpdateInstanceCustomHealthStatus"), 2);
    plain.drain(Duration::ZERO).await.unwrap();

    let registers = proxy.count("RegisterInstance");
    let err = Registration::new(&sdk, &ns, "plain", "i-q")
        .initially_unhealthy()
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CustomHealthNotFound);
    assert_eq!(proxy.count("RegisterInstance"), registers);
}

/// An instance id registered twice, as by a process and its replacement (Cloud Map
/// replaces the instance, with the new registration's `CreatorRequestId`; the proxy
/// makes moto do the same): the service's id, the old registration (port 8080), the
/// replacement's (8081), and the proxy they write through (kept: dropped, it stops).
async fn replaced() -> (String, Registered, Registered, Proxy) {
    let (ns, service_id, proxy) = setup().await;
    proxy.replace_on_register();
    let sdk = sdk_config(&proxy.url());
    let register = |port| {
        Registration::new(&sdk, &ns, "web", "i-same")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(port)
            .register()
    };
    let old = register(8080).await.unwrap();
    let new = register(8081).await.unwrap();
    (service_id, old, new, proxy)
}

/// A replacement process that registered the same instance id (Cloud Map replaces
/// the instance, with the new registration's `CreatorRequestId`; the proxy makes
/// moto do the same) is not taken out by the old process's drain. Before: the old
/// drain deregistered by id and removed the replacement (0 instances left); now it
/// sees the entry is no longer its own, leaves it (1 left, the replacement's port)
/// and reports that it deregistered nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_leaves_a_replacement_registered_under_the_same_id() {
    let (service_id, old, new, _proxy) = replaced().await;
    assert_ne!(old.creator_request_id(), new.creator_request_id());
    assert_eq!(instance_ids(&service_id).await, ["i-same"], "replaced");

    let drained = old.drain(Duration::ZERO).await.unwrap();
    assert!(!drained.deregistered(), "{drained:?}");
    assert_eq!(instance_ids(&service_id).await, ["i-same"], "removed");
    let port = instance_attributes(&service_id, "i-same").await["AWS_INSTANCE_PORT"].clone();
    assert_eq!(port, "8081");

    // The replacement's own drain takes it out.
    let drained = new.drain(Duration::ZERO).await.unwrap();
    assert!(drained.deregistered(), "{drained:?}");
    assert!(instance_ids(&service_id).await.is_empty());
}

/// Nor does the old process's `set_health` reach the replacement: it would mark the
/// new process unhealthy. Before: the update went to the id (the replacement read
/// UNHEALTHY); now it fails as `InstanceNotFound` (this registration is gone) and
/// the replacement stays HEALTHY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_health_leaves_a_replacement_alone() {
    let (service_id, old, new, _proxy) = replaced().await;
    new.set_health(HealthStatus::Healthy).await.unwrap();

    let err = old.set_health(HealthStatus::Unhealthy).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InstanceNotFound, "{err}");
    assert_eq!(
        health_status(&service_id, "i-same").await.as_deref(),
        Some("HEALTHY")
    );
    new.drain(Duration::ZERO).await.unwrap();
    old.drain(Duration::ZERO).await.unwrap();
}

/// The `CreatorRequestId` of a replacement is another writer's value: the drain's
/// warning and `set_health`'s error show it escaped on one line and cut, as other
/// registry values are. Before: it went in raw (a newline split the warning in two
/// lines, an escape sequence reached the terminal); now the warning is one line and
/// neither text holds a control character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacements_hostile_creator_request_id_is_shown_escaped() {
    use aws_sdk_servicediscovery as sd;
    use tracing::instrument::WithSubscriber;
    let (ns, service_id, proxy) = setup().await;
    proxy.replace_on_register();
    let sdk = sdk_config(&proxy.url());
    let old = Registration::new(&sdk, &ns, "web", "i-same")
        .ipv4("127.0.0.1".parse().unwrap())
        .port(8080)
        .register()
        .await
        .unwrap();
    let hostile = format!("x\nforged line\u{1b}[2J{}", "y".repeat(1_000));
    sd::Client::new(&sdk)
        .register_instance()
        .service_id(&service_id)
        .instance_id("i-same")
        .creator_request_id(&hostile)
        .attributes("AWS_INSTANCE_IPV4", "127.0.0.1")
        .attributes("AWS_INSTANCE_PORT", "8081")
        .send()
        .await
        .unwrap();

    let err = old.set_health(HealthStatus::Unhealthy).await.unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(|c: char| c.is_control()), "{text:?}");
    let cut = format!("… ({} bytes)", hostile.len());
    assert!(text.contains(&cut), "cut: {text:?}");

    let buf = super::LogBuf::default();
    let drained = old
        .drain(Duration::ZERO)
        .with_subscriber(buf.subscriber())
        .await
        .unwrap();
    assert!(!drained.deregistered(), "{drained:?}");
    let log = buf.text();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("replaced_by")).collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(!log.contains("\nforged line"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
    assert!(warned[0].contains(&cut), "cut: {log}");
    assert_eq!(
        instance_ids(&service_id).await,
        ["i-same"],
        "left registered"
    );
}
