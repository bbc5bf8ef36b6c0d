//! A call's options: how many endpoints it tries and how long it may take.

use std::time::Duration;

use crate::error::Error;

/// The most attempts one call may make: as many as a Cloud Map DNS answer holds.
pub const MAX_ATTEMPTS: usize = 8;

/// Defaults of [`Resolver::call`](crate::Resolver::call); each call may override them. Every field's doc
/// states its default.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cloudmap_resolver::{CallOptions, ResolverOptions};
///
/// let mut opts = ResolverOptions::default();
/// opts.call.max_attempts = 3;
/// opts.call.attempt_timeout = Some(Duration::from_millis(250));
/// assert_eq!(CallOptions::default().max_attempts, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// How many distinct endpoints a call tries at most, 1 to 8 (another value is
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) when the resolver is built).
    /// Default: 8.
    pub max_attempts: usize,
    /// How long one attempt may take before it is dropped and counted as a failure
    /// of its endpoint; zero is `InvalidInput`. Default: none.
    pub attempt_timeout: Option<Duration>,
    /// How long a whole call may take, resolving included; the attempt it cuts
    /// counts as a failure of its endpoint when it had run for at least half of
    /// it. Zero is `InvalidInput`. Default: none.
    pub deadline: Option<Duration>,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            max_attempts: MAX_ATTEMPTS,
            attempt_timeout: None,
            deadline: None,
        }
    }
}

impl CallOptions {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(Error::invalid("call.max_attempts must be from 1 to 8"));
        }
        if self.attempt_timeout.is_some_and(|d| d.is_zero())
            || self.deadline.is_some_and(|d| d.is_zero())
        {
            return Err(Error::invalid(
                "call.attempt_timeout and call.deadline must be greater than zero",
            ));
        }
        Ok(())
    }
}
