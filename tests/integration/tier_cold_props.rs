//! A model of the cold tier: random interleavings of inserts, upserts, updates, increments,
//! deletes, point reads, `get_many`, compactions and transactions that commit or roll back
//! (bringing cold documents back hot and tombstoning them inside), through two handles on
//! one file sharing one cold store, checked after every step against a `BTreeMap`: nothing
//! lost, nothing duplicated, every read returning the latest committed value, and after each
//! case every document in exactly one tier.
//!
//! Cases: `DB4_PROPTEST_CASES` (default 48).

use db4::Scope;
use db4::prelude::*;
use db4::tier::MemoryStore;
use db4_tests::TempDir;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "cold_items")]
struct Item {
    #[id]
    id: i64,
    #[range_index]
    at: i64,
    n: i64,
}

#[derive(Debug, Clone)]
enum Write {
    Insert(i64, i64),
    Upsert(i64, i64),
    Update(i64, i64),
    Increment(i64, i64),
    Delete(i64),
}

#[derive(Debug, Clone)]
enum Step {
    Write(usize, Write),
    Get(usize, i64),
    GetMany(usize, Vec<i64>),
    Compact(usize),
    Tx(usize, Vec<Write>, bool),
}

fn write() -> impl Strategy<Value = Write> {
    let id = 0i64..24;
    prop_oneof![
        (id.clone(), any::<i16>()).prop_map(|(i, n)| Write::Insert(i, i64::from(n))),
        (id.clone(), any::<i16>()).prop_map(|(i, n)| Write::Upsert(i, i64::from(n))),
        (id.clone(), any::<i16>()).prop_map(|(i, n)| Write::Update(i, i64::from(n))),
        (id.clone(), 1i64..5).prop_map(|(i, d)| Write::Increment(i, d)),
        id.prop_map(Write::Delete),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let h = 0usize..2;
    prop_oneof![
        4 => (h.clone(), write()).prop_map(|(h, w)| Step::Write(h, w)),
        2 => (h.clone(), 0i64..24).prop_map(|(h, i)| Step::Get(h, i)),
        1 => (h.clone(), prop::collection::vec(0i64..24, 1..6)).prop_map(|(h, v)| Step::GetMany(h, v)),
        2 => h.clone().prop_map(Step::Compact),
        1 => (h, prop::collection::vec(write(), 1..6), any::<bool>()).prop_map(|(h, w, c)| Step::Tx(h, w, c)),
    ]
}

fn item(id: i64, n: i64) -> Item {
    Item { id, at: id * 7 % 24, n }
}

/// Applies `w` to `c` and to the model, checking the outcome agrees.
fn apply<S: Scope>(c: &Collection<Item, S>, model: &mut BTreeMap<i64, i64>, w: &Write) -> Result<()> {
    match *w {
        Write::Insert(id, n) => {
            let r = c.insert(&item(id, n));
            match model.entry(id) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "insert {id}: {r:?}");
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    r?;
                    slot.insert(n);
                }
            }
        }
        Write::Upsert(id, n) => {
            c.upsert(&item(id, n))?;
            model.insert(id, n);
        }
        Write::Update(id, n) => {
            let r = c.update(&item(id, n));
            match model.get_mut(&id) {
                Some(slot) => {
                    r?;
                    *slot = n;
                }
                None => assert!(matches!(r, Err(Error::NotFound { .. })), "update {id}: {r:?}"),
            }
        }
        Write::Increment(id, d) => {
            let r = c.increment(id, Item::fields().n, d);
            match model.get_mut(&id) {
                Some(n) => {
                    *n += d;
                    assert_eq!(r?, *n, "increment {id}");
                }
                None => assert!(matches!(r, Err(Error::NotFound { .. })), "increment {id}: {r:?}"),
            }
        }
        Write::Delete(id) => {
            assert_eq!(c.delete(id)?, model.remove(&id).is_some(), "delete {id}");
        }
    }
    Ok(())
}

fn read_all(c: &Collection<Item>, model: &BTreeMap<i64, i64>) {
    let got: Vec<Option<Item>> = c.get_many(0..24).unwrap();
    let want: Vec<Option<Item>> = (0..24).map(|id| model.get(&id).map(|&n| item(id, n))).collect();
    assert_eq!(got, want, "get_many of every id");
}

fn run(steps: &[Step]) {
    let dir = TempDir::new("cold-props");
    let store = Arc::new(MemoryStore::new());
    let policy = CompactionPolicy { hot_max_documents: Some(4), ..Default::default() };
    let open = || {
        let tiers = TierConfig { warm_bytes: 0, cold: Some(Box::new(Arc::clone(&store))), policy: policy.clone() };
        Db::open_with(dir.join("db.sqlite"), DbOptions::default().tiers(tiers)).unwrap()
    };
    let dbs = [open(), open()];
    let cs = [dbs[0].collection::<Item>().unwrap(), dbs[1].collection::<Item>().unwrap()];
    let mut model: BTreeMap<i64, i64> = BTreeMap::new();
    for step in steps {
        match step {
            Step::Write(h, w) => apply(&cs[*h], &mut model, w).unwrap(),
            Step::Get(h, id) => {
                assert_eq!(cs[*h].get(*id).unwrap(), model.get(id).map(|&n| item(*id, n)), "get {id}");
            }
            Step::GetMany(h, ids) => {
                let want: Vec<Option<Item>> = ids.iter().map(|id| model.get(id).map(|&n| item(*id, n))).collect();
                assert_eq!(cs[*h].get_many(ids.iter().copied()).unwrap(), want, "get_many {ids:?}");
            }
            Step::Compact(h) => {
                let hot_before = cs[*h].count().unwrap();
                let report = dbs[*h].compact().unwrap();
                assert_eq!(report.moved, hot_before.saturating_sub(4), "compaction keeps 4 hot");
            }
            Step::Tx(h, writes, commit) => {
                let mut scratch = model.clone();
                let r: Result<()> = dbs[*h].transaction(|tx| {
                    let c = tx.collection::<Item>()?;
                    for w in writes {
                        apply(&c, &mut scratch, w)?;
                    }
                    if *commit { Ok(()) } else { Err(Error::aborted("rolled back on purpose")) }
                });
                if *commit {
                    r.unwrap();
                    model = scratch;
                } else {
                    assert!(r.is_err());
                }
            }
        }
    }
    read_all(&cs[0], &model);
    read_all(&cs[1], &model);
    // Each document in exactly one tier, read from outside db4: the hot rows plus the live
    // copies in the segments are the model, with no id twice.
    let conn = rusqlite::Connection::open(dir.join("db.sqlite")).unwrap();
    let mut tiers: Vec<(i64, i64)> = conn
        .prepare("SELECT _id, json_extract(_doc, '$.n') FROM cold_items")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let segments: Vec<String> = conn
        .prepare("SELECT key FROM _db4_cold_segments")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for key in segments {
        let bytes = db4::tier::ColdStore::get(&*store, &key).unwrap().expect("a named segment exists");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut text).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["id"].as_i64().unwrap();
            let dead: i64 = conn
                .query_row(
                    "SELECT count(*) FROM _db4_cold_tombstones WHERE segment = ?1 AND id = ?2",
                    rusqlite::params![key, id],
                    |r| r.get(0),
                )
                .unwrap();
            if dead == 0 {
                tiers.push((id, v["doc"]["n"].as_i64().unwrap()));
            }
        }
    }
    tiers.sort();
    let want: Vec<(i64, i64)> = model.iter().map(|(&id, &n)| (id, n)).collect();
    assert_eq!(tiers, want, "hot rows + live cold copies = the model, each once");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn cold_tier_matches_a_model_across_two_handles(steps in prop::collection::vec(step(), 1..40)) {
        run(&steps);
    }
}
