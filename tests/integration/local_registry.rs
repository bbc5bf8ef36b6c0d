//! `scripts/local-registry`, the registry on this machine the README offers for trying
//! the crate: run as it is documented, then read through `CloudMapDiscovery`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use cloudmap_resolver::{CloudMapDiscovery, Endpoint, Resolver};
use test_support::moto::{python, repo_root, sdk_config};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Instances given as `IP:PORT` are registered at that address in either family:
/// `[::1]:8080` was written as `AWS_INSTANCE_IPV4` `[::1]`, which every resolver
/// skips, so the script's IPv6 instance was never served (1 endpoint of 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_given_as_ipv6_are_registered_as_ipv6() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("bash")
        .arg(repo_root().join("scripts/local-registry"))
        .args(["shared", "web", "[::1]:8080", "127.0.0.1:8081"])
        .env("PORT", port.to_string())
        .env("MOTO_PYTHON", python())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("namespace ") {
                return true;
            }
        }
        false
    })
    .await;
    let url = format!("http://127.0.0.1:{port}");
    let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk_config(&url)))
        .build()
        .unwrap();
    let all = match ready {
        Ok(true) => resolver.resolve_all("shared", "web").await,
        _ => panic!("scripts/local-registry did not set the registry up"),
    };
    // The script stops moto on its way out (its EXIT trap).
    let pid = child.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    let got: BTreeSet<SocketAddr> = all
        .unwrap()
        .iter()
        .filter_map(Endpoint::socket_addr)
        .collect();
    let want: BTreeSet<SocketAddr> = ["[::1]:8080", "127.0.0.1:8081"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(got, want);
}
