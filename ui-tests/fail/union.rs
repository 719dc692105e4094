// `#[derive(Document)]` on a union.
use db4::Document;

#[derive(Document)]
union Article {
    id: u64,
    bits: f64,
}

fn main() {}
