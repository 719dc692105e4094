//! Typo tolerance: a plain term that matches nothing is widened to the indexed terms a few
//! edits away, found in the index's vocabulary (an `fts5vocab` table).
//!
//! - Terms of 5 to 8 characters allow one edit, longer ones two (an edit inserts, deletes or
//!   replaces a character, or swaps two adjacent ones). Shorter terms, prefixes and phrases
//!   are left as written.
//! - Only a term that matches no document is widened, so a correctly spelled term keeps its
//!   exact meaning; its alternatives are ORed with it.
//! - Candidates share the term's first character (read as one range of the vocabulary, by its
//!   index), and at most [`MAX_ALTERNATIVES`] are kept, the closest and most frequent first.
//! - With the Porter tokenizer the vocabulary holds stems (`databas` for "databases"): a term
//!   is also compared cut to the stem's length, give or take one character, and a stem found
//!   is matched as a prefix (as a term the stemmer would shorten it again).
//! - The trigram tokenizer matches substrings; it gets no expansion.
//!
//! Each lookup binds four values, well inside the 100-parameter limit.

use crate::backend::Connection;
use crate::error::Result;
use crate::fts::engine::Target;
use crate::fts::query::{SearchQuery, to_fts5};
use crate::schema::{Tokenizer, quote_ident};
use crate::value::{Value, ValueRef};

/// At most this many alternatives per term.
pub(crate) const MAX_ALTERNATIVES: usize = 8;

/// `query` with each plain term that matches nothing ORed with its near spellings.
pub(crate) fn expand(conn: &dyn Connection, target: &Target<'_>, query: &SearchQuery) -> Result<SearchQuery> {
    if target.tokenizer == Tokenizer::Trigram {
        return Ok(query.clone());
    }
    let mut failure = None;
    // A stem from the Porter vocabulary is matched as a prefix: as a term the stemmer would
    // shorten it again (`databas` to `databa`).
    let prefix = target.tokenizer == Tokenizer::Porter;
    let expanded = query.map_terms_prefixed(|term| {
        if failure.is_some() {
            return Vec::new();
        }
        match alternatives(conn, target, term) {
            Ok(found) => found.into_iter().map(|alt| (alt, prefix)).collect(),
            Err(e) => {
                failure = Some(e);
                Vec::new()
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(expanded),
    }
}

/// The edits a term of `chars` characters may be away from an alternative.
fn budget(chars: usize) -> usize {
    match chars {
        0..=4 => 0,
        5..=8 => 1,
        _ => 2,
    }
}

/// The alternatives of `term` (none if it matches as written).
fn alternatives(conn: &dyn Connection, target: &Target<'_>, term: &str) -> Result<Vec<String>> {
    let lower = term.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let k = budget(chars.len());
    if k == 0 || matches_something(conn, target, term)? {
        return Ok(Vec::new());
    }
    let first = chars[0];
    let Some(next) = char::from_u32(first as u32 + 1) else { return Ok(Vec::new()) };
    let stems = target.tokenizer == Tokenizer::Porter;
    let shortest = chars.len().saturating_sub(k + if stems { 3 } else { 0 }).max(1);
    let longest = chars.len() + k;
    let vocab = quote_ident(&target.vocab_table);
    let sql = format!(
        "SELECT \"term\", \"doc\" FROM {vocab} WHERE \"term\" >= ?1 AND \"term\" < ?2 AND length(\"term\") BETWEEN ?3 AND ?4"
    );
    let params = [
        Value::Text(first.to_string()),
        Value::Text(next.to_string()),
        Value::Integer(shortest as i64),
        Value::Integer(longest as i64),
    ];
    let mut found: Vec<(usize, i64, String)> = Vec::new();
    conn.query(&sql, &params, &mut |row| {
        let (ValueRef::Text(candidate), docs) = (row.get(0)?, row.get(1)?) else { return Ok(()) };
        let docs = match docs {
            ValueRef::Integer(n) => n,
            _ => 0,
        };
        let candidate_chars: Vec<char> = candidate.chars().collect();
        let mut distance = edit_distance(&chars, &candidate_chars, k);
        if stems {
            // The term cut to the stem's length, or one character longer or shorter.
            for len in candidate_chars.len().saturating_sub(1)..=candidate_chars.len() + 1 {
                if len >= 1 && len < chars.len() {
                    distance = distance.min(edit_distance(&chars[..len], &candidate_chars, k));
                }
            }
        }
        if distance <= k {
            found.push((distance, docs, candidate.to_owned()));
        }
        Ok(())
    })?;
    found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    Ok(found.into_iter().map(|(_, _, t)| t).filter(|t| *t != lower).take(MAX_ALTERNATIVES).collect())
}

/// Whether `term` alone matches a document.
fn matches_something(conn: &dyn Connection, target: &Target<'_>, term: &str) -> Result<bool> {
    let Ok(query) = crate::fts::query::parse_query(&format!("\"{}\"", term.replace('"', "\"\""))) else {
        return Ok(true);
    };
    let fts = quote_ident(&target.fts_table);
    let mut any = false;
    conn.query(
        &format!("SELECT 1 FROM {fts} WHERE {fts} MATCH ?1 LIMIT 1"),
        &[Value::Text(to_fts5(&query))],
        &mut |_| {
            any = true;
            Ok(())
        },
    )?;
    Ok(any)
}

/// The optimal-string-alignment distance between `a` and `b` (insertions, deletions,
/// substitutions and adjacent swaps), or `limit + 1` once it is known to exceed `limit`.
pub(crate) fn edit_distance(a: &[char], b: &[char], limit: usize) -> usize {
    if a.len().abs_diff(b.len()) > limit {
        return limit + 1;
    }
    let width = b.len() + 1;
    let mut rows = vec![vec![0usize; width]; 3];
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        let (cur, prev, prev2) = (i % 3, (i + 2) % 3, (i + 1) % 3);
        rows[cur][0] = i;
        let mut best = i;
        for j in 1..width {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[prev][j] + 1).min(rows[cur][j - 1] + 1).min(rows[prev][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[prev2][j - 2] + 1);
            }
            rows[cur][j] = d;
            best = best.min(d);
        }
        if best > limit {
            return limit + 1;
        }
    }
    rows[a.len() % 3][b.len()].min(limit + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(a: &str, b: &str) -> usize {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        edit_distance(&a, &b, 3)
    }

    #[test]
    fn edit_distances() {
        assert_eq!(d("database", "database"), 0);
        assert_eq!(d("databse", "database"), 1);
        assert_eq!(d("dtaabase", "database"), 1); // a swap
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("abcdefgh", "a"), 4); // past the limit
        assert_eq!(d("é", "e"), 1);
        assert_eq!(d("databs", "databas"), 1);
        assert_eq!(budget(4), 0);
        assert_eq!(budget(5), 1);
        assert_eq!(budget(9), 2);
    }
}
