//! What only the SQLite store promises: where the file goes, leases in the
//! file, corrupt rows, survival of a writer killed with SIGKILL, and a printed
//! (never asserted) throughput figure.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowstone_core::store::{
    ClaimRequest, ClaimedStep, Completion, NewMaterialization, NewRun, NewStep, Outcome, RunState,
    StoreError, Trigger,
};
use flowstone_core::{AssetKey, AssetPartition, MaterializationId, RunId, Store, WorkerId};
use flowstone_sqlite::SqliteStore;
use jiff::{SignedDuration, Timestamp};
use sqlx::{Connection, SqliteConnection};

// -- migrations ----------------------------------------------------------------

/// A store written by the first release (schema version 1) and filled with a
/// run half done opens under this version: every later migration applies to
/// the rows already there, and the run goes on where it stood.
#[tokio::test]
async fn a_filled_version_1_store_migrates_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("v1");
    std::fs::create_dir(&first).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    std::fs::copy(
        shipped.join("20250101000000_initial.sql"),
        first.join("20250101000000_initial.sql"),
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(first.as_path()).await.unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("flowstone.db").display()
    );
    let mut raw = SqliteConnection::connect(&url).await.unwrap();
    migrator.run(&mut raw).await.unwrap();

    // A run of two steps: `raw` completed with its materialization, `clean`
    // released and waiting; a failed step of an older run; a worker.
    let run = RunId::new();
    let old = RunId::new();
    let t = 1_765_000_000_000_000_i64;
    for sql in [
        "INSERT INTO runs VALUES (?1, 'running', 'cli', 'ada', 'backfill raw', ?3, NULL)",
        "INSERT INTO runs VALUES (?2, 'failed', 'cli', 'ada', 'raw once', ?3, ?3)",
        "INSERT INTO steps VALUES (1, ?1, 'raw', '2024-01-01', 'completed', 1, 3, 0, ?3, 0, \
         'w1', NULL, ?3, ?3, NULL)",
        "INSERT INTO steps VALUES (2, ?1, 'clean', '2024-01-01', 'available', 0, 3, 0, ?3, 0, \
         NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO steps VALUES (3, ?2, 'raw', '2024-01-02', 'failed', 3, 3, 0, ?3, 0, \
         'w1', NULL, ?3, ?3, 'boom')",
        "INSERT INTO step_deps VALUES (1, 2)",
        "INSERT INTO materializations VALUES (1, 'raw', '2024-01-01', ?1, 1, 1, ?3, ?3, 'cli', \
         'ada', 'v1', 'abc', '{\"rows\": 3}', 'file:///raw/2024-01-01.json', 'default')",
        "INSERT INTO events (run_id, step_id, at, kind, level, message) \
         VALUES (?1, 1, ?3, 'materialized', 'info', 'raw[2024-01-01] materialized')",
        "INSERT INTO workers VALUES ('w1', 'old-host', 42, ?3, ?3)",
    ] {
        sqlx::query(sql)
            .bind(run.to_string())
            .bind(old.to_string())
            .bind(t)
            .execute(&mut raw)
            .await
            .unwrap();
    }

    let store = SqliteStore::open(dir.path().to_str().unwrap())
        .await
        .unwrap();
    let versions = scalar(&mut raw, "SELECT count(*) FROM _sqlx_migrations").await;
    assert_eq!(
        versions as usize,
        std::fs::read_dir(&shipped).unwrap().count(),
        "every shipped migration applied"
    );

    let record = store.run(run).await.unwrap().expect("the run survives");
    assert_eq!(record.state, RunState::Running);
    assert_eq!(record.max_parallel, None, "an old run has no cap");
    assert_eq!(record.steps.completed, 1);
    assert_eq!(store.steps(run).await.unwrap().len(), 2);
    let raw_key = AssetPartition::new(key("raw"), Some("2024-01-01".into()));
    let latest = store.latest_materializations(&[raw_key]).await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].metadata["rows"], 3);
    let failed = store.partitions(&key("raw")).await.unwrap();
    assert!(
        failed
            .iter()
            .any(|p| p.failure.as_ref().is_some_and(|f| f.error == "boom")),
        "{failed:?}"
    );
    assert_eq!(store.workers().await.unwrap()[0].host, "old-host");

    // The waiting step is in the default queue and is claimed; completing
    // it ends the run's queue.
    let worker = WorkerId("w2".into());
    let claimed = store
        .claim(claim_request(&worker, Timestamp::now(), 10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].target.asset, key("clean"));
    let made = complete(&store, &worker, &claimed, |_| vec![MaterializationId(1)]).await;
    assert_eq!(made.len(), 1);
    assert!(!store.has_live_steps(run).await.unwrap());
    let inputs = store.inputs_of(&made).await.unwrap();
    assert_eq!(
        inputs[0].1.id,
        MaterializationId(1),
        "lineage to the old row"
    );

    // And the newest tables work beside the old rows.
    assert!(store.tokens().await.unwrap().is_empty());
}

// -- locations -----------------------------------------------------------------

#[tokio::test]
async fn every_location_form_opens_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();

    let cases = [
        (
            format!("sqlite://{root}/a"),
            format!("{root}/a/flowstone.db"),
        ),
        (
            format!("sqlite:{root}/b/state.db"),
            format!("{root}/b/state.db"),
        ),
        (
            format!("{root}/c/d/e"),
            format!("{root}/c/d/e/flowstone.db"),
        ),
        (format!("{root}/f/g.sqlite3"), format!("{root}/f/g.sqlite3")),
        (root.to_owned(), format!("{root}/flowstone.db")),
    ];
    for (location, file) in cases {
        let store = SqliteStore::open(&location).await.unwrap();
        assert!(Path::new(&file).is_file(), "{location} makes {file}");
        assert_eq!(store.describe(), format!("sqlite://{file}"), "{location}");
        let run = store.create_run(one_step_run()).await.unwrap();
        drop(store);

        let store = SqliteStore::open(&location).await.unwrap();
        assert!(
            store.run(run.id).await.unwrap().is_some(),
            "{location} keeps its data"
        );
    }

    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
    assert_eq!(store.describe(), "sqlite::memory:");
}

#[tokio::test]
async fn bad_locations_are_config_errors_that_say_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "not a database").unwrap();
    let fake_db = dir.path().join("fake.db");
    std::fs::write(
        &fake_db,
        "not a database either, but long enough to be read as one ".repeat(64),
    )
    .unwrap();
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, "a file where a directory should be").unwrap();

    let cases = [
        ("".to_owned(), "the path is empty"),
        (
            "postgres://localhost/flowstone".to_owned(),
            "`postgres://` is not SQLite",
        ),
        ("sqlite://x.db?mode=ro".to_owned(), "query parameters"),
        (text_file.display().to_string(), "does not end in `.db`"),
        (fake_db.display().to_string(), "not a"),
        (
            format!("{}/sub/flow.db", blocked.display()),
            "cannot create the store directory",
        ),
    ];
    for (location, expected) in cases {
        match SqliteStore::open(&location).await {
            Err(StoreError::Config(message)) => {
                assert!(message.contains(expected), "{location:?}: {message}");
            }
            Err(other) => panic!("{location:?}: expected a config error, got {other:?}"),
            Ok(_) => panic!("{location:?}: expected an error"),
        }
    }
}

// -- details of this backend ------------------------------------------------------

#[tokio::test]
async fn heartbeat_extends_the_lease_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().to_str().unwrap())
        .await
        .unwrap();
    let run = store.create_run(one_step_run()).await.unwrap();
    let w = WorkerId("w1".into());
    let t0 = Timestamp::from_second(1_700_000_000).unwrap();
    let claimed = store.claim(claim_request(&w, t0, 100)).await.unwrap();
    assert_eq!(claimed.len(), 1);

    let mut raw = raw_connection(dir.path()).await;
    let minute = 60_000_000;
    assert_eq!(
        lease_until(&mut raw, run.id).await,
        t0.as_microsecond() + minute,
        "claim: now + lease"
    );

    let t1 = t0 + SignedDuration::from_secs(45);
    store
        .heartbeat(&w, t1, SignedDuration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        lease_until(&mut raw, run.id).await,
        t1.as_microsecond() + 2 * minute,
        "heartbeat extends"
    );

    store
        .heartbeat(&WorkerId("other".into()), t1, SignedDuration::from_hours(9))
        .await
        .unwrap();
    assert_eq!(
        lease_until(&mut raw, run.id).await,
        t1.as_microsecond() + 2 * minute,
        "only w1's steps"
    );
}

#[tokio::test]
async fn unknown_runs_are_not_found() {
    let store = SqliteStore::in_memory().await.unwrap();
    let unknown = RunId::new();
    let now = Timestamp::now();
    let err = store.cancel_run(unknown, now).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .set_run_state(unknown, &[RunState::Running], RunState::Failed, now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&unknown.to_string()), "{err}");
}

#[tokio::test]
async fn bad_upstream_indexes_are_rejected_before_writing() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut run = one_step_run();
    run.steps[0].upstream = vec![3];
    let err = store.create_run(run.clone()).await.unwrap_err();
    assert!(err.to_string().contains("upstream step 3"), "{err}");
    assert!(
        store.run(run.id).await.unwrap().is_none(),
        "nothing was written"
    );
}

#[tokio::test]
async fn corrupt_rows_are_corrupt_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().to_str().unwrap())
        .await
        .unwrap();
    let run = store.create_run(one_step_run()).await.unwrap();

    let mut raw = raw_connection(dir.path()).await;
    sqlx::query("UPDATE runs SET triggered_by = 'telepathy' WHERE id = ?1")
        .bind(run.id.to_string())
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE steps SET started_at = ?1")
        .bind(i64::MAX)
        .execute(&mut raw)
        .await
        .unwrap();

    let err = store.run(run.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("telepathy")),
        "{err:?}"
    );
    let err = store.steps(run.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("started_at")),
        "{err:?}"
    );
}

// -- crash safety ----------------------------------------------------------------

/// Set in the child process: the database the child writes to until killed.
const CHILD_ENV: &str = "FLOWSTONE_SQLITE_KILL_CHILD";
const CHILD_TEST: &str = "killed_writer_leaves_whole_completions";

/// A child process writing completions in a loop is killed with SIGKILL,
/// several times at different moments; the database then opens cleanly, passes
/// SQLite's integrity check, every committed completion is whole, and the work
/// left running can be released and finished.
#[test]
fn killed_writer_leaves_whole_completions() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if let Ok(path) = std::env::var(CHILD_ENV) {
        runtime.block_on(write_until_killed(&path));
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowstone.db").display().to_string();
    runtime.block_on(SqliteStore::open(&path)).unwrap();

    for (round, (batches, delay_ms)) in [(2, 0), (3, 3), (5, 11), (4, 1), (6, 7)].iter().enumerate()
    {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut committed = 0;
        while committed < *batches {
            let line = lines.next().expect("the child stopped early").unwrap();
            if line.starts_with("committed ") {
                committed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(*delay_ms));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the child was killed");
    }

    runtime.block_on(check_after_kills(&path));
}

/// The child: runs of raw -> clean pairs, claimed and completed in batches,
/// forever.
async fn write_until_killed(path: &str) {
    let store = SqliteStore::open(path).await.unwrap();
    let worker = WorkerId(format!("child-{}", std::process::id()));
    for batch in 0.. {
        let run = store.create_run(pairs_run(32)).await.unwrap();
        let claim = || ClaimRequest {
            run: Some(run.id),
            ..claim_request(&worker, Timestamp::now(), 64)
        };
        let raws = store.claim(claim()).await.unwrap();
        let raw_ids = complete(&store, &worker, &raws, |_| vec![]).await;
        let cleans = store.claim(claim()).await.unwrap();
        let by_partition: BTreeMap<_, _> = raws
            .iter()
            .map(|s| s.target.partition.clone())
            .zip(raw_ids)
            .collect();
        complete(&store, &worker, &cleans, |s| {
            vec![by_partition[&s.target.partition]]
        })
        .await;
        println!("committed {batch} {}", run.id);
    }
}

async fn check_after_kills(path: &str) {
    let store = SqliteStore::open(path)
        .await
        .expect("the database opens after the kills");

    let mut raw = SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(integrity, "ok");

    let materializations = scalar(&mut raw, "SELECT count(*) FROM materializations").await;
    let completed = scalar(
        &mut raw,
        "SELECT count(*) FROM steps WHERE state = 'completed'",
    )
    .await;
    assert!(
        materializations >= 2 * 32 * 5,
        "the children committed work: {materializations}"
    );
    assert_eq!(
        materializations, completed,
        "one materialization per completed step"
    );
    let unmatched = scalar(
        &mut raw,
        "SELECT count(*) FROM steps s WHERE s.state = 'completed' \
         AND (SELECT count(*) FROM materializations m WHERE m.step_id = s.id) != 1",
    );
    assert_eq!(
        unmatched.await,
        0,
        "every completed step has exactly its materialization"
    );
    let orphans = scalar(
        &mut raw,
        "SELECT count(*) FROM materializations m \
         WHERE NOT EXISTS (SELECT 1 FROM steps s WHERE s.id = m.step_id \
                           AND s.state = 'completed')",
    );
    assert_eq!(
        orphans.await,
        0,
        "no materialization without its completed step"
    );
    let without_lineage = scalar(
        &mut raw,
        "SELECT count(*) FROM materializations m WHERE m.asset_key = 'clean' \
         AND (SELECT count(*) FROM lineage l WHERE l.consumer_id = m.id) != 1",
    );
    assert_eq!(
        without_lineage.await,
        0,
        "every clean materialization has its lineage edge"
    );
    let events = scalar(
        &mut raw,
        "SELECT count(*) FROM events WHERE kind = 'materialized'",
    )
    .await;
    assert_eq!(
        events, materializations,
        "one materialized event per materialization"
    );
    let unreleased = scalar(
        &mut raw,
        "SELECT count(*) FROM step_deps e \
         JOIN steps u ON u.id = e.upstream_id JOIN steps d ON d.id = e.downstream_id \
         WHERE u.state = 'completed' AND d.state = 'pending'",
    );
    assert_eq!(
        unreleased.await,
        0,
        "a completion released its downstream step with it"
    );

    // Nothing is stuck: the killed workers' claims can be released and the
    // remaining work finished.
    let worker = WorkerId("survivor".into());
    let mut dead = Vec::new();
    for run in store.runs(1000).await.unwrap() {
        dead.extend(store.running_workers(run.id).await.unwrap());
    }
    store
        .release(None, &dead, "worker killed", Timestamp::now())
        .await
        .unwrap();
    loop {
        let claimed = store
            .claim(claim_request(&worker, Timestamp::now(), 256))
            .await
            .unwrap();
        if claimed.is_empty() {
            break;
        }
        let inputs: Vec<Vec<MaterializationId>> = {
            let targets: Vec<AssetPartition> = claimed
                .iter()
                .filter(|s| s.target.asset.as_str() == "clean")
                .map(|s| AssetPartition::new(key("raw"), s.target.partition.clone()))
                .collect();
            let latest = store.latest_materializations(&targets).await.unwrap();
            claimed
                .iter()
                .map(|s| match s.target.asset.as_str() {
                    "clean" => latest
                        .iter()
                        .filter(|m| m.target.partition == s.target.partition)
                        .map(|m| m.id)
                        .collect(),
                    _ => vec![],
                })
                .collect()
        };
        let batch = claimed
            .iter()
            .zip(inputs)
            .map(|(step, inputs)| completion(step, &worker, inputs))
            .collect();
        store.complete(batch).await.unwrap();
    }
    for run in store.runs(1000).await.unwrap() {
        let counts = store.step_counts(run.id).await.unwrap();
        assert_eq!(
            counts.completed,
            counts.total(),
            "run {} finished: {counts:?}",
            run.id
        );
    }
}

// -- throughput --------------------------------------------------------------------

/// Claims and completes no-op steps in batches and prints the rate. Not an
/// assertion: the figure depends on the machine and the build profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_no_op_batches() {
    const STEPS: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().to_str().unwrap())
        .await
        .unwrap();
    let worker = WorkerId("bench".into());

    for batch_size in [64, 256] {
        // Independent steps: the claim and completion path alone.
        let started = Instant::now();
        let mut run = pairs_run(0);
        run.steps = (0..STEPS)
            .map(|i| NewStep {
                target: AssetPartition::new(key("noop"), Some(format!("p{i:06}").into())),
                upstream: vec![],
                max_attempts: 1,
                priority: 0,
                queue: flowstone_core::store::DEFAULT_QUEUE.into(),
            })
            .collect();
        store.create_run(run).await.unwrap();
        let created = started.elapsed();

        let (started, cpu_started) = (Instant::now(), cpu_time());
        let (mut done, mut claiming, mut completing) = (0, Duration::ZERO, Duration::ZERO);
        loop {
            let t = Instant::now();
            let now = Timestamp::now();
            let claimed = store
                .claim(claim_request(&worker, now, batch_size))
                .await
                .unwrap();
            claiming += t.elapsed();
            if claimed.is_empty() {
                break;
            }
            let t = Instant::now();
            done += complete(&store, &worker, &claimed, |_| vec![]).await.len();
            completing += t.elapsed();
        }
        let (elapsed, cpu) = (started.elapsed(), cpu_time() - cpu_started);
        assert_eq!(done, STEPS);
        println!(
            "sqlite throughput: {STEPS} independent no-op steps in batches of {batch_size}: \
             {:.0} steps/s claimed+completed, {:.0} per CPU second ({elapsed:.2?}: claims \
             {claiming:.2?}, completions {completing:.2?}; CPU {cpu:.2?}); \
             create_run {created:.2?}",
            STEPS as f64 / elapsed.as_secs_f64(),
            STEPS as f64 / cpu.as_secs_f64(),
        );
    }

    // Pairs: each completion also releases a downstream step and records lineage.
    let started = Instant::now();
    store.create_run(pairs_run(STEPS / 2)).await.unwrap();
    let created = started.elapsed();
    let (started, cpu_started) = (Instant::now(), cpu_time());
    let mut done = 0;
    let mut raw_ids = BTreeMap::new();
    loop {
        let claimed = store
            .claim(claim_request(&worker, Timestamp::now(), 256))
            .await
            .unwrap();
        if claimed.is_empty() {
            break;
        }
        let ids = complete(&store, &worker, &claimed, |s| {
            raw_ids
                .get(&s.target.partition)
                .copied()
                .into_iter()
                .collect()
        })
        .await;
        for (step, id) in claimed.iter().zip(ids) {
            if step.target.asset.as_str() == "raw" {
                raw_ids.insert(step.target.partition.clone(), id);
            }
        }
        done += claimed.len();
    }
    let (elapsed, cpu) = (started.elapsed(), cpu_time() - cpu_started);
    assert_eq!(done, STEPS);
    println!(
        "sqlite throughput: {STEPS} steps as raw -> clean pairs in batches of 256: {:.0} steps/s, \
         {:.0} per CPU second ({elapsed:.2?}; CPU {cpu:.2?}); create_run {created:.2?}",
        STEPS as f64 / elapsed.as_secs_f64(),
        STEPS as f64 / cpu.as_secs_f64(),
    );
}

/// CPU time of this process so far (all threads), from `/proc/self/stat`;
/// zero where that file is missing. The wall-clock rate depends on what else
/// the machine runs, this one much less.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of those, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

// -- helpers -----------------------------------------------------------------------

fn key(asset: &str) -> AssetKey {
    AssetKey::new(asset).unwrap()
}

fn one_step_run() -> NewRun {
    let mut run = pairs_run(0);
    run.steps.push(NewStep {
        target: AssetPartition::new(key("a"), None),
        upstream: vec![],
        max_attempts: 1,
        priority: 0,
        queue: flowstone_core::store::DEFAULT_QUEUE.into(),
    });
    run
}

/// `n` pairs `raw[p] -> clean[p]`.
/// `n` raw -> clean pairs; the partition keys carry the run id, so that runs
/// never share a live asset partition.
fn pairs_run(n: usize) -> NewRun {
    let id = RunId::new();
    let mut steps = Vec::with_capacity(2 * n);
    for i in 0..n {
        let partition = Some(format!("2013-01-{:02}-{i}-{id}", i % 28 + 1).into());
        steps.push(NewStep {
            target: AssetPartition::new(key("raw"), partition),
            upstream: vec![],
            max_attempts: 1,
            priority: 0,
            queue: flowstone_core::store::DEFAULT_QUEUE.into(),
        });
    }
    for i in 0..n {
        let partition = steps[i].target.partition.clone();
        steps.push(NewStep {
            target: AssetPartition::new(key("clean"), partition),
            upstream: vec![i],
            max_attempts: 1,
            priority: 0,
            queue: flowstone_core::store::DEFAULT_QUEUE.into(),
        });
    }
    NewRun {
        id,
        trigger: Trigger::Cli,
        user: "test".into(),
        description: "sqlite test".into(),
        created_at: Timestamp::now(),
        max_parallel: None,
        steps,
    }
}

fn claim_request(worker: &WorkerId, now: Timestamp, limit: u32) -> ClaimRequest {
    ClaimRequest {
        worker: worker.clone(),
        run: None,
        limit,
        now,
        lease: SignedDuration::from_secs(60),
        queues: None,
        limits: Default::default(),
    }
}

fn completion(step: &ClaimedStep, worker: &WorkerId, inputs: Vec<MaterializationId>) -> Completion {
    let now = Timestamp::now();
    Completion {
        step: step.id,
        attempt: step.attempt,
        worker: worker.clone(),
        materialization: NewMaterialization {
            target: step.target.clone(),
            run_id: step.run_id,
            step_id: step.id,
            attempt: step.attempt,
            started_at: now,
            finished_at: now,
            trigger: step.trigger,
            user: step.user.clone(),
            code_version: "1".into(),
            data_version: step.id.to_string(),
            metadata: BTreeMap::new(),
            location: String::new(),
            io_manager: "none".into(),
        },
        inputs,
        events: vec![],
    }
}

/// Completes `steps` in one batch; every item must be recorded.
async fn complete(
    store: &SqliteStore,
    worker: &WorkerId,
    steps: &[ClaimedStep],
    inputs: impl Fn(&ClaimedStep) -> Vec<MaterializationId>,
) -> Vec<MaterializationId> {
    let batch = steps
        .iter()
        .map(|s| completion(s, worker, inputs(s)))
        .collect();
    let outcomes = store.complete(batch).await.unwrap();
    outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Recorded(Some(id)) => id,
            other => panic!("expected a recorded completion, got {other:?}"),
        })
        .collect()
}

async fn scalar(raw: &mut SqliteConnection, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(raw).await.unwrap()
}

async fn lease_until(raw: &mut SqliteConnection, run: RunId) -> i64 {
    sqlx::query_scalar("SELECT lease_until FROM steps WHERE run_id = ?1")
        .bind(run.to_string())
        .fetch_one(raw)
        .await
        .unwrap()
}

async fn raw_connection(dir: &Path) -> SqliteConnection {
    let url = format!("sqlite://{}", dir.join("flowstone.db").display());
    SqliteConnection::connect(&url).await.unwrap()
}
