//! Writes by instance id right after the registration. Cloud Map answers
//! `InstanceNotFound` ("No instance exists with the specified ID, or the instance was
//! recently registered, and information about the instance hasn't propagated yet")
//! to DeregisterInstance and UpdateInstanceCustomHealthStatus as it does to
//! GetInstance: taken at its word, a job that registers and drains at once would be
//! told its instance was already gone, and leave it registered once it propagates.
//! Such an answer within [`PROPAGATION`] of the registration is sent again, with
//! backoff; after that it means the instance is gone.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, ErrorKind};

/// How long after its registration succeeded an instance's `InstanceNotFound` may
/// mean "not propagated yet" rather than "gone". Cloud Map does not say how long
/// propagation takes; its operations finish in seconds. Past this, one answer is
/// enough, so a drain of an instance someone else deregistered waits at most this
/// long after the registration, not a backoff of its own.
pub(crate) const PROPAGATION: Duration = Duration::from_secs(5);

/// Whether an error of a write by instance id may mean "not propagated yet", so
/// that the write is sent again (`send_retrying_while`'s `again`): an
/// `InstanceNotFound` while the registration made at `registered_at` is younger
/// than [`PROPAGATION`], unless `settled()` says the answer stands (the instance is
/// gone because of this handle: an earlier drain, or a deregistration whose answer
/// was lost). Such sends share the write's one budget with its throttled and
/// failed sends ([`MAX_SENDS`](super::operation::MAX_SENDS) and one backoff, within
/// the deadline): a registry throttling between such answers is not sent a fresh
/// round of retries after each one.
pub(crate) fn not_propagated_yet(
    what: &'static str,
    registered_at: Instant,
    settled: impl Fn() -> bool,
) -> impl Fn(&Error) -> bool {
    move |e| {
        let young = e.kind() == ErrorKind::InstanceNotFound
            && registered_at.elapsed() < PROPAGATION
            && !settled();
        if young {
            tracing::debug!(
                what,
                "InstanceNotFound right after the registration (not propagated yet?): \
                 sending again"
            );
        }
        young
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::operation::{send_retrying_while, Deadline, MAX_SENDS};

    fn not_found() -> Error {
        Error::new(ErrorKind::InstanceNotFound, "InstanceNotFound: no instance")
    }

    fn throttled() -> Error {
        Error::new(ErrorKind::Throttled, "RequestLimitExceeded: Rate exceeded")
    }

    /// A DeregisterInstance sent as `registered.rs` sends it, answered `answer(n)`
    /// at its `n`th send (from 1): the result and the sends.
    async fn send(
        registered_at: Instant,
        settled: bool,
        answer: impl Fn(u32) -> Result<(), Error>,
    ) -> (Result<(), Error>, u32) {
        let deadline = Deadline::after(Duration::from_secs(60), "ns", "svc");
        let mut sends = 0;
        let got = send_retrying_while(
            "DeregisterInstance",
            &deadline,
            1,
            not_propagated_yet("DeregisterInstance", registered_at, || settled),
            || {
                sends += 1;
                let answer = answer(sends);
                async move { answer }
            },
        )
        .await;
        (got, sends)
    }

    /// Answers that are `InstanceNotFound` for the first `missing` sends (every
    /// one, if `None`), then `Ok`.
    async fn run(
        registered_at: Instant,
        missing: Option<u32>,
        settled: bool,
    ) -> (Result<(), Error>, u32) {
        send(registered_at, settled, |n| match missing {
            Some(m) if n > m => Ok(()),
            _ => Err(not_found()),
        })
        .await
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

    /// A registry throttling between "not propagated yet" answers gets one budget
    /// of sends for the write, not a fresh one after each answer (before: 3
    /// throttled sends again after each of them, up to 64 sends by count).
    #[tokio::test(start_paused = true)]
    async fn throttling_between_not_found_answers_shares_one_budget() {
        let (got, sends) = send(Instant::now(), false, |n| {
            if n % 4 == 0 {
                Err(not_found())
            } else {
                Err(throttled())
            }
        })
        .await;
        assert_eq!(got.unwrap_err().kind(), ErrorKind::InstanceNotFound);
        assert_eq!(sends, MAX_SENDS);
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_sent_again() {
        let (got, sends) = send(Instant::now(), false, |_| {
            Err(Error::new(ErrorKind::InvalidInput, "InvalidInput: bad id"))
        })
        .await;
        assert_eq!(
            (got.unwrap_err().kind(), sends),
            (ErrorKind::InvalidInput, 1)
        );
    }
}
