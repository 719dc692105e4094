//! The shard router against one database: the ring lookup, a routed insert against an insert
//! into one database, and a scatter-gather top-100 over 16 shards against the same query on one
//! database holding the same documents.
//!
//! - ring lookup: `HashRing::shard_for` (xxh3 + the slice table) over 1024 keys, and
//!   `ShardRouter::shard_for` (the key as a value, its bytes, the routing lock);
//! - insert: `ShardRouter::insert` into 16 fresh shard files against `Collection::insert` into
//!   one fresh file, one call per document (each its own transaction), sides alternating;
//! - top-100: `order_by(created_at desc).limit(100)` on the router (16 shards, each asked for
//!   100, merged) against the same query on the one database, interleaved; results compared.

use crate::Config;
use crate::data::{SEED, SplitMix64};
use crate::measure::{format_duration, median};
use crate::raw::BoxResult;
use db4::shard::{DirTransport, HashRing, ShardRouter, ShardRouterConfig};
use db4::{Collection, Db, DbOptions, Document, Synchronous};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SHARDS: u32 = 16;
/// The targets of the issue.
const INSERT_TARGET: f64 = 0.9;
const TOP_TARGET: f64 = 2.0;
const LOOKUP_TARGET_NS: f64 = 25.0;

/// An event of one of 10 000 accounts (about 300 bytes of JSON).
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "events")]
pub struct Event {
    #[id]
    id: String,
    #[partition_key]
    account: String,
    #[range_index]
    created_at: i64,
    kind: String,
    body: String,
    views: u64,
}

fn events(n: usize) -> Vec<Event> {
    let mut rng = SplitMix64::new(SEED ^ 0x5348_4152_4453);
    (0..n)
        .map(|i| Event {
            id: format!("{:016x}", crate::data::mix64(i as u64 ^ SEED)),
            account: format!("account-{:05}", rng.below(10_000)),
            created_at: 1_700_000_000_000 + i as i64 * 37,
            kind: ["click", "view", "buy", "share"][rng.below(4) as usize].to_owned(),
            body: "lorem ipsum dolor sit amet ".repeat(8 + rng.below(4) as usize),
            views: rng.below(1000),
        })
        .collect()
}

/// Runs the section and prints its figures.
pub fn run(config: &Config) -> BoxResult<()> {
    println!("db4-compare: the shard router ({SHARDS} shards) against one database");
    println!("  build: {}", if cfg!(debug_assertions) { "DEBUG (numbers are meaningless)" } else { "release" });
    println!("  load average at start: {}\n", crate::load_average());
    lookups(config)?;
    let insert_docs = config.docs.min(5_000);
    let docs = events(config.docs);
    inserts(config, &docs[..insert_docs], None, Synchronous::Full)?;
    inserts(config, &docs[..insert_docs], None, Synchronous::Normal)?;
    if docs.len() >= 2 * insert_docs {
        // The same, into files that took as many inserts before (untimed): every WAL file has
        // grown to its working size, as a long-running database's has, so neither side pays
        // for growing it. Fresh files measure the router while each of its 16 WALs grows
        // through its first checkpoint, the one database only for the first fifth of its
        // inserts.
        let warm = &docs[insert_docs..2 * insert_docs];
        inserts(config, &docs[..insert_docs], Some(warm), Synchronous::Full)?;
    }
    top(config, &docs)?;
    println!("\n  load average at end: {}", crate::load_average());
    Ok(())
}

fn lookups(config: &Config) -> BoxResult<()> {
    let ring = HashRing::new(SHARDS, 128)?;
    let keys: Vec<String> = (0..1024).map(|i| format!("account-{i:05}")).collect();
    let calls = 4_000_000usize;
    let mut ring_times = Vec::new();
    for _ in 0..config.reps {
        let start = Instant::now();
        let mut sum = 0u64;
        for i in 0..calls {
            sum += u64::from(ring.shard_for(black_box(keys[i & 1023].as_bytes())).get());
        }
        black_box(sum);
        ring_times.push(start.elapsed());
    }
    let router = ShardRouter::<Event>::in_memory(ShardRouterConfig { shard_count: SHARDS, ..Default::default() })?;
    let mut router_times = Vec::new();
    for _ in 0..config.reps {
        let start = Instant::now();
        let mut sum = 0u64;
        for i in 0..calls / 4 {
            sum += u64::from(router.shard_for(black_box(&keys[i & 1023]))?.get());
        }
        black_box(sum);
        router_times.push(start.elapsed() * 4);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e9 / calls as f64;
    let (ring_ns, router_ns) = (per(median(&ring_times)), per(median(&router_times)));
    println!(
        "ring lookup, {SHARDS} × 128 points, 12-byte keys: HashRing::shard_for {ring_ns:.1} ns (target <= \
         {LOOKUP_TARGET_NS} ns: {})   ShardRouter::shard_for {router_ns:.1} ns",
        if ring_ns <= LOOKUP_TARGET_NS { "met" } else { "MISSED" }
    );
    Ok(())
}

fn fresh_router(dir: &std::path::Path, sync: Synchronous) -> BoxResult<ShardRouter<Event>> {
    let _ = std::fs::remove_dir_all(dir);
    let transport = DirTransport::new(dir)?.with_options(DbOptions::default().synchronous(sync));
    Ok(ShardRouter::with_transport(transport, ShardRouterConfig { shard_count: SHARDS, ..Default::default() })?)
}

fn fresh_db(path: &std::path::Path, sync: Synchronous) -> BoxResult<Collection<Event>> {
    crate::remove_database(path)?;
    Ok(Db::open_with(path, DbOptions::default().synchronous(sync))?.collection::<Event>()?)
}

fn inserts(config: &Config, docs: &[Event], warm: Option<&[Event]>, sync: Synchronous) -> BoxResult<()> {
    let before = warm.map_or(0, <[Event]>::len) as u64;
    let (dir, file) = (config.dir.join("shards-insert"), config.dir.join("shard-single-insert.sqlite"));
    let mut times: [Vec<Duration>; 2] = Default::default();
    for round in 0..=config.reps {
        for turn in 0..2 {
            let side = (round + turn) % 2;
            let elapsed = if side == 0 {
                let router = fresh_router(&dir, sync)?;
                for s in router.shards() {
                    router.shard(s)?; // open every file before timing
                }
                for d in warm.unwrap_or_default() {
                    router.insert(d)?;
                }
                let start = Instant::now();
                for d in docs {
                    router.insert(d)?;
                }
                let elapsed = start.elapsed();
                if router.query().count()? != before + docs.len() as u64 {
                    return Err("router insert: wrong count".into());
                }
                elapsed
            } else {
                let one = fresh_db(&file, sync)?;
                for d in warm.unwrap_or_default() {
                    one.insert(d)?;
                }
                let start = Instant::now();
                for d in docs {
                    one.insert(d)?;
                }
                let elapsed = start.elapsed();
                if one.count()? != before + docs.len() as u64 {
                    return Err("single insert: wrong count".into());
                }
                elapsed
            };
            if round > 0 {
                times[side].push(elapsed);
            }
        }
    }
    let [routed, single] = times.map(|t| median(&t));
    let throughput = single.as_secs_f64() / routed.as_secs_f64();
    println!(
        "insert, {} docs one call each ({sync:?}{}): router {} per insert   one database {} per insert   \
         throughput router/one {throughput:.3} (target >= {INSERT_TARGET}: {})",
        docs.len(),
        if before > 0 { format!(", into files that took {before} inserts before") } else { String::new() },
        format_duration(routed / docs.len() as u32),
        format_duration(single / docs.len() as u32),
        if throughput >= INSERT_TARGET { "met" } else { "MISSED" }
    );
    Ok(())
}

fn top(config: &Config, docs: &[Event]) -> BoxResult<()> {
    let (dir, file) = (config.dir.join("shards-top"), config.dir.join("shard-single-top.sqlite"));
    let router = fresh_router(&dir, Synchronous::Normal)?;
    let one = fresh_db(&file, Synchronous::Normal)?;
    // Loaded untimed, in batches, straight into each shard and into the one database.
    for chunk in docs.chunks(10_000) {
        one.insert_many(chunk)?;
        let mut by_shard: std::collections::BTreeMap<db4::shard::ShardId, Vec<&Event>> = Default::default();
        for d in chunk {
            by_shard.entry(router.shard_for(&d.account)?).or_default().push(d);
        }
        for (s, part) in by_shard {
            router.shard(s)?.insert_many(part)?;
        }
    }
    let f = Event::fields();
    let queries = config.queries * 10;
    let mut times: [Vec<Duration>; 2] = Default::default();
    let expected: Vec<String> =
        one.query().order_by(f.created_at.desc()).limit(100).all()?.into_iter().map(|e| e.id).collect();
    for round in 0..=config.reps {
        let mut total = [Duration::ZERO; 2];
        for q in 0..queries {
            for turn in 0..2 {
                let side = (q + turn + round) % 2;
                let start = Instant::now();
                let page = if side == 0 {
                    router.query().order_by(f.created_at.desc()).limit(100).all()?
                } else {
                    one.query().order_by(f.created_at.desc()).limit(100).all()?
                };
                total[side] += start.elapsed();
                if page.len() != 100 || page[0].id != expected[0] || page[99].id != expected[99] {
                    return Err("top-100: the router and the one database disagree".into());
                }
            }
        }
        if round > 0 {
            times[0].push(total[0] / queries as u32);
            times[1].push(total[1] / queries as u32);
        }
    }
    let [routed, single] = times.map(|t| median(&t));
    let ratio = routed.as_secs_f64() / single.as_secs_f64();
    println!(
        "top-100 by created_at desc over {} docs: router ({SHARDS} shards) {}   one database {}   time ratio \
         {ratio:.2} (target <= {TOP_TARGET}: {})",
        docs.len(),
        format_duration(routed),
        format_duration(single),
        if ratio <= TOP_TARGET { "met" } else { "MISSED" }
    );
    Ok(())
}
