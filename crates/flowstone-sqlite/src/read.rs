//! Reads: runs, steps, events, materializations, lineage and workers.
//!
//! Reads run on the reader pool outside any write transaction; each sees the
//! database as of its last commit. Every method is a fixed number of queries,
//! whatever the number of rows (no query per partition or per run). Reads
//! that can return thousands of rows turn each row into its record as it
//! arrives ([`records`]), so that a large result never sits in memory twice,
//! as rows and as records: the peak is what the allocator keeps afterwards.

use std::collections::HashMap;

use flowstone_core::store::{
    EventRecord, LineageEdge, MaterializationRecord, PartitionRecord, RunRecord, StepCounts,
    StepFailure, StepRecord, StoreError, StoreResult, WorkerRecord,
};
use flowstone_core::{
    AssetKey, AssetPartition, EventId, MaterializationId, RunId, StepId, WorkerId,
};
use futures::TryStreamExt;
use jiff::Timestamp;
use sqlx::Row;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqliteRow};

use crate::SqliteStore;
use crate::codec::{self, DbResult, materialization_columns};

/// Which way to follow lineage edges.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    /// From consumers to the materializations they read.
    Inputs,
    /// From inputs to the materializations that read them.
    Consumers,
}

macro_rules! run_columns {
    () => {
        "id, state, triggered_by, user_name, description, created_at, finished_at, pruned_counts, \
         max_parallel"
    };
}

macro_rules! lineage_query {
    ($from:literal, $to:literal) => {
        concat!(
            "SELECT l.consumer_id AS edge_consumer, l.input_id AS edge_input, ",
            materialization_columns!(),
            " FROM lineage l JOIN materializations m ON m.id = l.",
            $to,
            " WHERE l.",
            $from,
            " IN (SELECT value FROM jsonb_each(?1)) ORDER BY l.",
            $from,
            ", l.",
            $to
        )
    };
}

impl SqliteStore {
    pub(crate) async fn read_next_retry_at(
        &self,
        run: Option<RunId>,
    ) -> StoreResult<Option<Timestamp>> {
        let mut conn = self.reader().await?;
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT min(scheduled_at) FROM steps \
             WHERE state = 'retryable' AND (?1 IS NULL OR run_id = ?1)",
        )
        .bind(run.map(|r| r.to_string()))
        .fetch_one(&mut *conn)
        .await
        .db()?;
        codec::opt_timestamp("steps.scheduled_at", at)
    }

    pub(crate) async fn read_workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        let mut conn = self.reader().await?;
        let rows =
            sqlx::query("SELECT id, host, pid, started_at, heartbeat_at FROM workers ORDER BY id")
                .fetch_all(&mut *conn)
                .await
                .db()?;
        rows.iter().map(codec::worker).collect()
    }

    pub(crate) async fn read_run(&self, id: RunId) -> StoreResult<Option<RunRecord>> {
        let mut conn = self.reader().await?;
        let sql = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = ?1");
        let row = sqlx::query(sql)
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .db()?;
        let Some(row) = row else { return Ok(None) };
        let counts = step_counts(&mut conn, &[id]).await?;
        run_record(&row, &counts).map(Some)
    }

    pub(crate) async fn read_runs(&self, limit: u32) -> StoreResult<Vec<RunRecord>> {
        let mut conn = self.reader().await?;
        let sql = concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs ORDER BY created_at DESC, id DESC LIMIT ?1"
        );
        let rows = sqlx::query(sql)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await
            .db()?;
        let ids = rows
            .iter()
            .map(|row| codec::run_id("runs.id", &row.try_get::<String, _>("id").db()?))
            .collect::<StoreResult<Vec<_>>>()?;
        let counts = step_counts(&mut conn, &ids).await?;
        rows.iter().map(|row| run_record(row, &counts)).collect()
    }

    pub(crate) async fn read_steps(&self, run: RunId) -> StoreResult<Vec<StepRecord>> {
        let mut conn = self.reader().await?;
        let query = sqlx::query(
            "SELECT id, run_id, asset_key, partition_key, state, attempt, max_attempts, worker, \
                 started_at, finished_at, error \
             FROM steps WHERE run_id = ?1 ORDER BY id",
        )
        .bind(run.to_string());
        records(query, &mut conn, codec::step).await
    }

    pub(crate) async fn read_step_counts(&self, run: RunId) -> StoreResult<StepCounts> {
        let mut conn = self.reader().await?;
        let counts = step_counts(&mut conn, &[run]).await?;
        Ok(counts.get(&run).copied().unwrap_or_default())
    }

    pub(crate) async fn read_running_workers(&self, run: RunId) -> StoreResult<Vec<WorkerId>> {
        let mut conn = self.reader().await?;
        let workers: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT worker FROM steps \
             WHERE run_id = ?1 AND state = 'running' AND worker IS NOT NULL ORDER BY worker",
        )
        .bind(run.to_string())
        .fetch_all(&mut *conn)
        .await
        .db()?;
        Ok(workers.into_iter().map(WorkerId).collect())
    }

    pub(crate) async fn read_events(
        &self,
        run: RunId,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let mut conn = self.reader().await?;
        let query = sqlx::query(
            "SELECT id, run_id, step_id, at, kind, level, message, data FROM events \
             WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .bind(run.to_string())
        .bind(after.map_or(0, |e| e.0))
        .bind(i64::from(limit));
        records(query, &mut conn, codec::event).await
    }

    pub(crate) async fn read_materialization(
        &self,
        id: MaterializationId,
    ) -> StoreResult<Option<MaterializationRecord>> {
        let mut conn = self.reader().await?;
        let sql = concat!(
            "SELECT ",
            materialization_columns!(),
            " FROM materializations m WHERE id = ?1"
        );
        let row = sqlx::query(sql)
            .bind(id.0)
            .fetch_optional(&mut *conn)
            .await
            .db()?;
        row.as_ref().map(codec::materialization).transpose()
    }

    pub(crate) async fn read_latest_materializations(
        &self,
        targets: &[AssetPartition],
    ) -> StoreResult<Vec<MaterializationRecord>> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let items: Vec<serde_json::Value> = targets
            .iter()
            .map(|t| {
                serde_json::json!([t.asset.as_str(), t.partition.as_ref().map(|p| p.as_str())])
            })
            .collect();

        // One correlated max(id) per target, each an index seek.
        let mut conn = self.reader().await?;
        let sql = concat!(
            "SELECT ",
            materialization_columns!(),
            " FROM materializations m \
              WHERE m.id IN ( \
                  SELECT (SELECT max(x.id) FROM materializations x \
                          WHERE x.asset_key = t.value ->> 0 \
                            AND x.partition_key IS t.value ->> 1) \
                  FROM jsonb_each(?1) AS t)"
        );
        let query = sqlx::query(sql).bind(serde_json::Value::Array(items).to_string());
        let mut found: HashMap<AssetPartition, MaterializationRecord> = HashMap::new();
        for m in records(query, &mut conn, codec::materialization).await? {
            found.insert(m.target.clone(), m);
        }

        // In the order asked for, each target once.
        Ok(targets.iter().filter_map(|t| found.remove(t)).collect())
    }

    pub(crate) async fn read_partitions(
        &self,
        asset: &AssetKey,
    ) -> StoreResult<Vec<PartitionRecord>> {
        let mut conn = self.reader().await?;

        // The latest materialization per partition: a walk of the
        // (asset_key, partition_key, id) index, then one seek per partition.
        let sql = concat!(
            "SELECT ",
            materialization_columns!(),
            " FROM materializations m \
              WHERE m.id IN (SELECT max(id) FROM materializations \
                             WHERE asset_key = ?1 GROUP BY partition_key)"
        );
        let latest = records(
            sqlx::query(sql).bind(asset.as_str()),
            &mut conn,
            codec::materialization,
        )
        .await?;

        // The newest failed step per partition, from the partial index of
        // failed steps (SQLite takes the bare columns from the max row).
        let failures = sqlx::query(
            "SELECT partition_key, id, run_id, max(finished_at) AS at, error FROM steps \
             WHERE asset_key = ?1 AND state = 'failed' AND finished_at IS NOT NULL \
             GROUP BY partition_key",
        )
        .bind(asset.as_str())
        .fetch_all(&mut *conn)
        .await
        .db()?;
        drop(conn);

        let mut found = Vec::with_capacity(failures.len());
        for row in &failures {
            let key: Option<String> = row.try_get("partition_key").db()?;
            let run: String = row.try_get("run_id").db()?;
            let failure = StepFailure {
                step_id: StepId(row.try_get("id").db()?),
                run_id: codec::run_id("steps.run_id", &run)?,
                at: codec::timestamp("steps.finished_at", row.try_get("at").db()?)?,
                error: row
                    .try_get::<Option<String>, _>("error")
                    .db()?
                    .unwrap_or_default(),
            };
            found.push((key.map(codec::partition_key), failure));
        }
        Ok(PartitionRecord::merge(latest, found))
    }

    pub(crate) async fn read_lineage(
        &self,
        of: &[MaterializationId],
        direction: Direction,
    ) -> StoreResult<Vec<(LineageEdge, MaterializationRecord)>> {
        if of.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = of.iter().map(|m| m.0).collect();
        let sql = match direction {
            Direction::Inputs => lineage_query!("consumer_id", "input_id"),
            Direction::Consumers => lineage_query!("input_id", "consumer_id"),
        };

        let mut conn = self.reader().await?;
        let query = sqlx::query(sql).bind(serde_json::to_string(&ids).unwrap_or_default());
        records(query, &mut conn, |row| {
            let edge = LineageEdge {
                consumer: MaterializationId(row.try_get("edge_consumer").db()?),
                input: MaterializationId(row.try_get("edge_input").db()?),
            };
            Ok((edge, codec::materialization(row)?))
        })
        .await
    }

    pub(crate) async fn read_materializations_of_run(
        &self,
        run: RunId,
    ) -> StoreResult<Vec<MaterializationRecord>> {
        let mut conn = self.reader().await?;
        let sql = concat!(
            "SELECT ",
            materialization_columns!(),
            " FROM materializations m WHERE m.run_id = ?1 ORDER BY m.id"
        );
        let query = sqlx::query(sql).bind(run.to_string());
        records(query, &mut conn, codec::materialization).await
    }
}

/// Steps by state for each of `runs`, in one grouped query.
async fn step_counts(
    conn: &mut SqliteConnection,
    runs: &[RunId],
) -> StoreResult<HashMap<RunId, StepCounts>> {
    let ids: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
    let rows = sqlx::query(
        "SELECT run_id, state, count(*) AS n FROM steps \
         WHERE run_id IN (SELECT value FROM jsonb_each(?1)) GROUP BY run_id, state",
    )
    .bind(serde_json::to_string(&ids).unwrap_or_default())
    .fetch_all(&mut *conn)
    .await
    .db()?;

    let mut counts: HashMap<RunId, StepCounts> = HashMap::new();
    for row in rows {
        let run: String = row.try_get("run_id").db()?;
        let state: String = row.try_get("state").db()?;
        let n: i64 = row.try_get("n").db()?;
        counts
            .entry(codec::run_id("steps.run_id", &run)?)
            .or_default()
            .add(codec::step_state(&state)?, n.unsigned_abs());
    }
    Ok(counts)
}

fn run_record(row: &SqliteRow, counts: &HashMap<RunId, StepCounts>) -> StoreResult<RunRecord> {
    let id = codec::run_id("runs.id", &row.try_get::<String, _>("id").db()?)?;
    let state: String = row.try_get("state").db()?;
    let trigger: String = row.try_get("triggered_by").db()?;
    Ok(RunRecord {
        id,
        state: state.parse()?,
        trigger: trigger.parse()?,
        user: row.try_get("user_name").db()?,
        description: row.try_get("description").db()?,
        created_at: codec::timestamp("runs.created_at", row.try_get("created_at").db()?)?,
        finished_at: codec::opt_timestamp("runs.finished_at", row.try_get("finished_at").db()?)?,
        max_parallel: row
            .try_get::<Option<i64>, _>("max_parallel")
            .db()?
            .map(|n| codec::count("runs.max_parallel", n))
            .transpose()?,
        steps: match row.try_get::<Option<String>, _>("pruned_counts").db()? {
            Some(pruned) => serde_json::from_str(&pruned).map_err(|err| {
                StoreError::Corrupt(format!("runs.pruned_counts of run {id}: {err}"))
            })?,
            None => counts.get(&id).copied().unwrap_or_default(),
        },
    })
}

/// The step counts of `runs`, for the pruning that is about to delete them.
pub(crate) async fn counts_to_keep(
    conn: &mut SqliteConnection,
    runs: &[RunId],
) -> StoreResult<HashMap<RunId, StepCounts>> {
    step_counts(conn, runs).await
}

impl SqliteStore {
    /// Events of every run after `after`, in id order (the live feed).
    /// The newest event id: one writer, so every event below it is
    /// committed.
    pub(crate) async fn read_events_position(&self) -> StoreResult<Option<EventId>> {
        let mut conn = self.reader().await?;
        let newest: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM events")
            .fetch_one(&mut *conn)
            .await
            .db()?;
        Ok(newest.map(EventId))
    }

    pub(crate) async fn read_events_since(
        &self,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let mut conn = self.reader().await?;
        let query = sqlx::query(
            "SELECT id, run_id, step_id, at, kind, level, message, data FROM events \
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(after.map_or(0, |e| e.0))
        .bind(i64::from(limit));
        records(query, &mut conn, codec::event).await
    }
}

/// The rows of `query`, each turned into a record by `convert` as it
/// arrives. Unlike `fetch_all` and a conversion after it, the whole result
/// never exists as rows: at most the connection's row buffer does.
async fn records<'q, T>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments>,
    conn: &mut SqliteConnection,
    mut convert: impl FnMut(&SqliteRow) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut rows = query.fetch(conn);
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await.db()? {
        out.push(convert(&row)?);
    }
    Ok(out)
}
