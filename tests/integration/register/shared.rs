//! A namespace shared from another account (AWS RAM): the registration names its
//! owner, refers to the service by its ARN and asks GetOperation with `OwnerAccount`.
//! (moto takes only service ids: the test proxy turns ARNs back into ids for it, after
//! recording the bodies as sent.)

use std::time::Duration;

use cloudmap_resolver::{ErrorKind, Registration};
use test_support::moto::sdk_config;

use super::{resolver, setup, shows_within, write_calls, SETTLE};

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
    // ListServices names a shared namespace by its ARN (ServiceFilter: "Specify the
    // namespace ARN for namespaces that are shared with your AWS account"); by its
    // id, Cloud Map lists none of its services.
    let namespace_arn = format!(
        "{}namespace/{}",
        arn.strip_suffix(&format!("service/{service_id}")).unwrap(),
        registered.namespace_id()
    );
    let list = sent(&proxy.bodies("ListServices")[0]);
    assert_eq!(
        list["Filters"][0]["Values"][0].as_str(),
        Some(namespace_arn.as_str()),
        "{list}"
    );
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
    // How soon is `lifecycle.rs`'s to check: this test is about what was sent.
    assert!(shows_within(&caller, &ns, "i-shared", true, SETTLE).await);

    let drained = registered.drain(Duration::ZERO).await.unwrap();
    assert!(drained.deregistered());
    let deregister = sent(&proxy.bodies("DeregisterInstance")[0]);
    assert_eq!(deregister["ServiceId"].as_str(), Some(arn.as_str()));
    let last_poll = sent(proxy.bodies("GetOperation").last().unwrap());
    assert_eq!(last_poll["OwnerAccount"].as_str(), Some(MOTO_ACCOUNT));
    assert!(shows_within(&caller, &ns, "i-shared", false, SETTLE).await);
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

/// Without `owner_account`, only the caller's own namespaces: a namespace of the same
/// name shared from another account, listed first, does not receive the instance
/// (issue 25). `RESOURCE_OWNER = SELF` is sent; moto ignores filters, so the answer
/// is checked too: against the account the credentials name, and when they name
/// none, two owners of one name are refused rather than guessed between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_owner_a_shared_namespace_of_the_same_name_is_not_used() {
    let (ns, own_service, proxy) = setup().await;
    // Another account's namespace of the same name, with its own `web`: moto holds
    // one account, so the proxy shows a namespace of another name as that one.
    let other_name = test_support::moto::unique("reg-other");
    let other_service = test_support::moto::http_service(&other_name, "web").await;
    let other_id = test_support::moto::namespace_id(&other_name).await;
    proxy.disguise_namespace(&other_id, &ns, "444455556666");

    // Credentials that name the caller's account: its own namespace is found.
    let creds = aws_sdk_servicediscovery::config::Credentials::builder()
        .access_key_id("testing")
        .secret_access_key("testing")
        .account_id(MOTO_ACCOUNT)
        .provider_name("tests")
        .build();
    let sdk = sdk_config(&proxy.url())
        .into_builder()
        .credentials_provider(
            aws_sdk_servicediscovery::config::SharedCredentialsProvider::new(creds),
        )
        .build();
    let registered = Registration::new(&sdk, &ns, "web", "i-own")
        .port(8080)
        .register()
        .await
        .unwrap();
    assert_eq!(registered.service_id(), own_service);
    assert!(test_support::moto::instance_ids(&own_service)
        .await
        .contains(&"i-own".to_owned()));
    assert!(test_support::moto::instance_ids(&other_service)
        .await
        .is_empty());
    let list = sent(&proxy.bodies("ListNamespaces")[0]);
    let filters = list["Filters"].as_array().unwrap();
    assert!(
        filters.iter().any(|f| f["Name"] == "RESOURCE_OWNER"
            && f["Condition"] == "EQ"
            && f["Values"][0] == "SELF"),
        "{list}"
    );
    registered.drain(Duration::ZERO).await.unwrap();

    // Credentials that do not name it (moto's dummy ones): two owners of the name,
    // refused, and nothing registered anywhere.
    let before = proxy.count("RegisterInstance");
    let err = Registration::new(&sdk_config(&proxy.url()), &ns, "web", "i-which")
        .port(8080)
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    assert!(err.message().contains("444455556666"), "{err}");
    assert!(err.message().contains("owner_account"), "{err}");
    assert_eq!(proxy.count("RegisterInstance"), before);
    assert!(test_support::moto::instance_ids(&other_service)
        .await
        .is_empty());
}
