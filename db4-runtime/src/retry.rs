//! Optimistic locking: retry policies with exponential backoff and full jitter, and the
//! generic retry loop. The per-document operations (`update_with`, `compare_and_swap`,
//! `increment`, ...) are methods of [`Collection`](crate::Collection).

use crate::error::{BackendErrorKind, Error, Result};
use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How often and how patiently to retry an operation that failed on a version conflict or a
/// busy database.
///
/// The wait before retry `n` (0-based) is drawn uniformly from
/// `0..=min(max_backoff, initial_backoff * multiplier^n)` ("full jitter"), so competing
/// writers spread out instead of retrying in lockstep.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means a single attempt.
    pub max_retries: u32,
    /// The backoff ceiling of the first retry.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
    /// How much the ceiling grows per retry.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// 10 retries, 5 ms growing twofold up to 500 ms.
    fn default() -> Self {
        Self {
            max_retries: 10,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(500),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// A single attempt, no retries.
    pub fn none() -> Self {
        Self { max_retries: 0, ..Self::default() }
    }

    /// Sets the number of retries.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the first backoff ceiling.
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }

    /// Sets the largest backoff ceiling.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// The backoff ceiling before retry `attempt` (0-based), without jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let nanos = (self.initial_backoff.as_nanos() as f64 * factor).min(self.max_backoff.as_nanos() as f64);
        Duration::from_nanos(nanos.max(0.0) as u64)
    }

    /// A jittered wait before retry `attempt`: uniform in `0..=ceiling(attempt)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        Duration::from_nanos(if ceiling == 0 { 0 } else { next_random() % ceiling.saturating_add(1) })
    }
}

/// Whether an error is worth retrying: a version conflict or a busy database.
pub fn is_retryable(error: &Error) -> bool {
    matches!(error, Error::Conflict { .. }) || error.backend_kind() == Some(BackendErrorKind::Busy)
}

/// Runs `f` until it succeeds, fails with an error that retrying cannot fix, or has failed
/// with a conflict (or busy database) `policy.max_retries + 1` times; then returns that
/// last error.
///
/// # Errors
///
/// The last error `f` returned.
///
/// # Example
///
/// ```
/// use db4_runtime::{Error, RetryPolicy, with_optimistic_lock};
///
/// let mut attempts = 0;
/// let result = with_optimistic_lock(&RetryPolicy::default(), || {
///     attempts += 1;
///     if attempts < 3 {
///         return Err(Error::Conflict { collection: "c".into(), id: "1".into(), expected: 1, actual: 2 });
///     }
///     Ok(attempts)
/// });
/// assert_eq!(result.unwrap(), 3);
/// ```
pub fn with_optimistic_lock<R>(policy: &RetryPolicy, mut f: impl FnMut() -> Result<R>) -> Result<R> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if is_retryable(&e) && attempt < policy.max_retries => {
                pause(policy.backoff(attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Waits before a retry. A Worker cannot block its thread (`std::thread::sleep` panics on
/// wasm32), and a Durable Object runs one request's synchronous code at a time, so there it
/// retries at once.
pub(crate) fn pause(duration: Duration) {
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::sleep(duration);
    #[cfg(target_arch = "wasm32")]
    let _ = duration;
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        // A per-thread random seed from the standard library's hash keys: no extra dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        h.finish() | 1
    });
}

/// xorshift64*: plenty for spreading retries.
fn next_random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_the_growing_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(0), Duration::from_millis(5));
        assert_eq!(p.ceiling(1), Duration::from_millis(10));
        assert_eq!(p.ceiling(20), Duration::from_millis(500));
        for attempt in 0..12 {
            for _ in 0..100 {
                assert!(p.backoff(attempt) <= p.ceiling(attempt));
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..50).map(|_| p.backoff(5)).collect();
        // Extreme settings stay in range instead of overflowing.
        let wild = RetryPolicy::default().initial_backoff(Duration::MAX).max_backoff(Duration::MAX);
        assert!(wild.backoff(63) <= wild.ceiling(63));
        assert!(spread.len() > 10, "backoff is not jittered: {spread:?}");
    }

    #[test]
    fn retries_only_retryable_errors_and_stops_at_the_limit() {
        let mut calls = 0;
        let r: Result<()> =
            with_optimistic_lock(&RetryPolicy::default().max_retries(3).max_backoff(Duration::ZERO), || {
                calls += 1;
                Err(Error::Conflict { collection: "c".into(), id: "1".into(), expected: 1, actual: 2 })
            });
        assert!(matches!(r, Err(Error::Conflict { .. })));
        assert_eq!(calls, 4);

        let mut calls = 0;
        let r: Result<()> = with_optimistic_lock(&RetryPolicy::default(), || {
            calls += 1;
            Err(Error::NotFound { collection: "c".into(), id: "1".into() })
        });
        assert!(matches!(r, Err(Error::NotFound { .. })));
        assert_eq!(calls, 1);
    }
}
