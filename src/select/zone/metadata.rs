//! The caller's zone from the environment: ECS task metadata (v4), else EC2
//! instance metadata (IMDSv2: a session token, then the placement), each request
//! bounded by a timeout. Both are link-local HTTP services, spoken to with the
//! minimal client in `http.rs`.

use std::time::Duration;

use super::http::{request, Url};
use crate::error::{Error, ErrorKind};

/// The ECS agent's variable: the container's metadata base URL.
const ECS_VAR: &str = "ECS_CONTAINER_METADATA_URI_V4";
/// The AWS SDKs' override of the instance metadata base URL.
const IMDS_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const IMDS_DEFAULT: &str = "http://169.254.169.254";
/// The AWS SDKs' switch to never call instance metadata (`true`, any case).
const IMDS_DISABLED_VAR: &str = "AWS_EC2_METADATA_DISABLED";
/// The AWS SDKs' choice of the default endpoint's family (`IPv4`, `IPv6`).
const IMDS_MODE_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
const IMDS_DEFAULT_IPV6: &str = "http://[fd00:ec2::254]";

/// The zone from ECS task metadata if the task has it, else from EC2 instance
/// metadata.
pub(super) async fn zone_from_environment(timeout: Duration) -> Result<String, Error> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let ecs = var(ECS_VAR);
    zone_from(ecs.as_deref(), imds_base(var).as_deref(), timeout).await
}

/// The instance metadata base URL as the AWS SDKs choose it from these variables:
/// `None` when `AWS_EC2_METADATA_DISABLED` is `true` (the SDKs then never call it,
/// and a machine off EC2 that says so must not wait on it either), else the
/// endpoint variable, else the default of the endpoint mode (IPv4 unless `IPv6`).
fn imds_base(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    if var(IMDS_DISABLED_VAR).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    if let Some(url) = var(IMDS_VAR) {
        return Some(url);
    }
    let ipv6 = var(IMDS_MODE_VAR).is_some_and(|v| v.trim().eq_ignore_ascii_case("ipv6"));
    Some(
        if ipv6 {
            IMDS_DEFAULT_IPV6
        } else {
            IMDS_DEFAULT
        }
        .to_owned(),
    )
}

/// As [`zone_from_environment`], with the base URLs given (`imds` `None`: instance
/// metadata disabled, not asked).
pub(super) async fn zone_from(
    ecs: Option<&str>,
    imds: Option<&str>,
    timeout: Duration,
) -> Result<String, Error> {
    let ecs_err = match ecs {
        Some(base) => match from_ecs(base, timeout).await {
            Ok(zone) => return Ok(zone),
            Err(e) => Some(e),
        },
        None => None,
    };
    let ecs_said = |ecs_err: Option<Error>| match ecs_err {
        Some(ecs) => format!("ECS task metadata: {ecs}"),
        None => format!("{ECS_VAR} is not set"),
    };
    let Some(imds) = imds else {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "no availability zone found ({}; EC2 instance metadata: not asked, \
                 {IMDS_DISABLED_VAR} is true)",
                ecs_said(ecs_err)
            ),
        ));
    };
    from_imds(imds, timeout).await.map_err(|e| {
        let ecs = ecs_said(ecs_err);
        Error::with_source(
            ErrorKind::Unavailable,
            format!("no availability zone found ({ecs}; EC2 instance metadata: {e})"),
            e,
        )
    })
}

async fn from_ecs(base: &str, timeout: Duration) -> Result<String, Error> {
    let url = Url::parse(base)?.join("task");
    let resp = request("GET", &url, &[], timeout).await?;
    ok(resp.status)?;
    let json: serde_json::Value = serde_json::from_str(&resp.body)
        .map_err(|e| Error::with_source(ErrorKind::Unavailable, "task metadata is not JSON", e))?;
    json.get("AvailabilityZone")
        .and_then(|z| z.as_str())
        .filter(|z| !z.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "task metadata has no AvailabilityZone",
            )
        })
}

async fn from_imds(base: &str, timeout: Duration) -> Result<String, Error> {
    let base = Url::parse(base)?;
    let token = request(
        "PUT",
        &base.join("/latest/api/token"),
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        timeout,
    )
    .await?;
    ok(token.status)?;
    let token = token.body.trim();
    let zone = request(
        "GET",
        &base.join("/latest/meta-data/placement/availability-zone"),
        &[("X-aws-ec2-metadata-token", token)],
        timeout,
    )
    .await?;
    ok(zone.status)?;
    let zone = zone.body.trim();
    if zone.is_empty() || zone.contains(char::is_whitespace) {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!("instance metadata gave no zone: {zone:?}"),
        ));
    }
    Ok(zone.to_owned())
}

fn ok(status: u16) -> Result<(), Error> {
    if status == 200 {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Unavailable,
            format!("HTTP status {status}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback server answering each connection with `answer(request head)`;
    /// `None` keeps the connection open without answering (a slow service).
    async fn fake(answer: fn(&str) -> Option<String>) -> String {
        fake_framed(answer, false).await
    }

    /// As [`fake`]; with `chunked` the body goes `Transfer-Encoding: chunked` in
    /// chunks of at most 1,000 bytes, as Go's net/http (the ECS agent) sends an
    /// answer of more than 2,048 bytes written without a Content-Length.
    async fn fake_framed(answer: fn(&str) -> Option<String>, chunked: bool) -> String {
        fake_at("127.0.0.1:0", answer, chunked).await
    }

    /// As [`fake_framed`], listening on `bind` (`[::1]:0` for instance metadata over
    /// IPv6).
    async fn fake_at(bind: &str, answer: fn(&str) -> Option<String>, chunked: bool) -> String {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..16 {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    match answer(&head) {
                        Some(body) => {
                            let status = if body == "404" {
                                "404 Not Found"
                            } else {
                                "200 OK"
                            };
                            let resp = if chunked {
                                let mut resp = format!(
                                    "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                );
                                for chunk in body.as_bytes().chunks(1000) {
                                    resp.push_str(&format!("{:x}\r\n", chunk.len()));
                                    resp.push_str(std::str::from_utf8(chunk).unwrap());
                                    resp.push_str("\r\n");
                                }
                                resp + "0\r\n\r\n"
                            } else {
                                format!(
                                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    body.len()
                                )
                            };
                            let _ = conn.write_all(resp.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(3600)).await,
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    /// A loopback URL refusing connections, with the socket that keeps its port
    /// bound (so no other test's listener takes it) while the test holds it.
    fn nothing() -> (String, tokio::net::TcpSocket) {
        let (addr, held) = test_support::net::closed_port();
        (format!("http://{addr}"), held)
    }

    fn ecs(head: &str) -> Option<String> {
        assert!(head.starts_with("GET /v4/abc/task HTTP/1.1"), "{head}");
        Some(r#"{"Cluster":"c","AvailabilityZone":"us-east-1b","TaskARN":"t"}"#.into())
    }

    fn imds(head: &str) -> Option<String> {
        if head.starts_with("PUT /latest/api/token HTTP/1.1") {
            assert!(
                head.contains("X-aws-ec2-metadata-token-ttl-seconds: 60"),
                "{head}"
            );
            return Some("tok-123".into());
        }
        if head.starts_with("GET /latest/meta-data/placement/availability-zone HTTP/1.1") {
            // IMDSv2: the token must come with the request.
            if !head.contains("X-aws-ec2-metadata-token: tok-123") {
                return Some("404".into());
            }
            return Some("us-east-1c".into());
        }
        Some("404".into())
    }

    /// The per-request timeout where an answer is expected: generous, so a loaded
    /// machine does not fail a test that should pass (a refused connection fails at
    /// once whatever the timeout).
    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn ecs_task_metadata_gives_the_zone() {
        let base = format!("{}/v4/abc", fake(ecs).await);
        let (dead, _held) = nothing();
        let zone = zone_from(Some(&base), Some(&dead), T).await.unwrap();
        assert_eq!(zone, "us-east-1b");
    }

    #[tokio::test]
    async fn imds_v2_gives_the_zone_when_ecs_is_absent() {
        let zone = zone_from(None, Some(&fake(imds).await), T).await.unwrap();
        assert_eq!(zone, "us-east-1c");
    }

    #[tokio::test]
    async fn ecs_failing_falls_back_to_imds() {
        let (dead, _held) = nothing();
        let zone = zone_from(Some(&dead), Some(&fake(imds).await), T)
            .await
            .unwrap();
        assert_eq!(zone, "us-east-1c");
    }

    /// Instance metadata over IPv6 (`http://[fd00:ec2::254]` in IPv6 mode, here a
    /// server on `[::1]`): the bracketed authority is connected to, and sent as the
    /// `Host` header with its brackets.
    #[tokio::test]
    async fn imds_over_ipv6_gives_the_zone() {
        fn bracketed(head: &str) -> Option<String> {
            if !head.contains("\r\nHost: [::1]:") {
                return Some("404".into());
            }
            imds(head)
        }
        let base = fake_at("[::1]:0", bracketed, false).await;
        assert!(base.starts_with("http://[::1]:"), "{base}");
        let zone = zone_from(None, Some(&base), T).await.unwrap();
        assert_eq!(zone, "us-east-1c");
    }

    /// The AWS SDKs' switches for instance metadata, read as they read them: a
    /// machine that disables it is not made to wait on it (off EC2, the default
    /// address only times out), and IPv6 mode moves the default endpoint.
    #[tokio::test]
    async fn imds_disabled_or_ipv6_is_honoured() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(imds_base(env(&[])).as_deref(), Some(IMDS_DEFAULT));
        let disabled: &[_] = &[(IMDS_DISABLED_VAR, "TRUE"), (IMDS_VAR, "http://10.0.0.1")];
        assert_eq!(imds_base(env(disabled)), None);
        assert_eq!(
            imds_base(env(&[(IMDS_DISABLED_VAR, "false")])).as_deref(),
            Some(IMDS_DEFAULT)
        );
        assert_eq!(
            imds_base(env(&[(IMDS_MODE_VAR, "IPv6")])).as_deref(),
            Some("http://[fd00:ec2::254]")
        );
        let both: &[_] = &[(IMDS_MODE_VAR, "IPv6"), (IMDS_VAR, "http://127.0.0.1:9")];
        assert_eq!(imds_base(env(both)).as_deref(), Some("http://127.0.0.1:9"));
        // Disabled: a typed error at once, naming the switch; ECS is still asked.
        let err = zone_from(None, None, T).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains(IMDS_DISABLED_VAR), "{err}");
        let base = format!("{}/v4/abc", fake(ecs).await);
        assert_eq!(zone_from(Some(&base), None, T).await.unwrap(), "us-east-1b");
    }

    #[tokio::test]
    async fn neither_is_a_typed_error_naming_both() {
        let (dead, _held) = nothing();
        let err = zone_from(None, Some(&dead), T).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let text = err.to_string();
        assert!(
            text.contains(ECS_VAR) && text.contains("EC2 instance metadata"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_service_times_out() {
        let base = fake(|_| None).await;
        let err = zone_from(None, Some(&base), T).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[tokio::test]
    async fn an_answer_without_a_zone_is_an_error() {
        let base = fake(|_| Some(r#"{"Cluster":"c"}"#.into())).await;
        let (dead, _held) = nothing();
        let err = zone_from(Some(&base), Some(&dead), T).await.unwrap_err();
        assert!(err.to_string().contains("no AvailabilityZone"), "{err}");
    }

    /// ECS task metadata of more than 2,048 bytes comes chunked from the ECS agent
    /// (Go's net/http, no Content-Length); on Fargate, with no IMDS behind it, a
    /// failure to read it leaves no zone at all.
    #[tokio::test]
    async fn chunked_ecs_task_metadata_gives_the_zone() {
        fn big_task(head: &str) -> Option<String> {
            assert!(head.starts_with("GET /v4/abc/task HTTP/1.1"), "{head}");
            let containers: Vec<String> = (0..40)
                .map(|i| format!(r#"{{"DockerId":"c-{i}","Name":"container-{i}","Image":"img"}}"#))
                .collect();
            Some(format!(
                r#"{{"Cluster":"c","Containers":[{}],"AvailabilityZone":"us-east-1b","TaskARN":"t"}}"#,
                containers.join(",")
            ))
        }
        assert!(big_task("GET /v4/abc/task HTTP/1.1").unwrap().len() > 2048);
        let base = format!("{}/v4/abc", fake_framed(big_task, true).await);
        let (dead, _held) = nothing();
        let zone = zone_from(Some(&base), Some(&dead), T).await;
        assert_eq!(zone.as_deref().map_err(Error::kind), Ok("us-east-1b"));
    }
}
