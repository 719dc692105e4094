//! trybuild cases live beside this file; see `ui.rs`.
