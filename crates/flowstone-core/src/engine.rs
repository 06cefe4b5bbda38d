//! The library API: everything the CLI does is first a call here.
//!
//! An [`Engine`] holds validated [`Definitions`] and a [`Store`]. It plans
//! selections into runs, runs them with the worker loop in this process, and
//! answers lineage, impact and status questions (see [`crate::query`]).

use std::sync::Arc;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::definitions::Definitions;
use crate::ids::{AssetKey, RunId, WorkerId};
use crate::io::IoManager;
use crate::maintenance::{self, MaintenanceOptions};
use crate::plan::{self, PartitionSelection, Plan, PlanError, Selection};
use crate::store::{
    EventKind, Level, NewEvent, NewRun, RunRecord, RunState, Store, StoreError, Trigger,
};
use crate::worker::{self, LoopEnd, Progress, Shared, Stop, WorkerOptions};

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no run with id {0}; `runs list` shows the runs in this store")]
    RunNotFound(RunId),
    #[error(
        "run {run} is being worked on by a live worker ({workers}); wait for it, or stop it \
         and resume again"
    )]
    RunBusy { run: RunId, workers: String },
    #[error("run {run} has already ended ({state}); nothing to resume")]
    RunEnded { run: RunId, state: RunState },
    #[error("{0}")]
    Invalid(String),
    #[error("worker task failed: {0}")]
    Worker(String),
}

impl EngineError {
    /// A mistake in the request (exit code 2 at the CLI), as opposed to a
    /// failure of the store or the machine.
    pub fn is_user_error(&self) -> bool {
        match self {
            EngineError::Plan(err) => err.is_user_error(),
            EngineError::RunNotFound(_)
            | EngineError::RunBusy { .. }
            | EngineError::RunEnded { .. }
            | EngineError::Invalid(_) => true,
            EngineError::Store(StoreError::Conflict(_)) => true,
            EngineError::Store(_) | EngineError::Worker(_) => false,
        }
    }
}

/// A request to materialize a selection.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub selection: Selection,
    pub trigger: Trigger,
    /// At most this many of the run's steps at once, across every worker
    /// (the store keeps the cap with the run, and claims respect it); `None`
    /// leaves it to the workers' concurrency, and a process that launches the
    /// run works on it with [`default_parallelism`](worker::default_parallelism).
    pub max_parallel: Option<usize>,
    /// In a backfill, also run partitions that are materialized but stale.
    pub refresh_stale: bool,
}

impl RunRequest {
    /// Materialize `assets` (empty: all) for `partitions`, re-running what
    /// exists.
    pub fn materialize(assets: Vec<AssetKey>, partitions: PartitionSelection) -> Self {
        RunRequest {
            selection: Selection {
                assets,
                partitions,
                with_upstream: false,
                skip_materialized: false,
                leave_out_unready: false,
            },
            trigger: Trigger::Api,
            max_parallel: None,
            refresh_stale: false,
        }
    }

    /// Backfill `assets` (empty: all) over `partitions`, skipping what is
    /// already materialized.
    pub fn backfill(assets: Vec<AssetKey>, partitions: PartitionSelection) -> Self {
        RunRequest {
            selection: Selection {
                assets,
                partitions,
                with_upstream: false,
                skip_materialized: true,
                leave_out_unready: true,
            },
            trigger: Trigger::Backfill,
            max_parallel: None,
            refresh_stale: false,
        }
    }

    pub fn with_upstream(mut self, yes: bool) -> Self {
        self.selection.with_upstream = yes;
        self
    }

    /// Re-run asset partitions that are already materialized.
    pub fn force(mut self, yes: bool) -> Self {
        self.selection.skip_materialized = !yes;
        self
    }

    /// In a backfill, also run partitions that are materialized but stale.
    pub fn refresh_stale(mut self, yes: bool) -> Self {
        self.refresh_stale = yes;
        self
    }

    /// Caps the run at `n` steps at once across every worker (at least 1).
    pub fn max_parallel(mut self, n: usize) -> Self {
        self.max_parallel = Some(n.max(1));
        self
    }

    /// Steps at once in the process that works on the run: the cap, or the
    /// number of CPUs.
    pub fn parallelism(&self) -> usize {
        self.max_parallel
            .unwrap_or_else(worker::default_parallelism)
    }

    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }
}

/// The end of a run, as seen by the process that ran it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunOutcome {
    pub run: RunRecord,
    /// Materializations recorded by this process.
    pub recorded: u64,
    /// Whether the loop stopped on request before the run ended.
    pub interrupted: bool,
    pub elapsed_ms: u64,
}

/// A run being worked on in this process: watch it, stop it, await it.
pub struct RunHandle {
    run_id: RunId,
    progress: watch::Receiver<Progress>,
    stop: watch::Sender<Stop>,
    task: tokio::task::JoinHandle<Result<RunOutcome, EngineError>>,
}

impl RunHandle {
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// Live figures, updated as steps finish.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Claims nothing more; running steps finish and are recorded; the run is
    /// left `interrupted` for `resume`.
    pub fn interrupt(&self) {
        self.stop.send_replace(Stop::Drain);
    }

    /// Abandons running steps at once and hands them back to the queue; the
    /// run is left `interrupted` for `resume`.
    pub fn abort(&self) {
        self.stop.send_replace(Stop::Abort);
    }

    /// A handle that can stop this run from another task.
    pub fn stopper(&self) -> watch::Sender<Stop> {
        self.stop.clone()
    }

    /// Waits until the run ends or is stopped.
    ///
    /// # Errors
    ///
    /// A store failure while running, or a panic of the worker task.
    pub async fn wait(self) -> Result<RunOutcome, EngineError> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(EngineError::Worker(err.to_string())),
        }
    }
}

/// What [`Engine::launch`] did.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per launch; a box buys nothing"
)]
pub enum Launch {
    /// Every selected asset partition is already materialized. The plan's
    /// counts say what was left out.
    NothingToDo { plan: Plan },
    /// A run was created and is being worked on.
    /// `plan` has its counts; its steps are in the run.
    Started {
        run: RunRecord,
        plan: Plan,
        handle: RunHandle,
    },
}

/// FlowStone's entry point for a program: definitions plus a store.
#[derive(Clone)]
pub struct Engine {
    defs: Arc<Definitions>,
    store: Arc<dyn Store>,
    default_io: Arc<dyn IoManager>,
    user: String,
}

impl Engine {
    /// An engine whose assets without an I/O manager of their own store JSON
    /// files under `.flowstone/storage` (see [`Engine::with_default_io`]).
    pub fn new(defs: Definitions, store: Arc<dyn Store>) -> Self {
        let default_io = defs
            .io_manager("default")
            .unwrap_or_else(|| Definitions::fallback_io_manager(".flowstone/storage"));
        Engine {
            defs: Arc::new(defs),
            store,
            default_io,
            user: current_user(),
        }
    }

    /// Replaces the fallback `"default"` I/O manager (ignored when the
    /// definitions configure their own).
    pub fn with_default_io(mut self, io: Arc<dyn IoManager>) -> Self {
        if !self.defs.has_default_io_manager() {
            self.default_io = io;
        }
        self
    }

    /// Records runs as started by `user` (default: the OS user).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        &self.defs
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The I/O manager that stores `def`'s values.
    pub fn io_manager_for(&self, def: &crate::asset::AssetDef) -> Arc<dyn IoManager> {
        self.defs
            .io_manager(&def.io_manager)
            .unwrap_or_else(|| self.default_io.clone())
    }

    /// Plans a request without queuing anything.
    pub async fn plan(&self, request: &RunRequest) -> Result<Plan, EngineError> {
        let mut refresh = std::collections::HashSet::new();
        if request.refresh_stale && request.selection.skip_materialized {
            for status in self.statuses().await? {
                for p in status.partitions {
                    if matches!(p.state, crate::query::PartitionState::Stale(_)) {
                        refresh.insert(crate::ids::AssetPartition::new(
                            status.asset.clone(),
                            p.partition,
                        ));
                    }
                }
            }
        }
        let selection = &request.selection;
        let store = self.store.as_ref();
        Ok(plan::plan_refreshing(&self.defs, store, selection, &refresh, Timestamp::now()).await?)
    }

    /// Plans and queues a run, without working on it; `None` when there is
    /// nothing to do. [`Engine::resume`] (or [`Engine::serve_worker`]) runs it.
    ///
    /// A backfill that races another run for the same asset partitions (the
    /// store refuses a second live step for one) is planned once more, which
    /// leaves out what the other run took.
    pub async fn submit(
        &self,
        request: &RunRequest,
    ) -> Result<(Plan, Option<RunRecord>), EngineError> {
        let mut tries = 0;
        let (plan, run) = loop {
            tries += 1;
            let mut plan = self.plan(request).await?;
            if plan.steps.is_empty() {
                return Ok((plan, None));
            }
            let created = self
                .store
                .create_run(NewRun {
                    id: RunId::new(),
                    trigger: request.trigger,
                    user: self.user.clone(),
                    description: plan.description.clone(),
                    created_at: Timestamp::now(),
                    max_parallel: request
                        .max_parallel
                        .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                    steps: std::mem::take(&mut plan.steps),
                })
                .await;
            match created {
                Err(StoreError::Conflict(_))
                    if tries < 3 && request.selection.leave_out_unready => {}
                other => break (plan, other?),
            }
        };
        self.store
            .append_events(vec![run_event(
                run.id,
                EventKind::RunStarted,
                format!("run started by {}: {}", self.user, run.description),
            )])
            .await?;
        Ok((plan, Some(run)))
    }

    /// Plans, queues and starts working on a run in this process.
    pub async fn launch(&self, request: RunRequest) -> Result<Launch, EngineError> {
        let (plan, run) = self.submit(&request).await?;
        let Some(run) = run else {
            return Ok(Launch::NothingToDo { plan });
        };
        let handle = self.work_on(run.id, request.parallelism());
        Ok(Launch::Started { run, plan, handle })
    }

    /// Launches and waits; `None` when there was nothing to do.
    pub async fn run(&self, request: RunRequest) -> Result<Option<RunOutcome>, EngineError> {
        match self.launch(request).await? {
            Launch::NothingToDo { .. } => Ok(None),
            Launch::Started { handle, .. } => handle.wait().await.map(Some),
        }
    }

    /// Materializes one asset partition (re-running it if it exists) and waits.
    pub async fn materialize(
        &self,
        asset: &str,
        partition: Option<&str>,
    ) -> Result<RunOutcome, EngineError> {
        self.materialize_request(asset, partition, false).await
    }

    /// Materializes one asset partition with its whole upstream and waits.
    pub async fn materialize_with_upstream(
        &self,
        asset: &str,
        partition: Option<&str>,
    ) -> Result<RunOutcome, EngineError> {
        self.materialize_request(asset, partition, true).await
    }

    async fn materialize_request(
        &self,
        asset: &str,
        partition: Option<&str>,
        with_upstream: bool,
    ) -> Result<RunOutcome, EngineError> {
        let key = self
            .defs
            .lookup(asset)
            .map_err(EngineError::Invalid)?
            .key
            .clone();
        let partitions = match partition {
            Some(p) => PartitionSelection::Keys(vec![p.to_owned()]),
            None => PartitionSelection::Unspecified,
        };
        let request = RunRequest::materialize(vec![key], partitions).with_upstream(with_upstream);
        let outcome = self.run(request).await?;
        outcome.ok_or_else(|| EngineError::Invalid("nothing to materialize".into()))
    }

    /// Backfills `assets` from `from` to `to` (partition keys, both included)
    /// with at most `max_parallel` steps at once, skipping what exists.
    pub async fn backfill(
        &self,
        assets: &[&str],
        from: &str,
        to: &str,
        max_parallel: usize,
    ) -> Result<Launch, EngineError> {
        let mut keys = Vec::new();
        for asset in assets {
            keys.push(
                self.defs
                    .lookup(asset)
                    .map_err(EngineError::Invalid)?
                    .key
                    .clone(),
            );
        }
        let range = PartitionSelection::Range {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        self.launch(RunRequest::backfill(keys, range).max_parallel(max_parallel))
            .await
    }

    /// Continues a run that was interrupted or whose process died: steps held
    /// by dead workers go back to the queue, completed steps are kept.
    ///
    /// # Errors
    ///
    /// An unknown run, a run that has ended, or one a live worker still holds.
    pub async fn resume(&self, run: RunId, max_parallel: usize) -> Result<RunHandle, EngineError> {
        let record = self
            .store
            .run(run)
            .await?
            .ok_or(EngineError::RunNotFound(run))?;
        if record.state.is_terminal() {
            return Err(EngineError::RunEnded {
                run,
                state: record.state,
            });
        }

        // Steps held by workers that are gone go back to the queue.
        let holders = self.store.running_workers(run).await?;
        if !holders.is_empty() {
            let registry = self.store.workers().await?;
            let now = Timestamp::now();
            let (dead, alive): (Vec<_>, Vec<_>) = holders.into_iter().partition(|id| {
                registry
                    .iter()
                    .find(|w| &w.id == id)
                    .is_none_or(|w| worker_is_dead(w, now))
            });
            if !alive.is_empty() {
                let workers = alive
                    .iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(EngineError::RunBusy { run, workers });
            }
            let released = self
                .store
                .release(Some(run), &dead, "worker died", now)
                .await?;
            tracing::info!(run_id = %run, steps = released.len(), "released steps of dead workers");
        }

        let now = Timestamp::now();
        self.store
            .set_run_state(
                run,
                &[RunState::Interrupted, RunState::Running],
                RunState::Running,
                now,
            )
            .await?;
        self.store
            .append_events(vec![run_event(
                run,
                EventKind::RunResumed,
                format!("run resumed by {}", self.user),
            )])
            .await?;
        Ok(self.work_on(run, max_parallel))
    }

    /// Whether any worker registered in the store is alive: heartbeating, and
    /// on this host with its process still there. A `running` run with no live
    /// worker was left by a process that died; `resume` continues it.
    pub async fn any_live_worker(&self) -> Result<bool, EngineError> {
        let now = Timestamp::now();
        let workers = self.store.workers().await?;
        Ok(workers.iter().any(|w| !worker_is_dead(w, now)))
    }

    /// Cancels a run: steps not yet running are cancelled, running ones finish.
    pub async fn cancel(&self, run: RunId) -> Result<bool, EngineError> {
        self.store
            .run(run)
            .await?
            .ok_or(EngineError::RunNotFound(run))?;
        Ok(self.store.cancel_run(run, Timestamp::now()).await?)
    }

    /// Spawns the worker loop on `run` in this process.
    fn work_on(&self, run: RunId, max_parallel: usize) -> RunHandle {
        let (stop_tx, stop_rx) = watch::channel(Stop::No);
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            defs: self.defs.clone(),
            store: self.store.clone(),
            default_io: self.default_io.clone(),
            worker: WorkerId::for_this_process(),
            held: Default::default(),
        });
        let opts = WorkerOptions {
            max_parallel,
            run: Some(run),
            ..WorkerOptions::default()
        };
        let store = self.store.clone();
        // A single-process run also does the leader's work (unless another
        // process leads), so that steps of workers that died are rescued.
        let (maintain_stop, maintain_rx) = watch::channel(Stop::No);
        let maintainer = tokio::spawn(maintenance::run_maintenance(
            self.store.clone(),
            shared.worker.clone(),
            MaintenanceOptions::default(),
            maintain_rx,
        ));
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let end = worker::run_loop(shared, opts, stop_rx, progress_tx.clone()).await;
            maintain_stop.send_replace(Stop::Drain);
            let _ = maintainer.await;
            let end = end?;
            let recorded = progress_tx.borrow().recorded;
            let interrupted = end == LoopEnd::Stopped;
            if interrupted {
                let counts = store.step_counts(run).await?;
                if counts.live() > 0 {
                    let now = Timestamp::now();
                    store
                        .set_run_state(run, &[RunState::Running], RunState::Interrupted, now)
                        .await?;
                    store
                        .append_events(vec![run_event(
                            run,
                            EventKind::RunInterrupted,
                            format!("run interrupted with {} steps left", counts.live()),
                        )])
                        .await?;
                } else {
                    worker::finish_run(store.as_ref(), run).await?;
                }
            } else {
                worker::finish_run(store.as_ref(), run).await?;
            }
            let run = store.run(run).await?.ok_or(EngineError::RunNotFound(run))?;
            Ok(RunOutcome {
                run,
                recorded,
                interrupted,
                elapsed_ms: started.elapsed().as_millis() as u64,
            })
        });
        RunHandle {
            run_id: run,
            progress: progress_rx,
            stop: stop_tx,
            task,
        }
    }

    /// Runs a worker loop over the steps of every run (`opts.run` is
    /// ignored) until `stop` says so: [`Stop::Drain`] claims nothing more and
    /// lets running steps finish, [`Stop::Abort`] hands them back to the queue
    /// at once. `progress` counts what this worker recorded.
    ///
    /// # Errors
    ///
    /// A store failure the loop cannot go on from.
    pub async fn serve_worker(
        &self,
        opts: WorkerOptions,
        stop: watch::Receiver<Stop>,
        progress: watch::Sender<Progress>,
    ) -> Result<(), EngineError> {
        let shared = Arc::new(Shared {
            defs: self.defs.clone(),
            store: self.store.clone(),
            default_io: self.default_io.clone(),
            worker: WorkerId::for_this_process(),
            held: Default::default(),
        });
        let opts = WorkerOptions { run: None, ..opts };
        worker::run_loop(shared, opts, stop, progress).await?;
        Ok(())
    }

    /// Runs the leader's maintenance loops (see [`crate::maintenance`]) until
    /// `stop` says so; any number of processes may, one of them leads.
    pub async fn maintain(&self, opts: MaintenanceOptions, stop: watch::Receiver<Stop>) {
        maintenance::run_maintenance(self.store.clone(), WorkerId::for_this_process(), opts, stop)
            .await;
    }
}

/// A worker is dead when it stopped heartbeating, or when it ran on this host
/// and its process is gone.
fn worker_is_dead(worker: &crate::store::WorkerRecord, now: Timestamp) -> bool {
    let silent = now.duration_since(worker.heartbeat_at) > jiff::SignedDuration::from_secs(120);
    let same_host = worker.host == crate::host_name();
    let gone = same_host
        && worker.pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{}", worker.pid)).exists();
    silent || gone
}

fn run_event(run: RunId, kind: EventKind, message: String) -> NewEvent {
    NewEvent {
        run_id: run,
        step_id: None,
        at: Timestamp::now(),
        kind,
        level: Level::Info,
        message,
        data: serde_json::Value::Null,
    }
}

/// The OS user running this process: `$USER`, else the name of this
/// process's user id in `/etc/passwd`, else `uid N`.
pub fn current_user() -> String {
    if let Some(user) = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        return user;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1).map(str::to_owned)
        });
    let Some(uid) = uid else {
        return "unknown".to_owned();
    };
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid).then(|| name.to_owned())
            })
        });
    name.unwrap_or_else(|| format!("uid {uid}"))
}
