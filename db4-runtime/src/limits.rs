//! The limits every statement db4 runs must respect, on every platform: a Durable Object's
//! SQLite is the strictest, and native connections are configured with the same limits
//! (`backend::sqlite`), so a statement that runs natively runs there too.
//!
//! `sql::Statement` enforces them for the statements it builds (spilling parameters, keeping
//! filters within the depth, refusing what is too long); schemas are validated against the
//! column and function-argument limits when a collection is opened.

/// At most this many bound parameters per statement (a Durable Object's limit).
pub(crate) const MAX_PARAMS: usize = 100;
/// SQL expressions nest at most this deep (a Durable Object's SQLite limit).
pub(crate) const MAX_EXPR_DEPTH: usize = 100;
/// At most this many bytes of SQL text per statement (a Durable Object's limit).
pub(crate) const MAX_SQL_BYTES: usize = 100_000;
/// At most this many columns per table, result or index (a Durable Object's limit).
pub(crate) const MAX_COLUMNS: usize = 100;
/// At most this many arguments per SQL function call (a Durable Object's limit).
pub(crate) const MAX_FUNCTION_ARGS: usize = 32;
/// At most this many bytes per bound text or blob (a Durable Object's 2 MB per value).
pub(crate) const MAX_VALUE_BYTES: usize = 2_000_000;
