//! FlowStone's engine.
//!
//! Data flows through it in one direction: [`Definitions`] (the user's assets,
//! validated once) feed the planner, which turns a selection into a run of steps
//! in a [`Store`]; workers claim those steps, call the assets, hand their values
//! to I/O managers and record each materialization with the materializations it
//! read. Lineage, impact and staleness are questions asked of that record.
//!
//! Most users reach this crate through the `flowstone` facade.

pub mod asset;
pub mod context;
pub mod definitions;
pub mod engine;
pub mod error;
pub mod ids;
pub mod io;
pub mod maintenance;
pub mod plan;
pub mod query;
pub mod slots;
pub mod store;
pub mod token;
pub mod value;
mod worker;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use asset::{Asset, AssetBuilder, AssetDef, FromUpstream, Inputs, Partitioned, RetryPolicy};
pub use context::{AssetContext, Resources};
pub use definitions::{DefinitionError, DefinitionErrors, Definitions, DefinitionsBuilder};
pub use engine::{Engine, EngineError, Launch, RunHandle, RunOutcome, RunRequest};
pub use error::{AssetError, Result, ResultExt};
pub use ids::{
    AssetKey, AssetPartition, EventId, MaterializationId, PartitionKey, RunId, StepId, WorkerId,
};
pub use io::{FileIoManager, IoError, IoManager, MemoryIoManager, StoredValue};
pub use plan::{PartitionSelection, Plan, PlanError, Selection};
pub use query::{AssetStatus, Direction, ImpactEntry, Lineage, PartitionState};
pub use store::{Store, StoreError, Trigger};
pub use worker::{Progress, Stop, WorkerOptions, default_parallelism};

/// This machine's host name, for worker ids and records; `localhost` when unknown.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
