//! A namespace shared from another account (AWS RAM): the registration names its
//! owner, refers to the service by its ARN and asks GetOperation with `OwnerAccount`.
//! (moto takes only service ids: the test proxy turns ARNs back into ids for it, after
//! recording the bodies as sent.)

use std::time::Duration;

use cloudmap_resolver::{ErrorKind, Registration};
use test_support::moto::sdk_config;

use super::{resolver, setup, shows_within, write_calls};

/// The account moto creates every resource in.
const MOTO_ACCOUNT: &str = "123456789012";

fn sent(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_account_registration_names_the_service_by_arn() {
    let (ns, service_id, proxy) = setup().await;
    let ttl = Duration::from_secs(1);
    let caller = resolver(ttl);
    let registered = Registration::new(&sdk_config(&proxy.url()), &ns, "web", "i-shared")
        .ipv4("127.0.0.1".parse().unwrap())
        .port(8080)
        .owner_account(MOTO_ACCOUNT)
        .register()
        .await
        .unwrap();
    let arn = registered.service_id().to_owned();
    assert!(
        arn.starts_with("arn:aws:servicediscovery:")
            && arn.contains(&format!(":{MOTO_ACCOUNT}:"))
            && arn.ends_with(&format!("service/{service_id}")),
        "{arn}"
    );
    let register = sent(&proxy.bodies("RegisterInstance")[0]);
    assert_eq!(register["ServiceId"].as_str(), Some(arn.as_str()));
    // moto lists every namespace's `web` (it ignores the filter): GetService asked
    // about each candidate by ARN, ours among them.
    let asked: Vec<String> = proxy
        .bodies("GetService")
        .iter()
        .filter_map(|b| sent(b)["Id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        asked
            .iter()
            .all(|id| id.starts_with("arn:aws:servicediscovery:")),
        "{asked:?}"
    );
    assert!(asked.contains(&arn), "{asked:?}");
    let operation = sent(&proxy.bodies("GetOperation")[0]);
    assert_eq!(operation["OwnerAccount"].as_str(), Some(MOTO_ACCOUNT));
    let window = ttl + Duration::from_secs(1);
    assert!(shows_within(&caller, &ns, "i-shared", true, window).await);

    let drained = registered.drain(Duration::ZERO).await.unwrap();
    assert!(drained.deregistered());
    let deregister = sent(&proxy.bodies("DeregisterInstance")[0]);
    assert_eq!(deregister["ServiceId"].as_str(), Some(arn.as_str()));
    let last_poll = sent(proxy.bodies("GetOperation").last().unwrap());
    assert_eq!(last_poll["OwnerAccount"].as_str(), Some(MOTO_ACCOUNT));
    assert!(shows_within(&caller, &ns, "i-shared", false, window).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_of_another_owner_is_not_found_and_nothing_is_registered() {
    let (ns, _, proxy) = setup().await;
    let err = Registration::new(&sdk_config(&proxy.url()), &ns, "web", "i-other")
        .port(8080)
        .owner_account("444455556666")
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NamespaceNotFound);
    assert!(err.to_string().contains("444455556666"), "{err}");
    assert_eq!(proxy.count("RegisterInstance"), 0);
}

#[tokio::test]
async fn a_malformed_owner_account_is_refused_before_any_call() {
    let (ns, _, proxy) = setup().await;
    for bad in [
        "",
        "12345678901",
        "1234567890123",
        "1234-5678-9012",
        "12345678901x",
    ] {
        let err = Registration::new(&sdk_config(&proxy.url()), &ns, "web", "i-bad")
            .owner_account(bad)
            .register()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    assert_eq!(write_calls(&proxy), 0);
}
