//! TEMPORARY stand-in for the query language (replaced by the parser on branch fts-query).

use crate::error::{Error, Result};

/// A parsed search query.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    terms: Vec<String>,
}

/// Parses a search query.
///
/// # Errors
///
/// [`Error::InvalidQuery`] for an empty query.
pub fn parse_query(input: &str) -> Result<SearchQuery> {
    let terms: Vec<String> = input.split_whitespace().map(str::to_owned).collect();
    if terms.is_empty() {
        return Err(Error::invalid_query("search", "at byte 0: the search query is empty"));
    }
    Ok(SearchQuery { terms })
}

/// Renders a query as an FTS5 expression.
pub fn to_fts5(query: &SearchQuery) -> String {
    query.terms.iter().map(|t| format!("\"{}\"", t.replace('"', "\"\""))).collect::<Vec<_>>().join(" ")
}

impl SearchQuery {
    pub(crate) fn check_fields(&self, _collection: &str, _allowed: &[&str]) -> Result<()> {
        Ok(())
    }

    /// Replaces terms by alternatives.
    pub fn map_terms(&self, mut f: impl FnMut(&str) -> Vec<String>) -> SearchQuery {
        let terms = self
            .terms
            .iter()
            .map(|t| {
                let alts = f(t);
                if alts.len() <= 1 { t.clone() } else { alts.join(" OR ") }
            })
            .collect();
        SearchQuery { terms }
    }
}
