//! Spans for db4's operations, through the `tracing` crate.
//!
//! Every public operation opens one `debug` span named `db4` through [`op`], with the fields
//! `operation`, `collection` (where there is one), `rows` (recorded once known) and
//! `elapsed_us` (recorded when the span closes); inner steps open `trace` spans named
//! `db4.step` through [`step`], with the same fields. The span is entered while the operation
//! runs, so spans of work inside a transaction are children of the transaction's span.
//!
//! With no subscriber, or one that filters these levels out, the span is disabled: no field
//! is recorded, no clock is read, and an operation pays the check of the level filter.
//!
//! A leaf module: it imports nothing from the crate, so any layer (`batch/` too) can call it:
//!
//! ```text
//! let span = trace::op("put", Some(name));
//! let n = write(...)?;
//! span.rows(n);
//! ```

use tracing::field::Empty;

/// The span of one operation, entered until dropped; records `elapsed_us` when dropped.
///
/// `None` while nobody listens: then it is one word to move around and check, where a
/// disabled `Span` kept in it would be moved whole (about 1 ns against 12 ns per operation,
/// measured in a loop).
#[must_use = "the span closes when this guard is dropped"]
pub(crate) struct OpSpan(Option<Active>);

/// A span someone listens to.
struct Active {
    span: tracing::span::EnteredSpan,
    start: Clock,
}

/// Opens the span of a public operation on `collection` (`None`: on the database or a
/// transaction).
pub(crate) fn op(operation: &'static str, collection: Option<&str>) -> OpSpan {
    OpSpan::enter(tracing::debug_span!("db4", operation, collection, rows = Empty, elapsed_us = Empty))
}

/// Opens the span of an inner step of an operation, at `trace` level.
pub(crate) fn step(operation: &'static str, collection: Option<&str>) -> OpSpan {
    OpSpan::enter(tracing::trace_span!("db4.step", operation, collection, rows = Empty, elapsed_us = Empty))
}

impl OpSpan {
    fn enter(span: tracing::Span) -> Self {
        if span.is_disabled() {
            return Self(None);
        }
        Self(Some(Active { span: span.entered(), start: Clock::now() }))
    }

    /// Records how many documents the operation read, wrote or deleted.
    pub fn rows(&self, rows: impl TryInto<u64>) {
        if let Some(active) = &self.0 {
            active.span.record("rows", rows.try_into().unwrap_or(u64::MAX));
        }
    }

    /// Passes `result` through, recording `rows(value)` when it is `Ok`.
    pub fn rows_of<T, E>(&self, result: Result<T, E>, rows: impl FnOnce(&T) -> u64) -> Result<T, E> {
        if let (Some(active), Ok(value)) = (&self.0, &result) {
            active.span.record("rows", rows(value));
        }
        result
    }
}

impl Drop for OpSpan {
    fn drop(&mut self) {
        if let Some(active) = &self.0
            && let Some(elapsed) = active.start.elapsed_us()
        {
            active.span.record("elapsed_us", elapsed);
        }
    }
}

/// A monotonic clock.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy)]
struct Clock(std::time::Instant);

#[cfg(not(target_arch = "wasm32"))]
impl Clock {
    fn now() -> Self {
        Self(std::time::Instant::now())
    }

    fn elapsed_us(self) -> Option<u64> {
        Some(u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX))
    }
}

/// JavaScript's `Date.now()`: `Instant::now` panics on wasm32. A Worker moves its clock only
/// between I/O, so a synchronous operation there reads as 0 µs.
#[cfg(all(target_arch = "wasm32", feature = "cloudflare"))]
#[derive(Clone, Copy)]
struct Clock(f64);

#[cfg(all(target_arch = "wasm32", feature = "cloudflare"))]
impl Clock {
    fn now() -> Self {
        Self(js_sys::Date::now())
    }

    fn elapsed_us(self) -> Option<u64> {
        // Float to integer casts saturate (and a negative difference becomes 0).
        Some(((js_sys::Date::now() - self.0) * 1000.0) as u64)
    }
}

/// No clock: spans carry no `elapsed_us`.
#[cfg(all(target_arch = "wasm32", not(feature = "cloudflare")))]
#[derive(Clone, Copy)]
struct Clock;

#[cfg(all(target_arch = "wasm32", not(feature = "cloudflare")))]
impl Clock {
    fn now() -> Self {
        Self
    }

    fn elapsed_us(self) -> Option<u64> {
        None
    }
}
