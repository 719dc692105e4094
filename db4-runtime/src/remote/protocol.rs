//! The wire protocol between a [`DurableRouter`](super::DurableRouter) and its shard objects
//! and coordinator: JSON request and reply envelopes, versioned, every shard request carrying
//! the router's ring epoch.
//!
//! Filters travel as a flat postfix list of nodes ([`WireNode`]), so a filter of any depth
//! encodes and decodes without recursion (serde_json refuses nesting beyond 128 levels), and
//! fields travel by name, so a shard object checks them against its own schema.

use crate::cdc::{ChangeEvent, ChangeOp};
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::query::filter::{Atom, CmpOp, Expr};
use crate::schema::Schema;
use crate::shard::{HashRing, MigrationPlan, MovedRange};
use crate::value::Value;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The protocol version this build speaks. A request of another version is refused with
/// [`WireError::Protocol`], never half understood.
pub const PROTOCOL_VERSION: u32 = 1;

/// A value as it travels: SQLite's five storage classes, tagged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireValue {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// A finite float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<&Value> for WireValue {
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => WireValue::Null,
            Value::Integer(i) => WireValue::Int(*i),
            Value::Real(r) => WireValue::Real(*r),
            Value::Text(t) => WireValue::Text(t.clone()),
            Value::Blob(b) => WireValue::Blob(b.clone()),
        }
    }
}

impl From<WireValue> for Value {
    fn from(v: WireValue) -> Self {
        match v {
            WireValue::Null => Value::Null,
            WireValue::Int(i) => Value::Integer(i),
            WireValue::Real(r) => Value::Real(r),
            WireValue::Text(t) => Value::Text(t),
            WireValue::Blob(b) => Value::Blob(b),
        }
    }
}

impl From<&std::ops::Bound<Value>> for WireBound {
    fn from(b: &std::ops::Bound<Value>) -> Self {
        match b {
            std::ops::Bound::Unbounded => WireBound::Unbounded,
            std::ops::Bound::Included(v) => WireBound::Included(v.into()),
            std::ops::Bound::Excluded(v) => WireBound::Excluded(v.into()),
        }
    }
}

impl From<WireBound> for std::ops::Bound<Value> {
    fn from(b: WireBound) -> Self {
        match b {
            WireBound::Unbounded => std::ops::Bound::Unbounded,
            WireBound::Included(v) => std::ops::Bound::Included(v.into()),
            WireBound::Excluded(v) => std::ops::Bound::Excluded(v.into()),
        }
    }
}

impl From<&crate::range::Position> for WirePosition {
    fn from(p: &crate::range::Position) -> Self {
        use crate::range::Position;
        let wire = |key: &[Value]| key.iter().map(WireValue::from).collect();
        match p {
            Position::Start => WirePosition::Start,
            Position::After(key, inclusive) => WirePosition::After { key: wire(key), inclusive: *inclusive },
            Position::Before(key, inclusive) => WirePosition::Before { key: wire(key), inclusive: *inclusive },
        }
    }
}

impl From<WirePosition> for crate::range::Position {
    fn from(p: WirePosition) -> Self {
        use crate::range::Position;
        let values = |key: Vec<WireValue>| key.into_iter().map(Value::from).collect();
        match p {
            WirePosition::Start => Position::Start,
            WirePosition::After { key, inclusive } => Position::After(values(key), inclusive),
            WirePosition::Before { key, inclusive } => Position::Before(values(key), inclusive),
        }
    }
}

/// A comparison operator on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

impl From<CmpOp> for WireOp {
    fn from(op: CmpOp) -> Self {
        match op {
            CmpOp::Eq => WireOp::Eq,
            CmpOp::Ne => WireOp::Ne,
            CmpOp::Gt => WireOp::Gt,
            CmpOp::Gte => WireOp::Gte,
            CmpOp::Lt => WireOp::Lt,
            CmpOp::Lte => WireOp::Lte,
        }
    }
}

impl From<WireOp> for CmpOp {
    fn from(op: WireOp) -> Self {
        match op {
            WireOp::Eq => CmpOp::Eq,
            WireOp::Ne => CmpOp::Ne,
            WireOp::Gt => CmpOp::Gt,
            WireOp::Gte => CmpOp::Gte,
            WireOp::Lt => CmpOp::Lt,
            WireOp::Lte => CmpOp::Lte,
        }
    }
}

/// One node of a filter in postfix order: conditions push themselves, `Not` negates the last
/// pushed node, `And(n)` / `Or(n)` join the last `n`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireNode {
    /// `field op value`.
    Cmp {
        /// The field's name.
        field: String,
        /// The operator.
        op: WireOp,
        /// The operand.
        value: WireValue,
    },
    /// `low <= field <= high`.
    Between {
        /// The field's name.
        field: String,
        /// The lower bound.
        low: WireValue,
        /// The upper bound.
        high: WireValue,
    },
    /// `field` is one of `values`.
    In {
        /// The field's name.
        field: String,
        /// The values.
        values: Vec<WireValue>,
    },
    /// `field` starts with `prefix`.
    StartsWith {
        /// The field's name.
        field: String,
        /// The prefix.
        prefix: String,
    },
    /// `field` is `None` (or, negated, is not).
    IsNull {
        /// The field's name.
        field: String,
        /// `is_some` rather than `is_none`.
        negated: bool,
    },
    /// A condition whose operand could not be bound: the query fails with this reason.
    Invalid {
        /// The field's name.
        field: String,
        /// Why.
        reason: String,
    },
    /// Negates the last node.
    Not,
    /// All of the last `n` nodes.
    And(usize),
    /// Any of the last `n` nodes.
    Or(usize),
}

/// A filter's tree as postfix nodes, fields by name.
pub(crate) fn encode_expr(schema: &Schema, expr: &Expr) -> Vec<WireNode> {
    enum Step<'e> {
        Visit(&'e Expr),
        Emit(WireNode),
    }
    let name = |field: usize| schema.fields().get(field).map_or_else(|| format!("#{field}"), |f| f.name().to_owned());
    let mut out = Vec::new();
    let mut steps = vec![Step::Visit(expr)];
    while let Some(step) = steps.pop() {
        match step {
            Step::Emit(node) => out.push(node),
            Step::Visit(Expr::Atom(atom)) => out.push(match atom {
                Atom::Compare { field, op, value } => {
                    WireNode::Cmp { field: name(*field), op: (*op).into(), value: value.into() }
                }
                Atom::Between { field, low, high } => {
                    WireNode::Between { field: name(*field), low: low.into(), high: high.into() }
                }
                Atom::In { field, values } => {
                    WireNode::In { field: name(*field), values: values.iter().map(WireValue::from).collect() }
                }
                Atom::StartsWith { field, prefix } => {
                    WireNode::StartsWith { field: name(*field), prefix: prefix.clone() }
                }
                Atom::IsNull { field, negated } => WireNode::IsNull { field: name(*field), negated: *negated },
                Atom::Invalid { field, reason } => WireNode::Invalid { field: name(*field), reason: reason.clone() },
            }),
            Step::Visit(Expr::Not(inner)) => {
                steps.push(Step::Emit(WireNode::Not));
                steps.push(Step::Visit(inner));
            }
            Step::Visit(Expr::And(items)) => {
                steps.push(Step::Emit(WireNode::And(items.len())));
                steps.extend(items.iter().rev().map(Step::Visit));
            }
            Step::Visit(Expr::Or(items)) => {
                steps.push(Step::Emit(WireNode::Or(items.len())));
                steps.extend(items.iter().rev().map(Step::Visit));
            }
        }
    }
    out
}

/// The tree of postfix `nodes`, fields resolved against `schema`.
///
/// # Errors
///
/// [`Error::InvalidQuery`] for a field the schema does not have or a malformed list.
pub(crate) fn decode_expr(schema: &Schema, nodes: Vec<WireNode>) -> Result<Expr> {
    let bad = |reason: String| Error::invalid_query(schema.collection(), reason);
    let field = |name: &str| -> Result<usize> {
        schema
            .fields()
            .iter()
            .position(|f| f.name() == name)
            .ok_or_else(|| bad(format!("the filter names field {name:?}, which this collection does not have")))
    };
    let mut stack: Vec<Expr> = Vec::new();
    let take = |stack: &mut Vec<Expr>, n: usize| -> Result<Vec<Expr>> {
        if n > stack.len() {
            return Err(bad(format!("malformed filter: a list of {n} operands with {} available", stack.len())));
        }
        Ok(stack.split_off(stack.len() - n))
    };
    for node in nodes {
        let expr = match node {
            WireNode::Cmp { field: f, op, value } => {
                Expr::Atom(Atom::Compare { field: field(&f)?, op: op.into(), value: value.into() })
            }
            WireNode::Between { field: f, low, high } => {
                Expr::Atom(Atom::Between { field: field(&f)?, low: low.into(), high: high.into() })
            }
            WireNode::In { field: f, values } => {
                Expr::Atom(Atom::In { field: field(&f)?, values: values.into_iter().map(Value::from).collect() })
            }
            WireNode::StartsWith { field: f, prefix } => Expr::Atom(Atom::StartsWith { field: field(&f)?, prefix }),
            WireNode::IsNull { field: f, negated } => Expr::Atom(Atom::IsNull { field: field(&f)?, negated }),
            WireNode::Invalid { field: f, reason } => Expr::Atom(Atom::Invalid { field: field(&f)?, reason }),
            WireNode::Not => {
                let inner = take(&mut stack, 1)?.pop().unwrap_or(Expr::And(Vec::new()));
                Expr::Not(Box::new(inner))
            }
            WireNode::And(n) => Expr::And(take(&mut stack, n)?),
            WireNode::Or(n) => Expr::Or(take(&mut stack, n)?),
        };
        stack.push(expr);
    }
    if stack.len() != 1 {
        return Err(bad(format!("malformed filter: {} roots", stack.len())));
    }
    Ok(stack.pop().unwrap_or(Expr::And(Vec::new())))
}

/// A sort key on the wire: a field by name, and whether it sorts largest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireOrder {
    /// The field's name.
    pub field: String,
    /// Largest first.
    pub descending: bool,
}

/// What a router asks a shard object.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The epoch of the ring the router routed by.
    pub epoch: u64,
    /// The shard the router believes it is talking to.
    pub shard: u32,
    /// The collection.
    pub collection: String,
    /// The operation.
    pub op: ShardOp,
}

/// The operations of a shard object.
///
/// Externally tagged (`{"insert": {"doc": …}}`, `"stats"`): serde cannot hand a buffered
/// (internally tagged) variant's document to a [`RawValue`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardOp {
    /// Stores a new document.
    Insert {
        /// The document's JSON.
        doc: Box<RawValue>,
    },
    /// Stores new documents, all or none (one transaction on this shard).
    InsertMany {
        /// The documents' JSON.
        docs: Vec<Box<RawValue>>,
    },
    /// Reads a document of partition key `key`.
    Get {
        /// The partition key (checked against the shard's ring).
        key: WireValue,
        /// The id.
        id: WireValue,
    },
    /// Replaces a stored document.
    Update {
        /// The document's JSON.
        doc: Box<RawValue>,
    },
    /// Inserts or replaces a document.
    Upsert {
        /// The document's JSON.
        doc: Box<RawValue>,
    },
    /// Deletes a document.
    Delete {
        /// The partition key.
        key: WireValue,
        /// The id.
        id: WireValue,
    },
    /// Adds `delta` to a numeric field.
    Increment {
        /// The partition key.
        key: WireValue,
        /// The id.
        id: WireValue,
        /// The field's name.
        field: String,
        /// The amount, a JSON number.
        delta: serde_json::Value,
    },
    /// Sets `field` to `new` if it holds `expected`.
    CompareAndSwap {
        /// The partition key.
        key: WireValue,
        /// The id.
        id: WireValue,
        /// The field's name.
        field: String,
        /// The expected value, as JSON.
        expected: serde_json::Value,
        /// The new value, as JSON.
        new: serde_json::Value,
    },
    /// The documents matching `filter` (postfix nodes; empty: all), sorted by `order` then by
    /// id, after skipping `offset`, at most `limit`.
    Query {
        /// Each filter as postfix nodes; all must hold.
        filters: Vec<Vec<WireNode>>,
        /// Sort keys.
        order: Vec<WireOrder>,
        /// Documents to skip.
        offset: usize,
        /// At most this many.
        limit: Option<usize>,
    },
    /// How many documents match `filters`.
    Count {
        /// Each filter as postfix nodes; all must hold.
        filters: Vec<Vec<WireNode>>,
    },
    /// Events of the shard's change log after `after`, at most `limit`.
    Changes {
        /// The last LSN already seen.
        after: u64,
        /// At most this many events.
        limit: usize,
    },
    /// The change stream of one partition key's documents: events of this collection after
    /// `after` whose document (after image, else before image) has partition key `partition`,
    /// at most `limit`, examining at most [`MAX_STREAM_SCAN`] events.
    Stream {
        /// The last LSN already seen.
        after: u64,
        /// At most this many events.
        limit: usize,
        /// The partition key.
        partition: WireValue,
    },
    /// The shard's document count and bytes.
    Stats,
    /// Gives the shard object its shard id and the ring; accepted when the ring is at least as
    /// new as the one it holds. A ring that takes hashes away from this shard marks it as
    /// holding moved copies (queries leave them out) until [`ShardOp::FinishClean`].
    Assign {
        /// The ring.
        ring: Box<HashRing>,
    },
    /// A split's copy, on the source: up to `limit` documents after id `after` (in id order),
    /// of those whose partition key hashes into `ranges`. Answers [`ScanPage`].
    ScanMoving {
        /// The moving hash ranges.
        ranges: Vec<MovedRange>,
        /// The last id scanned, `None` from the start.
        after: Option<WireValue>,
        /// Documents scanned (not returned) per call.
        limit: usize,
    },
    /// A split's copy, on the target: the documents stored as given, versions kept, replacing
    /// any copy (idempotent). Answers how many.
    PutMany {
        /// The documents' JSON.
        docs: Vec<Box<RawValue>>,
    },
    /// A split's catch-up, on the target: in order, a document whose key routes here is
    /// written as the event left it, any other id is removed (idempotent). Answers how many.
    ApplyChanges {
        /// The source's events.
        events: Vec<WireChange>,
    },
    /// A split's cleanup, on the source: deletes the documents whose partition key hashes into
    /// `ranges`, scanning `limit` after id `after`. Answers [`ScanPage`] (no documents).
    CleanMoving {
        /// The moved hash ranges.
        ranges: Vec<MovedRange>,
        /// The last id scanned, `None` from the start.
        after: Option<WireValue>,
        /// Documents scanned per call.
        limit: usize,
    },
    /// The cleanup is done: the shard holds only its own documents again.
    FinishClean,
    /// A full-text search's first half: the shard's statistics for `query` and, with
    /// `filters` (`None`: the statistics only), its matching rows with what scoring them
    /// needs. Answers [`SearchPart`]. Refused while the shard holds moved copies.
    SearchPart {
        /// The query, in the search language.
        query: String,
        /// Each filter as postfix nodes; all must hold. `None`: no matches wanted.
        filters: Option<Vec<Vec<WireNode>>>,
    },
    /// A full-text search's second half: the documents of the chosen rows, with highlights
    /// and snippets as asked. Answers [`WireHit`]s.
    SearchPage {
        /// The query, as in the [`ShardOp::SearchPart`] that found the rows.
        query: String,
        /// The highlight markers.
        highlight: Option<(String, String)>,
        /// The snippet length in tokens.
        snippet: Option<usize>,
        /// The text where a snippet cuts its field.
        ellipsis: String,
        /// The rows: `(rowid, id)`.
        wanted: Vec<(i64, WireValue)>,
    },
    /// A range's rows on this shard: at most `limit` documents of the index `index` after
    /// (or before) `position`, in scan order, each with its scan key (the index's keys after
    /// the prefix, the id last). Answers [`RangeRows`]. While the shard holds moved copies,
    /// only its own documents count.
    RangeRows {
        /// The index as a cursor names it: `field:<name>` or `index:<name>`.
        index: String,
        /// The values fixing the index's leading keys.
        prefix: Vec<WireValue>,
        /// The lower bound of the key after the prefix.
        lower: WireBound,
        /// The upper bound.
        upper: WireBound,
        /// The reverse of the index's order.
        descending: bool,
        /// Each filter as postfix nodes; all must hold.
        filters: Vec<Vec<WireNode>>,
        /// Where the rows start.
        position: WirePosition,
        /// At most this many rows (1 to [`MAX_RANGE_ROWS`]).
        limit: usize,
    },
    /// The secret this shard signs range cursors with, as hex: a router signs its own
    /// cursors with its lowest shard's, as the in-process router does. Only for the Worker
    /// that owns the shard objects: never forward protocol requests from clients.
    CursorSecret,
}

/// Rows a [`ShardOp::RangeRows`] may ask for (a router's page is at most this many minus
/// one, plus the row telling whether more follow).
pub const MAX_RANGE_ROWS: usize = 1001;

/// A bound of a range's key on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireBound {
    /// No bound.
    Unbounded,
    /// The value itself included.
    Included(WireValue),
    /// The value itself left out.
    Excluded(WireValue),
}

/// Where a range's rows start on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WirePosition {
    /// At the first row.
    Start,
    /// After `key` (at or after it if `inclusive`), in scan order.
    After {
        /// The scan key.
        key: Vec<WireValue>,
        /// The row at `key` itself included.
        inclusive: bool,
    },
    /// Before `key` (at or before it if `inclusive`): reading backwards.
    Before {
        /// The scan key.
        key: Vec<WireValue>,
        /// The row at `key` itself included.
        inclusive: bool,
    },
}

/// A shard's rows of a range ([`ShardOp::RangeRows`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct RangeRows {
    /// The documents, in scan order, each with its scan key.
    pub rows: Vec<(Box<RawValue>, Vec<WireValue>)>,
    /// More rows follow the last one.
    pub more: bool,
}

/// A shard's part of a full-text search ([`ShardOp::SearchPart`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPart {
    /// Rows of its full-text table.
    pub rows: i64,
    /// Tokens of all its columns.
    pub tokens: i64,
    /// Rows matching each phrase of the query alone.
    pub phrase_rows: Vec<i64>,
    /// The matching rows.
    pub matches: Vec<WireMatch>,
}

/// A matching row of a search ([`SearchPart`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMatch {
    /// The row in the shard's full-text table.
    pub rowid: i64,
    /// The document's id.
    pub id: WireValue,
    /// Tokens in the row.
    pub length: u64,
    /// Per phrase then per column, the instances matched.
    pub hits: Vec<u32>,
}

/// A hit of a search's page ([`ShardOp::SearchPage`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireHit {
    /// The row it was asked for by.
    pub rowid: i64,
    /// The document's JSON.
    pub doc: Box<RawValue>,
    /// `(field, text)` of each field with a match, markers in place.
    pub highlights: Vec<(String, String)>,
    /// The snippet, if asked for.
    pub snippet: Option<String>,
}

/// A page of a split's scan ([`ShardOp::ScanMoving`], [`ShardOp::CleanMoving`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanPage {
    /// The moving documents of the page (copies), or none (cleanup).
    pub docs: Vec<Box<RawValue>>,
    /// Documents deleted (cleanup).
    pub deleted: u64,
    /// The last id scanned: where the next call starts.
    pub next: Option<WireValue>,
    /// The scan reached the end.
    pub done: bool,
}

/// A shard object's answer.
///
/// Externally tagged, as [`ShardOp`] is: `{"ok": {"result": …}}`, `{"stale": {"epoch": 3}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardReply {
    /// Done; the result as JSON (`null` for none).
    Ok {
        /// The operation's result.
        result: Box<RawValue>,
    },
    /// The router's ring is older than the shard's: reload the map (epoch `epoch` or newer)
    /// and route again. Nothing was done.
    Stale {
        /// The shard's epoch.
        epoch: u64,
    },
    /// The shard has no ring of the router's epoch yet: send [`ShardOp::Assign`] and ask
    /// again. Nothing was done.
    NeedsRing {
        /// The epoch the shard holds (0: none).
        epoch: u64,
    },
    /// The operation failed.
    Err {
        /// Why.
        error: WireError,
    },
}

/// The most change-log events one [`ShardOp::Stream`] request examines, its partition's or
/// not: a bounded amount of work per request, however sparse the partition's events are.
pub const MAX_STREAM_SCAN: usize = 1000;

/// A page of a partition's change stream, from [`ShardOp::Stream`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamPage {
    /// The partition's events, in LSN order.
    pub events: Vec<WireChange>,
    /// The LSN to continue after: the last event examined (the partition's or not), or the
    /// request's `after` if there was none.
    pub next: u64,
    /// The shard's newest LSN when it answered: `next == last_lsn` means caught up.
    pub last_lsn: u64,
    /// Events of this collection examined that carry no image to tell their partition (a
    /// delete, unless the database keeps before images or the collection records full
    /// changes): left out, never guessed.
    #[serde(default)]
    pub unattributed: u64,
}

/// A shard's statistics, from [`ShardOp::Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireStats {
    /// Documents stored.
    pub documents: u64,
    /// Bytes of their JSON.
    pub bytes: u64,
    /// The change log's last LSN.
    pub last_lsn: u64,
    /// Requests this shard object answered per second, over the last minute (every
    /// collection it serves: they share the object's throughput).
    #[serde(default)]
    pub ops_per_sec: f64,
    /// The bytes its whole database takes ([`Db::database_bytes`](crate::Db::database_bytes)).
    #[serde(default)]
    pub database_bytes: u64,
}

/// A change-log event on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireChange {
    /// Its LSN in the shard's log.
    pub lsn: u64,
    /// The committing transaction's first LSN.
    pub tx_id: u64,
    /// The collection.
    pub collection: String,
    /// The document's id.
    pub id: WireValue,
    /// `insert`, `update`, `upsert`, `delete`, `archive` or `restore`.
    pub op: String,
    /// The version after the change.
    pub version: Option<u64>,
    /// Commit time, Unix milliseconds.
    pub at: u64,
    /// The document before, JSON text.
    pub before: Option<String>,
    /// The document after, JSON text.
    pub after: Option<String>,
}

impl From<&ChangeEvent> for WireChange {
    fn from(e: &ChangeEvent) -> Self {
        WireChange {
            lsn: e.lsn.get(),
            tx_id: e.tx_id,
            collection: e.collection.clone(),
            id: (&e.id).into(),
            op: op_name(e.op).to_owned(),
            version: e.version,
            at: e.at,
            before: e.before.clone(),
            after: e.after.clone(),
        }
    }
}

fn op_name(op: ChangeOp) -> &'static str {
    match op {
        ChangeOp::Insert => "insert",
        ChangeOp::Update => "update",
        ChangeOp::Upsert => "upsert",
        ChangeOp::Delete => "delete",
        ChangeOp::Archive => "archive",
        ChangeOp::Restore => "restore",
    }
}

/// The operations of the coordinator, which holds each collection's shard map.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CoordinatorOp {
    /// The stored map, or `null`.
    Load {
        /// The collection.
        collection: String,
    },
    /// Stores `map` if the collection has none; answers the stored one either way (so racing
    /// routers agree on the first).
    Init {
        /// The map.
        map: Box<ShardMap>,
    },
    /// Replaces the map if the stored one has epoch `expected` (and the same plan step).
    Store {
        /// The epoch the caller read.
        expected: u64,
        /// The new map.
        map: Box<ShardMap>,
    },
}

/// Where a collection's documents live: the ring and a migration in progress. Held by the
/// coordinator, cached by each router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardMap {
    /// The map's format (1).
    pub format: u32,
    /// The collection.
    pub collection: String,
    /// The ring documents are routed by.
    pub ring: HashRing,
    /// A split in progress.
    pub plan: Option<MigrationPlan>,
}

/// An error on the wire: the variants of [`Error`] a caller acts on, with their fields; any
/// other as its kind and message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(missing_docs, reason = "each variant mirrors the Error variant of the same name")]
pub enum WireError {
    NotFound {
        collection: String,
        id: String,
    },
    AlreadyExists {
        collection: String,
        id: String,
    },
    Conflict {
        collection: String,
        id: String,
        expected: u64,
        actual: u64,
    },
    InvalidQuery {
        collection: String,
        reason: String,
    },
    InvalidValue {
        collection: String,
        field: String,
        reason: String,
    },
    TooLarge {
        collection: String,
        id: String,
        size: usize,
        limit: usize,
    },
    SchemaMismatch {
        collection: String,
        field: String,
        reason: String,
    },
    Corrupted {
        collection: String,
        id: Option<String>,
        what: String,
    },
    LogTruncated {
        oldest: u64,
    },
    CrossShard {
        collection: String,
        shard: u32,
        other: u32,
        key: String,
    },
    /// The request's protocol version or shape is not understood.
    Protocol {
        reason: String,
    },
    /// Anything else: a backend error (by kind) or another error's message.
    Other {
        backend: Option<String>,
        message: String,
    },
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e {
            Error::NotFound { collection, id } => {
                WireError::NotFound { collection: collection.clone(), id: id.clone() }
            }
            Error::AlreadyExists { collection, id } => {
                WireError::AlreadyExists { collection: collection.clone(), id: id.clone() }
            }
            Error::Conflict { collection, id, expected, actual } => WireError::Conflict {
                collection: collection.clone(),
                id: id.clone(),
                expected: *expected,
                actual: *actual,
            },
            Error::InvalidQuery { collection, reason } => {
                WireError::InvalidQuery { collection: collection.clone(), reason: reason.clone() }
            }
            Error::InvalidValue { collection, field, reason } => {
                WireError::InvalidValue { collection: collection.clone(), field: field.clone(), reason: reason.clone() }
            }
            Error::TooLarge { collection, id, size, limit } => {
                WireError::TooLarge { collection: collection.clone(), id: id.clone(), size: *size, limit: *limit }
            }
            Error::SchemaMismatch { collection, field, reason } => WireError::SchemaMismatch {
                collection: collection.clone(),
                field: field.clone(),
                reason: reason.clone(),
            },
            Error::Corrupted { collection, id, what } => {
                WireError::Corrupted { collection: collection.clone(), id: id.clone(), what: what.clone() }
            }
            Error::LogTruncated { oldest } => WireError::LogTruncated { oldest: oldest.get() },
            Error::CrossShard { collection, shard, other, key } => {
                WireError::CrossShard { collection: collection.clone(), shard: *shard, other: *other, key: key.clone() }
            }
            Error::Backend(b) => {
                WireError::Other { backend: Some(format!("{:?}", b.kind())), message: b.message().into() }
            }
            other => WireError::Other { backend: None, message: other.to_string() },
        }
    }
}

impl WireError {
    /// The [`Error`] this stands for; `shard` names the shard in messages that need it.
    pub fn into_error(self, shard: u32) -> Error {
        match self {
            WireError::NotFound { collection, id } => Error::NotFound { collection, id },
            WireError::AlreadyExists { collection, id } => Error::AlreadyExists { collection, id },
            WireError::Conflict { collection, id, expected, actual } => {
                Error::Conflict { collection, id, expected, actual }
            }
            WireError::InvalidQuery { collection, reason } => Error::InvalidQuery { collection, reason },
            WireError::InvalidValue { collection, field, reason } => Error::InvalidValue { collection, field, reason },
            WireError::TooLarge { collection, id, size, limit } => Error::TooLarge { collection, id, size, limit },
            WireError::SchemaMismatch { collection, field, reason } => {
                Error::SchemaMismatch { collection, field, reason }
            }
            WireError::Corrupted { collection, id, what } => {
                Error::Corrupted { collection, id, what: format!("shard {shard}: {what}") }
            }
            WireError::LogTruncated { oldest } => Error::LogTruncated { oldest: crate::lsn::Lsn::new(oldest) },
            WireError::CrossShard { collection, shard, other, key } => {
                Error::CrossShard { collection, shard, other, key }
            }
            WireError::Protocol { reason } => Error::Backend(BackendError::new(
                BackendErrorKind::Unsupported,
                format!("shard {shard} does not understand the request: {reason}"),
            )),
            WireError::Other { backend, message } => {
                let kind = match backend.as_deref() {
                    Some("Busy") => BackendErrorKind::Busy,
                    Some("Constraint") => BackendErrorKind::Constraint,
                    Some("TooBig") => BackendErrorKind::TooBig,
                    Some("Corrupt") => BackendErrorKind::Corrupt,
                    Some("Io") => BackendErrorKind::Io,
                    Some("ReadOnly") => BackendErrorKind::ReadOnly,
                    Some("Unsupported") => BackendErrorKind::Unsupported,
                    _ => BackendErrorKind::Other,
                };
                Error::Backend(BackendError::new(kind, format!("shard {shard}: {message}")))
            }
        }
    }
}

/// `value` as JSON bytes.
pub(crate) fn to_bytes(collection: &str, value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::serialization(collection, None, e))
}

/// `value` as a raw JSON value.
pub(crate) fn to_raw(collection: &str, value: &impl Serialize) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::serialization(collection, None, e))
}
