//! Fault tests of a FlowStone cluster: real `worker` processes on the real
//! PostgreSQL server, SIGKILLed, cut off from the database and drained while
//! backfills run, and the record checked afterwards: every step completed,
//! one materialization per asset partition, killed steps rescued in time.
//!
//! Each test makes a database of its own on the server named by
//! `FLOWSTONE_TEST_DATABASE_URL` (see `flowstone_postgres::testing`), which is
//! dropped afterwards; without a server a test prints `skipping: ...` and
//! passes, unless `CI` is set.
//!
//! Workers are this test binary run again: with [`CHILD_ENV`] set, the test
//! [`worker_process`] parses the arguments it carries as a FlowStone command
//! line for [`test_definitions`] and exits with the command's exit code. A
//! [`Cluster`] owns the processes it started and kills each by its pid when
//! the test ends, failing or not. Runs are submitted from the test process
//! with [`Engine::submit`], so that no process but the workers works on them
//! and the test is free to watch the store.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use flowstone::cli::Cli;
use flowstone::partitions::TimeWindowPartitions;
use flowstone::store::{EventKind, EventRecord, RunState, StepRecord, StepState};
use flowstone::{
    AssetBuilder, AssetKey, DefinitionErrors, Definitions, Engine, PartitionSelection, RetryPolicy,
    RunId, RunRequest, StepId, Store,
};
use flowstone_postgres::testing::TestDatabase;
use jiff::{SignedDuration, Timestamp};
use sqlx::Connection;

/// Set in a child process: the arguments of its command line, one per line.
const CHILD_ENV: &str = "FLOWSTONE_CLUSTER_TEST_WORKER";

/// The test a child process runs.
const CHILD_TEST: &str = "worker_process";

/// The first daily partition, and the end of the last (excluded): 350 days,
/// so the three-asset chain is 1,050 steps.
const FIRST_DAY: &str = "2023-01-01";
const END_DAY: &str = "2023-12-17";

/// How long a step of the chain sleeps, and a step of `slow`.
const CHAIN_STEP: Duration = Duration::from_millis(15);
const SLOW_STEP: Duration = Duration::from_secs(2);

/// How long a step of `limited` sleeps, and its queue's limit.
const LIMITED_STEP: Duration = Duration::from_millis(60);
const LLM_LIMIT: u32 = 3;

/// The workers' claim lease and leader lease; the leader works every third
/// of its lease (see the `worker` command).
const LEASE: Duration = Duration::from_secs(2);
const LEADER_LEASE: Duration = Duration::from_secs(2);
const MAINTENANCE_EVERY: Duration = Duration::from_millis(667);

/// What a loaded machine may add to a bound the spec sets: a slow pass, a
/// late heartbeat, a scheduler that took its time.
const MARGIN: Duration = Duration::from_secs(3);

/// How long any one run may take before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The child's side: a `worker` command line of the test definitions.
#[test]
fn worker_process() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let argv = std::iter::once("flowstone-test-worker").chain(args.lines());
    let code = flowstone::cli::run(test_definitions(), Cli::parse_from(argv));
    std::process::exit(i32::from(code));
}

/// `raw` -> `clean` -> `summary`, daily, each step a short sleep; `slow`, daily
/// too, whose steps take [`SLOW_STEP`]; `limited`, daily, in the `llm` queue
/// limited to [`LLM_LIMIT`]. Every asset but `limited` retries, so that steps
/// of killed workers are rescued rather than failed.
fn test_definitions() -> Result<Definitions, DefinitionErrors> {
    let daily = TimeWindowPartitions::daily(FIRST_DAY)
        .end(END_DAY)
        .build()
        .unwrap();
    let retry = RetryPolicy::exponential(10).initial_delay(Duration::from_millis(100));
    Definitions::builder()
        .add_asset(
            AssetBuilder::new("raw")
                .partitions(daily.clone())
                .retry(retry.clone())
                .compute(|ctx, _inputs| async move {
                    let key = ctx.require_partition_key()?.to_string();
                    tokio::time::sleep(CHAIN_STEP).await;
                    Ok(key)
                }),
        )
        .add_asset(
            AssetBuilder::new("clean")
                .partitions(daily.clone())
                .dep::<String>("raw")
                .retry(retry.clone())
                .compute(|_ctx, mut inputs| async move {
                    let raw: String = inputs.take::<String, _>("raw")?;
                    tokio::time::sleep(CHAIN_STEP).await;
                    Ok(format!("{raw}/clean"))
                }),
        )
        .add_asset(
            AssetBuilder::new("summary")
                .partitions(daily.clone())
                .dep::<String>("clean")
                .retry(retry.clone())
                .compute(|_ctx, mut inputs| async move {
                    let clean: String = inputs.take::<String, _>("clean")?;
                    tokio::time::sleep(CHAIN_STEP).await;
                    Ok(clean.len() as u64)
                }),
        )
        .add_asset(
            AssetBuilder::new("limited")
                .partitions(daily.clone())
                .queue("llm")
                .compute(|ctx, _inputs| async move {
                    let key = ctx.require_partition_key()?.to_string();
                    tokio::time::sleep(LIMITED_STEP).await;
                    Ok(key)
                }),
        )
        .queue_limit("llm", LLM_LIMIT)
        .add_asset(
            AssetBuilder::new("slow")
                .partitions(daily)
                .retry(retry)
                .compute(|ctx, _inputs| async move {
                    let key = ctx.require_partition_key()?.to_string();
                    tokio::time::sleep(SLOW_STEP).await;
                    Ok(key)
                }),
        )
        .build()
}

// -- the cases ----------------------------------------------------------------

/// Three workers run a backfill of 1,050 steps; one worker in the middle of a
/// step is SIGKILLed three times, and a replacement started each time. The
/// run succeeds with one materialization per asset partition, and the killed
/// workers' steps were rescued within the claim lease and a maintenance
/// period (plus the leader lease when the victim led).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_no_step() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::new(&db);
    let (engine, store) = engine(&db, &cluster).await;
    for _ in 0..3 {
        cluster.start(&["--concurrency", "4"]);
    }
    let run = submit(
        &engine,
        &["raw", "clean", "summary"],
        PartitionSelection::All,
    )
    .await;
    assert_eq!(step_count(&store, run).await, 1_050);

    let started = Instant::now();
    let mut kills = Vec::new();
    while kills.len() < 3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.assert_alive();
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "found no busy worker to kill"
        );
        let Ok(steps) = store.steps(run).await else {
            continue;
        };
        let Some(victim) = cluster.busy_worker(&steps) else {
            assert!(
                steps.iter().any(|s| !s.state.is_terminal()),
                "the run ended after {} kill(s); make it longer",
                kills.len()
            );
            continue;
        };
        let leader = leader_pid(&store).await == Some(cluster.pid(victim));
        kills.push(cluster.kill_busy(victim, &steps, leader));
        cluster.start(&["--concurrency", "4"]);
    }

    let record = wait_for_run(&store, run, &mut cluster).await;
    assert_eq!(record.state, RunState::Succeeded, "{record:?}");
    let steps = check_one_materialization_per_step(&store, run).await;
    assert_eq!(steps.len(), 1_050);

    let events = store.events(run, None, 1_000_000).await.unwrap();
    let materialized = materialized_attempts(&store, run).await;
    let rescued: usize = kills
        .iter()
        .map(|kill| kill.check_rescued(&events, &materialized))
        .sum();
    assert!(
        rescued > 0,
        "no step of the {} killed workers was rescued",
        kills.len()
    );
}

/// The leader is SIGKILLed while it runs steps: another worker takes the
/// lease in a new term within the lease's TTL (plus a pass and the margin),
/// and maintenance goes on under it: the dead leader's steps are rescued and
/// the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_maintenance_goes_on() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::new(&db);
    let (engine, store) = engine(&db, &cluster).await;
    for _ in 0..3 {
        cluster.start(&["--concurrency", "2"]);
    }
    let days = PartitionSelection::Range {
        from: "2023-02-01".to_owned(),
        to: "2023-02-12".to_owned(),
    };
    let run = submit(&engine, &["slow"], days).await;

    // Wait for a leader that runs a step of the run.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let (victim, old_term, steps) = loop {
        assert!(Instant::now() < deadline, "no leader ran a step");
        cluster.assert_alive();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (Ok(Some(lease)), Ok(steps)) = (store.lease("leader").await, store.steps(run).await)
        else {
            continue;
        };
        let pid = worker_pid(&lease.holder.0);
        let busy = steps.iter().any(|s| {
            s.state == StepState::Running
                && s.worker.as_ref().map(|w| worker_pid(&w.0)) == Some(pid)
        });
        if let Some(victim) = cluster.index_of(pid)
            && busy
        {
            break (victim, lease.term, steps);
        }
    };
    let kill = cluster.kill_busy(victim, &steps, true);

    // Another process takes the lease over in a new term.
    let takeover_within = LEADER_LEASE + MAINTENANCE_EVERY + MARGIN;
    let new_leader = loop {
        if let Ok(Some(lease)) = store.lease("leader").await
            && lease.term > old_term
        {
            break lease;
        }
        assert!(
            kill.at_instant.elapsed() < takeover_within,
            "no new leader within {takeover_within:?} of killing the leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new_pid = worker_pid(&new_leader.holder.0);
    assert_ne!(new_pid, kill.pid, "the dead leader cannot renew");
    assert!(
        cluster.index_of(new_pid).is_some(),
        "the new leader {} is one of the workers",
        new_leader.holder
    );

    // Maintenance goes on: the dead leader's steps are rescued.
    let record = wait_for_run(&store, run, &mut cluster).await;
    assert_eq!(record.state, RunState::Succeeded, "{record:?}");
    check_one_materialization_per_step(&store, run).await;
    let events = store.events(run, None, 100_000).await.unwrap();
    let materialized = materialized_attempts(&store, run).await;
    let rescued = kill.check_rescued(&events, &materialized);
    assert!(rescued > 0, "no step of the dead leader was rescued");
}

/// Every backend of the test database is terminated three times during a
/// run: the workers reconnect (their store calls retry), none exits, and the
/// run succeeds with one materialization per asset partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reconnect_after_backends_are_terminated() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::new(&db);
    let (engine, store) = engine(&db, &cluster).await;
    for _ in 0..3 {
        cluster.start(&["--concurrency", "4"]);
    }
    let days = PartitionSelection::Range {
        from: "2023-03-01".to_owned(),
        to: "2023-06-28".to_owned(),
    };
    let run = submit(&engine, &["raw", "clean", "summary"], days).await;
    assert_eq!(step_count(&store, run).await, 360);

    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut terminated = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.assert_alive();
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ( \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()) AS ended",
        )
        .bind(db.name())
        .fetch_one(&mut admin)
        .await
        .unwrap();
        terminated.push(ended);
    }
    admin.close().await.unwrap();
    assert!(
        terminated.iter().all(|&n| n > 0),
        "each round ended some backends: {terminated:?}"
    );

    let record = wait_for_run(&store, run, &mut cluster).await;
    assert_eq!(record.state, RunState::Succeeded, "{record:?}");
    check_one_materialization_per_step(&store, run).await;
    cluster.assert_alive();
}

/// A worker told to stop with SIGTERM while it runs a step claims nothing
/// more, finishes the step, records it and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_step_finish() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::new(&db);
    let (engine, store) = engine(&db, &cluster).await;
    let worker = cluster.start(&["--concurrency", "2", "--drain-timeout", "30s"]);
    let days = PartitionSelection::Keys(vec!["2023-04-01".to_owned()]);
    let run = submit(&engine, &["slow"], days).await;

    wait_until_running(&store, run, cluster.pid(worker), &mut cluster).await;
    cluster.terminate(worker);
    let status = cluster.wait_exit(worker, SLOW_STEP + MARGIN);
    assert!(status.success(), "the drained worker exits 0: {status}");

    let steps = check_one_materialization_per_step(&store, run).await;
    assert_eq!(steps[0].attempt, 1, "recorded by the first attempt");
    let events = store.events(run, None, 1_000).await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::StepReleased | EventKind::StepRetrying)),
        "nothing was handed back: {events:#?}"
    );
}

/// With a drain timeout shorter than its step, a worker told to stop hands
/// the step back when the timeout passes and exits 0; another worker runs
/// the step and records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_hands_a_step_to_another_worker() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::new(&db);
    let (engine, store) = engine(&db, &cluster).await;
    let first = cluster.start(&["--concurrency", "2", "--drain-timeout", "500ms"]);
    let days = PartitionSelection::Keys(vec!["2023-04-02".to_owned()]);
    let run = submit(&engine, &["slow"], days).await;

    wait_until_running(&store, run, cluster.pid(first), &mut cluster).await;
    let second = cluster.start(&["--concurrency", "2"]);
    cluster.terminate(first);
    let status = cluster.wait_exit(first, Duration::from_millis(500) + MARGIN);
    assert!(status.success(), "the drained worker exits 0: {status}");

    let record = wait_for_run(&store, run, &mut cluster).await;
    assert_eq!(record.state, RunState::Succeeded, "{record:?}");
    let steps = check_one_materialization_per_step(&store, run).await;
    let by = steps[0].worker.as_ref().map(|w| worker_pid(&w.0));
    assert_eq!(by, Some(cluster.pid(second)), "the other worker ran it");
    let events = store.events(run, None, 1_000).await.unwrap();
    let released: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::StepReleased)
        .collect();
    assert_eq!(released.len(), 1, "handed back once: {events:#?}");
    assert_eq!(
        released[0].data["worker"].as_str().map(worker_pid),
        Some(cluster.pid(first))
    );
}

/// Three worker processes serving the `llm` queue, eight slots each, and one
/// serving only `default`: the `llm` steps of a backfill never run more than
/// the queue's limit at once (judged by the recorded start and end of each
/// materialization, which lie within its step's claim), and none runs on the
/// worker that does not serve the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_limit_holds_across_worker_processes() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::new(&db);
    let (engine, store) = engine(&db, &cluster).await;
    for _ in 0..3 {
        cluster.start(&["--concurrency", "8", "--queues", "llm,default"]);
    }
    let other = cluster.start(&["--concurrency", "8", "--queues", "default"]);
    let run = submit(
        &engine,
        &["limited"],
        PartitionSelection::Range {
            from: FIRST_DAY.into(),
            to: "2023-02-19".into(),
        },
    )
    .await;
    assert_eq!(step_count(&store, run).await, 50);

    let record = wait_for_run(&store, run, &mut cluster).await;
    assert_eq!(record.state, RunState::Succeeded, "{record:?}");
    let steps = check_one_materialization_per_step(&store, run).await;
    let other_pid = cluster.pid(other);
    assert!(
        steps
            .iter()
            .all(|s| s.worker.as_ref().map(|w| worker_pid(&w.0)) != Some(other_pid)),
        "the worker serving only `default` ran an `llm` step"
    );
    let pids: BTreeSet<u32> = steps
        .iter()
        .filter_map(|s| s.worker.as_ref().map(|w| worker_pid(&w.0)))
        .collect();

    // The most materializations in progress at any one time.
    let mut edges: Vec<(Timestamp, i32)> = Vec::new();
    for m in store.materializations_of_run(run).await.unwrap() {
        edges.push((m.started_at, 1));
        edges.push((m.finished_at, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    assert!(
        most <= LLM_LIMIT as i32,
        "{most} `llm` steps ran at once; the limit is {LLM_LIMIT}"
    );
    eprintln!(
        "at most {most} at once, on {} worker process(es)",
        pids.len()
    );
}

// -- the processes --------------------------------------------------------------

/// The worker processes of one test, killed by pid when it ends.
struct Cluster {
    url: String,
    /// The file I/O manager's directory, shared by all workers.
    storage: PathBuf,
    /// Holds `storage` and the workers' logs.
    dir: tempfile::TempDir,
    workers: Vec<Worker>,
}

struct Worker {
    child: Child,
    log: PathBuf,
    /// Set once the test stopped it on purpose.
    exit: Option<ExitStatus>,
}

impl Cluster {
    fn new(db: &TestDatabase) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        Cluster {
            url: db.url().to_owned(),
            storage: dir.path().join("storage"),
            dir,
            workers: Vec::new(),
        }
    }

    /// Starts a worker with short leases and `extra` arguments; returns its
    /// index.
    fn start(&mut self, extra: &[&str]) -> usize {
        let lease = format!("{}ms", LEASE.as_millis());
        let leader_lease = format!("{}ms", LEADER_LEASE.as_millis());
        let storage = self.storage.display().to_string();
        let mut args = vec![
            "--store",
            &self.url,
            "--storage",
            &storage,
            "worker",
            "--lease",
            &lease,
            "--leader-lease",
            &leader_lease,
        ];
        args.extend_from_slice(extra);

        let index = self.workers.len();
        let log = self.dir.path().join(format!("worker-{index}.log"));
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, args.join("\n"))
            .env("FLOWSTONE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.workers.push(Worker {
            child,
            log,
            exit: None,
        });
        index
    }

    fn pid(&self, index: usize) -> u32 {
        self.workers[index].child.id()
    }

    /// The index of the live worker with this pid.
    fn index_of(&self, pid: u32) -> Option<usize> {
        self.workers
            .iter()
            .position(|w| w.exit.is_none() && w.child.id() == pid)
    }

    /// A live worker running a step among `steps`.
    fn busy_worker(&self, steps: &[StepRecord]) -> Option<usize> {
        steps
            .iter()
            .filter(|s| s.state == StepState::Running)
            .find_map(|s| self.index_of(worker_pid(&s.worker.as_ref()?.0)))
    }

    /// SIGKILLs a worker and notes the steps it was running among `steps`.
    fn kill_busy(&mut self, index: usize, steps: &[StepRecord], leader: bool) -> Kill {
        let pid = self.pid(index);
        let running = steps
            .iter()
            .filter(|s| {
                s.state == StepState::Running
                    && s.worker.as_ref().map(|w| worker_pid(&w.0)) == Some(pid)
            })
            .map(|s| (s.id, s.attempt))
            .collect();
        let at = Timestamp::now();
        let at_instant = Instant::now();
        let worker = &mut self.workers[index];
        worker.child.kill().unwrap();
        worker.exit = Some(worker.child.wait().unwrap());
        Kill {
            pid,
            at,
            at_instant,
            leader,
            running,
        }
    }

    /// Sends SIGTERM to a worker, as a process manager stopping it would.
    fn terminate(&self, index: usize) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid(index).to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid(index));
    }

    /// Waits for a worker the test stopped to exit.
    fn wait_exit(&mut self, index: usize, within: Duration) -> ExitStatus {
        let started = Instant::now();
        let worker = &mut self.workers[index];
        loop {
            if let Some(status) = worker.child.try_wait().unwrap() {
                worker.exit = Some(status);
                return status;
            }
            assert!(
                started.elapsed() < within,
                "worker {index} did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails the test when a worker it did not stop has exited.
    fn assert_alive(&mut self) {
        for (index, worker) in self.workers.iter_mut().enumerate() {
            if worker.exit.is_some() {
                continue;
            }
            if let Some(status) = worker.child.try_wait().unwrap() {
                worker.exit = Some(status);
                panic!("worker {index} exited by itself with {status}");
            }
        }
    }
}

impl Drop for Cluster {
    /// Kills every worker still running, by its pid; on failure prints the
    /// end of each worker's log.
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if worker.exit.is_none() {
                let _ = worker.child.kill();
                let _ = worker.child.wait();
            }
        }
        if std::thread::panicking() {
            for (index, worker) in self.workers.iter().enumerate() {
                let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!(
                    "--- worker {index} (pid {}), last lines:",
                    worker.child.id()
                );
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A SIGKILL the test gave, and what the worker was running then.
struct Kill {
    pid: u32,
    at: Timestamp,
    at_instant: Instant,
    /// Whether the worker held the leader lease.
    leader: bool,
    /// Steps running under the worker just before, with their attempt.
    running: BTreeMap<StepId, u32>,
}

impl Kill {
    /// The claim lease runs out, then the leader's next pass rescues; when
    /// the victim led, another process must first take the lease over.
    fn rescue_within(&self) -> Duration {
        let takeover = if self.leader {
            LEADER_LEASE
        } else {
            Duration::ZERO
        };
        LEASE + takeover + MAINTENANCE_EVERY + MARGIN
    }

    /// Checks that the killed worker's steps were rescued in time: each step
    /// it was running was rescued, or had been recorded just before the
    /// kill (a batch may commit between the test's look and the kill).
    /// Returns how many were rescued.
    fn check_rescued(
        &self,
        events: &[EventRecord],
        materialized: &HashSet<(StepId, u32)>,
    ) -> usize {
        let rescues: BTreeMap<StepId, &EventRecord> = events
            .iter()
            .filter(|e| {
                e.kind == EventKind::StepRetrying
                    && e.data["rescued"] == true
                    && e.data["worker"].as_str().map(worker_pid) == Some(self.pid)
            })
            .filter_map(|e| Some((e.step_id?, e)))
            .collect();
        let bound = SignedDuration::try_from(self.rescue_within()).unwrap();
        let latest = rescues.values().map(|e| e.at).max().unwrap_or(self.at);
        eprintln!(
            "killed worker {} (leader: {}) with {} step(s) running: {} rescued, the last \
             {:.2} s after the kill (bound {:.2} s)",
            self.pid,
            self.leader,
            self.running.len(),
            rescues.len(),
            latest.duration_since(self.at).as_secs_f64(),
            bound.as_secs_f64(),
        );
        for (step, event) in &rescues {
            let after = event.at.duration_since(self.at);
            assert!(
                after <= bound,
                "step {step} of worker {} rescued {after:#} after the kill, over {bound:#}",
                self.pid
            );
        }
        for (step, attempt) in &self.running {
            assert!(
                rescues.contains_key(step) || materialized.contains(&(*step, *attempt)),
                "step {step} (attempt {attempt}) of killed worker {} was neither rescued nor \
                 recorded",
                self.pid
            );
        }
        rescues.len()
    }
}

// -- the store --------------------------------------------------------------------

/// An engine on the test database for submitting runs, and its store for
/// watching them.
async fn engine(db: &TestDatabase, cluster: &Cluster) -> (Engine, Arc<dyn Store>) {
    let opened = flowstone::open_store(Some(db.url()), Some(&cluster.storage))
        .await
        .unwrap();
    let store = opened.store.clone();
    (
        Engine::new(test_definitions().unwrap(), opened.store),
        store,
    )
}

async fn submit(engine: &Engine, assets: &[&str], partitions: PartitionSelection) -> RunId {
    let assets = assets.iter().map(|a| AssetKey::new(a).unwrap()).collect();
    let request = RunRequest::backfill(assets, partitions);
    let (_, run) = engine.submit(&request).await.unwrap();
    run.expect("the backfill has steps").id
}

async fn step_count(store: &Arc<dyn Store>, run: RunId) -> u64 {
    store.step_counts(run).await.unwrap().total()
}

/// The pid in a worker id (`host:pid:nonce`).
fn worker_pid(id: &str) -> u32 {
    let mut parts = id.rsplitn(3, ':');
    let _nonce = parts.next();
    parts
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("worker id {id:?} has no pid"))
}

async fn leader_pid(store: &Arc<dyn Store>) -> Option<u32> {
    let lease = store.lease("leader").await.ok()??;
    let live = lease.expires_at > Timestamp::now();
    live.then(|| worker_pid(&lease.holder.0))
}

/// Waits until the run has ended, failing if a worker exits by itself or
/// the run takes longer than [`RUN_TIMEOUT`].
async fn wait_for_run(
    store: &Arc<dyn Store>,
    run: RunId,
    cluster: &mut Cluster,
) -> flowstone::store::RunRecord {
    let started = Instant::now();
    loop {
        cluster.assert_alive();
        // The store may be between connections (terminated backends).
        if let Ok(Some(record)) = store.run(run).await
            && record.state != RunState::Running
        {
            return record;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let counts = store.step_counts(run).await;
            panic!("run {run} did not end within {RUN_TIMEOUT:?}: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the worker with `pid` runs a step of the run.
async fn wait_until_running(store: &Arc<dyn Store>, run: RunId, pid: u32, cluster: &mut Cluster) {
    let started = Instant::now();
    loop {
        cluster.assert_alive();
        let steps = store.steps(run).await.unwrap();
        let running = steps.iter().any(|s| {
            s.state == StepState::Running
                && s.worker.as_ref().map(|w| worker_pid(&w.0)) == Some(pid)
        });
        if running {
            return;
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "worker {pid} did not start a step"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that every step of the run completed and that each asset partition
/// has exactly one materialization from the run, made by its step; returns
/// the steps.
async fn check_one_materialization_per_step(store: &Arc<dyn Store>, run: RunId) -> Vec<StepRecord> {
    let steps = store.steps(run).await.unwrap();
    let unfinished: Vec<_> = steps
        .iter()
        .filter(|s| s.state != StepState::Completed)
        .collect();
    assert!(
        unfinished.is_empty(),
        "steps not completed: {unfinished:#?}"
    );

    let mut by_target: BTreeMap<String, Vec<StepId>> = BTreeMap::new();
    for m in store.materializations_of_run(run).await.unwrap() {
        by_target
            .entry(m.target.to_string())
            .or_default()
            .push(m.step_id);
    }
    let twice: Vec<_> = by_target.iter().filter(|(_, m)| m.len() > 1).collect();
    assert!(twice.is_empty(), "materialized more than once: {twice:?}");
    let targets: BTreeSet<String> = steps.iter().map(|s| s.target.to_string()).collect();
    let recorded: BTreeSet<String> = by_target.keys().cloned().collect();
    assert_eq!(recorded, targets, "one materialization per step's target");
    for step in &steps {
        assert_eq!(by_target[&step.target.to_string()], [step.id]);
    }
    steps
}

/// The (step, attempt) of each materialization of the run.
async fn materialized_attempts(store: &Arc<dyn Store>, run: RunId) -> HashSet<(StepId, u32)> {
    store
        .materializations_of_run(run)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.step_id, m.attempt))
        .collect()
}
