//! Snapshots of the pretty-printed expansion.

fn expand(input: proc_macro2::TokenStream) -> String {
    let out = super::derive(input);
    match syn::parse2::<syn::File>(out.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => out.to_string(),
    }
}

#[test]
fn full_article() {
    insta::assert_snapshot!(expand(quote::quote! {
        #[db4(collection = "articles", tokenizer = "unicode61")]
        pub struct Article {
            #[id]
            pub id: String,
            #[partition_key]
            pub tenant_id: String,
            #[fts(weight = 2.0)]
            pub title: String,
            #[fts]
            pub body: String,
            #[index]
            pub status: Status,
            #[range_index]
            pub created_at: i64,
            #[version]
            pub version: u64,
            pub views: i64,
        }
    }));
}

#[test]
fn renamed_crate_and_serde_names() {
    insta::assert_snapshot!(expand(quote::quote! {
        #[db4(crate = "my_db4")]
        #[serde(rename_all = "camelCase")]
        struct UserProfile {
            #[id]
            user_id: u64,
            #[index]
            #[serde(rename = "mail")]
            email_address: String,
            display_name: Option<String>,
        }
    }));
}

#[test]
fn errors_come_with_a_fallback_impl() {
    insta::assert_snapshot!(expand(quote::quote! {
        struct Broken {
            #[fts(weight = -1.0)]
            title: String,
        }
    }));
}

#[test]
fn composite_indexes() {
    insta::assert_snapshot!(expand(quote::quote! {
        #[db4(collection = "articles", index(name = "by_tenant_created", fields(tenant_id, created_at desc)))]
        #[db4(index(name = "by_status", fields(status asc, r#type)))]
        pub struct Article {
            #[id]
            pub id: String,
            #[partition_key]
            pub tenant_id: String,
            pub status: Status,
            pub r#type: String,
            pub created_at: i64,
        }
    }));
}
