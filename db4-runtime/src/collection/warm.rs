//! The read path through the warm tier ([`crate::tier::warm`]): `get` and `get_many` consult
//! it outside transactions and fill it on a miss. See `docs/tiers.md`.

use crate::backend::Row;
use crate::error::Result;
use crate::schema::Document;
use crate::store::codec::{IdKey, corrupt, decode, decode_json, with_id};
use crate::store::meta::CollectionMeta;
use crate::store::slot::MetaSlot;
use crate::tier::cold::segment::ColdDoc;
use crate::tier::warm::{Cached, Key, Lookup, WarmTier};
use crate::txn::Runner;
use crate::value::{Value, ValueRef};
use std::collections::HashMap;
use std::sync::Arc;

/// The tier a read may use: the database's, outside a transaction, when the backend can vouch
/// for it (with the count of other connections' commits it vouches at).
fn usable<'a>(runner: Runner<'a>) -> Option<(&'a WarmTier, u64)> {
    let Runner::Db(db) = runner else { return None };
    let tier = db.warm()?;
    match db.backend().foreign_commits() {
        Some(foreign) => Some((tier, foreign)),
        None => {
            tier.bypassed();
            None
        }
    }
}

/// A document read from the hot tier, with what the warm tier keeps of it.
struct Fetched<T> {
    doc: T,
    json_bytes: usize,
    cached: Cached,
}

/// Decodes the document at column `at` of `row` (its version at `at + 1` in a versioned
/// collection), keeping a copy for the warm tier.
fn fetched<T: Document>(meta: &CollectionMeta, row: &dyn Row, at: usize, key: &Value) -> Result<Fetched<T>> {
    let ValueRef::Text(json) = row.get(at)? else { return Err(corrupt(meta, "document", key)) };
    let json_bytes = json.len();
    let doc = decode::<T>(meta, row, at).map_err(|e| with_id(e, key))?;
    let cached = match T::__warm_clone() {
        Some(clone) => Cached::Typed(Arc::new(clone(&doc))),
        None => {
            let version = if meta.versioned {
                match row.get(at + 1)? {
                    ValueRef::Integer(v) => Some(v),
                    _ => return Err(corrupt(meta, "version", key)),
                }
            } else {
                None
            };
            Cached::Json { json: Arc::from(json), version }
        }
    };
    Ok(Fetched { doc, json_bytes, cached })
}

/// Decodes a document read from the cold tier, keeping a copy for the warm tier as
/// [`fetched`] does for a hot row: a cold document is cached as a hot one is.
fn fetched_cold<T: Document>(meta: &CollectionMeta, doc: ColdDoc) -> Result<Fetched<T>> {
    let decoded = crate::tier::cold::decode::<T>(meta, &doc)?;
    let json_bytes = doc.doc.len();
    let cached = match T::__warm_clone() {
        Some(clone) => Cached::Typed(Arc::new(clone(&decoded))),
        None => {
            let version = if meta.versioned { doc.version } else { None };
            Cached::Json { json: Arc::from(doc.doc), version }
        }
    };
    Ok(Fetched { doc: decoded, json_bytes, cached })
}

/// A cached document as a `T`; `None` if it was cached as another type (then it is read
/// again).
fn restore<T: Document>(slot: &MetaSlot, cached: &Cached, key: &Value) -> Result<Option<T>> {
    match cached {
        Cached::Typed(any) => match (any.downcast_ref::<T>(), T::__warm_clone()) {
            (Some(doc), Some(clone)) => Ok(Some(clone(doc))),
            _ => Ok(None),
        },
        Cached::Json { json, version } => {
            decode_json::<T>(&slot.get(), json, *version).map(Some).map_err(|e| with_id(e, key))
        }
    }
}

/// [`Collection::get`](crate::Collection::get) through the warm tier: a hit reads nothing
/// else; a miss reads the hot tier (`hot` when the tier is not in the way) and fills.
pub(crate) fn get<T: Document>(
    runner: Runner<'_>,
    slot: &MetaSlot,
    id: &Value,
    hot: impl FnOnce() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let Some((tier, foreign)) = usable(runner) else { return hot() };
    let Some(key) = Key::new(slot.schema().collection(), id) else { return hot() };
    let epoch = match tier.lookup(&key, foreign) {
        Lookup::Hit(cached) => match restore::<T>(slot, &cached, id)? {
            Some(doc) => return Ok(Some(doc)),
            None => tier.epoch(),
        },
        Lookup::Miss(epoch) => epoch,
    };
    let cold = runner.db().cold();
    let found = runner.read_meta(slot, |conn, meta| {
        let mut out = None;
        conn.query(&meta.sql.select_one, std::slice::from_ref(id), &mut |row| {
            out = Some(fetched::<T>(meta, row, 0, id)?);
            Ok(())
        })?;
        if let Some(found) = out {
            return Ok(Ok(found));
        }
        // A hot miss falls through to the cold tier; what it finds is kept warm like a hot
        // row (the same epoch, pending marks and foreign count guard the fill, and every
        // write that can end a cold copy's life, a rehydration or a delete, goes through
        // the pipeline as a write of the document, which marks it).
        let Some(cold) = cold else { return Ok(Err(None)) };
        match crate::tier::cold::find_doc(cold, conn, meta, id)? {
            Some(doc) => fetched_cold::<T>(meta, doc).map(Ok),
            // Brought back hot (or written) since the hot miss?
            None => crate::store::codec::select_one(conn, meta, id).map(Err),
        }
    })?;
    let found = match found {
        Ok(found) => found,
        Err(cold) => return Ok(cold),
    };
    // No second check of other connections' commits: one that landed since the lookup either
    // moved the tier's count already (the fill is refused) or shows in the file at the next
    // lookup, which drops the tier before it can serve this copy.
    tier.fill(key, found.cached, found.json_bytes, epoch, foreign);
    Ok(Some(found.doc))
}

/// [`Collection::get_many`](crate::Collection::get_many) through the warm tier: the hits
/// from it, the misses in one read of the hot tier (`hot` when the tier is not in the way).
pub(crate) fn get_many<T: Document>(
    runner: Runner<'_>,
    slot: &MetaSlot,
    ids: &[Value],
    hot: impl FnOnce() -> Result<Vec<Option<T>>>,
) -> Result<Vec<Option<T>>> {
    let Some((tier, foreign)) = usable(runner) else { return hot() };
    let collection = slot.schema().collection();
    let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(ids.len()).collect();
    // The misses: their position and key, by stored id.
    let mut misses: HashMap<crate::tier::warm::WarmId, Vec<usize>> = HashMap::new();
    let mut keys: Vec<Value> = Vec::new();
    let mut epoch = None;
    for (i, id) in ids.iter().enumerate() {
        let Some(key) = Key::new(collection, id) else { continue };
        let at = match tier.lookup(&key, foreign) {
            Lookup::Hit(cached) => match restore::<T>(slot, &cached, id)? {
                Some(doc) => {
                    out[i] = Some(doc);
                    continue;
                }
                None => tier.epoch(),
            },
            Lookup::Miss(at) => at,
        };
        // The oldest epoch seen: fills must find nothing written since the first lookup.
        epoch = Some(epoch.map_or(at, |e: u64| e.min(at)));
        let positions = misses.entry(key.id).or_default();
        if positions.is_empty() {
            keys.push(id.clone());
        }
        positions.push(i);
    }
    let Some(epoch) = epoch else { return Ok(out) };
    let cold = runner.db().cold();
    let lists = crate::sql::json_lists(keys.iter().map(Value::as_ref), crate::sql::MAX_VALUE_BYTES);
    let found = runner.read_meta(slot, |conn, meta| {
        let mut found: Vec<(Value, Fetched<T>)> = Vec::new();
        for list in &lists {
            conn.query(&meta.sql.select_many, std::slice::from_ref(list), &mut |row| {
                let id = row.get(0)?.to_owned();
                if IdKey::from_ref(id.as_ref()) == IdKey::Other {
                    return Err(corrupt(meta, "id", &id));
                }
                let doc = fetched::<T>(meta, row, 1, &id)?;
                found.push((id, doc));
                Ok(())
            })?;
        }
        // The ids the hot tier lacks fall through to the cold tier, and what it finds is
        // kept warm like a hot row (see `get`); an id brought back hot meanwhile is read
        // from the hot table again, and not kept.
        let mut again = Vec::new();
        if let Some(cold) = cold {
            let hot: std::collections::HashSet<IdKey> =
                found.iter().map(|(id, _)| IdKey::from_ref(id.as_ref())).collect();
            let lacking: Vec<&Value> = keys.iter().filter(|k| !hot.contains(&IdKey::from_ref(k.as_ref()))).collect();
            for id in lacking {
                match crate::tier::cold::find_doc(cold, conn, meta, id)? {
                    Some(doc) => found.push((id.clone(), fetched_cold::<T>(meta, doc)?)),
                    None => {
                        if let Some(doc) = crate::store::codec::select_one::<T>(conn, meta, id)? {
                            again.push((id.clone(), doc));
                        }
                    }
                }
            }
        }
        Ok((found, again))
    })?;
    let (found, again) = found;
    for (id, doc) in again {
        let Some(key) = Key::new(collection, &id) else { continue };
        let positions = misses.get(&key.id).map_or(&[][..], Vec::as_slice);
        if let Some((&last, rest)) = positions.split_last() {
            for &pos in rest {
                out[pos] = runner.read_meta(slot, |conn, meta| crate::store::codec::select_one(conn, meta, &id))?;
            }
            out[last] = Some(doc);
        }
    }
    let meta = slot.get();
    for (id, fetched) in found {
        let Some(key) = Key::new(collection, &id) else { continue };
        let positions = misses.get(&key.id).map_or(&[][..], Vec::as_slice);
        // A duplicated id in the request gets its own copy at each position.
        if let Some((&last, rest)) = positions.split_last() {
            for &pos in rest {
                out[pos] = restore::<T>(slot, &fetched.cached, &id)?
                    .map_or_else(|| decode_cached::<T>(&meta, &fetched, &id), |d| Ok(Some(d)))?;
            }
            tier.fill(key, fetched.cached, fetched.json_bytes, epoch, foreign);
            out[last] = Some(fetched.doc);
        }
    }
    Ok(out)
}

/// A second copy of a fetched document when its cached form cannot give one (a type that
/// is not `Clone`, cached as JSON: never, the JSON decodes; kept for completeness).
fn decode_cached<T: Document>(meta: &CollectionMeta, fetched: &Fetched<T>, id: &Value) -> Result<Option<T>> {
    let json =
        serde_json::to_string(&fetched.doc).map_err(|e| crate::Error::serialization(meta.collection, None, e))?;
    decode_json::<T>(meta, &json, fetched.doc.version().map(|v| v as i64)).map(Some).map_err(|e| with_id(e, id))
}
