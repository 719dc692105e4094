//! The warm tier (`--warm-only`): a warm-hit `Collection::get` against a raw rusqlite get
//! (prepared `SELECT _doc FROM docs WHERE _id = ?` + serde_json decode) of the same
//! documents, db4's `get` with the tiers off, the miss path with the warm tier on (a fresh
//! handle, so every get misses and fills), and what the warm tier adds to writes (one
//! `update` per document, warm on with every document cached, against warm off).
//!
//! Every side reads the same random picks; the checksums of what they read must agree.

use crate::data::{Doc, SEED, SplitMix64};
use crate::measure::{format_duration, median};
use crate::raw::{BoxResult, Layout, RawStore};
use crate::{Config, fold, remove_database};
use db4::tier::TierConfig;
use db4::{Collection, Db, DbOptions, Synchronous};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// At most this many documents: the section measures per-operation costs, not scale.
const MAX_DOCS: usize = 20_000;

/// `synchronous = NORMAL`, so the writes measure db4's work rather than the fsync.
fn with_warm(config: &Config, bytes: usize) -> DbOptions {
    config.db4_options().synchronous(Synchronous::Normal).tiers(TierConfig { warm_bytes: bytes, ..Default::default() })
}

/// Times `op` over `ids` `reps` times; the median per operation, and the checksum.
fn time_gets(reps: usize, ids: &[&str], mut op: impl FnMut(&str) -> BoxResult<Doc>) -> BoxResult<(Duration, u64)> {
    let mut times = Vec::with_capacity(reps);
    let mut sum = 0;
    for _ in 0..reps {
        sum = 0;
        let start = Instant::now();
        for &id in ids {
            sum = fold(sum, &op(black_box(id))?);
        }
        times.push(start.elapsed() / ids.len() as u32);
    }
    Ok((median(&times), sum))
}

fn get(c: &Collection<Doc>, id: &str) -> BoxResult<Doc> {
    Ok(c.get(id)?.ok_or("document missing")?)
}

/// Runs the section and prints its table.
pub fn run(config: &Config, docs: &[Doc]) -> BoxResult<()> {
    let docs = &docs[..docs.len().min(MAX_DOCS)];
    let json: usize = docs.iter().map(|d| serde_json::to_string(d).map(|s| s.len())).sum::<Result<_, _>>()?;
    let budget = 64 << 20;
    let on_path = config.dir.join("warm-on.sqlite");
    let off_path = config.dir.join("warm-off.sqlite");
    let raw_path = config.dir.join("warm-raw.sqlite");
    for p in [&on_path, &off_path, &raw_path] {
        remove_database(p)?;
    }
    let on_db = Db::open_with(&on_path, with_warm(config, budget))?;
    let on = on_db.collection::<Doc>()?;
    on.insert_many(docs)?;
    let off_db = Db::open_with(&off_path, with_warm(config, 0))?;
    let off = off_db.collection::<Doc>()?;
    off.insert_many(docs)?;
    let mut raw = RawStore::open(&raw_path, Layout::Generated)?;
    raw.insert_all(docs)?;

    let mut rng = SplitMix64::new(SEED ^ 0x7761_726d);
    let picks: Vec<&str> = (0..docs.len()).map(|_| docs[rng.below(docs.len() as u64) as usize].id.as_str()).collect();
    let expected = picks
        .iter()
        .map(|id| docs.iter().find(|d| d.id == *id))
        .try_fold(0, |sum, d| d.map(|d| fold(sum, d)).ok_or("a pick is not among the documents"))?;

    println!(
        "warm tier: {} docs (avg {} bytes of JSON), {} gets per rep, {} reps, median per operation",
        docs.len(),
        json / docs.len(),
        picks.len(),
        config.reps
    );
    println!("  budget {} MiB (every document fits); files in {}", budget >> 20, config.dir.display());

    // Fill the warm tier (every document once), then only hits.
    for d in docs {
        get(&on, &d.id)?;
    }
    let (raw_t, raw_sum) = time_gets(config.reps, &picks, |id| Ok(raw.get(id)?.ok_or("document missing")?))?;
    let (off_t, off_sum) = time_gets(config.reps, &picks, |id| get(&off, id))?;
    let before = on_db.tier_stats()?.warm;
    let (hit_t, hit_sum) = time_gets(config.reps, &picks, |id| get(&on, id))?;
    let after = on_db.tier_stats()?.warm;
    let hits = after.hits - before.hits;
    if hits != (config.reps * picks.len()) as u64 || after.misses != before.misses {
        return Err(format!("warm gets were not all hits: {before:?} -> {after:?}").into());
    }

    // The miss path: a handle whose budget holds a few hundred documents, reading every
    // document once per rep in id order, so each get misses, reads SQLite, fills and evicts.
    let distinct: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    let miss_db = Db::open_with(&on_path, with_warm(config, 256 << 10))?;
    let miss = miss_db.collection::<Doc>()?;
    let before = miss_db.tier_stats()?.warm;
    let (miss_t, miss_sum) = time_gets(config.reps, &distinct, |id| get(&miss, id))?;
    let after = miss_db.tier_stats()?.warm;
    let miss_share = (after.misses - before.misses) as f64 / (config.reps * distinct.len()) as f64;

    // The same hits on an in-memory database: no check of the file for other processes'
    // commits (the -shm read), which is what a hit costs beyond the cache itself.
    let mem_db = Db::open_in_memory_with(with_warm(config, budget))?;
    let mem = mem_db.collection::<Doc>()?;
    mem.insert_many(docs)?;
    for d in docs {
        get(&mem, &d.id)?;
    }
    let (mem_t, mem_sum) = time_gets(config.reps, &picks, |id| get(&mem, id))?;
    let (off_distinct_t, off_distinct_sum) = time_gets(config.reps, &distinct, |id| get(&off, id))?;
    if [raw_sum, off_sum, hit_sum, mem_sum].iter().any(|&s| s != expected) || miss_sum != off_distinct_sum {
        return Err("the sides read different documents".into());
    }

    // Writes: one update per document, outside transactions (each its own commit), with the
    // warm tier holding every document (so each write drops an entry) against warm off.
    let writes = &docs[..docs.len().min(2_000)];
    let mut write_times = [Vec::new(), Vec::new()];
    for rep in 0..config.reps {
        for (side, c) in [&on, &off].into_iter().enumerate() {
            for d in writes {
                get(c, &d.id)?;
            }
            let updated: Vec<Doc> = writes.iter().map(|d| Doc { views: rep as u64 + 1, ..d.clone() }).collect();
            let start = Instant::now();
            for d in &updated {
                c.update(black_box(d))?;
            }
            write_times[side].push(start.elapsed() / writes.len() as u32);
        }
    }
    for d in writes {
        if get(&on, &d.id)?.views != config.reps as u64 || get(&off, &d.id)?.views != config.reps as u64 {
            return Err("an update is missing".into());
        }
    }
    let (write_on, write_off) = (median(&write_times[0]), median(&write_times[1]));

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!();
    println!("| measurement | time per op | vs raw rusqlite get |");
    println!("|---|---:|---:|");
    println!("| raw rusqlite get (prepared SELECT + serde_json) | {} | 1.00× |", format_duration(raw_t));
    println!("| db4 get, tiers off | {} | {:.2}× |", format_duration(off_t), ratio(off_t, raw_t));
    println!("| db4 get, warm hit | {} | **{:.2}×** (target ≤ 0.25×) |", format_duration(hit_t), ratio(hit_t, raw_t));
    println!(
        "| db4 get, warm hit, in-memory database (no -shm check) | {} | {:.2}× |",
        format_duration(mem_t),
        ratio(mem_t, raw_t)
    );
    println!(
        "| db4 get, warm miss + fill + evict ({:.0}% misses) | {} | {:.2}× ({:.2}× db4 off on the same ids) |",
        miss_share * 100.0,
        format_duration(miss_t),
        ratio(miss_t, raw_t),
        ratio(miss_t, off_distinct_t)
    );
    println!();
    println!("| write (update, synchronous = NORMAL, one commit each) | time per op |");
    println!("|---|---:|");
    println!("| warm off | {} |", format_duration(write_off));
    println!(
        "| warm on, document cached | {} ({:+.1}%) |",
        format_duration(write_on),
        (ratio(write_on, write_off) - 1.0) * 100.0
    );
    let s = on_db.tier_stats()?.warm;
    println!();
    println!(
        "warm tier after the run: {} entries, {} bytes of {}, hit rate {:.3}, {} evictions",
        s.entries,
        s.bytes,
        s.capacity,
        s.hit_rate(),
        s.evictions
    );
    Ok(())
}
