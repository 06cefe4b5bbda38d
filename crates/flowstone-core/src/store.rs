//! The store contract: runs, steps (the queue), events, materializations and
//! lineage edges, behind one trait that the SQLite and PostgreSQL backends
//! implement.
//!
//! # Guarantees every backend gives
//!
//! - Every state change of a step is one statement that checks the prior state
//!   (and, for a running step, the attempt and the worker that claimed it), so a
//!   worker that lost its claim can never overwrite a newer state.
//! - [`Store::complete`] records, for each step in the batch, the materialization,
//!   its lineage edges, its events and the release of downstream steps in the same
//!   transaction as the step's move to `completed`. A failure anywhere rolls back
//!   the whole batch: nothing is half-written.
//! - A step is `available` only once all of its upstream steps in the run have
//!   completed; a failed step moves its pending downstream steps, transitively, to
//!   `skipped` with the cause.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::ids::{
    AssetKey, AssetPartition, EventId, MaterializationId, PartitionKey, RunId, StepId, WorkerId,
};
use crate::token::{NewToken, TokenRecord};

/// What went wrong inside a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, or a statement failed.
    #[error("store error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A row that must exist does not, e.g. `runs resume` of an unknown run.
    #[error("{0}")]
    NotFound(String),
    /// The store URL or location is not usable.
    #[error("{0}")]
    Config(String),
    /// A row holds a value this version cannot read.
    #[error("corrupt store row: {0}")]
    Corrupt(String),
    /// The change would break a rule the store keeps across callers, e.g. a
    /// second live step for an asset partition that another run has queued.
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(err))
    }

    /// The [`StoreError::Conflict`] of a run that was refused because some of
    /// its asset partitions have a live step elsewhere: `live` as
    /// [`Store::live_steps`] found them after the refusal (empty when the run
    /// named one asset partition twice, or the other run ended meanwhile).
    pub fn live_conflict(run: &NewRun, live: &[(AssetPartition, RunId)]) -> Self {
        if live.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let repeated = run.steps.iter().find(|s| !seen.insert(&s.target));
            return StoreError::Conflict(match repeated {
                Some(step) => format!(
                    "run {} names {} twice; each asset partition is one step of a run",
                    run.id, step.target
                ),
                None => format!(
                    "run {} was refused: another run queued some of the same asset \
                     partitions at the same moment; plan it again",
                    run.id
                ),
            });
        }
        let examples: Vec<String> = live
            .iter()
            .take(3)
            .map(|(target, other)| format!("{target} in run {other}"))
            .collect();
        StoreError::Conflict(format!(
            "{} asset partition(s) of this run are already queued or running in another run \
             ({}{}); wait for that run, or stop it with `runs cancel RUN`",
            live.len(),
            examples.join(", "),
            if live.len() > examples.len() {
                ", ..."
            } else {
                ""
            },
        ))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Who or what asked for a run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Cli,
    Api,
    Schedule,
    Backfill,
}

/// The state of a step in the queue.
///
/// ```text
/// pending -> available -> running -> completed
///                            |  \--> retryable -> running ...
///                            \----> failed       (downstream pending -> skipped)
/// ```
/// `cancelled` ends a step that never ran because its run was cancelled.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Available,
    Running,
    Retryable,
    Completed,
    Failed,
    Skipped,
    Cancelled,
}

/// The state of a run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Steps are queued or running.
    Running,
    /// Every step completed.
    Succeeded,
    /// Every step ended and at least one failed or was skipped.
    Failed,
    /// Stopped on request; `runs resume` continues it.
    Interrupted,
    /// Cancelled; its steps that had not run are `cancelled`.
    Cancelled,
}

macro_rules! str_enum {
    ($ty:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),* }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = StoreError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($ty::$variant),)*
                    other => Err(StoreError::Corrupt(format!(
                        concat!("unknown ", stringify!($ty), " {:?}"), other
                    ))),
                }
            }
        }
    };
}

str_enum!(Trigger { Cli => "cli", Api => "api", Schedule => "schedule", Backfill => "backfill" });
str_enum!(StepState {
    Pending => "pending",
    Available => "available",
    Running => "running",
    Retryable => "retryable",
    Completed => "completed",
    Failed => "failed",
    Skipped => "skipped",
    Cancelled => "cancelled",
});
str_enum!(RunState {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Interrupted => "interrupted",
    Cancelled => "cancelled",
});

impl StepState {
    /// A state a step never leaves by itself.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Completed | StepState::Failed | StepState::Skipped | StepState::Cancelled
        )
    }
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

/// A run to insert, with its steps.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub id: RunId,
    pub trigger: Trigger,
    pub user: String,
    /// A short description of what was asked, e.g. `backfill raw_flights 2013-01-01..2013-01-31`.
    pub description: String,
    pub created_at: Timestamp,
    /// At most this many of the run's steps running at once, across every
    /// worker; `None` leaves it to the workers' own concurrency.
    pub max_parallel: Option<u32>,
    pub steps: Vec<NewStep>,
}

impl NewRun {
    /// Each step's upstream indexes, sorted and without repeats, checked to
    /// name other steps of this run; every backend calls this before it
    /// writes anything.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] naming the first step whose upstream index is
    /// out of range or itself.
    pub fn checked_upstream(&self) -> StoreResult<Vec<Vec<usize>>> {
        let n = self.steps.len();
        let mut upstream: Vec<Vec<usize>> = Vec::with_capacity(n);
        for (i, step) in self.steps.iter().enumerate() {
            let mut ups = step.upstream.clone();
            ups.sort_unstable();
            ups.dedup();
            if let Some(&bad) = ups.iter().find(|&&u| u >= n || u == i) {
                return Err(StoreError::NotFound(format!(
                    "step {i} ({}) of run {} names upstream step {bad}, which is {}; upstream \
                     steps are indexes of other steps in the run's list of {n}",
                    step.target,
                    self.id,
                    if bad == i { "itself" } else { "not in the run" },
                )));
            }
            upstream.push(ups);
        }
        Ok(upstream)
    }

    /// The record [`Store::create_run`] returns: the run `running`, steps
    /// without upstream `available`, the others `pending`.
    pub fn into_record(self, upstream: &[Vec<usize>]) -> RunRecord {
        let mut steps = StepCounts::default();
        for ups in upstream {
            let state = if ups.is_empty() {
                StepState::Available
            } else {
                StepState::Pending
            };
            steps.add(state, 1);
        }
        RunRecord {
            id: self.id,
            state: RunState::Running,
            trigger: self.trigger,
            user: self.user,
            description: self.description,
            created_at: self.created_at,
            finished_at: None,
            max_parallel: self.max_parallel,
            steps,
        }
    }
}

/// One step of a [`NewRun`]; `upstream` holds indexes into the run's step list.
#[derive(Clone, Debug)]
pub struct NewStep {
    pub target: AssetPartition,
    pub upstream: Vec<usize>,
    pub max_attempts: u32,
    pub priority: i32,
    /// The asset's queue ([`DEFAULT_QUEUE`] unless it names one).
    pub queue: String,
}

/// The queue of an asset that names none.
pub const DEFAULT_QUEUE: &str = "default";

/// A step a worker has claimed; it is `running` with `attempt` until the worker
/// completes or fails it, or the claim is released.
#[derive(Clone, Debug)]
pub struct ClaimedStep {
    pub id: StepId,
    pub run_id: RunId,
    pub target: AssetPartition,
    pub attempt: u32,
    pub max_attempts: u32,
    pub trigger: Trigger,
    pub user: String,
}

/// What to claim.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub worker: WorkerId,
    /// Claim only steps of this run; `None` claims from every run.
    pub run: Option<RunId>,
    pub limit: u32,
    pub now: Timestamp,
    /// The claim lasts until `now + lease`; a heartbeat extends it.
    pub lease: jiff::SignedDuration,
    /// Claim only steps of these queues; `None` claims from every queue.
    pub queues: Option<Vec<String>>,
    /// At most this many running steps per queue, across every worker (see
    /// [`QueueLimits`]).
    pub limits: Arc<QueueLimits>,
}

impl ClaimRequest {
    /// The limits of the queues this claim serves, by queue name.
    pub fn served_limits(&self) -> impl Iterator<Item = (&str, u32)> {
        self.limits
            .iter()
            .filter(|(queue, _)| {
                self.queues
                    .as_ref()
                    .is_none_or(|served| served.iter().any(|q| q == *queue))
            })
            .map(|(queue, limit)| (queue.as_str(), *limit))
    }
}

/// Concurrency limits by queue name; a queue not named here has none.
///
/// A limit holds across the whole cluster: a claim counts the queue's running
/// steps, whoever runs them, and takes at most the free slots, serialized with
/// every other claim that involves a limit. Limits come from the claimer's
/// [`Definitions`](crate::Definitions), so every worker should run the same
/// ones; a claim applies its own.
pub type QueueLimits = BTreeMap<String, u32>;

/// A materialization to record.
#[derive(Clone, Debug)]
pub struct NewMaterialization {
    pub target: AssetPartition,
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub trigger: Trigger,
    pub user: String,
    pub code_version: String,
    pub data_version: String,
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Where the I/O manager put the value, e.g. a file path.
    pub location: String,
    /// The name of the I/O manager that stored it.
    pub io_manager: String,
}

/// A step that succeeded: its materialization, the materializations it read, and
/// the events it logged.
#[derive(Clone, Debug)]
pub struct Completion {
    pub step: StepId,
    pub attempt: u32,
    pub worker: WorkerId,
    pub materialization: NewMaterialization,
    pub inputs: Vec<MaterializationId>,
    pub events: Vec<NewEvent>,
}

/// A step that failed; with `retry_at` it becomes `retryable` until then,
/// without it `failed`, and its pending downstream steps `skipped`.
#[derive(Clone, Debug)]
pub struct Failure {
    pub step: StepId,
    pub attempt: u32,
    pub worker: WorkerId,
    pub error: String,
    pub retry_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub events: Vec<NewEvent>,
}

/// What became of one item of a [`Store::complete`] or [`Store::fail`] batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Recorded; for a completion, the new materialization's id.
    Recorded(Option<MaterializationId>),
    /// The step was no longer running under this worker and attempt (rescued,
    /// cancelled or completed by someone else); nothing was written for it.
    Fenced,
}

/// What kind of thing an event records.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RunStarted,
    RunFinished,
    RunInterrupted,
    RunResumed,
    StepStarted,
    StepRetrying,
    StepFailed,
    StepSkipped,
    StepReleased,
    Materialized,
    Log,
}

str_enum!(EventKind {
    RunStarted => "run_started",
    RunFinished => "run_finished",
    RunInterrupted => "run_interrupted",
    RunResumed => "run_resumed",
    StepStarted => "step_started",
    StepRetrying => "step_retrying",
    StepFailed => "step_failed",
    StepSkipped => "step_skipped",
    StepReleased => "step_released",
    Materialized => "materialized",
    Log => "log",
});

/// Severity of a log event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

str_enum!(Level { Debug => "debug", Info => "info", Warn => "warn", Error => "error" });

#[derive(Clone, Debug, Serialize)]
pub struct NewEvent {
    pub run_id: RunId,
    pub step_id: Option<StepId>,
    pub at: Timestamp,
    pub kind: EventKind,
    pub level: Level,
    pub message: String,
    pub data: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub id: EventId,
    pub run_id: RunId,
    pub step_id: Option<StepId>,
    pub at: Timestamp,
    pub kind: EventKind,
    pub level: Level,
    pub message: String,
    pub data: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub state: RunState,
    pub trigger: Trigger,
    pub user: String,
    pub description: String,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The run's cap on steps running at once across every worker, if any.
    pub max_parallel: Option<u32>,
    pub steps: StepCounts,
}

/// Steps of a run by state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepCounts {
    pub pending: u64,
    pub available: u64,
    pub running: u64,
    pub retryable: u64,
    pub completed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub cancelled: u64,
}

impl StepCounts {
    pub fn add(&mut self, state: StepState, n: u64) {
        let slot = match state {
            StepState::Pending => &mut self.pending,
            StepState::Available => &mut self.available,
            StepState::Running => &mut self.running,
            StepState::Retryable => &mut self.retryable,
            StepState::Completed => &mut self.completed,
            StepState::Failed => &mut self.failed,
            StepState::Skipped => &mut self.skipped,
            StepState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    pub fn total(&self) -> u64 {
        self.pending
            + self.available
            + self.running
            + self.retryable
            + self.completed
            + self.failed
            + self.skipped
            + self.cancelled
    }

    /// Steps that may still run.
    pub fn live(&self) -> u64 {
        self.pending + self.available + self.running + self.retryable
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub id: StepId,
    pub run_id: RunId,
    pub target: AssetPartition,
    pub state: StepState,
    pub attempt: u32,
    pub max_attempts: u32,
    pub worker: Option<WorkerId>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MaterializationRecord {
    pub id: MaterializationId,
    pub target: AssetPartition,
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub trigger: Trigger,
    pub user: String,
    pub code_version: String,
    pub data_version: String,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub location: String,
    pub io_manager: String,
}

/// One lineage edge: `consumer` read `input`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct LineageEdge {
    pub consumer: MaterializationId,
    pub input: MaterializationId,
}

/// The last word on one partition of an asset: its latest materialization and,
/// if a step for it failed after that, the failure.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionRecord {
    pub partition: Option<PartitionKey>,
    pub latest: Option<MaterializationRecord>,
    pub failure: Option<StepFailure>,
}

impl PartitionRecord {
    /// Builds the per-partition records of [`Store::partitions`] from the
    /// latest materialization of each partition and its failed steps: a
    /// failure is kept when it is newer than the materialization (or there is
    /// none), the newest one winning.
    pub fn merge(
        latest: Vec<MaterializationRecord>,
        failures: Vec<(Option<PartitionKey>, StepFailure)>,
    ) -> Vec<PartitionRecord> {
        let mut records: BTreeMap<Option<PartitionKey>, PartitionRecord> = latest
            .into_iter()
            .map(|m| {
                let partition = m.target.partition.clone();
                (
                    partition.clone(),
                    PartitionRecord {
                        partition,
                        latest: Some(m),
                        failure: None,
                    },
                )
            })
            .collect();
        for (partition, failure) in failures {
            let record = records.entry(partition.clone()).or_insert(PartitionRecord {
                partition,
                latest: None,
                failure: None,
            });
            let after_latest = record
                .latest
                .as_ref()
                .is_none_or(|m| failure.at > m.finished_at);
            let newest = record.failure.as_ref().is_none_or(|f| failure.at >= f.at);
            if after_latest && newest {
                record.failure = Some(failure);
            }
        }
        records.into_values().collect()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StepFailure {
    pub step_id: StepId,
    pub run_id: RunId,
    pub at: Timestamp,
    pub error: String,
}

/// A lease on a named role, such as the leader that runs maintenance.
///
/// `term` grows by one each time the lease passes to another holder, so a
/// holder that lost the lease and comes back can tell, and the store can
/// refuse maintenance done under an old term.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: WorkerId,
    pub term: u64,
    /// Until when the lease holds, by the store's clock.
    pub expires_at: Timestamp,
}

/// What one pass of [`Store::rescue_expired`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Steps put back as `retryable` (due at once), their attempt counted.
    pub retried: Vec<StepId>,
    /// Steps that had used their last attempt: now `failed`, their pending
    /// downstream steps `skipped`.
    pub failed: Vec<StepId>,
}

/// Pushed by a store after a commit that may have made steps of a run
/// claimable (a new run, released downstream steps, a retry, a rescue, a
/// release) or that changed the run's state or failed its steps: a wake-up
/// for idle workers and a cue for live views. Completions that release
/// nothing and appended events alone may push nothing (on PostgreSQL each
/// notifying transaction commits under a database-wide lock), so live views
/// also poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub run: RunId,
}

/// One step that [`Store::rescue_expired`] moved, as a backend read it back.
#[derive(Clone, Debug)]
pub struct RescuedStep {
    pub id: StepId,
    pub run_id: RunId,
    pub target: AssetPartition,
    /// `Retryable` or `Failed`.
    pub state: StepState,
    pub attempt: u32,
    pub max_attempts: u32,
    pub worker: Option<String>,
    pub error: String,
}

impl RescuedStep {
    /// The event every backend appends for the step: `step_retrying` while
    /// attempts remain, `step_failed` after the last, with `data.rescued`.
    pub fn event(&self, at: Timestamp) -> NewEvent {
        let (attempt, max, error) = (self.attempt, self.max_attempts, &self.error);
        let (kind, level, message) = if self.state == StepState::Failed {
            (
                EventKind::StepFailed,
                Level::Error,
                format!("failed: {error} (attempt {attempt} of {max})"),
            )
        } else {
            (
                EventKind::StepRetrying,
                Level::Warn,
                format!("attempt {attempt} of {max} lost, retrying now: {error}"),
            )
        };
        NewEvent {
            run_id: self.run_id,
            step_id: Some(self.id),
            at,
            kind,
            level,
            message,
            data: serde_json::json!({
                "asset": self.target.asset.as_str(),
                "partition": self.target.partition.as_ref().map(|p| p.as_str()),
                "worker": self.worker,
                "attempt": attempt,
                "error": error,
                "rescued": true,
            }),
        }
    }

    /// The cause recorded on the steps a rescued final failure skips.
    pub fn skip_cause(&self) -> String {
        format!("upstream {} failed", self.target)
    }
}

/// A worker process as registered in the store.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub host: String,
    pub pid: u32,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
}

/// The durable record behind FlowStone.
///
/// Methods that change the queue take the caller's `now`: the embedded SQLite
/// store has one clock; the PostgreSQL store uses the database clock for leases
/// and schedules and may ignore it.
///
/// # Cancellation
///
/// Every method runs in one transaction, so dropping its future either leaves the
/// change whole or not made at all; callers may retry any method.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A human-readable location, e.g. the SQLite file path.
    fn describe(&self) -> String;

    /// Notices of commits that may have made steps claimable or changed a
    /// run (see [`Notice`]), from this process or, where
    /// the backend can tell (PostgreSQL's LISTEN/NOTIFY), from any process;
    /// `None` when the backend pushes nothing. Notices may be dropped (a
    /// slow receiver, a lost connection): callers still poll, less often.
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        None
    }

    // -- runs and the queue ------------------------------------------------

    /// Inserts the run and all its steps in one transaction. Steps without
    /// upstream steps are `available`, the others `pending`.
    async fn create_run(&self, run: NewRun) -> StoreResult<RunRecord>;

    /// Claims up to `limit` steps that are `available`, or `retryable` and due,
    /// ordered by priority, schedule and id; they become `running` with the
    /// attempt counted.
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedStep>>;

    /// Records completions; see the module guarantees.
    async fn complete(&self, batch: Vec<Completion>) -> StoreResult<Vec<Outcome>>;

    /// Records completions, then claims the next steps, as [`Store::complete`]
    /// followed by [`Store::claim`]; a backend may do both in one transaction
    /// (the worker loop calls this after every batch). `next.limit` may be 0.
    async fn complete_and_claim(
        &self,
        batch: Vec<Completion>,
        next: ClaimRequest,
    ) -> StoreResult<(Vec<Outcome>, Vec<ClaimedStep>)> {
        let outcomes = self.complete(batch).await?;
        let claimed = if next.limit == 0 {
            Vec::new()
        } else {
            self.claim(next).await?
        };
        Ok((outcomes, claimed))
    }

    /// How many completion batches a worker loop may have committing at
    /// once. A backend whose commits wait for a log flush that concurrent
    /// commits share (PostgreSQL's group commit) gains from more than one;
    /// the loop then also claims on its own as soon as steps finish, rather
    /// than with the batch that records them, so that no slot waits for a
    /// flush. Fencing makes the batches independent: each names its own
    /// steps, and a batch that fails leaves them `running`. Default 1: each
    /// batch claims for the free slots, and the loop waits for its answer.
    fn commits_in_flight(&self) -> usize {
        1
    }

    /// Lets go of memory the store keeps only for speed (page caches of
    /// idle connections), so that an idle process gives it back to the
    /// operating system. Called by a server that has gone quiet; it must
    /// not wait for busy connections. Default: nothing to let go.
    async fn release_memory(&self) {}

    /// Records failures; see the module guarantees.
    async fn fail(&self, batch: Vec<Failure>) -> StoreResult<Vec<Outcome>>;

    /// Moves the `running` steps claimed by `workers` (of `run`, if given) back
    /// to `available`, keeping their attempt; returns the steps released.
    async fn release(
        &self,
        run: Option<RunId>,
        workers: &[WorkerId],
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<StepId>>;

    /// Sets a run's state if it is currently one of `from`; returns whether it
    /// changed. Moving to a terminal state sets `finished_at`.
    async fn set_run_state(
        &self,
        run: RunId,
        from: &[RunState],
        to: RunState,
        now: Timestamp,
    ) -> StoreResult<bool>;

    /// Cancels a run: its steps that are not running and not ended become
    /// `cancelled`, and the run `cancelled`. Running steps finish.
    async fn cancel_run(&self, run: RunId, now: Timestamp) -> StoreResult<bool>;

    /// The earliest time a `retryable` step of `run` becomes due, if any.
    async fn next_retry_at(&self, run: Option<RunId>) -> StoreResult<Option<Timestamp>>;

    // -- workers ----------------------------------------------------------

    async fn register_worker(&self, worker: &WorkerRecord) -> StoreResult<()>;

    /// Extends the lease of the worker's running steps and its heartbeat.
    /// Returns `false` when the worker is not registered (the leader forgot
    /// it after a long silence); it should register again.
    async fn heartbeat(
        &self,
        worker: &WorkerId,
        now: Timestamp,
        lease: jiff::SignedDuration,
    ) -> StoreResult<bool>;

    /// Hands back to the queue the steps running under `worker` that it does
    /// not name in `known` and that were claimed before `claimed_before`:
    /// claims whose answer never reached it (the connection failed after the
    /// commit). Without this, its heartbeats would hold them forever. Each
    /// gets a `step_released` event, as [`Store::release`] gives.
    async fn release_unknown(
        &self,
        worker: &WorkerId,
        known: &[StepId],
        claimed_before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<StepId>>;

    async fn workers(&self) -> StoreResult<Vec<WorkerRecord>>;

    async fn deregister_worker(&self, worker: &WorkerId) -> StoreResult<()>;

    // -- API tokens ---------------------------------------------------------

    /// Stores a new token ([`crate::token::generate`] makes one).
    /// [`StoreError::Conflict`] when a live token has its name: neither
    /// revoked nor expired at the new token's `created_at`. A token with
    /// the name that has expired then is revoked (at `created_at`) in the
    /// same transaction, and a revoked token's name may be used again;
    /// nothing is revoked when the new token is refused.
    async fn create_token(&self, token: NewToken) -> StoreResult<TokenRecord>;

    /// Every token, revoked and expired ones too, newest first.
    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>>;

    /// The token whose secret has this hash ([`crate::token::hash`]), unless
    /// it is revoked; an expired one is returned too (the caller decides).
    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>>;

    /// Whether some token is neither revoked nor expired at `now`.
    async fn has_active_tokens(&self, now: Timestamp) -> StoreResult<bool>;

    /// Revokes the token named `name` that is not revoked yet; returns it as
    /// revoked, or `None` when there is none.
    async fn revoke_token(&self, name: &str, now: Timestamp) -> StoreResult<Option<TokenRecord>>;

    /// Notes that the token `id` was presented at `now`.
    async fn token_used(&self, id: i64, now: Timestamp) -> StoreResult<()>;

    // -- reading runs -----------------------------------------------------

    async fn run(&self, id: RunId) -> StoreResult<Option<RunRecord>>;

    /// Runs newest first.
    async fn runs(&self, limit: u32) -> StoreResult<Vec<RunRecord>>;

    async fn steps(&self, run: RunId) -> StoreResult<Vec<StepRecord>>;

    async fn step_counts(&self, run: RunId) -> StoreResult<StepCounts>;

    /// Whether the run has a live step (`pending`, `available`, `running` or
    /// `retryable`); cheaper than counting them.
    async fn has_live_steps(&self, run: RunId) -> StoreResult<bool> {
        Ok(self.step_counts(run).await?.live() > 0)
    }

    /// Workers holding `running` steps of the run.
    async fn running_workers(&self, run: RunId) -> StoreResult<Vec<WorkerId>>;

    async fn append_events(&self, events: Vec<NewEvent>) -> StoreResult<()>;

    /// Events of a run in id order, after `after` if given.
    ///
    /// Paging with the last id returned never passes over an event: a
    /// backend whose writers may commit out of id order (PostgreSQL) returns
    /// only events up to the lowest id a transaction still open may commit,
    /// so an event appended concurrently can arrive a call later but never
    /// below an id already returned. A long-open writing transaction holds
    /// back the events above its ids until it ends.
    async fn events(
        &self,
        run: RunId,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>>;

    // -- materializations and lineage ---------------------------------------

    async fn materialization(
        &self,
        id: MaterializationId,
    ) -> StoreResult<Option<MaterializationRecord>>;

    /// The latest materialization of each of `targets` that has one.
    async fn latest_materializations(
        &self,
        targets: &[AssetPartition],
    ) -> StoreResult<Vec<MaterializationRecord>>;

    /// Per partition of `asset` that has a materialization or a failed step:
    /// the latest materialization and a failure newer than it.
    async fn partitions(&self, asset: &AssetKey) -> StoreResult<Vec<PartitionRecord>>;

    /// Materializations that `of` read.
    async fn inputs_of(
        &self,
        of: &[MaterializationId],
    ) -> StoreResult<Vec<(LineageEdge, MaterializationRecord)>>;

    /// Materializations that read `of`.
    async fn consumers_of(
        &self,
        of: &[MaterializationId],
    ) -> StoreResult<Vec<(LineageEdge, MaterializationRecord)>>;

    /// Materializations of a run, in id order.
    async fn materializations_of_run(&self, run: RunId) -> StoreResult<Vec<MaterializationRecord>>;

    /// Of `targets`, those with a live step (`pending`, `available`,
    /// `running` or `retryable`), with the run that holds it. The store keeps
    /// at most one live step per asset partition across all runs:
    /// [`Store::create_run`] fails with [`StoreError::Conflict`] rather than
    /// queue a second one.
    async fn live_steps(
        &self,
        targets: &[AssetPartition],
    ) -> StoreResult<Vec<(AssetPartition, RunId)>>;

    /// The assets that have a live step (`pending`, `available`, `running`
    /// or `retryable`) in any run, sorted; what the dashboard's graph shows
    /// as running.
    async fn live_assets(&self) -> StoreResult<Vec<AssetKey>>;

    // -- leases and maintenance ---------------------------------------------

    /// Takes the lease `name` for `holder` until `now + ttl` when it is free or
    /// has expired (a new term), or renews it when `holder` already holds it
    /// (the same term). Returns the lease when `holder` holds it afterwards,
    /// `None` when someone else does. The PostgreSQL store decides expiry on
    /// the database clock.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &WorkerId,
        ttl: jiff::SignedDuration,
        now: Timestamp,
    ) -> StoreResult<Option<Lease>>;

    /// Gives up the lease if `lease.holder` still holds it in `lease.term`, so
    /// another process can take it at once, in the next term (the lease is
    /// left expired, so terms only grow).
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()>;

    /// The lease `name` as it stands, expired or not.
    async fn lease(&self, name: &str) -> StoreResult<Option<Lease>>;

    /// Rescues `running` steps whose lease ran out (their worker stopped
    /// heartbeating): back to `retryable`, due at once, when attempts remain,
    /// else `failed` with their pending downstream steps `skipped`. Each move
    /// is a compare-and-set on the running state and the expired lease, so a
    /// step that completed a moment earlier stays completed. Does nothing
    /// unless `lease` is still held in its term. Appends one event per step.
    async fn rescue_expired(&self, lease: &Lease, now: Timestamp) -> StoreResult<Rescued>;

    /// Deletes the registrations of workers whose last heartbeat is older than
    /// `before`; returns how many.
    async fn forget_workers(
        &self,
        lease: &Lease,
        before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<u64>;

    /// Prunes finished queue rows: for up to `limit` runs that ended (succeeded,
    /// failed or cancelled) before `before`, oldest first, records the run's
    /// step counts on the run, then deletes its dependency edges and its
    /// completed, skipped and cancelled steps. Failed steps stay (a
    /// partition's status reads them); materializations, lineage and events
    /// are history and are never touched. Does nothing unless `lease` is
    /// still held. Returns the number of runs pruned.
    async fn prune_runs(
        &self,
        lease: &Lease,
        before: Timestamp,
        limit: u32,
        now: Timestamp,
    ) -> StoreResult<u64>;

    /// Runs still `running` that have no live step left (their last worker
    /// ended before it could finish them), oldest first, at most `limit`.
    async fn runs_without_live_steps(&self, limit: u32) -> StoreResult<Vec<RunId>>;

    // -- the live feed ------------------------------------------------------

    /// Events of every run in id order, after `after` if given; the feed
    /// behind the server's event stream, which pages with the last id seen.
    ///
    /// As with [`Store::events`], paging with the last id returned never
    /// passes over an event, including one whose transaction commits after
    /// an event with a higher id: events above an id that an open
    /// transaction may still commit are held back until it ends.
    async fn events_since(
        &self,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>>;

    /// Where the event log stands: an id at or below which every event is
    /// settled, so that [`Store::events_since`] from it returns exactly the
    /// events appended later (`None`: from the start). A live feed starts
    /// here. The default pages through the log; backends answer at once.
    async fn events_position(&self) -> StoreResult<Option<EventId>> {
        let mut after = None;
        loop {
            let page = self.events_since(after, 10_000).await?;
            let Some(last) = page.last() else {
                return Ok(after);
            };
            after = Some(last.id);
            if page.len() < 10_000 {
                return Ok(after);
            }
        }
    }
}
