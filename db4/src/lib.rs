#![doc = include_str!("../../README.md")]

pub use db4_derive::Document;
// Everything public in the engine, flat; the derive macro shares the trait's name.
pub use db4_runtime::*;

/// What a typical user of db4 imports: `use db4::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Collection, Db, DbOptions, Document, Error, Filter, Result, RetryPolicy, Transaction, TransactionOptions,
    };
}
