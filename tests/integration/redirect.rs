//! `FailoverClient` follows redirects itself (issue 25): a hop to another host goes
//! out as a plain URL, with that host in `Host` and without credentials; a hop to
//! the same service is resolved again; the request's timeout bounds its redirects
//! and failovers alike. Servers on loopback that record every request's headers
//! and answer a redirect or 200.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudmap_resolver::{FailoverClient, FailoverError, FailoverPolicy, HostMap, Resolver};
use test_support::http::registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as a server read it: path and headers (names lowercase).
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: Vec<(String, String)>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A server on 127.0.0.1 answering `302 Location: <location>` when given one, 200
/// with body `landed` otherwise; one request per connection.
struct Server {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(location: Option<String>) -> Server {
        Server::start_slow(location, Duration::ZERO).await
    }

    /// As [`start`](Self::start), answering each request after `delay` (on tokio's
    /// clock).
    async fn start_slow(location: Option<String>, delay: Duration) -> Server {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65_536 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let mut lines = text.split("\r\n");
                let path = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or("")
                    .to_owned();
                let headers = lines
                    .take_while(|l| !l.is_empty())
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                seen.lock().unwrap().push(Got { path, headers });
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let answer = match &location {
                    Some(l) => format!(
                        "HTTP/1.1 302 Found\r\nlocation: {l}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    ),
                    None => "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nlanded"
                        .to_owned(),
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        Server { port, got, task }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

/// A GET of `web.shared` with a 1 s timeout, which fails on that timeout: the
/// error and how long the request took.
async fn timed_out_get(fc: &FailoverClient) -> (FailoverError, Duration) {
    let start = tokio::time::Instant::now();
    let req = fc
        .client()
        .get("http://web.shared/")
        .timeout(Duration::from_secs(1));
    let err = fc.send(req).await.expect_err("timed out");
    let took = start.elapsed();
    assert!(
        err.reqwest_error().is_some_and(reqwest::Error::is_timeout),
        "{err:?}"
    );
    (err, took)
}

fn client(resolver: &Resolver) -> FailoverClient {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    resolver
        .failover_client(http)
        .hosts(HostMap::namespaces(["shared"]))
}

/// The service's endpoint answers 302 to `localhost` on another port: the second
/// server sees its own host in `Host`, not `web.shared`, and no credentials. Before,
/// the `FailoverClient` returned the 302 with such a client, and with reqwest's
/// default one the second server saw `Host: web.shared` (and the cookie was kept).
#[tokio::test]
async fn a_redirect_to_another_host_carries_that_host() {
    let landing = Server::start(None).await;
    let target = format!("http://localhost:{}/landed", landing.port);
    let redirector = Server::start(Some(target)).await;
    let resolver = Resolver::builder(registry(&[("r", redirector.port)]))
        .build()
        .unwrap();
    let fc = client(&resolver);
    let req = fc
        .client()
        .get("http://web.shared/start")
        .header("authorization", "Bearer secret")
        .header("cookie", "session=1");
    let resp = fc.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "landed");

    let first = redirector.got();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].header("host"), Some("web.shared"));
    assert_eq!(first[0].header("authorization"), Some("Bearer secret"));
    let second = landing.got();
    assert_eq!(second.len(), 1, "{second:?}");
    let own = format!("localhost:{}", landing.port);
    assert_eq!(second[0].header("host"), Some(own.as_str()), "{second:?}");
    assert_eq!(second[0].path, "/landed");
    assert_eq!(second[0].header("authorization"), None, "{second:?}");
    assert_eq!(second[0].header("cookie"), None, "{second:?}");
}

/// A relative location stays with the service: resolved again, `Host` still the
/// service's name, the credentials kept (same origin).
#[tokio::test]
async fn a_relative_redirect_stays_with_the_service() {
    let redirector = Server::start(Some("/landed".to_owned())).await;
    let resolver = Resolver::builder(registry(&[("r", redirector.port)]))
        .build()
        .unwrap();
    // Follows up to 3: the endpoint redirects every request, so the 4th answer (a
    // 302) is the result.
    let fc = client(&resolver).redirects(3);
    let req = fc
        .client()
        .get("http://web.shared/start")
        .header("authorization", "Bearer secret");
    let resp = fc.send(req).await.unwrap();
    assert_eq!(resp.status(), 302);
    let got = redirector.got();
    let paths: Vec<_> = got.iter().map(|g| g.path.as_str()).collect();
    assert_eq!(paths, ["/start", "/landed", "/landed", "/landed"]);
    for g in &got {
        assert_eq!(g.header("host"), Some("web.shared"), "{g:?}");
        assert_eq!(g.header("authorization"), Some("Bearer secret"), "{g:?}");
    }
    // No redirect followed at all with 0.
    let resp = fc
        .clone()
        .redirects(0)
        .send(fc.client().get("http://web.shared/"))
        .await;
    assert_eq!(resp.unwrap().status(), 302);
    assert_eq!(redirector.got().len(), 5);
}

/// A `3xx` listed in `FailoverPolicy::statuses` fails over like a listed `5xx` (as
/// the tower layer does): with one endpoint answering 302 and one 200, every request
/// is answered 200. Before, the `FailoverClient` counted only error statuses and
/// returned the 302 whenever it picked that endpoint.
#[tokio::test]
async fn a_listed_redirect_status_fails_over() {
    let landing = Server::start(None).await;
    let redirector = Server::start(Some("/elsewhere".to_owned())).await;
    let resolver = Resolver::builder(registry(&[("r", redirector.port), ("l", landing.port)]))
        .build()
        .unwrap();
    let mut policy = FailoverPolicy::default();
    policy.statuses.push(reqwest::StatusCode::FOUND);
    let fc = client(&resolver).policy(policy).redirects(0);
    // Picks are random: send until the redirector was picked (bounded).
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let resp = fc
            .send(fc.client().get("http://web.shared/"))
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if redirector.got().len() >= 2 {
            break;
        }
    }
    assert!(!redirector.got().is_empty(), "never picked");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// The request's timeout bounds the whole request, redirects included, as reqwest's
/// does: an endpoint answering each hop's 302 after 600 ms, with a 1 s timeout, is
/// asked twice and the request times out at 1 s. Before, each hop had the whole
/// second: 11 requests, 6.6 s, then the last 302.
#[tokio::test(start_paused = true)]
async fn the_timeout_covers_every_redirect() {
    let slow = Server::start_slow(Some("/again".to_owned()), Duration::from_millis(600)).await;
    let resolver = Resolver::builder(registry(&[("s", slow.port)]))
        .build()
        .unwrap();
    let (_, took) = timed_out_get(&client(&resolver)).await;
    assert_eq!(slow.got().len(), 2);
    assert!(took <= Duration::from_millis(1_100), "took {took:?}");
}

/// The request's timeout bounds the whole request, its failovers included, as
/// reqwest's own timeout bounds a request: three instances answering after 2 s, a
/// GET with a 1 s timeout reaches one of them and times out at 1 s. Before, each
/// attempt had the whole second: the GET reached all three, in 3 s.
#[tokio::test(start_paused = true)]
async fn the_timeout_covers_every_failover() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start_slow(None, Duration::from_secs(2)).await);
    }
    let registry = registry(&[
        ("a", servers[0].port),
        ("b", servers[1].port),
        ("c", servers[2].port),
    ]);
    let resolver = Resolver::builder(registry).build().unwrap();
    let (err, took) = timed_out_get(&client(&resolver)).await;
    let reached: usize = servers.iter().map(|s| s.got().len()).sum();
    assert_eq!(reached, 1, "{err}");
    assert!(took <= Duration::from_millis(1_100), "took {took:?}");
}

/// A request timeout of `Duration::MAX` (reqwest's way to say "no timeout" for one
/// request, where the client has one) is followed through its redirects: the
/// request lands after two hops. Before, `FailoverClient::send` panicked adding the
/// timeout to the clock (`Instant + Duration` overflow) before sending anything.
#[tokio::test(start_paused = true)]
async fn a_timeout_of_duration_max_never_expires() {
    let redirector = Server::start(Some("/landed".to_owned())).await;
    let resolver = Resolver::builder(registry(&[("r", redirector.port)]))
        .build()
        .unwrap();
    let fc = client(&resolver).redirects(2);
    let req = fc
        .client()
        .get("http://web.shared/start")
        .timeout(Duration::MAX);
    let resp = fc.send(req).await.unwrap();
    assert_eq!(resp.status(), 302, "the third answer, after two redirects");
    assert_eq!(redirector.got().len(), 3);
}

/// A request whose timeout is already spent (zero left, as for a redirect hop
/// received at its deadline) ends with reqwest's timeout error and blames no
/// endpoint: nothing can be sent. Before, each such request made one attempt that
/// timed out at once and counted as a failure against its endpoint: 10 of them
/// made 10 attempts and ejected one of two healthy endpoints; now none.
#[tokio::test(start_paused = true)]
async fn a_spent_timeout_blames_no_endpoint() {
    let a = Server::start(None).await;
    let b = Server::start(None).await;
    let resolver = Resolver::builder(registry(&[("a", a.port), ("b", b.port)]))
        .build()
        .unwrap();
    let fc = client(&resolver);
    for _ in 0..10 {
        let req = fc
            .client()
            .get("http://web.shared/")
            .timeout(Duration::ZERO);
        let err = fc.send(req).await.expect_err("no time left");
        assert!(
            err.reqwest_error().is_some_and(reqwest::Error::is_timeout),
            "{err:?}"
        );
    }
    let stats = resolver.stats();
    assert_eq!((stats.attempts, stats.ejections), (0, 0), "{stats:?}");
    assert_eq!(a.got().len() + b.got().len(), 0);
}
