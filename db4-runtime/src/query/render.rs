//! Filters as SQL conditions: what a [`Filter`](crate::Filter) means in Rust, written as one
//! SQL expression within the expression depth limit.
//!
//! # Meaning
//!
//! `NOT` never appears in the SQL. Negations are pushed down to the conditions (De Morgan:
//! `!(a | b)` is `!a & !b`), and each condition is written in the polarity it ends up with, as
//! an expression that is true exactly when the Rust predicate holds over `Option`'s order
//! (`None` below every value): `!x.gt(v)` is `x.lte(v)`, written `(x <= ? OR x IS NULL)`.
//! Where such an expression can be NULL rather than false (`x > ?` when `x` is NULL), the Rust
//! predicate is false, and NULL rejects the row as false does. Nothing above a condition negates
//! it, and AND and OR never turn a NULL operand into true where false would not, so every
//! document matches exactly one of `p` and `!p`.
//!
//! # Depth
//!
//! SQLite gives a leaf (a column, a parameter, a literal) height 1 and an operator or function
//! call one more than its highest operand, and refuses a statement with an expression higher
//! than its limit. Operands of nested ANDs (ORs) are gathered into one list and written as a
//! balanced tree, so n conditions add ceil(log2 n) levels, and only alternating AND and OR nest.
//! Each condition computes its own height as SQLite will, and the condition's height is checked
//! against the limit (SQLite adds a level when the condition holds a subquery, and the levels of
//! the expression around it, if any: see `Query::delete`). Rendering also passes down how many
//! levels are left and checks every condition against it, so that the recursion is bounded by
//! the limit whatever the filter's shape; negations and one-operand lists, which add no level,
//! are looked through in loops. A statement SQLite would refuse is refused here first.

use crate::error::Result;
use crate::query::filter::{Atom, CmpOp, Expr, Stripped as Node, strip};
#[cfg(all(test, feature = "sqlite"))]
use crate::sql::MAX_VALUE_BYTES;
use crate::sql::{MAX_EXPR_DEPTH, Statement};
use crate::value::Value;

/// Lists of up to this many values are bound value by value (`x IN (?1, ?2)`), longer ones as
/// one JSON array (`x IN (SELECT value FROM json_each(?1))`): one parameter, and one statement
/// text for every length, which the statement cache keeps.
const INLINE_LIST_MAX: usize = 16;

/// The height SQLite gives an operator or function over operands of these heights.
fn over(operands: &[usize]) -> usize {
    1 + operands.iter().copied().max().unwrap_or(0)
}

/// The operands of a list, in order, with the operands of nested lists of the same operator
/// spliced in (`a & (b & c)` is `a & b & c`). Iterative: a chain built by folding `and` is as
/// deep as it is long.
fn flatten(conj: bool, items: &[Expr], neg: bool) -> Vec<Node<'_>> {
    let mut out = Vec::with_capacity(items.len());
    let mut open = vec![(items.iter(), neg)];
    while let Some((iter, neg)) = open.last_mut() {
        let neg = *neg;
        let Some(item) = iter.next() else {
            open.pop();
            continue;
        };
        match strip(item, neg) {
            Node::List { conj: c, items, neg } if c == conj => open.push((items.iter(), neg)),
            operand => out.push(operand),
        }
    }
    out
}

impl Statement<'_> {
    /// Writes the condition that all of `filters` hold. `enclosing` is how many levels SQLite
    /// counts around the condition (0 for a statement's own `WHERE`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`](crate::Error::InvalidQuery) for a condition that cannot be
    /// bound, or past the depth or length limit.
    pub fn filters(&mut self, filters: &[Expr], enclosing: usize) -> Result<()> {
        let room = MAX_EXPR_DEPTH.saturating_sub(enclosing);
        let height = self.node(Node::List { conj: true, items: filters, neg: false }, room)?;
        // Resolving a subquery (a list read with json_each) inside the condition, SQLite counts
        // the subquery's own expressions on top of the whole condition's height: one level.
        self.fit(height + usize::from(self.has_subquery), room)
    }

    /// Writes `node` as an expression at most `room` levels high; returns its height.
    fn node(&mut self, mut node: Node<'_>, room: usize) -> Result<usize> {
        loop {
            match node {
                Node::Atom(atom, neg) => return self.atom(atom, neg, room),
                Node::List { conj, items, neg } => {
                    let operands = flatten(conj, items, neg);
                    match operands.as_slice() {
                        // A list of one adds no level: go on with the operand.
                        [one] => node = *one,
                        _ => return self.list(&operands, conj, room),
                    }
                }
            }
        }
    }

    /// Writes `operands` joined by AND (`conj`) or OR as a balanced tree; returns its height.
    fn list(&mut self, operands: &[Node<'_>], conj: bool, room: usize) -> Result<usize> {
        match operands {
            [] => {
                // `Filter::all([])` holds, `Filter::any([])` does not.
                self.push(if conj { "1" } else { "0" });
                self.fit(1, room)?;
                Ok(1)
            }
            [one] => self.node(*one, room),
            _ => {
                // The operator takes a level; its operands must fit in the rest.
                let room = room.checked_sub(1).ok_or_else(|| self.too_deep())?;
                let (left, right) = operands.split_at(operands.len() / 2);
                self.push("(");
                let left = self.list(left, conj, room)?;
                self.push(if conj { " AND " } else { " OR " });
                let right = self.list(right, conj, room)?;
                self.push(")");
                Ok(over(&[left, right]))
            }
        }
    }

    /// Writes a condition, negated if `neg`, checks its height against `room` and returns it.
    fn atom(&mut self, atom: &Atom, neg: bool, room: usize) -> Result<usize> {
        let height = match atom {
            Atom::Compare { field, op, value: Value::Null } => match op {
                CmpOp::Eq => self.null_test(*field, neg)?,
                CmpOp::Ne => self.null_test(*field, !neg)?,
                _ => return Err(self.invalid_field(*field, "cannot compare order with None")),
            },
            Atom::Compare { field, op, value } => self.compare(*field, if neg { op.negated() } else { *op }, value)?,
            Atom::Between { field, low, high } => {
                if matches!(low, Value::Null) || matches!(high, Value::Null) {
                    return Err(self.invalid_field(*field, "between bounds cannot be None"));
                }
                self.between(*field, low, high, neg)?
            }
            Atom::In { field, values } => self.in_list(*field, values, neg)?,
            Atom::StartsWith { field, prefix } => self.starts_with(*field, prefix, neg)?,
            Atom::IsNull { field, negated } => self.null_test(*field, *negated != neg)?,
            Atom::Invalid { field, reason } => return Err(self.invalid_field(*field, reason)),
        };
        self.check_length()?;
        self.fit(height, room)?;
        Ok(height)
    }

    /// `x IS NOT NULL` (`some`) or `x IS NULL`; returns the height.
    fn null_test(&mut self, field: usize, some: bool) -> Result<usize> {
        self.push("(");
        let x = self.field(field)?;
        self.push(if some { " IS NOT NULL)" } else { " IS NULL)" });
        Ok(x + 1)
    }

    /// `x op value` for a value that is not `None`; returns the height.
    fn compare(&mut self, field: usize, op: CmpOp, value: &Value) -> Result<usize> {
        // `IS` rather than `=`: never NULL, and just as usable by an index. `<` and `<=` match
        // `None`, which orders below every value.
        let (sym, or_none) = match op {
            CmpOp::Eq => (" IS ", false),
            CmpOp::Ne => (" IS NOT ", false),
            CmpOp::Gt => (" > ", false),
            CmpOp::Gte => (" >= ", false),
            CmpOp::Lt => (" < ", true),
            CmpOp::Lte => (" <= ", true),
        };
        let slot = self.bind(value.clone())?;
        self.push("(");
        let x = self.field(field)?;
        self.push(sym);
        self.push_slot(slot);
        let mut height = over(&[x, slot.height()]);
        if or_none {
            height = self.or_none(field, height)?;
        }
        self.push(")");
        Ok(height)
    }

    /// Appends ` OR x IS NULL` to an expression of height `left`; returns the new height.
    fn or_none(&mut self, field: usize, left: usize) -> Result<usize> {
        self.push(" OR ");
        let x = self.field(field)?;
        self.push(" IS NULL");
        Ok(over(&[left, x + 1]))
    }

    /// `low <= x <= high`, or its complement (`None` included); returns the height.
    fn between(&mut self, field: usize, low: &Value, high: &Value, neg: bool) -> Result<usize> {
        let (low, high) = (self.bind(low.clone())?, self.bind(high.clone())?);
        self.push("(");
        let x = self.field(field)?;
        self.push(if neg { " NOT BETWEEN " } else { " BETWEEN " });
        self.push_slot(low);
        self.push(" AND ");
        self.push_slot(high);
        // `NOT BETWEEN` is parsed as NOT over BETWEEN: one level more.
        let mut height = over(&[x, low.height(), high.height()]) + usize::from(neg);
        if neg {
            height = self.or_none(field, height)?;
        }
        self.push(")");
        Ok(height)
    }

    /// `x` is one of `values` (`None` matching only a `None` among them), or the complement;
    /// returns the height.
    fn in_list(&mut self, field: usize, values: &[Value], neg: bool) -> Result<usize> {
        let with_none = values.iter().any(|v| matches!(v, Value::Null));
        let values: Vec<&Value> = values.iter().filter(|v| !matches!(v, Value::Null)).collect();
        if values.is_empty() {
            // Only `None` is listed, or nothing is.
            return match (with_none, neg) {
                (true, _) => self.null_test(field, neg),
                (false, false) => {
                    self.push("0");
                    Ok(1)
                }
                (false, true) => {
                    self.push("1");
                    Ok(1)
                }
            };
        }
        self.push("(");
        let x = self.field(field)?;
        self.push(if neg { " NOT IN (" } else { " IN (" });
        let mut height = if values.len() <= INLINE_LIST_MAX && values.len() <= self.inline_room() {
            // SQLite rewrites a list of one, `x IN (?)`, as an equality one level below the IN.
            let single = usize::from(values.len() == 1);
            let mut highest = x;
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    self.push(", ");
                }
                let slot = self.bind((*value).clone())?;
                self.push_slot(slot);
                highest = highest.max(slot.height() + single);
            }
            1 + highest
        } else {
            let list = self.bind_list(&values)?;
            self.push("SELECT value FROM ");
            self.push_list(list);
            // The subquery's result column is a leaf; see `filters` for its cost beyond that.
            self.has_subquery = true;
            1 + x
        };
        self.push(")");
        // `NOT IN` is parsed as NOT over IN: one level more.
        height += usize::from(neg);
        // For a `None` field both `x IN (...)` and `x NOT IN (...)` are NULL: right when the
        // answer is false, completed with `x IS NULL` when it is true.
        if with_none != neg {
            height = self.or_none(field, height)?;
        }
        self.push(")");
        Ok(height)
    }

    /// `x` is text starting with `prefix`, or the complement (`None` included); returns the
    /// height.
    fn starts_with(&mut self, field: usize, prefix: &str, neg: bool) -> Result<usize> {
        // The prefix is compared as bytes: SQLite's text functions stop at a NUL character,
        // its blob functions do not. The text comparison `x >= prefix`, true of every text that
        // starts with it, lets an index narrow the scan.
        let p = self.bind(Value::Text(prefix.to_owned()))?;
        self.push("(");
        let x = self.field(field)?;
        if prefix.is_empty() {
            // Every text starts with "", and is >= "". (The byte comparison below would not do
            // here: `substr` of an empty blob is NULL, not an empty blob.)
            let height = if neg {
                self.push(" IS NULL OR ");
                self.field(field)?;
                self.push(" < ");
                self.push_slot(p);
                over(&[x + 1, over(&[x, p.height()])])
            } else {
                self.push(" >= ");
                self.push_slot(p);
                over(&[x, p.height()])
            };
            self.push(")");
            return Ok(height);
        }
        let n = self.bind(Value::Integer(i64::try_from(prefix.len()).unwrap_or(i64::MAX)))?;
        let bound = if neg {
            self.push(" IS NULL OR ");
            self.field(field)?;
            self.push(" < ");
            self.push_slot(p);
            self.push(" OR ");
            over(&[x + 1, over(&[x, p.height()])])
        } else {
            self.push(" >= ");
            self.push_slot(p);
            self.push(" AND ");
            over(&[x, p.height()])
        };
        // An empty text (a blob of no bytes, whose `substr` is NULL) is below any other prefix,
        // so the text comparison alone decides for it.
        self.push("substr(CAST(");
        self.field(field)?;
        self.push(" AS BLOB), 1, ");
        self.push_slot(n);
        self.push(if neg { ") <> CAST(" } else { ") = CAST(" });
        self.push_slot(p);
        self.push(" AS BLOB))");
        let bytes = over(&[over(&[x + 1, 1, n.height()]), p.height() + 1]);
        Ok(over(&[bound, bytes]))
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    //! The heights the renderer computes are the ones SQLite counts: checked for every kind of
    //! condition, in both polarities, on every kind of field, with values bound as parameters
    //! and spilled, against a real connection with the Durable Object limits.

    use super::*;
    use crate::schema::{FieldDef, IdKind, IndexKind, Schema};
    use crate::sql::{MAX_PARAMS, MAX_SQL_BYTES};
    use crate::store::meta::CollectionMeta;

    static FIELDS: [FieldDef; 4] = [
        FieldDef::new("id", "id", "i64").id(),
        FieldDef::new("tag", "tag", "Option<String>").index(IndexKind::Equality),
        FieldDef::new("n", "n", "Option<i64>").index(IndexKind::Range),
        FieldDef::new("text", "text", "Option<String>"),
    ];
    static SCHEMA: Schema = Schema::new("rows", "Row", &FIELDS);

    fn connection() -> rusqlite::Connection {
        use rusqlite::limits::Limit as L;
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.set_limit(L::SQLITE_LIMIT_VARIABLE_NUMBER, MAX_PARAMS as i32).unwrap();
        conn.set_limit(L::SQLITE_LIMIT_EXPR_DEPTH, MAX_EXPR_DEPTH as i32).unwrap();
        conn.set_limit(L::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES as i32).unwrap();
        conn.execute_batch(&SCHEMA.ddl(IdKind::Integer).join(";\n")).unwrap();
        conn
    }

    fn atoms(field: usize) -> Vec<Atom> {
        let text = |s: &str| Value::Text(s.to_owned());
        let mut atoms: Vec<Atom> = [CmpOp::Eq, CmpOp::Ne, CmpOp::Gt, CmpOp::Gte, CmpOp::Lt, CmpOp::Lte]
            .into_iter()
            .map(|op| Atom::Compare { field, op, value: text("v") })
            .collect();
        atoms.extend([
            Atom::Compare { field, op: CmpOp::Eq, value: Value::Null },
            Atom::Compare { field, op: CmpOp::Ne, value: Value::Null },
            Atom::Between { field, low: Value::Integer(1), high: Value::Integer(5) },
            Atom::In { field, values: vec![text("a"), text("b")] },
            Atom::In { field, values: vec![text("a"), Value::Null] },
            Atom::In { field, values: (0..40).map(Value::Integer).collect() },
            Atom::In { field, values: (0..40).map(Value::Integer).chain([Value::Null]).collect() },
            Atom::In { field, values: vec![Value::Null] },
            Atom::In { field, values: vec![] },
            Atom::StartsWith { field, prefix: "a\0b".into() },
            Atom::StartsWith { field, prefix: String::new() },
            Atom::IsNull { field, negated: false },
            Atom::IsNull { field, negated: true },
        ]);
        atoms
    }

    /// The statement's condition for `expr` with `enclosing` levels around it, if it fits.
    fn render(meta: &CollectionMeta, expr: &Expr, budget: usize, enclosing: usize) -> Result<(String, Vec<Value>)> {
        let mut sql = Statement::with_inline_budget(meta.schema, &meta.fields, budget);
        sql.filters(std::slice::from_ref(expr), enclosing)?;
        sql.finish()
    }

    /// How many levels of expression the renderer lets surround `expr`'s condition.
    fn room_around(meta: &CollectionMeta, expr: &Expr, budget: usize) -> usize {
        let fits = (0..=MAX_EXPR_DEPTH).take_while(|&e| render(meta, expr, budget, e).is_ok()).count();
        assert!(fits > 0, "{expr:?} does not render: {:?}", render(meta, expr, budget, 0).err());
        fits - 1
    }

    /// Whether SQLite accepts `sql` with `{}` replaced by the condition under `nots` levels of
    /// `NOT`.
    fn sqlite_accepts(conn: &rusqlite::Connection, sql: &str, condition: &str, nots: usize) -> bool {
        let wrapped = format!("{}{condition}{}", "NOT (".repeat(nots), ")".repeat(nots));
        let sql = sql.replace("{}", &wrapped);
        match conn.prepare(&sql) {
            Ok(_) => true,
            Err(e) if e.to_string().contains("Expression tree is too large") => false,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    const SELECT: &str = "SELECT 1 FROM \"rows\" WHERE {}";

    /// Checks that SQLite allows exactly the levels around `expr`'s condition that the renderer
    /// does, and that the condition runs.
    fn check(meta: &CollectionMeta, conn: &rusqlite::Connection, expr: &Expr, budget: usize) {
        let room = room_around(meta, expr, budget);
        let (condition, params) = render(meta, expr, budget, 0).unwrap();
        assert!(sqlite_accepts(conn, SELECT, &condition, room), "{condition}: SQLite refuses {room} levels around");
        assert!(!sqlite_accepts(conn, SELECT, &condition, room + 1), "{condition}: SQLite takes {} levels", room + 1);
        let sql = format!("SELECT count(*) FROM \"rows\" WHERE {condition}");
        let n: i64 = conn
            .query_row(&sql, rusqlite::params_from_iter(params.iter()), |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(n, 0);
    }

    fn meta() -> CollectionMeta {
        CollectionMeta::fresh(&SCHEMA, IdKind::Integer).unwrap()
    }

    fn eq(field: usize, i: i64) -> Expr {
        Expr::Atom(Atom::Compare { field, op: CmpOp::Eq, value: Value::Integer(i) })
    }

    /// `depth` binary nodes alternating OR and AND.
    fn alternating(field: usize, depth: usize) -> Expr {
        let mut e = eq(field, 0);
        for level in 0..depth {
            let pair = vec![eq(field, level as i64 + 1), e];
            e = if level % 2 == 0 { Expr::Or(pair) } else { Expr::And(pair) };
        }
        e
    }

    #[test]
    fn computed_heights_are_sqlites() {
        let (meta, conn) = (meta(), connection());
        let mut checked = 0;
        for field in 0..FIELDS.len() {
            for atom in atoms(field) {
                for neg in [false, true] {
                    let atom = Expr::Atom(atom.clone());
                    let expr = if neg { Expr::Not(Box::new(atom)) } else { atom };
                    for budget in [MAX_PARAMS - 3, 0] {
                        check(&meta, &conn, &expr, budget);
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, FIELDS.len() * 19 * 2 * 2);
    }

    #[test]
    fn a_subquery_anywhere_costs_a_level_on_top() {
        let (meta, conn) = (meta(), connection());
        let long_list = |field| Expr::Atom(Atom::In { field, values: (0..40).map(Value::Integer).collect() });
        let short_list = |field| Expr::Atom(Atom::In { field, values: (0..4).map(Value::Integer).collect() });
        for field in 0..FIELDS.len() {
            for depth in [0, 1, 5, 40, 90] {
                check(&meta, &conn, &Expr::Or(vec![long_list(field), alternating(field, depth)]), MAX_PARAMS - 3);
                check(&meta, &conn, &Expr::And(vec![alternating(field, depth), short_list(field)]), MAX_PARAMS - 3);
                let deep_list = Expr::Or(vec![eq(field, -1), Expr::And(vec![eq(field, -2), long_list(field)])]);
                check(&meta, &conn, &Expr::And(vec![alternating(field, depth), deep_list]), 0);
            }
        }
    }

    #[test]
    fn lists_add_logarithmic_heights() {
        let (meta, conn) = (meta(), connection());
        for n in [1_i64, 2, 3, 4, 5, 8, 9, 16, 17, 100, 1000] {
            let list = Expr::Or((0..n).map(|i| eq(0, i)).collect());
            let room = room_around(&meta, &list, MAX_PARAMS - 3);
            let levels = (n as u64).next_power_of_two().trailing_zeros() as usize;
            // `"_id" IS ?1` is 2 levels high; past the parameter budget, `"_id" IS ?97->>0` 3.
            let atom_height = if n > MAX_PARAMS as i64 - 3 { 3 } else { 2 };
            assert_eq!(MAX_EXPR_DEPTH - room, atom_height + levels, "{n} alternatives");
            check(&meta, &conn, &list, MAX_PARAMS - 3);
        }
    }

    #[test]
    fn statement_shapes_add_their_levels() {
        let (meta, conn) = (meta(), connection());
        // As `Query::delete` and `Query::count` write them with a limit.
        let delete = "DELETE FROM \"rows\" WHERE \"_id\" IN (SELECT \"_id\" FROM (SELECT \"_id\" FROM \"rows\" \
                      WHERE {} ORDER BY \"_id\" LIMIT ?90 OFFSET ?91)) RETURNING \"_id\"";
        let count = "SELECT count(*) FROM (SELECT 1 FROM \"rows\" WHERE {} LIMIT ?90 OFFSET ?91)";
        let exprs = [
            Expr::Atom(Atom::StartsWith { field: 3, prefix: "x".into() }),
            Expr::Or(vec![
                alternating(2, 30),
                Expr::Atom(Atom::In { field: 1, values: (0..40).map(Value::Integer).collect() }),
            ]),
        ];
        for expr in &exprs {
            let room = room_around(&meta, expr, MAX_PARAMS - 3);
            let (condition, _) = render(&meta, expr, MAX_PARAMS - 3, 0).unwrap();
            assert!(sqlite_accepts(&conn, delete, &condition, room - 2), "{delete}");
            assert!(!sqlite_accepts(&conn, delete, &condition, room - 1), "{delete}");
            assert!(sqlite_accepts(&conn, count, &condition, room), "{count}");
            assert!(!sqlite_accepts(&conn, count, &condition, room + 1), "{count}");
        }
    }

    #[test]
    fn spilled_values_read_back_as_bound_ones() {
        let (meta, conn) = (meta(), connection());
        let values = [
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Integer(0),
            Value::Real(0.1),
            Value::Real(-1.5e300),
            Value::Real(f64::MIN_POSITIVE),
            Value::Real(1.0),
            Value::Real(123_456.789_012_345_67),
            Value::Text(String::new()),
            Value::Text("a\0b\"é\\\n".into()),
        ];
        for value in values {
            let mut sql = Statement::with_inline_budget(meta.schema, &meta.fields, 0);
            sql.push("SELECT ");
            let slot = sql.bind(value.clone()).unwrap();
            sql.push_slot(slot);
            sql.push(" IS ?");
            sql.push(&(sql.params.len() + 1).to_string());
            let (text, mut params) = sql.finish().unwrap();
            params.push(value.clone());
            let same: bool = conn.query_row(&text, rusqlite::params_from_iter(params.iter()), |r| r.get(0)).unwrap();
            assert!(same, "{value:?} spilled reads back as bound: {text}");
        }
    }

    #[test]
    fn finish_refuses_what_is_past_a_limit() {
        let meta = meta();
        let mut sql = meta.statement();
        for i in 0..=MAX_PARAMS {
            let slot = sql.bind_param(Value::Integer(i as i64));
            sql.push_slot(slot);
        }
        let e = sql.finish().unwrap_err();
        assert!(e.to_string().contains("binds 101 values"), "{e}");
        let mut sql = meta.statement();
        sql.bind(Value::Text("x".repeat(MAX_VALUE_BYTES + 1))).unwrap();
        assert!(sql.finish().unwrap_err().to_string().contains("a value of"));
        let mut sql = meta.statement();
        sql.push(&" ".repeat(MAX_SQL_BYTES + 1));
        assert!(sql.finish().unwrap_err().to_string().contains("bytes of SQL"));
        let mut sql = Statement::with_inline_budget(meta.schema, &meta.fields, 0);
        assert!(sql.bind(Value::Blob(vec![1])).is_err(), "JSON holds no blobs");
    }
}
