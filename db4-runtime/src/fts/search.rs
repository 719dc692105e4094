//! [`Collection::search`]: a ranked full-text search over a collection's `#[fts]` fields,
//! returning typed documents.

use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::fts::engine::{self, Hit, Options, SearchResults, Target};
use crate::query::Filter;
use crate::query::filter::Expr;
use crate::schema::Document;
use crate::schema::fts::{table_name, vocab_name};
use crate::sql::Statement;
use crate::store::codec::{decode, with_id};
use crate::store::meta::CollectionMeta;
use crate::store::slot::MetaSlot;
use crate::trace;
use crate::txn::{Runner, Scope};
use std::marker::PhantomData;

impl<T: Document, S: Scope> Collection<T, S> {
    /// Starts a full-text search of `query` over the collection's `#[fts]` fields.
    ///
    /// The query language (terms, `"phrases"`, `prefix*`, `field:term`, `AND` / `OR` / `NOT`,
    /// parentheses; see [`parse_query`](crate::fts::parse_query)) is parsed when the search
    /// runs. Hits come best first, by BM25 with the declared weights.
    ///
    /// The `db4::fts` module of the facade has an example.
    pub fn search(&self, query: &str) -> Search<'_, T> {
        Search {
            runner: self.runner(),
            slot: self.slot(),
            query: query.to_owned(),
            filters: Vec::new(),
            options: Options::default(),
            _marker: PhantomData,
        }
    }
    /// Indexes every stored document again, in one transaction: the index refers to
    /// documents by rowid, and a `VACUUM` run outside db4 may renumber the rowids of a
    /// collection with string ids. db4 itself never needs this.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] for a collection without `#[fts]` fields,
    /// [`Error::SchemaMismatch`] as [`Search::run`], or a backend error.
    pub fn rebuild_search_index(&self) -> Result<()> {
        let schema = self.slot().schema();
        let _span = trace::op("rebuild_search_index", Some(schema.collection()));
        if schema.fts_fields().next().is_none() {
            return Err(Error::invalid_query(
                schema.collection(),
                format!("`{}` has no `#[fts]` field to index", schema.type_name()),
            ));
        }
        self.runner().write_meta(self.slot(), crate::backend::Access::Atomic, |w, meta| {
            check_current(meta)?;
            for sql in crate::schema::fts::reindex_sql(meta.schema) {
                w.conn.execute(&sql, &[])?;
            }
            Ok(())
        })
    }
}

/// A full-text search of a collection, from [`Collection::search`]; run it with
/// [`run`](Self::run).
#[must_use = "a search does nothing until `run` is called"]
pub struct Search<'c, T> {
    runner: Runner<'c>,
    slot: &'c MetaSlot,
    query: String,
    filters: Vec<Expr>,
    options: Options,
    _marker: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Search<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Search")
            .field("collection", &self.slot.schema().collection())
            .field("query", &self.query)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'c, T: Document> Search<'c, T> {
    /// Keeps only documents that also match `filter` (in addition to earlier filters).
    pub fn filter(mut self, filter: Filter<T>) -> Self {
        self.filters.push(filter.expr);
        self
    }

    engine::option_methods!();

    /// Runs the search.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidQuery`] for a query that does not parse (with the byte position), a
    ///   `field:` that is not a full-text field, a collection without `#[fts]` fields, a
    ///   snippet length outside 1..=64, a non-finite `min_score`, or a filter that cannot be
    ///   bound;
    /// - [`Error::SchemaMismatch`] if another type changed the collection's full-text fields
    ///   since this handle opened it;
    /// - [`Error::Serialization`] naming a stored document that does not deserialize.
    pub fn run(self) -> Result<SearchResults<T>> {
        let schema = self.slot.schema();
        let span = trace::op("search", Some(schema.collection()));
        let target = target(schema);
        let out = (|| {
            if target.fields.is_empty() {
                return Err(Error::invalid_query(
                    schema.collection(),
                    format!("`{}` has no `#[fts]` field to search", schema.type_name()),
                ));
            }
            self.options.check(schema.collection())?;
            self.runner.read_fresh_meta(self.slot, |conn, meta| {
                check_current(meta)?;
                let expression = engine::match_expression(conn, &target, &self.options, &self.query)?;
                let hits =
                    self.hits(conn, meta, &target, &expression).map_err(|e| engine::fts_error(e, meta.collection))?;
                let total = if self.options.with_total {
                    Some(
                        self.total(conn, meta, &target, &expression)
                            .map_err(|e| engine::fts_error(e, meta.collection))?,
                    )
                } else {
                    None
                };
                Ok(SearchResults { hits, total })
            })
        })();
        span.rows_of(out, |res| res.hits.len() as u64)
    }

    fn hits(
        &self,
        conn: &dyn crate::backend::Connection,
        meta: &CollectionMeta,
        target: &Target<'_>,
        expression: &str,
    ) -> Result<Vec<Hit<T>>> {
        let mut sql = meta.statement();
        let head = if meta.versioned { "t.\"_id\", t.\"_doc\", t.\"_version\"" } else { "t.\"_id\", t.\"_doc\"" };
        let width = if meta.versioned { 3 } else { 2 };
        let filters = |sql: &mut Statement<'_>| sql.filters(&self.filters, 1);
        let conditions: engine::Conditions<'_, Statement<'_>> =
            if self.filters.is_empty() { None } else { Some(&filters) };
        let source = engine::Source { content: &meta.table, head, width };
        let columns = engine::push_search(&mut sql, target, &self.options, source, expression.to_owned(), conditions)?;
        let (text, params) = sql.finish()?;
        let mut hits = Vec::new();
        conn.query(&text, &params, &mut |row| {
            let doc = decode::<T>(meta, row, 1).map_err(|e| match row.get(0) {
                Ok(id) => with_id(e, &id.to_owned()),
                Err(_) => e,
            })?;
            hits.push(engine::read_extras(row, target, &columns)?.hit(doc));
            Ok(())
        })?;
        Ok(hits)
    }

    fn total(
        &self,
        conn: &dyn crate::backend::Connection,
        meta: &CollectionMeta,
        target: &Target<'_>,
        expression: &str,
    ) -> Result<u64> {
        if self.filters.is_empty() && self.options.min_score.is_none() {
            return engine::count_matches(conn, target, expression);
        }
        let mut sql = meta.statement();
        let filters = |sql: &mut Statement<'_>| sql.filters(&self.filters, 1);
        let conditions: engine::Conditions<'_, Statement<'_>> =
            if self.filters.is_empty() { None } else { Some(&filters) };
        engine::push_total(&mut sql, target, &self.options, &meta.table, expression.to_owned(), conditions)?;
        let (text, params) = sql.finish()?;
        crate::store::codec::count(conn, meta.collection, &text, &params)
    }
}

/// What a search of `schema`'s collection runs over.
pub(crate) fn target(schema: &'static crate::Schema) -> Target<'static> {
    Target {
        name: schema.collection(),
        fts_table: table_name(schema.collection()),
        vocab_table: vocab_name(schema.collection()),
        fields: schema.fts_fields().map(|(f, w)| (f.name(), w)).collect(),
        tokenizer: schema.fts_tokenizer(),
    }
}

/// Refuses to search full-text objects built for another type's fields.
pub(crate) fn check_current(meta: &CollectionMeta) -> Result<()> {
    if meta.fts_current {
        return Ok(());
    }
    Err(Error::SchemaMismatch {
        collection: meta.collection.to_owned(),
        field: String::new(),
        reason: format!(
            "the collection's full-text fields or tokenizer were changed by another type since `{}` opened it; \
             open the collection again to rebuild the index for this type",
            meta.schema.type_name()
        ),
    })
}
