//! [`DurableRouter::search`]: a full-text search over shard objects, ranked as one database
//! holding every document would rank it, as [`ShardRouter::search`](crate::shard::ShardRouter::search)
//! ranks it in process: each shard object answers its statistics and matches
//! ([`ShardOp::SearchPart`]), the router scores every match with the statistics of all the
//! shards together and merges them best first, then asks the shards holding the page's hits
//! for their documents, highlights and snippets ([`ShardOp::SearchPage`]). Two rounds of
//! requests, each at most [`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT) at once.

use super::protocol::{SearchPart, ShardOp, WireHit, encode_expr};
use super::router::DurableRouter;
use crate::error::{Error, Result};
use crate::fts::global::{self, Global, Match, Options, Stats};
use crate::fts::{Hit, SearchResults};
use crate::query::Filter;
use crate::query::eval::value_cmp;
use crate::schema::Partitioned;
use crate::shard::{MigrationStep, ShardId, merge_by_score};

/// Attempts of a search across stale-epoch redirects.
const ATTEMPTS: usize = 8;

impl<T: Partitioned> DurableRouter<T> {
    /// Starts a full-text search of `query` over the shard objects' `#[fts]` fields, in the
    /// query language of [`Collection::search`](crate::Collection::search). Hits, order and
    /// scores equal those of one database holding every document; a filter pinning the
    /// partition key searches the shards of those keys only (every shard still reports its
    /// statistics, which the scores need).
    pub fn search(&self, query: &str) -> DurableSearch<'_, T> {
        DurableSearch { router: self, query: query.to_owned(), filters: Vec::new(), options: Options::default() }
    }
}

/// A full-text search over a [`DurableRouter`], from [`DurableRouter::search`]: the builder
/// of [`ShardSearch`](crate::shard::ShardSearch), run with the async [`run`](Self::run).
#[must_use = "a search does nothing until `run` is awaited"]
pub struct DurableSearch<'r, T: Partitioned> {
    router: &'r DurableRouter<T>,
    query: String,
    filters: Vec<Filter<T>>,
    options: Options,
}

impl<T: Partitioned> std::fmt::Debug for DurableSearch<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSearch")
            .field("query", &self.query)
            .field("filters", &self.filters)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<T: Partitioned> DurableSearch<'_, T> {
    /// Keeps only documents that also match `filter` (in addition to earlier filters).
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
    /// best shows the matches.
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

    /// Runs the search: every shard's statistics and the matches of the shards the filters
    /// may match, the global scores and the merge, then the page's documents.
    ///
    /// # Errors
    ///
    /// As [`ShardSearch::run`](crate::shard::ShardSearch::run): [`Error::InvalidQuery`] for a
    /// query that does not parse, a type without `#[fts]` fields, a snippet length outside
    /// 1..=64 or a non-finite `min_score`; [`Error::MigrationState`] from a split's freeze
    /// until its cleanup (a source shard still holds copies of the moved documents, which
    /// would count twice); the client's error.
    pub async fn run(self) -> Result<SearchResults<T>> {
        let name = T::schema().collection();
        let target = global::target_of::<T>();
        if target.fields.is_empty() {
            return Err(Error::invalid_query(
                name,
                format!("`{}` has no `#[fts]` field to search", T::schema().type_name()),
            ));
        }
        self.options.check(name)?;
        // Parsed here too: a query that does not parse fails before any request.
        let prepared = global::prepare(&target, &self.query)?;
        let router = self.router;
        let filters: Vec<_> = self.filters.iter().map(|f| encode_expr(T::schema(), &f.expr)).collect();
        let weights: Vec<f64> = target.fields.iter().map(|(_, w)| *w).collect();
        for _ in 0..ATTEMPTS {
            if router.map().plan.is_some_and(|p| p.step() == MigrationStep::Switched) {
                return Err(Error::migration_state(
                    "a search across shards waits for the split's cleanup: a source still holds copies of moved documents",
                ));
            }
            let searched = router.plan(&self.filters)?.shards;
            let all = router.shards();
            let op = |s: ShardId| ShardOp::SearchPart {
                query: self.query.clone(),
                filters: searched.contains(&s).then(|| filters.clone()),
            };
            let Some(replies) = router.scatter(&all, op).await? else { continue };
            let mut stats = Vec::with_capacity(replies.len());
            let mut parts: Vec<(ShardId, Vec<Match>)> = Vec::with_capacity(searched.len());
            for (shard, raw) in replies {
                let part: SearchPart = router.decode(&raw)?;
                if part.phrase_rows.len() != prepared.phrases.len() {
                    return Err(Error::corrupted(
                        name,
                        None,
                        format!(
                            "shard {} counted {} phrases of {}",
                            shard.get(),
                            part.phrase_rows.len(),
                            prepared.phrases.len()
                        ),
                    ));
                }
                stats.push(Stats { rows: part.rows, tokens: part.tokens, phrase_rows: part.phrase_rows });
                if searched.contains(&shard) {
                    let found = part
                        .matches
                        .into_iter()
                        .map(|m| Match { rowid: m.rowid, id: m.id.into(), length: m.length, hits: m.hits })
                        .collect();
                    parts.push((shard, found));
                }
            }
            let global = Global::combine(&stats, prepared.phrases.len());
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
            let Some(hits) = self.page(&parts, &picked, &target).await? else { continue };
            return Ok(SearchResults { hits, total: self.options.with_total.then_some(total) });
        }
        Err(router.gave_up())
    }

    /// The documents of `picked` from the shards holding them, in `picked`'s order; `None`
    /// if a shard redirected (the search starts again). A document deleted since its shard
    /// was searched is left out.
    async fn page(
        &self,
        parts: &[(ShardId, Vec<Match>)],
        picked: &[(usize, f64, Match)],
        target: &global::Target<'static>,
    ) -> Result<Option<Vec<Hit<T>>>> {
        let router = self.router;
        let holding: Vec<ShardId> =
            parts.iter().enumerate().filter(|(i, _)| picked.iter().any(|h| h.0 == *i)).map(|(_, (s, _))| *s).collect();
        let index_of = |s: ShardId| parts.iter().position(|(p, _)| *p == s).unwrap_or(usize::MAX);
        let op = |s: ShardId| {
            let i = index_of(s);
            ShardOp::SearchPage {
                query: self.query.clone(),
                highlight: self.options.highlight.clone(),
                snippet: self.options.snippet,
                ellipsis: self.options.ellipsis.clone(),
                wanted: picked.iter().filter(|h| h.0 == i).map(|h| (h.2.rowid, (&h.2.id).into())).collect(),
            }
        };
        let Some(replies) = router.scatter(&holding, op).await? else { return Ok(None) };
        let mut hits: Vec<Option<Hit<T>>> = (0..picked.len()).map(|_| None).collect();
        for (shard, raw) in replies {
            let i = index_of(shard);
            for wire in router.decode::<Vec<WireHit>>(&raw)? {
                let Some(at) = picked.iter().position(|h| h.0 == i && h.2.rowid == wire.rowid) else { continue };
                let doc: T = serde_json::from_str(wire.doc.get())
                    .map_err(|e| Error::serialization(T::schema().collection(), None, e))?;
                let highlights = wire
                    .highlights
                    .into_iter()
                    .filter_map(|(field, text)| {
                        target.fields.iter().find(|(f, _)| *f == field).map(|(f, _)| (*f, text))
                    })
                    .collect();
                hits[at] = Some(Hit { doc, score: picked[at].1, highlights, snippet: wire.snippet });
            }
        }
        Ok(Some(hits.into_iter().flatten().collect()))
    }
}
