// More than 31 `#[fts]` fields: bm25() cannot weigh them all.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Wide {
    #[id]
    id: String,
    #[fts]
    t0: String,
    #[fts]
    t1: String,
    #[fts]
    t2: String,
    #[fts]
    t3: String,
    #[fts]
    t4: String,
    #[fts]
    t5: String,
    #[fts]
    t6: String,
    #[fts]
    t7: String,
    #[fts]
    t8: String,
    #[fts]
    t9: String,
    #[fts]
    t10: String,
    #[fts]
    t11: String,
    #[fts]
    t12: String,
    #[fts]
    t13: String,
    #[fts]
    t14: String,
    #[fts]
    t15: String,
    #[fts]
    t16: String,
    #[fts]
    t17: String,
    #[fts]
    t18: String,
    #[fts]
    t19: String,
    #[fts]
    t20: String,
    #[fts]
    t21: String,
    #[fts]
    t22: String,
    #[fts]
    t23: String,
    #[fts]
    t24: String,
    #[fts]
    t25: String,
    #[fts]
    t26: String,
    #[fts]
    t27: String,
    #[fts]
    t28: String,
    #[fts]
    t29: String,
    #[fts]
    t30: String,
    #[fts]
    t31: String,
}

fn main() {}
