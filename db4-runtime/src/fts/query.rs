//! The search-query language: a parser into [`SearchQuery`], and two renderings of it, db4's
//! own syntax ([`Display`](fmt::Display)) and a safely quoted FTS5 `MATCH` expression
//! ([`to_fts5`]).
//!
//! The grammar, the error positions and the argument for why no FTS5 syntax can be smuggled
//! through a term are in `docs/search-query.md`.

use crate::error::{Error, Result};
use std::fmt;

/// The longest query [`parse_query`] accepts, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// The most terms and phrases one query may hold.
///
/// FTS5 nests each binary `NOT` one level deeper and refuses trees deeper than 256; with at
/// most this many operands, and [`MAX_QUERY_DEPTH`] levels of grouping, a query stays well
/// below that.
pub const MAX_QUERY_TERMS: usize = 100;

/// How deep parentheses and field filters may nest, both as typed and as the renderings nest
/// them: these add parentheses, `a OR b c` rendering as `a OR (b c)` and `a:b:c` as `a:(b:c)`
/// (three levels).
///
/// FTS5's parser has a fixed stack of 100 entries and fails with "parser stack overflow" past
/// it; each level of the rendering can hold three (`"a" AND (`). Up to 31 levels fit (measured
/// on SQLite with the tests' nesting property and a raised limit; 32 overflow); 20 leaves room
/// for the level [`SearchQuery::map_terms`] adds and for a search that wraps the expression in
/// a few more.
pub const MAX_QUERY_DEPTH: usize = 20;

/// The longest field name, in bytes.
pub const MAX_FIELD_NAME_BYTES: usize = 64;

/// The collection named in errors of a query parsed on its own, outside any collection.
const STANDALONE: &str = "search";

/// One node of a parsed search query.
///
/// The tree is what [`parse_query`] builds: `And` and `Or` always hold at least two nodes, a
/// group in parentheses holding one node is that node, and a quoted phrase that is a single
/// bare word (`"rust"`) is the [`Term`](QueryNode::Term) `rust`. Both renderings parse back to
/// the same tree.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum QueryNode {
    /// A bare word, as in `rust` or `rust*`: it contains no whitespace, no control character
    /// and none of `( ) " * :`, and is not one of the operators `AND`, `OR`, `NOT`.
    Term {
        /// The word as written.
        text: String,
        /// Whether it ends in `*` and matches every token starting with it.
        prefix: bool,
    },
    /// A quoted phrase, as in `"web server"` or `"web serv"*`: its tokens in this order.
    Phrase {
        /// The text between the quotes, `""` unescaped to `"`, control characters replaced by
        /// spaces, leading and trailing whitespace removed; never empty and never a bare word.
        text: String,
        /// Whether it is followed by `*`: its last token is then a prefix.
        prefix: bool,
    },
    /// A field filter, as in `title:rust` or `title:(rust OR go)`: the node matches in this
    /// full-text field only.
    Field {
        /// The field's name, an ASCII identifier of at most [`MAX_FIELD_NAME_BYTES`] bytes.
        field: String,
        /// What must match in the field.
        node: Box<QueryNode>,
    },
    /// Every node matches (`a AND b`, or `a b`).
    And(Vec<QueryNode>),
    /// At least one node matches (`a OR b`).
    Or(Vec<QueryNode>),
    /// `include` matches and `exclude` does not (`include NOT exclude`).
    Not {
        /// What must match.
        include: Box<QueryNode>,
        /// What must not.
        exclude: Box<QueryNode>,
    },
}

/// A parsed search query: its tree, and where each field filter was in the input.
///
/// Made by [`parse_query`] (or [`map_terms`](SearchQuery::map_terms)); rendered by
/// [`to_fts5`] for SQLite and by `Display` in db4's own syntax. Two queries are equal when
/// their trees are: the byte positions are not compared.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    root: QueryNode,
    fields: Vec<(String, usize)>,
}

impl PartialEq for SearchQuery {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
    }
}

/// Parses a search query written in db4's query language.
///
/// Bare words, `"phrases"` (a `""` inside one is a quote), `prefix*`, `field:term`,
/// `field:"a phrase"`, `field:(...)`, the UPPERCASE operators `AND`, `OR`, `NOT` (binary: `a NOT
/// b`), parentheses, and implicit `AND` between neighbours. `NOT` binds tighter than `AND`, and
/// `AND` tighter than `OR`. The full grammar is in `docs/search-query.md`.
///
/// # Errors
///
/// [`Error::InvalidQuery`] with the collection `search` and a reason starting with `at byte N:
/// `, N being the offset of the problem in `input`: an empty query, an unbalanced parenthesis
/// or quote, an empty phrase, a dangling operator, a `NOT` with nothing before it, a `*` that
/// does not end a term, a field name that is not an ASCII identifier or has nothing after it,
/// and a query over [`MAX_QUERY_BYTES`], [`MAX_QUERY_TERMS`] or [`MAX_QUERY_DEPTH`].
///
/// # Example
///
/// ```
/// use db4_runtime::fts::{parse_query, to_fts5};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let query = parse_query("title:rust wasm* NOT java")?;
/// assert_eq!(to_fts5(&query), r#"title : "rust" AND ("wasm" * NOT "java")"#);
/// assert_eq!(query.to_string(), "title:rust (wasm* NOT java)");
/// # Ok(()) }
/// ```
pub fn parse_query(input: &str) -> Result<SearchQuery> {
    parse_in(STANDALONE, input)
}

/// [`parse_query`], naming `collection` in its errors (for the search builder).
pub(crate) fn parse_in(collection: &str, input: &str) -> Result<SearchQuery> {
    let fail = |pos: usize, reason: String| Error::InvalidQuery {
        collection: collection.to_owned(),
        reason: format!("at byte {pos}: {reason}"),
    };
    if input.len() > MAX_QUERY_BYTES {
        return Err(fail(
            MAX_QUERY_BYTES,
            format!("the query is {} bytes long, above the limit of {MAX_QUERY_BYTES} bytes", input.len()),
        ));
    }
    let tokens = lex(input).map_err(|(pos, reason)| fail(pos, reason))?;
    if tokens.is_empty() {
        return Err(fail(0, "the query is empty; write at least one word to search for".to_owned()));
    }
    let mut parser = Parser { input, tokens, next: 0, depth: 0, terms: 0, fields: Vec::new() };
    let root = parser.parse_query().map_err(|(pos, reason)| fail(pos, reason))?;
    Ok(SearchQuery { root, fields: parser.fields })
}

/// Renders a query as an FTS5 `MATCH` expression, to be bound as a parameter.
///
/// Every term and phrase becomes an FTS5 string (`"..."`, a `"` inside doubled), so nothing a
/// user typed inside one is FTS5 syntax; a prefix is `"term" *`, a field filter `col : expr`,
/// and every compound operand of an operator or a field filter is in parentheses (but the
/// left `NOT` of `a NOT b NOT c`). The result of a parsed query parses back with
/// [`parse_query`] to the same query; one grown by [`map_terms`](SearchQuery::map_terms) may be
/// over the limits of the parser, but still renders to an expression FTS5 accepts.
pub fn to_fts5(query: &SearchQuery) -> String {
    let mut out = String::new();
    render(&query.root, Syntax::Fts5, &mut out);
    out
}

/// The FTS5 expression of one node of a tree, rendered as [`to_fts5`] renders a whole query
/// (for the statistics of a search across shards, which match its phrases one by one).
pub(crate) fn node_to_fts5(node: &QueryNode) -> String {
    let mut out = String::new();
    render(node, Syntax::Fts5, &mut out);
    out
}

impl SearchQuery {
    /// The root of the tree.
    pub fn root(&self) -> &QueryNode {
        &self.root
    }

    /// Every field filter's field name, with the byte offset of the name in the input, in the
    /// order they appear.
    pub fn fields(&self) -> Vec<(&str, usize)> {
        self.fields.iter().map(|(name, pos)| (name.as_str(), *pos)).collect()
    }

    /// Checks that every field filter names one of `allowed`, the collection's full-text
    /// fields.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] for `collection`, naming the first other field, its byte
    /// offset and the allowed fields.
    pub(crate) fn check_fields(&self, collection: &str, allowed: &[&str]) -> Result<()> {
        let Some((name, pos)) = self.fields.iter().find(|(name, _)| !allowed.contains(&name.as_str())) else {
            return Ok(());
        };
        let known = if allowed.is_empty() {
            format!("`{collection}` has no full-text fields")
        } else {
            let list: Vec<String> = allowed.iter().map(|f| format!("`{f}`")).collect();
            format!("the full-text fields are {}", list.join(", "))
        };
        Err(Error::InvalidQuery {
            collection: collection.to_owned(),
            reason: format!("at byte {pos}: `{name}` is not a full-text field; {known}"),
        })
    }

    /// Replaces each bare term that is not a prefix by an `OR` of itself and the alternatives
    /// `alternatives` returns for it, for typo tolerance or synonyms.
    ///
    /// Terms inside phrases, quoted single words (which parse as terms: `"rust"` is `rust`)
    /// excepted, and prefix terms are left alone; terms under `NOT` are expanded too, so `a
    /// NOT colour` with `colour -> [color]` excludes both spellings. Each alternative is
    /// cleaned like a phrase (control characters become spaces, the ends are trimmed): an
    /// empty one, or one equal to the term or to an earlier alternative, is dropped; one that
    /// is not a single bare word becomes a phrase. A term left with no alternative stays as
    /// it was. The limits of [`parse_query`] are not applied to the result.
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::fts::parse_query;
    ///
    /// # fn main() -> db4_runtime::Result<()> {
    /// let query = parse_query("title:colour theory*")?;
    /// let wide = query.map_terms(|term| if term == "colour" { vec!["color".into()] } else { vec![] });
    /// assert_eq!(wide.to_string(), "title:(colour OR color) theory*");
    /// # Ok(()) }
    /// ```
    pub fn map_terms(&self, mut alternatives: impl FnMut(&str) -> Vec<String>) -> SearchQuery {
        self.map_terms_prefixed(|term| alternatives(term).into_iter().map(|alt| (alt, false)).collect())
    }

    /// As [`map_terms`](Self::map_terms), each alternative with whether it is a prefix (for
    /// typo tolerance over a stemmed vocabulary: a stem matches itself as a prefix, while as a
    /// term the stemmer would shorten it again).
    pub(crate) fn map_terms_prefixed(&self, mut alternatives: impl FnMut(&str) -> Vec<(String, bool)>) -> SearchQuery {
        SearchQuery { root: map_node(&self.root, &mut alternatives), fields: self.fields.clone() }
    }
}

impl fmt::Display for SearchQuery {
    /// The query in db4's syntax: terms bare where they can be, implicit `AND` (a space),
    /// parentheses around every compound operand.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

impl fmt::Display for QueryNode {
    /// The node in db4's syntax, as [`SearchQuery`] displays it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        render(self, Syntax::Db4, &mut out);
        f.write_str(&out)
    }
}

fn map_node(node: &QueryNode, alternatives: &mut impl FnMut(&str) -> Vec<(String, bool)>) -> QueryNode {
    match node {
        QueryNode::Term { text, prefix: false } => {
            let mut seen = vec![(text.clone(), false)];
            for (alt, prefix) in alternatives(text) {
                let alt = clean_phrase(&alt);
                if !alt.is_empty() && !seen.iter().any(|(s, p)| *s == alt && *p == prefix) {
                    seen.push((alt, prefix));
                }
            }
            if seen.len() == 1 {
                return node.clone();
            }
            QueryNode::Or(seen.into_iter().map(|(text, prefix)| text_node(text, prefix)).collect())
        }
        QueryNode::Term { .. } | QueryNode::Phrase { .. } => node.clone(),
        QueryNode::Field { field, node } => {
            QueryNode::Field { field: field.clone(), node: Box::new(map_node(node, alternatives)) }
        }
        QueryNode::And(nodes) => QueryNode::And(nodes.iter().map(|n| map_node(n, alternatives)).collect()),
        QueryNode::Or(nodes) => QueryNode::Or(nodes.iter().map(|n| map_node(n, alternatives)).collect()),
        QueryNode::Not { include, exclude } => QueryNode::Not {
            include: Box::new(map_node(include, alternatives)),
            exclude: Box::new(map_node(exclude, alternatives)),
        },
    }
}

/// A term for a single bare word, else a phrase: how the parser reads a quoted `text`.
fn text_node(text: String, prefix: bool) -> QueryNode {
    if is_bare_word(&text) { QueryNode::Term { text, prefix } } else { QueryNode::Phrase { text, prefix } }
}

/// Control characters become spaces (FTS5 would end its string at a NUL), then the ends are
/// trimmed.
fn clean_phrase(text: &str) -> String {
    let spaced: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    spaced.trim().to_owned()
}

/// Whether `c` separates words: whitespace and control characters.
fn is_separator(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// Whether `c` can be part of a bare word.
fn is_word_char(c: char) -> bool {
    !is_separator(c) && !matches!(c, '(' | ')' | '"' | '*' | ':')
}

/// Whether `text` reads back as one bare word: word characters only, and not an operator.
fn is_bare_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(is_word_char) && keyword(text).is_none()
}

/// Whether `name` can name a field: an ASCII identifier FTS5 reads as a column name.
fn is_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_FIELD_NAME_BYTES
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The operator a word is, if it is one: only the UPPERCASE spellings are.
fn keyword(word: &str) -> Option<Op> {
    match word {
        "AND" => Some(Op::And),
        "OR" => Some(Op::Or),
        "NOT" => Some(Op::Not),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    And,
    Or,
    Not,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::And => "AND",
            Op::Or => "OR",
            Op::Not => "NOT",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Db4,
    Fts5,
}

fn render(node: &QueryNode, syntax: Syntax, out: &mut String) {
    let separator = match node {
        QueryNode::Term { text, prefix } | QueryNode::Phrase { text, prefix } => {
            if syntax == Syntax::Db4 && is_bare_word(text) {
                out.push_str(text);
            } else {
                quote(text, out);
            }
            if *prefix {
                out.push_str(if syntax == Syntax::Fts5 { " *" } else { "*" });
            }
            return;
        }
        QueryNode::Field { field, .. } => {
            out.push_str(field);
            out.push_str(if syntax == Syntax::Fts5 { " : " } else { ":" });
            ""
        }
        QueryNode::And(_) => {
            if syntax == Syntax::Fts5 {
                " AND "
            } else {
                " "
            }
        }
        QueryNode::Or(_) => " OR ",
        QueryNode::Not { .. } => " NOT ",
    };
    for (i, (operand, parenthesized)) in operands(node).into_iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        if parenthesized {
            out.push('(');
            render(operand, syntax, out);
            out.push(')');
        } else {
            render(operand, syntax, out);
        }
    }
}

/// The operands of `node`, each with whether the renderings put it in parentheses.
///
/// An operator inside another is parenthesized, so neither precedence nor FTS5's grouping of
/// implicit `AND` can regroup it; except the left operand of a `NOT` that is a `NOT`, since
/// `NOT` groups left to right in both syntaxes (a long `a NOT b NOT c ...` then costs FTS5
/// no nesting). A field filter takes a term or a phrase bare, anything else in parentheses:
/// FTS5 allows `col : "x"` and `col : ( ... )` only.
fn operands(node: &QueryNode) -> Vec<(&QueryNode, bool)> {
    match node {
        QueryNode::Term { .. } | QueryNode::Phrase { .. } => Vec::new(),
        QueryNode::Field { node, .. } => vec![(&**node, !is_leaf(node))],
        QueryNode::And(nodes) | QueryNode::Or(nodes) => nodes.iter().map(|n| (n, is_compound(n))).collect(),
        QueryNode::Not { include, exclude } => {
            let chained = matches!(**include, QueryNode::Not { .. });
            vec![(&**include, is_compound(include) && !chained), (&**exclude, is_compound(exclude))]
        }
    }
}

/// How deep the renderings of `node` nest parentheses and field filters, each one level: the
/// depth [`MAX_QUERY_DEPTH`] bounds, since the rendering's nesting is what FTS5's parser stack
/// holds. Parsing a rendering counts exactly this.
fn nesting(node: &QueryNode) -> usize {
    let field = usize::from(matches!(node, QueryNode::Field { .. }));
    field
        + operands(node)
            .into_iter()
            .map(|(n, parenthesized)| usize::from(parenthesized) + nesting(n))
            .max()
            .unwrap_or(0)
}

fn is_leaf(node: &QueryNode) -> bool {
    matches!(node, QueryNode::Term { .. } | QueryNode::Phrase { .. })
}

fn is_compound(node: &QueryNode) -> bool {
    matches!(node, QueryNode::And(_) | QueryNode::Or(_) | QueryNode::Not { .. })
}

/// Writes `text` as a string in both syntaxes: in double quotes, a `"` doubled, a control
/// character (which no parsed text holds) as a space.
fn quote(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\"\""),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// Lexing

/// A problem found at a byte offset, made into an [`Error::InvalidQuery`] by the caller.
type Problem = (usize, String);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word that is not an operator.
    Word(String),
    /// A quoted phrase, cleaned.
    Quoted(String),
    Op(Op),
    Star,
    Colon,
    Open,
    Close,
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    tok: Tok,
    pos: usize,
}

fn lex(input: &str) -> Result<Vec<Token>, Problem> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some((pos, c)) = chars.next() {
        let tok = match c {
            c if is_separator(c) => continue,
            '(' => Tok::Open,
            ')' => Tok::Close,
            ':' => Tok::Colon,
            '*' => {
                // `a*b` would read as two terms, which is rarely what was meant. (`a**` is left to
                // the parser: its second `*` follows no term.)
                if chars.peek().is_some_and(|&(_, next)| !is_separator(next) && !matches!(next, ')' | '*')) {
                    return Err((
                        pos,
                        "`*` marks a prefix and must end the term, as in `data*`; put a space after it".to_owned(),
                    ));
                }
                Tok::Star
            }
            '"' => {
                let mut text = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    if c == '"' {
                        if chars.peek().is_some_and(|&(_, next)| next == '"') {
                            chars.next();
                            text.push('"');
                        } else {
                            closed = true;
                            break;
                        }
                    } else {
                        text.push(c);
                    }
                }
                if !closed {
                    return Err((
                        pos,
                        "this `\"` starts a phrase that is never closed; add a closing `\"` (a quote inside a \
                         phrase is written `\"\"`)"
                            .to_owned(),
                    ));
                }
                let text = clean_phrase(&text);
                if text.is_empty() {
                    return Err((pos, "the phrase is empty; put words between the quotes".to_owned()));
                }
                Tok::Quoted(text)
            }
            _ => {
                let mut end = pos + c.len_utf8();
                while let Some(&(at, next)) = chars.peek() {
                    if !is_word_char(next) {
                        break;
                    }
                    end = at + next.len_utf8();
                    chars.next();
                }
                let word = &input[pos..end];
                keyword(word).map_or_else(|| Tok::Word(word.to_owned()), Tok::Op)
            }
        };
        tokens.push(Token { tok, pos });
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------------
// Parsing
//
// query   = or EOF
// or      = and { "OR" and }
// and     = not { ["AND"] not }
// not     = unary { "NOT" unary }
// unary   = { NAME ":" } primary
// primary = (WORD | PHRASE) ["*"] | "(" or ")"
//
// Recursion happens only at "(", after the depth check, so its depth is bounded.

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    next: usize,
    /// Open parentheses and field filters around the current position.
    depth: usize,
    terms: usize,
    fields: Vec<(String, usize)>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn peek_tok(&self) -> Option<&Tok> {
        self.peek().map(|t| &t.tok)
    }

    fn bump(&mut self) -> Token {
        let token = self.tokens[self.next].clone();
        self.next += 1;
        token
    }

    fn parse_query(&mut self) -> Result<QueryNode, Problem> {
        self.expect_operand(None)?;
        let node = self.parse_or()?;
        match self.peek() {
            None => Ok(node),
            Some(token) => Err(self.unexpected(token)),
        }
    }

    fn parse_or(&mut self) -> Result<QueryNode, Problem> {
        let start = self.start();
        let mut nodes = vec![self.parse_and()?];
        while let Some(&Tok::Op(Op::Or)) = self.peek_tok() {
            let op = self.bump();
            self.expect_operand(Some(&op))?;
            nodes.push(self.parse_and()?);
        }
        if nodes.len() == 1 {
            return Ok(nodes.remove(0));
        }
        self.checked(QueryNode::Or(nodes), start)
    }

    fn parse_and(&mut self) -> Result<QueryNode, Problem> {
        let start = self.start();
        let mut nodes = vec![self.parse_not()?];
        loop {
            match self.peek_tok() {
                Some(Tok::Op(Op::And)) => {
                    let op = self.bump();
                    self.expect_operand(Some(&op))?;
                }
                Some(Tok::Word(_) | Tok::Quoted(_) | Tok::Open) => {}
                _ => break,
            }
            nodes.push(self.parse_not()?);
        }
        if nodes.len() == 1 {
            return Ok(nodes.remove(0));
        }
        self.checked(QueryNode::And(nodes), start)
    }

    fn parse_not(&mut self) -> Result<QueryNode, Problem> {
        let start = self.start();
        let mut node = self.parse_unary()?;
        while let Some(&Tok::Op(Op::Not)) = self.peek_tok() {
            let op = self.bump();
            self.expect_operand(Some(&op))?;
            let exclude = self.parse_unary()?;
            node = self.checked(QueryNode::Not { include: Box::new(node), exclude: Box::new(exclude) }, start)?;
        }
        Ok(node)
    }

    fn parse_unary(&mut self) -> Result<QueryNode, Problem> {
        let outer = self.depth;
        let mut filters = Vec::new();
        while let (Some(Tok::Word(name)), Some(Tok::Colon)) =
            (self.peek_tok(), self.tokens.get(self.next + 1).map(|t| &t.tok))
        {
            let (name, pos) = (name.clone(), self.tokens[self.next].pos);
            if !is_field_name(&name) {
                return Err((
                    pos,
                    format!(
                        "`{name}` is not a field name: field names are ASCII letters, digits and `_`, not starting \
                         with a digit, at most {MAX_FIELD_NAME_BYTES} bytes; to search for text containing `:`, \
                         put it in quotes"
                    ),
                ));
            }
            self.next += 2;
            self.enter(pos)?;
            if !matches!(self.peek_tok(), Some(Tok::Word(_) | Tok::Quoted(_) | Tok::Open)) {
                return Err((
                    pos,
                    format!("`{name}:` needs a term, a phrase or a group in parentheses after it, as in `{name}:rust`"),
                ));
            }
            self.fields.push((name.clone(), pos));
            filters.push((name, pos));
        }
        let mut node = self.parse_primary()?;
        self.depth = outer;
        for (field, pos) in filters.into_iter().rev() {
            node = self.checked(QueryNode::Field { field, node: Box::new(node) }, pos)?;
        }
        Ok(node)
    }

    /// Where the next operand starts.
    fn start(&self) -> usize {
        self.peek().map_or(self.input.len(), |t| t.pos)
    }

    /// `node`, built from input starting at `start`, unless its rendering nests too deep: the
    /// grouping precedence adds (`a OR b c` renders as `a OR (b c)`) and the parentheses
    /// around a field filter's group (`a:b:c` renders as `a:(b:c)`) count too.
    fn checked(&self, node: QueryNode, start: usize) -> Result<QueryNode, Problem> {
        if nesting(&node) > MAX_QUERY_DEPTH {
            return Err((
                start,
                format!(
                    "the query nests parentheses and field filters more than {MAX_QUERY_DEPTH} levels deep, \
                     counting the grouping of `AND` inside `OR` (`a OR b c` is `a OR (b c)`) and a field filter \
                     inside another (`a:b:c` is `a:(b:c)`)"
                ),
            ));
        }
        Ok(node)
    }

    fn parse_primary(&mut self) -> Result<QueryNode, Problem> {
        let token = self.bump();
        match token.tok {
            Tok::Word(text) => {
                self.count_term(token.pos)?;
                Ok(QueryNode::Term { text, prefix: self.take_star() })
            }
            Tok::Quoted(text) => {
                self.count_term(token.pos)?;
                Ok(text_node(text, self.take_star()))
            }
            Tok::Open => {
                self.enter(token.pos)?;
                if let Some(Tok::Close) = self.peek_tok() {
                    return Err((token.pos, "the parentheses are empty; put a term inside them".to_owned()));
                }
                self.expect_operand(None)?;
                let node = self.parse_or()?;
                match self.peek() {
                    Some(Token { tok: Tok::Close, .. }) => {
                        self.next += 1;
                        self.depth -= 1;
                        Ok(node)
                    }
                    Some(other) => Err(self.unexpected(other)),
                    None => Err((token.pos, "this `(` is never closed; add a `)`".to_owned())),
                }
            }
            // `expect_operand` ran before every call.
            _ => Err(self.unexpected(&token)),
        }
    }

    fn take_star(&mut self) -> bool {
        let star = matches!(self.peek_tok(), Some(Tok::Star));
        if star {
            self.next += 1;
        }
        star
    }

    fn enter(&mut self, pos: usize) -> Result<(), Problem> {
        self.depth += 1;
        if self.depth > MAX_QUERY_DEPTH {
            return Err((
                pos,
                format!("the query nests parentheses and field filters more than {MAX_QUERY_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn count_term(&mut self, pos: usize) -> Result<(), Problem> {
        self.terms += 1;
        if self.terms > MAX_QUERY_TERMS {
            return Err((pos, format!("the query has more than {MAX_QUERY_TERMS} terms and phrases")));
        }
        Ok(())
    }

    /// Checks that the next token can start an operand; `after` is the operator before it, if
    /// any.
    fn expect_operand(&self, after: Option<&Token>) -> Result<(), Problem> {
        match (self.peek(), after) {
            (Some(Token { tok: Tok::Word(_) | Tok::Quoted(_) | Tok::Open, .. }), _) => Ok(()),
            (Some(Token { tok: Tok::Op(Op::Not), pos }), after) => {
                let hint = match after {
                    Some(Token { tok: Tok::Op(Op::And), .. }) => " (`a NOT b` already means `a AND NOT b`)",
                    _ => "",
                };
                Err((
                    *pos,
                    format!(
                        "`NOT` needs a term before it to subtract from, as in `rust NOT java`{hint}; a query \
                         cannot only exclude"
                    ),
                ))
            }
            (None | Some(Token { tok: Tok::Close, .. }), Some(Token { tok: Tok::Op(op), pos })) => {
                Err((*pos, format!("`{}` needs a term after it", op.name())))
            }
            (Some(token), _) => Err(self.unexpected(token)),
            // The query is not empty and `(` checks for `()` itself.
            (None, _) => Err((self.input.len(), "a term is missing at the end of the query".to_owned())),
        }
    }

    /// The problem with `token` where it is: after an operand, or where an operand should be.
    fn unexpected(&self, token: &Token) -> Problem {
        let reason = match &token.tok {
            Tok::Close => "this `)` has no matching `(`".to_owned(),
            Tok::Star => "`*` must follow a term, as in `data*`".to_owned(),
            Tok::Colon => {
                "`:` must follow a field name, as in `title:rust`; to search for a `:`, put it in quotes".to_owned()
            }
            Tok::Op(Op::Not) => "`NOT` needs a term before it to subtract from, as in `rust NOT java`".to_owned(),
            Tok::Op(op) => format!("`{}` needs a term before it", op.name()),
            Tok::Word(_) | Tok::Quoted(_) | Tok::Open => "unexpected term".to_owned(),
        };
        (token.pos, reason)
    }
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod query_tests;
