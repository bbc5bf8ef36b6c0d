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

/// The registry's error message is cut and escaped in the error's text; the CLI's
/// one line must not add it back whole from the SDK error kept in `source()`.
/// Before, a 100 KB message made a stderr line of about 100 KB (the text, then the
/// raw message with its line breaks turned to spaces); now under 1,500 bytes.
#[tokio::test]
async fn a_hostile_registry_message_is_printed_cut() {
    let (ns, _) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    let line = format!("{}\n\u{1b}[2J", "x".repeat(96));
    let message: &'static str = line.repeat(1000).leak();
    proxy.set_fault(Fault::AwsError {
        status: 400,
        code: "AccessDeniedException",
        message,
    });
    let r = run(&[&ns, "web", "--endpoint-url", &proxy.url()]).await;
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.len() < 1500, "{} bytes", r.stderr.len());
    assert!(r.stderr.contains("AccessDeniedException"), "{}", r.stderr);
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

    // The registry's answer once, without the SDK's "service error" wrapper,
    // after the key it was asked for.
    let r = run(&["shopp", "web", "--endpoint-url", &url]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("NamespaceNotFound").count(),
        1,
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("service \"web\" in namespace \"shopp\": DiscoverInstances"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("service error"), "{}", r.stderr);

    // A filter that matches nothing is named.
    let r = run(&[&ns, "web", "--endpoint-url", &url, "--attr", "stage=nope"]).await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("stage=nope"), "{}", r.stderr);
}

/// An error told to a closed standard error (a reader that went away, `2>&1 |
/// grep -q`) keeps its exit code: before, `eprintln!` panicked and the tool
/// exited 101 instead of 2 or 6.
#[tokio::test]
async fn errors_into_a_closed_stderr_keep_their_exit_codes() {
    let (dead, _held) = closed_port();
    let dead = format!("http://{dead}");
    for (args, code) in [
        (
            &["bad name!", "web", "--endpoint-url", "http://127.0.0.1:9"][..],
            2,
        ),
        (
            &["shared", "web", "--endpoint-url", &dead, "--timeout", "5"][..],
            6,
        ),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut child = discover(args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(writer))
            .spawn()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("the tool finishes within 60 s")
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
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
        // Below a nanosecond (or 4 ns for an interval, halved and quartered):
        // before, the message named the resolver's option (`fetch_timeout`, `ttl`).
        &["ns", "svc", "--timeout", "1e-10"],
        &["ns", "svc", "--watch", "--interval", "1e-10"],
        &[
            "ns",
            "svc",
            "--watch",
            "--interval",
            "3e-9",
            "--health-check",
            "tcp",
        ],
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
        // A bad value names the argument given, not an option of the resolver.
        if let Some(flag) = args
            .iter()
            .find(|a| ["--timeout", "--interval"].contains(a))
        {
            assert!(r.stderr.contains(flag), "{args:?}: {}", r.stderr);
        }
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

mod watch;
