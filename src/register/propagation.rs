//! Writes by instance id right after the registration. Cloud Map answers
//! `InstanceNotFound` ("No instance exists with the specified ID, or the instance was
//! recently registered, and information about the instance hasn't propagated yet")
//! to DeregisterInstance and UpdateInstanceCustomHealthStatus as it does to
//! GetInstance: taken at its word, a job that registers and drains at once would be
//! told its instance was already gone, and leave it registered once it propagates.
//! Such an answer within [`PROPAGATION`] of the registration is sent again, with
//! backoff; after that it means the instance is gone.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::operation::{Backoff, Deadline, MAX_SENDS};
use crate::error::{Error, ErrorKind};

/// How long after its registration succeeded an instance's `InstanceNotFound` may
/// mean "not propagated yet" rather than "gone". Cloud Map does not say how long
/// propagation takes; its operations finish in seconds. Past this, one answer is
/// enough, so a drain of an instance someone else deregistered waits at most this
/// long after the registration, not a backoff of its own.
pub(crate) const PROPAGATION: Duration = Duration::from_secs(5);

/// `send`'s answer, sent again while it is `InstanceNotFound` and the registration
/// made at `registered_at` is younger than [`PROPAGATION`], unless `settled()` says
/// the answer stands (the instance is gone because of this handle: an earlier drain,
/// or a deregistration whose answer was lost). Bounded by [`MAX_SENDS`] sends of
/// `send` and by the deadline, with jittered backoff between them; a backoff the
/// deadline would cut ends with the answer as it is.
pub(crate) async fn past_propagation<T, F, Fut>(
    what: &'static str,
    registered_at: Instant,
    deadline: &Deadline<'_>,
    seed: u64,
    settled: impl Fn() -> bool,
    mut send: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut backoff = Backoff::for_sends(seed);
    let mut sends = 0;
    loop {
        sends += 1;
        let err = match send().await {
            Err(e) if e.kind() == ErrorKind::InstanceNotFound => e,
            other => return other,
        };
        if sends >= MAX_SENDS || settled() || registered_at.elapsed() >= PROPAGATION {
            return Err(err);
        }
        tracing::debug!(
            what,
            sends,
            "InstanceNotFound right after the registration (not propagated yet?): \
             sending again"
        );
        if deadline.sleep(backoff.delay(), what, &err).await.is_err() {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found() -> Error {
        Error::new(ErrorKind::InstanceNotFound, "InstanceNotFound: no instance")
    }

    /// `past_propagation` over answers that are `InstanceNotFound` for the first
    /// `missing` sends (every one, if `None`), then `Ok`: the result and the sends.
    async fn run(
        registered_at: Instant,
        missing: Option<u32>,
        settled: bool,
    ) -> (Result<(), Error>, u32) {
        let deadline = Deadline::after(Duration::from_secs(60), "ns", "svc");
        let mut sends = 0;
        let got = past_propagation(
            "DeregisterInstance",
            registered_at,
            &deadline,
            1,
            || settled,
            || {
                sends += 1;
                let answer = match missing {
                    Some(n) if sends > n => Ok(()),
                    _ => Err(not_found()),
                };
                async move { answer }
            },
        )
        .await;
        (got, sends)
    }

    #[tokio::test(start_paused = true)]
    async fn a_young_registration_is_sent_again_until_found() {
        let (got, sends) = run(Instant::now(), Some(2), false).await;
        assert!(got.is_ok(), "{got:?}");
        assert_eq!(sends, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_stands_once_the_registration_is_old_enough() {
        let start = Instant::now();
        let (got, sends) = run(start, None, false).await;
        assert_eq!(got.unwrap_err().kind(), ErrorKind::InstanceNotFound);
        assert!((2..=MAX_SENDS).contains(&sends), "{sends}");
        // Sent again only while young: the last send at most one backoff (5 s)
        // after the window, never for longer.
        let took = start.elapsed();
        assert!(
            sends == MAX_SENDS || took >= PROPAGATION,
            "{sends} sends in {took:?}"
        );
        assert!(took < PROPAGATION + Duration::from_secs(5), "{took:?}");

        // Registered earlier than the window: one answer is enough.
        let (got, sends) = run(Instant::now() - PROPAGATION, None, false).await;
        assert_eq!(got.unwrap_err().kind(), ErrorKind::InstanceNotFound);
        assert_eq!(sends, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_answer_is_not_sent_again() {
        let (got, sends) = run(Instant::now(), None, true).await;
        assert_eq!(got.unwrap_err().kind(), ErrorKind::InstanceNotFound);
        assert_eq!(sends, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_sent_again() {
        let deadline = Deadline::after(Duration::from_secs(60), "ns", "svc");
        let mut sends = 0;
        let got: Result<(), Error> = past_propagation(
            "DeregisterInstance",
            Instant::now(),
            &deadline,
            1,
            || false,
            || {
                sends += 1;
                async { Err(Error::new(ErrorKind::Throttled, "Rate exceeded")) }
            },
        )
        .await;
        assert_eq!((got.unwrap_err().kind(), sends), (ErrorKind::Throttled, 1));
    }
}
