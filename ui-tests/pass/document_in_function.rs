// Two documents declared inside a function body, each with its own collection.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

fn main() -> db4::Result<()> {
    #[derive(Document, Serialize, Deserialize)]
    struct Author {
        #[id]
        id: u64,
        #[index]
        name: String,
    }

    #[derive(Document, Serialize, Deserialize)]
    struct Book {
        #[id]
        isbn: String,
        #[index]
        author_id: u64,
    }

    let db = Db::open_in_memory()?;
    let authors = db.collection::<Author>()?;
    let books = db.collection::<Book>()?;
    authors.insert(&Author { id: 1, name: "Le Guin".into() })?;
    books.insert(&Book { isbn: "978-0".into(), author_id: 1 })?;
    let author = authors.query().filter(Author::fields().name.eq("Le Guin")).first()?.expect("inserted");
    assert_eq!(books.query().filter(Book::fields().author_id.eq(author.id)).count()?, 1);
    assert_eq!((authors.name(), books.name()), ("author", "book"));
    Ok(())
}
