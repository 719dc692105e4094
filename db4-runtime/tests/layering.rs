//! The engine's modules import one way (docs/design.md, "Layout of the engine"): each module
//! may use only the modules listed before it, so there is no import circle. This reads the
//! sources and fails naming the file and the import that breaks the order.

use std::path::{Path, PathBuf};

/// The top-level modules of `src`, in import order.
const LAYERS: &[&str] = &[
    "lsn",
    "error",
    "value",
    "json",
    "checksum",
    "limits",
    "retry",
    "trace",
    "schema",
    "sql",
    "backend",
    "store",
    "db",
    "txn",
    "query",
    "collection",
    "batch",
    "wal",
    "cdc",
    "fts",
    "range",
    "shard",
    "tier",
    "remote",
];

/// The seams where a lower layer calls up into the storage tiers, each named: the tiers hook
/// the one write pipeline (a write to a cold document brings it back hot first), the handle
/// (which owns the cold tier) and the read paths (a hot miss falls through to cold; queries
/// and ranges merge cold results). Everything else must keep to the order.
const TIER_SEAMS: &[&str] = &[
    "db.rs",
    "store/pipeline.rs",
    "collection/mod.rs",
    "collection/atomic.rs",
    "collection/warm.rs",
    "query/mod.rs",
    "range/mod.rs",
];

/// The modules of `src/store`, in import order.
const STORE: &[&str] =
    &["secret", "meta", "codec", "change", "outbox", "tally", "pipeline", "migrate", "slot", "commit", "registry"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its test module (tests may use anything).
fn code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("#[cfg(test)]") || line.starts_with("#[cfg(all(test") {
            break;
        }
        let line = line.split("//").next().unwrap_or("");
        out.push((n + 1, line.to_owned()));
    }
    out
}

/// The lowercase path segments following `prefix` in `line` (`crate::store::meta` gives
/// `store` for `crate::` and `meta` for `crate::store::`).
fn uses<'l>(line: &'l str, prefix: &str) -> Vec<&'l str> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        let name: &str = &rest
            [..rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())).unwrap_or(rest.len())];
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

#[test]
fn modules_import_only_the_layers_before_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
        if parts[0] == "lib" || parts[0] == "test_rng" || parts.last().is_some_and(|p| p == "tests" || p == "model") {
            continue;
        }
        let top = parts[0].as_str();
        let rank = LAYERS.iter().position(|l| *l == top).unwrap_or_else(|| panic!("{rel:?}: add `{top}` to LAYERS"));
        let sub = (top == "store").then(|| parts[1].as_str()).filter(|s| *s != "mod");
        let sub_rank = sub.map(|s| STORE.iter().position(|l| *l == s).unwrap_or_else(|| panic!("add `{s}` to STORE")));
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in code(&text) {
            for used in uses(&line, "crate::") {
                if let Some(r) = LAYERS.iter().position(|l| *l == used) {
                    checked += 1;
                    let seam = used == "tier" && TIER_SEAMS.iter().any(|s| Path::new(s) == rel);
                    if r > rank && !seam {
                        broken.push(format!("{}:{n}: `{top}` uses `{used}`, a later layer", rel.display()));
                    }
                }
            }
            if let Some(own) = sub_rank {
                for used in uses(&line, "crate::store::").into_iter().chain(uses(&line, "super::")) {
                    if let Some(r) = STORE.iter().position(|l| *l == used) {
                        checked += 1;
                        if r >= own && STORE[r] != STORE[own] {
                            broken.push(format!(
                                "{}:{n}: store `{}` uses `{used}`, a later module",
                                rel.display(),
                                STORE[own]
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} imports seen: is the scan reading the sources?");
    assert!(broken.is_empty(), "imports against the layer order:\n{}", broken.join("\n"));
}

/// The layers sharding's pure core (`src/shard`, shared by the native router and the Durable
/// Object transport) may use: the leaves, schemas, values and the query evaluator.
const SHARD_CORE_USES: &[&str] = &["lsn", "error", "value", "json", "schema", "query"];

/// What would make the core impure: I/O, clocks, threads.
const SHARD_CORE_AVOIDS: &[&str] = &["std::fs", "std::time", "std::thread", "std::net", "std::io", "std::env"];

#[test]
fn the_shard_core_is_pure() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/shard");
    let core = ["mod.rs", "ring.rs", "hasher.rs", "cache.rs", "hot.rs", "plan.rs", "merge.rs"];
    let mut broken = Vec::new();
    for name in core {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        for (n, line) in code(&text) {
            for used in uses(&line, "crate::") {
                if LAYERS.contains(&used) && !SHARD_CORE_USES.contains(&used) {
                    broken.push(format!("shard/{name}:{n}: uses `{used}`"));
                }
            }
            for avoided in SHARD_CORE_AVOIDS {
                if line.contains(avoided) {
                    broken.push(format!("shard/{name}:{n}: uses `{avoided}`"));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the shard core must stay pure (no I/O, no clock, only the leaf layers):\n{}",
        broken.join("\n")
    );
}
