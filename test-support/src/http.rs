//! HTTP servers on loopback for the client integrations: each answers with its own
//! name, counts what it received, and fails on command.

use cloudmap_resolver::{AddressPolicy, Instance, Resolver, ResolverOptions, StaticDiscovery};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How a server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with its name as the body.
    Ok,
    /// This status, with its name as the body.
    Status(u16),
    /// Reads the request, then closes the connection without answering.
    Close,
    /// Reads the request (it counts as received), then answers 200 after this many
    /// milliseconds.
    Delay(u64),
    /// 301 to this location.
    Redirect(&'static str),
}

/// What a server received: method, `Host` header, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub host: String,
    pub body: String,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    seen: Vec<Seen>,
}

/// A server on a free port of 127.0.0.1, stopped when dropped.
pub struct HttpServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    pub async fn start(name: &'static str) -> HttpServer {
        Self::start_on(name, std::net::Ipv4Addr::LOCALHOST).await
    }

    /// A server on a free port of `ip`, a loopback address (Linux answers on all of
    /// 127.0.0.0/8): for a test that needs two distinct loopback addresses, or one
    /// on IPv6's `::1`.
    pub async fn start_on(name: &'static str, ip: impl Into<std::net::IpAddr>) -> HttpServer {
        let listener = TcpListener::bind((ip.into(), 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Ok,
            seen: Vec::new(),
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, name, st.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HttpServer {
            name,
            addr,
            state,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Requests received, answered or not.
    pub fn hits(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

#[derive(Debug)]
struct Refuse;

impl std::fmt::Display for Refuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closing without an answer")
    }
}

impl std::error::Error for Refuse {}

async fn handle(
    req: Request<Incoming>,
    name: &'static str,
    st: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Refuse> {
    let method = req.method().to_string();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let mode = {
        let mut s = st.lock().unwrap();
        s.seen.push(Seen { method, host, body });
        s.mode
    };
    let mut location = None;
    let status = match mode {
        Mode::Ok => 200,
        Mode::Redirect(to) => {
            location = Some(to);
            301
        }
        Mode::Delay(ms) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            200
        }
        Mode::Status(s) => s,
        // An error from the service makes hyper drop the connection unanswered.
        Mode::Close => return Err(Refuse),
    };
    let mut response = Response::builder().status(status);
    if let Some(to) = location {
        response = response.header("location", to);
    }
    Ok(response
        .body(Full::new(Bytes::from_static(name.as_bytes())))
        .unwrap())
}

/// `shared/web` listing these instances on 127.0.0.1, each on its own port.
pub fn registry(instances: &[(&str, u16)]) -> StaticDiscovery {
    instances
        .iter()
        .fold(StaticDiscovery::new(), |reg, (id, port)| {
            reg.with_instance(
                "shared",
                "web",
                Instance::new(*id)
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(*port),
            )
        })
}

/// Three live servers, `a`, `b` and `c`, on their own ports, and the registry
/// listing them as `shared/web`.
pub async fn three_servers() -> ([HttpServer; 3], StaticDiscovery) {
    let servers = [
        HttpServer::start("a").await,
        HttpServer::start("b").await,
        HttpServer::start("c").await,
    ];
    let reg = registry(&[
        ("a", servers[0].port()),
        ("b", servers[1].port()),
        ("c", servers[2].port()),
    ]);
    (servers, reg)
}

/// A loopback backend that can be killed and restarted on the same port, for soak
/// tests: answers every request `200 ok` and closes, and keeps only a counter (no
/// per-request record, so a long run does not grow).
pub struct Backend {
    pub addr: SocketAddr,
    hits: Arc<std::sync::atomic::AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Backend {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut backend = Backend {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            task: None,
        };
        backend.serve(listener);
        backend
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn is_up(&self) -> bool {
        self.task.is_some()
    }

    /// Requests answered.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Kills it: the listener closes and every open connection is dropped, answered
    /// or not. Returns once the port is closed.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port, trying for up to about 2 s (another socket may
    /// hold the port for a moment). False if the port stayed taken; the backend is
    /// then still down.
    pub async fn restart(&mut self) -> bool {
        if self.is_up() {
            return true;
        }
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.serve(listener);
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }

    /// Listens again on a new free port, for when [`restart`](Self::restart) failed.
    pub async fn restart_elsewhere(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addr = listener.local_addr().unwrap();
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let hits = self.hits.clone();
        self.task = Some(tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        match accepted {
                            Ok((stream, _)) => {
                                conns.spawn(answer_ok(stream, hits.clone()));
                            }
                            // Out of descriptors, say: let connections finish first.
                            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
    }
}

async fn answer_ok(mut stream: tokio::net::TcpStream, hits: Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        if len == buf.len() {
            return;
        }
    }
    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    if stream.write_all(reply).await.is_ok() {
        hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = stream.shutdown().await;
    }
}

/// One `GET /` to `addr` over a fresh connection: `Ok` when it answered 200.
pub async fn get_ok(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut reply = Vec::with_capacity(128);
    stream
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("read from {addr}: {e}"))?;
    if reply.starts_with(b"HTTP/1.1 200 ") {
        Ok(())
    } else {
        Err(format!("{addr} answered {} bytes, not 200", reply.len()))
    }
}

/// A resolver over `reg` whose calls drop an attempt after 300 ms (the once-only tests
/// of `FailoverClient` and `FailoverLayer`), with `policy` in place of the default.
pub fn with_attempt_timeout(reg: StaticDiscovery, policy: Option<AddressPolicy>) -> Resolver {
    let mut opts = ResolverOptions::default();
    opts.call.attempt_timeout = Some(std::time::Duration::from_millis(300));
    if let Some(p) = policy {
        opts.address_policy = p;
    }
    Resolver::builder(reg).options(opts).build().unwrap()
}
