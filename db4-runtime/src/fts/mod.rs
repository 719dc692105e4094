//! Full-text search: FTS5 tables kept in step with the documents, BM25 ranking with the
//! declared weights, highlights and snippets, and a query language rendered as safe FTS5.
//!
//! - [`Collection::search`](crate::Collection::search) searches a collection's `#[fts]`
//!   fields, returning typed documents ([`Search`]);
//! - [`FullTextIndex`] is the same engine without the derive: named fields with weights,
//!   documents indexed and removed by id;
//! - [`parse_query`] and [`to_fts5`] are the query language on their own.
//!
//! The tables, triggers and their migrations are described in `docs/search.md`.

mod engine;
#[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
pub(crate) mod global;
mod index;
mod query;
mod search;
mod typos;

pub use engine::{Hit, SearchResults};
pub use index::{FullTextIndex, IndexSearch};
pub use query::{
    MAX_FIELD_NAME_BYTES, MAX_QUERY_BYTES, MAX_QUERY_DEPTH, MAX_QUERY_TERMS, QueryNode, SearchQuery, parse_query,
    to_fts5,
};
pub use search::Search;

/// The most tokens a snippet may hold: FTS5's own bound.
pub const MAX_SNIPPET_TOKENS: usize = 64;
