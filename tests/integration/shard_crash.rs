//! Splits of a shard router killed at random instants: a child process inserts numbered
//! tickets on one thread (printing each once its insert returned) while its main thread
//! splits the biggest shard; the test SIGKILLs it, often in the middle of the migration,
//! reopens the router (which finishes the interrupted split) and checks that every
//! acknowledged ticket is there, once, on the shard its key routes to, and nothing else is.
//!
//! The child is this test binary run again on this one test, as in `crash_log.rs`.
//! `DB4_SHARD_CRASH_CYCLES` sets the number of kills (default 24); `DB4_SHARD_CRASH_SEED`
//! replays a schedule.

use crate::shard_router::{Ticket, everything, ticket};
use db4::shard::{ShardRouter, ShardRouterConfig};
use db4_tests::{ChildGuard, Rng, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "DB4_TESTS_SHARD_CRASH_CHILD";
const FROM_ENV: &str = "DB4_TESTS_SHARD_CRASH_FROM";
const TEST: &str = "interrupted_splits_resume_without_loss_or_duplicates";
/// Splits stop at this many shards (the child then only writes).
const MAX_SHARDS: usize = 40;
/// What the child prints once the router has `MAX_SHARDS` shards. (Without it, a run whose
/// kills came late in many splits left the parent waiting for a split that never began, while
/// the child wrote all its tickets and aborted on its own: seen in CI.)
const NO_MORE_SPLITS: &str = "no more splits";

fn tenant(id: i64) -> String {
    format!("k{}", id % 97)
}

fn config() -> ShardRouterConfig {
    ShardRouterConfig { shard_count: 2, virtual_nodes: 32, ..Default::default() }
}

fn child(dir: &Path, from: i64) -> ! {
    let router = ShardRouter::<Ticket>::open(dir, config()).expect("child: open");
    println!("start {from}");
    let writer = {
        let router = router.clone();
        std::thread::spawn(move || {
            for id in from..from + 200_000 {
                router.insert(&ticket(id, &tenant(id))).expect("child: insert");
                let mut out = std::io::stdout().lock();
                writeln!(out, "acked {id}").unwrap();
                out.flush().unwrap();
            }
        })
    };
    loop {
        let shards = router.stats().expect("child: stats");
        if shards.len() >= MAX_SHARDS {
            // No split left to interrupt: the parent stops waiting for one.
            println!("{NO_MORE_SPLITS}");
            break;
        }
        let biggest = shards.iter().max_by_key(|s| s.documents).map(|s| s.id).expect("child: a shard");
        println!("splitting {biggest}");
        let report = router.split(biggest).expect("child: split");
        println!("split {}", report.epoch);
    }
    writer.join().expect("child: writer");
    // Only a parent that stopped killing gets here; it asserts on this exit and shows why.
    eprintln!("child: wrote every ticket without being killed");
    std::process::exit(3)
}

fn field(line: &str, prefix: &str) -> Option<i64> {
    let (_, rest) = line.rsplit_once(prefix)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Reopens the router and checks it; returns the next id to write.
fn check(dir: &Path, acked: i64) -> i64 {
    let router = ShardRouter::<Ticket>::open(dir, config()).unwrap();
    assert!(router.migration().is_none(), "opening finished the interrupted split");
    let all = everything(&router).unwrap();
    let ids: Vec<i64> = all.iter().map(|(id, _)| *id).collect();
    let stored = ids.len() as i64;
    // 0..=acked, and at most the one insert in flight when the child died.
    assert!(stored == acked + 1 || stored == acked + 2, "{stored} tickets stored, 0..={acked} acknowledged");
    assert_eq!(ids, (0..stored).collect::<Vec<_>>(), "each ticket once, none missing");
    for (id, shard) in &all {
        let t = router.get(&tenant(*id), *id).unwrap();
        assert_eq!(t, Some(ticket(*id, &tenant(*id))), "ticket {id}");
        assert_eq!(router.shard_for(&tenant(*id)).unwrap(), *shard, "ticket {id} is on its key's shard");
    }
    assert_eq!(router.query().count().unwrap(), stored as u64);
    stored
}

#[test]
fn interrupted_splits_resume_without_loss_or_duplicates() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let from = std::env::var(FROM_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        child(Path::new(&dir), from);
    }
    let cycles = env_u64("DB4_SHARD_CRASH_CYCLES").unwrap_or(24);
    let seed = env_u64("DB4_SHARD_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    eprintln!("shard_crash: seed {seed} (DB4_SHARD_CRASH_SEED replays it)");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("shard-crash");
    let shards = dir.join("shards");
    let errors = dir.join("child.stderr");
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, m)| m);
    let name = format!("{module}::{TEST}");
    let (mut next, mut mid_split, mut splits_done) = (0i64, 0u64, 0u64);
    for cycle in 0..cycles {
        let mut child = ChildGuard(
            Command::new(std::env::current_exe().unwrap())
                .args([name.as_str(), "--exact", "--nocapture", "--test-threads", "1"])
                .env(CHILD_ENV, &shards)
                .env(FROM_ENV, next.to_string())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&errors).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut acked = next - 1;
        let take = |line: std::io::Result<String>, acked: &mut i64, splits: &mut u64| -> bool {
            let line = line.unwrap();
            if let Some(id) = field(&line, "acked ") {
                assert_eq!(id, *acked + 1, "acknowledged in order");
                *acked = id;
            } else if field(&line, "split ").is_some() {
                *splits += 1;
            }
            line.contains("splitting ") || line.contains(NO_MORE_SPLITS)
        };
        if rng.below(6) == 0 {
            // While it opens (and resumes the split the last one left).
            std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        } else {
            // A random instant after a split began: copying, catching up, switching, cleaning.
            let splits_wanted = 1 + rng.below(2);
            let mut seen = 0;
            for line in lines.by_ref() {
                let line = line.unwrap();
                let last = line.contains(NO_MORE_SPLITS);
                if take(Ok(line), &mut acked, &mut splits_done) {
                    seen += 1;
                    if seen == splits_wanted || last {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(rng.below(120_000)));
        }
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        for line in lines {
            take(line, &mut acked, &mut splits_done);
        }
        #[cfg(unix)]
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "cycle {cycle}: the child died on its own: {}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
        let manifest = std::fs::read_to_string(shards.join("shards.json")).unwrap_or_default();
        if manifest.contains("\"plan\":{") {
            mid_split += 1;
        }
        next = check(&shards, acked);
        let _ = cycle;
    }
    let shard_count = ShardRouter::<Ticket>::open(&shards, config()).unwrap().shards().len();
    eprintln!(
        "shard_crash: {cycles} kills, {mid_split} in a migration, {splits_done} splits seen to finish, \
         {shard_count} shards, {next} tickets"
    );
    assert!(mid_split * 4 >= cycles, "only {mid_split} of {cycles} kills came during a migration");
    assert!(next > cycles as i64, "the children wrote");
}
