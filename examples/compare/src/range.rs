//! Ranges and keyset cursors (issue 11): paging through every document in pages of 100 with
//! db4's range builder against hand-written rusqlite keyset paging on the same index, and the
//! status+tenant query answered by the declared composite index `by_tenant_status_created`.
//!
//! - `fetch` + `after`: one page per call, continued from the previous page's `next` cursor
//!   (through its text, as a web API would hand it out), interleaved with the other sides
//!   in chunks of pages;
//! - `iter(100)`: whole walks, the side going first rotating;
//! - `range_index("by_tenant_status_created").prefix((tenant, status))`: the newest 100 of
//!   one tenant in one status, against the raw query on the same schema and on stored
//!   columns (which have the same index).
//!
//! Every side must return the same documents in the same order (checksums).

use crate::data::{self, Doc, SEED, SplitMix64, Status, TENANTS};
use crate::measure::{Measurement, SIDES, Target, interleaved};
use crate::raw::{BoxResult, RawStore};
use crate::{QUERY_LIMIT, Stores, fold};
use db4::{Collection, Cursor};
use std::cell::RefCell;
use std::hint::black_box;
use std::time::Instant;

/// Documents per page.
const PAGE: usize = 100;
/// Pages each side reads before the next side takes its turn.
const CHUNK: usize = 50;

/// The measurements of this section.
pub fn bench(config: &crate::Config, docs: &[Doc], stores: &Stores) -> BoxResult<Vec<Measurement>> {
    let mut by_key: Vec<&Doc> = docs.iter().collect();
    by_key.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let expected = by_key.iter().fold(0, |sum, d| fold(sum, d));
    print_plans(stores)?;
    Ok(vec![
        bench_fetch_pages(config, docs.len(), expected, stores)?,
        bench_iter(config, docs.len(), expected, stores)?,
        bench_composite(config, docs, stores)?,
    ])
}

fn print_plans(stores: &Stores) -> BoxResult<()> {
    let plan = |conn: &rusqlite::Connection| -> BoxResult<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", crate::raw::NEXT_PAGE))?;
        let rows = stmt.query_map(rusqlite::params![0, "", 1], |r| r.get::<_, String>(3))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?.join("; "))
    };
    println!("keyset paging by (created_at, id), {PAGE} per page");
    println!("  raw plan: {}", plan(stores.raw.connection())?);
    println!("  raw plan on stored columns: {}\n", plan(stores.stored.connection())?);
    Ok(())
}

/// db4's next page: after `cursor`, or the first.
fn db4_page(db4: &Collection<Doc>, cursor: Option<&Cursor>) -> db4::Result<db4::Page<Doc>> {
    let range = db4.range(Doc::fields().created_at).limit(PAGE);
    match cursor {
        Some(c) => range.after(c).fetch(),
        None => range.fetch(),
    }
}

/// A raw side's keyset walk, one page per call; page 0 starts over.
fn raw_pager(store: &RawStore) -> impl Fn(&usize, u64) -> BoxResult<u64> + '_ {
    let position: RefCell<Option<crate::raw::KeysetPosition>> = RefCell::new(None);
    move |&page, sum| {
        let after = if page == 0 { None } else { position.borrow().clone() };
        let (docs, last) = store.keyset_page(after.as_ref(), PAGE as i64)?;
        *position.borrow_mut() = last;
        Ok(docs.iter().fold(sum, fold))
    }
}

fn bench_fetch_pages(config: &crate::Config, n: usize, expected: u64, stores: &Stores) -> BoxResult<Measurement> {
    let pages: Vec<usize> = (0..n.div_ceil(PAGE)).collect();
    let Stores { db4, raw, stored, .. } = stores;
    let cursor: RefCell<Option<String>> = RefCell::new(None);
    let db4_op = |&page: &usize, sum| {
        let after = if page == 0 { None } else { cursor.borrow().as_deref().map(Cursor::parse).transpose()? };
        let got = db4_page(db4, after.as_ref())?;
        *cursor.borrow_mut() = got.next.map(|c| c.to_string());
        Ok(got.items.iter().fold(sum, fold))
    };
    let (raw_op, stored_op) = (raw_pager(raw), raw_pager(stored));
    let name = format!("page through all docs by created_at, {PAGE} per page: fetch + after(cursor)");
    let mut m = Measurement::new(name, n, "rows", Some(Target::MinThroughputRatio(0.9)));
    // An untimed warm-up round first, which also checks every side.
    let mut warm_up = Measurement::new("warm-up", n, "rows", None);
    interleaved(1, &mut warm_up, &pages, CHUNK, expected, [&db4_op, &raw_op, &stored_op])?;
    interleaved(config.reps, &mut m, &pages, CHUNK, expected, [&db4_op, &raw_op, &stored_op])?;
    Ok(m)
}

/// A raw side's whole keyset walk.
fn raw_walk(store: &RawStore, mut sum: u64) -> BoxResult<u64> {
    let mut after = None;
    loop {
        let (docs, last) = store.keyset_page(after.as_ref(), PAGE as i64)?;
        sum = docs.iter().fold(sum, fold);
        if docs.len() < PAGE {
            return Ok(sum);
        }
        after = last;
    }
}

fn bench_iter(config: &crate::Config, n: usize, expected: u64, stores: &Stores) -> BoxResult<Measurement> {
    let Stores { db4, raw, stored, .. } = stores;
    let db4_op =
        |_: &(), sum| db4.range(Doc::fields().created_at).iter(PAGE).try_fold(sum, |sum, d| Ok(fold(sum, &d?)));
    let raw_op = |_: &(), sum| raw_walk(raw, sum);
    let stored_op = |_: &(), sum| raw_walk(stored, sum);
    let name = format!("walk all docs by created_at with iter({PAGE})");
    let mut m = Measurement::new(name, n, "rows", Some(Target::MinThroughputRatio(0.9)));
    let start = Instant::now();
    let mut warm_up = Measurement::new("warm-up", n, "rows", None);
    interleaved(1, &mut warm_up, &[()], 1, expected, [&db4_op, &raw_op, &stored_op])?;
    println!("whole walks: warm-up of the three sides in {:.2} s", start.elapsed().as_secs_f64());
    interleaved(config.reps, &mut m, &[()], 1, expected, [&db4_op, &raw_op, &stored_op])?;
    Ok(m)
}

/// The newest 100 of one tenant in one status through the composite index's range.
fn db4_composite(db4: &Collection<Doc>, status: Status, tenant: &str) -> db4::Result<Vec<Doc>> {
    Ok(db4.range_index("by_tenant_status_created").prefix((tenant, status)).limit(QUERY_LIMIT).fetch()?.items)
}

fn bench_composite(config: &crate::Config, docs: &[Doc], stores: &Stores) -> BoxResult<Measurement> {
    let mut rng = SplitMix64::new(SEED ^ 0x636f_6d70);
    let params: Vec<(Status, String)> =
        (0..config.queries).map(|_| (Status::ALL[rng.below(4) as usize], data::tenant(rng.below(TENANTS)))).collect();
    let Stores { db4, raw, stored, .. } = stores;
    let limit = QUERY_LIMIT as i64;
    let groups = crate::newest_by_status_and_tenant(docs);
    let (expected, rows) = crate::check_query_results(
        &params,
        |(s, t)| groups.get(&(*s, t.as_str())).cloned().unwrap_or_default(),
        [&|(s, t)| Ok(db4_composite(db4, *s, t)?), &|(s, t)| raw.tenant_query(*s, t, limit), &|(s, t)| {
            stored.tenant_query(*s, t, limit)
        }],
    )?;
    println!(
        "status+tenant through range_index(..).prefix((tenant, status)): {rows} documents from {} queries\n",
        params.len()
    );
    let db4_op = |(s, t): &(Status, String), sum| Ok(db4_composite(db4, *s, black_box(t))?.iter().fold(sum, fold));
    let raw_op = |(s, t): &(Status, String), sum| Ok(raw.tenant_query(*s, black_box(t), limit)?.iter().fold(sum, fold));
    let stored_op =
        |(s, t): &(Status, String), sum| Ok(stored.tenant_query(*s, black_box(t), limit)?.iter().fold(sum, fold));
    let name = "range_index(by_tenant_status_created).prefix((tenant, status)), newest 100";
    let mut m =
        Measurement::new(name, params.len(), "queries", Some(Target::MaxTimeRatio(1.0))).against(SIDES.len() - 1);
    interleaved(config.reps, &mut m, &params, 2, expected, [&db4_op, &raw_op, &stored_op])?;
    Ok(m)
}
