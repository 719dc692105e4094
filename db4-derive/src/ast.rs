//! The derive's IR: the container and its fields with their parsed attributes.

use crate::ctxt::Ctxt;
use crate::symbol::*;
use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Attribute, DeriveInput, Ident, LitStr, Type};

/// The struct `#[derive(Document)]` is applied to.
pub struct Container<'a> {
    pub ident: &'a Ident,
    pub vis: &'a syn::Visibility,
    pub input: &'a DeriveInput,
    /// The collection name and the literal it came from (`None`: derived from the struct name).
    pub collection: (String, Option<LitStr>),
    /// The path generated code uses to reach db4 (`::db4` unless `#[db4(crate = "...")]`).
    pub krate: syn::Path,
    pub tokenizer: Option<(String, LitStr)>,
    /// `#[db4(changes = "full")]`: the change log records before-images of this collection.
    pub full_changes: Option<bool>,
    /// `None` when the input is not a struct with named fields (already reported).
    pub fields: Option<Vec<Field<'a>>>,
    /// `#[db4(index(name = "...", fields(a, b desc)))]`, in declaration order.
    pub indexes: Vec<CompositeIndex>,
}

/// A composite index declared on the struct.
pub struct CompositeIndex {
    /// `name = "..."`; `None` if missing (already reported).
    pub name: Option<LitStr>,
    /// The keys, in order: the field as written and whether it is descending.
    pub keys: Vec<IndexKey>,
}

/// One key of a composite index: `created_at` or `created_at desc`.
pub struct IndexKey {
    pub ident: Ident,
    pub descending: bool,
}

impl IndexKey {
    /// The field name without a raw-identifier prefix.
    pub fn name(&self) -> String {
        self.ident.to_string().trim_start_matches("r#").to_owned()
    }
}

impl syn::parse::Parse for IndexKey {
    fn parse(input: syn::parse::ParseStream<'_>) -> syn::Result<Self> {
        let ident: Ident = syn::ext::IdentExt::parse_any(input)?;
        let mut descending = false;
        if input.peek(Ident) {
            let dir: Ident = input.parse()?;
            if dir == DESC {
                descending = true;
            } else if dir != ASC {
                return Err(syn::Error::new(
                    dir.span(),
                    format!("expected `asc` or `desc` after `{ident}`, or a comma; found `{dir}`"),
                ));
            }
        }
        Ok(IndexKey { ident, descending })
    }
}

/// One named field.
pub struct Field<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
    /// The field name without a raw-identifier prefix.
    pub name: String,
    /// The key under which serde writes the field.
    pub key: String,
    pub key_span: Span,
    /// `#[serde(skip)]`, `skip_serializing` or `flatten`: not a top-level key of the document.
    pub not_stored: Option<Span>,
    // Each marker keeps its attribute, so errors about it cover the whole `#[...]`.
    pub id: Option<&'a Attribute>,
    pub partition_key: Option<&'a Attribute>,
    pub version: Option<&'a Attribute>,
    pub index: Option<(IndexKind, &'a Attribute)>,
    pub fts: Option<(f64, &'a Attribute)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IndexKind {
    Equality,
    Range,
}

impl<'a> Container<'a> {
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let mut collection = None;
        let mut krate = None;
        let mut tokenizer = None;
        let mut full_changes = None;
        let mut rename_all = None;
        let mut indexes = Vec::new();
        for attr in &input.attrs {
            if attr.path().is_ident(DB4) {
                let options = ContainerOptions {
                    collection: &mut collection,
                    krate: &mut krate,
                    tokenizer: &mut tokenizer,
                    full_changes: &mut full_changes,
                    indexes: &mut indexes,
                };
                parse_container_attr(cx, attr, options);
            } else if attr.path().is_ident(SERDE) {
                parse_serde_container(attr, &mut rename_all);
            } else if let Some(name) = field_attr_name(attr) {
                cx.error_spanned_by(attr, format!("`#[{name}]` goes on a field, not on the struct"));
            }
        }

        let fields = match &input.data {
            syn::Data::Struct(s) => match &s.fields {
                syn::Fields::Named(named) => {
                    Some(named.named.iter().map(|f| Field::from_ast(cx, f, rename_all.as_deref())).collect())
                }
                syn::Fields::Unnamed(f) => {
                    cx.error_spanned_by(f, "`#[derive(Document)]` needs named fields; tuple structs are not supported");
                    None
                }
                syn::Fields::Unit => {
                    cx.error_spanned_by(
                        input,
                        "`#[derive(Document)]` needs a struct with named fields, one of them `#[id]`",
                    );
                    None
                }
            },
            syn::Data::Enum(e) => {
                cx.error_spanned_by(
                    e.enum_token,
                    "`#[derive(Document)]` supports structs with named fields; enums are not supported",
                );
                None
            }
            syn::Data::Union(u) => {
                cx.error_spanned_by(
                    u.union_token,
                    "`#[derive(Document)]` supports structs with named fields; unions are not supported",
                );
                None
            }
        };

        let collection = match collection {
            Some(lit) => ((&lit as &LitStr).value(), Some(lit)),
            None => (snake_case(&input.ident.to_string()), None),
        };
        Container {
            ident: &input.ident,
            vis: &input.vis,
            input,
            collection,
            krate: krate.unwrap_or_else(|| syn::parse_quote!(::db4)),
            tokenizer,
            full_changes,
            fields,
            indexes,
        }
    }
}

/// The name of a db4 field attribute, if `attr` is one.
fn field_attr_name(attr: &Attribute) -> Option<&'static str> {
    [ID, PARTITION_KEY, FTS, INDEX, RANGE_INDEX, VERSION].into_iter().find(|n| attr.path().is_ident(n))
}

/// Where the options of `#[db4(...)]` on the struct go.
struct ContainerOptions<'o> {
    collection: &'o mut Option<LitStr>,
    krate: &'o mut Option<syn::Path>,
    tokenizer: &'o mut Option<(String, LitStr)>,
    full_changes: &'o mut Option<bool>,
    indexes: &'o mut Vec<CompositeIndex>,
}

fn parse_container_attr(cx: &Ctxt, attr: &Attribute, options: ContainerOptions<'_>) {
    let ContainerOptions { collection, krate, tokenizer, full_changes, indexes } = options;
    let result = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident(COLLECTION) {
            let lit: LitStr = string_value(&meta, COLLECTION)?;
            if collection.is_some() {
                cx.error_spanned_by(&meta.path, "duplicate `collection` option");
            }
            *collection = Some(lit);
        } else if meta.path.is_ident(CRATE) {
            let lit: LitStr = string_value(&meta, CRATE)?;
            match lit.parse::<syn::Path>() {
                Ok(path) => {
                    if krate.is_some() {
                        cx.error_spanned_by(&meta.path, "duplicate `crate` option");
                    }
                    *krate = Some(path);
                }
                Err(_) => cx.error_spanned_by(&lit, format!("`crate` must be a path, like \"db4\"; found {:?}", lit.value())),
            }
        } else if meta.path.is_ident(TOKENIZER) {
            let lit: LitStr = string_value(&meta, TOKENIZER)?;
            let name = lit.value();
            if !TOKENIZERS.contains(&name.as_str()) {
                cx.error_spanned_by(
                    &lit,
                    format!("unknown tokenizer {name:?}; expected one of \"porter\", \"unicode61\", \"trigram\""),
                );
            } else if tokenizer.is_some() {
                cx.error_spanned_by(&meta.path, "duplicate `tokenizer` option");
            }
            *tokenizer = Some((name, lit));
        } else if meta.path.is_ident(CHANGES) {
            let lit: LitStr = string_value(&meta, CHANGES)?;
            let mode = lit.value();
            if !CHANGE_MODES.contains(&mode.as_str()) {
                cx.error_spanned_by(
                    &lit,
                    format!(
                        "unknown change mode {mode:?}; expected \"full\" (before- and after-images) or \"after\" \
                         (after-images only, the default)"
                    ),
                );
            } else if full_changes.is_some() {
                cx.error_spanned_by(&meta.path, "duplicate `changes` option");
            }
            *full_changes = Some(mode == "full");
        } else if meta.path.is_ident(INDEX) {
            indexes.push(parse_index(cx, &meta)?);
        } else {
            let name = meta.path.to_token_stream_string();
            return Err(meta.error(format!(
                "unknown db4 option `{name}`; expected `collection = \"...\"`, `crate = \"...\"`, `tokenizer = \"...\"`, \
                 `changes = \"...\"` or `index(name = \"...\", fields(...))`"
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        cx.syn_error(e);
    }
}

/// Parses `index(name = "...", fields(a, b desc))`.
fn parse_index(cx: &Ctxt, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<CompositeIndex> {
    const FORM: &str = "write `index(name = \"by_tenant_created\", fields(tenant_id, created_at desc))`";
    let span = meta.path.span();
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format!("expected a list after `index`: {FORM}")));
    }
    let mut index = CompositeIndex { name: None, keys: Vec::new() };
    let mut saw_fields = false;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident(NAME) {
            let lit = string_value(&inner, NAME)?;
            if index.name.is_some() {
                cx.error_spanned_by(&inner.path, "duplicate `name` option in `index(...)`");
            }
            index.name = Some(lit);
        } else if inner.path.is_ident(FIELDS) {
            if !inner.input.peek(syn::token::Paren) {
                return Err(inner.error(format!("expected `fields(a, b desc)`: {FORM}")));
            }
            let content;
            syn::parenthesized!(content in inner.input);
            let keys = content.parse_terminated(<IndexKey as syn::parse::Parse>::parse, syn::Token![,])?;
            if saw_fields {
                cx.error_spanned_by(&inner.path, "duplicate `fields` option in `index(...)`");
            }
            saw_fields = true;
            if keys.is_empty() {
                cx.error_spanned_by(&inner.path, "an index needs at least one field: `fields(a, b desc)`");
            }
            index.keys.extend(keys);
        } else {
            let name = inner.path.to_token_stream_string();
            return Err(
                inner.error(format!("unknown `index` option `{name}`; expected `name = \"...\"` or `fields(...)`"))
            );
        }
        Ok(())
    })?;
    if index.name.is_none() {
        cx.syn_error(syn::Error::new(span, format!("this index has no name: {FORM}")));
    }
    if !saw_fields {
        cx.syn_error(syn::Error::new(span, format!("this index has no fields: {FORM}")));
    }
    Ok(index)
}

/// Reads `name = "..."`, with an error that shows that form.
fn string_value(meta: &syn::meta::ParseNestedMeta<'_>, name: &str) -> syn::Result<LitStr> {
    let expected = || format!("expected `{name} = \"...\"`");
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error(expected()));
    }
    let value = meta.value()?;
    value.parse::<LitStr>().map_err(|e| syn::Error::new(e.span(), expected()))
}

impl<'a> Field<'a> {
    fn from_ast(cx: &Ctxt, field: &'a syn::Field, rename_all: Option<&str>) -> Self {
        let ident = field.ident.as_ref().expect("named fields have identifiers");
        let name = ident.to_string().trim_start_matches("r#").to_owned();
        let mut out = Field {
            ident,
            ty: &field.ty,
            key: rename_all.map_or_else(|| name.clone(), |rule| apply_rename_rule(rule, &name)),
            name,
            key_span: ident.span(),
            not_stored: None,
            id: None,
            partition_key: None,
            version: None,
            index: None,
            fts: None,
        };
        for attr in &field.attrs {
            let path = attr.path();
            if path.is_ident(SERDE) {
                parse_serde_field(attr, &mut out);
                continue;
            }
            if path.is_ident(DB4) {
                cx.error_spanned_by(
                    attr,
                    "`#[db4(...)]` goes on the struct; on fields use `#[id]`, `#[partition_key]`, `#[index]`, `#[range_index]`, `#[fts]` or `#[version]`",
                );
                continue;
            }
            let Some(kind) = field_attr_name(attr) else { continue };
            // A marker with stray arguments is reported and still counts, so one mistake
            // gives one error (not also "no `#[id]` field").
            let slot_taken = match kind {
                ID => no_args(cx, attr, kind) | set(&mut out.id, attr),
                PARTITION_KEY => no_args(cx, attr, kind) | set(&mut out.partition_key, attr),
                VERSION => no_args(cx, attr, kind) | set(&mut out.version, attr),
                INDEX | RANGE_INDEX => {
                    let new = if kind == INDEX { IndexKind::Equality } else { IndexKind::Range };
                    no_args(cx, attr, kind);
                    match out.index {
                        None => {
                            out.index = Some((new, attr));
                            false
                        }
                        Some((old, _)) if old == new => true,
                        Some(_) => {
                            cx.error_spanned_by(
                                attr,
                                format!(
                                    "field `{}` has both `#[index]` and `#[range_index]`; keep one (`#[range_index]` also serves equality lookups)",
                                    out.name
                                ),
                            );
                            false
                        }
                    }
                }
                _ => match parse_fts(cx, attr) {
                    Some(weight) if out.fts.is_none() => {
                        out.fts = Some((weight, attr));
                        false
                    }
                    Some(_) => true,
                    None => false,
                },
            };
            if slot_taken {
                cx.error_spanned_by(attr, format!("duplicate `#[{kind}]` on field `{}`", out.name));
            }
        }
        out
    }

    /// Whether any db4 attribute marks this field.
    pub fn has_db4_attr(&self) -> bool {
        self.id.is_some()
            || self.partition_key.is_some()
            || self.version.is_some()
            || self.index.is_some()
            || self.fts.is_some()
    }
}

/// Records a marker attribute; returns `true` if it was already set.
fn set<'a>(slot: &mut Option<&'a Attribute>, attr: &'a Attribute) -> bool {
    if slot.is_some() {
        return true;
    }
    *slot = Some(attr);
    false
}

/// Reports arguments on a marker attribute such as `#[id]`. Always returns `false`, so it
/// can be or-ed with the duplicate check.
fn no_args(cx: &Ctxt, attr: &Attribute, name: &str) -> bool {
    match &attr.meta {
        syn::Meta::Path(_) => {}
        syn::Meta::List(list) if list.tokens.is_empty() => {
            let message = format!("`#[{name}]` takes no arguments: write `#[{name}]`");
            cx.syn_error(syn::Error::new(list.delimiter.span().join(), message));
        }
        syn::Meta::List(list) => {
            cx.error_spanned_by(&list.tokens, format!("`#[{name}]` takes no arguments: write `#[{name}]`"));
        }
        syn::Meta::NameValue(nv) => {
            cx.error_spanned_by(&nv.value, format!("`#[{name}]` takes no value: write `#[{name}]`"));
        }
    }
    false
}

/// Parses `#[fts]` or `#[fts(weight = 2.0)]` into the weight; `None` after reporting an error.
fn parse_fts(cx: &Ctxt, attr: &Attribute) -> Option<f64> {
    let list = match &attr.meta {
        syn::Meta::Path(_) => return Some(1.0),
        syn::Meta::List(list) => list,
        syn::Meta::NameValue(nv) => {
            cx.error_spanned_by(&nv.value, "write `#[fts(weight = 2.0)]` to set a weight");
            return None;
        }
    };
    let mut weight = None;
    let mut ok = true;
    let result = list.parse_nested_meta(|meta| {
        if !meta.path.is_ident(WEIGHT) {
            let name = meta.path.to_token_stream_string();
            return Err(meta.error(format!("unknown `#[fts]` option `{name}`; expected `weight = <number>`")));
        }
        let value: syn::Expr = meta.value()?.parse()?;
        match parse_weight(&value) {
            Ok(w) => {
                if weight.replace(w).is_some() {
                    cx.error_spanned_by(&meta.path, "duplicate `weight` option");
                    ok = false;
                }
            }
            Err(message) => {
                cx.error_spanned_by(&value, message);
                ok = false;
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        cx.syn_error(e);
        return None;
    }
    if !ok {
        return None;
    }
    match weight {
        Some(w) => Some(w),
        None => {
            let message = "expected `weight = <number>`, as in `#[fts(weight = 2.0)]`; write `#[fts]` for weight 1.0";
            if list.tokens.is_empty() {
                cx.error_spanned_by(attr, message);
            } else {
                cx.error_spanned_by(&list.tokens, message);
            }
            None
        }
    }
}

fn parse_weight(value: &syn::Expr) -> Result<f64, String> {
    let (negative, lit) = match value {
        syn::Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), expr, .. }) => (true, &**expr),
        other => (false, other),
    };
    let number = match lit {
        syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Float(f), .. }) => f.base10_parse::<f64>().ok(),
        syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) => i.base10_parse::<f64>().ok(),
        _ => None,
    };
    match number {
        None => Err("the fts weight must be a number literal, as in `weight = 2.0`".to_owned()),
        Some(w) if negative || !(w.is_finite() && w > 0.0) => {
            let written = quote::ToTokens::to_token_stream(value).to_string().replace(' ', "");
            Err(format!("the fts weight must be a positive number, as in `weight = 2.0`; found `{written}`"))
        }
        Some(w) => Ok(w),
    }
}

fn parse_serde_container(attr: &Attribute, rename_all: &mut Option<String>) {
    let _ = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident(RENAME_ALL) {
            *rename_all = serialize_name(&meta)?.or(rename_all.take());
            Ok(())
        } else {
            skip_meta_value(&meta)
        }
    });
}

fn parse_serde_field(attr: &Attribute, field: &mut Field<'_>) {
    let _ = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident(RENAME) {
            if let Some(name) = serialize_name(&meta)? {
                field.key = name;
                field.key_span = meta.path.span();
            }
            Ok(())
        } else if meta.path.is_ident(SKIP) || meta.path.is_ident(SKIP_SERIALIZING) || meta.path.is_ident(FLATTEN) {
            field.not_stored = Some(meta.path.span());
            skip_meta_value(&meta)
        } else {
            skip_meta_value(&meta)
        }
    });
}

/// Reads `rename = "x"` or `rename(serialize = "x", ...)`: the name serde writes.
fn serialize_name(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Option<String>> {
    if meta.input.peek(syn::Token![=]) {
        let lit: LitStr = meta.value()?.parse()?;
        return Ok(Some(lit.value()));
    }
    let mut name = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident(SERIALIZE) {
            let lit: LitStr = inner.value()?.parse()?;
            name = Some(lit.value());
            Ok(())
        } else {
            skip_meta_value(&inner)
        }
    })?;
    Ok(name)
}

/// Consumes whatever follows a serde option db4 does not care about.
fn skip_meta_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

trait PathString {
    fn to_token_stream_string(&self) -> String;
}

impl PathString for syn::Path {
    fn to_token_stream_string(&self) -> String {
        quote::ToTokens::to_token_stream(self).to_string().replace(' ', "")
    }
}

/// `UserProfile` -> `user_profile`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.char_indices() {
        if c.is_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Applies a serde `rename_all` rule to a field name the way serde does for fields: the
/// rules assume snake_case input and change ASCII letters only ("lowercase" leaves a field
/// name as it is).
fn apply_rename_rule(rule: &str, field: &str) -> String {
    let pascal = || {
        let mut out = String::with_capacity(field.len());
        let mut capitalize = true;
        for c in field.chars() {
            if c == '_' {
                capitalize = true;
            } else if capitalize {
                out.push(c.to_ascii_uppercase());
                capitalize = false;
            } else {
                out.push(c);
            }
        }
        out
    };
    match rule {
        "UPPERCASE" | "SCREAMING_SNAKE_CASE" => field.to_ascii_uppercase(),
        "PascalCase" => pascal(),
        "camelCase" => {
            let p = pascal();
            let mut c = p.chars();
            c.next().map_or_else(String::new, |f| f.to_ascii_lowercase().to_string() + c.as_str())
        }
        "kebab-case" => field.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => field.to_ascii_uppercase().replace('_', "-"),
        _ => field.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(snake_case("Article"), "article");
        assert_eq!(snake_case("UserProfile"), "user_profile");
        assert_eq!(apply_rename_rule("camelCase", "tenant_id"), "tenantId");
        assert_eq!(apply_rename_rule("PascalCase", "tenant_id"), "TenantId");
        assert_eq!(apply_rename_rule("kebab-case", "tenant_id"), "tenant-id");
        assert_eq!(apply_rename_rule("SCREAMING-KEBAB-CASE", "tenant_id"), "TENANT-ID");
    }
}
