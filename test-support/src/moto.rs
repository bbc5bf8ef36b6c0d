//! A moto server on a free loopback port, one per test binary, stopped when the
//! test process exits (a watchdog thread inside it polls the parent's pid).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_servicediscovery as sd;

pub struct Moto {
    pub addr: SocketAddr,
    _child: Mutex<Child>,
}

/// Where the test command installed moto: `$MOTO_PYTHON`, else `.venv/bin/python` at
/// the repository root (the parent of this crate's directory).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_PYTHON") {
        return p.into();
    }
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "moto is not installed: run scripts/test (it installs a pinned moto[server] into .venv), \
         or set MOTO_PYTHON to a python that has it"
    );
    p
}

/// The repository root, where `scripts/test` puts `.venv`.
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

// moto binds its own free port and prints it: a port picked here and handed over
// could be taken by any other socket in between (this process's tests bind
// 127.0.0.1:0 all the time), and the readiness check would then find that socket
// listening, not moto.
const LAUNCH: &str = r#"
import os, sys, threading, time
parent = os.getppid()
def watch():
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
while True:
    time.sleep(3600)
"#;

pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let mut child = Command::new(python())
            .args(["-c", LAUNCH])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        // The first line is the port moto listens on; the rest of its output (none
        // is expected) is read and dropped, so that a full pipe never blocks it.
        let out = child.stdout.take().expect("moto's stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            lines.for_each(drop);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto did not start within 60 s")
            .expect("moto exited before it listened");
        let port: u16 = line.trim().parse().expect("moto printed its port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(
            TcpStream::connect(addr).is_ok(),
            "moto is not listening on {addr}"
        );
        Moto {
            addr,
            _child: Mutex::new(child),
        }
    })
}

/// SDK configuration pointing at `url` with dummy credentials and no SDK retries
/// (so call counts are the resolver's own).
pub fn sdk_config(url: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .endpoint_url(url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(sd::config::SharedCredentialsProvider::new(
            sd::config::Credentials::new("testing", "testing", None, None, "tests"),
        ))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build()
}

/// An SDK configuration whose endpoint URL is `url` for Cloud Map alone (a
/// profile's `services` section, as `AWS_ENDPOINT_URL_SERVICEDISCOVERY` sets it,
/// without touching the process's environment): the SDK resolves it when it builds
/// a client, and `SdkConfig::endpoint_url()` stays empty.
#[allow(deprecated)] // the profile-file types are the public way to point at files
pub async fn sdk_config_for_cloud_map_alone(url: &str) -> aws_config::SdkConfig {
    use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};

    let dir = std::env::temp_dir().join(unique("cmr-profile"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config");
    std::fs::write(
        &config,
        format!(
            "[profile cmr]\nregion = us-east-1\naws_access_key_id = testing\n\
             aws_secret_access_key = testing\nservices = local\n\n\
             [services local]\nservicediscovery =\n  endpoint_url = {url}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("credentials"), "").unwrap();
    let files = ProfileFiles::builder()
        .with_file(ProfileFileKind::Config, &config)
        .with_file(ProfileFileKind::Credentials, dir.join("credentials"))
        .build();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .profile_files(files)
        .profile_name("cmr")
        .load()
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    sdk
}

/// Control-plane client straight to moto, for setting up registries.
pub fn admin() -> sd::Client {
    let conf = sdk_config(&format!("http://{}", moto().addr));
    sd::Client::new(&conf)
}

/// A unique name for this test's namespace, so tests share one moto safely.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An HTTP namespace with one service; returns the service id.
pub async fn http_service(namespace: &str, service: &str) -> String {
    let c = admin();
    let op = c
        .create_http_namespace()
        .name(namespace)
        .send()
        .await
        .unwrap();
    let op = c
        .get_operation()
        .operation_id(op.operation_id().unwrap())
        .send()
        .await
        .unwrap();
    let ns_id = op.operation().unwrap().targets().unwrap()
        [&sd::types::OperationTargetType::Namespace]
        .clone();
    let svc = c
        .create_service()
        .name(service)
        .namespace_id(ns_id)
        .health_check_custom_config(sd::types::HealthCheckCustomConfig::builder().build())
        .send()
        .await
        .unwrap();
    svc.service().unwrap().id().unwrap().to_owned()
}

pub async fn register(service_id: &str, instance_id: &str, attrs: &[(&str, &str)]) {
    let mut req = admin()
        .register_instance()
        .service_id(service_id)
        .instance_id(instance_id);
    for (k, v) in attrs {
        req = req.attributes(*k, *v);
    }
    req.send().await.unwrap();
}

pub async fn deregister(service_id: &str, instance_id: &str) {
    admin()
        .deregister_instance()
        .service_id(service_id)
        .instance_id(instance_id)
        .send()
        .await
        .unwrap();
}

pub async fn set_health(service_id: &str, instance_id: &str, healthy: bool) {
    let status = if healthy {
        sd::types::CustomHealthStatus::Healthy
    } else {
        sd::types::CustomHealthStatus::Unhealthy
    };
    admin()
        .update_instance_custom_health_status()
        .service_id(service_id)
        .instance_id(instance_id)
        .status(status)
        .send()
        .await
        .unwrap();
}

/// A fresh namespace named from `prefix` with an HTTP service `service` and two
/// instances, `a` and `b`, on 127.0.0.1 at `ports`: (namespace, service id).
pub async fn two_instances(prefix: &str, service: &str, ports: [u16; 2]) -> (String, String) {
    let ns = unique(prefix);
    let svc = http_service(&ns, service).await;
    for (id, port) in ["a", "b"].into_iter().zip(ports) {
        let port = port.to_string();
        register(
            &svc,
            id,
            &[
                ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                ("AWS_INSTANCE_PORT", &port),
            ],
        )
        .await;
    }
    (ns, svc)
}

/// The id of the namespace named `name`.
pub async fn namespace_id(name: &str) -> String {
    let list = admin().list_namespaces().send().await.unwrap();
    list.namespaces()
        .iter()
        .find(|n| n.name() == Some(name))
        .and_then(|n| n.id())
        .unwrap()
        .to_owned()
}

/// A service without a custom health check in the namespace named `namespace`;
/// returns its id.
pub async fn plain_service(namespace: &str, service: &str) -> String {
    let svc = admin()
        .create_service()
        .name(service)
        .namespace_id(namespace_id(namespace).await)
        .send()
        .await
        .unwrap();
    svc.service().unwrap().id().unwrap().to_owned()
}

/// The ids of a service's instances as moto holds them (a re-registered id appears
/// twice there, where Cloud Map would update it in place).
pub async fn instance_ids(service_id: &str) -> Vec<String> {
    let out = admin()
        .list_instances()
        .service_id(service_id)
        .send()
        .await
        .unwrap();
    out.instances()
        .iter()
        .filter_map(|i| i.id().map(str::to_owned))
        .collect()
}

/// An instance's attributes as moto holds them.
pub async fn instance_attributes(
    service_id: &str,
    instance_id: &str,
) -> std::collections::HashMap<String, String> {
    let out = admin()
        .get_instance()
        .service_id(service_id)
        .instance_id(instance_id)
        .send()
        .await
        .unwrap();
    out.instance()
        .and_then(|i| i.attributes())
        .cloned()
        .unwrap_or_default()
}

/// An instance's custom health status as moto holds it (`HEALTHY`, `UNHEALTHY`).
pub async fn health_status(service_id: &str, instance_id: &str) -> Option<String> {
    let out = admin()
        .get_instances_health_status()
        .service_id(service_id)
        .instances(instance_id)
        .send()
        .await
        .unwrap();
    out.status()
        .and_then(|m| m.get(instance_id))
        .map(|s| s.as_str().to_owned())
}
