//! `#[version]`: checked and bumped by `update` and `upsert`, reported by every read.

use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "accounts")]
struct Account {
    #[id]
    id: String,
    #[index]
    owner: String,
    balance: i64,
    #[version]
    version: u64,
}

fn account(id: &str, balance: i64) -> Account {
    Account { id: id.to_owned(), owner: "o".into(), balance, version: 0 }
}

/// Other integer types work as version counters too.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "small_versions")]
struct SmallVersion {
    #[id]
    id: i64,
    n: i64,
    #[version]
    rev: u32,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "unversioned")]
struct Unversioned {
    #[id]
    id: i64,
    n: i64,
}

#[test]
fn update_bumps_the_version_and_reads_carry_it() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Account>()?;
    c.insert(&account("a", 10))?;
    assert_eq!(c.get("a")?.unwrap().version, 0);

    let mut a = c.get("a")?.unwrap();
    for expected in 1..=5u64 {
        a.balance += 1;
        c.update(&a)?;
        let stored = c.get("a")?.unwrap();
        assert_eq!(stored.version, expected);
        assert_eq!(stored.balance, 10 + expected as i64);
        a = stored;
    }
    // Every read path reports the stored version.
    let f = Account::fields();
    assert_eq!(c.query().all()?[0].version, 5);
    assert_eq!(c.query().filter(f.id.eq("a")).first()?.unwrap().version, 5);
    assert_eq!(c.get_many(["a", "a"])?.iter().map(|d| d.as_ref().unwrap().version).collect::<Vec<_>>(), vec![5, 5]);
    assert_eq!(c.query().filter(f.version.eq(5)).count()?, 1);
    assert_eq!(c.query().filter(f.version.lt(5)).count()?, 0);
    Ok(())
}

#[test]
fn a_stale_copy_conflicts_and_a_fresh_read_succeeds() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Account>()?;
    c.insert(&account("a", 100))?;
    let mut alice = c.get("a")?.unwrap();
    let mut bob = c.get("a")?.unwrap();

    alice.balance -= 30;
    c.update(&alice)?;
    bob.balance += 5;
    match c.update(&bob) {
        Err(Error::Conflict { expected: 0, actual: 1, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(c.get("a")?.unwrap().balance, 70, "the stale write did not land");

    // Re-read, re-apply, retry.
    let mut bob = c.get("a")?.unwrap();
    bob.balance += 5;
    c.update(&bob)?;
    assert_eq!(c.get("a")?.unwrap(), Account { balance: 75, version: 2, ..account("a", 0) });

    // Adding one to your own copy also works, as documented.
    let mut copy = c.get("a")?.unwrap();
    copy.balance = 1;
    c.update(&copy)?;
    copy.version += 1;
    copy.balance = 2;
    c.update(&copy)?;
    assert_eq!(c.get("a")?.unwrap(), Account { balance: 2, version: 4, ..account("a", 0) });
    // The same copy again is now stale.
    assert!(matches!(c.update(&copy), Err(Error::Conflict { expected: 3, actual: 4, .. })));
    Ok(())
}

#[test]
fn insert_and_upsert_of_a_new_document_keep_the_given_version() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Account>()?;
    c.insert(&Account { version: 3, ..account("i", 1) })?;
    assert_eq!(c.get("i")?.unwrap().version, 3);
    c.upsert(&Account { version: 7, ..account("u", 1) })?;
    assert_eq!(c.get("u")?.unwrap().version, 7);

    // Upsert of an existing document checks and bumps like update.
    c.upsert(&Account { version: 7, ..account("u", 2) })?;
    assert_eq!(c.get("u")?.unwrap(), Account { version: 8, ..account("u", 2) });
    assert!(matches!(c.upsert(&Account { version: 7, ..account("u", 3) }), Err(Error::Conflict { .. })));
    assert_eq!(c.get("u")?.unwrap().balance, 2);

    // After a delete the id starts again from the version given.
    assert!(c.delete("u")?);
    c.upsert(&Account { version: 1, ..account("u", 9) })?;
    assert_eq!(c.get("u")?.unwrap().version, 1);
    Ok(())
}

#[test]
fn upsert_many_checks_versions_and_writes_nothing_on_a_conflict() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Account>()?;
    c.insert_many(&[account("a", 1), account("b", 2)])?;
    let mut a = c.get("a")?.unwrap();
    a.balance = 10;
    c.update(&a)?; // a is now at version 1; `a` in hand is stale
    let before = c.query().order_by(Account::fields().id.asc()).all()?;

    let batch = [account("new", 5), Account { balance: 20, ..c.get("b")?.unwrap() }, a.clone()];
    match c.upsert_many(&batch) {
        Err(Error::Conflict { collection, id, expected, actual }) => {
            assert_eq!((collection.as_str(), id.as_str(), expected, actual), ("accounts", "a", 0, 1));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(c.query().order_by(Account::fields().id.asc()).all()?, before, "nothing of the batch is written");
    assert_eq!(c.get("new")?, None);

    // With fresh copies, every document is written: new ones keep their version, the others
    // are bumped.
    let batch = [Account { version: 4, ..account("new", 5) }, c.get("b")?.unwrap(), c.get("a")?.unwrap()];
    c.upsert_many(&batch)?;
    let versions: Vec<(String, u64)> =
        c.query().order_by(Account::fields().id.asc()).all()?.into_iter().map(|a| (a.id, a.version)).collect();
    assert_eq!(versions, vec![("a".into(), 2), ("b".into(), 1), ("new".into(), 4)]);
    Ok(())
}

#[test]
fn other_integer_types_as_version_counters() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<SmallVersion>()?;
    c.insert(&SmallVersion { id: 1, n: 0, rev: 0 })?;
    let mut d = c.get(1)?.unwrap();
    d.n = 1;
    c.update(&d)?;
    let d2 = c.get(1)?.unwrap();
    assert_eq!(d2.rev, 1);
    assert!(matches!(c.update(&d), Err(Error::Conflict { expected: 0, actual: 1, .. })));
    c.upsert(&d2)?;
    assert_eq!(c.get(1)?.unwrap().rev, 2);
    assert_eq!(c.query().filter(SmallVersion::fields().rev.eq(2)).count()?, 1);
    Ok(())
}

#[test]
fn without_a_version_field_the_last_writer_wins() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Unversioned>()?;
    c.insert(&Unversioned { id: 1, n: 0 })?;
    let a = Unversioned { id: 1, n: 1 };
    let b = Unversioned { id: 1, n: 2 };
    c.update(&a)?;
    c.update(&b)?;
    c.update(&a)?;
    assert_eq!(c.get(1)?, Some(a));
    c.upsert(&b)?;
    assert_eq!(c.get(1)?, Some(b));
    Ok(())
}

#[test]
fn optimistic_retries_lose_no_update_across_threads() -> Result<()> {
    let dir = db4_tests::TempDir::new("occ");
    let db = Db::open(dir.join("db.sqlite"))?;
    let c = db.collection::<Account>()?;
    c.insert(&account("shared", 0))?;
    let threads = 4;
    let per_thread = 50;
    let conflicts = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let c = c.clone();
            let conflicts = &conflicts;
            s.spawn(move || {
                for _ in 0..per_thread {
                    loop {
                        let mut a = c.get("shared").unwrap().unwrap();
                        a.balance += 1;
                        match c.update(&a) {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => {
                                conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    let total = (threads * per_thread) as u64;
    let a = c.get("shared")?.unwrap();
    assert_eq!(a.balance, total as i64, "every increment landed once");
    assert_eq!(a.version, total, "one version per successful update");
    Ok(())
}
