//! The embedded SQLite store: FlowStone's default [`Store`], one file on local
//! disk, no setup.
//!
//! # How it holds the contract
//!
//! - One writer. Every change goes through a single connection, inside a
//!   `BEGIN IMMEDIATE` transaction, so writers queue in this process (on a
//!   mutex) and across processes (on SQLite's lock, with a busy timeout) instead
//!   of failing half-way with `SQLITE_BUSY`. Reads use a small separate pool
//!   and, thanks to WAL, never wait for the writer.
//! - Set-based batches. A batch of claims, completions or failures is a fixed
//!   handful of statements whatever its size: the items travel as one JSON array
//!   parameter read with `jsonb_each` (parsed once per statement), so the cost
//!   per step is SQLite's work, not a round trip to the connection's thread.
//! - Fencing. Each step state change is one `UPDATE` whose `WHERE` checks the
//!   prior state (and, for a running step, the attempt and the worker). An item
//!   that matches no row is [`Outcome::Fenced`] and nothing else is written for
//!   it; the other items of the batch are recorded.
//! - Crash safety. The database runs in WAL mode with `synchronous=NORMAL`: a
//!   process killed at any point leaves every committed transaction whole and no
//!   uncommitted one visible (a power cut may lose the last commits, never
//!   corrupt).
//!
//! The schema is in `migrations/`, applied with `sqlx::migrate!` at open; its
//! header documents the conventions (microsecond timestamps, UUID run ids).
//!
//! [`Outcome::Fenced`]: flowstone_core::store::Outcome::Fenced

mod codec;
mod location;
mod maintain;
mod read;
mod tokens;
mod write;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use flowstone_core::store::{
    ClaimRequest, ClaimedStep, Completion, EventRecord, Failure, Lease, LineageEdge,
    MaterializationRecord, NewEvent, NewRun, Notice, Outcome, PartitionRecord, Rescued, RunRecord,
    RunState, StepCounts, StepRecord, StoreError, StoreResult, WorkerRecord,
};
use flowstone_core::token::{NewToken, TokenRecord};
use flowstone_core::{
    AssetKey, AssetPartition, EventId, MaterializationId, RunId, StepId, Store, WorkerId,
};
use jiff::Timestamp;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Sqlite};
use tokio::sync::{Mutex, MutexGuard};

pub use location::DEFAULT_FILE_NAME;

/// The schema, compiled in from `migrations/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Read connections; WAL lets them all read while the writer writes. Two are
/// enough for one worker loop (its reads are batched); each costs a thread and
/// a page cache.
const READERS: u32 = 2;

/// FlowStone's store in one SQLite file.
///
/// Cheap to share behind an `Arc`; all methods take `&self`.
pub struct SqliteStore {
    /// What [`Store::describe`] prints.
    describe: String,
    /// The only connection that writes. Holding the mutex is holding the right
    /// to write in this process; every write opens `BEGIN IMMEDIATE` on it.
    writer: Mutex<SqliteConnection>,
    /// Connections for reads; `None` for an in-memory database, which only the
    /// writer's connection can see, so reads take the writer's mutex instead.
    readers: Option<SqlitePool>,
    /// Notices of this process's commits that appended events; other
    /// processes sharing the file see its changes by polling.
    notices: tokio::sync::broadcast::Sender<Notice>,
    /// Whether this store's last limited claim saw limited work (steps of a
    /// limited queue, or a capped run): claims then start with a limited claim.
    pub(crate) limited_seen: std::sync::atomic::AtomicBool,
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `location` and brings its
    /// schema up to date.
    ///
    /// `location` is `sqlite://PATH`, `sqlite:PATH` or a plain `PATH`. A path
    /// ending in `.db`, `.sqlite` or `.sqlite3` names the database file; any
    /// other path names a directory, whose database is `flowstone.db`. Missing
    /// directories are created. `sqlite::memory:` opens a private in-memory
    /// database, like [`SqliteStore::in_memory`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] when the location is malformed, its directory
    /// cannot be created, the file is not a SQLite database, or it was written
    /// by a newer FlowStone; [`StoreError::Backend`] when a migration fails.
    pub async fn open(location: &str) -> StoreResult<SqliteStore> {
        match location::parse(location)? {
            location::Location::Memory => SqliteStore::in_memory().await,
            location::Location::File(path) => SqliteStore::open_file(&path).await,
        }
    }

    /// A fresh private database in memory, gone when the store is dropped; for
    /// tests.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if SQLite cannot start.
    pub async fn in_memory() -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let mut writer = SqliteConnection::connect_with(&options)
            .await
            .map_err(StoreError::backend)?;
        migrate(&mut writer, "an in-memory database").await?;
        Ok(SqliteStore {
            describe: "sqlite::memory:".to_owned(),
            writer: Mutex::new(writer),
            readers: None,
            notices: tokio::sync::broadcast::channel(1024).0,
            limited_seen: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn open_file(path: &Path) -> StoreResult<SqliteStore> {
        // Create the directory first, so SQLite's "unable to open" never hides
        // a missing parent.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| {
                StoreError::Config(format!(
                    "cannot create the store directory {}: {err}",
                    dir.display()
                ))
            })?;
        }
        let shown = path.display().to_string();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("cache_size", "-32768")
            .pragma("temp_store", "memory")
            .row_buffer_size(1024);

        // The writer connects first: it creates the file and the schema.
        let mut writer = SqliteConnection::connect_with(&options)
            .await
            .map_err(|err| {
                StoreError::Config(format!("cannot open the SQLite database {shown}: {err}"))
            })?;
        migrate(&mut writer, &shown).await?;

        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .test_before_acquire(false)
            .connect_with(options.create_if_missing(false))
            .await
            .map_err(|err| {
                StoreError::Config(format!("cannot open the SQLite database {shown}: {err}"))
            })?;

        let describe = format!("sqlite://{}", absolute(path).display());
        tracing::debug!(store = %describe, "opened");
        Ok(SqliteStore {
            describe,
            writer: Mutex::new(writer),
            readers: Some(readers),
            notices: tokio::sync::broadcast::channel(1024).0,
            limited_seen: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends one notice per distinct run, after a commit that appended
    /// events to them.
    pub(crate) fn notify(&self, runs: impl IntoIterator<Item = RunId>) {
        if self.notices.receiver_count() == 0 {
            return;
        }
        let mut sent = std::collections::HashSet::new();
        for run in runs {
            if sent.insert(run) {
                let _ = self.notices.send(Notice { run });
            }
        }
    }

    /// A connection to read with.
    async fn reader(&self) -> StoreResult<ReadConn<'_>> {
        match &self.readers {
            Some(pool) => Ok(ReadConn::Pooled(
                pool.acquire().await.map_err(StoreError::backend)?,
            )),
            None => Ok(ReadConn::Writer(self.writer.lock().await)),
        }
    }
}

/// Frees the unused pages of one connection's cache; a failure only means
/// the memory is kept, so it is logged, not returned.
async fn shrink_memory(conn: &mut SqliteConnection) {
    if let Err(err) = sqlx::query("PRAGMA shrink_memory").execute(conn).await {
        tracing::debug!(error = %err, "cannot shrink the connection's memory");
    }
}

async fn migrate(conn: &mut SqliteConnection, shown: &str) -> StoreResult<()> {
    use sqlx::migrate::MigrateError;

    MIGRATOR
        .run_direct(None, conn, false)
        .await
        .map_err(|err| match err {
            MigrateError::VersionMissing(version) => StoreError::Config(format!(
                "the SQLite database {shown} has schema version {version}, which this FlowStone \
             does not know: it was written by a newer version"
            )),
            MigrateError::Execute(sqlx::Error::Database(db))
                if db.code().as_deref() == Some("26") =>
            {
                // SQLITE_NOTADB: the first read of the file found no database.
                StoreError::Config(format!(
                    "{shown} is not a SQLite database; give a new or FlowStone-made `.db` file, \
                 or a directory"
                ))
            }
            other => StoreError::backend(other),
        })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A read connection: from the pool, or the writer's for an in-memory database.
enum ReadConn<'a> {
    Pooled(PoolConnection<Sqlite>),
    Writer(MutexGuard<'a, SqliteConnection>),
}

impl Deref for ReadConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            ReadConn::Pooled(conn) => conn,
            ReadConn::Writer(conn) => conn,
        }
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            ReadConn::Pooled(conn) => &mut *conn,
            ReadConn::Writer(conn) => &mut *conn,
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        Some(self.notices.subscribe())
    }

    async fn release_memory(&self) {
        // Idle read connections are closed: each holds a copy of the schema,
        // its prepared statements, a page cache and a thread. The pool opens
        // them again on the next read (about a millisecond). The writer
        // stays open, and `shrink_memory` frees the pages of its cache that
        // no statement holds. Busy connections are left alone.
        if let Some(pool) = &self.readers {
            let mut idle = Vec::new();
            while let Some(conn) = pool.try_acquire() {
                idle.push(conn);
            }
            for conn in idle {
                if let Err(err) = conn.close().await {
                    tracing::debug!(error = %err, "cannot close an idle read connection");
                }
            }
        }
        if let Ok(mut writer) = self.writer.try_lock() {
            shrink_memory(&mut writer).await;
        }
    }

    async fn create_run(&self, run: NewRun) -> StoreResult<RunRecord> {
        self.write_create_run(run).await
    }

    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedStep>> {
        self.write_claim(req).await
    }

    async fn complete(&self, batch: Vec<Completion>) -> StoreResult<Vec<Outcome>> {
        self.write_complete(batch).await
    }

    async fn complete_and_claim(
        &self,
        batch: Vec<Completion>,
        next: ClaimRequest,
    ) -> StoreResult<(Vec<Outcome>, Vec<ClaimedStep>)> {
        self.write_complete_and_claim(batch, next).await
    }

    async fn fail(&self, batch: Vec<Failure>) -> StoreResult<Vec<Outcome>> {
        self.write_fail(batch).await
    }

    async fn release(
        &self,
        run: Option<RunId>,
        workers: &[WorkerId],
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<flowstone_core::StepId>> {
        self.write_release(run, workers, reason, now).await
    }

    async fn set_run_state(
        &self,
        run: RunId,
        from: &[RunState],
        to: RunState,
        now: Timestamp,
    ) -> StoreResult<bool> {
        self.write_run_state(run, from, to, now).await
    }

    async fn cancel_run(&self, run: RunId, now: Timestamp) -> StoreResult<bool> {
        self.write_cancel_run(run, now).await
    }

    async fn next_retry_at(&self, run: Option<RunId>) -> StoreResult<Option<Timestamp>> {
        self.read_next_retry_at(run).await
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> StoreResult<()> {
        self.write_register_worker(worker).await
    }

    async fn release_unknown(
        &self,
        worker: &WorkerId,
        known: &[StepId],
        claimed_before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<StepId>> {
        self.write_release_unknown(worker, known, claimed_before, now)
            .await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerId,
        now: Timestamp,
        lease: jiff::SignedDuration,
    ) -> StoreResult<bool> {
        self.write_heartbeat(worker, now, lease).await
    }

    async fn workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        self.read_workers().await
    }

    async fn deregister_worker(&self, worker: &WorkerId) -> StoreResult<()> {
        self.write_deregister_worker(worker).await
    }

    async fn create_token(&self, token: NewToken) -> StoreResult<TokenRecord> {
        self.write_create_token(token).await
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.read_tokens().await
    }

    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        self.read_token_by_hash(hash).await
    }

    async fn has_active_tokens(&self, now: Timestamp) -> StoreResult<bool> {
        self.read_has_active_tokens(now).await
    }

    async fn revoke_token(&self, name: &str, now: Timestamp) -> StoreResult<Option<TokenRecord>> {
        self.write_revoke_token(name, now).await
    }

    async fn token_used(&self, id: i64, now: Timestamp) -> StoreResult<()> {
        self.write_token_used(id, now).await
    }

    async fn run(&self, id: RunId) -> StoreResult<Option<RunRecord>> {
        self.read_run(id).await
    }

    async fn runs(&self, limit: u32) -> StoreResult<Vec<RunRecord>> {
        self.read_runs(limit).await
    }

    async fn steps(&self, run: RunId) -> StoreResult<Vec<StepRecord>> {
        self.read_steps(run).await
    }

    async fn step_counts(&self, run: RunId) -> StoreResult<StepCounts> {
        self.read_step_counts(run).await
    }

    async fn has_live_steps(&self, run: RunId) -> StoreResult<bool> {
        self.read_has_live_steps(run).await
    }

    async fn running_workers(&self, run: RunId) -> StoreResult<Vec<WorkerId>> {
        self.read_running_workers(run).await
    }

    async fn append_events(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        self.write_events(events).await
    }

    async fn events(
        &self,
        run: RunId,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        self.read_events(run, after, limit).await
    }

    async fn materialization(
        &self,
        id: MaterializationId,
    ) -> StoreResult<Option<MaterializationRecord>> {
        self.read_materialization(id).await
    }

    async fn latest_materializations(
        &self,
        targets: &[AssetPartition],
    ) -> StoreResult<Vec<MaterializationRecord>> {
        self.read_latest_materializations(targets).await
    }

    async fn partitions(&self, asset: &AssetKey) -> StoreResult<Vec<PartitionRecord>> {
        self.read_partitions(asset).await
    }

    async fn inputs_of(
        &self,
        of: &[MaterializationId],
    ) -> StoreResult<Vec<(LineageEdge, MaterializationRecord)>> {
        self.read_lineage(of, read::Direction::Inputs).await
    }

    async fn consumers_of(
        &self,
        of: &[MaterializationId],
    ) -> StoreResult<Vec<(LineageEdge, MaterializationRecord)>> {
        self.read_lineage(of, read::Direction::Consumers).await
    }

    async fn materializations_of_run(&self, run: RunId) -> StoreResult<Vec<MaterializationRecord>> {
        self.read_materializations_of_run(run).await
    }

    async fn live_assets(&self) -> StoreResult<Vec<AssetKey>> {
        self.read_live_assets().await
    }

    async fn live_steps(
        &self,
        targets: &[AssetPartition],
    ) -> StoreResult<Vec<(AssetPartition, RunId)>> {
        self.read_live_steps(targets).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &WorkerId,
        ttl: jiff::SignedDuration,
        now: Timestamp,
    ) -> StoreResult<Option<Lease>> {
        self.write_acquire_lease(name, holder, ttl, now).await
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.write_release_lease(lease).await
    }

    async fn lease(&self, name: &str) -> StoreResult<Option<Lease>> {
        self.read_lease(name).await
    }

    async fn rescue_expired(&self, lease: &Lease, now: Timestamp) -> StoreResult<Rescued> {
        self.write_rescue_expired(lease, now).await
    }

    async fn forget_workers(
        &self,
        lease: &Lease,
        before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.write_forget_workers(lease, before, now).await
    }

    async fn prune_runs(
        &self,
        lease: &Lease,
        before: Timestamp,
        limit: u32,
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.write_prune_runs(lease, before, limit, now).await
    }

    async fn runs_without_live_steps(&self, limit: u32) -> StoreResult<Vec<RunId>> {
        self.read_runs_without_live_steps(limit).await
    }

    async fn events_position(&self) -> StoreResult<Option<EventId>> {
        self.read_events_position().await
    }

    async fn events_since(
        &self,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        self.read_events_since(after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle server's `release_memory` closes the idle read connections
    /// (the pool opens them again on the next read) and keeps the writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_memory_closes_idle_readers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        let pool = store.readers.clone().expect("a file store has readers");
        // Two reads at once open both read connections.
        let (a, b) = tokio::join!(store.runs(10), store.runs(10));
        a.unwrap();
        b.unwrap();
        // A connection goes back to the pool a moment after its read.
        for _ in 0..200 {
            if pool.num_idle() == pool.size() as usize {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            pool.num_idle(),
            2,
            "both read connections are open and idle"
        );

        store.release_memory().await;
        assert_eq!(pool.size(), 0, "every idle read connection is closed");
        assert!(store.runs(10).await.unwrap().is_empty(), "reads go on");
        assert!(pool.size() > 0, "the pool opened a connection again");
    }
}
