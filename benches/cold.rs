//! What calling the registry on every request would cost: one DiscoverInstances.
//!
//! - `cold/discover_instances`: one DiscoverInstances call through the AWS SDK (as
//!   `CloudMapDiscovery` makes it, answer parsed into instances) for a service with 8
//!   instances, against a moto server on 127.0.0.1 started by this benchmark. Real
//!   Cloud Map adds the network round trip (AWS advertises about 2 ms), the request
//!   quota (about 1,000/s per account and region) and $1 per million calls.
//!
//! moto comes from `$MOTO_PYTHON`, else `.venv/bin/python` (which `scripts/test`
//! installs). Without it the group is skipped and the reason printed.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use cloudmap_resolver::{CloudMapDiscovery, Discover, DiscoverRequest};
use criterion::{criterion_group, criterion_main, Criterion};

use test_support::{bench, moto};

/// Why moto cannot be started, if it cannot.
fn moto_missing() -> Option<String> {
    let python = std::env::var_os("MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| {
        format!(
            "{} cannot import moto.server; run scripts/test (it installs a pinned \
             moto[server] into .venv) or set MOTO_PYTHON",
            python.display()
        )
    })
}

fn cold(c: &mut Criterion) {
    if let Some(why) = moto_missing() {
        println!("SKIPPED cold/discover_instances: {why}");
        return;
    }
    let rt = bench::runtime();
    let namespace = moto::unique("bench");
    let discovery = rt.block_on(async {
        let service = moto::http_service(&namespace, "logs").await;
        for (i, inst) in bench::instances(8).into_iter().enumerate() {
            let attrs: Vec<(&str, &str)> = inst
                .attributes()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            moto::register(&service, &format!("i-{i}"), &attrs).await;
        }
        CloudMapDiscovery::new(&moto::sdk_config(&format!("http://{}", moto::moto().addr)))
    });
    let request = DiscoverRequest::new(namespace, "logs");
    let found = rt
        .block_on(discovery.discover(&request))
        .expect("moto answers DiscoverInstances");
    assert_eq!(found.instances.len(), 8);

    let mut g = c.benchmark_group("cold");
    g.sample_size(20);
    g.bench_function("discover_instances", |b| {
        b.to_async(&rt).iter(|| async {
            discovery
                .discover(&request)
                .await
                .expect("DiscoverInstances")
        })
    });
    g.finish();
}

criterion_group!(benches, cold);
criterion_main!(benches);
