//! Conversions between SQLite values and FlowStone's record types.
//!
//! Every value read from a row goes through here, so a row this version cannot
//! read (an unknown state, a timestamp out of range, a malformed asset key)
//! becomes [`StoreError::Corrupt`] naming the column and the value, never a
//! panic.

use std::collections::BTreeMap;

use flowstone_core::store::{
    EventKind, EventRecord, Level, MaterializationRecord, NewEvent, StepRecord, StepState,
    StoreError, StoreResult, Trigger, WorkerRecord,
};
use flowstone_core::{
    AssetKey, AssetPartition, EventId, MaterializationId, PartitionKey, RunId, StepId, WorkerId,
};
use jiff::Timestamp;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// Turns sqlx errors into store errors with `?`.
pub(crate) trait DbResult<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T> DbResult<T> for Result<T, sqlx::Error> {
    fn db(self) -> StoreResult<T> {
        self.map_err(|err| match err {
            sqlx::Error::ColumnDecode { index, source } => {
                StoreError::Corrupt(format!("column {index}: {source}"))
            }
            other => StoreError::backend(other),
        })
    }
}

/// Microseconds since the Unix epoch, the schema's timestamp representation.
pub(crate) fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

/// `now + lease` in microseconds, saturating instead of overflowing.
pub(crate) fn micros_after(now: Timestamp, lease: jiff::SignedDuration) -> i64 {
    let end = i128::from(now.as_microsecond()) + lease.as_micros();
    i64::try_from(end).unwrap_or(if end < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn timestamp(column: &str, us: i64) -> StoreResult<Timestamp> {
    Timestamp::from_microsecond(us).map_err(|err| {
        StoreError::Corrupt(format!(
            "{column}: {us} is not a timestamp in microseconds: {err}"
        ))
    })
}

pub(crate) fn opt_timestamp(column: &str, us: Option<i64>) -> StoreResult<Option<Timestamp>> {
    us.map(|us| timestamp(column, us)).transpose()
}

pub(crate) fn run_id(column: &str, s: &str) -> StoreResult<RunId> {
    s.parse()
        .map_err(|err| StoreError::Corrupt(format!("{column}: {err}")))
}

pub(crate) fn asset_key(column: &str, s: &str) -> StoreResult<AssetKey> {
    AssetKey::new(s).map_err(|err| StoreError::Corrupt(format!("{column}: {err}")))
}

/// A partition key as stored: the canonical string the planner produced.
pub(crate) fn partition_key(s: String) -> PartitionKey {
    PartitionKey::from(s)
}

pub(crate) fn target(row: &SqliteRow) -> StoreResult<AssetPartition> {
    let asset: String = row.try_get("asset_key").db()?;
    let partition: Option<String> = row.try_get("partition_key").db()?;
    Ok(AssetPartition {
        asset: asset_key("asset_key", &asset)?,
        partition: partition.map(partition_key),
    })
}

pub(crate) fn count(column: &str, n: i64) -> StoreResult<u32> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column}: {n} is out of range")))
}

pub(crate) fn json_value(column: &str, text: &str) -> StoreResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt(format!("{column}: {err}")))
}

pub(crate) fn step_state(s: &str) -> StoreResult<StepState> {
    s.parse()
}

/// Reads a `materializations` row selected with all its columns.
pub(crate) fn materialization(row: &SqliteRow) -> StoreResult<MaterializationRecord> {
    let metadata: String = row.try_get("metadata").db()?;
    let metadata: BTreeMap<String, serde_json::Value> = serde_json::from_str(&metadata)
        .map_err(|err| StoreError::Corrupt(format!("materializations.metadata: {err}")))?;
    let trigger: String = row.try_get("triggered_by").db()?;
    let run: String = row.try_get("run_id").db()?;
    Ok(MaterializationRecord {
        id: MaterializationId(row.try_get("id").db()?),
        target: target(row)?,
        run_id: run_id("materializations.run_id", &run)?,
        step_id: StepId(row.try_get("step_id").db()?),
        attempt: count("materializations.attempt", row.try_get("attempt").db()?)?,
        started_at: timestamp(
            "materializations.started_at",
            row.try_get("started_at").db()?,
        )?,
        finished_at: timestamp(
            "materializations.finished_at",
            row.try_get("finished_at").db()?,
        )?,
        trigger: trigger.parse::<Trigger>()?,
        user: row.try_get("user_name").db()?,
        code_version: row.try_get("code_version").db()?,
        data_version: row.try_get("data_version").db()?,
        metadata,
        location: row.try_get("location").db()?,
        io_manager: row.try_get("io_manager").db()?,
    })
}

/// The columns [`materialization`] reads from `materializations m`, as a
/// literal for `concat!`.
macro_rules! materialization_columns {
    () => {
        "m.id, m.asset_key, m.partition_key, m.run_id, m.step_id, m.attempt, m.started_at, \
         m.finished_at, m.triggered_by, m.user_name, m.code_version, m.data_version, \
         m.metadata, m.location, m.io_manager"
    };
}
pub(crate) use materialization_columns;

/// Reads a `steps` row.
pub(crate) fn step(row: &SqliteRow) -> StoreResult<StepRecord> {
    let run: String = row.try_get("run_id").db()?;
    let state: String = row.try_get("state").db()?;
    let worker: Option<String> = row.try_get("worker").db()?;
    Ok(StepRecord {
        id: StepId(row.try_get("id").db()?),
        run_id: run_id("steps.run_id", &run)?,
        target: target(row)?,
        state: step_state(&state)?,
        attempt: count("steps.attempt", row.try_get("attempt").db()?)?,
        max_attempts: count("steps.max_attempts", row.try_get("max_attempts").db()?)?,
        worker: worker.map(WorkerId),
        started_at: opt_timestamp("steps.started_at", row.try_get("started_at").db()?)?,
        finished_at: opt_timestamp("steps.finished_at", row.try_get("finished_at").db()?)?,
        error: row.try_get("error").db()?,
    })
}

/// Reads an `events` row.
pub(crate) fn event(row: &SqliteRow) -> StoreResult<EventRecord> {
    let run: String = row.try_get("run_id").db()?;
    let kind: String = row.try_get("kind").db()?;
    let level: String = row.try_get("level").db()?;
    let data: String = row.try_get("data").db()?;
    let step: Option<i64> = row.try_get("step_id").db()?;
    Ok(EventRecord {
        id: EventId(row.try_get("id").db()?),
        run_id: run_id("events.run_id", &run)?,
        step_id: step.map(StepId),
        at: timestamp("events.at", row.try_get("at").db()?)?,
        kind: kind.parse::<EventKind>()?,
        level: level.parse::<Level>()?,
        message: row.try_get("message").db()?,
        data: json_value("events.data", &data)?,
    })
}

/// Reads a `workers` row.
pub(crate) fn worker(row: &SqliteRow) -> StoreResult<WorkerRecord> {
    let pid: i64 = row.try_get("pid").db()?;
    Ok(WorkerRecord {
        id: WorkerId(row.try_get("id").db()?),
        host: row.try_get("host").db()?,
        pid: u32::try_from(pid)
            .map_err(|_| StoreError::Corrupt(format!("workers.pid: {pid} is out of range")))?,
        started_at: timestamp("workers.started_at", row.try_get("started_at").db()?)?,
        heartbeat_at: timestamp("workers.heartbeat_at", row.try_get("heartbeat_at").db()?)?,
    })
}

/// An event as one element of the JSON array that [`INSERT_EVENTS`] reads.
pub(crate) fn event_json(e: &NewEvent) -> serde_json::Value {
    serde_json::json!([
        e.run_id.to_string(),
        e.step_id.map(|s| s.0),
        micros(e.at),
        e.kind.as_str(),
        e.level.as_str(),
        e.message,
        e.data,
    ])
}

/// Inserts the events of a JSON array built by [`event_json`], in array order,
/// so event ids follow it.
pub(crate) const INSERT_EVENTS: &str = "INSERT INTO events \
     (run_id, step_id, at, kind, level, message, data) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
            value -> 6 \
     FROM jsonb_each(?1) ORDER BY key";
