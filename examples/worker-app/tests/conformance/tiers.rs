//! The tiered routes (`/tier/{name}/...`): compaction to the cold tier and reads falling
//! through to it, a damaged or missing segment, the warm tier's bound under a read load.
//! Natively the cold store is a memory store behind the same `StagedStore`; over HTTP it is
//! R2 in miniflare (`DB4_MINIFLARE_URL`), compaction running from the object's alarm. The
//! phases around restarts (`persist`) and the figures (`bench`) only run over HTTP.

use crate::scenarios::{expect, expect_error};
use crate::target::{Http, Reply, Target};
use serde_json::{Value, json};
use std::io::Read;
use std::time::{Duration, Instant};

/// One tier object of a scenario.
pub struct Tier<'t> {
    t: &'t dyn Target,
    pub name: String,
}

impl<'t> Tier<'t> {
    pub fn new(t: &'t dyn Target, scenario: &str) -> Self {
        Self { t, name: t.tenant(scenario).replace('_', "-") }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let bytes = body.map(Value::to_string);
        self.t.call(method, &format!("/tier/{}{path}", self.name), bytes.as_deref().map(str::as_bytes))
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    pub fn status(&self) -> Value {
        expect(self.get("/status"), 200)
    }

    /// Inserts `items` in batches of 100.
    pub fn insert(&self, items: &[Value]) {
        for chunk in items.chunks(100) {
            expect(self.call("POST", "/readings/bulk", Some(&json!({ "items": chunk }))), 201);
        }
    }

    /// Asks for a compaction (run at once natively, from the alarm on Cloudflare) and waits
    /// until nothing is pending and the cold tier holds at least `cold` documents.
    pub fn compact(&self, cold: u64) -> Value {
        // On Cloudflare the alarm counts its compactions: wait for this one to have run.
        let before = self.status()["compactions"].as_u64();
        let r = self.call("POST", "/compact", None);
        assert!(matches!(r.status, 200 | 202), "compact: {} {}", r.status, r.body);
        if let Some(before) = before {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.status()["compactions"].as_u64() <= Some(before) {
                assert!(Instant::now() < deadline, "the alarm did not compact in 30 s: {}", self.status());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.wait_uploaded(cold)
    }

    /// Waits until nothing is pending and the cold tier holds at least `cold` documents.
    pub fn wait_uploaded(&self, cold: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            let pending = s["pending"].as_array().map_or(0, Vec::len);
            if pending == 0 && s["cold"]["documents"].as_u64().unwrap_or(0) >= cold {
                return s;
            }
            assert!(Instant::now() < deadline, "compaction did not finish in 30 s: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The object's cold objects (keys without its prefix), from the test route.
    pub fn objects(&self) -> Vec<(String, u64)> {
        let listed = expect(self.get("/r2/list"), 200);
        listed["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .map(|o| (o["key"].as_str().expect("key").to_owned(), o["size"].as_u64().expect("size")))
            .collect()
    }

    /// The bytes of one of its cold objects.
    pub fn object(&self, key: &str) -> Vec<u8> {
        let got = expect(self.get(&format!("/r2/object?key={key}")), 200);
        let hex = got["hex"].as_str().expect("hex");
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex byte")).collect()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Reading `i` (id `r{i:05}`), an hour old if `old` (it compacts), else new.
pub fn reading(i: usize, old: bool, body_bytes: usize) -> Value {
    let at = if old { now_ms() - 3_600_000 } else { now_ms() };
    let mut body = format!("reading {i}: ");
    while body.len() < body_bytes {
        body.push_str("lorem ipsum ");
    }
    json!({ "id": format!("r{i:05}"), "at": at, "body": body, "n": i })
}

fn check_reads(tier: &Tier<'_>, ids: impl Iterator<Item = usize>) {
    for i in ids {
        let got = expect(tier.get(&format!("/readings/r{i:05}")), 200);
        assert_eq!(got["n"], i, "r{i:05}");
    }
}

/// Compaction moves the old readings to the cold tier; every reading reads back as it was,
/// one by one and all together; a write to a cold one brings it back hot, a delete removes
/// it; the segment the object wrote decodes with plain gzip and JSON (no db4).
pub fn cold_tier(t: &dyn Target) {
    let tier = Tier::new(t, "cold_tier");
    let items: Vec<Value> = (0..300).map(|i| reading(i, i < 200, 40)).collect();
    tier.insert(&items);
    assert_eq!(tier.status()["hot"]["documents"], 300);
    let s = tier.compact(200);
    assert_eq!((s["hot"]["documents"].as_u64(), s["cold"]["documents"].as_u64()), (Some(100), Some(200)), "{s}");
    assert!(s["cold"]["segments"].as_u64() >= Some(1), "{s}");
    check_reads(&tier, 0..300);
    expect_error(tier.get("/readings/r99999"), 404, "not_found");
    let all = expect(tier.get("/readings"), 200);
    assert_eq!(all["count"], 300);
    assert_eq!(all["sum_n"], (0..300).sum::<usize>());
    let ids: Vec<String> = (0..300).map(|i| format!("r{i:05}")).collect();
    assert_eq!(all["ids"], json!(ids));
    // A second compaction has nothing to move.
    let again = tier.compact(200);
    assert_eq!(again["cold"]["documents"], 200);

    // A write to a cold reading brings it back hot; a delete of one tombstones it.
    let mut r5 = reading(5, true, 40);
    r5["n"] = json!(5005);
    expect(tier.call("PUT", "/readings/r00005", Some(&r5)), 200);
    assert_eq!(expect(tier.get("/readings/r00005"), 200)["n"], 5005);
    assert_eq!(expect(tier.call("DELETE", "/readings/r00006", None), 200)["deleted"], true);
    expect_error(tier.get("/readings/r00006"), 404, "not_found");
    let s = tier.status();
    assert_eq!((s["hot"]["documents"].as_u64(), s["cold"]["documents"].as_u64()), (Some(101), Some(198)), "{s}");
    let dup = tier.call("POST", "/readings/bulk", Some(&json!({ "items": [reading(7, true, 40)] })));
    expect_error(dup, 409, "already_exists");
    assert_eq!(expect(tier.get("/readings"), 200)["count"], 299);

    // The segment and its manifest, read as a tool without db4 would: gzip members of JSON
    // lines, a JSON manifest naming the segment and counting its lines.
    let objects = tier.objects();
    let segment = objects.iter().find(|(k, _)| k.ends_with(".jsonl.gz")).expect("a segment").0.clone();
    assert!(objects.iter().any(|(k, _)| *k == format!("{segment}.manifest.json")), "{objects:?}");
    let manifest: Value = serde_json::from_slice(&tier.object(&format!("{segment}.manifest.json"))).expect("JSON");
    assert_eq!(manifest["key"], segment.as_str());
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&tier.object(&segment)[..]).read_to_string(&mut text).expect("gzip");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len() as u64, manifest["count"].as_u64().expect("count"));
    assert_eq!(lines.len(), 200);
    assert_eq!(lines[3]["id"], "r00003");
    assert_eq!(lines[3]["doc"]["n"], 3);
}

/// A damaged segment and a missing one are errors naming them; the hot readings and the
/// readings of the other segment still read.
pub fn cold_tier_damage(t: &dyn Target) {
    let tier = Tier::new(t, "cold_tier_damage");
    // Three segments, compacted one after another: A (0..20), B (100..120), C (400..420).
    for base in [0, 100, 400] {
        tier.insert(&(base..base + 20).map(|i| reading(i, true, 40)).collect::<Vec<_>>());
        tier.compact(tier.status()["cold"]["documents"].as_u64().unwrap_or(0) + 20);
    }
    tier.insert(&(200..210).map(|i| reading(i, false, 40)).collect::<Vec<_>>());
    let mut segments: Vec<String> =
        tier.objects().into_iter().map(|(k, _)| k).filter(|k| k.ends_with(".jsonl.gz")).collect();
    segments.sort();
    assert_eq!(segments.len(), 3, "{segments:?}");
    let (a, b) = (&segments[0], &segments[1]);
    // Damaged (before anything read it: on Cloudflare a block once read may stay in the edge
    // cache, which rightly never expects an object to change under its key).
    expect(tier.call("POST", &format!("/r2/damage?key={a}"), None), 200);
    let err = expect_error(tier.get("/readings/r00003"), 500, "corrupted");
    assert!(err["message"].as_str().is_some_and(|m| m.contains(a.as_str())), "{err}");
    check_reads(&tier, 400..410);
    check_reads(&tier, 200..210);
    // Missing.
    expect(tier.call("DELETE", &format!("/r2/object?key={b}"), None), 200);
    let err = expect_error(tier.get("/readings/r00105"), 500, "corrupted");
    assert!(err["message"].as_str().is_some_and(|m| m.contains(b.as_str())), "{err}");
    check_reads(&tier, 410..420);
    check_reads(&tier, 200..210);
    // Writes go on.
    expect(tier.call("POST", "/readings/bulk", Some(&json!({ "items": [reading(300, false, 40)] }))), 201);
    check_reads(&tier, 300..301);
}

/// Under a sustained read load over hot and cold readings the warm tier stays within its
/// budget, the fetched cold bytes within theirs, and (on Cloudflare) the isolate's memory
/// stops growing once warm.
pub fn warm_tier_bound(t: &dyn Target) {
    let tier = Tier::new(t, "warm_tier_bound");
    tier.insert(&(0..400).map(|i| reading(i, i < 300, 600)).collect::<Vec<_>>());
    tier.compact(300);
    let mut memory = Vec::new();
    for pass in 0..5 {
        check_reads(&tier, (0..400).map(|i| (i * 7 + pass) % 400));
        let s = tier.status();
        let (warm, cap) = (s["warm"]["bytes"].as_u64().expect("warm"), s["warm"]["capacity"].as_u64().expect("cap"));
        assert!(warm <= cap, "warm tier over its budget: {s}");
        let (cached, budget) =
            (s["fetched"]["cached_bytes"].as_u64().unwrap(), s["fetched"]["budget_bytes"].as_u64().unwrap());
        assert!(cached <= budget + (64 << 10), "fetched bytes over their budget: {s}");
        assert!(
            s["warm"]["evictions"].as_u64() > Some(0) || pass == 0,
            "400 readings of 600 bytes overflow 256 KiB: {s}"
        );
        if let Some(m) = s["wasm_memory_bytes"].as_f64() {
            memory.push(m);
        }
    }
    let s = tier.status();
    assert!(s["warm"]["hits"].as_u64() > Some(0), "{s}");
    if let (Some(first), Some(last)) = (memory.first(), memory.last()) {
        assert!(last - first <= f64::from(2u32 << 20), "the isolate's memory grew from {first} to {last} bytes");
        assert!(*last < f64::from(64u32 << 20), "the isolate holds {last} bytes");
        println!("tier object memory: {first} bytes after the first pass, {last} after the fifth");
    }
}

/// Phases around restarts of miniflare (`DB4_E2E_TIERS`), run by `e2e.sh`: `stage`
/// (compaction without the upload: the segments pending in the object's SQLite), then after a
/// SIGKILL `after_kill` (still pending and readable; the first request re-arms the alarm,
/// which uploads), then after a SIGTERM `after_term` (everything read back from R2).
pub fn persist(t: &Http, phase: &str) {
    let tier = Tier::new(t, "tiers_persist");
    match phase {
        "stage" => {
            tier.insert(&(0..200).map(|i| reading(i, i < 150, 80)).collect::<Vec<_>>());
            let r = expect(tier.call("POST", "/compact/stage", None), 200);
            assert_eq!(r["moved"], 150);
            let s = tier.status();
            assert_eq!(s["pending"].as_array().map(Vec::len), Some(2), "{s}");
            assert!(tier.objects().is_empty(), "nothing uploaded yet");
            check_reads(&tier, 0..200);
        }
        "after_kill" => {
            // The pending segments survived the SIGKILL; they read; the alarm uploads them.
            check_reads(&tier, 0..200);
            let s = tier.wait_uploaded(150);
            assert_eq!(s["hot"]["documents"], 50, "{s}");
            assert_eq!(tier.objects().len(), 2);
            check_reads(&tier, 0..200);
        }
        "after_term" => {
            let s = tier.status();
            assert_eq!((s["hot"]["documents"].as_u64(), s["cold"]["documents"].as_u64()), (Some(50), Some(150)), "{s}");
            // Half the readings (the even ones), read from R2: a fresh isolate holds nothing.
            check_reads(&tier, (0..200).step_by(2));
            let s = tier.status();
            assert!(s["fetched"]["fetches"].as_u64() > Some(0), "read from R2 after the restart: {s}");
            let edge = |s: &Value, k: &str| s["edge_cache"][k].as_u64().unwrap_or(0);
            assert!(edge(&s, "hits") + edge(&s, "misses") > 0, "the reads went through the edge cache: {s}");
            // The blocks are in the edge cache (put there by these reads or the phase before):
            // with the fetched bytes dropped, the odd readings (same blocks, not in the warm
            // tier) come from it, not from R2.
            let hits = edge(&s, "hits");
            expect(tier.call("POST", "/forget", None), 200);
            check_reads(&tier, (1..200).step_by(2));
            let s = tier.status();
            assert!(edge(&s, "hits") > hits, "{s}");
            assert_eq!(expect(tier.get("/readings"), 200)["count"], 200);
        }
        other => panic!("unknown DB4_E2E_TIERS phase {other:?}"),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn timed(tier: &Tier<'_>, ids: &[usize]) -> Vec<f64> {
    let mut out: Vec<f64> = ids
        .iter()
        .map(|i| {
            let started = Instant::now();
            expect(tier.get(&format!("/readings/r{i:05}")), 200);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// The tiers' figures on Cloudflare (miniflare): hot, warm-hit and cold gets through the
/// Worker (p50/p99), compaction and upload throughput.
pub fn bench(t: &Http) {
    let n: usize = std::env::var("DB4_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let tier = Tier::new(t, "tiers_bench");
    let old = n * 4;
    tier.insert(&(0..old + n).map(|i| reading(i, i < old, 200)).collect::<Vec<_>>());
    let started = Instant::now();
    let r = expect(tier.call("POST", "/compact/stage", None), 200);
    let compact_s = started.elapsed().as_secs_f64();
    let moved = r["moved"].as_u64().expect("moved");
    let started = Instant::now();
    let f = expect(tier.call("POST", "/flush", None), 200);
    let flush_s = started.elapsed().as_secs_f64();
    let bytes = f["bytes"].as_u64().expect("bytes");
    // Hot gets (not in the warm tier yet: the first read of each), warm hits (the same again),
    // cold gets (a block fetched from R2: every id in a block of its own).
    let hot_ids: Vec<usize> = (old..old + n.min(300)).collect();
    let hot = timed(&tier, &hot_ids);
    let warm = timed(&tier, &hot_ids);
    let blocks = tier.status()["cold"]["segments"].as_u64().unwrap_or(1);
    // 200-byte readings: about 60 to a 16 KiB block; one id per block, then its neighbour
    // (the same block) once the fetched bytes are dropped: that read finds the block in the
    // edge cache (the Cache API) rather than R2.
    let stride = 60;
    let cold_ids: Vec<usize> = (0..old).step_by(stride).take(300).collect();
    let neighbours: Vec<usize> = cold_ids.iter().map(|i| i + 1).collect();
    let before = tier.status();
    let cold = timed(&tier, &cold_ids);
    expect(tier.call("POST", "/forget", None), 200);
    let edge = timed(&tier, &neighbours);
    let after = tier.status();
    let delta = |a: &Value, b: &Value| b.as_u64().unwrap_or(0).saturating_sub(a.as_u64().unwrap_or(0));
    let fetches = delta(&before["fetched"]["fetches"], &after["fetched"]["fetches"]);
    let edge_hits = delta(&before["edge_cache"]["hits"], &after["edge_cache"]["hits"]);
    println!("| measure | p50 ms | p99 ms |\n|---|---|---|");
    for (name, v) in [
        ("hot get (first read)", &hot),
        ("warm-hit get", &warm),
        ("cold get (block from R2)", &cold),
        ("cold get (block from the edge cache)", &edge),
    ] {
        println!("| {name} | {:.2} | {:.2} |", percentile(v, 0.5), percentile(v, 0.99));
    }
    println!(
        "\nwarm hit / hot get p50: {:.2}×; cold (R2) / hot p50: {:.2}×; cold (edge) / hot p50: {:.2}×; \
         {} cold gets made {fetches} fetches, {edge_hits} edge-cache hits ({blocks} segments)",
        percentile(&warm, 0.5) / percentile(&hot, 0.5),
        percentile(&cold, 0.5) / percentile(&hot, 0.5),
        percentile(&edge, 0.5) / percentile(&hot, 0.5),
        cold.len() + edge.len()
    );
    println!(
        "compaction: {moved} documents in {compact_s:.2} s = {:.0} docs/s (staged in SQLite); upload: {bytes} bytes in {flush_s:.2} s = {:.1} MB/s",
        moved as f64 / compact_s,
        bytes as f64 / flush_s / 1e6
    );
}

/// The phases around miniflare restarts (see [`persist`]).
#[test]
#[ignore = "needs the app on miniflare and a phase: run by examples/worker-app/e2e.sh"]
fn tiers_persist() {
    let phase = std::env::var("DB4_E2E_TIERS").expect("DB4_E2E_TIERS names the phase; e2e.sh sets it");
    persist(&Http::miniflare(), &phase);
}

/// The tiers' figures (see [`bench`]).
#[test]
#[ignore = "a measurement: run by `e2e.sh --bench` against miniflare"]
fn tiers_bench() {
    bench(&Http::miniflare());
}
