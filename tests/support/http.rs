//! HTTP servers on loopback for the client integrations: each answers with its own
//! name, counts what it received, and fails on command.

use cloudmap_resolver::{Instance, StaticDiscovery};
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    let status = match mode {
        Mode::Ok => 200,
        Mode::Delay(ms) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            200
        }
        Mode::Status(s) => s,
        // An error from the service makes hyper drop the connection unanswered.
        Mode::Close => return Err(Refuse),
    };
    Ok(Response::builder()
        .status(status)
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
