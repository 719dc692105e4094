//! Model-based tests: random appends, checkpoints, truncates, replays (and, for the file log,
//! reopenings) on both logs side by side, checked against a `Vec` of what was appended; and
//! the helpers the other test files share.

use super::record;
use super::*;
use crate::error::{Error, Result};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the temp dir, removed (with its contents) on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(label: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("db4-wal-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the temp dir");
        Self(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) use crate::test_rng::Rng;

/// A record made from `seed`: every operation, fields present or not, images up to about
/// `max_text` bytes of text.
pub(super) fn record_from(seed: u64, max_text: u64) -> WalRecord {
    let mut rng = Rng(seed);
    let op = [WalOp::Insert, WalOp::Update, WalOp::Delete, WalOp::Commit, WalOp::Abort][rng.below(5) as usize];
    let collection = ["users", "orders", "ü", ""][rng.below(4) as usize];
    let mut record = WalRecord::new(op, collection, format!("id-{}", rng.below(1000)));
    let image = |rng: &mut Rng| -> String {
        let len = rng.below(max_text + 1) as usize;
        let text: String = (0..len).map(|i| char::from(b'a' + ((i as u64 + rng.0) % 26) as u8)).collect();
        json!({ "n": rng.next() >> 11, "f": (rng.below(1000) as f64) / 7.0, "text": text, "tags": ["é", null, true] })
            .to_string()
    };
    if rng.below(2) == 0 {
        record = record.before(image(&mut rng));
    }
    if rng.below(3) != 0 {
        record = record.after(image(&mut rng));
    }
    if rng.below(2) == 0 {
        record = record.version(rng.next());
    }
    if rng.below(2) == 0 {
        record = record.tx_id(rng.below(50));
    }
    record
}

/// What the logs should hold.
#[derive(Debug, Default)]
struct Model {
    entries: Vec<(Lsn, WalRecord)>,
    last: Lsn,
    checkpoint: Lsn,
    truncated: Lsn,
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        seed: u64,
    },
    Checkpoint,
    /// Truncates at `pick` modulo (last + 3): at or below the truncation point, in the
    /// log, past its end.
    Truncate {
        pick: u64,
    },
    /// Replays from `pick` modulo (last + 2), the callback failing after `stop_after` entries
    /// if given.
    Replay {
        pick: u64,
        stop_after: Option<u8>,
    },
    /// Closes and reopens the file log.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => any::<u64>().prop_map(|seed| Op::Append { seed }),
        2 => Just(Op::Checkpoint),
        2 => any::<u64>().prop_map(|pick| Op::Truncate { pick }),
        3 => (any::<u64>(), proptest::option::of(0u8..6)).prop_map(|(pick, stop_after)| Op::Replay { pick, stop_after }),
        1 => Just(Op::Reopen),
    ]
}

/// The log configuration of a case: small segments, so that there are many.
fn wal_config() -> impl Strategy<Value = WalConfig> {
    (1usize..8, 256usize..2048, 0u64..6, any::<bool>()).prop_map(|(entries, bytes, interval, checksums)| {
        WalConfig::default()
            .max_entries(entries)
            .max_size_bytes(bytes)
            .checkpoint_interval(interval)
            .checksums(checksums)
    })
}

/// How the file log of a case writes: without an `fsync` per append, which only durability
/// against a machine's crash needs, not these tests.
const FILE_OPTIONS: FileWalOptions = FileWalOptions { sync_on_append: false };

/// The size of text in the images: records of 60 to about 600 bytes.
const MAX_TEXT: u64 = 150;

/// A replay's callback.
type Callback<'a> = dyn FnMut(&WalEntry) -> Result<()> + 'a;

struct Logs {
    memory: MemoryWal,
    file: Option<FileWal>,
    config: WalConfig,
    dir: TempDir,
}

impl Logs {
    fn file(&self) -> &FileWal {
        self.file.as_ref().expect("the file log is open")
    }

    fn file_mut(&mut self) -> &mut FileWal {
        self.file.as_mut().expect("the file log is open")
    }

    /// Replays both from `from`; returns what each handed out and their reports.
    fn replay(&self, from: Lsn, stop_after: Option<u8>) -> [(Vec<WalEntry>, ReplayReport); 2] {
        let run = |replay: &dyn Fn(&mut Callback<'_>) -> Result<ReplayReport>| {
            let mut seen = Vec::new();
            let report = replay(&mut |e| {
                if stop_after.is_some_and(|n| seen.len() == usize::from(n)) {
                    return Err(Error::aborted("stop"));
                }
                seen.push(e.clone());
                Ok(())
            })
            .expect("replay");
            (seen, report)
        };
        [run(&|f| self.memory.replay(from, f)), run(&|f| self.file().replay(from, f))]
    }
}

/// Applies `ops` to the model and both logs, checking everything observable after each.
fn run(config: WalConfig, ops: &[Op]) {
    let dir = TempDir::new("model");
    let file = FileWal::open_with(dir.path(), config.clone(), FILE_OPTIONS).expect("open");
    let mut logs = Logs { memory: MemoryWal::new(config.clone()), file: Some(file), config, dir };
    let mut model = Model::default();
    let interval = logs.config.checkpoint_interval;
    let mut since_checkpoint = 0;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Append { seed } => {
                let record = record_from(seed, MAX_TEXT);
                let mut encoded = Vec::new();
                record::encode(&mut encoded, Lsn::new(1), &record, logs.config.checksums).expect("encode");
                if encoded.len() > logs.config.segment_bytes() {
                    // Refused by both, changing nothing.
                    let memory = logs.memory.append(record.clone());
                    let file = logs.file_mut().append(record.clone());
                    for result in [memory, file] {
                        assert!(
                            matches!(result, Err(Error::TooLarge { size, .. }) if size == encoded.len()),
                            "{result:?}"
                        );
                    }
                    check(&logs, &model, step);
                    continue;
                }
                let lsn = logs.memory.append(record.clone()).expect("memory append");
                assert_eq!(logs.file_mut().append(record.clone()).expect("file append"), lsn);
                model.last = Lsn::new(model.last.get() + 1);
                assert_eq!(lsn, model.last, "step {step}: LSNs count up by one");
                model.entries.push((lsn, record));
                since_checkpoint += 1;
                if interval != 0 && since_checkpoint == interval {
                    model.checkpoint = model.last;
                    since_checkpoint = 0;
                }
            }
            Op::Checkpoint => {
                let lsn = logs.memory.checkpoint();
                assert_eq!(logs.file_mut().checkpoint().expect("file checkpoint"), lsn);
                assert_eq!(lsn, model.last);
                model.checkpoint = lsn;
                since_checkpoint = 0;
            }
            Op::Truncate { pick } => {
                let lsn = Lsn::new(pick % (model.last.get() + 3));
                let dropped = logs.memory.truncate(lsn);
                assert_eq!(logs.file_mut().truncate(lsn).expect("file truncate"), dropped);
                let through = lsn.min(model.last).max(model.truncated);
                let before = model.entries.len();
                model.entries.retain(|(l, _)| *l > through);
                model.truncated = through;
                assert_eq!(dropped, (before - model.entries.len()) as u64, "step {step}: records dropped");
            }
            Op::Replay { pick, stop_after } => {
                let from = Lsn::new(pick % (model.last.get() + 2));
                let want: Vec<&(Lsn, WalRecord)> = model.entries.iter().filter(|(l, _)| *l > from).collect();
                for (name, (seen, report)) in ["memory", "file"].into_iter().zip(logs.replay(from, stop_after)) {
                    let n = stop_after.map_or(want.len(), |n| want.len().min(usize::from(n)));
                    assert_eq!(seen.len(), n, "step {step}: {name} replay from {from}");
                    for (entry, (lsn, record)) in seen.iter().zip(&want) {
                        assert_eq!((entry.lsn, &entry.record), (*lsn, record), "step {step}: {name}");
                        assert_eq!(entry.checksum.is_some(), logs.config.checksums);
                    }
                    assert_eq!(report.applied, n as u64);
                    assert_eq!(report.last, seen.last().map_or(from, |e| e.lsn));
                    match (&report.stopped, want.get(n)) {
                        (None, None) => {}
                        (Some(StopReason::Callback { lsn, .. }), Some((next, _))) => assert_eq!(lsn, next),
                        other => panic!("step {step}: {name} stopped with {other:?}"),
                    }
                }
            }
            Op::Reopen => {
                drop(logs.file.take());
                let file = FileWal::open_with(logs.dir.path(), logs.config.clone(), FILE_OPTIONS).expect("reopen");
                let recovery = file.recovery().clone();
                assert_eq!(recovery.torn_tail, None, "step {step}");
                assert_eq!(recovery.entries, model.entries.len() as u64);
                logs.file = Some(file);
                // The count towards an automatic checkpoint starts over.
                since_checkpoint = 0;
                logs.memory.checkpoint();
                model.checkpoint = model.last;
                logs.file_mut().checkpoint().expect("checkpoint after reopen");
            }
        }
        check(&logs, &model, step);
    }
}

fn check(logs: &Logs, model: &Model, step: usize) {
    let mut bytes = Vec::new();
    for (lsn, record) in &model.entries {
        record::encode(&mut bytes, *lsn, record, logs.config.checksums).expect("encode");
    }
    for (name, stats) in [("memory", logs.memory.stats()), ("file", logs.file().stats())] {
        let at = format!("step {step}: {name} {stats:?}");
        assert_eq!(stats.entries, model.entries.len() as u64, "{at}");
        assert_eq!(stats.bytes, bytes.len() as u64, "{at}");
        assert_eq!(stats.last_lsn, model.last, "{at}");
        assert_eq!(stats.last_checkpoint, model.checkpoint, "{at}");
        assert_eq!(stats.truncated, model.truncated, "{at}");
        assert_eq!(stats.first_lsn, model.entries.first().map_or(Lsn::ZERO, |(l, _)| *l), "{at}");
    }
    let segments = logs.memory.log().segments();
    let (max_bytes, max_entries) = (logs.config.segment_bytes() as u64, logs.config.segment_entries() as u64);
    assert!(segments.iter().all(|s| s.bytes <= max_bytes && s.len() <= max_entries && s.len() > 0), "{segments:?}");
    for pair in segments.iter().zip(segments.iter().skip(1)) {
        assert_eq!(pair.0.last().get() + 1, pair.1.first.get(), "segments are contiguous");
    }
    assert_eq!(logs.file().stats().segments, logs.memory.stats().segments, "step {step}: the same segments");
    let files = std::fs::read_dir(logs.dir.path()).expect("list").filter_map(|e| e.ok()).count();
    assert!(files <= segments.len() + 2, "step {step}: {files} files for {} segments", segments.len());
}

/// How many cases to run: `DB4_PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn config(cases: u32) -> ProptestConfig {
    // No regression files: a failure prints its minimal input, to be pinned as a named test.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(cases(64)))]

    #[test]
    fn both_logs_match_a_vec_model(config in wal_config(), ops in proptest::collection::vec(op(), 1..60)) {
        run(config, &ops);
    }
}

#[test]
fn a_long_run_matches_the_model() {
    let mut rng = Rng(7);
    let ops: Vec<Op> = (0..600)
        .map(|_| match rng.below(20) {
            0..=13 => Op::Append { seed: rng.next() },
            14 => Op::Checkpoint,
            15 => Op::Truncate { pick: rng.next() },
            16..=18 => Op::Replay { pick: rng.next(), stop_after: None },
            _ => Op::Reopen,
        })
        .collect();
    run(WalConfig::default().max_entries(5).max_size_bytes(1500).checkpoint_interval(7), &ops);
}
