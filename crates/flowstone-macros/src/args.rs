//! The arguments of `#[asset(...)]`: `key = "..."`, `partitions = <expr>`,
//! `tags(team = "data")`, `owners("a@x.com")` and the rest.
//!
//! Parsing checks the shape of each argument and that none is given twice;
//! what an expression evaluates to is left to the compiler, which reports it
//! at the expression.

use syn::meta::ParseNestedMeta;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Token};

/// Every key `#[asset(...)]` accepts, in the order the docs list them.
const KEYS: &[&str] = &[
    "key",
    "key_prefix",
    "group",
    "description",
    "partitions",
    "io_manager",
    "queue",
    "retry",
    "code_version",
    "tags",
    "owners",
];

/// The parsed arguments; every field is `None` (or empty) when not given.
#[derive(Default)]
pub(crate) struct AssetArgs {
    pub(crate) key: Option<LitStr>,
    pub(crate) key_prefix: Option<LitStr>,
    pub(crate) group: Option<LitStr>,
    pub(crate) description: Option<LitStr>,
    pub(crate) partitions: Option<Expr>,
    pub(crate) io_manager: Option<LitStr>,
    pub(crate) queue: Option<LitStr>,
    pub(crate) retry: Option<Expr>,
    pub(crate) code_version: Option<LitStr>,
    /// `Some` once `tags(...)` was seen, so a second `tags(...)` is caught.
    pub(crate) tags: Option<Vec<(LitStr, LitStr)>>,
    /// `Some` once `owners(...)` was seen.
    pub(crate) owners: Option<Vec<LitStr>>,
}

impl AssetArgs {
    /// Reads one `name = value` or `name(...)` argument; the entry point for
    /// `syn::meta::parser`.
    pub(crate) fn parse_one(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(name) = meta.path.get_ident().map(Ident::to_string) else {
            return Err(meta.error(unknown_key_message("this path")));
        };
        match name.as_str() {
            "key" => set(&mut self.key, &meta, &name, string_value(&meta)?),
            "key_prefix" => set(&mut self.key_prefix, &meta, &name, string_value(&meta)?),
            "group" => set(&mut self.group, &meta, &name, string_value(&meta)?),
            "description" => set(&mut self.description, &meta, &name, string_value(&meta)?),
            "partitions" => set(&mut self.partitions, &meta, &name, meta.value()?.parse()?),
            "io_manager" => set(&mut self.io_manager, &meta, &name, string_value(&meta)?),
            "queue" => set(&mut self.queue, &meta, &name, string_value(&meta)?),
            "retry" => set(&mut self.retry, &meta, &name, meta.value()?.parse()?),
            "code_version" => set(&mut self.code_version, &meta, &name, string_value(&meta)?),
            "tags" => {
                let tags = parenthesized(&meta, "tags(team = \"data\")", |input| {
                    Punctuated::<Tag, Token![,]>::parse_terminated(input)
                })?;
                let tags = tags.into_iter().map(|tag| (tag.key, tag.value)).collect();
                set(&mut self.tags, &meta, &name, tags)
            }
            "owners" => {
                let owners = parenthesized(&meta, "owners(\"a@example.com\")", |input| {
                    Punctuated::<LitStr, Token![,]>::parse_terminated(input)
                })?;
                set(&mut self.owners, &meta, &name, owners.into_iter().collect())
            }
            other => Err(meta.error(unknown_key_message(&format!("`{other}`")))),
        }
    }
}

/// Stores `value` in `slot`, refusing a second value for the same key.
fn set<T>(
    slot: &mut Option<T>,
    meta: &ParseNestedMeta<'_>,
    name: &str,
    value: T,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format!("`{name}` is given twice; keep one of them")));
    }
    *slot = Some(value);
    Ok(())
}

/// The string literal after `name =`.
fn string_value(meta: &ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    let value = meta.value()?;
    let expr: Expr = value.parse()?;
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Ok(lit),
        other => Err(syn::Error::new_spanned(
            other,
            "expected a string literal, e.g. \"flights\"",
        )),
    }
}

/// The contents of `name(...)`, parsed by `parse`.
fn parenthesized<T>(
    meta: &ParseNestedMeta<'_>,
    example: &str,
    parse: impl FnOnce(ParseStream<'_>) -> syn::Result<T>,
) -> syn::Result<T> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format!("expected a list in parentheses, e.g. `{example}`")));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    parse(&content)
}

fn unknown_key_message(what: &str) -> String {
    format!(
        "unknown #[asset] argument {what}; expected one of: {}",
        KEYS.join(", ")
    )
}

/// One `name = "value"` pair in `tags(...)`; the name may also be a string,
/// for tag names that are not identifiers (`"cost-center" = "42"`).
struct Tag {
    key: LitStr,
    value: LitStr,
}

impl Parse for Tag {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key = if input.peek(LitStr) {
            input.parse()?
        } else {
            let ident: Ident = syn::ext::IdentExt::parse_any(input)?;
            let name = syn::ext::IdentExt::unraw(&ident).to_string();
            LitStr::new(&name, ident.span())
        };
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Tag { key, value })
    }
}
