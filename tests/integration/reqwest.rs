//! The reqwest integrations against real HTTP servers on loopback: the DNS resolver
//! (connection-level failover) and `FailoverClient` (request-level failover).

use std::collections::BTreeMap;

use cloudmap_resolver::{
    AddressPolicy, AttemptError, CallStop, FailoverClient, FailoverError, HostMap, Instance,
    Resolver, StaticDiscovery,
};
use test_support::counting::Counting;
use test_support::http::{registry, three_servers, with_attempt_timeout, HttpServer, Mode};
use test_support::net::closed_port;

/// The namespace the test registries use: no name is a service until listed.
fn shared() -> HostMap {
    HostMap::namespaces(["shared"])
}

/// A `FailoverClient` for the test registries' namespace.
fn failover(resolver: &Resolver) -> FailoverClient {
    resolver
        .failover_client(reqwest::Client::new())
        .hosts(shared())
}

/// A client through the resolver that opens a connection per request, so that
/// every request resolves (reqwest pools connections by host name).
fn dns_client(resolver: &Resolver) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(resolver.reqwest_resolver().hosts(shared()))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn get_text(client: &reqwest::Client, url: &str) -> String {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

fn tally<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.to_owned()).or_default() += 1;
    }
    m
}

/// Three instances on one IP, each on its own port: `http://web.shared/` reaches all
/// three, evenly (round-robin), with the service's name as the Host header.
#[tokio::test]
async fn resolver_reaches_instances_on_their_own_ports() {
    let (servers, reg) = three_servers().await;
    let resolver = Resolver::builder(reg).build().unwrap();
    let client = dns_client(&resolver);
    let mut bodies = Vec::new();
    for _ in 0..30 {
        bodies.push(get_text(&client, "http://web.shared/").await);
    }
    let counts = tally(bodies.iter().map(String::as_str));
    assert_eq!(
        counts,
        tally(["a"; 10].into_iter().chain(["b"; 10]).chain(["c"; 10]))
    );
    for s in &servers {
        assert_eq!(s.hits(), 10, "{}", s.name);
        assert!(
            s.seen().iter().all(|r| r.host == "web.shared"),
            "{:?}",
            s.seen()
        );
    }
}

/// An explicit port in the URL wins over the instance's: the instance is registered
/// on a closed port, and the URL names the live server's port.
#[tokio::test]
async fn resolver_explicit_port_wins() {
    let live = HttpServer::start("live").await;
    let (dead, _held) = closed_port();
    let resolver = Resolver::builder(registry(&[("x", dead.port())]))
        .build()
        .unwrap();
    let client = dns_client(&resolver);
    let url = format!("http://web.shared:{}/", live.port());
    for _ in 0..3 {
        assert_eq!(get_text(&client, &url).await, "live");
    }
    assert_eq!(live.hits(), 3);
    let err = client.get("http://web.shared/").send().await.unwrap_err();
    assert!(
        err.is_connect(),
        "the instance's own port is closed: {err:?}"
    );
}

/// One of three instances down: every GET succeeds, reqwest's connector moving on to
/// the next address of the answer when the first refuses. The resolver cannot tell
/// which address failed, so the dead instance stays first in its turn and its share
/// goes to the instance after it.
#[tokio::test]
async fn resolver_skips_a_refusing_address() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    let (dead, _held) = closed_port();
    let reg = registry(&[("a", a.port()), ("b", b.port()), ("c-dead", dead.port())]);
    let resolver = Resolver::builder(reg).build().unwrap();
    let client = dns_client(&resolver);
    let mut bodies = Vec::new();
    for _ in 0..300 {
        bodies.push(get_text(&client, "http://web.shared/").await);
    }
    assert_eq!(bodies.len(), 300);
    assert_eq!((a.hits(), b.hits()), (200, 100));
}

/// Names that are not services resolve through the system's DNS, without asking the
/// registry: `localhost` reaches a server on 127.0.0.1.
#[tokio::test]
async fn resolver_passes_other_names_to_dns() {
    let server = HttpServer::start("local").await;
    let counting = Counting::new(StaticDiscovery::new());
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    for hosts in [HostMap::any(), HostMap::namespaces(["shared"])] {
        let client = reqwest::Client::builder()
            .dns_resolver(resolver.reqwest_resolver().hosts(hosts))
            .build()
            .unwrap();
        let url = format!("http://localhost:{}/", server.port());
        assert_eq!(get_text(&client, &url).await, "local");
    }
    assert_eq!(server.hits(), 2);
    assert_eq!(counting.discover_calls(), 0);

    let fc = failover(&resolver);
    let url = format!("http://localhost:{}/", server.port());
    let resp = fc.send(fc.client().get(&url)).await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "local");
    assert_eq!(server.hits(), 3);
    assert_eq!(counting.discover_calls(), 0);
}

/// Request-level failover: 300 GETs with one of three instances down all succeed.
/// The dead instance refuses its first 5 turns, each time the GET goes to the next
/// instance, and is then ejected (5 consecutive failures), so it costs 5 retries in
/// all. Once it is ejected, round-robin rotates over the two live instances, so they
/// share the load evenly (the dead instance's turn is not handed to its neighbour):
/// the only imbalance is the 5 retries before the ejection.
#[tokio::test]
async fn failover_client_300_gets_one_instance_down() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    let (dead, _held) = closed_port();
    let reg = registry(&[("a", a.port()), ("b", b.port()), ("c-dead", dead.port())]);
    let resolver = Resolver::builder(reg).build().unwrap();
    let fc = FailoverClient::new(reqwest::Client::new(), resolver.clone()).hosts(shared());
    let mut bodies = Vec::new();
    for _ in 0..300 {
        let resp = fc
            .send(fc.client().get("http://web.shared/x"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        bodies.push(resp.text().await.unwrap());
    }
    let counts = tally(bodies.iter().map(String::as_str));
    assert_eq!(counts.values().sum::<usize>(), 300);
    assert_eq!(a.hits() + b.hits(), 300, "{counts:?}");
    assert!(
        a.hits().abs_diff(b.hits()) <= 6,
        "uneven spread: {counts:?}"
    );
    let stats = resolver.stats();
    assert_eq!(stats.retries, 5);
    assert_eq!(stats.ejections, 1);
    assert!(a.seen().iter().all(|r| r.host == "web.shared"));
}

/// A 503 from one instance sends a GET to the next; when every instance answers 503
/// the last answer is returned as it came.
#[tokio::test]
async fn failover_client_moves_on_after_503() {
    let sick = HttpServer::start("sick").await;
    let good = HttpServer::start("good").await;
    sick.set_mode(Mode::Status(503));
    let resolver = Resolver::builder(registry(&[("sick", sick.port()), ("good", good.port())]))
        .build()
        .unwrap();
    let fc = failover(&resolver);
    for _ in 0..10 {
        let resp = fc
            .send(fc.client().get("http://web.shared/"))
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "good");
    }
    assert_eq!(good.hits(), 10);
    assert_eq!(sick.hits(), 5, "its turns until ejected after 5 failures");

    good.set_mode(Mode::Status(503));
    let resp = fc
        .send(fc.client().get("http://web.shared/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
}

/// A POST is not repeated: the instance that got it closes the connection without
/// answering, the error surfaces, and no other instance sees the request. A GET to the
/// same instances tries both. A POST answered 503 returns the 503 after one request.
#[tokio::test]
async fn failover_client_does_not_repeat_a_post() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    a.set_mode(Mode::Close);
    b.set_mode(Mode::Close);
    let resolver = Resolver::builder(registry(&[("a", a.port()), ("b", b.port())]))
        .build()
        .unwrap();
    let fc = failover(&resolver);
    let err = fc
        .send(
            fc.client()
                .post("http://web.shared/orders")
                .body("one order"),
        )
        .await
        .unwrap_err();
    let FailoverError::Call(call) = &err else {
        panic!("a service request fails with a call error: {err:?}");
    };
    assert_eq!(call.attempts().len(), 1);
    assert_eq!(call.stop(), CallStop::NotRetryable);
    assert!(err.reqwest_error().is_some_and(|e| !e.is_connect()));
    assert_eq!(
        a.hits() + b.hits(),
        1,
        "exactly one request reached a server"
    );
    let seen = [a.seen(), b.seen()].concat();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body, "one order");

    let err = fc
        .send(fc.client().get("http://web.shared/orders"))
        .await
        .unwrap_err();
    assert_eq!(err.call_error().unwrap().attempts().len(), 2);
    assert_eq!(a.hits() + b.hits(), 3, "the GET went to both");

    a.set_mode(Mode::Status(503));
    b.set_mode(Mode::Status(503));
    let resp = fc
        .send(fc.client().post("http://web.shared/orders").body("two"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        a.hits() + b.hits(),
        4,
        "the POST answered 503 was sent once"
    );
}

/// A POST whose connection is closed unanswered is not sent again, but the failure
/// counts against the instance: after 5 in a row it is ejected, and the POSTs after
/// it reach the instance that answers.
#[tokio::test]
async fn posts_failing_on_one_instance_eject_it() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    b.set_mode(Mode::Close);
    let resolver = Resolver::builder(registry(&[("a", a.port()), ("b", b.port())]))
        .build()
        .unwrap();
    let fc = failover(&resolver);
    let mut failed = 0;
    for _ in 0..40 {
        let post = fc.client().post("http://web.shared/orders").body("order");
        if fc.send(post).await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 5, "b's 5 failures, then no more");
    assert_eq!((a.hits(), b.hits()), (35, 5));
    assert_eq!(resolver.stats().ejections, 1);
}

/// A POST that could not connect was never sent, so it goes to the next instance.
#[tokio::test]
async fn failover_client_sends_an_unsent_post_elsewhere() {
    let live = HttpServer::start("live").await;
    let (dead, _held) = closed_port();
    let resolver = Resolver::builder(registry(&[("dead", dead.port()), ("live", live.port())]))
        .build()
        .unwrap();
    let fc = failover(&resolver);
    for n in 0..4 {
        let resp = fc
            .send(
                fc.client()
                    .post("http://web.shared/")
                    .body(format!("order {n}")),
            )
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "live");
    }
    let bodies: Vec<String> = live.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, ["order 0", "order 1", "order 2", "order 3"]);
    assert!(
        resolver.stats().retries >= 1,
        "the dead instance had a turn"
    );
}

/// Both instances answer after 2 s; attempts time out after 300 ms. A timed-out POST
/// may have been delivered, so it is not sent to the other instance; a GET is.
#[tokio::test]
async fn post_is_sent_once_even_when_the_attempt_times_out() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    a.set_mode(Mode::Delay(2_000));
    b.set_mode(Mode::Delay(2_000));
    let resolver = with_attempt_timeout(registry(&[("a", a.port()), ("b", b.port())]), None);
    let fc = failover(&resolver);

    let err = fc
        .send(
            fc.client()
                .post("http://web.shared/orders")
                .body("one order"),
        )
        .await
        .unwrap_err();
    let call = err.call_error().expect("a call error");
    assert_eq!(call.attempts().len(), 1, "{call}");
    assert!(matches!(
        call.attempts()[0].error(),
        AttemptError::TimedOut(_)
    ));
    assert_eq!(call.stop(), CallStop::NotRetryable);
    assert!(
        a.hits() + b.hits() <= 1,
        "the POST reached one server at most"
    );

    let err = fc
        .send(fc.client().get("http://web.shared/"))
        .await
        .unwrap_err();
    let call = err.call_error().expect("a call error");
    assert_eq!(call.attempts().len(), 2, "a GET may go to both: {call}");
    assert_eq!(call.stop(), CallStop::EndpointsUsed);
}

/// An endpoint whose CNAME is an IP literal in another spelling (`2130706433` is
/// 127.0.0.1), or a name resolving to a denied address, is judged by the address it
/// stands for: with loopback denied, the server behind it gets nothing; with the
/// default policy it is reached.
#[tokio::test]
async fn cname_endpoints_are_judged_by_the_address_policy() {
    let victim = HttpServer::start("victim").await;
    let cname = |host: &str| {
        StaticDiscovery::new().with_instance(
            "shared",
            "web",
            Instance::new("c").cname(host).port(victim.port()),
        )
    };
    for host in ["2130706433", "localhost"] {
        let deny_loopback = AddressPolicy::default()
            .deny("127.0.0.0/8".parse().unwrap())
            .deny("::1/128".parse().unwrap());
        let resolver = with_attempt_timeout(cname(host), Some(deny_loopback));
        let fc = failover(&resolver);
        let get = fc.send(fc.client().get("http://web.shared/")).await;
        assert!(get.is_err(), "{host}: {get:?}");
        let post = fc
            .send(fc.client().post("http://web.shared/").body("x"))
            .await;
        assert!(post.is_err(), "{host}: {post:?}");
        assert_eq!(
            victim.hits(),
            0,
            "{host}: nothing reached the denied address"
        );
    }
    let resolver = with_attempt_timeout(cname("2130706433"), None);
    let fc = failover(&resolver);
    let resp = fc
        .send(fc.client().get("http://web.shared/"))
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "victim");
    assert_eq!(victim.seen()[0].host, "web.shared");
}

/// With the default host map, a registry namespace `example.com` cannot capture
/// `http://www.example.com/login`: the request goes where the client's own DNS
/// sends it (here pinned to a decoy), and the registry is not asked.
#[tokio::test]
async fn external_hosts_are_not_captured_by_default() {
    let trap = HttpServer::start("trap").await;
    let real = HttpServer::start("real").await;
    let reg = StaticDiscovery::new().with_instance(
        "example.com",
        "www",
        Instance::new("trap")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(trap.port()),
    );
    let counting = Counting::new(reg);
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    let client = reqwest::Client::builder()
        .resolve("www.example.com", real.addr)
        .build()
        .unwrap();
    let fc = resolver.failover_client(client);
    let url = format!("http://www.example.com:{}/login", real.port());
    let resp = fc.send(fc.client().get(&url)).await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "real");
    assert_eq!(real.hits(), 1);
    assert_eq!(trap.hits(), 0);
    assert_eq!(counting.discover_calls(), 0);
}

/// Credentials in the URL never reach the `Host` header.
#[tokio::test]
async fn host_header_never_carries_credentials() {
    let server = HttpServer::start("s").await;
    let resolver = Resolver::builder(registry(&[("s", server.port())]))
        .build()
        .unwrap();
    let fc = failover(&resolver);
    fc.send(fc.client().get("http://alice:s3cret@web.shared/"))
        .await
        .unwrap();
    let url = format!("http://alice:s3cret@web.shared:{}/", server.port());
    fc.send(fc.client().get(&url)).await.unwrap();
    let hosts: Vec<String> = server.seen().into_iter().map(|s| s.host).collect();
    assert_eq!(
        hosts,
        [
            "web.shared".to_owned(),
            format!("web.shared:{}", server.port())
        ]
    );
}

/// IP literals are never service names: `http://2130706433:PORT/` reaches the server
/// at 127.0.0.1 directly, without a registry call, even under a rule mapping any name.
#[tokio::test]
async fn ip_literal_hosts_never_reach_the_registry() {
    let server = HttpServer::start("direct").await;
    let counting = Counting::new(StaticDiscovery::new());
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    let fc = resolver
        .failover_client(reqwest::Client::new())
        .hosts(HostMap::from_fn(|_| {
            Some(("shared".to_owned(), "web".to_owned()))
        }));
    for host in ["127.0.0.1", "2130706433", "0x7f000001"] {
        let url = format!("http://{host}:{}/", server.port());
        let resp = fc.send(fc.client().get(&url)).await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "direct", "{url}");
    }
    assert_eq!(server.hits(), 3);
    assert_eq!(counting.discover_calls(), 0);
}

/// Hedging through `FailoverClient` (issue 29): a GET is hedged to the other endpoint
/// when the first is slow; a POST is never hedged unless the policy lists it.
#[tokio::test]
async fn failover_client_hedges_gets_never_posts() {
    use cloudmap_resolver::{FailoverPolicy, Hedge};
    let slow = HttpServer::start("slow").await;
    slow.set_mode(Mode::Delay(300));
    let fast = HttpServer::start("fast").await;
    let reg = registry(&[("slow", slow.port()), ("fast", fast.port())]);
    let resolver = Resolver::builder(reg).build().unwrap();
    let mut policy = FailoverPolicy::default();
    policy.hedge = Some(Hedge::after(std::time::Duration::from_millis(30)));
    let fc = FailoverClient::new(reqwest::Client::new(), resolver.clone())
        .hosts(shared())
        .policy(policy.clone());
    for _ in 0..4 {
        let resp = fc
            .send(fc.client().get("http://web.shared/"))
            .await
            .unwrap();
        let body = resp.text().await.unwrap();
        assert_eq!(body, "fast");
    }
    // Round robin put the slow one first in two of the four calls.
    assert_eq!(resolver.stats().hedges, 2);
    for _ in 0..4 {
        fc.send(fc.client().post("http://web.shared/").body("x"))
            .await
            .unwrap();
    }
    assert_eq!(resolver.stats().hedges, 2, "no POST hedged");
    let posts = |s: &HttpServer| s.seen().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts(&slow) + posts(&fast), 4, "each POST sent once");
    policy.methods.push(reqwest::Method::POST);
    let fc = fc.policy(policy);
    for _ in 0..2 {
        let resp = fc
            .send(fc.client().post("http://web.shared/").body("x"))
            .await;
        assert_eq!(resp.unwrap().text().await.unwrap(), "fast");
    }
    assert_eq!(resolver.stats().hedges, 3, "a listed POST is hedged");
}

/// A request whose body is a stream (it cannot be cloned) moves on from an endpoint
/// it was never sent to: one whose CNAME (`localhost`) resolves only to an address the
/// policy refuses (127.0.0.1), where the next endpoint (127.0.0.2, Linux's loopback)
/// takes the whole body (issue 25). It is still sent once: the live server sees each
/// body once.
#[tokio::test]
async fn a_streaming_body_moves_past_an_endpoint_it_was_never_sent_to() {
    let live = HttpServer::start_on("live", std::net::Ipv4Addr::new(127, 0, 0, 2)).await;
    let reg = StaticDiscovery::new()
        .with_instance(
            "shared",
            "web",
            Instance::new("refused")
                .cname("localhost")
                .port(live.port()),
        )
        .with_instance(
            "shared",
            "web",
            Instance::new("live")
                .ipv4("127.0.0.2".parse().unwrap())
                .port(live.port()),
        );
    let policy = AddressPolicy::default()
        .deny("127.0.0.1/32".parse().unwrap())
        .deny("::1/128".parse().unwrap());
    let resolver = with_attempt_timeout(reg, Some(policy));
    assert_eq!(
        resolver.resolve_all("shared", "web").await.unwrap().len(),
        2
    );
    let fc = failover(&resolver);
    for i in 0..10 {
        let chunk = bytes::Bytes::from(format!("chunk {i}"));
        let body = reqwest::Body::wrap(http_body_util::Full::new(chunk));
        let resp = fc
            .send(fc.client().post("http://web.shared/").body(body))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.text().await.unwrap(), "live");
    }
    let seen = live.seen();
    let bodies: Vec<&str> = seen.iter().map(|s| s.body.as_str()).collect();
    let want: Vec<String> = (0..10).map(|i| format!("chunk {i}")).collect();
    assert_eq!(bodies, want);
    assert!(seen.iter().all(|s| s.host == "web.shared"), "{seen:?}");
}

/// A failed request's error chain says why beneath the attempts it lists (here a
/// refused connection), each text once.
#[tokio::test]
async fn a_failed_call_names_its_cause() {
    let (dead, _held) = closed_port();
    let resolver = Resolver::builder(registry(&[("a", dead.port())]))
        .build()
        .unwrap();
    let fc = failover(&resolver);
    let err = fc
        .send(fc.client().get("http://web.shared/"))
        .await
        .unwrap_err();
    let mut chain = vec![err.to_string()];
    let mut next = std::error::Error::source(&err);
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    assert!(
        chain[1..]
            .iter()
            .any(|t| t.to_lowercase().contains("refused")),
        "{chain:#?}"
    );
    assert!(chain.windows(2).all(|w| w[0] != w[1]), "{chain:#?}");
}
