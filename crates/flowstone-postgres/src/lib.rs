//! The PostgreSQL store: FlowStone's [`Store`] in one database that worker
//! processes on many machines share.
//!
//! # How it holds the contract
//!
//! - Claims skip what others hold. A claim is one statement: a CTE picks the
//!   ready steps in claim order (priority, then schedule, then id) with
//!   `FOR UPDATE SKIP LOCKED`, and the update takes them. Two claimers never
//!   take the same step and never wait on each other.
//! - Set-based batches. A batch of completions or failures is one transaction
//!   of a fixed handful of statements whatever its size: the items travel as
//!   one array per column, read with `unnest`.
//! - Fencing. Each step state change is one `UPDATE` whose `WHERE` checks the
//!   prior state (and, for a running step, the attempt and the worker). An item
//!   that matches no row is [`Outcome::Fenced`] and nothing else is written for
//!   it; the other items of the batch are recorded.
//! - No deadlocks between batches. Statements that change several steps lock
//!   them in id order first, so two batches releasing (or skipping) the same
//!   downstream steps queue one behind the other.
//! - The database clock for leases and due retries (`now()`), so that workers
//!   whose clocks disagree agree on who holds a step; see `write.rs`.
//!
//! The schema is in `migrations/`, applied with `sqlx::migrate!` at connect
//! (under sqlx's advisory lock, so processes starting together migrate once).
//!
//! [`Outcome::Fenced`]: flowstone_core::store::Outcome::Fenced

mod codec;
mod maintain;
mod read;
#[cfg(feature = "testing")]
pub mod testing;
mod tokens;
mod url;
mod write;

use std::str::FromStr;
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
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

pub use url::redact;

/// The schema, compiled in from `migrations/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long connecting may take before the store gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per process. A worker holds one per claim or batch in flight,
/// and batches, so a handful serves a worker of any concurrency.
const POOL_SIZE: u32 = 8;

/// Connections per process for claims on their own (`claims`).
const CLAIM_POOL_SIZE: u32 = 4;

/// Completion batches a worker loop may have committing at once; see
/// [`Store::commits_in_flight`].
const COMMITS_IN_FLIGHT: usize = 2;

/// FlowStone's store in a PostgreSQL database.
///
/// Cheap to share behind an `Arc`; all methods take `&self`.
pub struct PostgresStore {
    /// What [`Store::describe`] prints: the URL without its password.
    describe: String,
    pool: PgPool,
    /// Connections for claims on their own ([`Store::claim`]), whose
    /// commits do not wait for the log flush (`synchronous_commit = off`);
    /// see `write_claim` for why that is safe. Nothing else uses them.
    claims: PgPool,
    /// Notices from the `flowstone` channel, fed by one listening connection
    /// started at the first call to [`Store::notices`].
    notices: tokio::sync::broadcast::Sender<Notice>,
    listening: std::sync::OnceLock<()>,
    /// Whether this store's last limited claim saw limited work (steps of a
    /// limited queue, or a capped run): claims then start with a limited claim.
    pub(crate) limited_seen: std::sync::atomic::AtomicBool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`,
    /// or `postgresql://`, with libpq's query parameters such as `sslmode`) and
    /// brings its schema up to date.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] when the URL is malformed, the server cannot be
    /// reached or refuses the login, or the schema was written by a newer
    /// FlowStone; [`StoreError::Backend`] when a migration fails. Messages name
    /// the URL without its password.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        let shown = redact(url);
        let options = PgConnectOptions::from_str(url.trim()).map_err(|err| {
            StoreError::Config(format!(
                "invalid PostgreSQL URL {shown}: {err}; expected \
                 postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ))
        })?;
        // A statement slower than a second is worth a debug line, not a
        // warning on every user's terminal (a loaded machine makes some).
        let options = options
            .application_name("flowstone")
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let cannot_connect = |err: &dyn std::fmt::Display| {
            StoreError::Config(format!("cannot connect to PostgreSQL at {shown}: {err}"))
        };

        // One connection first: it says plainly why a server cannot be
        // reached (a pool would retry until its timeout), and migrates.
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| cannot_connect(&format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|err| cannot_connect(&err))?;
        migrate(&mut conn, &shown).await?;
        conn.close().await.map_err(StoreError::backend)?;

        let claims = PgPoolOptions::new()
            .max_connections(CLAIM_POOL_SIZE)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options);
        tracing::debug!(store = %shown, "opened");
        Ok(PostgresStore {
            describe: shown,
            pool,
            claims,
            notices: tokio::sync::broadcast::channel(1024).0,
            listening: std::sync::OnceLock::new(),
            limited_seen: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the task that LISTENs on the `flowstone` channel and forwards
    /// each notification as a [`Notice`]; it reconnects after a lost
    /// connection (notices sent meanwhile are lost; callers also poll) and
    /// ends when the store is dropped.
    fn start_listening(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.pool.clone();
        let sender = self.notices.downgrade();
        let shown = self.describe.clone();
        runtime.spawn(async move {
            loop {
                match listen(&pool, &sender).await {
                    Ok(()) => return,
                    Err(err) => {
                        tracing::warn!(store = %shown, error = %err,
                                       "LISTEN connection lost; reconnecting in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                if sender.upgrade().is_none() {
                    return;
                }
            }
        });
    }
}

/// Forwards notifications until the store is dropped (`Ok`) or the
/// connection fails.
async fn listen(
    pool: &PgPool,
    sender: &tokio::sync::broadcast::WeakSender<Notice>,
) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen("flowstone").await?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
        let Some(sender) = sender.upgrade() else {
            return Ok(());
        };
        match next {
            // Quiet for a while: check the store is still there.
            Err(_) => continue,
            Ok(Err(err)) => return Err(err),
            // The connection was lost and re-established: notices may have
            // been missed; the workers' polling covers them.
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(notification))) => match uuid::Uuid::parse_str(notification.payload()) {
                Ok(run) => {
                    let _ = sender.send(Notice { run: RunId(run) });
                }
                Err(_) => tracing::debug!(payload = notification.payload(), "odd notice"),
            },
        }
    }
}

async fn migrate(conn: &mut PgConnection, shown: &str) -> StoreResult<()> {
    use sqlx::migrate::MigrateError;

    MIGRATOR.run(conn).await.map_err(|err| match err {
        MigrateError::VersionMissing(version) => StoreError::Config(format!(
            "the PostgreSQL database {shown} has schema version {version}, which this \
             FlowStone does not know: it was written by a newer version"
        )),
        other => StoreError::backend(other),
    })
}

#[async_trait]
impl Store for PostgresStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        let receiver = self.notices.subscribe();
        self.listening.get_or_init(|| self.start_listening());
        Some(receiver)
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

    /// Two: the log flushes of two batches overlap (or are one), and claims
    /// on their own do not wait for a flush (see `write_claim`).
    fn commits_in_flight(&self) -> usize {
        COMMITS_IN_FLIGHT
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
    ) -> StoreResult<Vec<StepId>> {
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
        _now: Timestamp,
    ) -> StoreResult<Option<Lease>> {
        self.write_acquire_lease(name, holder, ttl).await
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
        _now: Timestamp,
    ) -> StoreResult<u64> {
        self.write_prune_runs(lease, before, limit).await
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
