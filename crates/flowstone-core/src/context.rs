//! What an asset sees while it runs: its partition and time window, the run,
//! the attempt, typed resources, a logger whose lines land in the run's event
//! log, and metadata to attach to the materialization.
//!
//! A context is cheap to clone. [`AssetContext::test`] makes one for a plain
//! `#[tokio::test]` with no store, no server and fake resources.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use flowstone_partitions::{PartitionsDef, TimeWindow};
use jiff::Timestamp;
use serde::Serialize;

use crate::error::AssetError;
use crate::ids::{AssetKey, PartitionKey, RunId, StepId};
use crate::store::{EventKind, Level, NewEvent};

/// Shared, typed dependencies handed to assets: a database pool, an HTTP
/// client, a data directory. One value per type.
#[derive(Clone, Default)]
pub struct Resources {
    by_type: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Resources {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the resource of type `T`.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.insert_arc(Arc::new(value));
    }

    pub fn insert_arc<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        Arc::make_mut(&mut self.by_type).insert(TypeId::of::<T>(), value);
    }

    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let value = self.by_type.get(&TypeId::of::<T>())?.clone();
        value.downcast::<T>().ok()
    }
}

/// The context of one asset call.
#[derive(Clone)]
pub struct AssetContext {
    inner: Arc<Inner>,
}

struct Inner {
    asset: AssetKey,
    partition: Option<PartitionKey>,
    window: Option<TimeWindow>,
    run_id: RunId,
    step_id: StepId,
    attempt: u32,
    resources: Resources,
    record: Mutex<Record>,
}

/// What the asset said while it ran; taken by the worker when it returns.
#[derive(Default)]
pub(crate) struct Record {
    pub(crate) events: Vec<NewEvent>,
    pub(crate) metadata: BTreeMap<String, serde_json::Value>,
}

/// The fields a worker fills in to make a context.
pub(crate) struct ContextParts {
    pub asset: AssetKey,
    pub partition: Option<PartitionKey>,
    pub window: Option<TimeWindow>,
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
    pub resources: Resources,
}

impl AssetContext {
    pub(crate) fn from_parts(parts: ContextParts) -> Self {
        AssetContext {
            inner: Arc::new(Inner {
                asset: parts.asset,
                partition: parts.partition,
                window: parts.window,
                run_id: parts.run_id,
                step_id: parts.step_id,
                attempt: parts.attempt,
                resources: parts.resources,
                record: Mutex::new(Record::default()),
            }),
        }
    }

    /// A context for tests: see [`TestContext`].
    pub fn test(asset: &str) -> TestContext {
        TestContext {
            asset: asset.to_owned(),
            partition: None,
            partitions: None,
            resources: Resources::new(),
            attempt: 1,
        }
    }

    pub fn asset_key(&self) -> &AssetKey {
        &self.inner.asset
    }

    /// The partition being materialized; `None` for an unpartitioned asset.
    pub fn partition_key(&self) -> Option<&PartitionKey> {
        self.inner.partition.as_ref()
    }

    /// The partition key, or an error that says the asset must be partitioned.
    pub fn require_partition_key(&self) -> Result<&PartitionKey, AssetError> {
        self.partition_key().ok_or_else(|| {
            AssetError::fatal(anyhow::anyhow!(
                "asset {} was called without a partition key, but it needs one",
                self.inner.asset
            ))
        })
    }

    /// The time window of a time-partitioned asset's partition (for a product
    /// with a time dimension, that dimension's window).
    pub fn partition_window(&self) -> Option<TimeWindow> {
        self.inner.window
    }

    /// The time window, or an error that says the asset must be time-partitioned.
    pub fn require_partition_window(&self) -> Result<TimeWindow, AssetError> {
        self.partition_window().ok_or_else(|| {
            AssetError::fatal(anyhow::anyhow!(
                "asset {} needs a time window but its partition {:?} has none",
                self.inner.asset,
                self.inner.partition.as_ref().map(|p| p.as_str())
            ))
        })
    }

    pub fn run_id(&self) -> RunId {
        self.inner.run_id
    }

    pub fn step_id(&self) -> StepId {
        self.inner.step_id
    }

    /// The attempt, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The resource of type `T`.
    ///
    /// # Errors
    ///
    /// When no resource of that type was configured in the definitions.
    pub fn resource<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, AssetError> {
        self.inner.resources.get::<T>().ok_or_else(|| {
            AssetError::fatal(anyhow::anyhow!(
                "asset {} asked for resource {} but none is configured; add it with \
                 Definitions::builder().resource(...)",
                self.inner.asset,
                std::any::type_name::<T>()
            ))
        })
    }

    /// A logger whose lines land in the run's event log (and in `tracing`).
    pub fn log(&self) -> Logger<'_> {
        Logger { ctx: self }
    }

    /// Attaches a value to the materialization, e.g. `rows_out`. A later value
    /// for the same key replaces the earlier one. A value that cannot be
    /// serialized is recorded as its error message.
    pub fn add_metadata(&self, key: impl Into<String>, value: impl Serialize) {
        let value = serde_json::to_value(value)
            .unwrap_or_else(|err| serde_json::Value::String(format!("unserializable: {err}")));
        self.with_record(|record| record.metadata.insert(key.into(), value));
    }

    /// Metadata added so far (for tests).
    pub fn metadata(&self) -> BTreeMap<String, serde_json::Value> {
        self.with_record(|record| record.metadata.clone())
    }

    /// Log lines so far, as `(level, message)` (for tests).
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.with_record(|record| {
            record
                .events
                .iter()
                .map(|e| (e.level, e.message.clone()))
                .collect()
        })
    }

    pub(crate) fn take_record(&self) -> Record {
        self.with_record(std::mem::take)
    }

    fn with_record<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        // A panic while holding this lock cannot leave the record inconsistent:
        // every mutation is a single push or insert.
        let mut record = self
            .inner
            .record
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut record)
    }

    fn push_log(&self, level: Level, message: String) {
        let inner = &self.inner;
        let partition = inner.partition.as_ref().map(|p| p.as_str()).unwrap_or("");
        match level {
            Level::Debug => tracing::debug!(
                target: "flowstone::asset", asset = %inner.asset, partition, "{message}"
            ),
            Level::Info => tracing::info!(
                target: "flowstone::asset", asset = %inner.asset, partition, "{message}"
            ),
            Level::Warn => tracing::warn!(
                target: "flowstone::asset", asset = %inner.asset, partition, "{message}"
            ),
            Level::Error => tracing::error!(
                target: "flowstone::asset", asset = %inner.asset, partition, "{message}"
            ),
        }
        let event = NewEvent {
            run_id: inner.run_id,
            step_id: Some(inner.step_id),
            at: Timestamp::now(),
            kind: EventKind::Log,
            level,
            message,
            data: serde_json::Value::Null,
        };
        self.with_record(|record| record.events.push(event));
    }
}

/// Writes log lines into the run's event log; see [`AssetContext::log`].
pub struct Logger<'a> {
    ctx: &'a AssetContext,
}

impl Logger<'_> {
    pub fn debug(&self, message: impl Into<String>) {
        self.ctx.push_log(Level::Debug, message.into());
    }

    pub fn info(&self, message: impl Into<String>) {
        self.ctx.push_log(Level::Info, message.into());
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.ctx.push_log(Level::Warn, message.into());
    }

    pub fn error(&self, message: impl Into<String>) {
        self.ctx.push_log(Level::Error, message.into());
    }
}

/// Builds an [`AssetContext`] for a test, without a store.
///
/// ```
/// # use flowstone_core::context::AssetContext;
/// let ctx = AssetContext::test("raw_flights").resource(42u32).build().unwrap();
/// assert_eq!(*ctx.resource::<u32>().unwrap(), 42);
/// ```
pub struct TestContext {
    asset: String,
    partition: Option<String>,
    partitions: Option<PartitionsDef>,
    resources: Resources,
    attempt: u32,
}

impl TestContext {
    /// The partition key; with [`TestContext::partitions`] it is checked and its
    /// time window computed.
    pub fn partition(mut self, key: impl Into<String>) -> Self {
        self.partition = Some(key.into());
        self
    }

    pub fn partitions(mut self, def: PartitionsDef) -> Self {
        self.partitions = Some(def);
        self
    }

    pub fn resource<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.resources.insert(value);
        self
    }

    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// # Errors
    ///
    /// A bad asset key, or a partition key the partitions do not accept.
    pub fn build(self) -> anyhow::Result<AssetContext> {
        let asset = AssetKey::new(&self.asset)?;
        let (partition, window) = match (&self.partition, &self.partitions) {
            (Some(key), Some(def)) => {
                let key = def.parse_key(key, Timestamp::now())?;
                let window = def.time_window(&key);
                (Some(key), window)
            }
            (Some(key), None) => (Some(PartitionKey::from(key.clone())), None),
            (None, _) => (None, None),
        };
        Ok(AssetContext::from_parts(ContextParts {
            asset,
            partition,
            window,
            run_id: RunId::new(),
            step_id: StepId(0),
            attempt: self.attempt,
            resources: self.resources,
        }))
    }
}
