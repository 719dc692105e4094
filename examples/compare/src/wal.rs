//! `MemoryWal::append` throughput: db4's write-ahead log on its own, without SQLite (so
//! there is no raw baseline; the figure is records per second against a fixed target).
//!
//! Each repetition appends `records` records to a fresh log, in chunks of [`CHUNK`]: a chunk
//! of records is built untimed, then its appends are timed (the record is moved into the
//! log, so encoding it, checksumming it and dropping it count; freeing the chunk's vector
//! does not). After each chunk the log is
//! checked (its last LSN) and truncated, untimed, so memory stays bounded.

use crate::data::{Doc, SplitMix64};
use crate::raw::BoxResult;
use db4::wal::{Lsn, MemoryWal, WalConfig, WalRecord};
use serde_json::json;
use std::time::{Duration, Instant};

/// Records built at a time, outside the timing.
const CHUNK: usize = 10_000;

/// The target for small records with checksums.
const TARGET_RECORDS_PER_S: f64 = 1e6;

/// One WAL workload's timings.
pub struct WalFigure {
    name: &'static str,
    records: usize,
    record_bytes: f64,
    times: Vec<Duration>,
    target: Option<f64>,
}

/// A small record: an insert of a user-ish document of about 100 bytes of JSON text (as db4
/// stores it and a `Change` carries it), with a version and a transaction id (about 170 bytes
/// encoded).
fn small_record(rng: &mut SplitMix64, n: u64) -> WalRecord {
    let doc = json!({
        "name": format!("user-{n}"),
        "email": format!("user-{n}@example.com"),
        "n": rng.below(1_000_000),
        "active": n.is_multiple_of(3),
        "tags": ["a", "b"],
    });
    WalRecord::insert("users", format!("{n:016x}"), doc.to_string()).version(1).tx_id(n / 4)
}

/// A document-sized record: an update of a benchmark [`Doc`] (about 830 bytes of JSON) with
/// its after image only.
fn doc_record(docs: &[Doc], n: u64) -> BoxResult<WalRecord> {
    let doc = &docs[n as usize % docs.len()];
    Ok(WalRecord::update("docs", doc.id.clone(), serde_json::to_string(doc)?).version(n))
}

/// Appends `records` records made by `make` to a fresh log, `reps` times after one warm-up
/// round; returns the timings and the average encoded record size.
fn run(
    name: &'static str,
    config: WalConfig,
    records: usize,
    reps: usize,
    target: Option<f64>,
    mut make: impl FnMut(u64) -> BoxResult<WalRecord>,
) -> BoxResult<WalFigure> {
    let mut figure = WalFigure { name, records, record_bytes: 0.0, times: Vec::new(), target };
    for round in 0..=reps {
        let mut wal = MemoryWal::new(config.clone());
        let mut time = Duration::ZERO;
        let mut bytes = 0u64;
        let mut next = 0u64;
        while (next as usize) < records {
            let n = CHUNK.min(records - next as usize);
            let mut chunk = (next..next + n as u64).map(&mut make).collect::<BoxResult<Vec<_>>>()?;
            let start = Instant::now();
            for record in chunk.drain(..) {
                wal.append(record)?;
            }
            time += start.elapsed();
            // The chunk's own buffer is freed outside the timing.
            drop(chunk);
            next += n as u64;
            let stats = wal.stats();
            if stats.last_lsn != Lsn::new(next) {
                return Err(format!("{name}: the log's last LSN is {}, expected {next}", stats.last_lsn).into());
            }
            bytes += stats.bytes;
            wal.truncate(stats.last_lsn);
        }
        if round > 0 {
            figure.times.push(time);
            figure.record_bytes = bytes as f64 / records as f64;
        }
    }
    Ok(figure)
}

/// The WAL workloads: small records with and without checksums, document-sized records.
pub fn bench(records: usize, reps: usize, docs: &[Doc]) -> BoxResult<Vec<WalFigure>> {
    let config = WalConfig::default();
    let mut rng = SplitMix64::new(crate::data::SEED ^ 0x7761_6c00);
    let mut figures = Vec::new();
    let small = "MemoryWal::append, small records, checksums on";
    figures.push(run(small, config.clone(), records, reps, Some(TARGET_RECORDS_PER_S), |n| {
        Ok(small_record(&mut rng, n))
    })?);
    let mut rng = SplitMix64::new(crate::data::SEED ^ 0x7761_6c00);
    let off = "MemoryWal::append, small records, checksums off";
    figures.push(run(off, config.clone().checksums(false), records, reps, None, |n| Ok(small_record(&mut rng, n)))?);
    let big = "MemoryWal::append, document-sized records, checksums on";
    figures.push(run(big, config, records / 4, reps, None, |n| doc_record(docs, n))?);
    Ok(figures)
}

/// Prints the WAL figures as a Markdown table, then every repetition's times.
pub fn report(figures: &[WalFigure]) {
    println!("write-ahead log (db4 alone; medians):");
    println!("| operation | records per rep | bytes per record | time | records/s | MB/s | target | met |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for f in figures {
        let t = crate::measure::median(&f.times);
        let rate = f.records as f64 / t.as_secs_f64();
        let (target, met) = match f.target {
            Some(want) => (format!("≥ {:.1} M records/s", want / 1e6), if rate >= want { "yes" } else { "**no**" }),
            None => ("—".to_owned(), "—"),
        };
        println!(
            "| {} | {} | {:.0} | {} | {:.2} M | {:.0} | {target} | {met} |",
            f.name,
            f.records,
            f.record_bytes,
            crate::measure::format_duration(t),
            rate / 1e6,
            rate * f.record_bytes / 1e6,
        );
    }
    println!();
    for f in figures {
        let list = f.times.iter().map(|&t| crate::measure::format_duration(t)).collect::<Vec<_>>().join(", ");
        println!("  {}: {list}", f.name);
    }
}
