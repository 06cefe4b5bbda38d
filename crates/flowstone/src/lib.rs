//! FlowStone: an asset-first data orchestrator.
//!
//! Declare assets with [`asset`], gather them in [`Definitions`], and hand them
//! to [`cli::main`] for a complete command line, or to an [`Engine`] to drive
//! runs from your own code.

pub use flowstone_core::*;
pub use flowstone_macros::asset;

/// Partition definitions and mappings.
pub mod partitions {
    pub use flowstone_partitions::*;
}

pub use flowstone_partitions::{PartitionMapping, PartitionsDef, TimeWindow};

/// Items the `#[asset]` macro expands to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use flowstone_core::asset::{Asset, AssetBuilder, FromUpstream, Inputs};
    pub use flowstone_core::context::AssetContext;
    pub use flowstone_core::error::AssetError;

    /// Compiles only when a parameter of type `P` can receive the output of
    /// upstream asset `A`.
    pub const fn assert_upstream<A: Asset, P: FromUpstream<A::Output>>() {}
}
