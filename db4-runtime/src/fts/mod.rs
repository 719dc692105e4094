//! Full-text search.

mod query;

pub use query::{
    MAX_FIELD_NAME_BYTES, MAX_QUERY_BYTES, MAX_QUERY_DEPTH, MAX_QUERY_TERMS, QueryNode, SearchQuery, parse_query,
    to_fts5,
};
