//! An HTTP proxy in front of moto that counts calls per operation, records their
//! request bodies, and makes the faults moto cannot: error statuses, throttling,
//! latency, a hung registry, and operations that do not succeed at once (moto's
//! always do). Faults apply to every request ([`Proxy::set_fault`]) or to chosen
//! operations, for a number of requests ([`Proxy::fault_operation`]). It can also
//! make moto replace an instance registered again under its id, as Cloud Map does
//! ([`Proxy::replace_on_register`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Forward every request.
    None,
    /// Answer with this HTTP status and an empty JSON error.
    Status(u16),
    /// Answer `RequestLimitExceeded`, as Cloud Map does when the quota is spent.
    Throttle,
    /// Forward after this delay.
    Delay(Duration),
    /// Never answer.
    Hang,
    /// Read the request, then close the connection without an answer (the client
    /// hears "connection closed before message completed").
    Close,
    /// Forward, then rewrite a GetOperation answer's `Status` to this (`PENDING`,
    /// `FAIL`; `FAIL` adds an `ErrorCode` and `ErrorMessage`).
    OperationStatus(&'static str),
    /// Answer with this HTTP status and an AWS JSON error of this code and message
    /// (`AccessDeniedException`, `ResourceLimitExceeded`, ...).
    AwsError {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
    /// Answer with this HTTP status and an AWS JSON error of this code and message,
    /// dated `ahead` later than this machine's clock (earlier when negative, in
    /// seconds): the registry's answer to a caller whose clock is off, as Cloud Map
    /// gives it (`InvalidSignatureException`, "Signature expired").
    SkewedAwsError {
        status: u16,
        code: &'static str,
        message: &'static str,
        ahead: i64,
    },
    /// Forward, then lose the answer: the registry applied the request, and the
    /// client hears a 500. The lost answer's `OperationId` is kept for
    /// [`Fault::DuplicateOfLost`].
    LoseAnswer,
    /// Answer `DuplicateRequest` naming the operation of the last lost answer as
    /// `DuplicateOperationId`, as Cloud Map does for a request repeated while its
    /// operation runs.
    DuplicateOfLost,
}

/// A fault for one operation: the next `remaining` requests (all, if `None`).
#[derive(Debug, Clone)]
struct Rule {
    fault: Fault,
    remaining: Option<u32>,
}

/// How many request bodies a proxy keeps (the first ones): enough for any test that
/// reads them, bounded for the soak's millions of calls.
pub const MAX_BODIES: usize = 10_000;

#[derive(Default)]
struct State {
    counts: Mutex<HashMap<String, u64>>,
    hosts: Mutex<Vec<(String, String)>>,
    bodies: Mutex<Vec<(String, String)>>,
    fault: Mutex<Option<Fault>>,
    rules: Mutex<HashMap<String, Rule>>,
    /// Rules applied after the current one of an operation runs out.
    queued: Mutex<HashMap<String, Vec<Rule>>>,
    lost_operation: Mutex<Option<String>>,
    /// ListNamespaces answers: namespace id -> (name shown, owner account shown).
    disguised: Mutex<HashMap<String, (String, String)>>,
    /// Make RegisterInstance of an id already registered replace that instance.
    replace_on_register: std::sync::atomic::AtomicBool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free loopback port, on the current runtime.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, upstream, st.clone(), client.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Proxy { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = Some(fault);
    }

    /// Makes the next `times` requests of `op` (`RegisterInstance`, ...) fail with
    /// `fault` (every one, if `None`); other operations are untouched. Replaces an
    /// earlier rule for `op`; [`Fault::None`] clears it.
    pub fn fault_operation(&self, op: &str, fault: Fault, times: Option<u32>) {
        self.state.rules.lock().unwrap().insert(
            op.to_owned(),
            Rule {
                fault,
                remaining: times,
            },
        );
    }

    /// Applies `fault` to the `times` requests of `op` that follow the ones its
    /// current rule covers (a sequence: lose the first answer, then answer the retry
    /// `DuplicateRequest`).
    pub fn then_fault_operation(&self, op: &str, fault: Fault, times: Option<u32>) {
        self.state
            .queued
            .lock()
            .unwrap()
            .entry(op.to_owned())
            .or_default()
            .push(Rule {
                fault,
                remaining: times,
            });
    }

    /// Shows the namespace `id` in ListNamespaces answers as `name`, owned by
    /// `account` (its ARN's account and its `ResourceOwner`), first in the list: a
    /// namespace another account shares through AWS RAM, which moto (one account)
    /// cannot hold. moto ignores the filters, so every answer lists it.
    pub fn disguise_namespace(&self, id: &str, name: &str, account: &str) {
        self.state
            .disguised
            .lock()
            .unwrap()
            .insert(id.to_owned(), (name.to_owned(), account.to_owned()));
    }

    /// From now on, a RegisterInstance of an instance id the service already holds
    /// replaces that instance, as Cloud Map does (the new registration, with its own
    /// `CreatorRequestId`, is what GetInstance answers from then on); moto appends a
    /// second instance of the id instead, and its GetInstance answers the first. The
    /// proxy deregisters the id at moto before forwarding the registration.
    pub fn replace_on_register(&self) {
        self.state
            .replace_on_register
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests received for an operation (`DiscoverInstances`, ...), faulted or not.
    pub fn count(&self, op: &str) -> u64 {
        self.state
            .counts
            .lock()
            .unwrap()
            .get(op)
            .copied()
            .unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        self.state.counts.lock().unwrap().clear();
    }

    /// The request bodies (the operation's JSON input) received for an operation, in
    /// arrival order, faulted or not; the first [`MAX_BODIES`] requests' are kept.
    pub fn bodies(&self, op: &str) -> Vec<String> {
        self.state
            .bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// (operation, Host header) of every request received.
    pub fn hosts(&self) -> Vec<(String, String)> {
        self.state.hosts.lock().unwrap().clone()
    }
}

fn operation(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("unknown")
        .to_owned()
}

fn json(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn handle(
    req: Request<Incoming>,
    upstream: SocketAddr,
    st: Arc<State>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let op = operation(&req);
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    *st.counts.lock().unwrap().entry(op.clone()).or_default() += 1;
    st.hosts.lock().unwrap().push((op.clone(), host));
    let fault = operation_fault(&st, &op)
        .or_else(|| st.fault.lock().unwrap().clone())
        .unwrap_or(Fault::None);
    {
        // Bounded: long runs (the soak) make millions of discovery calls.
        let mut bodies = st.bodies.lock().unwrap();
        if bodies.len() < MAX_BODIES {
            bodies.push((op.clone(), String::from_utf8_lossy(&body).into_owned()));
        }
    }
    let mut rewrite = None;
    let mut lose = false;
    match fault {
        Fault::Status(code) => return Ok(json(code, "{}")),
        Fault::AwsError {
            status,
            code,
            message,
        } => {
            let body = serde_json::json!({ "__type": code, "message": message });
            return Ok(json(status, &body.to_string()));
        }
        Fault::SkewedAwsError {
            status,
            code,
            message,
            ahead,
        } => {
            let body = serde_json::json!({ "__type": code, "message": message });
            let mut resp = json(status, &body.to_string());
            let now = std::time::SystemTime::now();
            let secs = std::time::Duration::from_secs(ahead.unsigned_abs());
            let date = if ahead >= 0 { now + secs } else { now - secs };
            let date = aws_sdk_servicediscovery::primitives::DateTime::from(date)
                .fmt(aws_sdk_servicediscovery::primitives::DateTimeFormat::HttpDate)
                .unwrap();
            resp.headers_mut()
                .insert(hyper::header::DATE, date.parse().unwrap());
            return Ok(resp);
        }
        Fault::LoseAnswer => lose = true,
        Fault::DuplicateOfLost => {
            let id = st
                .lost_operation
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default();
            let body = serde_json::json!({
                "__type": "DuplicateRequest",
                "Message": "the operation is already in progress",
                "DuplicateOperationId": id,
            });
            return Ok(json(400, &body.to_string()));
        }
        Fault::Throttle => {
            return Ok(json(
                400,
                r#"{"__type":"RequestLimitExceeded","message":"Rate exceeded"}"#,
            ))
        }
        Fault::Hang => std::future::pending::<()>().await,
        // An error from the service makes hyper close the connection unanswered.
        Fault::Close => return Err(std::io::Error::other("closed by the test proxy")),
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::OperationStatus(status) => rewrite = Some(status),
        Fault::None => {}
    }

    let uri = format!(
        "http://{upstream}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    // Cloud Map takes a service's (and ListServices a namespace's) id or its ARN
    // (required in a namespace shared from another account); moto takes only the id.
    let unarned = service_arns_to_ids(&body);
    let rewritten = unarned.is_some();
    let body = unarned.unwrap_or(body);
    if op == "RegisterInstance"
        && st
            .replace_on_register
            .load(std::sync::atomic::Ordering::Relaxed)
    {
        deregister_first(&client, &uri, &parts.headers, &body).await;
    }
    let mut fwd = Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        if rewritten && k == hyper::header::CONTENT_LENGTH {
            continue; // the body's length changed; hyper sets it from the body
        }
        fwd = fwd.header(k, v);
    }
    let resp = match client.request(fwd.body(Full::new(body)).unwrap()).await {
        Ok(r) => r,
        Err(_) => return Ok(json(502, "{}")),
    };
    let (mut parts, body) = resp.into_parts();
    let mut body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Some(status) = rewrite {
        body = with_operation_status(&body, status);
        parts.headers.remove("content-length");
    }
    if lose {
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        *st.lost_operation.lock().unwrap() = answer["OperationId"].as_str().map(str::to_owned);
        return Ok(json(500, "{}"));
    }
    if op == "ListNamespaces" {
        let disguised = st.disguised.lock().unwrap().clone();
        if !disguised.is_empty() {
            body = with_disguised_namespaces(&body, &disguised);
            parts.headers.remove("content-length");
        }
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// Deregisters at moto the instance a RegisterInstance `body` names (an answer of
/// InstanceNotFound is fine: nothing to replace), so that the registration then
/// forwarded replaces it, as Cloud Map's does.
async fn deregister_first(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    uri: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
) {
    let Ok(register) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let input = serde_json::json!({
        "ServiceId": register["ServiceId"],
        "InstanceId": register["InstanceId"],
    });
    let mut req = Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        if k != hyper::header::CONTENT_LENGTH && k != "x-amz-target" {
            req = req.header(k, v);
        }
    }
    let req = req
        .header(
            "x-amz-target",
            "Route53AutoNaming_v20170314.DeregisterInstance",
        )
        .body(Full::new(Bytes::from(input.to_string())))
        .unwrap();
    let _ = client.request(req).await;
}

/// The fault a rule sets for this request of `op`, counting it against the rule;
/// a spent rule gives way to the next queued one.
fn operation_fault(st: &State, op: &str) -> Option<Fault> {
    let mut rules = st.rules.lock().unwrap();
    if rules.get(op).is_none_or(|r| r.remaining == Some(0)) {
        let mut queued = st.queued.lock().unwrap();
        if let Some(next) = queued.get_mut(op).filter(|q| !q.is_empty()) {
            rules.insert(op.to_owned(), next.remove(0));
        }
    }
    let rule = rules.get_mut(op)?;
    match &mut rule.remaining {
        Some(0) => return None,
        Some(n) => *n -= 1,
        None => {}
    }
    Some(rule.fault.clone())
}

/// A ListNamespaces answer with each disguised namespace renamed, given the owner
/// account (in its ARN and `ResourceOwner`) and moved first.
fn with_disguised_namespaces(body: &[u8], disguised: &HashMap<String, (String, String)>) -> Bytes {
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Bytes::copy_from_slice(body);
    };
    if let Some(list) = json.get_mut("Namespaces").and_then(|l| l.as_array_mut()) {
        for ns in list.iter_mut() {
            let id = ns["Id"].as_str().unwrap_or_default().to_owned();
            let Some((name, account)) = disguised.get(&id) else {
                continue;
            };
            let arn = format!("arn:aws:servicediscovery:us-east-1:{account}:namespace/{id}");
            ns["Name"] = name.clone().into();
            ns["Arn"] = arn.into();
            ns["ResourceOwner"] = account.clone().into();
        }
        list.sort_by_key(|ns| !disguised.contains_key(ns["Id"].as_str().unwrap_or_default()));
    }
    Bytes::from(json.to_string())
}

/// A GetOperation answer with `Operation.Status` set to `status`.
fn with_operation_status(body: &[u8], status: &str) -> Bytes {
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Bytes::copy_from_slice(body);
    };
    if let Some(op) = json.get_mut("Operation").and_then(|o| o.as_object_mut()) {
        op.insert("Status".into(), status.into());
        if status == "FAIL" {
            op.insert("ErrorCode".into(), "INSTANCE_LIMIT_EXCEEDED".into());
            op.insert("ErrorMessage".into(), "injected by the test proxy".into());
        }
    }
    Bytes::from(json.to_string())
}

/// The body with every service ARN (`arn:aws:servicediscovery:REGION:ACCOUNT:service/srv-…`)
/// and namespace ARN (`…:namespace/ns-…`) replaced by the id it ends in, or `None`
/// when it has none.
fn service_arns_to_ids(body: &[u8]) -> Option<Bytes> {
    const PREFIX: &str = "arn:aws:servicediscovery:";
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains(PREFIX) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at]);
        let arn = &rest[at..];
        let end = arn.find('"').unwrap_or(arn.len());
        match arn[..end]
            .rsplit_once(":service/")
            .or_else(|| arn[..end].rsplit_once(":namespace/"))
        {
            Some((_, id)) => out.push_str(id),
            None => out.push_str(&arn[..end]),
        }
        rest = &arn[end..];
    }
    out.push_str(rest);
    Some(Bytes::from(out))
}
