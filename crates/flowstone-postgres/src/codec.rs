//! Conversions between PostgreSQL values and FlowStone's record types.
//!
//! Every value read from a row goes through here, so a row this version cannot
//! read (an unknown state, an infinite timestamp, a malformed asset key)
//! becomes [`StoreError::Corrupt`] naming the column and the value, never a
//! panic. Text written goes through [`text`] and [`json`], which replace the
//! NUL character PostgreSQL refuses in `text` and `jsonb`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use flowstone_core::store::{
    EventKind, EventRecord, Level, MaterializationRecord, StepRecord, StepState, StoreError,
    StoreResult, Trigger, WorkerRecord,
};
use flowstone_core::{
    AssetKey, AssetPartition, EventId, MaterializationId, PartitionKey, RunId, StepId, WorkerId,
};
use jiff::Timestamp;
use sqlx::Row;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgHasArrayType, PgRow, PgTypeInfo, PgValueFormat, PgValueRef, Postgres,
};

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

/// A `timestamptz` value: microseconds, like PostgreSQL's own resolution.
///
/// sqlx knows no jiff type, so this newtype speaks the binary format directly:
/// a big-endian `i64` of microseconds since 2000-01-01 UTC. A `Timestamp`
/// with nanoseconds is truncated to the microsecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PgTime(pub Timestamp);

/// 2000-01-01T00:00:00Z, PostgreSQL's epoch, in Unix microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// `timestamptz` and `timestamptz[]` in `pg_type`.
const TIMESTAMPTZ_OID: u32 = 1184;
const TIMESTAMPTZ_ARRAY_OID: u32 = 1185;

impl sqlx::Type<Postgres> for PgTime {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(TIMESTAMPTZ_OID))
    }
}

impl PgHasArrayType for PgTime {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(TIMESTAMPTZ_ARRAY_OID))
    }
}

impl sqlx::Encode<'_, Postgres> for PgTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        // A jiff timestamp spans years -9999..=9999, well inside i64
        // microseconds on either epoch.
        let us = self.0.as_microsecond() - PG_EPOCH_MICROS;
        buf.extend_from_slice(&us.to_be_bytes());
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        std::mem::size_of::<i64>()
    }
}

impl sqlx::Decode<'_, Postgres> for PgTime {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        if value.format() != PgValueFormat::Binary {
            return Err("a timestamptz in text format; FlowStone reads the binary format".into());
        }
        let bytes: [u8; 8] = value.as_bytes()?.try_into().map_err(
            |_| "a timestamptz that is not 8 bytes long; is the server's integer_datetimes off?",
        )?;
        let us = i64::from_be_bytes(bytes);
        let unix = us
            .checked_add(PG_EPOCH_MICROS)
            .ok_or("an infinite timestamptz")?;
        let t = Timestamp::from_microsecond(unix)
            .map_err(|err| format!("a timestamptz out of range ({us} after 2000-01-01): {err}"))?;
        Ok(PgTime(t))
    }
}

/// `s` without NUL characters, which PostgreSQL does not store in `text`;
/// each becomes U+FFFD.
pub(crate) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// `value` with NUL characters replaced in every string and key, since
/// `jsonb` refuses `\u0000`.
pub(crate) fn json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;

    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    fn clean(value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(text(s).into_owned()),
            Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (text(k).into_owned(), clean(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    if has_nul(value) {
        clean(value)
    } else {
        value.clone()
    }
}

/// A metadata map as the `jsonb` object it is stored as.
pub(crate) fn json_object(map: &BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    json(&serde_json::Value::Object(
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    ))
}

/// `now + lease` as microseconds to add to the database clock; a lease is
/// never negative.
pub(crate) fn lease_micros(lease: jiff::SignedDuration) -> i64 {
    i64::try_from(lease.as_micros().max(0)).unwrap_or(i64::MAX)
}

pub(crate) fn count(column: &str, n: i32) -> StoreResult<u32> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column}: {n} is out of range")))
}

/// `max_attempts` as the `integer` it is stored as: anything past `i32::MAX`
/// is as good as unlimited, and kept as `i32::MAX`.
pub(crate) fn max_attempts(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(crate) fn asset_key(column: &str, s: &str) -> StoreResult<AssetKey> {
    AssetKey::new(s).map_err(|err| StoreError::Corrupt(format!("{column}: {err}")))
}

pub(crate) fn target(row: &PgRow) -> StoreResult<AssetPartition> {
    let asset: String = row.try_get("asset_key").db()?;
    let partition: Option<String> = row.try_get("partition_key").db()?;
    Ok(AssetPartition {
        asset: asset_key("asset_key", &asset)?,
        partition: partition.map(PartitionKey::from),
    })
}

pub(crate) fn time(row: &PgRow, column: &str) -> StoreResult<Timestamp> {
    Ok(row.try_get::<PgTime, _>(column).db()?.0)
}

pub(crate) fn opt_time(row: &PgRow, column: &str) -> StoreResult<Option<Timestamp>> {
    Ok(row.try_get::<Option<PgTime>, _>(column).db()?.map(|t| t.0))
}

pub(crate) fn run_id(row: &PgRow, column: &str) -> StoreResult<RunId> {
    Ok(RunId(row.try_get::<uuid::Uuid, _>(column).db()?))
}

pub(crate) fn step_state(s: &str) -> StoreResult<StepState> {
    s.parse()
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

/// Reads a `materializations` row selected with [`materialization_columns`].
pub(crate) fn materialization(row: &PgRow) -> StoreResult<MaterializationRecord> {
    let metadata: serde_json::Value = row.try_get("metadata").db()?;
    let metadata: BTreeMap<String, serde_json::Value> = serde_json::from_value(metadata)
        .map_err(|err| StoreError::Corrupt(format!("materializations.metadata: {err}")))?;
    let trigger: String = row.try_get("triggered_by").db()?;
    Ok(MaterializationRecord {
        id: MaterializationId(row.try_get("id").db()?),
        target: target(row)?,
        run_id: run_id(row, "run_id")?,
        step_id: StepId(row.try_get("step_id").db()?),
        attempt: count("materializations.attempt", row.try_get("attempt").db()?)?,
        started_at: time(row, "started_at")?,
        finished_at: time(row, "finished_at")?,
        trigger: trigger.parse::<Trigger>()?,
        user: row.try_get("user_name").db()?,
        code_version: row.try_get("code_version").db()?,
        data_version: row.try_get("data_version").db()?,
        metadata,
        location: row.try_get("location").db()?,
        io_manager: row.try_get("io_manager").db()?,
    })
}

/// Reads a `steps` row.
pub(crate) fn step(row: &PgRow) -> StoreResult<StepRecord> {
    let state: String = row.try_get("state").db()?;
    let worker: Option<String> = row.try_get("worker").db()?;
    Ok(StepRecord {
        id: StepId(row.try_get("id").db()?),
        run_id: run_id(row, "run_id")?,
        target: target(row)?,
        state: step_state(&state)?,
        attempt: count("steps.attempt", row.try_get("attempt").db()?)?,
        max_attempts: count("steps.max_attempts", row.try_get("max_attempts").db()?)?,
        worker: worker.map(WorkerId),
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        error: row.try_get("error").db()?,
    })
}

/// Reads an `events` row.
pub(crate) fn event(row: &PgRow) -> StoreResult<EventRecord> {
    let kind: String = row.try_get("kind").db()?;
    let level: String = row.try_get("level").db()?;
    let step: Option<i64> = row.try_get("step_id").db()?;
    Ok(EventRecord {
        id: EventId(row.try_get("id").db()?),
        run_id: run_id(row, "run_id")?,
        step_id: step.map(StepId),
        at: time(row, "at")?,
        kind: kind.parse::<EventKind>()?,
        level: level.parse::<Level>()?,
        message: row.try_get("message").db()?,
        data: row.try_get("data").db()?,
    })
}

/// Reads a `workers` row.
pub(crate) fn worker(row: &PgRow) -> StoreResult<WorkerRecord> {
    let pid: i64 = row.try_get("pid").db()?;
    Ok(WorkerRecord {
        id: WorkerId(row.try_get("id").db()?),
        host: row.try_get("host").db()?,
        pid: u32::try_from(pid)
            .map_err(|_| StoreError::Corrupt(format!("workers.pid: {pid} is out of range")))?,
        started_at: time(row, "started_at")?,
        heartbeat_at: time(row, "heartbeat_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_replaced_everywhere() {
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
        assert_eq!(text("a\0b"), "a\u{FFFD}b");

        let dirty = serde_json::json!({ "k\0": ["x\0", { "y": "\0" }], "n": 1 });
        let clean = serde_json::json!({ "k\u{FFFD}": ["x\u{FFFD}", { "y": "\u{FFFD}" }], "n": 1 });
        assert_eq!(json(&dirty), clean);
        assert_eq!(json(&clean), clean);
    }

    #[test]
    fn leases_never_go_negative() {
        assert_eq!(lease_micros(jiff::SignedDuration::from_secs(-5)), 0);
        assert_eq!(
            lease_micros(jiff::SignedDuration::from_millis(1500)),
            1_500_000
        );
    }
}
