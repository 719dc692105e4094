// User types named like std's and a local `mod db4` do not break the expansion; no warnings.
#![deny(warnings)]

#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct String;
#[allow(dead_code)]
struct Vec;
#[allow(dead_code)]
struct Box;
#[allow(dead_code)]
mod db4 {}
#[allow(dead_code)]
mod core {}
#[allow(dead_code)]
mod std {}
#[allow(dead_code)]
trait Document {}
#[allow(dead_code)]
trait Serialize {}

#[derive(::db4::Document, ::serde::Serialize, ::serde::Deserialize, Debug, PartialEq)]
struct Article {
    #[id]
    id: ::std::string::String,
    #[partition_key]
    tenant_id: ::std::string::String,
    #[fts]
    title: ::std::string::String,
    #[index]
    views: i64,
    #[range_index]
    created_at: ::std::option::Option<i64>,
    #[version]
    version: u64,
}

// Never queried: its generated field handles must not trigger dead-code warnings.
#[derive(::db4::Document, ::serde::Serialize, ::serde::Deserialize)]
struct Unqueried {
    #[id]
    id: u64,
}

fn main() -> ::std::result::Result<(), ::db4::Error> {
    let db = ::db4::Db::open_in_memory()?;
    let articles = db.collection::<Article>()?;
    let article =
        Article { id: "a".into(), tenant_id: "t".into(), title: "x".into(), views: 1, created_at: None, version: 0 };
    articles.insert(&article)?;
    let f = Article::fields();
    let found = articles.query().filter(f.views.eq(1) & f.created_at.is_none()).all()?;
    assert_eq!(found, [article]);
    db.collection::<Unqueried>()?.insert(&Unqueried { id: 1 })?;
    Ok(())
}
