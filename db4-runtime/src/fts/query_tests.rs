//! Tests of the query language: each construct, precedence, every error with its byte
//! position, the helpers for the search builder, and properties (round trips through both
//! renderings; arbitrary input never panics and never makes FTS5 fail).
//!
//! Cases: `DB4_PROPTEST_CASES` (default 256 per property).

use super::*;
use crate::error::{Error, Result};

fn term(text: &str) -> QueryNode {
    QueryNode::Term { text: text.into(), prefix: false }
}

fn prefix(text: &str) -> QueryNode {
    QueryNode::Term { text: text.into(), prefix: true }
}

fn phrase(text: &str) -> QueryNode {
    QueryNode::Phrase { text: text.into(), prefix: false }
}

fn field(name: &str, node: QueryNode) -> QueryNode {
    QueryNode::Field { field: name.into(), node: Box::new(node) }
}

fn and(nodes: Vec<QueryNode>) -> QueryNode {
    QueryNode::And(nodes)
}

fn or(nodes: Vec<QueryNode>) -> QueryNode {
    QueryNode::Or(nodes)
}

fn not(include: QueryNode, exclude: QueryNode) -> QueryNode {
    QueryNode::Not { include: Box::new(include), exclude: Box::new(exclude) }
}

fn parse(input: &str) -> Result<QueryNode> {
    Ok(parse_query(input)?.root().clone())
}

/// The reason of the error `input` fails with, after checking its shape.
fn reason(input: &str) -> String {
    match parse_query(input) {
        Err(Error::InvalidQuery { collection, reason }) => {
            assert_eq!(collection, "search", "{input:?}");
            reason
        }
        other => panic!("{input:?} should fail with InvalidQuery, got {other:?}"),
    }
}

/// Both renderings parse back to the same query.
fn assert_round_trips(query: &SearchQuery) {
    let fts5 = to_fts5(query);
    let again = parse_query(&fts5).unwrap_or_else(|e| panic!("{query:?} rendered as {fts5:?}: {e}"));
    assert_eq!(&again, query, "through FTS5 {fts5:?}");
    assert_eq!(to_fts5(&again), fts5, "the FTS5 rendering is stable");
    let db4 = query.to_string();
    let again = parse_query(&db4).unwrap_or_else(|e| panic!("{query:?} displayed as {db4:?}: {e}"));
    assert_eq!(&again, query, "through Display {db4:?}");
}

// ---------------------------------------------------------------------------------------------
// Constructs

#[test]
fn bare_terms_and_implicit_and() -> Result<()> {
    assert_eq!(parse("rust")?, term("rust"));
    assert_eq!(parse("  rust  web\tserver\n")?, and(vec![term("rust"), term("web"), term("server")]));
    assert_eq!(parse("c++ a-b x.y ^z {w} a,b")?.to_string(), "c++ a-b x.y ^z {w} a,b");
    Ok(())
}

#[test]
fn phrases_and_escaped_quotes() -> Result<()> {
    assert_eq!(parse(r#""web server""#)?, phrase("web server"));
    assert_eq!(parse(r#""say ""hi"" now""#)?, phrase(r#"say "hi" now"#));
    assert_eq!(parse(r#""""""#)?, phrase("\""), "`\"` cannot be in a bare word");
    // A quoted single word is that word; the ends of a phrase are trimmed.
    assert_eq!(parse(r#""rust""#)?, term("rust"));
    assert_eq!(parse(r#""  rust  ""#)?, term("rust"));
    // Keywords and specials inside quotes are text.
    assert_eq!(parse(r#""AND""#)?, phrase("AND"));
    assert_eq!(parse(r#""a:b""#)?, phrase("a:b"));
    assert_eq!(parse(r#""x*""#)?, phrase("x*"));
    // Neighbours without spaces are separate items.
    assert_eq!(parse(r#"a"b c"d"#)?, and(vec![term("a"), phrase("b c"), term("d")]));
    Ok(())
}

#[test]
fn prefixes() -> Result<()> {
    assert_eq!(parse("data*")?, prefix("data"));
    assert_eq!(parse("data *")?, prefix("data"), "the FTS5 spelling, with a space");
    assert_eq!(parse(r#""web serv"*"#)?, QueryNode::Phrase { text: "web serv".into(), prefix: true });
    assert_eq!(parse(r#""web" *"#)?, prefix("web"));
    assert_eq!(parse("(data*)")?, prefix("data"));
    Ok(())
}

#[test]
fn fields() -> Result<()> {
    assert_eq!(parse("title:rust")?, field("title", term("rust")));
    assert_eq!(parse("title : rust")?, field("title", term("rust")));
    assert_eq!(parse(r#"title:"a phrase""#)?, field("title", phrase("a phrase")));
    assert_eq!(parse("title:ru*")?, field("title", prefix("ru")));
    assert_eq!(
        parse("title:(rust OR go) web")?,
        and(vec![field("title", or(vec![term("rust"), term("go")])), term("web")])
    );
    assert_eq!(parse("a:b:c")?, field("a", field("b", term("c"))));
    assert_eq!(parse("_x9:y")?, field("_x9", term("y")));
    let query = parse_query("title:a OR (body:b NOT tags : c)")?;
    assert_eq!(query.fields(), vec![("title", 0), ("body", 12), ("tags", 23)]);
    // A URL reads as a field filter, which the search builder then refuses.
    assert_eq!(parse("http://x")?, field("http", term("//x")));
    Ok(())
}

#[test]
fn operators() -> Result<()> {
    assert_eq!(parse("a AND b")?, and(vec![term("a"), term("b")]));
    assert_eq!(parse("a OR b OR c")?, or(vec![term("a"), term("b"), term("c")]));
    assert_eq!(parse("a NOT b")?, not(term("a"), term("b")));
    assert_eq!(parse("a NOT b NOT c")?, not(not(term("a"), term("b")), term("c")), "left to right");
    assert_eq!(parse("a NOT (b OR c)")?, not(term("a"), or(vec![term("b"), term("c")])));
    assert_eq!(parse("(a OR b) OR c")?, or(vec![or(vec![term("a"), term("b")]), term("c")]), "groups stay");
    assert_eq!(parse("((a))")?, term("a"));
    Ok(())
}

#[test]
fn precedence_is_not_then_and_then_or() -> Result<()> {
    assert_eq!(parse("a OR b c")?, or(vec![term("a"), and(vec![term("b"), term("c")])]));
    assert_eq!(parse("a OR b AND c")?, or(vec![term("a"), and(vec![term("b"), term("c")])]));
    assert_eq!(parse("a b OR c")?, or(vec![and(vec![term("a"), term("b")]), term("c")]));
    assert_eq!(parse("a b NOT c")?, and(vec![term("a"), not(term("b"), term("c"))]));
    assert_eq!(parse("a NOT b c")?, and(vec![not(term("a"), term("b")), term("c")]));
    assert_eq!(parse("a OR b NOT c")?, or(vec![term("a"), not(term("b"), term("c"))]));
    assert_eq!(parse("a NOT b OR c")?, or(vec![not(term("a"), term("b")), term("c")]));
    assert_eq!(parse("t:a NOT b")?, not(field("t", term("a")), term("b")), "a field takes one operand");
    Ok(())
}

#[test]
fn lowercase_keywords_and_near_are_terms() -> Result<()> {
    assert_eq!(parse("and or not")?, and(vec![term("and"), term("or"), term("not")]));
    assert_eq!(parse("Not NEAR And")?, and(vec![term("Not"), term("NEAR"), term("And")]));
    assert_eq!(parse("NEAR(a b)")?, and(vec![term("NEAR"), and(vec![term("a"), term("b")])]));
    assert_eq!(to_fts5(&parse_query("near NEAR")?), r#""near" AND "NEAR""#);
    Ok(())
}

#[test]
fn unicode_terms() -> Result<()> {
    assert_eq!(parse("über straße 日本語 🦀*")?, and(vec![term("über"), term("straße"), term("日本語"), prefix("🦀")]));
    // No-break space separates; a zero-width space is part of the word.
    assert_eq!(parse("a\u{a0}b\u{200b}c")?, and(vec![term("a"), term("b\u{200b}c")]));
    Ok(())
}

#[test]
fn control_characters_separate_and_never_reach_fts5() -> Result<()> {
    assert_eq!(parse("a\0b\u{7f}c\u{1b}")?, and(vec![term("a"), term("b"), term("c")]));
    assert_eq!(parse("\"a\0b\"")?, phrase("a b"));
    // Built by hand (the parser never makes it), still rendered without the NUL.
    let by_hand = SearchQuery { root: term("a\0b"), fields: Vec::new() };
    assert_eq!(to_fts5(&by_hand), "\"a b\"");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[test]
fn fts5_rendering_quotes_everything_and_parenthesizes_operands() -> Result<()> {
    let cases = [
        ("rust", r#""rust""#),
        ("data*", r#""data" *"#),
        (r#""say ""hi""""#, r#""say ""hi""""#),
        ("a b", r#""a" AND "b""#),
        ("a OR b c", r#""a" OR ("b" AND "c")"#),
        ("a b NOT c", r#""a" AND ("b" NOT "c")"#),
        ("(a OR b) NOT c NOT d", r#"("a" OR "b") NOT "c" NOT "d""#),
        ("a NOT (b NOT c)", r#""a" NOT ("b" NOT "c")"#),
        ("title:rust", r#"title : "rust""#),
        ("title:(a b)", r#"title : ("a" AND "b")"#),
        ("a:b:c", r#"a : (b : "c")"#),
    ];
    for (input, expected) in cases {
        assert_eq!(to_fts5(&parse_query(input)?), expected, "{input:?}");
    }
    // `{c}` is not a field name: FTS5's column sets cannot be written.
    assert!(reason("{c}:z").starts_with("at byte 0: `{c}` is not a field name"));
    assert_eq!(to_fts5(&parse_query("NEAR(x) ^y -w +v")?), r#""NEAR" AND "x" AND "^y" AND "-w" AND "+v""#);
    Ok(())
}

#[test]
fn the_example_of_the_docs() -> Result<()> {
    let query = parse_query(r#"title:rust "web server" wasm* NOT java"#)?;
    assert_eq!(to_fts5(&query), r#"title : "rust" AND "web server" AND ("wasm" * NOT "java")"#);
    assert_eq!(query.to_string(), r#"title:rust "web server" (wasm* NOT java)"#);
    Ok(())
}

#[test]
fn display_uses_db4_syntax() -> Result<()> {
    let cases = [
        ("rust  web", "rust web"),
        ("a AND b", "a b"),
        ("a OR b c", "a OR (b c)"),
        (r#""web server"* title : "x""#, r#""web server"* title:x"#),
        (r#""AND" "a:b""#, r#""AND" "a:b""#),
        ("t:(a OR b) NOT c", "t:(a OR b) NOT c"),
    ];
    for (input, expected) in cases {
        let query = parse_query(input)?;
        assert_eq!(query.to_string(), expected, "{input:?}");
        assert_round_trips(&query);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors, with their byte positions

#[test]
fn each_error_names_its_byte_position() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "the query is empty"),
        (" \t\n\0 ", 0, "the query is empty"),
        ("(a", 0, "this `(` is never closed"),
        ("a (b (c)", 2, "this `(` is never closed"),
        ("a)", 1, "this `)` has no matching `(`"),
        ("(a))", 3, "this `)` has no matching `(`"),
        (")", 0, "this `)` has no matching `(`"),
        ("()", 0, "the parentheses are empty"),
        ("a \"b c", 2, "this `\"` starts a phrase that is never closed"),
        ("\"a\"\"", 0, "never closed"),
        ("a \"\"", 2, "the phrase is empty"),
        ("\"  \"", 0, "the phrase is empty"),
        ("title:", 0, "`title:` needs a term, a phrase or a group in parentheses after it"),
        ("a title: OR b", 2, "`title:` needs a term"),
        ("(title:)", 1, "`title:` needs a term"),
        ("title:*", 0, "`title:` needs a term"),
        ("a AND", 2, "`AND` needs a term after it"),
        ("(a OR)", 3, "`OR` needs a term after it"),
        ("a NOT", 2, "`NOT` needs a term after it"),
        ("OR a", 0, "`OR` needs a term before it"),
        ("AND a", 0, "`AND` needs a term before it"),
        ("a AND OR b", 6, "`OR` needs a term before it"),
        ("(OR a)", 1, "`OR` needs a term before it"),
        ("NOT a", 0, "`NOT` needs a term before it to subtract from, as in `rust NOT java`"),
        ("a OR NOT b", 5, "`NOT` needs a term before it"),
        ("(NOT a)", 1, "`NOT` needs a term before it"),
        ("a AND NOT b", 6, "`a NOT b` already means `a AND NOT b`"),
        ("a NOT NOT b", 6, "`NOT` needs a term before it"),
        ("*", 0, "`*` must follow a term"),
        ("a **", 3, "`*` must follow a term"),
        ("a**b", 2, "`*` marks a prefix and must end the term"),
        ("a * *", 4, "`*` must follow a term"),
        ("(a) *", 4, "`*` must follow a term"),
        ("a OR *", 5, "`*` must follow a term"),
        ("a*b", 1, "`*` marks a prefix and must end the term"),
        (":a", 0, "`:` must follow a field name"),
        ("\"a\":b", 3, "`:` must follow a field name"),
        ("a :: b", 0, "`a:` needs a term"),
        ("über:x", 0, "`über` is not a field name"),
        ("x 9lives:y", 2, "`9lives` is not a field name"),
    ];
    for &(input, pos, message) in cases {
        let reason = reason(input);
        let at = format!("at byte {pos}: ");
        assert!(reason.starts_with(&at), "{input:?}: {reason:?} should start with {at:?}");
        assert!(reason.contains(message), "{input:?}: {reason:?} should say {message:?}");
    }
}

#[test]
fn field_names_are_bounded() -> Result<()> {
    let longest = "f".repeat(MAX_FIELD_NAME_BYTES);
    assert_eq!(parse(&format!("{longest}:x"))?, field(&longest, term("x")));
    let reason = reason(&format!("a {longest}f:x"));
    assert!(reason.starts_with("at byte 2: `ffff"), "{reason}");
    Ok(())
}

#[test]
fn limits_on_length_terms_and_depth() -> Result<()> {
    let long = "a ".repeat(MAX_QUERY_BYTES / 2 + 1);
    let r = reason(&long);
    assert!(r.starts_with(&format!("at byte {MAX_QUERY_BYTES}: the query is {} bytes long", long.len())), "{r}");

    let most = vec!["w"; MAX_QUERY_TERMS].join(" ");
    assert!(parse_query(&most).is_ok());
    let r = reason(&format!("{most} \"x y\""));
    assert!(
        r.starts_with(&format!("at byte {}: the query has more than {MAX_QUERY_TERMS} terms", most.len() + 1)),
        "{r}"
    );

    let deepest = format!("{}x{}", "(".repeat(MAX_QUERY_DEPTH), ")".repeat(MAX_QUERY_DEPTH));
    assert_eq!(parse(&deepest)?, term("x"));
    let r = reason(&format!("{}x{}", "(".repeat(MAX_QUERY_DEPTH + 1), ")".repeat(MAX_QUERY_DEPTH + 1)));
    assert!(r.starts_with(&format!("at byte {MAX_QUERY_DEPTH}: the query nests")), "{r}");
    // Field filters count as levels too.
    let r = reason(&format!("({}x)", "f:".repeat(MAX_QUERY_DEPTH)));
    assert!(r.starts_with(&format!("at byte {}: the query nests", 1 + 2 * (MAX_QUERY_DEPTH - 1))), "{r}");
    // The depth is that of the renderings, which add parentheses: `a:b:c` renders as
    // `a:(b:c)`, so a chain of k fields nests 2k - 1 levels.
    let chain = |k: usize| format!("{}x", "f:".repeat(k));
    assert_eq!(nesting(parse_query(&chain(3))?.root()), 5);
    assert!(parse_query(&chain(MAX_QUERY_DEPTH / 2))?.to_string().starts_with("f:(f:(f:"));
    let r = reason(&format!("a {}", chain(MAX_QUERY_DEPTH / 2 + 1)));
    assert!(r.starts_with("at byte 2: the query nests") && r.contains("`a:b:c` is `a:(b:c)`"), "{r}");
    // ... and `a OR b c` renders as `a OR (b c)`.
    let grouped = |k: usize| format!("{}a OR b c{}", "x (".repeat(k), ")".repeat(k));
    assert_eq!(nesting(parse_query(&grouped(MAX_QUERY_DEPTH - 1))?.root()), MAX_QUERY_DEPTH);
    let r = reason(&grouped(MAX_QUERY_DEPTH));
    assert!(r.starts_with("at byte 0: the query nests") && r.contains("`a OR b c` is `a OR (b c)`"), "{r}");
    // A chain of `NOT`s groups left to right without parentheses.
    let nots = format!("a{}", " NOT b".repeat(MAX_QUERY_TERMS - 1));
    assert_eq!(nesting(parse_query(&nots)?.root()), 0);
    Ok(())
}

#[cfg(feature = "sqlite")]
#[test]
fn the_deepest_queries_fit_the_fts5_parser_stack() -> Result<()> {
    let most = |open: &str, close: &str| format!("{}x{}", open.repeat(MAX_QUERY_DEPTH), close.repeat(MAX_QUERY_DEPTH));
    let field_group = format!("{}x{}", "title:(".repeat(MAX_QUERY_DEPTH / 2), ")".repeat(MAX_QUERY_DEPTH / 2));
    let deepest = [
        most("(", ")"),
        most("a (", ")"),
        most("a OR (", ")"),
        most("a NOT (", ")"),
        most("(", ") NOT b"),
        format!("{}x", "title:".repeat(MAX_QUERY_DEPTH / 2)),
        format!("{}x", "a title:".repeat(MAX_QUERY_DEPTH / 2)),
        format!("{}a OR b c{}", "x (".repeat(MAX_QUERY_DEPTH - 1), ")".repeat(MAX_QUERY_DEPTH - 1)),
        field_group,
        format!("{}x{}", "a title:(".repeat(MAX_QUERY_DEPTH / 2), ")".repeat(MAX_QUERY_DEPTH / 2)),
    ];
    for input in deepest {
        let query = parse_query(&input)?;
        props::assert_fts5_accepts_both(&query);
    }
    Ok(())
}

#[test]
fn found_by_fuzzing() {
    // Eleven nested fields: 11 levels as typed, 21 as rendered (`a : (b : (c : ...`), so the
    // rendering did not parse back before the depth counted the rendering's nesting.
    let input = "til0tlrle:td:ket:t:r:Set:t:rwwt:rle:title:wt:rrurs";
    assert!(reason(input).starts_with("at byte 0: the query nests"));
    let ten = &input[input.find("td:").unwrap_or(0)..];
    assert_round_trips(&parse_query(ten).unwrap_or_else(|e| panic!("{e}")));
}

#[test]
fn ten_kilobytes_of_open_parentheses_do_not_overflow_the_stack() {
    for input in ["(".repeat(10_000), format!("{}a", "(".repeat(10_000)), "f:".repeat(5_000) + "x"] {
        let r = reason(&input);
        assert!(r.contains("nests"), "{r}");
    }
}

#[test]
fn a_standalone_error_reads_well() {
    let err = parse_query("NOT java").unwrap_err();
    assert_eq!(
        err.to_string(),
        "search: invalid query: at byte 0: `NOT` needs a term before it to subtract from, as in `rust NOT java`; a \
         query cannot only exclude"
    );
    let err = parse_in("articles", "(a").unwrap_err();
    assert_eq!(err.to_string(), "articles: invalid query: at byte 0: this `(` is never closed; add a `)`");
}

// ---------------------------------------------------------------------------------------------
// For the search builder

#[test]
fn check_fields_names_the_field_its_position_and_the_allowed_ones() -> Result<()> {
    let query = parse_query("title:rust OR tags:x")?;
    query.check_fields("articles", &["title", "body", "tags"])?;
    match query.check_fields("articles", &["title", "body"]) {
        Err(Error::InvalidQuery { collection, reason }) => {
            assert_eq!(collection, "articles");
            assert_eq!(reason, "at byte 14: `tags` is not a full-text field; the full-text fields are `title`, `body`");
        }
        other => panic!("{other:?}"),
    }
    let Err(Error::InvalidQuery { reason, .. }) = parse_query("tags:x")?.check_fields("notes", &[]) else {
        panic!("tags is not allowed");
    };
    assert_eq!(reason, "at byte 0: `tags` is not a full-text field; `notes` has no full-text fields");
    // Names are compared exactly.
    assert!(parse_query("Title:x")?.check_fields("articles", &["title"]).is_err());
    parse_query("no fields here")?.check_fields("articles", &[])?;
    Ok(())
}

#[test]
fn map_terms_expands_bare_terms_only() -> Result<()> {
    let query = parse_query(r#"colour "colour wheel" col* title:colour NOT colour"#)?;
    let mut asked = Vec::new();
    let wide = query.map_terms(|t| {
        asked.push(t.to_owned());
        match t {
            "colour" => vec!["color".into(), "colour".into(), " ".into(), "color".into(), "hue shade".into()],
            _ => vec![],
        }
    });
    assert_eq!(asked, ["colour", "colour", "colour"], "phrases and prefixes are not offered");
    let alternatives = || or(vec![term("colour"), term("color"), phrase("hue shade")]);
    assert_eq!(
        wide.root(),
        &and(vec![
            alternatives(),
            phrase("colour wheel"),
            prefix("col"),
            not(field("title", alternatives()), alternatives()),
        ])
    );
    assert_eq!(wide.fields(), query.fields());
    assert_eq!(
        to_fts5(&wide),
        r#"("colour" OR "color" OR "hue shade") AND "colour wheel" AND "col" * AND (title : ("colour" OR "color" OR "hue shade") NOT ("colour" OR "color" OR "hue shade"))"#
    );
    assert_round_trips(&wide);

    // Alternatives that are operators or hold syntax stay text.
    let odd = parse_query("x")?.map_terms(|_| vec!["OR".into(), "a\0b".into(), "(".into(), "y*".into()]);
    assert_eq!(odd.root(), &or(vec![term("x"), phrase("OR"), phrase("a b"), phrase("("), phrase("y*")]));
    assert_round_trips(&odd);
    // No alternative: unchanged.
    assert_eq!(parse_query("x y")?.map_terms(|_| Vec::new()), parse_query("x y")?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties

mod props {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config as ProptestConfig;

    /// How many cases to run: `DB4_PROPTEST_CASES`, else `default`.
    fn cases(default: u32) -> u32 {
        std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
    }

    fn config() -> ProptestConfig {
        // No regression files: a failure prints its minimal input, to be pinned as a named test.
        ProptestConfig { cases: cases(256), failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Words with the characters FTS5 gives a meaning to, letters of other scripts, and
    /// operator names in other cases.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,6}",
            "[a-zA-Z0-9_+\\-^{},.'\\\\%;éß€日本🦀\u{200b}]{1,8}",
            Just("and".to_owned()),
            Just("Or".to_owned()),
            Just("NEAR".to_owned()),
        ]
        .prop_filter("a bare word", |w| is_bare_word(w))
    }

    fn phrase_text() -> impl Strategy<Value = String> {
        "[a-zA-Z \"*:()+\\-^{}é€日\t\u{0}]{1,14}"
            .prop_map(|t| clean_phrase(&t))
            .prop_filter("a phrase that is not a bare word", |t| !t.is_empty() && !is_bare_word(t))
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![Just("title".to_owned()), Just("body".to_owned()), Just("Tags".to_owned()), Just("_x1".to_owned())]
    }

    fn node() -> impl Strategy<Value = QueryNode> {
        let leaf = prop_oneof![
            (word(), any::<bool>()).prop_map(|(text, prefix)| QueryNode::Term { text, prefix }),
            (phrase_text(), any::<bool>()).prop_map(|(text, prefix)| QueryNode::Phrase { text, prefix }),
        ];
        leaf.prop_recursive(6, 60, 4, |inner| {
            prop_oneof![
                (field_name(), inner.clone()).prop_map(|(f, n)| field(&f, n)),
                proptest::collection::vec(inner.clone(), 2..5).prop_map(QueryNode::And),
                proptest::collection::vec(inner.clone(), 2..5).prop_map(QueryNode::Or),
                (inner.clone(), inner).prop_map(|(a, b)| not(a, b)),
            ]
        })
    }

    const FRAGMENTS: &[&str] = &[
        "AND",
        "OR",
        "NOT",
        "NEAR",
        "NEAR(",
        "and",
        "or",
        "not",
        "(",
        ")",
        "\"",
        "\"\"",
        "*",
        ":",
        "^",
        "+",
        "-",
        "{",
        "}",
        ",",
        ".",
        "\0",
        " ",
        " ",
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "'",
        "title",
        "body",
        "Title",
        "rust",
        "web",
        "a",
        "é",
        "€",
        "日本語",
        "🦀",
        "\u{200b}",
        "\u{a0}",
        "\u{7f}",
        "\u{85}",
        "title:",
        "body :",
        "x:",
        "9:",
        "über:",
        "rank:",
        "\\",
        "%",
        "--",
        ";",
        "+++",
        "\"a b\"",
        "\"x\"\"y\"",
        "*)",
    ];

    /// Input a user could type, tilted toward the characters that mean something.
    fn input() -> impl Strategy<Value = String> {
        let fragment = proptest::sample::select(FRAGMENTS);
        prop_oneof![
            3 => proptest::collection::vec(fragment.clone(), 0..30).prop_map(|f| f.concat()),
            2 => proptest::collection::vec(fragment.clone(), 0..30).prop_map(|f| f.join(" ")),
            1 => any::<String>(),
            1 => "\\PC{0,40}",
            1 => proptest::collection::vec(fragment.clone(), 2000..4000).prop_map(|f| f.concat()),
            1 => (proptest::collection::vec(fragment, 0..8), 0..12_000usize).prop_map(|(f, n)| {
                let unit = f.concat();
                if unit.is_empty() { "(".repeat(n) } else { unit.repeat(n / unit.len() + 1) }
            }),
        ]
    }

    #[cfg(feature = "sqlite")]
    mod fts5 {
        use super::*;
        use rusqlite::Connection;

        pub(super) const TOKENIZERS: [(&str, &str); 3] =
            [("fts_porter", "porter unicode61"), ("fts_unicode", "unicode61"), ("fts_trigram", "trigram")];

        /// Three FTS5 tables, one per tokenizer, with a column for each field `query` uses and
        /// a few rows; `None` when a field cannot be a column (`rank`, `rowid`: the search
        /// builder only allows the schema's fields, which the derive checks).
        pub(super) fn tables(query: &SearchQuery) -> Option<Connection> {
            let mut columns: Vec<String> = vec!["body".into()];
            for (name, _) in query.fields() {
                let name = name.to_ascii_lowercase();
                if name == "rank" || name == "rowid" {
                    return None;
                }
                if !columns.contains(&name) {
                    columns.push(name);
                }
            }
            let conn = Connection::open_in_memory().expect("open");
            let list: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
            for (i, (table, tokenizer)) in TOKENIZERS.iter().enumerate() {
                let prefix = if i == 0 { ", prefix='1 2'" } else { "" };
                conn.execute_batch(&format!(
                    "CREATE VIRTUAL TABLE {table} USING fts5({}, tokenize='{tokenizer}'{prefix});",
                    list.join(", ")
                ))
                .expect("create");
                for row in ["rust web server", "a b c d", "the colour of rust", "+++ € 日本語 🦀 é"] {
                    let values: Vec<&str> = columns.iter().map(|_| row).collect();
                    let marks: Vec<&str> = columns.iter().map(|_| "?").collect();
                    conn.execute(
                        &format!("INSERT INTO {table} VALUES ({})", marks.join(", ")),
                        rusqlite::params_from_iter(values),
                    )
                    .expect("insert");
                }
            }
            Some(conn)
        }

        /// Runs the rendering of `query` against every table; panics on an SQLite error.
        pub(super) fn assert_fts5_accepts(query: &SearchQuery) {
            let Some(conn) = tables(query) else { return };
            let expression = to_fts5(query);
            for (table, _) in TOKENIZERS {
                let sql = format!("SELECT count(*) FROM {table} WHERE {table} MATCH ?1");
                let counted: rusqlite::Result<i64> = conn.query_row(&sql, [&expression], |row| row.get(0));
                if let Err(e) = counted {
                    panic!("{table} refused {expression:?} (from {query:?}): {e}");
                }
            }
        }
    }

    /// Words whose prefixes overlap, so `ab*` and `"b ab"*` differ from `ab` and `"b ab"`.
    const VOCABULARY: [&str; 5] = ["ab", "abc", "b", "bc", "c"];

    fn vocabulary_node() -> impl Strategy<Value = QueryNode> {
        let word = proptest::sample::select(&VOCABULARY[..]).prop_map(str::to_owned);
        let leaf = prop_oneof![
            (word.clone(), any::<bool>()).prop_map(|(text, prefix)| QueryNode::Term { text, prefix }),
            (proptest::collection::vec(word, 2..4), any::<bool>())
                .prop_map(|(words, prefix)| QueryNode::Phrase { text: words.join(" "), prefix }),
        ];
        leaf.prop_recursive(5, 30, 3, |inner| {
            prop_oneof![
                (prop_oneof![Just("title"), Just("body")], inner.clone()).prop_map(|(f, n)| field(f, n)),
                proptest::collection::vec(inner.clone(), 2..4).prop_map(QueryNode::And),
                proptest::collection::vec(inner.clone(), 2..4).prop_map(QueryNode::Or),
                (inner.clone(), inner).prop_map(|(a, b)| not(a, b)),
            ]
        })
    }

    /// A document: the words of its `title` and its `body`.
    type Doc = [Vec<&'static str>; 2];

    fn doc() -> impl Strategy<Value = Doc> {
        let words = || proptest::collection::vec(proptest::sample::select(&VOCABULARY[..]), 0..6);
        (words(), words()).prop_map(|(title, body)| [title, body])
    }

    /// Whether `node` matches `doc` when searching the columns flagged in `columns`: what the
    /// FTS5 expression must mean.
    fn matches(node: &QueryNode, columns: [bool; 2], doc: &Doc) -> bool {
        let token_matches =
            |token: &str, word: &str, prefix: bool| if prefix { token.starts_with(word) } else { token == word };
        let in_column = |words: &[&str], prefix: bool| {
            (0..2).any(|c| {
                columns[c]
                    && doc[c].windows(words.len()).any(|window| {
                        window
                            .iter()
                            .zip(words)
                            .enumerate()
                            .all(|(i, (token, word))| token_matches(token, word, prefix && i == words.len() - 1))
                    })
            })
        };
        match node {
            QueryNode::Term { text, prefix } => in_column(&[text.as_str()], *prefix),
            QueryNode::Phrase { text, prefix } => in_column(&text.split(' ').collect::<Vec<_>>(), *prefix),
            QueryNode::Field { field, node } => {
                let only = if field == "title" { [true, false] } else { [false, true] };
                matches(node, [columns[0] && only[0], columns[1] && only[1]], doc)
            }
            QueryNode::And(nodes) => nodes.iter().all(|n| matches(n, columns, doc)),
            QueryNode::Or(nodes) => nodes.iter().any(|n| matches(n, columns, doc)),
            QueryNode::Not { include, exclude } => matches(include, columns, doc) && !matches(exclude, columns, doc),
        }
    }

    /// The terms and phrases under `node`.
    fn leaves(node: &QueryNode) -> usize {
        match node {
            QueryNode::Term { .. } | QueryNode::Phrase { .. } => 1,
            QueryNode::Field { node, .. } => leaves(node),
            QueryNode::And(nodes) | QueryNode::Or(nodes) => nodes.iter().map(leaves).sum(),
            QueryNode::Not { include, exclude } => leaves(include) + leaves(exclude),
        }
    }

    /// One level of nesting around a query, in the ways the renderer parenthesizes.
    #[derive(Debug, Clone, Copy)]
    enum Wrap {
        Group,
        AndBefore,
        AndAfter,
        OrBefore,
        OrAfter,
        NotInclude,
        NotExclude,
        /// Two levels: the field filter and its parentheses.
        FieldGroup,
    }

    fn wrap(inner: &str, how: Wrap) -> String {
        match how {
            Wrap::Group => format!("({inner})"),
            Wrap::AndBefore => format!("a ({inner})"),
            Wrap::AndAfter => format!("({inner}) AND b"),
            Wrap::OrBefore => format!("c OR ({inner})"),
            Wrap::OrAfter => format!("({inner}) OR d"),
            Wrap::NotInclude => format!("({inner}) NOT e"),
            Wrap::NotExclude => format!("f NOT ({inner})"),
            Wrap::FieldGroup => format!("title:({inner})"),
        }
    }

    fn wrapping() -> impl Strategy<Value = Wrap> {
        // A group of one is flattened away, so it costs FTS5 nothing: seldom.
        prop_oneof![
            1 => Just(Wrap::Group),
            3 => Just(Wrap::AndBefore),
            3 => Just(Wrap::AndAfter),
            3 => Just(Wrap::OrBefore),
            3 => Just(Wrap::OrAfter),
            3 => Just(Wrap::NotInclude),
            3 => Just(Wrap::NotExclude),
            3 => Just(Wrap::FieldGroup),
        ]
    }

    /// `leaf` wrapped in `wraps` until `levels` levels of nesting (parentheses and fields).
    fn nested(leaf: &str, wraps: &[Wrap], levels: usize) -> String {
        let mut depth = usize::from(leaf.contains(':'));
        let mut query = leaf.to_owned();
        for &how in wraps.iter().cycle() {
            let cost = if matches!(how, Wrap::FieldGroup) { 2 } else { 1 };
            if depth + cost > levels {
                break;
            }
            query = wrap(&query, how);
            depth += cost;
        }
        query
    }

    /// Every term `x` expanded to `x OR x2`: one more level of parentheses in the rendering.
    fn widened(query: &SearchQuery) -> SearchQuery {
        query.map_terms(|t| vec![format!("{t}2")])
    }

    /// `query` and its widened form run on FTS5 without an error.
    #[cfg(feature = "sqlite")]
    pub(super) fn assert_fts5_accepts_both(query: &SearchQuery) {
        fts5::assert_fts5_accepts(query);
        fts5::assert_fts5_accepts(&widened(query));
    }

    /// What every outcome of parsing `input` must satisfy.
    fn check_input(input: &str) {
        match parse_query(input) {
            Ok(query) => {
                assert_round_trips(&query);
                let fts5 = to_fts5(&query);
                assert!(!fts5.chars().any(char::is_control), "{fts5:?}");
                for (name, pos) in query.fields() {
                    assert!(is_field_name(name), "{name:?}");
                    assert!(input[pos..].starts_with(name), "{name:?} at {pos} in {input:?}");
                }
                #[cfg(feature = "sqlite")]
                fts5::assert_fts5_accepts(&query);
            }
            Err(Error::InvalidQuery { collection, reason }) => {
                assert_eq!(collection, "search");
                let pos: usize = reason
                    .strip_prefix("at byte ")
                    .and_then(|r| r.split_once(": "))
                    .and_then(|(n, _)| n.parse().ok())
                    .unwrap_or_else(|| panic!("{reason:?} does not start with `at byte N: `"));
                assert!(pos <= input.len().min(MAX_QUERY_BYTES), "{pos} past {input:?}");
            }
            Err(other) => panic!("{input:?}: {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn generated_trees_round_trip_through_both_renderings(root in node()) {
            prop_assume!(leaves(&root) <= MAX_QUERY_TERMS && nesting(&root) <= MAX_QUERY_DEPTH);
            let query = SearchQuery { root, fields: Vec::new() };
            assert_round_trips(&query);
        }

        #[cfg(feature = "sqlite")]
        #[test]
        fn generated_trees_render_to_expressions_fts5_accepts(root in node()) {
            prop_assume!(leaves(&root) <= MAX_QUERY_TERMS && nesting(&root) <= MAX_QUERY_DEPTH);
            let text = parse_query(&to_fts5(&SearchQuery { root, fields: Vec::new() })).expect("round trip");
            fts5::assert_fts5_accepts(&text);
        }

        #[cfg(feature = "sqlite")]
        #[test]
        fn fts5_finds_what_the_tree_means(
            root in vocabulary_node(),
            docs in proptest::collection::vec(doc(), 1..12),
        ) {
            let query = SearchQuery { root, fields: Vec::new() };
            let conn = rusqlite::Connection::open_in_memory().expect("open");
            conn.execute_batch("CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize='unicode61');")
                .expect("create");
            for (rowid, doc) in docs.iter().enumerate() {
                conn.execute(
                    "INSERT INTO docs (rowid, title, body) VALUES (?1, ?2, ?3)",
                    rusqlite::params![rowid as i64, doc[0].join(" "), doc[1].join(" ")],
                )
                .expect("insert");
            }
            let expression = to_fts5(&query);
            let mut statement = conn.prepare("SELECT rowid FROM docs WHERE docs MATCH ?1 ORDER BY rowid").expect("prepare");
            let found: Vec<i64> = statement
                .query_map([&expression], |row| row.get(0))
                .and_then(|rows| rows.collect())
                .unwrap_or_else(|e| panic!("{expression:?}: {e}"));
            let expected: Vec<i64> =
                (0..docs.len()).filter(|&i| matches(query.root(), [true, true], &docs[i])).map(|i| i as i64).collect();
            prop_assert_eq!(found, expected, "{} for {:?}", expression, docs);
        }

        #[cfg(feature = "sqlite")]
        #[test]
        fn nesting_up_to_the_limit_stays_within_the_fts5_parser_stack(
            wraps in proptest::collection::vec(wrapping(), 1..8),
            leaf in prop_oneof![Just("x"), Just("x*"), Just("\"x y\""), Just("body:x"), Just("x NOT y")],
            past in 0..4usize,
        ) {
            let input = nested(leaf, &wraps, MAX_QUERY_DEPTH + past);
            match parse_query(&input) {
                Ok(query) => assert_fts5_accepts_both(&query),
                Err(Error::InvalidQuery { reason, .. }) => prop_assert!(reason.contains("nests"), "{}", reason),
                Err(other) => panic!("{other:?}"),
            }
        }

        #[test]
        fn any_input_parses_or_fails_cleanly(input in input()) {
            check_input(&input);
        }

        #[test]
        fn lossy_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            check_input(&String::from_utf8_lossy(&bytes));
        }
    }
}
