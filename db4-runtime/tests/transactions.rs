//! Transactions, savepoints, nesting and optimistic locking on the SQLite backend.

use db4_derive::Document;
use db4_runtime::{Db, Error, Result, RetryPolicy};
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(crate = "db4_runtime", collection = "accounts")]
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
    Account { id: id.into(), owner: "o".into(), balance, version: 0 }
}

#[test]
fn commit_and_rollback() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    accounts.insert_many(&[account("a", 100), account("b", 0)])?;
    db.transaction(|tx| {
        let acc = tx.collection::<Account>()?;
        let mut a = acc.get("a")?.unwrap();
        a.balance -= 40;
        acc.update(&a)?;
        let mut b = acc.get("b")?.unwrap();
        b.balance += 40;
        acc.update(&b)?;
        assert_eq!(acc.get("a")?.unwrap().balance, 60, "reads see the transaction's writes");
        Ok(())
    })?;
    assert_eq!(accounts.get("a")?.unwrap().balance, 60);
    let r: Result<()> = db.transaction(|tx| {
        let acc = tx.collection::<Account>()?;
        acc.delete("a")?;
        acc.insert(&account("c", 1))?;
        Err(Error::NotFound { collection: "x".into(), id: "y".into() })
    });
    assert!(matches!(r, Err(Error::NotFound { .. })));
    assert_eq!(accounts.count()?, 2);
    assert!(accounts.get("c")?.is_none());
    Ok(())
}

#[test]
fn savepoints_and_nesting() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    accounts.insert(&account("a", 100))?;
    db.transaction(|tx| {
        let acc = tx.collection::<Account>()?;
        acc.insert(&account("b", 1))?;
        tx.savepoint("s1")?;
        acc.insert(&account("c", 2))?;
        acc.update_with("a", RetryPolicy::default(), |a| a.balance = 0)?;
        acc.delete("b")?;
        tx.rollback_to("s1")?;
        assert_eq!(acc.get("a")?.unwrap().balance, 100);
        assert!(acc.get("b")?.is_some());
        assert!(acc.get("c")?.is_none());
        let inner: Result<()> = tx.transaction(|inner| {
            inner.collection::<Account>()?.insert(&account("d", 4))?;
            Err(Error::UnknownSavepoint { name: "boom".into() })
        });
        assert!(inner.is_err());
        assert!(acc.get("d")?.is_none());
        tx.transaction(|inner| inner.collection::<Account>()?.insert(&account("e", 5)))?;
        tx.release("s1")?;
        assert!(matches!(tx.rollback_to("s1"), Err(Error::UnknownSavepoint { .. })));
        Ok(())
    })?;
    let mut ids: Vec<String> = accounts.query().all()?.into_iter().map(|a| a.id).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "e"]);
    Ok(())
}

#[test]
fn panic_rolls_back_and_db_stays_usable() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    accounts.insert(&account("a", 1))?;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = db.transaction(|tx| -> Result<()> {
            tx.collection::<Account>()?.insert(&account("b", 2))?;
            panic!("boom");
        });
    }));
    assert!(caught.is_err());
    assert_eq!(accounts.count()?, 1);
    accounts.insert(&account("c", 3))?;
    assert_eq!(accounts.count()?, 2);
    Ok(())
}

#[test]
fn explicit_transaction() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    let tx = db.begin()?;
    tx.collection::<Account>()?.insert(&account("a", 1))?;
    tx.commit()?;
    let tx = db.begin()?;
    tx.collection::<Account>()?.insert(&account("b", 1))?;
    drop(tx);
    let tx = db.begin()?;
    tx.collection::<Account>()?.insert(&account("c", 1))?;
    tx.rollback()?;
    assert_eq!(accounts.count()?, 1);
    Ok(())
}

#[test]
fn cas_and_increment() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    accounts.insert(&account("a", 10))?;
    let f = Account::fields();
    assert_eq!(accounts.increment("a", f.balance, 5)?, 15);
    let r = accounts.compare_and_swap("a", f.owner, "o", "p")?;
    assert!(r.swapped);
    assert_eq!(r.current, "p");
    let r = accounts.compare_and_swap("a", f.owner, "o", "q")?;
    assert!(!r.swapped);
    assert_eq!(r.current, "p");
    let a = accounts.get("a")?.unwrap();
    assert_eq!((a.balance, a.owner.as_str(), a.version), (15, "p", 2));
    assert_eq!(accounts.query().filter(f.owner.eq("p")).count()?, 1, "the index column follows the swap");
    assert!(matches!(accounts.increment("a", f.balance, i64::MAX), Err(Error::InvalidValue { .. })));
    Ok(())
}

#[test]
fn concurrent_increments_are_exact() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("db4-tx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inc.db");
    let db = Db::open(&path)?;
    db.collection::<Account>()?.insert(&account("a", 0))?;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                let db = db.clone();
                s.spawn(move || -> Result<()> {
                    // Half the threads share the Db, half open their own connection to the file.
                    let db = if t % 2 == 0 { db } else { Db::open(&path)? };
                    let acc = db.collection::<Account>()?;
                    for _ in 0..250 {
                        acc.increment("a", Account::fields().balance, 1)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker panicked").expect("worker failed");
        }
    });
    assert_eq!(db.collection::<Account>()?.get("a")?.unwrap().balance, 2000);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_failed_write_inside_a_savepoint_is_not_undone_later() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    accounts.insert(&account("a", 1))?;
    db.transaction(|tx| {
        let acc = tx.collection::<Account>()?;
        tx.savepoint("s")?;
        // Fails: "a" exists. Undoing it later must not delete the existing "a".
        assert!(matches!(acc.insert(&account("a", 2)), Err(Error::AlreadyExists { .. })));
        // Fails: stale version. Nothing to undo either.
        assert!(matches!(
            acc.update(&account("a", 3)).and_then(|_| acc.update(&account("a", 3))),
            Err(Error::Conflict { .. })
        ));
        tx.rollback_to("s")?;
        assert_eq!(acc.get("a")?.map(|a| a.balance), Some(1));
        Ok(())
    })?;
    assert_eq!(accounts.get("a")?.map(|a| a.balance), Some(1));
    Ok(())
}

#[test]
fn observers_see_only_committed_changes_in_order() -> Result<()> {
    use db4_runtime::{Change, ChangeKind, Value};
    use std::sync::{Arc, Mutex};
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    type Commits = Vec<Vec<(String, ChangeKind)>>;
    let seen: Arc<Mutex<Commits>> = Arc::default();
    let sink = Arc::clone(&seen);
    db.on_commit(move |changes: &[Change]| {
        let commit = changes
            .iter()
            .map(|c| match &c.id {
                Value::Text(id) => (id.clone(), c.kind),
                other => (format!("{other:?}"), c.kind),
            })
            .collect();
        sink.lock().unwrap().push(commit);
    });
    accounts.insert(&account("a", 1))?;
    assert!(accounts.insert(&account("a", 1)).is_err());
    assert!(!accounts.delete("zz")?);
    let _ = db.transaction(|tx| -> Result<()> {
        tx.collection::<Account>()?.insert(&account("rolled-back", 1))?;
        Err(Error::UnknownSavepoint { name: "abort".into() })
    });
    db.transaction(|tx| {
        let acc = tx.collection::<Account>()?;
        acc.insert(&account("b", 1))?;
        tx.savepoint("s")?;
        acc.insert(&account("undone", 1))?;
        tx.rollback_to("s")?;
        let _ = tx.transaction(|inner| -> Result<()> {
            inner.collection::<Account>()?.insert(&account("nested-failed", 1))?;
            Err(Error::UnknownSavepoint { name: "inner".into() })
        });
        acc.delete("a")?;
        Ok(())
    })?;
    accounts.query().filter(Account::fields().owner.eq("o")).delete()?;
    let log = seen.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            vec![("a".to_owned(), ChangeKind::Insert)],
            vec![("b".to_owned(), ChangeKind::Insert), ("a".to_owned(), ChangeKind::Delete)],
            vec![("b".to_owned(), ChangeKind::Delete)],
        ]
    );
    // An observer that writes back would deadlock waiting for itself: refused instead.
    let db2 = db.clone();
    let refused: Arc<Mutex<Option<bool>>> = Arc::default();
    let flag = Arc::clone(&refused);
    db.on_commit(move |_| {
        let r = db2.collection::<Account>().and_then(|c| c.insert(&account("from-observer", 1)));
        *flag.lock().unwrap() = Some(matches!(r, Err(Error::TransactionState { .. })));
    });
    accounts.insert(&account("c", 1))?;
    assert_eq!(*refused.lock().unwrap(), Some(true));
    Ok(())
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(crate = "db4_runtime", collection = "small_counters")]
struct SmallVersion {
    #[id]
    id: i64,
    n: i64,
    #[version]
    v: u8,
}

#[test]
fn a_version_bump_past_the_field_type_is_refused() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<SmallVersion>()?;
    c.insert(&SmallVersion { id: 1, n: 0, v: 254 })?;
    c.update(&SmallVersion { id: 1, n: 1, v: 254 })?;
    let stored = c.get(1)?.unwrap();
    assert_eq!(stored.v, 255);
    let err = c.update(&SmallVersion { n: 2, ..stored }).unwrap_err();
    assert!(matches!(err, Error::InvalidValue { ref field, .. } if field == "v"), "{err}");
    assert_eq!(c.get(1)?.unwrap().n, 1, "nothing written");
    Ok(())
}

#[test]
fn writing_through_the_db_inside_its_own_transaction_is_an_error_not_a_hang() -> Result<()> {
    use db4_runtime::BackendErrorKind;
    let dir = std::env::temp_dir().join(format!("db4-reentrant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for db in [Db::open_in_memory()?, Db::open(dir.join("r.db"))?] {
        let accounts = db.collection::<Account>()?;
        let r = db.transaction(|_tx| accounts.insert(&account("x", 1)));
        assert_eq!(r.unwrap_err().backend_kind(), Some(BackendErrorKind::WouldDeadlock));
        let tx = db.begin()?;
        assert_eq!(
            accounts.insert(&account("y", 1)).unwrap_err().backend_kind(),
            Some(BackendErrorKind::WouldDeadlock)
        );
        assert_eq!(db.begin().unwrap_err().backend_kind(), Some(BackendErrorKind::WouldDeadlock));
        tx.rollback()?;
        accounts.insert(&account("z", 1))?;
        assert_eq!(accounts.count()?, 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(crate = "db4_runtime", collection = "sequenced")]
struct Sequenced {
    #[id]
    id: i64,
    thread: u32,
}

/// Commits from many threads reach observers in commit order: each transaction takes the next
/// number from a counter (transactions are serialized, so the number is its commit position)
/// and inserts a document with that id; the observer must see ids 1, 2, 3, ... in order.
#[test]
fn observers_see_concurrent_commits_in_commit_order() -> Result<()> {
    use db4_runtime::{Change, Value};
    use std::sync::{Arc, Mutex};
    let dir = std::env::temp_dir().join(format!("db4-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = Db::open_with(
        dir.join("order.db"),
        db4_runtime::DbOptions::default().synchronous(db4_runtime::Synchronous::Normal),
    )?;
    db.collection::<Account>()?.insert(&account("counter", 0))?;
    db.collection::<Sequenced>()?;
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let sink = Arc::clone(&seen);
    db.on_commit(move |changes: &[Change]| {
        for c in changes.iter().filter(|c| c.collection == "sequenced") {
            if let Value::Integer(id) = c.id {
                sink.lock().unwrap().push(id);
            }
        }
    });
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u32)
            .map(|t| {
                let db = db.clone();
                s.spawn(move || -> Result<()> {
                    for _ in 0..100 {
                        db.transaction(|tx| {
                            let n = tx.collection::<Account>()?.increment("counter", Account::fields().balance, 1)?;
                            tx.collection::<Sequenced>()?.insert(&Sequenced { id: n, thread: t })
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker panicked").expect("worker failed");
        }
    });
    assert_eq!(*seen.lock().unwrap(), (1..=400).collect::<Vec<i64>>());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn db_and_collections_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Db>();
    assert_send_sync::<db4_runtime::Collection<Account>>();
    assert_send_sync::<db4_runtime::BatchStore>();
}

#[test]
fn a_nested_transaction_cannot_roll_back_or_release_a_savepoint_of_its_parent() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    db.transaction(|tx| {
        let acc = tx.collection::<Account>()?;
        acc.insert(&account("before", 1))?;
        tx.savepoint("parent")?;
        acc.insert(&account("parent-work", 2))?;
        tx.transaction(|inner| {
            let acc = inner.collection::<Account>()?;
            acc.insert(&account("nested-1", 3))?;
            for refused in [inner.rollback_to("parent"), inner.release("parent")] {
                match refused {
                    Err(e @ Error::TransactionState { .. }) => {
                        assert!(e.to_string().starts_with("transaction misuse: cannot "), "{e}");
                        assert!(e.to_string().contains("\"parent\""), "{e}");
                    }
                    other => panic!("expected TransactionState, got {other:?}"),
                }
            }
            assert!(acc.get("parent-work")?.is_some(), "the refused call undid nothing");
            assert!(acc.get("nested-1")?.is_some(), "the refused call undid nothing");
            // The nested transaction's own savepoints work, also one shadowing the parent's name.
            inner.savepoint("parent")?;
            acc.insert(&account("undone", 0))?;
            inner.rollback_to("parent")?;
            inner.release("parent")?;
            assert!(acc.get("undone")?.is_none());
            acc.insert(&account("nested-2", 4))
        })?;
        // The parent goes on, and its savepoint still undoes everything since it was taken.
        for id in ["before", "parent-work", "nested-1", "nested-2"] {
            assert!(acc.get(id)?.is_some(), "{id}");
        }
        tx.rollback_to("parent")?;
        for id in ["parent-work", "nested-1", "nested-2"] {
            assert!(acc.get(id)?.is_none(), "{id} is rolled back");
        }
        acc.insert(&account("after", 5))?;
        tx.release("parent")?;
        Ok(())
    })?;
    let mut ids: Vec<String> = accounts.query().all()?.into_iter().map(|a| a.id).collect();
    ids.sort();
    assert_eq!(ids, ["after", "before"]);
    Ok(())
}

#[test]
fn a_nested_transaction_inside_a_nested_one_only_reaches_its_own_savepoints() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    db.transaction(|tx| {
        tx.transaction(|middle| {
            middle.savepoint("middle")?;
            middle.collection::<Account>()?.insert(&account("m", 1))?;
            let r = middle.transaction(|inner| {
                inner.collection::<Account>()?.insert(&account("i", 1))?;
                inner.rollback_to("middle")
            });
            assert!(matches!(r, Err(Error::TransactionState { .. })), "{r:?}");
            // The innermost one returned Err: only its own insert is undone.
            assert!(middle.collection::<Account>()?.get("i")?.is_none());
            assert!(middle.collection::<Account>()?.get("m")?.is_some());
            middle.rollback_to("middle")
        })
    })?;
    assert_eq!(accounts.count()?, 0);
    Ok(())
}

/// An application's own error type, as a transaction closure would return it.
#[derive(Debug)]
enum AppError {
    Insufficient { balance: i64 },
    Db(Error),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Db(e)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Insufficient { balance } => write!(f, "insufficient funds: balance would be {balance}"),
            AppError::Db(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {}

/// Debits `amount` from `id`; the application refuses a negative balance.
fn debit(tx: &db4_runtime::Transaction<'_>, id: &str, amount: i64) -> std::result::Result<i64, AppError> {
    let accounts = tx.collection::<Account>()?;
    let mut a = accounts.get(id)?.ok_or(Error::NotFound { collection: "accounts".into(), id: id.into() })?;
    a.balance -= amount;
    accounts.update(&a)?;
    if a.balance < 0 {
        return Err(AppError::Insufficient { balance: a.balance });
    }
    Ok(a.balance)
}

#[test]
fn try_transaction_returns_the_applications_error_and_rolls_back() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    accounts.insert(&account("a", 100))?;
    let r = db.try_transaction(|tx| {
        tx.collection::<Account>()?.insert(&account("audit", 0))?;
        debit(tx, "a", 150)
    });
    assert!(matches!(r, Err(AppError::Insufficient { balance: -50 })), "{r:?}");
    assert_eq!(accounts.get("a")?.map(|a| (a.balance, a.version)), Some((100, 0)), "rolled back");
    assert!(accounts.get("audit")?.is_none(), "rolled back");

    // A db4 error inside comes out converted, and rolls back the same way.
    let r = db.try_transaction(|tx| -> std::result::Result<(), AppError> {
        tx.collection::<Account>()?.insert(&account("b", 1))?;
        tx.collection::<Account>()?.insert(&account("a", 1))?;
        Ok(())
    });
    assert!(matches!(r, Err(AppError::Db(Error::AlreadyExists { .. }))), "{r:?}");
    assert!(accounts.get("b")?.is_none());

    assert_eq!(db.try_transaction(|tx| debit(tx, "a", 30)).map_err(|e| e.to_string()), Ok(70));
    assert_eq!(accounts.get("a")?.map(|a| a.balance), Some(70), "Ok commits");

    // Nested: the application's error undoes only the nested part.
    let outer = db.try_transaction(|tx| -> std::result::Result<(), AppError> {
        tx.collection::<Account>()?.insert(&account("kept", 1))?;
        let inner = tx.try_transaction(|inner| debit(inner, "a", 1_000));
        assert!(matches!(inner, Err(AppError::Insufficient { balance: -930 })), "{inner:?}");
        assert_eq!(tx.collection::<Account>()?.get("a")?.map(|a| a.balance), Some(70));
        Ok(())
    });
    assert!(outer.is_ok(), "{outer:?}");
    assert!(accounts.get("kept")?.is_some());
    assert_eq!(accounts.get("a")?.map(|a| a.balance), Some(70));
    Ok(())
}

#[test]
fn try_transaction_rolls_back_on_panic() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = db.try_transaction(|tx| -> std::result::Result<(), AppError> {
            tx.collection::<Account>()?.insert(&account("x", 1))?;
            panic!("boom");
        });
    }));
    assert!(caught.is_err());
    assert_eq!(accounts.count()?, 0);
    accounts.insert(&account("y", 1))?;
    Ok(())
}

#[test]
fn an_aborted_error_carries_an_io_error_out_of_a_transaction() -> Result<()> {
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    let r = db.transaction(|tx| {
        tx.collection::<Account>()?.insert(&account("x", 1))?;
        std::fs::read("/definitely/not/here/db4").map_err(Error::aborted)?;
        Ok(())
    });
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Aborted(_)), "{e:?}");
    assert_eq!(e.downcast_ref::<std::io::Error>().map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound));
    let io = e.downcast::<std::io::Error>().expect("the io::Error comes back out");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(accounts.count()?, 0, "rolled back");

    // A plain message works too, and a nested transaction undoes only itself.
    db.transaction(|tx| {
        tx.collection::<Account>()?.insert(&account("kept", 1))?;
        let inner = tx.transaction(|inner| {
            inner.collection::<Account>()?.insert(&account("undone", 1))?;
            Err::<(), _>(Error::aborted("business rule"))
        });
        assert_eq!(inner.unwrap_err().to_string(), "business rule");
        Ok(())
    })?;
    assert_eq!(accounts.query().all()?.into_iter().map(|a| a.id).collect::<Vec<_>>(), ["kept"]);
    Ok(())
}

/// Closures written for `transaction` before `try_transaction` existed keep compiling: their
/// error type is inferred as db4's without any annotation.
#[test]
fn existing_transaction_closures_still_infer() -> Result<()> {
    let db = Db::open_in_memory()?;
    db.transaction(|tx| {
        tx.collection::<Account>()?.insert(&account("a", 1))?;
        Ok(())
    })?;
    let n = db.transaction(|tx| {
        let acc = tx.collection::<Account>()?;
        acc.insert(&account("b", 2))?;
        acc.count()
    })?;
    assert_eq!(n, 2);
    let balance = db.transaction(|tx| Ok(tx.collection::<Account>()?.get("b")?.map(|a| a.balance)))?;
    assert_eq!(balance, Some(2));
    db.transaction(|tx| tx.transaction(|inner| inner.collection::<Account>()?.delete("a").map(drop)))?;
    let options = db4_runtime::TransactionOptions::default();
    db.transaction_with(&options, |tx| {
        tx.collection::<Account>()?.insert(&account("c", 3))?;
        Ok(())
    })?;
    assert_eq!(db.collection::<Account>()?.count()?, 2);
    Ok(())
}
