//! Code generation, from the checked IR only.

use crate::ast::{Container, Field, IndexKind};
use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

/// The generated items for a valid container.
pub fn expand(cont: &Container<'_>) -> TokenStream {
    let fields = cont.fields.as_deref().unwrap_or_default();
    let krate = &cont.krate;
    let p = quote!(#krate::__private);
    let ident = cont.ident;
    let fields_struct = fields_struct(cont, fields);
    let fields_ident = fields_ident(cont);
    let (collection, _) = &cont.collection;
    let type_name = ident.to_string();

    let defs = fields.iter().map(|f| {
        let (name, key, ty) = (&f.name, &f.key, type_string(f.ty));
        let mut def = quote!(#p::FieldDef::new(#name, #key, #ty));
        if f.id.is_some() {
            def.extend(quote!(.id()));
        }
        if f.partition_key.is_some() {
            def.extend(quote!(.partition_key()));
        }
        if f.version.is_some() {
            def.extend(quote!(.version()));
        }
        match f.index {
            Some((IndexKind::Equality, _)) => def.extend(quote!(.index(#p::IndexKind::Equality))),
            Some((IndexKind::Range, _)) => def.extend(quote!(.index(#p::IndexKind::Range))),
            None => {}
        }
        if let Some((weight, _)) = f.fts {
            def.extend(quote!(.fts(#weight)));
        }
        def
    });
    let field_count = fields.len();
    // Only when asked for, so the common expansion stays as it was.
    let full_changes = match cont.full_changes {
        Some(on) => quote!(.full_changes(#on)),
        None => quote!(),
    };
    let tokenizer = match cont.tokenizer.as_ref().map(|(t, _)| t.as_str()) {
        Some("unicode61") => quote!(#p::Tokenizer::Unicode61),
        Some("trigram") => quote!(#p::Tokenizer::Trigram),
        _ => quote!(#p::Tokenizer::Porter),
    };

    let index_defs = cont.indexes.iter().map(|index| {
        let name = index.name.as_ref().map(syn::LitStr::value).unwrap_or_default();
        let keys = index.keys.iter().map(|k| {
            let field = k.name();
            if k.descending { quote!(#p::IndexField::desc(#field)) } else { quote!(#p::IndexField::asc(#field)) }
        });
        quote!(#p::IndexDef::new(#name, &[#(#keys),*]))
    });
    let index_count = cont.indexes.len();
    // Only when declared, so the common expansion stays as it was.
    let (indexes_static, indexes) = if index_count == 0 {
        (quote!(), quote!())
    } else {
        (
            quote!(static __DB4_INDEXES: [#p::IndexDef; #index_count] = [#(#index_defs),*];),
            quote!(.indexes(&__DB4_INDEXES)),
        )
    };
    // Each key's type must be ordered: asserted with the span of the key in the declaration.
    // (Through a field access spanned on the key, so the error points at the declaration.)
    let index_checks = cont.indexes.iter().flat_map(|index| &index.keys).filter_map(|k| {
        let field = fields.iter().find(|f| f.name == k.name())?;
        let mut member = field.ident.clone();
        member.set_span(k.ident.span());
        Some(quote_spanned!(k.ident.span()=>
            const _: fn(&#ident) = |__db4_doc| #p::assert_ordered_key(&__db4_doc.#member);
        ))
    });

    let id = fields.iter().find(|f| f.id.is_some());
    let id_ty = id.map(|f| f.ty);
    let id_ident = id.map(|f| f.ident);

    let (version_get, version_set, version_fits) = match fields.iter().find(|f| f.version.is_some()) {
        Some(f) => {
            let (field, ty) = (f.ident, f.ty);
            (
                quote!(#p::Option::Some(#p::version_of::<#ty>(&self.#field))),
                quote!(#p::set_version::<#ty>(&mut self.#field, version);),
                quote!(#p::version_fits::<#ty>(version)),
            )
        }
        None => (
            quote!(#p::Option::None),
            quote!(let _ = version;),
            quote!({
                let _ = version;
                true
            }),
        ),
    };

    let type_checks = fields.iter().flat_map(type_checks(&p));
    let handles = fields.iter().enumerate().filter(|(_, f)| f.not_stored.is_none()).map(|(i, f)| {
        let field = f.ident;
        quote!(#field: #p::Field::__new(#i))
    });
    let partitioned = partitioned(&p, ident, fields, None);
    let vis = cont.vis;
    let doc = format!("Typed field handles of [`{ident}`], for building queries.");

    quote! {
        #fields_struct

        #[doc(hidden)]
        const _: () = {
            static __DB4_FIELDS: [#p::FieldDef; #field_count] = [#(#defs),*];
            #indexes_static
            static __DB4_SCHEMA: #p::Schema =
                #p::Schema::new(#collection, #type_name, &__DB4_FIELDS).tokenizer(#tokenizer)#full_changes #indexes;

            #(#type_checks)*
            #(#index_checks)*

            #[automatically_derived]
            impl #p::Document for #ident {
                type Id = #id_ty;
                type Fields = #fields_ident;

                fn schema() -> &'static #p::Schema {
                    &__DB4_SCHEMA
                }

                fn fields() -> #fields_ident {
                    #fields_ident { #(#handles),* }
                }

                fn id(&self) -> &<Self as #p::Document>::Id {
                    &self.#id_ident
                }

                fn version(&self) -> #p::Option<::core::primitive::u64> {
                    #version_get
                }

                fn set_version(&mut self, version: ::core::primitive::u64) {
                    #version_set
                }

                fn version_fits(version: ::core::primitive::u64) -> ::core::primitive::bool {
                    #version_fits
                }

                fn __warm_clone() -> #p::Option<fn(&Self) -> Self> {
                    #[allow(unused_imports)]
                    use #p::{WarmViaClone as _, WarmViaNothing as _};
                    (&#p::WarmProbe::<Self>::new()).warm_clone()
                }
            }

            #partitioned

            #[automatically_derived]
            impl #ident {
                #[doc = #doc]
                #vis fn fields() -> #fields_ident {
                    <Self as #p::Document>::fields()
                }
            }
        };
    }
}

/// What is emitted beside the `compile_error!`s when the input has errors: the field-handle
/// struct and a `Document` impl that is never run, so the rest of the user's code does not
/// fail a second time with "trait not implemented" or "no field" errors.
pub fn fallback(cont: &Container<'_>) -> TokenStream {
    // Generic structs, enums and unions get none: an impl for them would add errors the
    // user cannot act on (serde cannot even derive for a union).
    if !cont.input.generics.params.is_empty() || cont.fields.is_none() {
        return TokenStream::new();
    }
    let krate = &cont.krate;
    let p = quote!(#krate::__private);
    let ident = cont.ident;
    let fields = cont.fields.as_deref().unwrap_or_default();
    let (fields_struct, fields_ty, fields_expr) = if cont.fields.is_some() {
        let fields_ident = fields_ident(cont);
        let handles = fields.iter().enumerate().filter(|(_, f)| f.not_stored.is_none()).map(|(i, f)| {
            let field = f.ident;
            quote!(#field: #p::Field::__new(#i))
        });
        (fields_struct(cont, fields), quote!(#fields_ident), quote!(#fields_ident { #(#handles),* }))
    } else {
        (TokenStream::new(), quote!(()), quote!(()))
    };
    let unreachable = quote!(::core::unreachable!("#[derive(Document)] failed to compile"));
    let partitioned = partitioned(&p, ident, fields, Some(&unreachable));
    quote! {
        #fields_struct

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #p::Document for #ident {
                type Id = ::std::string::String;
                type Fields = #fields_ty;
                fn schema() -> &'static #p::Schema { #unreachable }
                fn fields() -> #fields_ty { #fields_expr }
                fn id(&self) -> &::std::string::String { #unreachable }
                fn version(&self) -> #p::Option<::core::primitive::u64> { #unreachable }
                fn set_version(&mut self, _: ::core::primitive::u64) { #unreachable }
            }
            #partitioned
        };
    }
}

/// `Partitioned` for a struct with a `#[partition_key]` field, nothing otherwise; with
/// `unreachable`, the fallback's accessor that is never run.
fn partitioned(
    p: &TokenStream,
    ident: &syn::Ident,
    fields: &[Field<'_>],
    unreachable: Option<&TokenStream>,
) -> TokenStream {
    let Some(f) = fields.iter().find(|f| f.partition_key.is_some()) else { return TokenStream::new() };
    let (field, ty) = (f.ident, f.ty);
    let body = unreachable.cloned().unwrap_or_else(|| quote!(&self.#field));
    quote! {
        #[automatically_derived]
        impl #p::Partitioned for #ident {
            type PartitionKey = #ty;

            fn partition_key(&self) -> &#ty {
                #body
            }
        }
    }
}

fn fields_ident(cont: &Container<'_>) -> syn::Ident {
    format_ident!("{}Fields", cont.ident)
}

fn fields_struct(cont: &Container<'_>, fields: &[Field<'_>]) -> TokenStream {
    let krate = &cont.krate;
    let p = quote!(#krate::__private);
    let ident = cont.ident;
    let vis = cont.vis;
    let fields_ident = fields_ident(cont);
    // A field serde does not write (skip, flatten) cannot be queried: it gets no handle.
    let members = fields.iter().filter(|f| f.not_stored.is_none()).map(|f| {
        let (field, ty) = (f.ident, f.ty);
        let doc = format!("The `{}` field.", f.name);
        quote!(#[doc = #doc] pub #field: #p::Field<#ident, #ty>)
    });
    let doc = format!("Typed field handles of [`{ident}`], returned by `{ident}::fields()`.");
    quote! {
        #[doc = #doc]
        #[derive(Clone, Copy, Debug)]
        #[allow(non_camel_case_types, non_snake_case)]
        #vis struct #fields_ident {
            #(#members,)*
        }
    }
}

/// Trait-bound assertions spanned on each attributed field's type, so a wrong type is reported
/// at the field with a message saying what the attribute needs.
fn type_checks(p: &TokenStream) -> impl Fn(&Field<'_>) -> Vec<TokenStream> + '_ {
    move |f| {
        let ty = f.ty;
        let span = ty.span();
        let mut out = Vec::new();
        if f.fts.is_some() {
            out.push(quote_spanned!(span=> const _: () = #p::assert_fts::<#ty>();));
        }
        if matches!(f.index, Some((IndexKind::Range, _))) {
            out.push(quote_spanned!(span=> const _: () = #p::assert_ordered::<#ty>();));
        }
        if f.version.is_some() {
            out.push(quote_spanned!(span=> const _: () = #p::assert_version::<#ty>();));
        }
        out
    }
}

/// The type as written, compacted: `Vec<String>` rather than `Vec < String >`.
fn type_string(ty: &syn::Type) -> String {
    let s = ty.to_token_stream().to_string();
    s.replace(" < ", "<")
        .replace("< ", "<")
        .replace(" <", "<")
        .replace(" >", ">")
        .replace(" :: ", "::")
        .replace(" ,", ",")
        .replace("& ", "&")
}
