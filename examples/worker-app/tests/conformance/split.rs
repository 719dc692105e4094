//! Splitting a shard object on workerd while four writers go on, and across a SIGKILL of
//! workerd mid-split. The coordinator object drives the split from its alarm, one recorded
//! step at a time (`POST /s/split/{shard}` with a pace between steps); these phases watch it
//! through `GET /s/split` and check every acknowledged write afterwards.
//!
//! Phases (`DB4_E2E_SPLIT`), run by `e2e.sh`: `load` (split under load to its end: 0 lost,
//! 0 duplicated, 0 failed requests); `write` (writers and a slow split, until workerd is
//! SIGKILLed under them; each acknowledgement appended to `DB4_E2E_ACKED` and a mark file
//! `DB4_E2E_SPLIT_MARK` written once the split is copying), then after the restart `resume`
//! (the split resumes and ends; every acknowledged write is there once).

use crate::client::Conn;
use crate::target::{Http, Target};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writers running at once.
const WRITERS: usize = 4;
/// Tenants the phase's tickets spread over.
const TENANTS: usize = 50;
/// Tickets inserted (in bulk) before the writers start, so the copy has work.
const SEEDED: usize = 2000;

fn tenants(t: &Http, phase: &str) -> Vec<String> {
    (0..TENANTS).map(|k| t.tenant(&format!("split_{phase}_{k:02}"))).collect()
}

fn ticket(tenant: &str, id: &str, score: i64) -> Value {
    json!({ "id": id, "tenant": tenant, "status": "open", "score": score, "title": format!("split {id}") })
}

/// Writer `w`'s counter in the phase `tag` (ids are unique in the collection, not per tenant:
/// each phase's ids end with its tag).
fn counter_id(w: usize, tag: &str) -> String {
    format!("counter-{w}.{tag}")
}

/// What writers record: acknowledged inserts `(tenant, id)`, and per writer the increments of
/// its counter acknowledged and attempted.
#[derive(Default)]
struct Record {
    inserts: BTreeSet<(String, String)>,
    incs_acked: BTreeMap<usize, i64>,
    incs_tried: BTreeMap<usize, i64>,
    /// Answers other than success: `(when, status, body)`.
    failures: Vec<(Instant, u16, String)>,
    /// Inserts sent and not answered (the connection died under them).
    in_flight: BTreeSet<(String, String)>,
}

/// Appends acknowledgements to a file, one line per write(2), so what is in it was
/// acknowledged even if this process dies with workerd.
struct Journal(Option<std::fs::File>);

impl Journal {
    fn line(&mut self, text: &str) {
        if let Some(f) = &mut self.0 {
            f.write_all(format!("{text}\n").as_bytes()).expect("record an acknowledgement");
        }
    }
}

fn journal() -> Journal {
    let path = std::env::var("DB4_E2E_ACKED").expect("DB4_E2E_ACKED names the acknowledgements' file; e2e.sh sets it");
    Journal(Some(std::fs::OpenOptions::new().append(true).create(true).open(path).expect("the acknowledgements' file")))
}

/// One writer: inserts tickets `w{w}-{i}` over the tenants, and every fourth request
/// increments its counter, until `stop` or until the server goes away.
fn writer(
    host: &str,
    (w, tag): (usize, &str),
    tenants: &[String],
    stop: &AtomicBool,
    rec: &Mutex<Record>,
    journal: &Mutex<Journal>,
) {
    let mut conn = match Conn::open(host) {
        Ok(c) => c,
        Err(_) => return,
    };
    let counter_tenant = &tenants[w];
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if i % 4 == 3 {
            rec.lock().unwrap().incs_tried.entry(w).and_modify(|n| *n += 1).or_insert(1);
            journal.lock().unwrap().line(&format!("a {w}"));
            let path = format!("/s/tickets/{counter_tenant}/{}/increment", counter_id(w, tag));
            match conn.send("POST", &path, Some(br#"{"by": 1}"#), true) {
                Ok(r) if r.status == 200 => {
                    rec.lock().unwrap().incs_acked.entry(w).and_modify(|n| *n += 1).or_insert(1);
                    journal.lock().unwrap().line(&format!("i {w}"));
                }
                Ok(r) => fail(rec, r.status, &r.body),
                Err(_) => return,
            }
        } else {
            let tenant = &tenants[(w * 13 + i) % tenants.len()];
            let id = format!("w{w}-{i:06}.{tag}");
            let body = ticket(tenant, &id, i as i64).to_string();
            match conn.send("POST", "/s/tickets", Some(body.as_bytes()), true) {
                Ok(r) if r.status == 201 => {
                    rec.lock().unwrap().inserts.insert((tenant.clone(), id.clone()));
                    journal.lock().unwrap().line(&format!("t {tenant} {id}"));
                }
                Ok(r) => fail(rec, r.status, &r.body),
                Err(_) => {
                    rec.lock().unwrap().in_flight.insert((tenant.clone(), id));
                    return;
                }
            }
        }
        i += 1;
    }
}

fn fail(rec: &Mutex<Record>, status: u16, body: &[u8]) {
    let text = String::from_utf8_lossy(body).chars().take(300).collect();
    rec.lock().unwrap().failures.push((Instant::now(), status, text));
}

fn expect_ok(t: &Http, method: &str, path: &str, body: Option<&Value>, status: u16) -> Value {
    let bytes = body.map(Value::to_string);
    let r = t.call(method, path, bytes.as_deref().map(str::as_bytes));
    assert_eq!(r.status, status, "{method} {path}: {}", r.body);
    r.body
}

/// Inserts [`SEEDED`] tickets and each writer's counter (score 0).
fn seed(t: &Http, tenants: &[String], tag: &str, journal: &Mutex<Journal>) -> BTreeSet<(String, String)> {
    let mut all: Vec<Value> =
        (0..SEEDED).map(|i| ticket(&tenants[i % tenants.len()], &format!("seed-{i:05}.{tag}"), 0)).collect();
    all.extend((0..WRITERS).map(|w| ticket(&tenants[w], &counter_id(w, tag), 0)));
    for chunk in all.chunks(1000) {
        expect_ok(t, "POST", "/s/tickets/bulk", Some(&Value::Array(chunk.to_vec())), 201);
    }
    let mut j = journal.lock().unwrap();
    all.iter()
        .map(|d| {
            let key = (d["tenant"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned());
            j.line(&format!("t {} {}", key.0, key.1));
            key
        })
        .collect()
}

/// The shard holding the most documents.
fn biggest_shard(t: &Http) -> u64 {
    let stats = expect_ok(t, "GET", "/s/stats", None, 200);
    let shards = stats["shards"].as_array().expect("shards");
    shards.iter().max_by_key(|s| s["documents"].as_u64()).and_then(|s| s["shard"].as_u64()).expect("a shard")
}

fn status(t: &Http) -> Value {
    expect_ok(t, "GET", "/s/split", None, 200)
}

/// Waits until no split is under way and the epoch is past `epoch`; returns the status.
fn wait_for_split(t: &Http, epoch: u64, timeout: Duration) -> Value {
    let started = Instant::now();
    loop {
        let s = status(t);
        if s["split"].is_null() && s["epoch"].as_u64() > Some(epoch) {
            return s;
        }
        assert!(started.elapsed() < timeout, "the split did not end within {timeout:?}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every ticket of `tenants` through a scatter-gather query, as `(tenant, id)` with the
/// number of times each came back, and the counters' scores.
fn stored(t: &Http, tenants: &[String]) -> (BTreeMap<(String, String), usize>, BTreeMap<String, i64>) {
    let body = json!({ "tenants": tenants });
    let items = expect_ok(t, "POST", "/s/query", Some(&body), 200);
    let mut seen = BTreeMap::new();
    let mut counters = BTreeMap::new();
    for d in items["items"].as_array().expect("items") {
        let key = (d["tenant"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned());
        if key.1.starts_with("counter-") {
            counters.insert(key.1.clone(), d["score"].as_i64().unwrap());
        }
        *seen.entry(key).or_insert(0) += 1;
    }
    let count = expect_ok(t, "POST", "/s/query", Some(&json!({ "tenants": tenants, "count": true })), 200);
    assert_eq!(count["count"].as_u64(), Some(seen.values().sum::<usize>() as u64), "count equals the query's rows");
    (seen, counters)
}

/// No document twice; every acknowledged one there (by query and by a routed get); with
/// `exact`, nothing else either.
fn check_stored(t: &Http, tenants: &[String], acked: &BTreeSet<(String, String)>, maybe: &BTreeSet<(String, String)>) {
    let (seen, _) = stored(t, tenants);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(k, _)| k).collect();
    assert!(twice.is_empty(), "{} documents came back twice, e.g. {:?}", twice.len(), twice.first());
    let lost: Vec<_> = acked.iter().filter(|k| !seen.contains_key(*k)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), lost.first());
    let extra: Vec<_> = seen.keys().filter(|k| !acked.contains(*k) && !maybe.contains(*k)).collect();
    assert!(extra.is_empty(), "{} documents nobody wrote, e.g. {:?}", extra.len(), extra.first());
    for (tenant, id) in acked.iter().step_by(7) {
        expect_ok(t, "GET", &format!("/s/tickets/{tenant}/{id}"), None, 200);
    }
    // The sources were cleaned: what the shards store is what the queries see.
    let stats = expect_ok(t, "GET", "/s/stats", None, 200);
    let stored: u64 =
        stats["shards"].as_array().expect("shards").iter().map(|s| s["documents"].as_u64().unwrap()).sum();
    let all = expect_ok(t, "POST", "/s/query", Some(&json!({ "count": true })), 200);
    assert_eq!(Some(stored), all["count"].as_u64(), "documents stored on the shards = documents answered: {stats}");
}

#[test]
#[ignore = "needs the app on workerd and a phase: run by examples/worker-app/e2e.sh"]
fn split() {
    let t = Http::required();
    let phase = std::env::var("DB4_E2E_SPLIT").expect("DB4_E2E_SPLIT names the phase; e2e.sh sets it");
    match phase.as_str() {
        "load" => split_under_load(&t),
        "write" => split_until_killed(&t),
        "resume" => resume_after_kill(&t),
        other => panic!("unknown DB4_E2E_SPLIT phase {other:?}"),
    }
}

/// Starts the writers; returns their handles.
fn start_writers(
    t: &Http,
    tenants: &[String],
    tag: &'static str,
    stop: &Arc<AtomicBool>,
    rec: &Arc<Mutex<Record>>,
    journal: &Arc<Mutex<Journal>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let (host, tenants, stop, rec, journal) =
                (t.host.clone(), tenants.to_vec(), Arc::clone(stop), Arc::clone(rec), Arc::clone(journal));
            std::thread::spawn(move || writer(&host, (w, tag), &tenants, &stop, &rec, &journal))
        })
        .collect()
}

fn split_under_load(t: &Http) {
    let tenants = tenants(t, "load");
    let journal = Arc::new(Mutex::new(Journal(None)));
    let seeded = seed(t, &tenants, "load", &journal);
    let before = status(t);
    let epoch = before["epoch"].as_u64().expect("epoch");
    let shard_count = before["shards"].as_array().map(Vec::len).expect("shards");
    let (stop, rec) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Record::default())));
    let writers = start_writers(t, &tenants, "load", &stop, &rec, &journal);
    std::thread::sleep(Duration::from_millis(500));
    let source = biggest_shard(t);
    let started = Instant::now();
    let begun = expect_ok(t, "POST", &format!("/s/split/{source}"), Some(&json!({ "pace_ms": 50 })), 202);
    let after = wait_for_split(t, epoch, Duration::from_secs(120));
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer panicked");
    }
    let rec = rec.lock().unwrap();
    assert!(rec.failures.is_empty(), "requests failed during the split: {:?}", rec.failures);
    assert!(rec.in_flight.is_empty(), "the server went away");
    assert_eq!(after["shards"].as_array().map(Vec::len), Some(shard_count + 1), "{after}");
    assert_eq!(after["last_error"], Value::Null, "{after}");
    let mut acked = seeded;
    acked.extend(rec.inserts.iter().cloned());
    check_stored(t, &tenants, &acked, &BTreeSet::new());
    let (_, counters) = stored(t, &tenants);
    for w in 0..WRITERS {
        assert_eq!(
            counters.get(&counter_id(w, "load")).copied(),
            Some(rec.incs_acked.get(&w).copied().unwrap_or(0)),
            "writer {w}'s counter"
        );
    }
    // What the new shard holds now: the moved documents and the writes routed there since.
    let stats = expect_ok(t, "GET", "/s/stats", None, 200);
    let held = stats["shards"].as_array().and_then(|shards| {
        shards.iter().find(|s| s["shard"] == begun["new_shard"]).and_then(|s| s["documents"].as_u64())
    });
    eprintln!(
        "split_under_load: shard {source} split into {} in {:.1} s (epoch {epoch} -> {}) while {} inserts and {} increments \
         were acknowledged; the new shard holds {} documents ({:.0} documents/s over the split, paces included)",
        begun["new_shard"],
        took.as_secs_f64(),
        after["epoch"],
        rec.inserts.len(),
        rec.incs_acked.values().sum::<i64>(),
        held.unwrap_or(0),
        held.unwrap_or(0) as f64 / took.as_secs_f64(),
    );
}

fn split_until_killed(t: &Http) {
    let mark = std::env::var("DB4_E2E_SPLIT_MARK").expect("DB4_E2E_SPLIT_MARK names the mark file; e2e.sh sets it");
    let tenants = tenants(t, "kill");
    let journal = Arc::new(Mutex::new(journal()));
    seed(t, &tenants, "kill", &journal);
    let (stop, rec) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Record::default())));
    let writers = start_writers(t, &tenants, "kill", &stop, &rec, &journal);
    std::thread::sleep(Duration::from_millis(500));
    let source = biggest_shard(t);
    // A slow pace: the split is still copying when e2e.sh kills workerd.
    expect_ok(t, "POST", &format!("/s/split/{source}"), Some(&json!({ "pace_ms": 400 })), 202);
    let started = Instant::now();
    loop {
        let s = status(t);
        if s["split"]["step"] == "copying" {
            std::fs::write(&mark, s.to_string()).expect("write the mark");
            eprintln!("split_until_killed: marked at {s}");
            break;
        }
        assert!(s["split"].is_object(), "the split ended before it could be interrupted: {s}");
        assert!(started.elapsed() < Duration::from_secs(60), "the split did not start copying: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let marked = Instant::now();
    for w in writers {
        w.join().expect("a writer panicked");
    }
    let rec = rec.lock().unwrap();
    // A request that the kill cut may be answered 5xx; nothing before it may fail.
    for (when, status, body) in &rec.failures {
        assert!(*when > marked && *status >= 500, "a request failed before the kill: {status} {body}");
    }
    eprintln!(
        "split_until_killed: {} inserts acknowledged, {} cut by the kill",
        rec.inserts.len(),
        rec.in_flight.len()
    );
}

fn resume_after_kill(t: &Http) {
    let tenants = tenants(t, "kill");
    let path = std::env::var("DB4_E2E_ACKED").expect("DB4_E2E_ACKED names the acknowledgements' file; e2e.sh sets it");
    let text = std::fs::read_to_string(path).expect("the acknowledgements' file");
    let mut acked = BTreeSet::new();
    let (mut incs_acked, mut incs_tried) = (BTreeMap::<String, i64>::new(), BTreeMap::<String, i64>::new());
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["t", tenant, id] => {
                acked.insert(((*tenant).to_owned(), (*id).to_owned()));
            }
            ["i", w] => *incs_acked.entry(counter_id(w.parse().expect("a writer"), "kill")).or_default() += 1,
            ["a", w] => *incs_tried.entry(counter_id(w.parse().expect("a writer"), "kill")).or_default() += 1,
            _ => panic!("a malformed acknowledgement line {line:?}"),
        }
    }
    let first = status(t);
    eprintln!("resume_after_kill: after the restart {first}");
    let epoch = first["epoch"].as_u64().expect("epoch");
    assert!(first["split"].is_object(), "the split was not under way after the kill: {first}");
    let started = Instant::now();
    let after = wait_for_split(t, epoch, Duration::from_secs(120));
    eprintln!("resume_after_kill: resumed and ended in {:.1} s: {after}", started.elapsed().as_secs_f64());
    // The insert each writer had in flight may or may not have landed: the next id after its last
    // acknowledged one.
    let mut maybe = BTreeSet::new();
    let (seen, counters) = stored(t, &tenants);
    for (tenant, id) in seen.keys() {
        if !acked.contains(&(tenant.clone(), id.clone())) {
            maybe.insert((tenant.clone(), id.clone()));
        }
    }
    assert!(maybe.len() <= WRITERS, "{} documents beyond the acknowledged ones: {:?}", maybe.len(), maybe);
    assert!(maybe.iter().all(|(_, id)| id.starts_with('w')), "only a writer's insert can be in flight: {maybe:?}");
    check_stored(t, &tenants, &acked, &maybe);
    for (counter, score) in counters {
        let (lo, hi) = (incs_acked.get(&counter).copied().unwrap_or(0), incs_tried.get(&counter).copied().unwrap_or(0));
        assert!(lo <= score && score <= hi, "{counter}: {score}, acknowledged {lo}, tried {hi}");
    }
    eprintln!("resume_after_kill: {} acknowledged documents all there once", acked.len());
}
