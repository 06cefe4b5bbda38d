//! Reading an `#[asset]` function's signature: the optional context parameter,
//! one input per upstream asset, and the `Result<T>` it returns.
//!
//! Every misuse found is reported, together, at the tokens it concerns; the
//! `#[mapping]` and `#[from]` parameter attributes are taken off the function
//! so that it compiles as a plain `async fn` afterwards.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{
    Attribute, Expr, FnArg, GenericArgument, Ident, ItemFn, Pat, Path, PathArguments, ReturnType,
    Type,
};

/// The signature of an `#[asset]` function, checked.
pub(crate) struct AssetFn {
    /// Whether the first parameter is the `&AssetContext`.
    pub(crate) takes_context: bool,
    /// The other parameters, in order.
    pub(crate) inputs: Vec<Input>,
    /// `T` in the returned `Result<T>` or `Result<T, E>`.
    pub(crate) output: Type,
    /// The whole return type, to blame an error type that does not convert.
    pub(crate) returns: Type,
    /// `E` in `Result<T, E>`, when written.
    pub(crate) error: Option<Type>,
}

/// A parameter that receives the values of an upstream asset.
pub(crate) struct Input {
    /// The parameter's name, which is also the dependency's name.
    pub(crate) name: Ident,
    pub(crate) ty: Type,
    /// The upstream asset's type: `#[from(path)]`, or the parameter's name.
    pub(crate) upstream: Path,
    /// `#[mapping(expr)]`, when given.
    pub(crate) mapping: Option<Expr>,
}

impl Input {
    /// The dependency name, without a raw identifier's `r#`.
    pub(crate) fn dep_name(&self) -> String {
        self.name.unraw().to_string()
    }
}

/// Checks `item` and splits its signature into context, inputs and output.
/// The `#[mapping]` and `#[from]` attributes are taken off its parameters,
/// whether or not it has errors.
pub(crate) fn read(item: &mut ItemFn) -> syn::Result<AssetFn> {
    let mut errors = Errors::default();
    let sig = &item.sig;

    // The shape of the function itself.
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "#[asset] needs an `async fn`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new(
            unsafety.span,
            "an #[asset] function cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "an #[asset] function cannot have an ABI",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "an #[asset] function cannot be generic; give each parameter a concrete type",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "an #[asset] function cannot be variadic",
        ));
    }

    // The return type, reported with the other errors if it is wrong.
    let output = read_output(&sig.output, sig.paren_token.span.close());

    // The parameters; their attributes come off whatever else is wrong.
    let mut takes_context = false;
    let mut inputs = Vec::new();
    for (position, arg) in item.sig.inputs.iter_mut().enumerate() {
        match read_param(arg, position) {
            Ok(None) => takes_context = true,
            Ok(Some(input)) => inputs.push(input),
            Err(err) => errors.push(err),
        }
    }

    match (output, errors.into_error()) {
        (Ok((output, error, returns)), None) => Ok(AssetFn {
            takes_context,
            inputs,
            output,
            returns,
            error,
        }),
        (Ok(_), Some(err)) => Err(err),
        (Err(mut err), others) => {
            err.extend(others);
            Err(err)
        }
    }
}

/// `T`, `E` (when written) and the whole return type of `Result<T, E>`;
/// `close` is the parameters' closing parenthesis, blamed when there is no
/// return type.
fn read_output(output: &ReturnType, close: Span) -> syn::Result<(Type, Option<Type>, Type)> {
    let message = "an #[asset] function returns `Result<T>`, where `T` is the asset's value, \
                   e.g. `flowstone::Result<Vec<Flight>>` or `anyhow::Result<Report>`";
    match output {
        ReturnType::Type(_, ty) => match result_types(ty) {
            Some((value, error)) => Ok((value, error, (**ty).clone())),
            None => Err(syn::Error::new_spanned(ty, message)),
        },
        ReturnType::Default => Err(syn::Error::new(close, message)),
    }
}

/// Reads one parameter, `None` for the context, and removes its `#[mapping]`
/// and `#[from]` attributes.
fn read_param(arg: &mut FnArg, position: usize) -> syn::Result<Option<Input>> {
    let arg = match arg {
        FnArg::Receiver(receiver) => {
            return Err(syn::Error::new_spanned(
                receiver,
                "an #[asset] function cannot take `self`; declare it as a free function",
            ));
        }
        FnArg::Typed(arg) => arg,
    };
    let attrs = take_param_attrs(&mut arg.attrs)?;

    // The context: `&AssetContext` in first place, under any name.
    if is_context(&arg.ty) {
        if let Some(attr) = &attrs.first {
            return Err(syn::Error::new_spanned(
                attr,
                "the context parameter takes no attribute",
            ));
        }
        return match &*arg.ty {
            Type::Reference(reference) if reference.mutability.is_some() => {
                Err(syn::Error::new_spanned(
                    &arg.ty,
                    "take the context by shared reference: `ctx: &AssetContext`",
                ))
            }
            Type::Reference(_) if position == 0 => Ok(None),
            Type::Reference(_) => Err(syn::Error::new_spanned(
                &arg.ty,
                "the context must be the first parameter of an #[asset] function",
            )),
            _ => Err(syn::Error::new_spanned(
                &arg.ty,
                "take the context by reference: `ctx: &AssetContext`",
            )),
        };
    }

    // An input: a plain name and a type the value is moved into.
    let name = match &*arg.pat {
        Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "an #[asset] parameter must be a plain name: the name of the upstream asset, \
                 or any name with `#[from(upstream)]`",
            ));
        }
    };
    match &*arg.ty {
        Type::Reference(_) => {
            return Err(syn::Error::new_spanned(
                &arg.ty,
                "an upstream value is passed by value; drop the `&`",
            ));
        }
        Type::ImplTrait(_) => {
            return Err(syn::Error::new_spanned(
                &arg.ty,
                "an #[asset] function cannot be generic; give each parameter a concrete type",
            ));
        }
        _ => {}
    }
    let upstream = match attrs.from {
        Some(path) => path,
        None => Path::from(name.clone()),
    };
    Ok(Some(Input {
        name,
        ty: (*arg.ty).clone(),
        upstream,
        mapping: attrs.mapping,
    }))
}

/// The attributes this macro reads on a parameter.
#[derive(Default)]
struct ParamAttrs {
    mapping: Option<Expr>,
    from: Option<Path>,
    /// The first of them, to blame where none is allowed.
    first: Option<Attribute>,
}

/// Takes `#[mapping(expr)]` and `#[from(path)]` out of `attrs`, leaving the
/// rest (`#[allow]`, `#[cfg_attr]`) to the compiler.
fn take_param_attrs(attrs: &mut Vec<Attribute>) -> syn::Result<ParamAttrs> {
    let mut found = ParamAttrs::default();
    let mut errors = Errors::default();
    let mut kept = Vec::with_capacity(attrs.len());
    for attr in attrs.drain(..) {
        let is_mapping = attr.path().is_ident("mapping");
        if !is_mapping && !attr.path().is_ident("from") {
            kept.push(attr);
            continue;
        }
        let problem = if is_mapping {
            match attr.parse_args::<Expr>() {
                Ok(_) if found.mapping.is_some() => Some("`#[mapping]` is given twice".to_owned()),
                Ok(expr) => {
                    found.mapping = Some(expr);
                    None
                }
                Err(err) => Some(format!(
                    "{err}; expected e.g. `#[mapping(PartitionMapping::All)]`"
                )),
            }
        } else {
            match attr.parse_args::<Path>() {
                Ok(_) if found.from.is_some() => Some("`#[from]` is given twice".to_owned()),
                Ok(path) => {
                    found.from = Some(path);
                    None
                }
                Err(err) => Some(format!(
                    "{err}; expected e.g. `#[from(crate::flights::raw_flights)]`"
                )),
            }
        };
        if let Some(message) = problem {
            errors.push(syn::Error::new_spanned(&attr, message));
        }
        found.first.get_or_insert(attr);
    }
    *attrs = kept;
    match errors.into_error() {
        Some(err) => Err(err),
        None => Ok(found),
    }
}

/// Whether `ty` is the context: `AssetContext` by any path, behind a reference
/// or not (a wrong form is reported by the caller).
fn is_context(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(reference) => &*reference.elem,
        other => other,
    };
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "AssetContext"),
        _ => false,
    }
}

/// `T` and `E` in `Result<T>` or `Result<T, E>`, by any path ending in
/// `Result`.
fn result_types(ty: &Type) -> Option<(Type, Option<Type>)> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(Some(value)), None, None) => Some((value, None)),
        (Some(Some(value)), Some(Some(error)), None) => Some((value, Some(error))),
        _ => None,
    }
}

/// Errors gathered so that all are reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn into_error(self) -> Option<syn::Error> {
        self.0
    }
}
