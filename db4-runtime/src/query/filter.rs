//! Typed field handles, the filters and sort orders built from them, and the untyped tree
//! behind those that SQL rendering (`render`) and in-memory evaluation read.

use crate::schema::{OptionField, Ordered, QueryValue, TextField};
use crate::value::{Value, ValueError};
use std::marker::PhantomData;

/// A typed handle on field `T` of document type `D`, from `D::fields()`.
///
/// Comparisons take values of the field's own type, and the filters they build only fit
/// queries over `D`: comparing `views: i64` with `"x"`, or filtering articles with a field of
/// another document type, does not compile.
pub struct Field<D, T> {
    index: usize,
    _marker: PhantomData<fn() -> (D, T)>,
}

impl<D, T> Clone for Field<D, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D, T> Copy for Field<D, T> {}

impl<D, T> std::fmt::Debug for Field<D, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Field").field("index", &self.index).finish()
    }
}

impl<D, T> Field<D, T> {
    /// The handle on the field at `index` in `D`'s schema. Used by generated code.
    #[doc(hidden)]
    pub const fn __new(index: usize) -> Self {
        Self { index, _marker: PhantomData }
    }

    /// The field's position in the document's schema.
    pub const fn index(&self) -> usize {
        self.index
    }

    fn atom(self, atom: Result<Atom, ValueError>) -> Filter<D> {
        Filter::new(Expr::Atom(atom.unwrap_or_else(|e| Atom::Invalid { field: self.index, reason: e.0 })))
    }

    fn compare(self, op: CmpOp, value: Result<Value, ValueError>) -> Filter<D> {
        self.atom(value.map(|value| Atom::Compare { field: self.index, op, value }))
    }

    /// Field equals `value`, as `==` says: `eq(None)` matches a `None` (a missing key or a JSON
    /// null), and `eq(v)` for any other value never does.
    pub fn eq(self, value: impl QueryValue<T>) -> Filter<D> {
        self.compare(CmpOp::Eq, value.into_value())
    }

    /// Field differs from `value`, as `!=` says: a `None` field differs from every other value.
    /// Always the same as `!field.eq(value)`.
    pub fn ne(self, value: impl QueryValue<T>) -> Filter<D> {
        self.compare(CmpOp::Ne, value.into_value())
    }

    /// Field is one of `values`; a `None` field matches only if `values` holds a `None`.
    ///
    /// Any number of values works: short lists are bound value by value, longer ones as one
    /// JSON array.
    pub fn in_list<V: QueryValue<T>>(self, values: impl IntoIterator<Item = V>) -> Filter<D> {
        let values: Result<Vec<Value>, ValueError> = values.into_iter().map(QueryValue::into_value).collect();
        self.atom(values.map(|values| Atom::In { field: self.index, values }))
    }

    /// Sorts by this field, smallest first.
    pub fn asc(self) -> Order<D> {
        Order { field: self.index, descending: false, _marker: PhantomData }
    }

    /// Sorts by this field, largest first.
    pub fn desc(self) -> Order<D> {
        Order { field: self.index, descending: true, _marker: PhantomData }
    }
}

/// The range comparisons follow `Option`'s order, `None < Some(_)` (the order `order_by` sorts
/// in too): `lt` and `lte` match a `None` field, `gt` and `gte` never do. A `None` operand is
/// refused with [`Error::InvalidQuery`](crate::Error::InvalidQuery) when the query runs.
impl<D, T> Field<D, T> {
    /// Field is greater than `value` (never `None`).
    pub fn gt(self, value: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        self.compare(CmpOp::Gt, value.into_value())
    }

    /// Field is greater than or equal to `value` (never `None`).
    pub fn gte(self, value: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        self.compare(CmpOp::Gte, value.into_value())
    }

    /// Field is less than `value`; `None` is less than every value.
    pub fn lt(self, value: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        self.compare(CmpOp::Lt, value.into_value())
    }

    /// Field is less than or equal to `value`; `None` is less than every value.
    pub fn lte(self, value: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        self.compare(CmpOp::Lte, value.into_value())
    }

    /// Field lies between `low` and `high`, both inclusive (never `None`; empty when
    /// `low > high`).
    pub fn between(self, low: impl QueryValue<T>, high: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        let bounds = low.into_value().and_then(|low| Ok((low, high.into_value()?)));
        self.atom(bounds.map(|(low, high)| Atom::Between { field: self.index, low, high }))
    }

    /// Field is text starting with `prefix`, compared byte by byte (case-sensitive, no
    /// wildcards, NUL characters included); a `None` field starts with nothing, not even "".
    pub fn starts_with(self, prefix: impl Into<String>) -> Filter<D>
    where
        T: TextField,
    {
        self.atom(Ok(Atom::StartsWith { field: self.index, prefix: prefix.into() }))
    }

    /// Field is `None`: a missing key or a JSON null.
    pub fn is_none(self) -> Filter<D>
    where
        T: OptionField,
    {
        self.atom(Ok(Atom::IsNull { field: self.index, negated: false }))
    }

    /// Field is `Some(_)`.
    pub fn is_some(self) -> Filter<D>
    where
        T: OptionField,
    {
        self.atom(Ok(Atom::IsNull { field: self.index, negated: true }))
    }
}

/// A condition on documents of type `D`; combine with [`and`](Filter::and),
/// [`or`](Filter::or), [`not`](Filter::not) or the `&`, `|` and `!` operators.
///
/// A filter means what the same expression means in Rust over the document's values: for every
/// filter `p`, a document matches either `p` or `!p`, never both and never neither, also when
/// a field is `None`. Filters can be nested and combined to any size without risk to the stack;
/// one that cannot be run as a single SQL statement (too deep, too long: see the limits in
/// [`Query`](crate::Query)) fails with [`Error::InvalidQuery`](crate::Error::InvalidQuery).
pub struct Filter<D> {
    pub(crate) expr: Expr,
    _marker: PhantomData<fn() -> D>,
}

impl<D> Clone for Filter<D> {
    fn clone(&self) -> Self {
        Self::new(self.expr.clone())
    }
}

impl<D> std::fmt::Debug for Filter<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.expr.fmt(f)
    }
}

impl<D> Filter<D> {
    pub(crate) fn new(expr: Expr) -> Self {
        Self { expr, _marker: PhantomData }
    }

    /// Both this and `other` hold.
    pub fn and(self, other: Filter<D>) -> Filter<D> {
        let mut expr = self.expr;
        if let Expr::And(all) = &mut expr {
            all.push(other.expr);
            return Filter::new(expr);
        }
        Filter::new(Expr::And(vec![expr, other.expr]))
    }

    /// This or `other` holds.
    pub fn or(self, other: Filter<D>) -> Filter<D> {
        let mut expr = self.expr;
        if let Expr::Or(any) = &mut expr {
            any.push(other.expr);
            return Filter::new(expr);
        }
        Filter::new(Expr::Or(vec![expr, other.expr]))
    }

    /// This does not hold: exactly the documents this filter does not match, `None` fields
    /// included (`!x.gt(1)` matches a document whose `x` is `None`, as `!(x > Some(1))` is
    /// true in Rust). `!x.eq(v)` is `x.ne(v)`, and `!!p` is `p`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter<D> {
        Filter::new(Expr::Not(Box::new(self.expr)))
    }

    /// All of `filters` hold (true when empty).
    pub fn all(filters: impl IntoIterator<Item = Filter<D>>) -> Filter<D> {
        Filter::new(Expr::And(filters.into_iter().map(|f| f.expr).collect()))
    }

    /// At least one of `filters` holds (false when empty).
    pub fn any(filters: impl IntoIterator<Item = Filter<D>>) -> Filter<D> {
        Filter::new(Expr::Or(filters.into_iter().map(|f| f.expr).collect()))
    }
}

impl<D> std::ops::BitAnd for Filter<D> {
    type Output = Filter<D>;
    fn bitand(self, rhs: Filter<D>) -> Filter<D> {
        self.and(rhs)
    }
}

impl<D> std::ops::BitOr for Filter<D> {
    type Output = Filter<D>;
    fn bitor(self, rhs: Filter<D>) -> Filter<D> {
        self.or(rhs)
    }
}

impl<D> std::ops::Not for Filter<D> {
    type Output = Filter<D>;
    fn not(self) -> Filter<D> {
        Filter::not(self)
    }
}

/// A sort key on documents of type `D`: `field.asc()` or `field.desc()`.
pub struct Order<D> {
    pub(crate) field: usize,
    pub(crate) descending: bool,
    _marker: PhantomData<fn() -> D>,
}

impl<D> Clone for Order<D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for Order<D> {}

impl<D> std::fmt::Debug for Order<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Order").field("field", &self.field).field("descending", &self.descending).finish()
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    /// The operator matching exactly the documents this one does not, under `Option`'s order
    /// (`None` below every value): the complement of `>` is `<=`, `None` included.
    pub(crate) fn negated(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::Ne,
            CmpOp::Ne => CmpOp::Eq,
            CmpOp::Gt => CmpOp::Lte,
            CmpOp::Gte => CmpOp::Lt,
            CmpOp::Lt => CmpOp::Gte,
            CmpOp::Lte => CmpOp::Gt,
        }
    }
}

/// The untyped filter tree behind [`Filter`]: conditions on one field, and the combinators.
///
/// A caller can nest combinators as deeply as memory allows, so nothing here recurses over the
/// tree: dropping, cloning and printing use a stack on the heap, and so does the SQL rendering
/// (`sql::filter`).
pub(crate) enum Expr {
    Atom(Atom),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// A condition on one field; fields are positions in the schema.
#[derive(Debug, Clone)]
pub(crate) enum Atom {
    Compare {
        field: usize,
        op: CmpOp,
        value: Value,
    },
    Between {
        field: usize,
        low: Value,
        high: Value,
    },
    In {
        field: usize,
        values: Vec<Value>,
    },
    StartsWith {
        field: usize,
        prefix: String,
    },
    IsNull {
        field: usize,
        negated: bool,
    },
    /// A value that cannot be bound; the query fails with `InvalidQuery` when run.
    Invalid {
        field: usize,
        reason: String,
    },
}

impl Expr {
    /// A node owning nothing, to leave behind when a child is moved out.
    const EMPTY: Expr = Expr::And(Vec::new());

    /// Moves this node's children onto `out`, leaving it childless.
    fn detach_children(&mut self, out: &mut Vec<Expr>) {
        match self {
            Expr::Not(inner) => out.push(std::mem::replace(&mut **inner, Expr::EMPTY)),
            Expr::And(items) | Expr::Or(items) => out.append(items),
            Expr::Atom(_) => {}
        }
    }
}

impl Drop for Expr {
    fn drop(&mut self) {
        // Each node is emptied before it is dropped, so no drop below this one recurses.
        let mut pending = Vec::new();
        self.detach_children(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.detach_children(&mut pending);
        }
    }
}

impl Clone for Expr {
    fn clone(&self) -> Self {
        enum Step<'e> {
            Visit(&'e Expr),
            Not,
            And(usize),
            Or(usize),
        }
        // Children are cloned onto `done` in order, then their parent gathers them.
        let mut steps = vec![Step::Visit(self)];
        let mut done: Vec<Expr> = Vec::new();
        while let Some(step) = steps.pop() {
            match step {
                Step::Visit(Expr::Atom(a)) => done.push(Expr::Atom(a.clone())),
                Step::Visit(Expr::Not(inner)) => steps.extend([Step::Not, Step::Visit(inner)]),
                Step::Visit(Expr::And(items)) => {
                    steps.push(Step::And(items.len()));
                    steps.extend(items.iter().rev().map(Step::Visit));
                }
                Step::Visit(Expr::Or(items)) => {
                    steps.push(Step::Or(items.len()));
                    steps.extend(items.iter().rev().map(Step::Visit));
                }
                Step::Not => {
                    let inner = done.pop().unwrap_or(Expr::EMPTY);
                    done.push(Expr::Not(Box::new(inner)));
                }
                Step::And(n) => {
                    let items = done.split_off(done.len().saturating_sub(n));
                    done.push(Expr::And(items));
                }
                Step::Or(n) => {
                    let items = done.split_off(done.len().saturating_sub(n));
                    done.push(Expr::Or(items));
                }
            }
        }
        done.pop().unwrap_or(Expr::EMPTY)
    }
}

/// Printing stops this many combinators deep...
const DEBUG_MAX_DEPTH: usize = 32;
/// ...and after this many nodes, so that printing a huge filter stays cheap.
const DEBUG_MAX_NODES: usize = 256;

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        enum Step<'e> {
            Node(&'e Expr, usize),
            Text(&'static str),
        }
        let mut steps = vec![Step::Node(self, 0)];
        let mut budget = DEBUG_MAX_NODES;
        while let Some(step) = steps.pop() {
            let (node, depth) = match step {
                Step::Text(t) => {
                    f.write_str(t)?;
                    continue;
                }
                Step::Node(node, depth) => (node, depth),
            };
            let (open, items): (&str, &[Expr]) = match node {
                Expr::Atom(a) => {
                    write!(f, "{a:?}")?;
                    continue;
                }
                _ if depth >= DEBUG_MAX_DEPTH => {
                    f.write_str("…")?;
                    continue;
                }
                Expr::Not(inner) => ("Not(", std::slice::from_ref(&**inner)),
                Expr::And(items) => ("And([", items),
                Expr::Or(items) => ("Or([", items),
            };
            f.write_str(open)?;
            steps.push(Step::Text(if matches!(node, Expr::Not(_)) { ")" } else { "])" }));
            let shown = items.len().min(budget.max(1));
            budget = budget.saturating_sub(shown);
            if shown < items.len() {
                steps.push(Step::Text(", …"));
            }
            for (i, item) in items[..shown].iter().enumerate().rev() {
                steps.push(Step::Node(item, depth + 1));
                if i > 0 {
                    steps.push(Step::Text(", "));
                }
            }
        }
        Ok(())
    }
}

/// A filter node as seen through its negations: a condition, or a list whose operands are
/// joined by AND (`conj`) or OR, each of them negated if `neg`.
#[derive(Clone, Copy)]
pub(crate) enum Stripped<'e> {
    Atom(&'e Atom, bool),
    List { conj: bool, items: &'e [Expr], neg: bool },
}

/// Looks through negations (flipping `neg`) and one-operand lists.
pub(crate) fn strip(mut e: &Expr, mut neg: bool) -> Stripped<'_> {
    loop {
        match e {
            Expr::Not(inner) => {
                neg = !neg;
                e = inner;
            }
            Expr::And(items) | Expr::Or(items) if items.len() == 1 => e = &items[0],
            // De Morgan: a negated AND is an OR of negations, and the other way round.
            Expr::And(items) => return Stripped::List { conj: !neg, items, neg },
            Expr::Or(items) => return Stripped::List { conj: neg, items, neg },
            Expr::Atom(atom) => return Stripped::Atom(atom, neg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(i: i64) -> Expr {
        Expr::Atom(Atom::Compare { field: 0, op: CmpOp::Eq, value: Value::Integer(i) })
    }

    #[test]
    fn debug_prints_small_filters_whole() {
        let e = Expr::And(vec![atom(1), Expr::Not(Box::new(Expr::Or(vec![atom(2), atom(3)])))]);
        assert_eq!(
            format!("{e:?}"),
            "And([Compare { field: 0, op: Eq, value: Integer(1) }, Not(Or([Compare { field: 0, op: Eq, value: \
             Integer(2) }, Compare { field: 0, op: Eq, value: Integer(3) }]))])"
        );
        assert_eq!(format!("{:?}", Expr::Or(Vec::new())), "Or([])");
    }

    #[test]
    fn debug_output_is_bounded() {
        let mut deep = atom(0);
        for _ in 0..10_000 {
            deep = Expr::Not(Box::new(deep));
        }
        let text = format!("{deep:?}");
        assert_eq!(text, format!("{}…{}", "Not(".repeat(DEBUG_MAX_DEPTH), ")".repeat(DEBUG_MAX_DEPTH)));
        let wide = Expr::Or((0..10_000).map(atom).collect());
        let text = format!("{wide:?}");
        assert!(text.ends_with(", …])") && text.matches("Compare").count() == DEBUG_MAX_NODES, "{text}");
    }

    #[test]
    fn clone_copies_every_node_in_order() {
        let e = Expr::Or(vec![
            Expr::And(vec![atom(1), Expr::Not(Box::new(atom(2))), Expr::And(Vec::new())]),
            atom(3),
            Expr::Not(Box::new(Expr::Not(Box::new(Expr::Or(vec![atom(4)]))))),
        ]);
        assert_eq!(format!("{:?}", e.clone()), format!("{e:?}"));
        let mut chain = atom(0);
        for i in 1..50_000 {
            chain = if i % 2 == 0 { Expr::And(vec![atom(i), chain]) } else { Expr::Not(Box::new(chain)) };
        }
        let copy = chain.clone();
        assert_eq!(format!("{copy:?}"), format!("{chain:?}"));
    }
}
