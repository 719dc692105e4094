//! Small helpers for the SQL db4 generates. Identifiers come from validated schemas and are
//! always quoted; values are always bound parameters.

/// At most this many bound parameters per statement (a Durable Object's limit).
pub(crate) const MAX_PARAMS: usize = 100;
/// SQL expressions nest at most this deep (a Durable Object's SQLite limit).
pub(crate) const MAX_EXPR_DEPTH: usize = 100;
/// At most this many bytes of SQL text per statement (a Durable Object's limit).
pub(crate) const MAX_SQL_BYTES: usize = 100_000;
/// At most this many columns per table, result or index (a Durable Object's limit).
pub(crate) const MAX_COLUMNS: usize = 100;
/// At most this many arguments per SQL function call (a Durable Object's limit).
pub(crate) const MAX_FUNCTION_ARGS: usize = 32;

/// Quotes an SQL identifier, doubling any embedded quote.
pub(crate) fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The SQLite JSON path addressing a top-level key of a stored document.
pub(crate) fn json_path(key: &str) -> String {
    format!("$.\"{key}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
