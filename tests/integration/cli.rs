//! `cloudmap-discover`, the command-line tool (feature `cli`), run as a child process
//! against the moto server (and the fault proxy in front of it).

use std::process::Stdio;
use std::time::Duration;

use test_support::moto::{self, http_service, register, set_health, unique};
use test_support::net::closed_port;
use test_support::proxy::{Fault, Proxy};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The tool with moto's dummy credentials and no other AWS configuration.
fn discover(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudmap-discover"));
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
    run_with(args, |_| {}).await
}

async fn run_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Run {
    let mut cmd = discover(args);
    adjust(&mut cmd);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
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
    assert_eq!(
        header,
        ["ID", "ADDRESS", "PORT", "HEALTH", "ZONE", "ATTRIBUTES"]
    );
    let rows: Vec<Vec<&str>> = lines[1..4]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["i-1", "127.0.0.1", "8081", "HEALTHY", "-", "stage=prod"],
            ["i-2", "127.0.0.1", "8082", "HEALTHY", "-", "stage=prod"],
            ["i-3", "127.0.0.1", "8083", "HEALTHY", "-", "stage=dev"],
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

/// The ZONE column: `AVAILABILITY_ZONE` (what ECS writes) by default, `-` for an
/// instance without it, or the attribute `--zone-attr` names.
#[tokio::test]
async fn prints_each_endpoints_zone() {
    let ns = unique("cli-zone");
    let svc = http_service(&ns, "web").await;
    for (id, port, zone, az_id) in [
        ("i-1", "8081", Some("us-east-1a"), "use1-az1"),
        ("i-2", "8082", Some("us-east-1b"), "use1-az2"),
        ("i-3", "8083", None, "use1-az4"),
    ] {
        let mut attrs = vec![
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", port),
            ("zone_id", az_id),
        ];
        if let Some(zone) = zone {
            attrs.push(("AVAILABILITY_ZONE", zone));
        }
        register(&svc, id, &attrs).await;
    }
    let url = moto_url();
    let column = |out: &str| -> Vec<(String, String)> {
        let lines: Vec<&str> = out.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header[4], "ZONE", "{out}");
        lines[1..4]
            .iter()
            .map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                (cells[0].to_owned(), cells[4].to_owned())
            })
            .collect()
    };
    let r = run(&[&ns, "web", "--endpoint-url", &url]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = [("i-1", "us-east-1a"), ("i-2", "us-east-1b"), ("i-3", "-")];
    assert_eq!(
        column(&r.stdout),
        want.map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let r = run(&[&ns, "web", "--endpoint-url", &url, "--zone-attr", "zone_id"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = [
        ("i-1", "use1-az1"),
        ("i-2", "use1-az2"),
        ("i-3", "use1-az4"),
    ];
    assert_eq!(
        column(&r.stdout),
        want.map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
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
        r.stderr
            .starts_with("cloudmap-discover: registry unavailable"),
        "{}",
        r.stderr
    );
    // The URL called and the root cause, not just "could not connect".
    assert!(r.stderr.contains(&format!("http://{dead}")), "{}", r.stderr);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);

    // The registry's answer once, without the SDK's "service error" wrapper.
    let r = run(&["shopp", "web", "--endpoint-url", &url]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stderr.matches("shopp").count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("service error"), "{}", r.stderr);

    // A filter that matches nothing is named.
    let r = run(&[&ns, "web", "--endpoint-url", &url, "--attr", "stage=nope"]).await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("stage=nope"), "{}", r.stderr);
}

/// A configuration that cannot work is not an outage: exit 7, naming the cause.
#[tokio::test]
async fn configuration_errors_exit_7() {
    let url = moto_url();
    let r = run(&["shared", "web", "--endpoint-url", "127.0.0.1:5000"]).await;
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("configuration error"), "{}", r.stderr);
    assert!(r.stderr.contains("http://127.0.0.1:5000"), "{}", r.stderr);

    // No credentials anywhere (the metadata service is off in `discover`).
    let r = run_with(&["shared", "web", "--endpoint-url", &url], |cmd| {
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
    })
    .await;
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("credentials"), "{}", r.stderr);
}

/// `--owner-account` is sent as `OwnerAccount`; a malformed one is a usage error
/// found before any call.
#[tokio::test]
async fn owner_account_flag() {
    let (ns, _) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    let url = proxy.url();
    let r = run(&[
        &ns,
        "web",
        "--endpoint-url",
        &url,
        "--owner-account",
        "111122223333",
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.ends_with("3 endpoints\n"), "{}", r.stdout);
    let bodies = proxy.bodies("DiscoverInstances");
    assert_eq!(bodies.len(), 1);
    assert!(
        bodies[0].contains(r#""OwnerAccount":"111122223333""#),
        "{}",
        bodies[0]
    );

    let r = run(&[
        &ns,
        "web",
        "--endpoint-url",
        &url,
        "--owner-account",
        "1111",
    ])
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("owner account"), "{}", r.stderr);
    assert_eq!(proxy.count("DiscoverInstances"), 1, "no call for a bad id");
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
        &[
            "ns",
            "svc",
            "--dns",
            "10.0.0.2",
            "--endpoint-url",
            "http://h",
        ],
    ] {
        let r = run(args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        // clap's error: the usage line, or for a bad value a pointer to --help.
        assert!(r.stderr.starts_with("error: "), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("--help"), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}");
    }
    // A name Cloud Map would reject is a usage error too, found before any call.
    let r = run(&["bad name!", "web", "--endpoint-url", "http://127.0.0.1:9"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("invalid input"), "{}", r.stderr);
    assert!(r.stderr.contains("--help"), "{}", r.stderr);

    let r = run(&["--help"]).await;
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("Usage: cloudmap-discover"),
        "{}",
        r.stdout
    );
}

/// `--watch` prints what changed, one timestamped line each: an instance registered
/// while watching shows as `+`, one turning unhealthy as `~` with its new status,
/// one deregistered as `-`.
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
    assert_timestamped(&added);
    set_health(&svc, "i-2", false).await;
    let sick = loop {
        let l = next().await;
        if l.contains("i-2") {
            break l;
        }
        assert!(l.ends_with("no change"), "{l}");
    };
    assert!(
        sick.ends_with(": ~ i-2 127.0.0.1:8082 UNHEALTHY stage=prod (health HEALTHY -> UNHEALTHY)"),
        "{sick}"
    );
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

/// `2025-01-02T03:04:05.678Z refresh 3: ...`: an RFC 3339 UTC time first.
fn assert_timestamped(line: &str) {
    let (ts, rest) = line.split_once(' ').unwrap();
    assert!(rest.starts_with("refresh "), "{line}");
    let b = ts.as_bytes();
    assert_eq!(b.len(), 24, "{line}");
    for (i, c) in b.iter().enumerate() {
        let want = match i {
            4 | 7 => b'-',
            10 => b'T',
            13 | 16 => b':',
            19 => b'.',
            23 => b'Z',
            _ => {
                assert!(c.is_ascii_digit(), "{line}");
                continue;
            }
        };
        assert_eq!(*c, want, "{line}");
    }
    assert!(ts.starts_with("20"), "{line}");
}

/// The registry refusing the caller (access denied, unknown or expired
/// credentials) is a configuration problem, not an outage: exit 7 at once, naming
/// the AWS code and message, after one call (issue 25).
#[tokio::test]
async fn registry_refusals_of_the_caller_exit_7() {
    let (ns, _) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    for code in ["AccessDeniedException", "UnrecognizedClientException"] {
        proxy.reset_counts();
        proxy.set_fault(Fault::AwsError {
            status: 400,
            code,
            message: "not for you",
        });
        let r = run(&[&ns, "web", "--endpoint-url", &proxy.url()]).await;
        assert_eq!(r.code, 7, "{code}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains("configuration error"), "{}", r.stderr);
        assert!(r.stderr.contains(code), "{}", r.stderr);
        assert!(r.stderr.contains("not for you"), "{}", r.stderr);
        assert_eq!(proxy.count("DiscoverInstances"), 1, "{code}: not retried");
    }
}

/// Registry strings are printed with their control characters escaped: an
/// attribute or an id cannot clear, recolour or retitle the terminal (issue 25).
#[tokio::test]
async fn registry_strings_are_printed_escaped() {
    let ns = unique("cli-esc");
    let svc = http_service(&ns, "web").await;
    register(
        &svc,
        "i-\u{1b}]0;pwned\u{7}",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", "8081"),
            ("note", "\u{1b}[2J\u{1b}[H\u{1b}[31mALL CLEAR"),
        ],
    )
    .await;
    let r = run(&[&ns, "web", "--endpoint-url", &moto_url()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !r.stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{:?}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(r"note=\u{1b}[2J\u{1b}[H\u{1b}[31mALL CLEAR"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(r"i-\u{1b}]0;pwned\u{7}"), "{}", r.stdout);
}

/// `--watch ... | head -2`: the reader closes the pipe after two lines, and the
/// tool ends quietly (exit 0, nothing on stderr), not with a panic and exit 101
/// (issue 25).
#[tokio::test]
async fn watch_into_a_closed_pipe_ends_quietly() {
    let (ns, _) = fleet().await;
    let url = moto_url();
    let mut child = discover(&[
        &ns,
        "web",
        "--endpoint-url",
        &url,
        "--watch",
        "--interval",
        "0.1",
        "--count",
        "100",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line within 30 s")
            .unwrap()
            .expect("the tool is still running");
    }
    drop(lines);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the tool ends within 30 s of the pipe closing")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// `--watch --count 3` whose refreshes all fail after the first answer exits with
/// the last refresh's error (6, registry unavailable), not 0; one that ends on a
/// good refresh exits 0 (issue 25).
#[tokio::test]
async fn watch_whose_last_refresh_failed_exits_with_its_error() {
    let (ns, _) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    let watch = |proxy: &Proxy| {
        let url = proxy.url();
        let ns = ns.clone();
        async move {
            run(&[
                &ns,
                "web",
                "--endpoint-url",
                &url,
                "--watch",
                "--interval",
                "0.3",
                "--count",
                "3",
            ])
            .await
        }
    };
    // The first answer passes, every later call fails.
    let broken = Fault::AwsError {
        status: 500,
        code: "InternalFailure",
        message: "down",
    };
    for op in ["DiscoverInstances", "DiscoverInstancesRevision"] {
        let first = if op == "DiscoverInstances" { 1 } else { 0 };
        proxy.fault_operation(op, Fault::None, Some(first));
        proxy.then_fault_operation(op, broken.clone(), None);
    }
    let r = watch(&proxy).await;
    assert_eq!(r.code, 6, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches(": error: ").count(), 3, "{}", r.stdout);
    assert!(r.stderr.contains("InternalFailure"), "{}", r.stderr);

    // Quiet case: every refresh answered, exit 0.
    let healthy = Proxy::start(moto::moto().addr).await;
    let r = watch(&healthy).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches("no change").count(), 3, "{}", r.stdout);
}

/// `--watch --health-check tcp` (issue 28): a backend that stops listening shows
/// as `~ ... (health check down)`, and `(health check up)` once it listens again;
/// the one that keeps listening shows no change. Without `--watch` the option is
/// refused as a usage error.
#[tokio::test]
async fn watch_shows_health_check_changes() {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flaky = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (up_port, flaky_addr) = (up.local_addr().unwrap().port(), flaky.local_addr().unwrap());
    let accept = |l: tokio::net::TcpListener| async move {
        while let Ok((conn, _)) = l.accept().await {
            drop(conn);
        }
    };
    tokio::spawn(accept(up));
    let flaky_task = tokio::spawn(accept(flaky));
    let ns = unique("cli-hc");
    let svc = http_service(&ns, "web").await;
    for (id, port) in [("up", up_port), ("flaky", flaky_addr.port())] {
        let port = port.to_string();
        let attrs = [
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", &port),
        ];
        register(&svc, id, &attrs).await;
    }
    let url = moto_url();
    let usage = run(&[&ns, "web", "--endpoint-url", &url, "--health-check", "tcp"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let bad = ["--watch", "--health-check", "udp"];
    let usage = run(&[&ns, "web", "--endpoint-url", &url, bad[0], bad[1], bad[2]]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);

    let args = [
        &ns,
        "web",
        "--endpoint-url",
        &url,
        "--watch",
        "--interval",
        "0.2",
    ];
    let mut child = discover(&args)
        .args(["--count", "300", "--health-check", "tcp"])
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
    while next().await != "2 endpoints" {}
    // The quiet case: both listen, a few refreshes show no change.
    for _ in 0..3 {
        let l = next().await;
        assert!(l.ends_with("no change"), "{l}");
    }
    flaky_task.abort();
    let _ = flaky_task.await;
    let port = flaky_addr.port();
    let down = loop {
        let l = next().await;
        if l.contains("flaky") {
            break l;
        }
        assert!(l.ends_with("no change"), "{l}");
    };
    let want = format!(": ~ flaky 127.0.0.1:{port} HEALTHY (health check down)");
    assert!(down.ends_with(&want), "{down}");
    assert_timestamped(&down);
    let again = tokio::net::TcpListener::bind(flaky_addr).await.unwrap();
    tokio::spawn(accept(again));
    let back = loop {
        let l = next().await;
        if l.contains("flaky") {
            break l;
        }
        assert!(l.ends_with("no change"), "{l}");
    };
    let want = format!(": ~ flaky 127.0.0.1:{port} HEALTHY (health check up)");
    assert!(back.ends_with(&want), "{back}");
    child.kill().await.unwrap();
}
