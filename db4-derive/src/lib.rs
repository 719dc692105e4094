//! `#[derive(Document)]` for db4. Use it through the `db4` crate, which re-exports it.
//!
//! The derive runs in three stages, as serde's does: attributes are parsed into a small IR
//! (`ast`), cross-field rules are checked on that IR (`check`), and code is generated from the
//! IR alone (`expand`). Errors are collected, never panicked, and each is spanned on the token
//! that explains it; when there are errors, a fallback impl is emitted beside them.

mod ast;
mod check;
mod ctxt;
mod expand;
mod symbol;

use proc_macro::TokenStream;

/// Derives `db4::Document`; see the `db4` crate's documentation for the attributes.
#[proc_macro_derive(Document, attributes(db4, id, partition_key, fts, index, range_index, version))]
pub fn derive_document(input: TokenStream) -> TokenStream {
    derive(input.into()).into()
}

/// The derive on `proc_macro2` tokens, so it can be tested outside a compiler invocation.
fn derive(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    let input: syn::DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let cx = ctxt::Ctxt::default();
    let cont = ast::Container::from_ast(&cx, &input);
    check::check(&cx, &cont);
    match cx.check() {
        None => expand::expand(&cont),
        Some(errors) => {
            let mut out = errors.to_compile_error();
            out.extend(expand::fallback(&cont));
            out
        }
    }
}

#[cfg(test)]
mod tests;
