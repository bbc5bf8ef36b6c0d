//! The active health check's series: probes by outcome, ejections by cause.

use std::time::Duration;

use cloudmap_resolver::{HealthCheck, Instance, Resolver, StaticDiscovery};
use metrics_util::debugging::DebuggingRecorder;

use super::{collect, get};

/// Issue 28: the active health check's probes by outcome and its ejection, per
/// service. One endpoint listens (its probes pass), the other's port is closed
/// (its probes fail; it is ejected once, within the share cap).
#[test]
fn probes_by_outcome_and_ejections_by_cause() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let up_port = up.local_addr().unwrap().port();
            tokio::spawn(async move {
                while let Ok((conn, _)) = up.accept().await {
                    drop(conn);
                }
            });
            // Bound, not listening, and held to the end: no other test's listener
            // can take the port and answer the probes.
            let (closed, _held) = test_support::net::closed_port();
            let down_port = closed.port();
            let ip = "127.0.0.1".parse().unwrap();
            let registry = StaticDiscovery::new()
                .with_instance("shared", "web", Instance::new("up").ipv4(ip).port(up_port))
                .with_instance(
                    "shared",
                    "web",
                    Instance::new("down").ipv4(ip).port(down_port),
                );
            let check = HealthCheck::tcp()
                .interval(Duration::from_millis(50))
                .timeout(Duration::from_millis(500));
            let r = Resolver::builder(registry)
                .health_check(check)
                .build()
                .unwrap();
            // Bounded at 20 s: a loaded machine can stall the probes for seconds.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                r.resolve("shared", "web").await.unwrap();
                let s = r.stats();
                if (s.ejections_probe == 1 && s.probes_passed >= 2)
                    || tokio::time::Instant::now() >= deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let seen = collect(&snapshotter);
            let web = |k: &'static str, v: &'static str| {
                [("namespace", "shared"), ("service", "web"), (k, v)]
            };
            let probes = "cloudmap_resolver.probes";
            let passed = get(&seen, probes, &web("outcome", "passed")).unwrap_or(0.0);
            let failed = get(&seen, probes, &web("outcome", "failed")).unwrap_or(0.0);
            assert!(passed >= 2.0 && failed >= 2.0, "{seen:#?}");
            assert_eq!(get(&seen, probes, &web("outcome", "timed_out")), None);
            let by_cause = "cloudmap_resolver.ejections.by_cause";
            assert_eq!(get(&seen, by_cause, &web("cause", "probe")), Some(1.0));
            assert_eq!(get(&seen, by_cause, &web("cause", "consecutive")), None);
        })
    });
}
