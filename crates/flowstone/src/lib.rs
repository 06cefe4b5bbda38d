//! FlowStone: an asset-first data orchestrator.
//!
//! Declare assets with [`asset`], gather them in [`Definitions`], and hand them
//! to [`cli::main`] for a complete command line, or to an [`Engine`] to drive
//! runs from your own code.

pub mod cli;
mod open;

pub use flowstone_core::*;
pub use flowstone_macros::asset;
pub use flowstone_postgres::PostgresStore;
pub use flowstone_sqlite::SqliteStore;
pub use open::{DEFAULT_STORE, OpenedStore, open_store};

/// Partition definitions and mappings.
pub mod partitions {
    pub use flowstone_partitions::*;
}

pub use flowstone_partitions::{PartitionMapping, PartitionsDef, TimeWindow};

/// Items the `#[asset]` macro expands to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use flowstone_core::asset::{Asset, AssetBuilder, FromUpstream, Inputs, is_plain_name};
    pub use flowstone_core::context::AssetContext;
    pub use flowstone_core::error::AssetError;
    pub use flowstone_core::value::ValueType;
    pub use flowstone_partitions::{PartitionMapping, PartitionsDef, PartitionsError};

    use std::future::Future;

    /// Compiles only when a parameter of type `P` can receive the output of
    /// upstream asset `A`; returns what the expansion needs to read it.
    ///
    /// This is the one place where the bound is checked: the expansion names
    /// `A` and `P` only here, so a missing upstream or a wrong parameter type
    /// is reported once, at the parameter.
    pub const fn assert_upstream<A: Asset, P: FromUpstream<A::Output>>() -> Upstream<P> {
        Upstream {
            key: A::KEY,
            output: ValueType::of::<A::Output>,
            take: take::<A, P>,
        }
    }

    /// An upstream asset as one parameter receives it.
    pub struct Upstream<P> {
        /// The upstream's key.
        pub key: &'static str,
        /// The upstream's output type.
        pub output: fn() -> ValueType,
        /// Takes the parameter's value out of the inputs, by dependency name.
        pub take: fn(&mut Inputs, &str) -> Result<P, AssetError>,
    }

    // By hand: a derive would require `P: Copy`, and `P` is only a return type.
    impl<P> Clone for Upstream<P> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<P> Copy for Upstream<P> {}

    fn take<A: Asset, P: FromUpstream<A::Output>>(
        inputs: &mut Inputs,
        dep: &str,
    ) -> Result<P, AssetError> {
        inputs.take::<A::Output, P>(dep)
    }

    /// `builder.compute(f)` for asset `A`: the value type is `A::Output`,
    /// whose bounds the `Asset` impl already checks, so a value type that is
    /// not serializable is reported once, at the return type.
    pub fn compute<A, F, Fut>(builder: AssetBuilder, f: F) -> AssetBuilder
    where
        A: Asset,
        F: Fn(AssetContext, Inputs) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A::Output, AssetError>> + Send + 'static,
    {
        builder.compute(f)
    }

    /// What `partitions = ...` accepts: a definition, or the result of
    /// building one (whose error is reported when the definitions are built).
    #[diagnostic::on_unimplemented(
        message = "`partitions = ...` takes a `PartitionsDef`, not `{Self}`",
        label = "not a partitions definition",
        note = "give a `PartitionsDef` or a `Result<PartitionsDef, PartitionsError>`, e.g. \
                `TimeWindowPartitions::daily(\"2024-01-01\").build()`"
    )]
    pub trait IntoPartitions {
        fn into_partitions(self) -> Result<PartitionsDef, PartitionsError>;
    }

    impl IntoPartitions for PartitionsDef {
        fn into_partitions(self) -> Result<PartitionsDef, PartitionsError> {
            Ok(self)
        }
    }

    impl IntoPartitions for Result<PartitionsDef, PartitionsError> {
        fn into_partitions(self) -> Result<PartitionsDef, PartitionsError> {
            self
        }
    }

    /// An error type an asset function may return: anything that converts
    /// into an [`AssetError`].
    #[diagnostic::on_unimplemented(
        message = "an #[asset] function cannot return errors of type `{Self}`",
        label = "this error type does not convert into `flowstone::AssetError`",
        note = "return `flowstone::Result<T>`, `anyhow::Result<T>`, or `Result<T, E>` with an \
                `E` that converts into `anyhow::Error` (a `std::error::Error + Send + Sync + \
                'static`)"
    )]
    pub trait IntoAssetError {
        fn into_asset_error(self) -> AssetError;
    }

    impl<E> IntoAssetError for E
    where
        AssetError: From<E>,
    {
        fn into_asset_error(self) -> AssetError {
            AssetError::from(self)
        }
    }

    /// An asset function's result, with its error as an [`AssetError`].
    pub fn into_asset_result<T, E: IntoAssetError>(result: Result<T, E>) -> Result<T, AssetError> {
        result.map_err(IntoAssetError::into_asset_error)
    }
}
