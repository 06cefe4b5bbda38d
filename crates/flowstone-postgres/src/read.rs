//! Reads: runs, steps, events, materializations, lineage and workers.
//!
//! Reads run on the pool outside any write transaction; each statement sees
//! the database as of its start. Every method is a fixed number of queries,
//! whatever the number of rows (no query per partition or per run).

use std::collections::HashMap;

use flowstone_core::store::{
    EventRecord, LineageEdge, MaterializationRecord, PartitionRecord, RunRecord, StepCounts,
    StepFailure, StepRecord, StoreResult, WorkerRecord,
};
use flowstone_core::{
    AssetKey, AssetPartition, EventId, MaterializationId, PartitionKey, RunId, StepId, WorkerId,
};
use jiff::Timestamp;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use uuid::Uuid;

use crate::PostgresStore;
use crate::codec::{self, DbResult, PgTime, materialization_columns};

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
            " = ANY($1) ORDER BY l.",
            $from,
            ", l.",
            $to
        )
    };
}

impl PostgresStore {
    pub(crate) async fn read_next_retry_at(
        &self,
        run: Option<RunId>,
    ) -> StoreResult<Option<Timestamp>> {
        let at: Option<PgTime> = sqlx::query_scalar(
            "SELECT min(scheduled_at) FROM steps \
             WHERE state = 'retryable' AND ($1::uuid IS NULL OR run_id = $1)",
        )
        .bind(run.map(|r| r.0))
        .fetch_one(&self.pool)
        .await
        .db()?;
        Ok(at.map(|t| t.0))
    }

    pub(crate) async fn read_workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        let rows =
            sqlx::query("SELECT id, host, pid, started_at, heartbeat_at FROM workers ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .db()?;
        rows.iter().map(codec::worker).collect()
    }

    pub(crate) async fn read_run(&self, id: RunId) -> StoreResult<Option<RunRecord>> {
        let sql = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");
        let row = sqlx::query(sql)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .db()?;
        let Some(row) = row else { return Ok(None) };
        let counts = step_counts(&self.pool, &[id.0]).await?;
        run_record(&row, &counts).map(Some)
    }

    pub(crate) async fn read_runs(&self, limit: u32) -> StoreResult<Vec<RunRecord>> {
        let sql = concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        let rows = sqlx::query(sql)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
        let ids: Vec<Uuid> = rows
            .iter()
            .map(|row| row.try_get("id").db())
            .collect::<StoreResult<_>>()?;
        let counts = step_counts(&self.pool, &ids).await?;
        rows.iter().map(|row| run_record(row, &counts)).collect()
    }

    pub(crate) async fn read_steps(&self, run: RunId) -> StoreResult<Vec<StepRecord>> {
        let rows = sqlx::query(
            "SELECT id, run_id, asset_key, partition_key, state, attempt, max_attempts, worker, \
                 started_at, finished_at, error \
             FROM steps WHERE run_id = $1 ORDER BY id",
        )
        .bind(run.0)
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(codec::step).collect()
    }

    pub(crate) async fn read_step_counts(&self, run: RunId) -> StoreResult<StepCounts> {
        let counts = step_counts(&self.pool, &[run.0]).await?;
        Ok(counts.get(&run.0).copied().unwrap_or_default())
    }

    pub(crate) async fn read_running_workers(&self, run: RunId) -> StoreResult<Vec<WorkerId>> {
        let workers: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT worker FROM steps \
             WHERE run_id = $1 AND state = 'running' AND worker IS NOT NULL ORDER BY worker",
        )
        .bind(run.0)
        .fetch_all(&self.pool)
        .await
        .db()?;
        Ok(workers.into_iter().map(WorkerId).collect())
    }

    /// Events of a run after `after`, in id order, up to the horizon (see
    /// [`horizon`]).
    pub(crate) async fn read_events(
        &self,
        run: RunId,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let horizon = horizon(&self.pool).await?;
        let rows = sqlx::query(
            "SELECT id, run_id, step_id, at, kind, level, message, data FROM events \
             WHERE run_id = $1 AND id > $2 AND id <= $4 ORDER BY id LIMIT $3",
        )
        .bind(run.0)
        .bind(after.map_or(0, |e| e.0))
        .bind(i64::from(limit))
        .bind(horizon)
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(codec::event).collect()
    }

    pub(crate) async fn read_materialization(
        &self,
        id: MaterializationId,
    ) -> StoreResult<Option<MaterializationRecord>> {
        let sql = concat!(
            "SELECT ",
            materialization_columns!(),
            " FROM materializations m WHERE m.id = $1"
        );
        let row = sqlx::query(sql)
            .bind(id.0)
            .fetch_optional(&self.pool)
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
        let assets: Vec<&str> = targets.iter().map(|t| t.asset.as_str()).collect();
        let partitions: Vec<Option<&str>> = targets
            .iter()
            .map(|t| t.partition.as_ref().map(|p| p.as_str()))
            .collect();

        // One backward index seek per target; `IS NULL` is its own branch so
        // that an unpartitioned target seeks the index too.
        let sql = concat!(
            "SELECT ",
            materialization_columns!(),
            " FROM unnest($1::text[], $2::text[]) AS t (asset_key, partition_key) \
              CROSS JOIN LATERAL ( \
                  (SELECT x.id FROM materializations x \
                   WHERE t.partition_key IS NOT NULL AND x.asset_key = t.asset_key \
                     AND x.partition_key = t.partition_key \
                   ORDER BY x.id DESC LIMIT 1) \
                  UNION ALL \
                  (SELECT x.id FROM materializations x \
                   WHERE t.partition_key IS NULL AND x.asset_key = t.asset_key \
                     AND x.partition_key IS NULL \
                   ORDER BY x.id DESC LIMIT 1)) AS latest \
              JOIN materializations m ON m.id = latest.id"
        );
        let rows = sqlx::query(sql)
            .bind(&assets)
            .bind(&partitions)
            .fetch_all(&self.pool)
            .await
            .db()?;
        let mut found: HashMap<AssetPartition, MaterializationRecord> = HashMap::new();
        for row in &rows {
            let m = codec::materialization(row)?;
            found.insert(m.target.clone(), m);
        }

        // In the order asked for, each target once.
        Ok(targets.iter().filter_map(|t| found.remove(t)).collect())
    }

    pub(crate) async fn read_partitions(
        &self,
        asset: &AssetKey,
    ) -> StoreResult<Vec<PartitionRecord>> {
        // The latest materialization per partition, and the newest failed
        // step per partition (from the partial index of failed steps).
        let sql = concat!(
            "SELECT DISTINCT ON (m.partition_key) ",
            materialization_columns!(),
            " FROM materializations m WHERE m.asset_key = $1 \
              ORDER BY m.partition_key, m.id DESC"
        );
        let latest = sqlx::query(sql)
            .bind(asset.as_str())
            .fetch_all(&self.pool)
            .await
            .db()?;
        let failures = sqlx::query(
            "SELECT DISTINCT ON (partition_key) partition_key, id, run_id, finished_at, error \
             FROM steps \
             WHERE asset_key = $1 AND state = 'failed' AND finished_at IS NOT NULL \
             ORDER BY partition_key, finished_at DESC, id DESC",
        )
        .bind(asset.as_str())
        .fetch_all(&self.pool)
        .await
        .db()?;

        let latest = latest
            .iter()
            .map(codec::materialization)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut found = Vec::with_capacity(failures.len());
        for row in &failures {
            let key: Option<String> = row.try_get("partition_key").db()?;
            let failure = StepFailure {
                step_id: StepId(row.try_get("id").db()?),
                run_id: codec::run_id(row, "run_id")?,
                at: codec::time(row, "finished_at")?,
                error: row
                    .try_get::<Option<String>, _>("error")
                    .db()?
                    .unwrap_or_default(),
            };
            found.push((key.map(PartitionKey::from), failure));
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

        let rows = sqlx::query(sql)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .db()?;
        rows.iter()
            .map(|row| {
                let edge = LineageEdge {
                    consumer: MaterializationId(row.try_get("edge_consumer").db()?),
                    input: MaterializationId(row.try_get("edge_input").db()?),
                };
                Ok((edge, codec::materialization(row)?))
            })
            .collect()
    }

    pub(crate) async fn read_materializations_of_run(
        &self,
        run: RunId,
    ) -> StoreResult<Vec<MaterializationRecord>> {
        let sql = concat!(
            "SELECT ",
            materialization_columns!(),
            " FROM materializations m WHERE m.run_id = $1 ORDER BY m.id"
        );
        let rows = sqlx::query(sql)
            .bind(run.0)
            .fetch_all(&self.pool)
            .await
            .db()?;
        rows.iter().map(codec::materialization).collect()
    }
}

/// Steps by state for each of `runs`, in one grouped query.
async fn step_counts(pool: &PgPool, runs: &[Uuid]) -> StoreResult<HashMap<Uuid, StepCounts>> {
    let rows = sqlx::query(
        "SELECT run_id, state, count(*) AS n FROM steps \
         WHERE run_id = ANY($1) GROUP BY run_id, state",
    )
    .bind(runs)
    .fetch_all(pool)
    .await
    .db()?;

    let mut counts: HashMap<Uuid, StepCounts> = HashMap::new();
    for row in rows {
        let run: Uuid = row.try_get("run_id").db()?;
        let state: String = row.try_get("state").db()?;
        let n: i64 = row.try_get("n").db()?;
        counts
            .entry(run)
            .or_default()
            .add(codec::step_state(&state)?, n.unsigned_abs());
    }
    Ok(counts)
}

fn run_record(row: &PgRow, counts: &HashMap<Uuid, StepCounts>) -> StoreResult<RunRecord> {
    let id = codec::run_id(row, "id")?;
    let state: String = row.try_get("state").db()?;
    let trigger: String = row.try_get("triggered_by").db()?;
    Ok(RunRecord {
        id,
        state: state.parse()?,
        trigger: trigger.parse()?,
        user: row.try_get("user_name").db()?,
        description: row.try_get("description").db()?,
        created_at: codec::time(row, "created_at")?,
        finished_at: codec::opt_time(row, "finished_at")?,
        max_parallel: row
            .try_get::<Option<i32>, _>("max_parallel")
            .db()?
            .map(|n| codec::count("runs.max_parallel", n))
            .transpose()?,
        steps: match row
            .try_get::<Option<serde_json::Value>, _>("pruned_counts")
            .db()?
        {
            Some(pruned) => serde_json::from_value(pruned).map_err(|err| {
                flowstone_core::StoreError::Corrupt(format!(
                    "runs.pruned_counts of run {id}: {err}"
                ))
            })?,
            None => counts.get(&id.0).copied().unwrap_or_default(),
        },
    })
}

impl PostgresStore {
    /// Events of every run after `after`, in id order, up to the horizon
    /// (the live feed).
    pub(crate) async fn read_events_since(
        &self,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let horizon = horizon(&self.pool).await?;
        let rows = sqlx::query(
            "SELECT id, run_id, step_id, at, kind, level, message, data FROM events \
             WHERE id > $1 AND id <= $3 ORDER BY id LIMIT $2",
        )
        .bind(after.map_or(0, |e| e.0))
        .bind(i64::from(limit))
        .bind(horizon)
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(codec::event).collect()
    }
}

impl PostgresStore {
    /// The horizon: every event at or below it is settled.
    pub(crate) async fn read_events_position(&self) -> StoreResult<Option<EventId>> {
        let horizon = horizon(&self.pool).await?;
        Ok((horizon > 0).then_some(EventId(horizon)))
    }
}

/// The highest event id below which every event is settled: committed (and
/// visible to any statement that starts after this returns) or never to be.
///
/// Writers of events take a shared advisory lock whose keys say the last
/// event id handed out when they began (`write.rs`, `BEGIN_EVENTS`); their
/// own events get higher ids. The horizon is the lower of what the events
/// sequence had handed out and the lowest bound of the writers still open,
/// read in that order (the lock list is read in a subquery that needs the
/// sequence's value): an id at or below it was handed out before the locks
/// were read, by a transaction that held no lock any more, so it had ended.
/// PostgreSQL drops a transaction's locks only after its commit is visible,
/// and the caller's next statement takes a newer snapshot.
///
/// Scoped to this database (advisory locks are per database), unlike the
/// snapshot's xmin, which any transaction on the server holds back. Covers
/// the events this store writes: a row inserted by other means (by hand, by
/// a FlowStone from before the horizon) is read as before, by id alone.
async fn horizon(pool: &PgPool) -> StoreResult<i64> {
    const HORIZON: &str = concat!(
        "SELECT least(s.v, ( \
             SELECT min(((l.classid::int8 - ",
        crate::write::event_lock_class!(),
        ") << 31) | l.objid::int8) \
             FROM pg_locks AS l \
             WHERE s.v IS NOT NULL AND l.locktype = 'advisory' AND l.objsubid = 2 \
               AND l.database = (SELECT oid FROM pg_database \
                                 WHERE datname = current_database()) \
               AND l.classid::int8 >= ",
        crate::write::event_lock_class!(),
        ")) \
         FROM (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS v \
               FROM events_id_seq) AS s"
    );
    let horizon: Option<i64> = sqlx::query_scalar(HORIZON).fetch_one(pool).await.db()?;
    Ok(horizon.unwrap_or(0))
}
