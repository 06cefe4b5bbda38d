//! Writing the expansion of a checked `#[asset]` function; see the crate docs
//! for its shape.
//!
//! Every path goes through `::flowstone::__private`, so users depend on the
//! facade alone. Tokens that can fail to type-check carry the span of what the
//! user wrote (the parameter, the return type, the argument's expression), so
//! the compiler's errors point there rather than at the attribute.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Ident, ItemFn, Lit, LitStr, Meta};

use crate::args::AssetArgs;
use crate::signature::{AssetFn, Input};

/// The whole expansion: the function, its type, the upstream checks and the
/// `Asset` impl.
pub(crate) fn expand(
    args: AssetArgs,
    item: &ItemFn,
    asset: AssetFn,
    code_version: String,
) -> TokenStream {
    let AssetFn { inputs, output, .. } = &asset;
    let name = &item.sig.ident;
    let vis = &item.vis;
    let key = full_key(&args, name);
    let docs: Vec<&Attribute> = item
        .attrs
        .iter()
        .filter(|attr| doc_text(attr).is_some())
        .collect();
    let struct_doc = format!(
        "The asset `{key}`, computed by the `async fn {name}` of the same name; add it \
         with `Definitions::builder().asset::<{name}>()`."
    );

    // Each input's upstream is named once, in a check at its parameter, so
    // that is where errors point; the rest of the expansion uses the result.
    let upstreams: Vec<Ident> = (0..inputs.len())
        .map(|i| format_ident!("upstream_{}", i, span = Span::mixed_site()))
        .collect();
    let checks = inputs.iter().zip(&upstreams).map(|(input, local)| {
        let Input { ty, upstream, .. } = input;
        quote_spanned! {ty.span()=>
            let #local = ::flowstone::__private::assert_upstream::<#upstream, #ty>();
        }
    });

    // The output type's own errors (not serializable, private in a public
    // asset) point at the return type.
    let output_item = quote_spanned!(output.span()=> type Output = #output;);

    let builder = Ident::new("builder", Span::mixed_site());
    let settings = builder_calls(&args, item.attrs.as_slice(), &code_version);
    let deps = inputs
        .iter()
        .zip(&upstreams)
        .map(|(input, local)| dep_call(input, local));
    let compute = compute_call(&builder, name, &asset, &upstreams);

    quote! {
        #item

        #(#docs)*
        #[doc = ""]
        #[doc = #struct_doc]
        // Braced, so the type lives only in the type namespace, beside the
        // function of the same name in the value namespace; it is a marker
        // and is never constructed.
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #name {}

        impl ::flowstone::__private::Asset for #name {
            #output_item

            const KEY: &'static str = #key;

            fn definition() -> ::flowstone::__private::AssetBuilder {
                #(#checks)*
                let #builder = ::flowstone::__private::AssetBuilder::new(
                    <Self as ::flowstone::__private::Asset>::KEY,
                )
                .origin(::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)))
                #settings
                #(#deps)*;
                #compute
            }
        }
    }
}

/// The asset key: `key` (or the function's name) behind `key_prefix/`.
fn full_key(args: &AssetArgs, name: &Ident) -> String {
    let key = match &args.key {
        Some(key) => key.value(),
        None => syn::ext::IdentExt::unraw(name).to_string(),
    };
    let prefix = args
        .key_prefix
        .as_ref()
        .map(LitStr::value)
        .unwrap_or_default();
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}/{key}")
    }
}

/// The builder calls for the attribute's arguments, in the order of
/// `AssetBuilder`'s methods.
fn builder_calls(args: &AssetArgs, attrs: &[Attribute], code_version: &str) -> TokenStream {
    let mut calls = TokenStream::new();

    let description = match &args.description {
        Some(text) => Some(text.value()),
        None => description_from_docs(attrs),
    };
    if let Some(text) = description {
        calls.extend(quote!(.description(#text)));
    }
    if let Some(group) = &args.group {
        calls.extend(quote!(.group(#group)));
    }
    if let Some(partitions) = &args.partitions {
        calls.extend(quote_spanned! {partitions.span()=>
            .partitions(::flowstone::__private::IntoPartitions::into_partitions(#partitions))
        });
    }
    if let Some(io_manager) = &args.io_manager {
        calls.extend(quote!(.io_manager(#io_manager)));
    }
    if let Some(queue) = &args.queue {
        // Checked when the code compiles, not when the definitions are built.
        calls.extend(quote_spanned! {queue.span()=>
            .queue({
                const _: () = ::core::assert!(
                    ::flowstone::__private::is_plain_name(#queue),
                    "bad queue name: use 1 to 64 letters, digits, '_', '-' or '.'"
                );
                #queue
            })
        });
    }
    if let Some(retry) = &args.retry {
        calls.extend(quote_spanned!(retry.span()=> .retry(#retry)));
    }
    let code_version = match &args.code_version {
        Some(version) => version.value(),
        None => code_version.to_owned(),
    };
    calls.extend(quote!(.code_version(#code_version)));
    for (key, value) in args.tags.iter().flatten() {
        calls.extend(quote!(.tag(#key, #value)));
    }
    for owner in args.owners.iter().flatten() {
        calls.extend(quote!(.owner(#owner)));
    }
    calls
}

/// `.dep_as(...)` for one input: the upstream's key, the parameter's name, the
/// mapping and the type the parameter expects; `upstream` holds the checked
/// upstream.
fn dep_call(input: &Input, upstream: &Ident) -> TokenStream {
    let dep_name = input.dep_name();
    let mapping = match &input.mapping {
        Some(mapping) => quote_spanned! {mapping.span()=>
            ::core::option::Option::Some::<::flowstone::__private::PartitionMapping>(#mapping)
        },
        None => quote!(::core::option::Option::None),
    };
    quote! {
        .dep_as(
            #upstream.key,
            #dep_name,
            #mapping,
            ::core::option::Option::Some((#upstream.output)()),
        )
    }
}

/// `compute(builder, ...)`: takes each input out of `Inputs` as its
/// parameter's type, calls the function and turns its error into an
/// `AssetError`.
fn compute_call(
    builder: &Ident,
    name: &Ident,
    asset: &AssetFn,
    upstreams: &[Ident],
) -> TokenStream {
    let AssetFn {
        takes_context,
        inputs,
        returns,
        error,
        ..
    } = asset;

    // Mixed-site names cannot collide with the user's parameter names.
    let ctx = Ident::new("ctx", Span::mixed_site());
    let values = Ident::new("inputs", Span::mixed_site());
    let locals: Vec<Ident> = (0..inputs.len())
        .map(|i| format_ident!("input_{}", i, span = Span::mixed_site()))
        .collect();

    let takes = inputs
        .iter()
        .zip(upstreams)
        .zip(&locals)
        .map(|((input, upstream), local)| {
            let dep_name = input.dep_name();
            quote!(let #local = (#upstream.take)(&mut #values, #dep_name)?;)
        });
    let ctx_arg = takes_context.then(|| quote!(&#ctx,));
    let ctx_param = if *takes_context {
        quote!(#ctx)
    } else {
        quote!(_)
    };
    let values_param = if inputs.is_empty() {
        quote!(_)
    } else {
        quote!(mut #values)
    };

    // An error type that does not convert is blamed on `E`, or on the return
    // type when `E` is hidden in an alias.
    let result = Ident::new("result", Span::mixed_site());
    let convert = match error {
        Some(error) => quote_spanned! {error.span()=>
            ::flowstone::__private::into_asset_result::<_, #error>
        },
        None => quote_spanned!(returns.span()=> ::flowstone::__private::into_asset_result),
    };

    // Errors of the future itself (not `Send`) point at the function's name.
    let compute = quote_spanned!(name.span()=> ::flowstone::__private::compute::<Self, _, _>);
    let closure = quote_spanned! {name.span()=>
        move |#ctx_param: ::flowstone::__private::AssetContext,
              #values_param: ::flowstone::__private::Inputs| async move {
            #(#takes)*
            let #result = #name(#ctx_arg #(#locals),*).await;
            #convert(#result)
        }
    };
    quote_spanned!(name.span()=> #compute(#builder, #closure))
}

/// The description from the doc comment: its lines, less the space after
/// `///`, joined.
fn description_from_docs(attrs: &[Attribute]) -> Option<String> {
    let lines: Vec<String> = attrs.iter().filter_map(doc_text).collect();
    let text = lines
        .iter()
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The text of a `#[doc = "..."]` attribute (a `///` line).
fn doc_text(attr: &Attribute) -> Option<String> {
    let Meta::NameValue(meta) = &attr.meta else {
        return None;
    };
    if !meta.path.is_ident("doc") {
        return None;
    }
    match &meta.value {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(text),
            ..
        }) => Some(text.value()),
        _ => None,
    }
}
