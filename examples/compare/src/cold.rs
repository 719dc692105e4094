//! The cold tier (issue 13): what compaction costs and saves, and what a cold read costs.
//!
//! - `insert_many` of the corpus into a fresh file with a `DirStore` cold tier, then
//!   `Db::compact` with `hot_max_documents` = half the corpus (the oldest half by
//!   `created_at` moves): documents/s and MB/s of the stored JSON moved, the segments' bytes;
//! - the database file before and after (each measured after a WAL checkpoint; "after" also
//!   after `VACUUM`, which returns the freed pages), i.e. the hot-tier bytes saved;
//! - `get` of random hot ids against `get` of random cold ids, the two interleaved in chunks,
//!   median µs per get over the repetitions (a cold get: the hot miss, the segment lookup
//!   through id range + bloom, one ranged read of a ~64 KiB block, its CRC, inflating and
//!   parsing it).
//!
//! Every get is checked against the corpus.

use crate::Config;
use crate::data::{Doc, SEED, SplitMix64};
use crate::measure::median;
use crate::raw::BoxResult;
use db4::prelude::*;
use db4::tier::DirStore;
use std::time::{Duration, Instant};

/// Gets timed per chunk before the other side takes its turn.
const CHUNK: usize = 200;

fn file_bytes(path: &std::path::Path, vacuum: bool) -> BoxResult<u64> {
    let conn = rusqlite::Connection::open(path)?;
    if vacuum {
        conn.execute_batch("VACUUM")?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((pages * size) as u64)
}

/// Runs the section and prints its figures.
pub fn run(config: &Config, docs: &[Doc]) -> BoxResult<()> {
    let path = config.dir.join("cold.sqlite");
    let store_dir = config.dir.join("cold-segments");
    crate::remove_database(&path)?;
    match std::fs::remove_dir_all(&store_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let keep = docs.len() / 2;
    // The age rule selects nothing; it makes "oldest" mean the smallest `created_at`.
    let policy = CompactionPolicy {
        hot_max_documents: Some(keep as u64),
        older_than: Some(("created_at", i64::MAX)),
        ..Default::default()
    };
    let tiers = TierConfig { warm_bytes: 0, cold: Some(Box::new(DirStore::open(&store_dir)?)), policy };
    let db = Db::open_with(&path, config.db4_options().tiers(tiers))?;
    let c = db.collection::<Doc>()?;
    for chunk in docs.chunks(10_000) {
        c.insert_many(chunk)?;
    }
    drop((c, db));
    let before = file_bytes(&path, false)?;

    let policy = CompactionPolicy {
        hot_max_documents: Some(keep as u64),
        older_than: Some(("created_at", i64::MAX)),
        ..Default::default()
    };
    let tiers = TierConfig { warm_bytes: 0, cold: Some(Box::new(DirStore::open(&store_dir)?)), policy };
    let db = Db::open_with(&path, config.db4_options().tiers(tiers))?;
    let c = db.collection::<Doc>()?;
    let mut by_age: Vec<&Doc> = docs.iter().collect();
    by_age.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let moved_json: usize =
        by_age[..docs.len() - keep].iter().map(|d| serde_json::to_string(d).map_or(0, |s| s.len())).sum();
    let start = Instant::now();
    let report = db.compact()?;
    let took = start.elapsed();
    assert_eq!(report.moved as usize, docs.len() - keep, "compaction moved the older half");
    let after = file_bytes(&path, true)?;

    let cold: Vec<&Doc> = by_age[..docs.len() - keep].to_vec();
    let hot: Vec<&Doc> = by_age[docs.len() - keep..].to_vec();
    let gets = docs.len().min(20_000);
    let mut rng = SplitMix64::new(SEED ^ 0xc01d);
    let sample = |set: &[&Doc], rng: &mut SplitMix64| -> Vec<Doc> {
        (0..gets).map(|_| set[rng.below(set.len() as u64) as usize].clone()).collect()
    };
    let (mut hot_times, mut cold_times) = (Vec::new(), Vec::new());
    for rep in 0..config.reps {
        let (hs, cs) = (sample(&hot, &mut rng), sample(&cold, &mut rng));
        let (mut th, mut tc) = (Duration::ZERO, Duration::ZERO);
        for (i, (hc, cc)) in hs.chunks(CHUNK).zip(cs.chunks(CHUNK)).enumerate() {
            let side = |set: &[Doc], total: &mut Duration| -> BoxResult<()> {
                let t = Instant::now();
                for d in set {
                    let got = c.get(d.id.as_str())?;
                    if got.as_ref() != Some(d) {
                        return Err(format!("get {} returned {got:?}", d.id).into());
                    }
                }
                *total += t.elapsed();
                Ok(())
            };
            // Alternate which side goes first.
            if (i + rep) % 2 == 0 {
                side(hc, &mut th)?;
                side(cc, &mut tc)?;
            } else {
                side(cc, &mut tc)?;
                side(hc, &mut th)?;
            }
        }
        hot_times.push(th);
        cold_times.push(tc);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / gets as f64;
    let (h, cget) = (per(median(&hot_times)), per(median(&cold_times)));
    let secs = took.as_secs_f64();
    println!("cold tier: {} docs, the older {} compacted to a DirStore", docs.len(), report.moved);
    println!(
        "  compaction: {} docs in {:.3} s = {:.0} docs/s, {:.1} MB/s of stored JSON ({:.1} MB moved)",
        report.moved,
        secs,
        report.moved as f64 / secs,
        moved_json as f64 / 1e6 / secs,
        moved_json as f64 / 1e6
    );
    println!(
        "  segments: {} ({} bytes, {:.1}% of the JSON they hold)",
        report.segments,
        report.bytes,
        100.0 * report.bytes as f64 / moved_json.max(1) as f64
    );
    println!(
        "  hot file: {:.1} MB before, {:.1} MB after compaction + VACUUM: {:.1} MB saved ({:.0}%)",
        before as f64 / 1e6,
        after as f64 / 1e6,
        (before as f64 - after as f64) / 1e6,
        100.0 * (before as f64 - after as f64) / before.max(1) as f64
    );
    println!(
        "  get: hot {h:.2} µs, cold {cget:.2} µs ({:.1}× hot); {gets} random gets each per rep, median of {}",
        cget / h,
        config.reps
    );
    Ok(())
}
