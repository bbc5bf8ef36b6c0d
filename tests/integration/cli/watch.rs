//! `--watch`: changes as timestamped lines, a closed pipe, the exit code of the
//! last refresh, health-check changes.

use super::*;

/// The tool watching, its standard output read line by line.
struct Watching {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Watching {
    /// `--watch` of `ns/web` at `url` every 0.2 s, with `more` arguments.
    fn watch(ns: &str, url: &str, more: &[&str]) -> Watching {
        let base = [
            ns,
            "web",
            "--endpoint-url",
            url,
            "--watch",
            "--interval",
            "0.2",
        ];
        let mut child = discover(&base)
            .args(more)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Watching { child, lines }
    }

    /// The next line, within 30 s, while the tool runs.
    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("a line within 30 s")
            .unwrap()
            .expect("the tool is still running")
    }
}

/// `--watch` prints what changed, one timestamped line each: an instance registered
/// while watching shows as `+`, one turning unhealthy as `~` with its new status,
/// one deregistered as `-`.
#[tokio::test]
async fn watch_prints_changes() {
    let (ns, svc) = fleet().await;
    let url = moto_url();
    let mut w = Watching::watch(&ns, &url, &["--count", "300"]);
    // The table first.
    while w.next().await != "3 endpoints" {}
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
        let l = w.next().await;
        if l.contains("i-4") {
            break l;
        }
        assert!(l.ends_with("no change"), "{l}");
    };
    assert!(added.ends_with(": + i-4 127.0.0.1:8084 HEALTHY"), "{added}");
    assert_timestamped(&added);
    set_health(&svc, "i-2", false).await;
    let sick = loop {
        let l = w.next().await;
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
        let l = w.next().await;
        if l.contains("i-1") {
            break l;
        }
        assert!(l.ends_with("no change"), "{l}");
    };
    assert!(
        removed.ends_with(": - i-1 127.0.0.1:8081 HEALTHY stage=prod"),
        "{removed}"
    );
    w.child.kill().await.unwrap();
}

/// `--watch` of a service whose every instance is deregistered prints each as `-`:
/// an empty answer is an answer, not a failed refresh. Before, every refresh
/// after it printed `error: no endpoints ...` and no instance was shown leaving.
#[tokio::test]
async fn watch_shows_the_last_instances_leave() {
    let (ns, svc) = fleet().await;
    let url = moto_url();
    let mut w = Watching::watch(&ns, &url, &["--count", "300"]);
    while w.next().await != "3 endpoints" {}
    for id in ["i-1", "i-2", "i-3"] {
        moto::admin()
            .deregister_instance()
            .service_id(&svc)
            .instance_id(id)
            .send()
            .await
            .unwrap();
    }
    let mut gone = Vec::new();
    while gone.len() < 3 {
        let l = w.next().await;
        assert!(!l.contains(": error: "), "{l}");
        if let Some((_, removal)) = l.split_once(": - ") {
            gone.push(removal.split_whitespace().next().unwrap().to_owned());
        }
    }
    gone.sort();
    assert_eq!(gone, ["i-1", "i-2", "i-3"]);
    let l = w.next().await;
    assert!(l.ends_with("no change"), "{l}");
    w.child.kill().await.unwrap();
}

/// `--watch` of a service with no instance exits 4 as a plain run does, naming the
/// filters the caller gave. Before, it named the one the watch asks the registry
/// with ("matching health ALL"), which the caller never gave.
#[tokio::test]
async fn watch_of_an_empty_service_names_the_callers_filters() {
    let ns = unique("cli-empty");
    http_service(&ns, "web").await;
    let url = moto_url();
    for (more, names) in [
        (&[][..], "health HEALTHY_OR_ELSE_ALL"),
        (
            &["--attr", "stage=prod", "--health", "healthy"][..],
            "stage=prod",
        ),
    ] {
        let mut args = vec![ns.as_str(), "web", "--endpoint-url", &url, "--watch"];
        args.extend_from_slice(more);
        let r = run(&args).await;
        assert_eq!(r.code, 4, "{more:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(!r.stderr.contains("health ALL"), "{more:?}: {}", r.stderr);
        assert!(r.stderr.contains(names), "{more:?}: {}", r.stderr);
    }
}

/// `--watch --optional` shows what a plain run shows: the optional parameters
/// come after the health filter, as the library applies them. Before, the watch
/// sent them with health ALL, so `--optional stage=dev` matching only the
/// unhealthy `i-3` narrowed the answer to it and `--health healthy` then showed
/// nothing (exit 4), where the plain run shows `i-1` and `i-2`.
#[tokio::test]
async fn watch_applies_optional_parameters_after_the_health_filter() {
    let (ns, svc) = fleet().await;
    set_health(&svc, "i-3", false).await;
    let url = moto_url();
    let base = [
        ns.as_str(),
        "web",
        "--endpoint-url",
        &url,
        "--optional",
        "stage=dev",
        "--health",
        "healthy",
    ];
    let ids = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("i-"))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    let plain = run(&base).await;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert_eq!(ids(&plain.stdout), ["i-1", "i-2"], "{}", plain.stdout);
    let mut args = base.to_vec();
    args.extend(["--watch", "--count", "1", "--interval", "0.1"]);
    let watched = run(&args).await;
    assert_eq!(watched.code, 0, "{}", watched.stderr);
    assert_eq!(ids(&watched.stdout), ["i-1", "i-2"], "{}", watched.stdout);
    // Where the preferred instance passes the filter, it alone is shown, as in a
    // plain run.
    let mut args = args.clone();
    args[7] = "all";
    let all = run(&args).await;
    assert_eq!(all.code, 0, "{}", all.stderr);
    assert_eq!(ids(&all.stdout), ["i-3"], "{}", all.stdout);
    // DNS refuses optional parameters (its records carry no attributes), watched
    // or not: never silently ignored.
    for watch in [&[][..], &["--watch", "--count", "1"]] {
        let mut args = vec!["prod.internal", "api", "--dns", "127.0.0.1:9"];
        args.extend(["--optional", "stage=dev"]);
        args.extend_from_slice(watch);
        let r = run(&args).await;
        assert_eq!(r.code, 2, "{watch:?}: {}", r.stderr);
        assert!(r.stderr.contains("optional"), "{watch:?}: {}", r.stderr);
    }
}

/// `--dns --watch` watches, as `--watch` does over Cloud Map: a refresh line after
/// the table. Regression: the DNS follow-up of `--optional` ended every DNS watch
/// after the table (0 refresh lines of `--count 2`, exit 0), with or without
/// optional parameters.
#[tokio::test]
async fn dns_watch_keeps_refreshing() {
    let server = test_support::dns::DnsServer::start().await;
    server.add_a("web.prod.internal", "127.0.0.1", 60);
    let addr = server.addr.to_string();
    let args = [
        "prod.internal",
        "web",
        "--dns",
        &addr,
        "--watch",
        "--count",
        "2",
        "--interval",
        "0.1",
    ];
    let r = run(&args).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let refreshes: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains(" refresh "))
        .collect();
    assert_eq!(refreshes.len(), 2, "{}", r.stdout);
    assert!(
        refreshes.iter().all(|l| l.ends_with("no change")),
        "{}",
        r.stdout
    );
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

    let more = ["--count", "300", "--health-check", "tcp"];
    let mut w = Watching::watch(&ns, &url, &more);
    while w.next().await != "2 endpoints" {}
    // The quiet case: both listen, a few refreshes show no change.
    for _ in 0..3 {
        let l = w.next().await;
        assert!(l.ends_with("no change"), "{l}");
    }
    flaky_task.abort();
    let _ = flaky_task.await;
    let port = flaky_addr.port();
    let down = loop {
        let l = w.next().await;
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
        let l = w.next().await;
        if l.contains("flaky") {
            break l;
        }
        assert!(l.ends_with("no change"), "{l}");
    };
    let want = format!(": ~ flaky 127.0.0.1:{port} HEALTHY (health check up)");
    assert!(back.ends_with(&want), "{back}");
    w.child.kill().await.unwrap();
}

/// Ctrl-C ends `--watch` at once, during a refresh too: here one the registry never
/// answers (a 30 s `--timeout`), and the tool exits 0 well before that timeout.
#[tokio::test]
async fn ctrl_c_during_a_refresh_ends_the_watch() {
    let (ns, _) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    let url = proxy.url();
    let mut w = Watching::watch(&ns, &url, &["--timeout", "30"]);
    while w.next().await != "3 endpoints" {}
    // Its first refresh past the table: then every call hangs.
    assert!(w.next().await.contains("refresh 1"));
    // The fault first, then the count: a call counted after `before` arrived with
    // the fault set, so it hangs (read the other way round, a call answered between
    // the two would pass for the hung one).
    proxy.set_fault(Fault::Hang);
    let calls = || proxy.count("DiscoverInstances") + proxy.count("DiscoverInstancesRevision");
    let before = calls();
    // Bounded at 20 s (the next refresh comes within a TTL; a loaded machine is slow).
    let mut hung = false;
    for _ in 0..400 {
        if calls() > before {
            hung = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        hung,
        "no registry call reached the hanging proxy within 20 s"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = w.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    // Well within the 30 s `--timeout`: the exit does not wait for the hung call,
    // with room for a loaded machine.
    let status = tokio::time::timeout(Duration::from_secs(15), w.child.wait())
        .await
        .expect("the tool stops within 15 s of Ctrl-C, not at the 30 s timeout")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `--interval` has a floor of 0.1 s, as `watch(1)` has: each refresh calls the
/// registry. Before, `--interval 0.001 --count 20` was taken and made 21
/// DiscoverInstances calls back to back (0.37 s, the process's start included).
/// `--interval` and `--count` without `--watch` are refused too, rather than
/// ignored (before: one table, exit 0). Each is a usage error naming the argument,
/// found before any call.
#[tokio::test]
async fn watch_intervals_below_a_tenth_of_a_second_are_refused() {
    let (ns, _) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    let url = proxy.url();
    let base = [ns.as_str(), "web", "--endpoint-url", url.as_str()];
    for (more, named) in [
        (
            &["--watch", "--interval", "0.001", "--count", "20"][..],
            "--interval",
        ),
        (
            &["--watch", "--interval", "0.099", "--count", "20"],
            "--interval",
        ),
        (&["--count", "3"], "--watch"),
        (&["--interval", "1"], "--watch"),
    ] {
        let args: Vec<&str> = base.iter().chain(more).copied().collect();
        let r = run(&args).await;
        assert_eq!(r.code, 2, "{more:?}: {}", r.stderr);
        assert!(r.stderr.contains(named), "{more:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{more:?}: {}", r.stdout);
    }
    assert_eq!(
        proxy.count("DiscoverInstances"),
        0,
        "no call for a refused run"
    );
    // The floor itself is taken.
    let args: Vec<&str> = base
        .iter()
        .chain(&["--watch", "--interval", "0.1", "--count", "2"])
        .copied()
        .collect();
    let r = run(&args).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches(" refresh ").count(), 2, "{}", r.stdout);
}
