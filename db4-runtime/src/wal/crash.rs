//! The file log against damage and killed processes: random bit flips and cuts of segment
//! files, every one detected; a writer killed at random instants, every acknowledged record
//! recovered and nothing torn applied.

use super::disk::SEGMENT_HEADER;
use super::model::{Rng, TempDir, record_from};
use super::record::u32_at;
use super::*;
use crate::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Every entry of the log in `dir`, failing on an early stop.
fn all_entries(wal: &FileWal) -> Vec<WalEntry> {
    let mut out = Vec::new();
    let report = wal
        .replay(Lsn::ZERO, |e| {
            out.push(e.clone());
            Ok(())
        })
        .expect("replay");
    assert!(report.is_complete(), "{report:?}");
    out
}

/// A segment file of the reference log: its first LSN, its bytes, and where each record
/// starts and ends.
struct SegmentFile {
    name: String,
    first: u64,
    bytes: Vec<u8>,
    records: Vec<(usize, usize)>,
}

impl SegmentFile {
    /// The LSN of the record holding byte `at` (of the header: the segment's first).
    fn lsn_at(&self, at: usize) -> u64 {
        let index = self.records.iter().position(|&(_, end)| at < end).unwrap_or(self.records.len());
        self.first + if at < SEGMENT_HEADER { 0 } else { index as u64 }
    }
}

fn reference_segments(dir: &Path) -> Vec<SegmentFile> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            let mut records = Vec::new();
            let mut at = SEGMENT_HEADER;
            while at < bytes.len() {
                let end = at + u32_at(&bytes, at) as usize;
                records.push((at, end));
                at = end;
            }
            let first = name.trim_end_matches(".wal").parse().unwrap();
            SegmentFile { name, first, bytes, records }
        })
        .collect()
}

/// What opening a damaged copy must give.
#[derive(Debug, PartialEq)]
enum Expect {
    /// `WalCorrupted` naming this LSN.
    Error(u64),
    /// A torn tail from this LSN, cut off; the log ends just before.
    TornTail(u64),
    /// A log cut exactly between two records of its last segment: a shorter log, which is
    /// all that is left to see (nothing says more records were ever there).
    EndsBefore(u64),
}

#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    flips: u64,
    cuts: u64,
    errors: u64,
    torn_tails: u64,
    clean_cuts: u64,
}

#[test]
fn random_bit_flips_and_cuts_of_segments_are_all_detected() {
    let cases: u64 = std::env::var("DB4_WAL_DAMAGE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1500);
    let reference = TempDir::new("damage-ref");
    let config = WalConfig::default().max_entries(6).max_size_bytes(4096);
    let options = FileWalOptions { sync_on_append: false };
    let originals: Vec<WalRecord> = (0..22).map(|s| record_from(s * 31 + 5, 120)).collect();
    {
        let mut wal = FileWal::open_with(reference.path(), config.clone(), options).unwrap();
        for r in &originals {
            wal.append(r.clone()).unwrap();
        }
    }
    let segments = reference_segments(reference.path());
    assert_eq!(segments.len(), 4);
    let total = originals.len() as u64;
    let work = TempDir::new("damage");
    let mut rng = Rng(0xDA3A6E);
    let mut tally = Tally::default();
    for case in 0..cases {
        let s = rng.below(segments.len() as u64) as usize;
        let segment = &segments[s];
        let is_last = s + 1 == segments.len();
        let mut damaged = segment.bytes.clone();
        let expect = if rng.below(3) == 0 {
            tally.cuts += 1;
            // One cut in four exactly between two records (or after the header).
            let cut = if rng.below(4) == 0 {
                let starts: Vec<usize> = segment.records.iter().map(|&(start, _)| start).collect();
                starts[rng.below(starts.len() as u64) as usize]
            } else {
                rng.below(damaged.len() as u64) as usize
            };
            damaged.truncate(cut);
            let lsn = segment.lsn_at(cut);
            let on_boundary = cut == SEGMENT_HEADER || segment.records.iter().any(|&(start, _)| start == cut);
            match (is_last, on_boundary && cut >= SEGMENT_HEADER) {
                (false, _) => Expect::Error(lsn),
                (true, true) => Expect::EndsBefore(lsn),
                (true, false) => Expect::TornTail(lsn),
            }
        } else {
            for _ in 0..=rng.below(3) {
                let bit = rng.below(damaged.len() as u64 * 8) as usize;
                damaged[bit / 8] ^= 1 << (bit % 8);
            }
            // The bytes changed (two flips of one bit cancel out).
            let hit: Vec<usize> = (0..damaged.len()).filter(|&i| damaged[i] != segment.bytes[i]).collect();
            if hit.is_empty() {
                continue;
            }
            tally.flips += 1;
            let first_hit = hit.iter().copied().min().unwrap();
            let lsn = segment.lsn_at(first_hit);
            // Damage with an undamaged record after it in the same (last) segment is in the
            // middle of the log; with none, a torn tail. After a damaged header, every record
            // of the segment counts.
            let after = if first_hit < SEGMENT_HEADER { lsn } else { lsn + 1 };
            let intact_after = segment.records.iter().enumerate().any(|(i, &(start, end))| {
                segment.first + i as u64 >= after && !hit.iter().any(|&b| b >= start && b < end)
            });
            if !is_last || intact_after { Expect::Error(lsn) } else { Expect::TornTail(lsn) }
        };
        tally.cases += 1;

        // A fresh copy of the log with the damage.
        let _ = std::fs::remove_dir_all(work.path());
        std::fs::create_dir_all(work.path()).unwrap();
        for other in &segments {
            let bytes = if other.name == segment.name { &damaged } else { &other.bytes };
            std::fs::write(work.path().join(&other.name), bytes).unwrap();
        }
        let at = format!("case {case}: segment {s} ({}), expected {expect:?}", segment.name);
        match (FileWal::open_with(work.path(), config.clone(), options), &expect) {
            (Err(Error::WalCorrupted { lsn, reason }), Expect::Error(want)) => {
                assert_eq!(lsn, *want, "{at}: {reason}");
                tally.errors += 1;
            }
            (Ok(mut wal), Expect::TornTail(want) | Expect::EndsBefore(want)) => {
                let tail = wal.recovery().torn_tail.clone();
                match (&expect, tail) {
                    (Expect::TornTail(_), Some(tail)) => {
                        assert_eq!(tail.lsn.get(), *want, "{at}: {tail:?}");
                        tally.torn_tails += 1;
                    }
                    (Expect::EndsBefore(_), None) => tally.clean_cuts += 1,
                    (_, tail) => panic!("{at}: torn tail {tail:?}"),
                }
                // Everything before the damage, exactly; nothing from it on.
                let got = all_entries(&wal);
                assert_eq!(got.len() as u64, want - 1, "{at}");
                for (i, e) in got.iter().enumerate() {
                    assert_eq!((e.lsn.get(), &e.record), (i as u64 + 1, &originals[i]), "{at}");
                }
                assert_eq!(wal.stats().last_lsn.get(), want - 1, "{at}");
                // The log goes on from there, and reopens cleanly.
                if case % 8 == 0 {
                    assert_eq!(wal.append(originals[0].clone()).unwrap().get(), *want, "{at}");
                    drop(wal);
                    let wal = FileWal::open_with(work.path(), config.clone(), options).unwrap();
                    assert_eq!(wal.recovery().torn_tail, None, "{at}");
                    assert_eq!(all_entries(&wal).len() as u64, *want, "{at}");
                }
            }
            (Ok(wal), _) => panic!(
                "{at}: opened, holding {} entries, torn tail {:?}",
                wal.stats().entries,
                wal.recovery().torn_tail
            ),
            (Err(e), _) => panic!("{at}: {e:?}"),
        }
    }
    eprintln!("damage cases: {tally:?} (log of {total} records in {} segments)", segments.len());
    assert!(tally.cases >= cases * 9 / 10, "{tally:?}");
    assert!(tally.errors > 0 && tally.torn_tails > 0 && tally.clean_cuts > 0 && tally.flips > 0, "{tally:?}");
    assert_eq!(tally.errors + tally.torn_tails + tally.clean_cuts, tally.cases);
}

// --- Killed writers ----------------------------------------------------------------------------

const CHILD_ENV: &str = "DB4_WAL_CRASH_CHILD";

/// The record the writer appends at `lsn`: its content follows from its LSN, so the reader
/// can check every entry it finds.
fn crash_record(lsn: u64) -> WalRecord {
    record_from(lsn.wrapping_mul(0x9E37_79B9), lsn % 400)
}

fn crash_config() -> WalConfig {
    WalConfig::default().max_entries(16).max_size_bytes(4096).checkpoint_interval(5)
}

/// In the child: appends to the log in `dir` until killed, printing `ACK n` once the append
/// of LSN n returned.
fn child(dir: &Path) -> ! {
    let mut wal = FileWal::open(dir, crash_config()).expect("child: open");
    let mut out = std::io::stdout().lock();
    let first = wal.stats().last_lsn.get() + 1;
    // Bounded, so that a child whose parent went away does not run forever.
    for next in first..first + 20_000 {
        let lsn = wal.append(crash_record(next)).expect("child: append");
        assert_eq!(lsn.get(), next);
        writeln!(out, "ACK {next}").expect("child: print");
        out.flush().expect("child: flush");
    }
    std::process::abort()
}

/// A child process that is killed if the test fails before it is done with it.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The LSN acknowledged on `line`; libtest may have printed the test's name in front.
fn acked(line: &str) -> Option<u64> {
    line.rsplit_once("ACK ").and_then(|(_, n)| n.trim().parse().ok())
}

#[test]
fn acknowledged_appends_survive_kills_at_random_instants() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let cycles: u64 = std::env::var("DB4_WAL_KILL_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let dir = TempDir::new("kill");
    let name = format!(
        "{}::acknowledged_appends_survive_kills_at_random_instants",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let mut rng = Rng(0x4B11);
    let (mut last_acked, mut torn_tails, mut unacked_kept) = (0u64, 0, 0);
    for cycle in 0..cycles {
        let wanted = rng.below(40);
        let mut child = ChildGuard(
            Command::new(std::env::current_exe().unwrap())
                .args([name.as_str(), "--exact", "--nocapture", "--test-threads", "1"])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut ack = |line: std::io::Result<String>| {
            let lsn = acked(&line.unwrap())?;
            assert_eq!(lsn, last_acked + 1, "cycle {cycle}: acknowledgements come in order, after the last one");
            last_acked = lsn;
            Some(lsn)
        };
        if wanted == 0 {
            // While it starts: opening, recovering.
            std::thread::sleep(std::time::Duration::from_micros(rng.below(30_000)));
        } else {
            let mut acks = 0;
            for line in lines.by_ref() {
                if ack(line).is_some() {
                    acks += 1;
                }
                if acks == wanted {
                    break;
                }
            }
            assert_eq!(acks, wanted, "cycle {cycle}: the child stopped acknowledging early");
            // SIGKILL, somewhere in the appends after.
            std::thread::sleep(std::time::Duration::from_micros(rng.below(4_000)));
        }
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        assert!(!status.success(), "cycle {cycle}: the child was killed");
        // What it acknowledged before it died.
        for line in lines {
            ack(line);
        }

        let wal = FileWal::open(dir.path(), crash_config()).unwrap();
        if wal.recovery().torn_tail.is_some() {
            torn_tails += 1;
        }
        let entries = all_entries(&wal);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.lsn.get(), i as u64 + 1, "cycle {cycle}: LSNs are contiguous from 1");
            assert_eq!(e.record, crash_record(e.lsn.get()), "cycle {cycle}: entry {} is what was appended", e.lsn);
        }
        let last = entries.last().map_or(0, |e| e.lsn.get());
        // One append may have reached the file without its acknowledgement reaching us.
        assert!(last == last_acked || last == last_acked + 1, "cycle {cycle}: last {last}, acknowledged {last_acked}");
        if last > last_acked {
            unacked_kept += 1;
            last_acked = last;
        }
        assert!(wal.stats().last_checkpoint.get() <= last, "cycle {cycle}: {:?}", wal.stats());
    }
    eprintln!(
        "kill cycles: {cycles}, records: {last_acked}, torn tails cut: {torn_tails}, unacknowledged appends kept: {unacked_kept}"
    );
    assert!(last_acked > cycles, "the children appended ({last_acked} records)");
}
