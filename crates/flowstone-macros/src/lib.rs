//! The `#[asset]` attribute macro of FlowStone; use it through the `flowstone`
//! facade as `flowstone::asset`.
//!
//! # What it expands to
//!
//! For
//!
//! ```text
//! /// Flights of one day.
//! #[asset(partitions = flights_daily())]
//! async fn cleaned_flights(
//!     ctx: &AssetContext,
//!     raw_flights: Vec<RawFlight>,
//!     #[mapping(PartitionMapping::TimeWindow { offset: -1 })] weather: Option<Weather>,
//! ) -> Result<Vec<Flight>> { ... }
//! ```
//!
//! the macro writes, all paths going through `::flowstone::__private`:
//!
//! 1. the function itself, less the `#[mapping]` and `#[from]` parameter
//!    attributes, so tests can call it directly;
//! 2. `struct cleaned_flights {}`, with the function's visibility. A braced
//!    struct lives only in the type namespace, so it and the function share
//!    the name without clashing; it is what `Definitions::builder().asset::<_>()`
//!    takes and what a downstream parameter named `cleaned_flights` refers to;
//! 3. `impl Asset for cleaned_flights`, with `type Output = T` (spanned at
//!    `T`, so a value type that is not serializable is blamed there) and a
//!    `definition()` that builds an `AssetBuilder`: key, origin, description
//!    (the doc comment unless `description` is given), the arguments'
//!    settings, and the code version;
//! 4. inside `definition()`, one `assert_upstream::<Upstream, ParamType>()`
//!    per input, carrying the parameter's span. It is the only place the
//!    upstream is named and the only place `ParamType: FromUpstream<_>` is
//!    required, so a missing upstream ("cannot find type") or a parameter type
//!    that cannot receive the upstream's output is one error, at the
//!    parameter. It returns the upstream's key, output type and a function
//!    taking the value out of `Inputs`, which the `dep_as` call and the
//!    compute function use;
//! 5. a compute function that takes each input, awaits the function and
//!    converts its error with `into_asset_result` (spanned at `E`, so an
//!    error type that does not convert is blamed there).
//!
//! # Guarantees
//!
//! - An input names its upstream by the parameter's name or `#[from(path)]`,
//!   and the dependency's key is that upstream's `Asset::KEY`, so renaming an
//!   asset's key cannot leave a downstream pointing at the old one.
//! - The default code version is a hash of the function's signature and body
//!   tokens (not its doc comment, not whitespace or `//` comments): editing
//!   the code changes it, rebuilding does not. The token text is printed by
//!   the compiler, so a toolchain that prints tokens differently changes
//!   every default code version once.
//! - Misuse (a plain `fn`, generics, `self`, a return type other than
//!   `Result<T>`, an unknown or repeated argument, a pattern as a parameter)
//!   is a compile error at the offending tokens, and all such errors of one
//!   function are reported together.

mod args;
mod expand;
mod signature;

use proc_macro::TokenStream;
use quote::ToTokens;
use syn::ItemFn;

use crate::args::AssetArgs;

/// Declares an asset computed by an `async fn`.
///
/// The function may take `&AssetContext` first, then one parameter per
/// upstream asset, named after it (or named freely with `#[from(path)]`), and
/// returns `Result<T>` or `Result<T, E>` with `E` convertible into
/// `AssetError`. A parameter of type `T` receives one upstream partition,
/// `Option<T>` at most one and `Partitioned<T>` any number.
///
/// Arguments, all optional:
///
/// | argument | value | default |
/// | --- | --- | --- |
/// | `key` | string | the function's name |
/// | `key_prefix` | string, `"a/b"` | none; the key becomes `prefix/key` |
/// | `group` | string | none |
/// | `description` | string | the doc comment |
/// | `partitions` | `PartitionsDef` or `Result<PartitionsDef, PartitionsError>` | unpartitioned |
/// | `io_manager` | string | `"default"` |
/// | `queue` | string | `"default"`; see `DefinitionsBuilder::queue_limit` |
/// | `retry` | `RetryPolicy` | `RetryPolicy::none()` |
/// | `code_version` | string | a hash of the function's code |
/// | `tags(name = "value", "odd-name" = "value")` | string pairs | none |
/// | `owners("a@example.com", ...)` | strings | none |
///
/// Parameter attributes: `#[mapping(<PartitionMapping>)]` and
/// `#[from(path::to::upstream)]`.
#[proc_macro_attribute]
pub fn asset(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_fn: ItemFn = match syn::parse(item.clone()) {
        Ok(item_fn) => item_fn,
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[asset] applies to an `async fn` returning `Result<T>`",
            );
            let mut out = err.to_compile_error();
            out.extend(proc_macro2::TokenStream::from(item));
            return out.into();
        }
    };

    // The code version is taken before anything is changed in the function.
    let code_version = code_version(&item_fn);

    // Arguments and signature are both checked, so every error shows at once.
    let mut args = AssetArgs::default();
    let parser = syn::meta::parser(|meta| args.parse_one(meta));
    let args_result = syn::parse::Parser::parse(parser, attr);
    let mut item_fn = item_fn;
    let read = signature::read(&mut item_fn);

    // On errors the function is still emitted (less the parameter attributes),
    // so that its callers do not fail too.
    match (args_result, read) {
        (Ok(()), Ok(asset)) => expand::expand(args, &item_fn, asset, code_version).into(),
        (Ok(()), Err(err)) | (Err(err), Ok(_)) => with_error(item_fn, err),
        (Err(mut err), Err(more)) => {
            err.combine(more);
            with_error(item_fn, err)
        }
    }
}

fn with_error(item: ItemFn, err: syn::Error) -> TokenStream {
    let mut out = item.into_token_stream();
    out.extend(err.to_compile_error());
    out.into()
}

/// The default code version: FNV-1a (64 bits, hex) of the function's
/// signature and body as token text.
fn code_version(item: &ItemFn) -> String {
    let sig = &item.sig;
    let block = &item.block;
    fnv1a_64(quote::quote!(#sig #block).to_string().as_bytes())
}

fn fnv1a_64(bytes: &[u8]) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a_64(b""), "cbf29ce484222325");
        assert_eq!(fnv1a_64(b"a"), "af63dc4c8601ec8c");
        assert_eq!(fnv1a_64(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn code_version_follows_the_code_not_the_docs() {
        let plain: ItemFn = syn::parse_quote! {
            async fn a() -> Result<u32> { Ok(1) }
        };
        let documented: ItemFn = syn::parse_quote! {
            /// Now with a doc comment.
            async fn a() -> Result<u32> { Ok(1) }
        };
        let edited: ItemFn = syn::parse_quote! {
            async fn a() -> Result<u32> { Ok(2) }
        };
        assert_eq!(code_version(&plain), code_version(&documented));
        assert_ne!(code_version(&plain), code_version(&edited));
    }
}
