//! `examples/discover.rs`, the command-line tool, run as a child process against the
//! moto server (and the fault proxy in front of it).
//!
//! The example binary is built by `cargo build --example discover` with this test's
//! features and profile (a no-op when `cargo test` already built it), then run from
//! `target/<profile>/examples/`.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use support::moto::{self, http_service, register, unique};
use support::net::closed_port;
use support::proxy::{Fault, Proxy};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The example binary, built on first use.
fn discover_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/cli-<hash> -> target/<profile>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
        let mut features = Vec::new();
        for (on, name) in [
            (cfg!(feature = "reqwest"), "reqwest"),
            (cfg!(feature = "hyper"), "hyper"),
            (cfg!(feature = "tower"), "tower"),
        ] {
            if on {
                features.push(name);
            }
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--example", "discover", "--no-default-features"])
            .arg(format!("--features={}", features.join(",")));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --example discover");
        assert!(status.success(), "cargo build --example discover failed");
        let bin = profile_dir
            .join("examples")
            .join(format!("discover{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// The tool with moto's dummy credentials and no other AWS configuration.
fn discover(args: &[&str]) -> Command {
    let mut cmd = Command::new(discover_bin());
    cmd.args(args)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(args: &[&str]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), discover(args).output())
        .await
        .expect("the tool finishes within 60 s")
        .unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn moto_url() -> String {
    format!("http://{}", moto::moto().addr)
}

/// A namespace with service `web` and three instances on ports 8081-8083; `i-3` is
/// `stage=dev`, the others `stage=prod`.
async fn fleet() -> (String, String) {
    let ns = unique("cli");
    let svc = http_service(&ns, "web").await;
    for (id, port, stage) in [
        ("i-1", "8081", "prod"),
        ("i-2", "8082", "prod"),
        ("i-3", "8083", "dev"),
    ] {
        register(
            &svc,
            id,
            &[
                ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                ("AWS_INSTANCE_PORT", port),
                ("stage", stage),
            ],
        )
        .await;
    }
    (ns, svc)
}

#[tokio::test]
async fn prints_the_table() {
    let (ns, _) = fleet().await;
    let url = moto_url();
    let r = run(&[&ns, "web", "--endpoint-url", &url]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "ADDRESS", "PORT", "HEALTH", "ATTRIBUTES"]);
    let rows: Vec<Vec<&str>> = lines[1..4]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["i-1", "127.0.0.1", "8081", "HEALTHY", "stage=prod"],
            ["i-2", "127.0.0.1", "8082", "HEALTHY", "stage=prod"],
            ["i-3", "127.0.0.1", "8083", "HEALTHY", "stage=dev"],
        ]
    );
    assert_eq!(lines[4], "3 endpoints");
    assert_eq!(lines.len(), 5);

    let r = run(&[&ns, "web", "--endpoint-url", &url, "--attr", "stage=dev"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("i-3") && !r.stdout.contains("i-1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("1 endpoint\n"), "{}", r.stdout);
}

#[tokio::test]
async fn errors_are_one_line_with_their_own_exit_codes() {
    let (ns, _) = fleet().await;
    let url = moto_url();

    let r = run(&["no-such-namespace", "web", "--endpoint-url", &url]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("not found"), "{}", r.stderr);

    let r = run(&[&ns, "web", "--endpoint-url", &url, "--attr", "stage=none"]).await;
    assert_eq!(r.code, 4, "{}", r.stderr);

    let proxy = Proxy::start(moto::moto().addr).await;
    proxy.set_fault(Fault::Throttle);
    let r = run(&[&ns, "web", "--endpoint-url", &proxy.url()]).await;
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);

    let (dead, _held) = closed_port();
    let r = run(&[
        &ns,
        "web",
        "--endpoint-url",
        &format!("http://{dead}"),
        "--timeout",
        "5",
    ])
    .await;
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("discover: registry unavailable"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn bad_arguments_print_usage_and_exit_2() {
    for args in [
        &[][..],
        &["only-namespace"],
        &["ns", "svc", "extra"],
        &["ns", "svc", "--health", "bogus"],
        &["ns", "svc", "--attr", "novalue"],
        &["ns", "svc", "--count", "0"],
        &["ns", "svc", "--bogus"],
        &["ns", "svc", "--dns"],
    ] {
        let r = run(args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("usage: discover NAMESPACE SERVICE"),
            "{args:?}"
        );
        assert!(r.stdout.is_empty(), "{args:?}");
    }
    let r = run(&["--help"]).await;
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("usage: discover"));
}

/// `--watch` prints what changed: an instance registered while watching shows as
/// `+`, one deregistered as `-`.
#[tokio::test]
async fn watch_prints_changes() {
    let (ns, svc) = fleet().await;
    let url = moto_url();
    let mut child = discover(&[
        &ns,
        "web",
        "--endpoint-url",
        &url,
        "--watch",
        "--interval",
        "0.2",
        "--count",
        "300",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line within 30 s")
            .unwrap()
            .expect("the tool is still running")
    };
    // The table first.
    while next().await != "3 endpoints" {}
    register(
        &svc,
        "i-4",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", "8084"),
        ],
    )
    .await;
    let added = loop {
        let l = next().await;
        if l.contains("i-4") {
            break l;
        }
        assert!(l.ends_with("no change"), "{l}");
    };
    assert!(added.ends_with(": + i-4 127.0.0.1:8084 HEALTHY"), "{added}");
    moto::admin()
        .deregister_instance()
        .service_id(&svc)
        .instance_id("i-1")
        .send()
        .await
        .unwrap();
    let removed = loop {
        let l = next().await;
        if l.contains("i-1") {
            break l;
        }
        assert!(l.ends_with("no change"), "{l}");
    };
    assert!(
        removed.ends_with(": - i-1 127.0.0.1:8081 HEALTHY stage=prod"),
        "{removed}"
    );
    child.kill().await.unwrap();
}
