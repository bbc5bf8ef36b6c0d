//! Redirects followed by [`FailoverClient`](crate::FailoverClient) itself, not by its
//! reqwest client.
//!
//! A request for a service is sent to an endpoint's address with the service's name
//! in an explicit `Host` header. reqwest's own redirect handling (tower-http's
//! `FollowRedirect`) copies every header of the first request onto the next one, the
//! explicit `Host` included, so a `302` to another host reached it with the service's
//! name. Here each hop is a new request made from the one before (its URL as the
//! caller wrote it, with the service's name, not the endpoint's address) and sent
//! through [`FailoverClient::execute`](crate::FailoverClient::execute) again: a
//! location naming a service is resolved again (a new pick, the service's name in
//! `Host`), any other is sent as a plain URL, with no `Host` header of ours.
//!
//! The rules are reqwest's: `301`/`302` turn a `POST` into a `GET` without a body,
//! `303` turns anything but `HEAD` into a `GET` without a body, `307`/`308` repeat
//! the method and body (not followed when the body cannot be cloned: the `3xx` is the
//! answer); a hop to another origin (scheme, host or port) drops `Authorization`,
//! `Cookie`, `Cookie2`, `Proxy-Authorization`, `WWW-Authenticate`, and a `Host`
//! header, which named the previous host.

use reqwest::header::{
    HeaderMap, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST,
    LOCATION, PROXY_AUTHORIZATION, TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use reqwest::{Body, Method, Request, Response, StatusCode, Url, Version};

/// How many redirects a request follows by default: reqwest's default.
pub(crate) const DEFAULT_REDIRECTS: usize = 10;

/// What is needed to make the next request of a redirect, taken before a request is
/// sent (sending consumes it).
#[derive(Debug)]
pub(crate) struct Hop {
    method: Method,
    url: Url,
    headers: HeaderMap,
    version: Version,
    timeout: Option<std::time::Duration>,
    /// The body again: `Some(None)` without a body, `None` when it cannot be cloned.
    body: Option<Option<Body>>,
}

impl Hop {
    /// The parts of `req` a redirect may repeat.
    pub(crate) fn of(req: &Request) -> Hop {
        let body = match req.body() {
            None => Some(None),
            Some(_) => req.try_clone().map(|mut r| r.body_mut().take()),
        };
        Hop {
            method: req.method().clone(),
            url: req.url().clone(),
            headers: req.headers().clone(),
            version: req.version(),
            timeout: req.timeout().copied(),
            body,
        }
    }

    /// The request to send after `resp` answered this one, or `None` when `resp` is
    /// not a redirect to follow (not a redirect status, no usable `Location`, a
    /// scheme other than `http`/`https`, or a body to repeat that cannot be cloned).
    pub(crate) fn next(self, resp: &Response) -> Option<Request> {
        let Hop {
            mut method,
            url,
            mut headers,
            version,
            timeout,
            mut body,
        } = self;
        let drop_body = match resp.status() {
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND => method == Method::POST,
            StatusCode::SEE_OTHER => true,
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => false,
            _ => return None,
        };
        if drop_body {
            if method != Method::HEAD {
                method = Method::GET;
            }
            body = Some(None);
            for h in [
                CONTENT_TYPE,
                CONTENT_LENGTH,
                CONTENT_ENCODING,
                TRANSFER_ENCODING,
            ] {
                headers.remove(h);
            }
        }
        let body = body?;
        let location = resp.headers().get(LOCATION)?.to_str().ok()?;
        // Relative to the URL as the caller wrote it: `/next` from a service stays
        // with the service, not with the endpoint's address.
        let next = url.join(location).ok()?;
        if !matches!(next.scheme(), "http" | "https") {
            return None;
        }
        if !same_origin(&url, &next) {
            for h in [
                AUTHORIZATION,
                COOKIE,
                PROXY_AUTHORIZATION,
                WWW_AUTHENTICATE,
                HOST,
            ] {
                headers.remove(h);
            }
            headers.remove("cookie2");
        }
        let mut req = Request::new(method, next);
        *req.headers_mut() = headers;
        *req.version_mut() = version;
        *req.timeout_mut() = timeout;
        *req.body_mut() = body;
        Some(req)
    }
}

/// Whether two URLs have the same scheme, host and port (reqwest's test for keeping
/// credentials on a redirect).
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn redirect(status: u16, location: &str) -> Response {
        let resp = http::Response::builder()
            .status(status)
            .header(LOCATION, location)
            .body(Vec::<u8>::new())
            .unwrap();
        Response::from(resp)
    }

    fn request(method: Method, url: &str) -> Request {
        let mut req = Request::new(method, Url::parse(url).unwrap());
        let h = req.headers_mut();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(HOST, HeaderValue::from_static("web.shared"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        *req.body_mut() = Some(Body::from("payload"));
        req
    }

    #[test]
    fn another_origin_loses_host_and_credentials() {
        let req = request(Method::GET, "http://web.shared/a");
        let next = Hop::of(&req)
            .next(&redirect(302, "http://other.example:8080/b"))
            .unwrap();
        assert_eq!(next.url().as_str(), "http://other.example:8080/b");
        assert!(next.headers().get(HOST).is_none());
        assert!(next.headers().get(AUTHORIZATION).is_none());
        assert_eq!(next.method(), Method::GET);
    }

    #[test]
    fn a_relative_location_stays_with_the_service() {
        let req = request(Method::PUT, "http://web.shared/a");
        let next = Hop::of(&req).next(&redirect(307, "/b?x=1")).unwrap();
        assert_eq!(next.url().as_str(), "http://web.shared/b?x=1");
        assert_eq!(next.headers()[AUTHORIZATION], "Bearer t");
        assert_eq!(next.method(), Method::PUT);
        let body = next.body().and_then(Body::as_bytes);
        assert_eq!(body, Some(&b"payload"[..]));
    }

    #[test]
    fn post_becomes_get_without_a_body() {
        for status in [301, 302, 303] {
            let req = request(Method::POST, "http://web.shared/a");
            let next = Hop::of(&req).next(&redirect(status, "/b")).unwrap();
            assert_eq!(next.method(), Method::GET, "{status}");
            assert!(next.body().is_none(), "{status}");
            assert!(next.headers().get(CONTENT_TYPE).is_none(), "{status}");
        }
        let req = request(Method::POST, "http://web.shared/a");
        let next = Hop::of(&req).next(&redirect(308, "/b")).unwrap();
        assert_eq!(next.method(), Method::POST);
    }

    #[test]
    fn not_followed() {
        let req = request(Method::GET, "http://web.shared/a");
        assert!(Hop::of(&req).next(&redirect(200, "/b")).is_none());
        let req = request(Method::GET, "http://web.shared/a");
        assert!(Hop::of(&req).next(&redirect(302, "ftp://x/")).is_none());
        let resp = Response::from(http::Response::builder().status(302).body("").unwrap());
        assert!(Hop::of(&req).next(&resp).is_none(), "no Location");
        // A stream cannot be sent again: a 307 is the answer.
        let streamed = Hop {
            body: None,
            ..Hop::of(&request(Method::PUT, "http://web.shared/a"))
        };
        assert!(streamed.next(&redirect(307, "/b")).is_none());
    }
}
