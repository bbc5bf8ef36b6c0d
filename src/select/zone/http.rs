//! A minimal HTTP/1.1 client for the metadata endpoints (ECS task metadata, EC2
//! instance metadata): one request per connection (`Connection: close`), the body
//! read to the end, over a plain tokio `TcpStream`. Enough for link-local metadata
//! services; not a general client (no TLS, no chunked bodies, no redirects), so the
//! crate needs no HTTP client dependency for it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind};

/// The most a metadata answer may be: they are a few kilobytes.
const MAX_RESPONSE: u64 = 1 << 20;

/// An `http://host:port/path` URL, split.
#[derive(Debug, PartialEq)]
pub(crate) struct Url {
    pub(crate) authority: String,
    pub(crate) path: String,
}

impl Url {
    /// Parses `http://authority[/path]`; `https` and anything else is refused.
    pub(crate) fn parse(url: &str) -> Result<Url, Error> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidInput,
                format!("not an http:// URL: {url:?}"),
            )
        };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains(char::is_whitespace) {
            return Err(bad());
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            path: path.to_owned(),
        })
    }

    /// This URL with `path` appended (one slash between).
    pub(crate) fn join(&self, path: &str) -> Url {
        Url {
            authority: self.authority.clone(),
            path: format!(
                "{}/{}",
                self.path.trim_end_matches('/'),
                path.trim_start_matches('/')
            ),
        }
    }
}

/// A response: the status code and the body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// Sends `method` to `url` with `headers` and an empty body, and reads the whole
/// response, all within `timeout`.
pub(crate) async fn request(
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, Error> {
    let what = format!("{method} http://{}{}", url.authority, url.path);
    match tokio::time::timeout(timeout, exchange(method, url, headers)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(Error::with_source(
            ErrorKind::Unavailable,
            format!("{what} failed"),
            e,
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("{what} timed out after {timeout:?}"),
        )),
    }
}

async fn exchange(
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
) -> Result<Response, std::io::Error> {
    let mut conn = TcpStream::connect(url.authority.as_str()).await?;
    let host = url.authority.strip_suffix(":80").unwrap_or(&url.authority);
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
        url.path
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    conn.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    conn.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
    })
}

/// The status and body of a whole `Connection: close` response; `None` if the
/// status line is malformed.
fn parse_response(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some(Response {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_port_and_join() {
        let u = Url::parse("http://169.254.169.254").unwrap();
        assert_eq!(u.authority, "169.254.169.254:80");
        assert_eq!(u.join("/latest/api/token").path, "/latest/api/token");
        let u = Url::parse("http://169.254.170.2:8080/v4/abc").unwrap();
        assert_eq!(u.join("task").path, "/v4/abc/task");
        assert!(Url::parse("https://x").is_err());
        assert!(Url::parse("http://").is_err());
    }

    #[test]
    fn responses_parse_status_and_body() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nus-east-1a").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "us-east-1a"));
        assert!(parse_response(b"garbage").is_none());
        assert!(parse_response(b"SMTP 200\r\n\r\n").is_none());
    }
}
