//! Typed field handles and the filters and sort orders built from them.

use crate::document::{OptionField, Ordered, QueryValue, TextField};
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

    fn compare(self, op: CmpOp, value: Result<Value, ValueError>) -> Filter<D> {
        Filter::new(match value {
            Ok(value) => Expr::Compare { field: self.index, op, value },
            Err(e) => Expr::Invalid { field: self.index, reason: e.0 },
        })
    }

    /// Field equals `value` (`None` matches a missing or null value).
    pub fn eq(self, value: impl QueryValue<T>) -> Filter<D> {
        self.compare(CmpOp::Eq, value.into_value())
    }

    /// Field differs from `value`; a null field differs from every non-null value.
    pub fn ne(self, value: impl QueryValue<T>) -> Filter<D> {
        self.compare(CmpOp::Ne, value.into_value())
    }

    /// Field is one of `values`.
    pub fn in_list<V: QueryValue<T>>(self, values: impl IntoIterator<Item = V>) -> Filter<D> {
        let values: Result<Vec<Value>, ValueError> = values.into_iter().map(QueryValue::into_value).collect();
        Filter::new(match values {
            Ok(values) => Expr::In { field: self.index, values },
            Err(e) => Expr::Invalid { field: self.index, reason: e.0 },
        })
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

impl<D, T> Field<D, T> {
    /// Field is greater than `value`.
    pub fn gt(self, value: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        self.compare(CmpOp::Gt, value.into_value())
    }

    /// Field is greater than or equal to `value`.
    pub fn gte(self, value: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        self.compare(CmpOp::Gte, value.into_value())
    }

    /// Field is less than `value`.
    pub fn lt(self, value: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        self.compare(CmpOp::Lt, value.into_value())
    }

    /// Field is less than or equal to `value`.
    pub fn lte(self, value: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        self.compare(CmpOp::Lte, value.into_value())
    }

    /// Field lies between `low` and `high`, both inclusive.
    pub fn between(self, low: impl QueryValue<T>, high: impl QueryValue<T>) -> Filter<D>
    where
        T: Ordered,
    {
        Filter::new(match (low.into_value(), high.into_value()) {
            (Ok(low), Ok(high)) => Expr::Between { field: self.index, low, high },
            (Err(e), _) | (_, Err(e)) => Expr::Invalid { field: self.index, reason: e.0 },
        })
    }

    /// Field is text starting with `prefix` (case-sensitive).
    pub fn starts_with(self, prefix: impl Into<String>) -> Filter<D>
    where
        T: TextField,
    {
        Filter::new(Expr::StartsWith { field: self.index, prefix: prefix.into() })
    }

    /// Field is `None` (or absent).
    pub fn is_none(self) -> Filter<D>
    where
        T: OptionField,
    {
        Filter::new(Expr::IsNull { field: self.index, negated: false })
    }

    /// Field is `Some(_)`.
    pub fn is_some(self) -> Filter<D>
    where
        T: OptionField,
    {
        Filter::new(Expr::IsNull { field: self.index, negated: true })
    }
}

/// A condition on documents of type `D`; combine with [`and`](Filter::and),
/// [`or`](Filter::or), [`not`](Filter::not) or the `&`, `|` and `!` operators.
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
        Filter::new(match self.expr {
            Expr::And(mut all) => {
                all.push(other.expr);
                Expr::And(all)
            }
            e => Expr::And(vec![e, other.expr]),
        })
    }

    /// This or `other` holds.
    pub fn or(self, other: Filter<D>) -> Filter<D> {
        Filter::new(match self.expr {
            Expr::Or(mut any) => {
                any.push(other.expr);
                Expr::Or(any)
            }
            e => Expr::Or(vec![e, other.expr]),
        })
    }

    /// This does not hold. Under SQL's three-valued logic a comparison with a null field is
    /// neither true nor false, so `not(x.gt(1))` does not match documents whose `x` is null.
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

impl Expr {
    /// How deeply combinators nest, counted without recursion (a hostile filter may be deep
    /// enough to overflow the stack otherwise). A list of `n` items adds about `log2(n)`, as
    /// rendered.
    pub(crate) fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 1usize)];
        while let Some((e, d)) = stack.pop() {
            deepest = deepest.max(d);
            match e {
                Expr::Not(inner) => stack.push((inner, d + 1)),
                Expr::And(items) | Expr::Or(items) => {
                    let extra = usize::BITS as usize - items.len().leading_zeros() as usize;
                    stack.extend(items.iter().map(|i| (i, d + extra.max(1))));
                }
                _ => {}
            }
        }
        deepest
    }
}

/// The untyped filter tree behind [`Filter`]; fields are positions in the schema.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
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
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    /// A value that cannot be bound; the query fails with `InvalidQuery` when run.
    Invalid {
        field: usize,
        reason: String,
    },
}
