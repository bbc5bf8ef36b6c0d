//! Clock arithmetic that saturates instead of panicking, so that no configured or
//! registry-given duration (`Duration::MAX` included) can make the crate panic.

use std::time::Duration;

use tokio::time::Instant;

/// The farthest a deadline is set: about 30 years, "never" for a process, and far
/// inside what `Instant` can hold (tokio caps timers at about 2 years anyway).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `at + d` without overflow: every instant computed from a configured or
/// registry-given duration goes through here, so that `Duration::MAX` means "never"
/// (`max_stale = Duration::MAX` serves stale forever) instead of a panic.
pub(crate) fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(FAR_FUTURE)).unwrap_or(at)
}

/// `d * factor` for a factor of at least 0, saturating instead of panicking when
/// the product does not fit a `Duration` (`mul_f64` panics on `Duration::MAX * 1.0`).
pub(crate) fn scaled(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(if factor > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}
