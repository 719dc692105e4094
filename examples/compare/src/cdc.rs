//! What db4's change log costs: the same work with the log on (the default) and off
//! (`DbOptions::change_log(false)`), in the same run, and how fast the log reads back.
//!
//! - `insert_many` of the corpus into a fresh file, log on versus off (and the hand-written
//!   rusqlite baseline, for scale), each repetition in a rotating order;
//! - transactions of 10 updates, log on versus off, at `synchronous = FULL` and `NORMAL`,
//!   interleaved in chunks of transactions;
//! - `changes_since(Lsn::ZERO)` over the whole log the insert wrote, in events per second
//!   (each event read, CRC-checked and decoded into a `ChangeEvent`).
//!
//! Every round is checked: the log-on database holds one event per write, the log-off one
//! none, and the documents match.

use crate::data::{Doc, SEED, SplitMix64};
use crate::measure::{format_duration, median};
use crate::raw::{BoxResult, Layout};
use crate::{Config, UPDATES_PER_TXN, raw_insert, remove_database};
use db4::{Collection, Db, Lsn, Synchronous};
use std::time::{Duration, Instant};

/// The insert's target: the log may cost at most this much (moonshot 1.1).
const INSERT_TARGET: f64 = 1.2;
/// Transactions timed per chunk before the other side takes its turn.
const CHUNK: usize = 10;

/// A side of the comparison.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Log {
    On,
    Off,
}

fn open(config: &Config, log: Log, sync: Synchronous) -> BoxResult<(Db, Collection<Doc>)> {
    let path = config.dir.join(if log == Log::On { "cdc-on.sqlite" } else { "cdc-off.sqlite" });
    let db = Db::open_with(path, config.db4_options().synchronous(sync).change_log(log == Log::On))?;
    let docs = db.collection::<Doc>()?;
    Ok((db, docs))
}

fn fresh(config: &Config, log: Log) -> BoxResult<(Db, Collection<Doc>)> {
    let path = config.dir.join(if log == Log::On { "cdc-on.sqlite" } else { "cdc-off.sqlite" });
    remove_database(&path)?;
    open(config, log, Synchronous::Full)
}

/// Aborts unless the log-on database logged `expected` events and the log-off one none.
fn check_log(on: &Db, off: &Db, expected: u64) -> BoxResult<()> {
    let (logged, unlogged) = (on.last_lsn()?.get(), off.last_lsn()?.get());
    if logged != expected || unlogged != 0 {
        return Err(format!(
            "change log: expected {expected} events with the log on and 0 off, found {logged} and {unlogged}"
        )
        .into());
    }
    Ok(())
}

/// Runs the section and prints its figures.
pub fn run(config: &Config, docs: &[Doc]) -> BoxResult<()> {
    println!("db4-compare: the change log, on (default) versus off, same run");
    println!("  build: {}", if cfg!(debug_assertions) { "DEBUG (numbers are meaningless)" } else { "release" });
    println!("  load average at start: {}\n", crate::load_average());

    // 1. insert_many into fresh files, sides rotating; round 0 is a warm-up.
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut read_rates = Vec::new();
    for round in 0..=config.reps {
        let (mut kept_on, mut kept_off) = (None, None);
        for turn in 0..3 {
            let side = (round + turn) % 3;
            if side == 2 {
                let (elapsed, _store) = raw_insert(&config.dir.join("cdc-raw.sqlite"), Layout::Generated, docs)?;
                if round > 0 {
                    times[2].push(elapsed);
                }
                continue;
            }
            let log = if side == 0 { Log::On } else { Log::Off };
            let (db, collection) = fresh(config, log)?;
            let start = Instant::now();
            collection.insert_many(docs)?;
            let elapsed = start.elapsed();
            if round > 0 {
                times[side].push(elapsed);
            }
            if collection.count()? != docs.len() as u64 {
                return Err("insert: wrong document count".into());
            }
            if log == Log::On { kept_on = Some(db) } else { kept_off = Some(db) }
        }
        let (db, off) =
            (kept_on.ok_or("the log-on side did not run")?, kept_off.ok_or("the log-off side did not run")?);
        check_log(&db, &off, docs.len() as u64)?;
        // 3. Read the whole log back.
        let start = Instant::now();
        let mut n = 0u64;
        let mut last = Lsn::ZERO;
        for event in db.changes_since(Lsn::ZERO)? {
            let event = event?;
            if event.lsn <= last {
                return Err("changes_since: LSNs out of order".into());
            }
            last = event.lsn;
            n += 1;
        }
        let elapsed = start.elapsed();
        if n != docs.len() as u64 {
            return Err(format!("changes_since: {n} events for {} inserts", docs.len()).into());
        }
        if round > 0 {
            read_rates.push(n as f64 / elapsed.as_secs_f64());
        }
    }
    let [on, off, raw] = times.map(|t| median(&t));
    let ratio = on.as_secs_f64() / off.as_secs_f64();
    println!("insert_many of {} docs (one transaction):", docs.len());
    println!(
        "  log on {}   log off {}   on/off {ratio:.3} (target <= {INSERT_TARGET}: {})   raw rusqlite {}   on/raw {:.3}   off/raw {:.3}",
        format_duration(on),
        format_duration(off),
        if ratio <= INSERT_TARGET { "met" } else { "MISSED" },
        format_duration(raw),
        on.as_secs_f64() / raw.as_secs_f64(),
        off.as_secs_f64() / raw.as_secs_f64(),
    );
    read_rates.sort_by(f64::total_cmp);
    println!(
        "changes_since(Lsn::ZERO) over {} events: median {:.0} events/s (min {:.0}, max {:.0})\n",
        docs.len(),
        read_rates[read_rates.len() / 2],
        read_rates[0],
        read_rates[read_rates.len() - 1]
    );

    // 2. Transactions of 10 updates, the two sides interleaved by chunks.
    for (sync, txns) in [(Synchronous::Full, config.txns), (Synchronous::Normal, config.txns * 4)] {
        let sides = [open(config, Log::On, sync)?, open(config, Log::Off, sync)?];
        let before = [sides[0].0.last_lsn()?.get(), sides[1].0.last_lsn()?.get()];
        if before[1] != 0 {
            return Err("the log-off database holds events".into());
        }
        let mut rng = SplitMix64::new(SEED ^ 0x6364_6331);
        let mut times: [Vec<Duration>; 2] = Default::default();
        let mut written = 0u64;
        for round in 0..=config.reps {
            let batches: Vec<Vec<Doc>> = (0..txns)
                .map(|_| {
                    (0..UPDATES_PER_TXN)
                        .map(|k| {
                            let mut doc = docs[(rng.below(docs.len() as u64 / UPDATES_PER_TXN as u64) as usize)
                                * UPDATES_PER_TXN
                                + k]
                                .clone();
                            doc.views = rng.below(1_000_000);
                            doc
                        })
                        .collect()
                })
                .collect();
            let mut total = [Duration::ZERO; 2];
            for (c, chunk) in batches.chunks(CHUNK).enumerate() {
                for turn in 0..2 {
                    let side = (c + turn + round) % 2;
                    let (db, _) = &sides[side];
                    let start = Instant::now();
                    for batch in chunk {
                        db.transaction(|tx| {
                            let docs = tx.collection::<Doc>()?;
                            batch.iter().try_for_each(|doc| docs.update(doc).map(drop))
                        })?;
                    }
                    total[side] += start.elapsed();
                }
            }
            written += (txns * UPDATES_PER_TXN) as u64;
            if round > 0 {
                times[0].push(total[0]);
                times[1].push(total[1]);
            }
        }
        check_log(&sides[0].0, &sides[1].0, before[0] + written)?;
        let [on, off] = times.map(|t| median(&t));
        println!(
            "transaction of {UPDATES_PER_TXN} updates, {:?}, {txns} txns: log on {} per txn   log off {} per txn   on/off {:.3}",
            sync,
            format_duration(on / txns as u32),
            format_duration(off / txns as u32),
            on.as_secs_f64() / off.as_secs_f64()
        );
    }
    println!("\n  load average at end: {}", crate::load_average());
    Ok(())
}
