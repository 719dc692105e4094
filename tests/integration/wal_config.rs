//! The write-ahead log as the contract has users build it, from outside the crate: a
//! `WalConfig` struct literal naming its five fields, and `FileWalOptions` for what only the
//! file log needs.

use db4::wal::{FileWal, FileWalOptions, Lsn, MemoryWal, WalConfig, WalEntry, WalRecord, WalStats};
use db4_tests::TempDir;
use std::sync::{Arc, Mutex};

/// A config with every field named (no `..`), recording each checkpoint's LSN in `seen`.
fn config(seen: &Arc<Mutex<Vec<Lsn>>>) -> WalConfig {
    let hook = Arc::clone(seen);
    WalConfig {
        max_size_bytes: 4096,
        max_entries: 2,
        checkpoint_interval: 3,
        checksums: true,
        on_checkpoint: Some(Arc::new(move |lsn| hook.lock().unwrap().push(lsn))),
    }
}

/// Five records: four changes of transaction 7 and its commit.
fn records() -> Vec<WalRecord> {
    let mut out: Vec<WalRecord> = (1..=4u64)
        .map(|n| WalRecord::insert("users", format!("u{n}"), format!(r#"{{"n":{n}}}"#)).version(1).tx_id(7))
        .collect();
    out.push(WalRecord::commit(7));
    out
}

/// The bytes `records` take encoded: 52 each, plus collection, id and images (docs/wal.md).
fn encoded_bytes(records: &[WalRecord]) -> u64 {
    let image = |i: &Option<String>| i.as_ref().map_or(0, String::len);
    records.iter().map(|r| (52 + r.collection.len() + r.id.len() + image(&r.before) + image(&r.after)) as u64).sum()
}

/// A replay callback that keeps every entry in `out`.
fn into(out: &mut Vec<WalEntry>) -> impl FnMut(&WalEntry) -> db4::Result<()> + '_ {
    |e| {
        out.push(e.clone());
        Ok(())
    }
}

#[test]
fn the_contract_literal_builds_a_memory_wal() -> db4::Result<()> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut wal = MemoryWal::new(config(&seen));
    let all = records();
    for (i, r) in all.iter().enumerate() {
        assert_eq!(wal.append(r.clone())?, Lsn::new(i as u64 + 1));
    }
    assert_eq!(*seen.lock().unwrap(), [Lsn::new(3)], "checkpoint_interval: 3");
    assert_eq!(wal.checkpoint(), Lsn::new(5));
    assert_eq!(*seen.lock().unwrap(), [Lsn::new(3), Lsn::new(5)]);

    let stats: WalStats = wal.stats();
    assert_eq!((stats.entries, stats.segments), (5, 3), "max_entries: 2 a segment");
    assert_eq!(stats.bytes, encoded_bytes(&all));
    assert_eq!((stats.first_lsn, stats.last_lsn), (Lsn::new(1), Lsn::new(5)));
    assert_eq!((stats.last_checkpoint, stats.truncated), (Lsn::new(5), Lsn::ZERO));

    let mut got = Vec::new();
    wal.replay(Lsn::ZERO, into(&mut got))?.into_result()?;
    assert_eq!(got.iter().map(|e| &e.record).collect::<Vec<_>>(), all.iter().collect::<Vec<_>>());
    assert!(got.iter().all(|e| e.checksum.is_some()), "checksums: true");

    assert_eq!(wal.truncate(Lsn::new(5)), 5);
    let stats = wal.stats();
    assert_eq!((stats.entries, stats.segments, stats.truncated), (0, 0, Lsn::new(5)));
    Ok(())
}

#[test]
fn a_literal_can_take_the_rest_from_the_default() -> db4::Result<()> {
    let mut wal = MemoryWal::new(WalConfig { checksums: false, ..WalConfig::default() });
    wal.append(WalRecord::delete("users", "u1"))?;
    let mut got = Vec::new();
    wal.replay(Lsn::ZERO, into(&mut got))?.into_result()?;
    assert_eq!(got.iter().map(|e| e.checksum).collect::<Vec<_>>(), [None]);
    let defaults = WalConfig::default();
    assert_eq!((defaults.max_size_bytes, defaults.max_entries), (10 * 1024 * 1024, 10_000));
    assert_eq!((defaults.checkpoint_interval, defaults.checksums), (0, true));
    assert!(defaults.on_checkpoint.is_none());
    Ok(())
}

#[test]
fn a_file_wal_without_sync_on_append_reads_back_after_reopening() -> db4::Result<()> {
    assert!(FileWalOptions::default().sync_on_append, "fsync on each append unless told otherwise");
    let dir = TempDir::new("wal-config");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let all = records();
    {
        let mut wal = FileWal::open_with(dir.path(), config(&seen), FileWalOptions { sync_on_append: false })?;
        for r in &all {
            wal.append(r.clone())?;
        }
        assert_eq!(*seen.lock().unwrap(), [Lsn::new(3)]);
    }
    // Reopened both ways: with the same options, and with `open`'s default.
    for reopen in 0..2 {
        let wal = if reopen == 0 {
            FileWal::open_with(dir.path(), config(&seen), FileWalOptions { sync_on_append: false })?
        } else {
            FileWal::open(dir.path(), config(&seen))?
        };
        assert_eq!(wal.recovery().torn_tail, None);
        let mut got = Vec::new();
        wal.replay(Lsn::ZERO, into(&mut got))?.into_result()?;
        assert_eq!(got.iter().map(|e| e.lsn.get()).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(got.iter().map(|e| &e.record).collect::<Vec<_>>(), all.iter().collect::<Vec<_>>());
        let stats = wal.stats();
        assert_eq!((stats.entries, stats.segments, stats.bytes), (5, 3, encoded_bytes(&all)));
        assert_eq!((stats.last_lsn, stats.last_checkpoint), (Lsn::new(5), Lsn::new(3)));
    }
    Ok(())
}
