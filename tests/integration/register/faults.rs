//! What moto cannot do, from the proxy: operations that FAIL or stay PENDING, and
//! throttling. Typed errors, bounded calls, one registration per CreatorRequestId.

use std::time::Duration;

use cloudmap_resolver::{ErrorKind, Registration};
use test_support::moto::{instance_ids, sdk_config};
use test_support::proxy::Fault;

use super::setup;

/// What RegisterInstance's retries may add up to: its documented bound.
const MAX_SENDS: u64 = 8;

/// `InstanceNotFound` as AWS documents it: no such instance, or one registered too
/// recently to have propagated.
fn not_propagated() -> Fault {
    Fault::AwsError {
        status: 400,
        code: "InstanceNotFound",
        message: "No instance exists with the specified ID, or the instance was recently \
                  registered, and information about the instance hasn't propagated yet.",
    }
}

fn registration(sdk: &aws_config::SdkConfig, ns: &str, id: &str) -> Registration {
    Registration::new(sdk, ns, "web", id)
        .ipv4("127.0.0.1".parse().unwrap())
        .port(8080)
        .jitter_seed(7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_fails_is_a_typed_error() {
    let (ns, _, proxy) = setup().await;
    proxy.fault_operation("GetOperation", Fault::OperationStatus("FAIL"), None);
    let err = registration(&sdk_config(&proxy.url()), &ns, "i-f")
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OperationFailed, "{err}");
    assert!(err.message().contains("INSTANCE_LIMIT_EXCEEDED"), "{err}");
    assert_eq!(proxy.count("RegisterInstance"), 1);
    assert_eq!(proxy.count("GetOperation"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_operation_is_polled_with_backoff_until_success() {
    let (ns, _, proxy) = setup().await;
    // PENDING three times, then moto's SUCCESS.
    proxy.fault_operation("GetOperation", Fault::OperationStatus("PENDING"), Some(3));
    let registered = registration(&sdk_config(&proxy.url()), &ns, "i-p")
        .register()
        .await
        .unwrap();
    assert_eq!(proxy.count("GetOperation"), 4);
    registered.drain(Duration::ZERO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_never_finishes_ends_at_the_deadline() {
    let (ns, _, proxy) = setup().await;
    proxy.fault_operation("GetOperation", Fault::OperationStatus("PENDING"), None);
    // 10 s: the look-ups before RegisterInstance (ListNamespaces, ListServices,
    // GetService, through moto) count against the deadline and can take seconds on
    // a loaded machine; the polls need what is left.
    let err = registration(&sdk_config(&proxy.url()), &ns, "i-d")
        .deadline(Duration::from_secs(10))
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("PENDING"), "{err}");
    // Backoff from 100 ms doubling to 2 s, each delay at least half its step: at
    // least 50, 100, 200, 400, 800 ms then 1 s between polls, so at most 14 polls
    // in 10 s (a busy loop makes hundreds); 60, `MAX_POLLS`, is not reached.
    let polls = proxy.count("GetOperation");
    assert!((2..=14).contains(&polls), "{polls} polls");
}

/// A poll the deadline cuts still says what the operation was at the poll before:
/// the caller hears `PENDING`, not a bare deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_the_deadline_cuts_names_the_state_before_it() {
    let (ns, _, proxy) = setup().await;
    proxy.fault_operation("GetOperation", Fault::OperationStatus("PENDING"), Some(1));
    proxy.then_fault_operation("GetOperation", Fault::Hang, None);
    // The deadline ends the hung poll (the SDK has no timeout of its own here); 10 s
    // leaves the look-ups and the first poll room on a loaded machine.
    let err = registration(&sdk_config(&proxy.url()), &ns, "i-h")
        .deadline(Duration::from_secs(10))
        .register()
        .await
        .unwrap_err();
    assert_eq!(proxy.count("GetOperation"), 2);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("still PENDING"), "{err}");
    assert_eq!(err.message().matches("deadline").count(), 1, "{err}");
}

/// RegisterInstance whose connection closes before the answer is sent again (its
/// `CreatorRequestId` makes that safe) and the instance is registered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_the_answer_is_retried() {
    let (ns, service_id, proxy) = setup().await;
    proxy.fault_operation("RegisterInstance", Fault::Close, Some(1));
    let registered = registration(&sdk_config(&proxy.url()), &ns, "i-c")
        .register()
        .await
        .unwrap();
    assert_eq!(proxy.count("RegisterInstance"), 2);
    let listed = instance_ids(&service_id).await;
    assert_eq!(listed.iter().filter(|id| *id == "i-c").count(), 1);
    registered.drain(Duration::ZERO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_registration_backs_off_and_registers_once() {
    let (ns, service_id, proxy) = setup().await;
    proxy.fault_operation("RegisterInstance", Fault::Throttle, Some(3));
    proxy.fault_operation("ListNamespaces", Fault::Throttle, Some(1));
    let registered = registration(&sdk_config(&proxy.url()), &ns, "i-t")
        .register()
        .await
        .unwrap();
    assert_eq!(proxy.count("ListNamespaces"), 2);
    assert_eq!(proxy.count("RegisterInstance"), 4);
    // Every retry carried the same CreatorRequestId, and the registry saw one
    // registration (moto would list a duplicate for a second one).
    let ids: Vec<String> = proxy
        .bodies("RegisterInstance")
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["CreatorRequestId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|id| id == registered.creator_request_id()));
    let listed = instance_ids(&service_id).await;
    assert_eq!(listed.iter().filter(|id| *id == "i-t").count(), 1);
    registered.drain(Duration::ZERO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_to_the_end_is_throttled_with_bounded_calls() {
    let (ns, service_id, proxy) = setup().await;
    proxy.fault_operation("RegisterInstance", Fault::Throttle, None);
    // 10 s: the look-ups before RegisterInstance count against the deadline (a
    // deadline they used up would end the call before the first send, as
    // `Unavailable`: no throttling heard yet).
    // Either bound may end the retries: MAX_SENDS (at 5.7 s at the earliest) or the
    // deadline; both end as `Throttled`.
    let err = registration(&sdk_config(&proxy.url()), &ns, "i-x")
        .deadline(Duration::from_secs(10))
        .register()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{err}");
    let sends = proxy.count("RegisterInstance");
    assert!((2..=MAX_SENDS).contains(&sends), "{sends} sends");
    assert!(instance_ids(&service_id).await.is_empty());

    // Throttled deregistration: drain reports it and keeps the handle usable.
    proxy.fault_operation("RegisterInstance", Fault::None, None);
    // A registration that must succeed: the default deadline (60 s).
    let registered = registration(&sdk_config(&proxy.url()), &ns, "i-y")
        .register()
        .await
        .unwrap();
    proxy.fault_operation("DeregisterInstance", Fault::Throttle, None);
    let err = registered.drain(Duration::ZERO).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{err}");
    assert_eq!(instance_ids(&service_id).await, ["i-y"]);
    proxy.fault_operation("DeregisterInstance", Fault::None, None);
    assert!(registered
        .drain(Duration::ZERO)
        .await
        .unwrap()
        .deregistered());
    assert!(instance_ids(&service_id).await.is_empty());
}

/// A RegisterInstance whose answer is lost was carried out: while its operation
/// runs (tens of seconds in a DNS namespace, as Cloud Map writes the Route 53
/// records), each retry hears `DuplicateRequest` naming it. That operation is this
/// registration's (same `CreatorRequestId`), and is waited on. Before, the retries
/// went on as for an outage until the 8 sends' bound and `register` failed
/// `Unavailable` with the instance registered and no handle to drain it; now it is
/// registered after 2 sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_answer_was_lost_waits_on_its_running_operation() {
    let (ns, service_id, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    proxy.fault_operation("RegisterInstance", Fault::LoseAnswer, Some(1));
    proxy.then_fault_operation("RegisterInstance", Fault::DuplicateOfLost, None);
    let registered = registration(&sdk, &ns, "i-lost-reg")
        .deadline(Duration::from_secs(20))
        .register()
        .await
        .unwrap();
    assert_eq!(proxy.count("RegisterInstance"), 2);
    assert!(instance_ids(&service_id)
        .await
        .contains(&"i-lost-reg".to_owned()));
    registered.drain(Duration::ZERO).await.unwrap();
}

/// A `DuplicateRequest` heard by a registration none of whose sends may have
/// been carried out (each one answered, and refused) names some other request's
/// operation, not this registration's: it is not waited on as this one's. Before,
/// the first refusal (an outage to the retry) counted as a lost answer, so the
/// second send's `DuplicateRequest` had `register` wait on the other operation and
/// succeed (Ok, with the instance never registered); now it fails, unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_with_no_lost_answer_is_not_taken_as_this_registration() {
    let (ns, service_id, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    // Another registration's answer is lost: its operation is the one named.
    proxy.fault_operation("RegisterInstance", Fault::LoseAnswer, Some(1));
    let other = registration(&sdk, &ns, "i-dup-other")
        .register()
        .await
        .unwrap();
    proxy.fault_operation("RegisterInstance", Fault::DuplicateOfLost, None);
    let got = registration(&sdk, &ns, "i-dup-never")
        .deadline(Duration::from_secs(2))
        .register()
        .await;
    assert!(
        got.is_err(),
        "registered without a send carried out: {got:?}"
    );
    assert!(!instance_ids(&service_id)
        .await
        .contains(&"i-dup-never".to_owned()));
    other.drain(Duration::ZERO).await.unwrap();
}

/// A DeregisterInstance whose answer is lost was carried out: its retry hears
/// `InstanceNotFound` (moto) or `DuplicateRequest` naming the running operation
/// (Cloud Map). Either way this drain did it, and says so (issue 25).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_answer_was_lost_still_deregistered() {
    let (ns, service_id, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());

    // The retry hears InstanceNotFound: moto already removed it.
    let registered = registration(&sdk, &ns, "i-lost").register().await.unwrap();
    proxy.fault_operation("DeregisterInstance", Fault::LoseAnswer, Some(1));
    let drained = registered.drain(Duration::ZERO).await.unwrap();
    assert_eq!(proxy.count("DeregisterInstance"), 2);
    assert!(drained.deregistered(), "{drained:?}");
    assert_eq!(drained.operation_id(), None);
    assert!(!instance_ids(&service_id)
        .await
        .contains(&"i-lost".to_owned()));

    // The retry hears DuplicateRequest: the operation it names is waited on.
    proxy.reset_counts();
    let registered = registration(&sdk, &ns, "i-dup").register().await.unwrap();
    proxy.fault_operation("DeregisterInstance", Fault::LoseAnswer, Some(1));
    proxy.then_fault_operation("DeregisterInstance", Fault::DuplicateOfLost, Some(1));
    let polls_before = proxy.count("GetOperation");
    let drained = registered.drain(Duration::ZERO).await.unwrap();
    assert_eq!(proxy.count("DeregisterInstance"), 2);
    assert!(drained.deregistered(), "{drained:?}");
    let id = drained.operation_id().expect("the duplicate's operation");
    assert!(!id.is_empty());
    assert!(proxy.count("GetOperation") > polls_before);
    assert!(!instance_ids(&service_id)
        .await
        .contains(&"i-dup".to_owned()));

    // Quiet case: an instance already gone before the drain is not this drain's.
    proxy.reset_counts();
    let registered = registration(&sdk, &ns, "i-gone").register().await.unwrap();
    test_support::moto::deregister(&service_id, "i-gone").await;
    let drained = registered.drain(Duration::ZERO).await.unwrap();
    // GetInstance (drain's check of whose the entry is) finds none, which may mean
    // "not yet propagated": DeregisterInstance is still sent, and its own
    // InstanceNotFound, still heard once the registration is 5 s old, says the
    // instance was gone before this drain (sent again until then, within the bound).
    assert_eq!(proxy.count("GetInstance"), 1);
    let sends = proxy.count("DeregisterInstance");
    assert!((2..=MAX_SENDS).contains(&sends), "{sends} sends");
    assert!(!drained.deregistered());
    // Drained, the handle knows the instance is gone: a second drain takes the
    // answer at its word.
    proxy.reset_counts();
    assert!(!registered
        .drain(Duration::ZERO)
        .await
        .unwrap()
        .deregistered());
    assert_eq!(proxy.count("DeregisterInstance"), 1);
}

/// A `DuplicateRequest` heard by a drain none of whose sends may have been carried
/// out names another request's operation on the instance (another process's write
/// of its id), not this drain's. Before, drain waited on that operation and reported
/// the instance deregistered, with that operation's id, after 1 DeregisterInstance,
/// while the instance stayed registered; now the refusal is sent again, as an
/// outage is, and the drain's own deregistration takes the instance out (2 sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_hearing_a_duplicate_request_with_no_lost_answer_deregisters_itself() {
    let (ns, service_id, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    // Another registration's answer is lost: its operation is the one named.
    proxy.fault_operation("RegisterInstance", Fault::LoseAnswer, Some(1));
    let other = registration(&sdk, &ns, "i-dd-other")
        .register()
        .await
        .unwrap();
    let registered = registration(&sdk, &ns, "i-dd").register().await.unwrap();
    proxy.fault_operation("DeregisterInstance", Fault::DuplicateOfLost, Some(1));
    let drained = registered.drain(Duration::ZERO).await.unwrap();
    assert_eq!(proxy.count("DeregisterInstance"), 2);
    assert!(drained.deregistered(), "{drained:?}");
    assert!(!instance_ids(&service_id).await.contains(&"i-dd".to_owned()));
    other.drain(Duration::ZERO).await.unwrap();
}

/// GetInstance may answer `InstanceNotFound` for an instance registered a moment
/// ago (Cloud Map: "the instance was recently registered, and information about
/// the instance hasn't propagated yet"). A job that registers and drains quickly
/// must still be taken out, and its health still set: the write is sent, and its
/// own `InstanceNotFound` is what says the instance is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_not_yet_propagated_is_still_drained() {
    let (ns, service_id, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    let not_propagated = not_propagated();
    let registered = registration(&sdk, &ns, "i-new").register().await.unwrap();

    proxy.fault_operation("GetInstance", not_propagated.clone(), Some(1));
    registered
        .set_health(cloudmap_resolver::HealthStatus::Unhealthy)
        .await
        .unwrap();
    assert_eq!(proxy.count("UpdateInstanceCustomHealthStatus"), 1);
    assert_eq!(
        test_support::moto::health_status(&service_id, "i-new")
            .await
            .as_deref(),
        Some("UNHEALTHY")
    );

    proxy.fault_operation("GetInstance", not_propagated, Some(1));
    let drained = registered.drain(Duration::ZERO).await.unwrap();
    assert_eq!(proxy.count("DeregisterInstance"), 1);
    assert!(drained.deregistered(), "{drained:?}");
    assert!(!instance_ids(&service_id)
        .await
        .contains(&"i-new".to_owned()));
}

/// DeregisterInstance and UpdateInstanceCustomHealthStatus answer
/// `InstanceNotFound` for an instance not yet propagated as GetInstance does (the
/// error's documented meaning): such an answer right after the registration is
/// sent again. Before, a drain hearing it (after GetInstance's) reported the
/// instance already gone (`deregistered()` false, 1 DeregisterInstance) and left it
/// registered, and `set_health` failed `InstanceNotFound`; now the drain takes it
/// out (3 sends) and the health is set (2 sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_not_yet_propagated_is_sent_again() {
    let (ns, service_id, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    let not_propagated = not_propagated();
    let registered = registration(&sdk, &ns, "i-young").register().await.unwrap();

    proxy.fault_operation(
        "UpdateInstanceCustomHealthStatus",
        not_propagated.clone(),
        Some(1),
    );
    registered
        .set_health(cloudmap_resolver::HealthStatus::Unhealthy)
        .await
        .unwrap();
    assert_eq!(proxy.count("UpdateInstanceCustomHealthStatus"), 2);
    assert_eq!(
        test_support::moto::health_status(&service_id, "i-young")
            .await
            .as_deref(),
        Some("UNHEALTHY")
    );

    registered.drain(Duration::ZERO).await.unwrap();

    // A drain at once after its registration (the answers above took time).
    let registered = registration(&sdk, &ns, "i-short").register().await.unwrap();
    proxy.fault_operation("GetInstance", not_propagated.clone(), Some(1));
    proxy.fault_operation("DeregisterInstance", not_propagated, Some(2));
    proxy.reset_counts();
    let drained = registered.drain(Duration::ZERO).await.unwrap();
    assert_eq!(proxy.count("DeregisterInstance"), 3);
    assert!(drained.deregistered(), "{drained:?}");
    assert!(!instance_ids(&service_id)
        .await
        .contains(&"i-short".to_owned()));
}

/// A registry throttling between "not propagated yet" answers: the re-sends after
/// `InstanceNotFound` share DeregisterInstance's one budget of sends and its
/// backoff with the throttled ones. Before, each `InstanceNotFound` began a fresh
/// round of outage retries, backoff from 100 ms again: 16 DeregisterInstance sends
/// for this registry (up to 64 by count); now 8, `MAX_SENDS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_between_not_propagated_answers_shares_one_budget() {
    let (ns, _, proxy) = setup().await;
    let sdk = sdk_config(&proxy.url());
    let not_propagated = not_propagated();
    let registered = registration(&sdk, &ns, "i-busy").register().await.unwrap();
    proxy.fault_operation("DeregisterInstance", Fault::Throttle, Some(3));
    for _ in 0..3 {
        proxy.then_fault_operation("DeregisterInstance", not_propagated.clone(), Some(1));
        proxy.then_fault_operation("DeregisterInstance", Fault::Throttle, Some(3));
    }
    proxy.reset_counts();
    let _ = registered.drain(Duration::ZERO).await;
    let sends = proxy.count("DeregisterInstance");
    assert!((4..=MAX_SENDS).contains(&sends), "{sends} sends");
}

/// A drain cancelled after DeregisterInstance was sent (its caller's own timeout, a
/// second SIGTERM) may have taken the instance out: dropping the handle then says
/// the deregistration was sent but not confirmed, not that the instance stays
/// registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cancelled_after_sending_does_not_claim_the_instance_stays() {
    let (ns, _, proxy) = setup().await;
    let registered = registration(&sdk_config(&proxy.url()), &ns, "i-cut")
        .register()
        .await
        .unwrap();
    proxy.fault_operation("DeregisterInstance", Fault::Hang, None);
    // Cancelled once DeregisterInstance has reached the registry (bounded: 20 s).
    let sent = async {
        for _ in 0..400 {
            if proxy.count("DeregisterInstance") > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("DeregisterInstance never sent");
    };
    tokio::select! {
        r = registered.drain(Duration::ZERO) => panic!("drain ended: {r:?}"),
        () = sent => {}
    }
    let buf = super::LogBuf::default();
    tracing::subscriber::with_default(buf.subscriber(), || drop(registered));
    let log = buf.text();
    assert!(log.contains("not confirmed"), "{log}");
    assert!(!log.contains("stays registered"), "{log}");
}
