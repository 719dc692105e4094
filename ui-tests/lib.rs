//! trybuild cases live beside this file; see `ui.rs`.
//!
//! The library re-exports db4 under another name, so that `pass/renamed_crate.rs` can point
//! `#[db4(crate = "...")]` at a path other than `::db4`.

#[doc(hidden)]
pub use db4 as renamed_db4;
