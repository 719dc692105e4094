//! The conditions of a range as SQL: equality on the prefix, the bounds, and the keyset
//! position, each over `Option`'s order (`None` below every value) as `ORDER BY` sorts, so a
//! range, its cursors and `order_by` agree on every row, `None` included.
//!
//! A keyset position over keys `k1..km` (the id last) is the lexicographic comparison
//! `k1 > v1 OR (k1 = v1 AND (k2 > v2 OR ...))`, each value bound once and its parameter reused.
//! Consecutive keys scanned in the same direction, with non-`None` cursor values, that cannot
//! be `None` or are scanned ascending (where a NULL row value is rightly false) are compared as
//! one row value, `(k1, k2) > (?1, ?2)`, which SQLite turns into a seek on the index: the usual
//! one-field range is the single comparison `(x, "_id") > (?1, ?2)`.

use crate::error::Result;
use crate::sql::{Slot, Statement};

/// A comparison in the order of values, `None` (NULL) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

/// One key of the scan: a field (by schema index), the direction it is scanned in, and
/// whether its values may be `None`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    pub field: usize,
    pub descending: bool,
    pub nullable: bool,
}

fn over(operands: &[usize]) -> usize {
    1 + operands.iter().copied().max().unwrap_or(0)
}

/// Writes `field op value` over `Option`'s order (`value` `None`: NULL, bound as nothing);
/// returns its height.
pub(crate) fn compare(sql: &mut Statement<'_>, field: usize, op: Op, value: Option<Slot>) -> Result<usize> {
    let Some(slot) = value else {
        let height = match op {
            // Nothing is below NULL; everything is at or above it.
            Op::Lt => {
                sql.push("0");
                return Ok(1);
            }
            Op::Gte => {
                sql.push("1");
                return Ok(1);
            }
            Op::Eq | Op::Lte => {
                let x = sql.field(field)?;
                sql.push(" IS NULL");
                x + 1
            }
            Op::Gt => {
                let x = sql.field(field)?;
                sql.push(" IS NOT NULL");
                x + 1
            }
        };
        return Ok(height);
    };
    let symbol = match op {
        Op::Eq => " = ",
        Op::Gt => " > ",
        Op::Gte => " >= ",
        Op::Lt => " < ",
        Op::Lte => " <= ",
    };
    if matches!(op, Op::Lt | Op::Lte) {
        // NULL is below every value, and `x < ?` is NULL for it.
        sql.push("(");
        let x = sql.field(field)?;
        sql.push(symbol);
        sql.push_slot(slot);
        sql.push(" OR ");
        sql.field(field)?;
        sql.push(" IS NULL)");
        return Ok(over(&[over(&[x, slot.height()]), x + 1]));
    }
    let x = sql.field(field)?;
    sql.push(symbol);
    sql.push_slot(slot);
    Ok(over(&[x, slot.height()]))
}

/// Consecutive keys compared together: a row value when it holds more than one key.
struct Group {
    start: usize,
    end: usize,
    descending: bool,
    /// Compared as a row value (no value is NULL, no key descends through NULLs), else one
    /// null-aware key.
    row: bool,
}

fn groups(keys: &[Key], values: &[Option<Slot>]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        // A NULL key makes a row value NULL, which is right when NULL comes before the
        // cursor's value (an ascending key): only a descending nullable key needs the
        // null-aware comparison.
        let plain = values[i].is_some() && !(key.nullable && key.descending);
        if let Some(last) = out.last_mut()
            && last.row
            && plain
            && last.descending == key.descending
        {
            last.end = i + 1;
            continue;
        }
        out.push(Group { start: i, end: i + 1, descending: key.descending, row: plain });
    }
    out
}

/// Writes a row value `(k1, k2)` (or the lone key) of `keys[range]`; returns its height.
fn row_fields(sql: &mut Statement<'_>, keys: &[Key]) -> Result<usize> {
    if let [one] = keys {
        return sql.field(one.field);
    }
    sql.push("(");
    let mut highest = 0;
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        highest = highest.max(sql.field(key.field)?);
    }
    sql.push(")");
    Ok(highest + 1)
}

fn row_values(sql: &mut Statement<'_>, values: &[Option<Slot>]) -> usize {
    let slots: Vec<Slot> = values.iter().flatten().copied().collect();
    if let [one] = slots.as_slice() {
        sql.push_slot(*one);
        return one.height();
    }
    sql.push("(");
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push_slot(*slot);
    }
    sql.push(")");
    1 + slots.iter().map(|s| s.height()).max().unwrap_or(0)
}

fn group_compare(sql: &mut Statement<'_>, keys: &[Key], values: &[Option<Slot>], g: &Group, op: Op) -> Result<usize> {
    if g.row {
        let l = row_fields(sql, &keys[g.start..g.end])?;
        sql.push(match op {
            Op::Eq => " = ",
            Op::Gt => " > ",
            Op::Lt => " < ",
            Op::Gte => " >= ",
            Op::Lte => " <= ",
        });
        let r = row_values(sql, &values[g.start..g.end]);
        return Ok(over(&[l, r]));
    }
    compare(sql, keys[g.start].field, op, values[g.start])
}

/// Writes the condition that a row's key comes after `values` in the scan order of `keys`
/// (each key's direction), or at it with `inclusive`; returns its height.
pub(crate) fn after(sql: &mut Statement<'_>, keys: &[Key], values: &[Option<Slot>], inclusive: bool) -> Result<usize> {
    let groups = groups(keys, values);
    let mut heights = Vec::with_capacity(groups.len());
    let mut closing = 0;
    for (i, g) in groups.iter().enumerate() {
        let later = match (g.descending, inclusive && i + 1 == groups.len()) {
            (false, false) => Op::Gt,
            (false, true) => Op::Gte,
            (true, false) => Op::Lt,
            (true, true) => Op::Lte,
        };
        if i + 1 == groups.len() {
            heights.push((group_compare(sql, keys, values, g, later)?, 0));
            break;
        }
        sql.push("(");
        let a = group_compare(sql, keys, values, g, later)?;
        sql.push(" OR (");
        let e = group_compare(sql, keys, values, g, Op::Eq)?;
        sql.push(" AND ");
        heights.push((a, e));
        closing += 1;
    }
    for _ in 0..closing {
        sql.push("))");
    }
    // From the innermost out: after_i = a_i OR (e_i AND after_{i+1}).
    let mut height = 0;
    for (i, &(a, e)) in heights.iter().enumerate().rev() {
        height = if i + 1 == heights.len() { a } else { over(&[a, over(&[e, height])]) };
    }
    Ok(height)
}
