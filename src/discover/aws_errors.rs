//! AWS errors read as the crate's [`ErrorKind`]s: what a retry can fix (throttling,
//! outages) told apart from answers (not found, invalid input) and from refusals no
//! retry can fix (credentials, permissions, quotas). Used by the readers
//! (`cloud_map.rs`) and the writer (`register/`).

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use aws_sdk_servicediscovery as sd;
use sd::config::http::HttpResponse;
use sd::error::{ProvideErrorMetadata, SdkError};
use sd::primitives::{DateTime, DateTimeFormat};

use super::instance::ShownMessage;
use crate::error::{Error, ErrorKind};

/// The innermost cause's text: the SDK's own `Display` at the top says only
/// "dispatch failure" or "service error".
fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    ShownMessage(&cur.to_string()).to_string()
}

/// The kind of a registry error code. Codes that say the caller itself is refused
/// (credentials, signature, permissions) are `Configuration` and quotas
/// `QuotaExceeded`: no retry can fix either, so they are reported at once rather
/// than retried into a "gave up" that reads like an outage. A code not named here
/// stays `Unavailable` (retryable): the message names it.
fn kind_of_code(code: &str) -> ErrorKind {
    match code {
        "NamespaceNotFound" => ErrorKind::NamespaceNotFound,
        "ServiceNotFound" => ErrorKind::ServiceNotFound,
        "InvalidInput" => ErrorKind::InvalidInput,
        // The write operations' answers (self-registration, `register/`).
        "InstanceNotFound" => ErrorKind::InstanceNotFound,
        "CustomHealthNotFound" => ErrorKind::CustomHealthNotFound,
        // The AWS SDK's own list of throttling codes (`aws_runtime`'s
        // `THROTTLING_ERRORS`), but `LimitExceededException`, a quota below, and
        // DynamoDB's `TransactionInProgressException`: read as an outage, a throttle
        // would not slow the process's other calls on the spent quota.
        "RequestLimitExceeded"
        | "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "ThrottledException"
        | "RequestThrottledException"
        | "RequestThrottled"
        | "SlowDown"
        | "BandwidthLimitExceeded"
        | "PriorRequestNotComplete"
        | "ProvisionedThroughputExceededException"
        | "EC2ThrottledException" => ErrorKind::Throttled,
        "ResourceLimitExceeded" | "ServiceQuotaExceededException" | "LimitExceededException" => {
            ErrorKind::QuotaExceeded
        }
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "IncompleteSignatureException"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException"
        | "SignatureDoesNotMatch"
        | "InvalidAccessKeyId"
        | "AuthFailure"
        | "NotAuthorized"
        | "OptInRequired"
        | "RequestExpired" => ErrorKind::Configuration,
        _ => ErrorKind::Unavailable,
    }
}

/// The codes a caller whose clock is off is refused with: the SDK's list
/// (`aws_runtime`'s `CLOCK_SKEW_ERROR_CODES`) and `RequestExpired`.
const CLOCK_SKEW_CODES: [&str; 6] = [
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "RequestTimeTooSkewed",
    "AccessDeniedException",
    "RequestExpired",
];

/// Whether a refusal is about the request's time: `RequestTimeTooSkewed` and
/// `RequestExpired` always; the others (which also refuse a wrong secret or a
/// missing permission) when their message says the signature expired or is not yet
/// current, as Cloud Map's does ("Signature expired: 20260101T000000Z is now earlier
/// than ..."). The clock stays off once the SDK signs with the registry's time, so
/// the skew alone would turn a lasting refusal into an endless outage.
fn refused_for_time(code: &str, message: Option<&str>) -> bool {
    match code {
        "RequestTimeTooSkewed" | "RequestExpired" => true,
        _ if CLOCK_SKEW_CODES.contains(&code) => message.is_some_and(|m| {
            let m = m.to_ascii_lowercase();
            m.contains("signature expired") || m.contains("not yet current")
        }),
        _ => false,
    }
}

/// How far the registry's clock must be from ours for the SDK to take a refusal as
/// the clock's fault (`aws_runtime`'s `SKEW_DETECTION_THRESHOLD`).
const SKEW_THRESHOLD: Duration = Duration::from_secs(4 * 60);

/// How far, in seconds, the registry's clock (the answer's `Date`) is ahead of this
/// machine's (negative: behind), when that is more than [`SKEW_THRESHOLD`]. The SDK
/// measures the same skew from every answer and signs the client's next call with
/// the registry's time, so a refusal for the clock is not the caller's
/// configuration: the next call is accepted. (With the SDK's own retries turned off,
/// `client_config`, the crate's retry is that next call.) An answer from a cache
/// (`Age`) says nothing of the clock, and the SDK ignores it too.
fn clock_skew(raw: &HttpResponse) -> Option<i64> {
    if raw.headers().get("age").is_some() {
        return None;
    }
    let date = DateTime::from_str(raw.headers().get("date")?, DateTimeFormat::HttpDate).ok()?;
    let registry = SystemTime::try_from(date).ok()?;
    let now = SystemTime::now();
    let (skew, ahead) = match registry.duration_since(now) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let secs = i64::try_from(skew.as_secs()).unwrap_or(i64::MAX);
    (skew > SKEW_THRESHOLD).then_some(if ahead { secs } else { -secs })
}

/// Maps an SDK error to a kind, keeping it as the source. `endpoint` is the URL
/// called, named in connection failures; `op` names the operation (and, for the
/// discovery calls, the namespace's owner when the request has one).
pub(crate) fn map_error<E>(op: &str, endpoint: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let (kind, detail) = match &err {
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            let skew = e
                .code()
                .filter(|code| refused_for_time(code, e.message()))
                .and_then(|_| clock_skew(ctx.raw()));
            let kind = match skew {
                // Refused for the clock: the next call is signed with the
                // registry's time, so it is retried as an outage is.
                Some(_) => ErrorKind::Unavailable,
                None => e.code().map_or(ErrorKind::Unavailable, kind_of_code),
            };
            // The registry's words, shown on one line and cut (`ShownMessage`): a
            // 100 KB message with newlines was copied whole into the error's text,
            // and so into every log line and CLI error that prints it.
            let message = e
                .message()
                .map_or("no message".to_owned(), |m| ShownMessage(m).to_string());
            let code = e.code().map(|c| ShownMessage(c).to_string());
            let detail = match (code, skew) {
                (Some(code), Some(skew)) => format!(
                    "{code}: {message} (this machine's clock is {} s {} the registry's: the \
                     next call is signed with the registry's time)",
                    skew.unsigned_abs(),
                    if skew > 0 { "behind" } else { "ahead of" }
                ),
                (Some(code), None) => format!("{code}: {message}"),
                // A bare 5xx from a proxy or load balancer: the status is all there is.
                (None, _) => format!(
                    "HTTP {} without an error code: {message}",
                    ctx.raw().status().as_u16(),
                ),
            };
            (kind, detail)
        }
        SdkError::ConstructionFailure(_) => (
            ErrorKind::Configuration,
            format!("the request could not be built: {}", root_cause(&err)),
        ),
        SdkError::TimeoutError(_) => (
            ErrorKind::Unavailable,
            format!("timed out calling {endpoint}"),
        ),
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => (
            ErrorKind::Unavailable,
            format!("could not connect to {endpoint}: {}", root_cause(&err)),
        ),
        // A failure the HTTP client gave a retry verdict (a transient error: a
        // connection closed before the answer, as a reused keep-alive connection
        // can be): the request may have left, so an outage, worth retrying.
        SdkError::DispatchFailure(d) if d.as_other().is_some() => (
            ErrorKind::Unavailable,
            format!("connection to {endpoint} failed: {}", root_cause(&err)),
        ),
        // The SDK reports failures before sending (loading credentials, signing,
        // resolving the endpoint) as dispatch failures of kind "other" with no
        // retry verdict: those are configuration problems, not an unreachable
        // registry.
        SdkError::DispatchFailure(_) => (
            ErrorKind::Configuration,
            format!(
                "could not prepare the request to {endpoint} (credentials, signing region \
                 or endpoint): {}",
                root_cause(&err)
            ),
        ),
        // An answer that is not the registry's (a proxy's or gateway's bare
        // status): named by its status; a 429 says "too many".
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let kind = if status == 429 {
                ErrorKind::Throttled
            } else {
                ErrorKind::Unavailable
            };
            let detail = format!(
                "bad response from {endpoint} (HTTP {status}): {}",
                root_cause(&err)
            );
            (kind, detail)
        }
        _ => (
            ErrorKind::Unavailable,
            format!("bad response from {endpoint}: {}", root_cause(&err)),
        ),
    };
    // A service error's wrapper says only "service error"; the error it wraps is the
    // registry's answer, already quoted in the message, so it is the source.
    let source: Box<dyn StdError + Send + Sync> = match err {
        SdkError::ServiceError(ctx) => Box::new(ctx.into_err()),
        other => Box::new(other),
    };
    Error::with_source(kind, format!("{op}: {detail}"), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_the_caller_are_configuration_and_quotas_their_own_kind() {
        for code in [
            "AccessDeniedException",
            "UnrecognizedClientException",
            "InvalidClientTokenId",
            "ExpiredTokenException",
            "ExpiredToken",
            "InvalidSignatureException",
            "MissingAuthenticationToken",
            "SignatureDoesNotMatch",
        ] {
            let kind = kind_of_code(code);
            assert_eq!(kind, ErrorKind::Configuration, "{code}");
            assert!(!Error::new(kind, code).is_retryable(), "{code}");
        }
        let quota = Error::new(kind_of_code("ResourceLimitExceeded"), "x");
        assert_eq!(quota.kind(), ErrorKind::QuotaExceeded);
        assert!(!quota.is_retryable());
        assert_eq!(kind_of_code("RequestLimitExceeded"), ErrorKind::Throttled);
        // Every throttling code the AWS SDK's retry classifier knows (but the two
        // named in `kind_of_code`) is throttling here too; 8 of them were outages.
        for code in [
            "Throttling",
            "ThrottlingException",
            "ThrottledException",
            "RequestThrottledException",
            "TooManyRequestsException",
            "ProvisionedThroughputExceededException",
            "RequestLimitExceeded",
            "BandwidthLimitExceeded",
            "RequestThrottled",
            "SlowDown",
            "PriorRequestNotComplete",
            "EC2ThrottledException",
        ] {
            assert_eq!(kind_of_code(code), ErrorKind::Throttled, "{code}");
        }
        assert_eq!(kind_of_code("SomethingNew"), ErrorKind::Unavailable);
    }

    /// Only refusals about the request's time are read as the clock's: not a
    /// permission or a wrong secret, which a clock still off would otherwise keep
    /// reading as an outage once the SDK signs with the registry's time.
    #[test]
    fn refusals_for_time_are_told_apart() {
        let expired = Some(
            "Signature expired: 20260101T000000Z is now earlier than 20260101T000500Z \
             (20260101T001000Z - 5 min.)",
        );
        assert!(refused_for_time("InvalidSignatureException", expired));
        assert!(refused_for_time(
            "InvalidSignatureException",
            Some("Signature not yet current: 20260101T001000Z is still later than ...")
        ));
        assert!(refused_for_time("RequestExpired", None));
        assert!(refused_for_time("RequestTimeTooSkewed", Some("too large")));
        assert!(!refused_for_time(
            "InvalidSignatureException",
            Some("The request signature we calculated does not match the signature you provided.")
        ));
        assert!(!refused_for_time(
            "AccessDeniedException",
            Some("User: x is not authorized to perform: servicediscovery:RegisterInstance")
        ));
        assert!(!refused_for_time("ExpiredTokenException", expired));
        assert!(!refused_for_time("SignatureDoesNotMatch", None));
    }
}
