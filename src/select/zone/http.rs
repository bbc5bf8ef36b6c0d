//! A minimal HTTP/1.1 client for the metadata endpoints (ECS task metadata, EC2
//! instance metadata): one request per connection (`Connection: close`), the body
//! read to the end, over a plain tokio `TcpStream`. Enough for link-local metadata
//! services; not a general client (no TLS, no redirects, no content codings), so the
//! crate needs no HTTP client dependency for it.
//!
//! Chunked bodies are decoded: the ECS agent (Go's net/http) writes `/task` without a
//! Content-Length, so an answer over its 2,048-byte buffer comes
//! `Transfer-Encoding: chunked` to an HTTP/1.1 request even with `Connection: close`.
//! (HTTP/1.0 would avoid chunking, but IMDSv2's token `PUT` is only documented for
//! HTTP/1.1 clients; decoding keeps one request form for both services.)

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
/// status line is malformed, or the body is chunked and its chunks are malformed or
/// cut short (by the peer or by [`MAX_RESPONSE`]).
fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = find(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    // Chunked framing applies when `chunked` is the last transfer coding (RFC 9112
    // 6.1); any other body is the bytes up to the close.
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        })
    });
    let body = if chunked {
        String::from_utf8_lossy(&decode_chunked(body)?).into_owned()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    Some(Response { status, body })
}

/// The payload of a chunked body (RFC 9112 7.1): `size-in-hex[;ext]\r\n data\r\n`
/// repeated, ended by a chunk of size 0 (trailers after it are ignored). `None` for
/// anything malformed or cut short. The output is never longer than the input, so
/// the read limit bounds it; each round consumes at least three bytes, so the loop
/// ends.
fn decode_chunked(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(rest.len());
    loop {
        let end = find(rest, b"\r\n")?;
        let size = std::str::from_utf8(&rest[..end]).ok()?;
        let size = size.split(';').next()?.trim();
        // from_str_radix would take a sign; a size is hex digits only, and 16 of
        // them at most (so the parse cannot overflow a 64-bit usize).
        if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let size = usize::from_str_radix(size, 16).ok()?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Some(out);
        }
        let data = rest.get(..size)?;
        out.extend_from_slice(data);
        rest = rest[size..].strip_prefix(b"\r\n")?;
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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

    #[test]
    fn chunked_bodies_are_decoded() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nus-e\r\nA;x=1\r\nast-1a\r\n\r\n\r\n0\r\nT: v\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "us-east-1a\r\n\r\n"));
        let r = parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding:  CHUNKED\r\n\r\n0\r\n\r\n");
        assert_eq!(r.unwrap().body, "");
        // Not chunked: the bytes as they came, chunk-like or not.
        let r = parse_response(b"HTTP/1.1 200 OK\r\nX-Transfer-Encoding: chunked\r\n\r\n2\r\nab");
        assert_eq!(r.unwrap().body, "2\r\nab");
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for body in [
            &b""[..],                              // no size line
            b"4\r\nus-e",                          // no CRLF after the data
            b"4\r\nus-east\r\n0\r\n\r\n",          // more data than the size
            b"10\r\nshort\r\n0\r\n\r\n",           // less data than the size
            b"4\r\nus-e\r\n",                      // no last chunk (cut short)
            b"zz\r\nus-e\r\n0\r\n\r\n",            // size not hex
            b"+4\r\nus-e\r\n0\r\n\r\n",            // signed size
            b"\r\n0\r\n\r\n",                      // empty size
            b"fffffffffffffffff\r\nx\r\n",         // 17 digits: would overflow
            b"ffffffffffffffff\r\nx\r\n0\r\n\r\n", // larger than what came
            b"\xff\xfe\r\n",                       // size not text
        ] {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend_from_slice(body);
            assert!(
                parse_response(&raw).is_none(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
