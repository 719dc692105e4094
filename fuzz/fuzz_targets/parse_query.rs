//! Any bytes, read as UTF-8 (lossily, so invalid sequences become U+FFFD), either parse or fail
//! with a positioned `InvalidQuery`; a parsed query renders, in FTS5 and in db4's syntax, to
//! text that parses back to the same query, and its FTS5 rendering is stable.

#![no_main]

use db4_runtime::Error;
use db4_runtime::fts::{parse_query, to_fts5};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let query = match parse_query(&input) {
        Ok(query) => query,
        Err(Error::InvalidQuery { reason, .. }) => {
            assert!(reason.starts_with("at byte "), "{reason:?}");
            return;
        }
        Err(other) => panic!("{input:?}: not an InvalidQuery: {other:?}"),
    };
    let fts5 = to_fts5(&query);
    assert!(!fts5.contains('\0'), "{fts5:?}");
    let again = parse_query(&fts5).unwrap_or_else(|e| panic!("{input:?} rendered as {fts5:?}: {e}"));
    assert_eq!(again, query, "{input:?} through {fts5:?}");
    assert_eq!(to_fts5(&again), fts5, "{input:?}: the rendering is stable");
    let db4 = query.to_string();
    let again = parse_query(&db4).unwrap_or_else(|e| panic!("{input:?} displayed as {db4:?}: {e}"));
    assert_eq!(again, query, "{input:?} through {db4:?}");
});
