//! [`ShardRouter::search`]: a full-text search over the shards, ranked as one database holding
//! every document would rank it (`fts/global.rs` has the method, `docs/sharding.md` the
//! design).

use super::{ShardRouter, read};
use crate::error::{Error, Result};
use crate::fts::global::{self, Global, Match, Options};
use crate::fts::{Hit, SearchResults};
use crate::query::Filter;
use crate::query::eval::value_cmp;
use crate::query::filter::Expr;
use crate::schema::Partitioned;
use crate::shard::merge::{merge_by_score, plan_query};
use crate::shard::plan::MigrationStep;
use crate::shard::ring::ShardId;
use crate::trace;
use crate::value::Value;

impl<T: Partitioned> ShardRouter<T> {
    /// Starts a full-text search of `query` over the shards' `#[fts]` fields, in the query
    /// language of [`Collection::search`](crate::Collection::search).
    ///
    /// The hits, their order and their scores are those one database holding every document
    /// would give: each shard's matches are scored with the statistics of all the shards
    /// together (rows, tokens, and rows matching each phrase), as FTS5's `bm25()` would with
    /// them, then merged best first. Hits of equal score come by id.
    ///
    /// ```
    /// use db4_runtime::shard::{ShardRouter, ShardRouterConfig};
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64, #[partition_key] tenant: String, #[fts] body: String }
    ///
    /// # fn main() -> db4_runtime::Result<()> {
    /// let router = ShardRouter::<Note>::in_memory(ShardRouterConfig::default())?;
    /// router.insert(&Note { id: 1, tenant: "acme".into(), body: "edge database".into() })?;
    /// router.insert(&Note { id: 2, tenant: "zeta".into(), body: "edge cache".into() })?;
    /// let res = router.search("edge database").highlight("<b>", "</b>").with_total().run()?;
    /// assert_eq!(res.total, Some(1));
    /// assert_eq!(res.hits[0].highlights, [("body", "<b>edge</b> <b>database</b>".to_string())]);
    /// # Ok(()) }
    /// ```
    pub fn search(&self, query: &str) -> ShardSearch<'_, T> {
        ShardSearch { router: self, query: query.to_owned(), filters: Vec::new(), options: Options::default() }
    }
}

/// A full-text search over a [`ShardRouter`], from [`ShardRouter::search`]: the builder of
/// [`Search`](crate::fts::Search) except typo tolerance, run with [`run`](Self::run).
#[must_use = "a search does nothing until `run` is called"]
pub struct ShardSearch<'r, T: Partitioned> {
    router: &'r ShardRouter<T>,
    query: String,
    filters: Vec<Filter<T>>,
    options: Options,
}

impl<T: Partitioned> std::fmt::Debug for ShardSearch<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSearch")
            .field("query", &self.query)
            .field("filters", &self.filters)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<T: Partitioned> ShardSearch<'_, T> {
    /// Keeps only documents that also match `filter` (in addition to earlier filters). A
    /// filter pinning the partition key searches the shards of those keys only.
    pub fn filter(mut self, filter: Filter<T>) -> Self {
        self.filters.push(filter);
        self
    }

    /// Returns, in each hit's [`highlights`](crate::fts::Hit::highlights), the text of every
    /// field that matched with each match wrapped in `start` and `end`.
    pub fn highlight(mut self, start: impl Into<String>, end: impl Into<String>) -> Self {
        self.options.highlight = Some((start.into(), end.into()));
        self
    }

    /// Returns, in each hit's [`snippet`](crate::fts::Hit::snippet), the fragment of at most
    /// `max_tokens` tokens (1 to [`MAX_SNIPPET_TOKENS`](crate::fts::MAX_SNIPPET_TOKENS)) that
    /// best shows the matches, with matches marked as [`highlight`](Self::highlight) says.
    pub fn snippet(mut self, max_tokens: usize) -> Self {
        self.options.snippet = Some(max_tokens);
        self
    }

    /// The text put where a snippet cuts its field (default `…`).
    pub fn ellipsis(mut self, ellipsis: impl Into<String>) -> Self {
        self.options.ellipsis = ellipsis.into();
        self
    }

    /// Returns at most `n` hits.
    pub fn limit(mut self, n: usize) -> Self {
        self.options.limit = Some(n);
        self
    }

    /// Skips the first `n` hits.
    pub fn offset(mut self, n: usize) -> Self {
        self.options.offset = n;
        self
    }

    /// Keeps only hits scoring at least `score` (scores as one database would give them).
    pub fn min_score(mut self, score: f64) -> Self {
        self.options.min_score = Some(score);
        self
    }

    /// Also counts every matching document, in
    /// [`SearchResults::total`](crate::fts::SearchResults::total).
    pub fn with_total(mut self) -> Self {
        self.options.with_total = true;
        self
    }

    /// Runs the search: the statistics and matches of each shard, the global scores, the
    /// merge, then the documents (with highlights and snippets) of the page only.
    ///
    /// # Errors
    ///
    /// As [`Search::run`](crate::fts::Search::run): [`Error::InvalidQuery`] for a query that
    /// does not parse, a `field:` that is not a full-text field, a type without `#[fts]`
    /// fields, a snippet length outside 1..=64 or a non-finite `min_score`;
    /// [`Error::SchemaMismatch`] and [`Error::Serialization`] as there. Also
    /// [`Error::MigrationState`] while a split has switched and not cleaned up yet (a source
    /// shard still holds copies of the moved documents, which would count twice).
    pub fn run(self) -> Result<SearchResults<T>> {
        let schema = T::schema();
        let span = trace::op("shard_search", Some(schema.collection()));
        let out = self.run_inner();
        span.rows_of(out, |res| res.hits.len() as u64)
    }

    fn run_inner(&self) -> Result<SearchResults<T>> {
        let schema = T::schema();
        let target = global::target_of::<T>();
        if target.fields.is_empty() {
            return Err(Error::invalid_query(
                schema.collection(),
                format!("`{}` has no `#[fts]` field to search", schema.type_name()),
            ));
        }
        self.options.check(schema.collection())?;
        let prepared = global::prepare(&target, &self.query)?;
        let state = read(&self.router.inner.state);
        if state.plan.as_ref().is_some_and(|p| p.step() == MigrationStep::Switched) {
            return Err(Error::migration_state(
                "a search across shards waits for the split's cleanup: a source still holds copies of moved documents",
            ));
        }
        let searched = plan_query(&state.ring, &self.filters)?.shards;
        let all: Vec<ShardId> = state.ring.shards().to_vec();
        let exprs: Vec<Expr> = self.filters.iter().map(|f| f.expr.clone()).collect();
        // Every shard's statistics (a database holding every document counts them all), and the
        // matches of the shards the filters may match.
        let mut stats = Vec::with_capacity(all.len());
        let mut parts: Vec<(ShardId, Vec<Match>)> = Vec::with_capacity(searched.len());
        for &shard in &all {
            let c = self.router.collection(shard)?;
            let filters = searched.contains(&shard).then_some(exprs.as_slice());
            let (s, found) = global::part(&c, &target, &prepared, filters)?;
            stats.push(s);
            if filters.is_some() {
                parts.push((shard, found));
            }
        }
        let global = Global::combine(&stats, prepared.phrases.len());
        let weights: Vec<f64> = target.fields.iter().map(|(_, w)| *w).collect();
        let mut total = 0u64;
        let mut scored: Vec<Vec<(usize, f64, Match)>> = Vec::with_capacity(parts.len());
        for (i, (_, found)) in parts.iter_mut().enumerate() {
            let mut part: Vec<(usize, f64, Match)> = std::mem::take(found)
                .into_iter()
                .map(|m| (i, global.score(&m, &weights), m))
                .filter(|(_, s, _)| self.options.min_score.is_none_or(|min| *s >= min))
                .collect();
            total += part.len() as u64;
            part.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| value_cmp(&a.2.id, &b.2.id)));
            if let Some(limit) = self.options.limit {
                part.truncate(self.options.offset.saturating_add(limit));
            }
            scored.push(part);
        }
        let picked = merge_by_score(
            scored,
            |h| h.1,
            |a, b| value_cmp(&a.2.id, &b.2.id),
            self.options.offset,
            self.options.limit,
        );
        // The page's documents, shard by shard, put back in the merged order.
        let mut hits: Vec<Option<Hit<T>>> = (0..picked.len()).map(|_| None).collect();
        for (i, (shard, _)) in parts.iter().enumerate() {
            let wanted: Vec<(i64, Value)> =
                picked.iter().filter(|h| h.0 == i).map(|h| (h.2.rowid, h.2.id.clone())).collect();
            if wanted.is_empty() {
                continue;
            }
            let c = self.router.collection(*shard)?;
            for (rowid, mut hit) in global::page_of::<T>(&c, &target, &prepared, &self.options, &wanted)? {
                if let Some(at) = picked.iter().position(|h| h.0 == i && h.2.rowid == rowid) {
                    hit.score = picked[at].1;
                    hits[at] = Some(hit);
                }
            }
        }
        drop(state);
        // A document deleted since its shard was searched is left out.
        Ok(SearchResults {
            hits: hits.into_iter().flatten().collect(),
            total: self.options.with_total.then_some(total),
        })
    }
}
