//! What only the PostgreSQL store promises: connection errors that say what
//! was wrong (without the password), leases on the database clock, text
//! PostgreSQL would refuse, corrupt rows, claimers in separate pools, batches
//! that share downstream steps without deadlocking, events that commit out of
//! id order, and a printed (never asserted) throughput figure.
//!
//! Each test runs on a database of its own (see `flowstone_postgres::testing`);
//! without a reachable server it prints `skipping: ...` and passes, unless
//! `CI` is set.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstone_core::store::{
    ClaimRequest, ClaimedStep, Completion, EventKind, Failure, Level, NewEvent, NewMaterialization,
    NewRun, NewStep, Outcome, RunState, StepState, StoreError, Trigger,
};
use flowstone_core::{AssetKey, AssetPartition, MaterializationId, RunId, Store, WorkerId};
use flowstone_postgres::PostgresStore;
use flowstone_postgres::testing::TestDatabase;
use jiff::{SignedDuration, Timestamp};
use sqlx::{Connection, PgConnection};

// -- connecting ----------------------------------------------------------------

#[tokio::test]
async fn connection_errors_say_what_was_wrong_without_the_password() {
    let cases = [
        (
            "postgres://fs:s3cret@127.0.0.1:notaport/db",
            "invalid PostgreSQL URL",
        ),
        (
            "postgres://fs:s3cret@127.0.0.1:1/db",
            "cannot connect to PostgreSQL at",
        ),
    ];
    for (url, expected) in cases {
        match PostgresStore::connect(url).await {
            Err(StoreError::Config(message)) => {
                assert!(message.contains(expected), "{url}: {message}");
                assert!(message.contains("fs:***@127.0.0.1"), "{url}: {message}");
                assert!(
                    !message.contains("s3cret"),
                    "{url}: the password shows: {message}"
                );
            }
            Err(other) => panic!("{url}: expected a config error, got {other:?}"),
            Ok(_) => panic!("{url}: expected an error"),
        }
    }
}

#[tokio::test]
async fn reconnecting_keeps_the_data_and_migrates_once() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    assert!(
        store.describe().starts_with("postgres://"),
        "{}",
        store.describe()
    );
    assert!(store.describe().contains(db.name()), "{}", store.describe());
    let run = store.create_run(one_step_run()).await.unwrap();
    drop(store);

    // Two processes starting together: both connect, the schema is made once.
    let (a, b) = tokio::join!(
        PostgresStore::connect(db.url()),
        PostgresStore::connect(db.url())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.run(run.id).await.unwrap().is_some(), "the data is kept");
    assert!(b.run(run.id).await.unwrap().is_some(), "the data is kept");
    let mut raw = raw_connection(&db).await;
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(migrations, files, "each migration applied once");
}

/// A database written by the first release (schema version 1) and filled
/// with a run half done opens under this version: every later migration
/// applies to the rows already there, and the run goes on where it stood.
#[tokio::test]
async fn a_filled_version_1_database_migrates_and_goes_on() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    std::fs::copy(
        shipped.join("20261204000000_initial.sql"),
        dir.path().join("20261204000000_initial.sql"),
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let mut raw = raw_connection(&db).await;
    migrator.run(&mut raw).await.unwrap();

    // A run of two steps: `raw` completed with its materialization, `clean`
    // released and waiting; a failed step of an older run; a worker. The
    // ids come from the sequences, as the first release took them.
    let run = RunId::new();
    let old = RunId::new();
    for sql in [
        "INSERT INTO runs VALUES ($1, 'running', 'cli', 'ada', 'backfill raw', now(), NULL)",
        "INSERT INTO runs VALUES ($2, 'failed', 'cli', 'ada', 'raw once', now(), now())",
        "INSERT INTO steps (run_id, asset_key, partition_key, state, attempt, max_attempts, \
         priority, scheduled_at, upstream_remaining, worker, started_at, finished_at) \
         VALUES ($1, 'raw', '2024-01-01', 'completed', 1, 3, 0, now(), 0, 'w1', now(), now())",
        "INSERT INTO steps (run_id, asset_key, partition_key, state, max_attempts, priority, \
         scheduled_at, upstream_remaining) \
         VALUES ($1, 'clean', '2024-01-01', 'available', 3, 0, now(), 0)",
        "INSERT INTO steps (run_id, asset_key, partition_key, state, attempt, max_attempts, \
         priority, scheduled_at, upstream_remaining, worker, started_at, finished_at, error) \
         VALUES ($2, 'raw', '2024-01-02', 'failed', 3, 3, 0, now(), 0, 'w1', now(), now(), 'boom')",
        "INSERT INTO step_deps VALUES (1, 2)",
        "INSERT INTO materializations (asset_key, partition_key, run_id, step_id, attempt, \
         started_at, finished_at, triggered_by, user_name, code_version, data_version, \
         metadata, location, io_manager) VALUES ('raw', '2024-01-01', $1, 1, 1, now(), now(), \
         'cli', 'ada', 'v1', 'abc', '{\"rows\": 3}', 'file:///raw/2024-01-01.json', 'default')",
        "INSERT INTO events (run_id, step_id, at, kind, level, message) \
         VALUES ($1, 1, now(), 'materialized', 'info', 'raw[2024-01-01] materialized')",
        "INSERT INTO workers VALUES ('w1', 'old-host', 42, now(), now())",
    ] {
        sqlx::query(sql)
            .bind(run.0)
            .bind(old.0)
            .execute(&mut raw)
            .await
            .unwrap();
    }

    let store = PostgresStore::connect(db.url()).await.unwrap();
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        versions as usize,
        std::fs::read_dir(&shipped).unwrap().count(),
        "every shipped migration applied"
    );

    let record = store.run(run).await.unwrap().expect("the run survives");
    assert_eq!(record.state, RunState::Running);
    assert_eq!(record.max_parallel, None, "an old run has no cap");
    assert_eq!(record.steps.completed, 1);
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
    // it records lineage to the old row and ends the run's queue.
    let worker = WorkerId("w2".into());
    let claimed = store
        .claim(claim_request(&worker, Timestamp::now(), 10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].target.asset, key("clean"));
    let input = latest[0].id;
    let outcomes = store
        .complete(vec![completion(&claimed[0], &worker, vec![input])])
        .await
        .unwrap();
    let Outcome::Recorded(Some(made)) = outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert!(!store.has_live_steps(run).await.unwrap());
    let inputs = store.inputs_of(&[made]).await.unwrap();
    assert_eq!(inputs[0].1.id, input, "lineage to the old row");

    // A new run takes ids past the old rows', and the newest tables work.
    store.create_run(one_step_run()).await.unwrap();
    assert!(store.tokens().await.unwrap().is_empty());
}

// -- details of this backend ------------------------------------------------------

/// Leases run from the database clock: a claim holds until `now() + lease`
/// and a heartbeat extends only its worker's steps, whatever `now` the caller
/// passes; the heartbeat time recorded is the caller's.
#[tokio::test]
async fn leases_follow_the_database_clock() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    let run = store.create_run(one_step_run()).await.unwrap();
    let w = WorkerId("w1".into());
    let long_ago = Timestamp::from_second(1_000_000_000).unwrap();
    let claimed = store.claim(claim_request(&w, long_ago, 100)).await.unwrap();
    assert_eq!(claimed.len(), 1);

    let mut raw = raw_connection(&db).await;
    let left = lease_left(&mut raw, run.id).await;
    assert!(
        (55.0..=60.0).contains(&left),
        "claim: now() + 60 s, not the caller's clock: {left}"
    );

    store
        .heartbeat(&w, long_ago, SignedDuration::from_secs(600))
        .await
        .unwrap();
    let left = lease_left(&mut raw, run.id).await;
    assert!(
        (595.0..=600.0).contains(&left),
        "heartbeat extends from now(): {left}"
    );

    store
        .heartbeat(
            &WorkerId("other".into()),
            long_ago,
            SignedDuration::from_hours(9),
        )
        .await
        .unwrap();
    let left = lease_left(&mut raw, run.id).await;
    assert!(left <= 600.0, "only w1's steps: {left}");
}

/// PostgreSQL refuses the NUL character in `text` and `jsonb`; the store
/// replaces it instead of failing the batch.
#[tokio::test]
async fn nul_characters_are_replaced_not_refused() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    let mut run = one_step_run();
    run.user = "nul\0user".into();
    let run = store.create_run(run).await.unwrap();
    let w = WorkerId("w1".into());
    let claimed = store
        .claim(claim_request(&w, Timestamp::now(), 1))
        .await
        .unwrap();

    let failure = Failure {
        step: claimed[0].id,
        attempt: claimed[0].attempt,
        worker: w.clone(),
        error: "bad\0bytes".into(),
        retry_at: None,
        finished_at: Timestamp::now(),
        events: vec![NewEvent {
            run_id: run.id,
            step_id: Some(claimed[0].id),
            at: Timestamp::now(),
            kind: EventKind::StepFailed,
            level: Level::Error,
            message: "bad\0bytes".into(),
            data: serde_json::json!({ "stderr\0": "x\0y" }),
        }],
    };
    let outcomes = store.fail(vec![failure]).await.unwrap();
    assert_eq!(outcomes, vec![Outcome::Recorded(None)]);

    let step = &store.steps(run.id).await.unwrap()[0];
    assert_eq!(step.error.as_deref(), Some("bad\u{FFFD}bytes"));
    let events = store.events(run.id, None, 10).await.unwrap();
    assert_eq!(events[0].message, "bad\u{FFFD}bytes");
    assert_eq!(
        events[0].data,
        serde_json::json!({ "stderr\u{FFFD}": "x\u{FFFD}y" })
    );
    assert_eq!(
        store.run(run.id).await.unwrap().unwrap().user,
        "nul\u{FFFD}user"
    );
}

#[tokio::test]
async fn unknown_runs_and_bad_upstream_indexes() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    let unknown = RunId::new();
    let now = Timestamp::now();
    let err = store.cancel_run(unknown, now).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .set_run_state(unknown, &[RunState::Running], RunState::Failed, now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&unknown.to_string()), "{err}");

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
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    let run = store.create_run(one_step_run()).await.unwrap();

    let mut raw = raw_connection(&db).await;
    sqlx::query("UPDATE runs SET triggered_by = 'telepathy' WHERE id = $1")
        .bind(run.id.0)
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE steps SET started_at = 'infinity'")
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
        matches!(&err, StoreError::Corrupt(m) if m.contains("infinite")),
        "{err:?}"
    );
}

// -- concurrency -------------------------------------------------------------------

/// Claimers on separate pools (as separate processes would be) share a queue
/// of 2,000 steps, completing and claiming in one call: no step is claimed
/// twice, every step completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimers_in_separate_pools_never_share_a_step() {
    const STEPS: usize = 2_000;
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let first = PostgresStore::connect(db.url()).await.unwrap();
    let mut run = pairs_run(0);
    run.steps = (0..STEPS)
        .map(|i| independent(&format!("p{i:05}")))
        .collect();
    let run = first.create_run(run).await.unwrap();

    let mut claimers = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let store = Arc::new(PostgresStore::connect(db.url()).await.unwrap());
        claimers.push(tokio::spawn(async move {
            let w = WorkerId(name.into());
            let mut mine = Vec::new();
            let mut claimed = store
                .claim(claim_request(&w, Timestamp::now(), 16))
                .await
                .unwrap();
            while !claimed.is_empty() {
                mine.extend(claimed.iter().map(|c| c.id));
                let batch = claimed.iter().map(|c| completion(c, &w, vec![])).collect();
                let next = claim_request(&w, Timestamp::now(), 16);
                let (outcomes, next) = store.complete_and_claim(batch, next).await.unwrap();
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o, Outcome::Recorded(Some(_))))
                );
                claimed = next;
            }
            mine
        }));
    }

    let mut seen = HashSet::new();
    for claimer in claimers {
        for id in claimer.await.unwrap() {
            assert!(seen.insert(id), "step {id} was claimed twice");
        }
    }
    assert_eq!(seen.len(), STEPS);
    let counts = first.step_counts(run.id).await.unwrap();
    assert_eq!(counts.completed, STEPS as u64, "{counts:?}");
    let recorded = first.materializations_of_run(run.id).await.unwrap();
    assert_eq!(recorded.len(), STEPS, "one materialization per step");
}

/// Many workers complete batches whose steps all feed the same downstream
/// steps (a fan-in, like days into weeks): every batch updates the same rows,
/// in id order, so none fails with a deadlock and every downstream step is
/// released exactly when its last upstream completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_completions_never_deadlock() {
    const UPSTREAM: usize = 400;
    const DOWNSTREAM: usize = 12;
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = Arc::new(PostgresStore::connect(db.url()).await.unwrap());
    let mut run = pairs_run(0);
    run.steps = (0..UPSTREAM)
        .map(|i| independent(&format!("u{i:04}")))
        .collect();
    for d in 0..DOWNSTREAM {
        run.steps.push(NewStep {
            target: AssetPartition::new(key("fan_in"), Some(format!("d{d:02}").into())),
            upstream: (0..UPSTREAM).collect(),
            max_attempts: 1,
            priority: 0,
            queue: flowstone_core::store::DEFAULT_QUEUE.into(),
        });
    }
    let run = store.create_run(run).await.unwrap();

    // Every worker claims first, so that all complete at once.
    let mut held = Vec::new();
    for i in 0..8 {
        let w = WorkerId(format!("w{i}"));
        let claimed = store
            .claim(claim_request(&w, Timestamp::now(), 50))
            .await
            .unwrap();
        held.push((w, claimed));
    }
    let tasks: Vec<_> = held
        .into_iter()
        .map(|(w, claimed)| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for chunk in claimed.chunks(10) {
                    let batch = chunk.iter().map(|c| completion(c, &w, vec![])).collect();
                    store.complete(batch).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("a completing worker failed (a deadlock?)");
    }

    let counts = store.step_counts(run.id).await.unwrap();
    assert_eq!(counts.completed, UPSTREAM as u64, "{counts:?}");
    assert_eq!(
        counts.available, DOWNSTREAM as u64,
        "all released once the last completed"
    );
    let steps = store.steps(run.id).await.unwrap();
    assert!(
        steps.iter().all(|s| s.state != StepState::Pending),
        "nothing left pending"
    );
}

// -- throughput --------------------------------------------------------------------

/// Claims and completes no-op steps in batches and prints the rate. Not an
/// assertion: the figure depends on the machine, the build profile and what
/// else the server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_no_op_batches() {
    const STEPS: usize = 20_000;
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    let worker = WorkerId("bench".into());

    for batch_size in [64, 256] {
        // Independent steps: the claim and completion path alone.
        let started = Instant::now();
        let mut run = pairs_run(0);
        run.steps = (0..STEPS)
            .map(|i| independent(&format!("p{i:06}")))
            .collect();
        store.create_run(run).await.unwrap();
        let created = started.elapsed();

        let started = Instant::now();
        let (mut done, mut claiming, mut completing) = (0, Duration::ZERO, Duration::ZERO);
        loop {
            let t = Instant::now();
            let claimed = store
                .claim(claim_request(&worker, Timestamp::now(), batch_size))
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
        let elapsed = started.elapsed();
        assert_eq!(done, STEPS);
        println!(
            "postgres throughput: {STEPS} independent no-op steps in batches of {batch_size}: \
             {:.0} steps/s claimed+completed ({elapsed:.2?}: claims {claiming:.2?}, \
             completions {completing:.2?}); create_run {created:.2?}",
            STEPS as f64 / elapsed.as_secs_f64(),
        );
    }

    // Pairs: each completion also releases a downstream step and records
    // lineage; completion and the next claim share a transaction, as the
    // worker loop does it.
    let started = Instant::now();
    store.create_run(pairs_run(STEPS / 2)).await.unwrap();
    let created = started.elapsed();
    let started = Instant::now();
    let mut done = 0;
    let mut raw_ids = BTreeMap::new();
    let mut claimed = store
        .claim(claim_request(&worker, Timestamp::now(), 256))
        .await
        .unwrap();
    while !claimed.is_empty() {
        let batch = claimed
            .iter()
            .map(|s| {
                let inputs = raw_ids
                    .get(&s.target.partition)
                    .copied()
                    .into_iter()
                    .collect();
                completion(s, &worker, inputs)
            })
            .collect();
        let next = claim_request(&worker, Timestamp::now(), 256);
        let (outcomes, next) = store.complete_and_claim(batch, next).await.unwrap();
        for (step, outcome) in claimed.iter().zip(outcomes) {
            let Outcome::Recorded(Some(id)) = outcome else {
                panic!("{outcome:?}")
            };
            if step.target.asset.as_str() == "raw" {
                raw_ids.insert(step.target.partition.clone(), id);
            }
        }
        done += claimed.len();
        claimed = next;
    }
    let elapsed = started.elapsed();
    assert_eq!(done, STEPS);
    println!(
        "postgres throughput: {STEPS} steps as raw -> clean pairs in batches of 256 \
         (complete_and_claim): {:.0} steps/s ({elapsed:.2?}); create_run {created:.2?}",
        STEPS as f64 / elapsed.as_secs_f64(),
    );
}

// -- the event cursor --------------------------------------------------------------

/// Two transactions append events and the one with the lower id commits
/// last. Paging by id alone (what the store's reads did) moves the cursor
/// past the late event and never returns it; the store's reads hold back
/// what lies above an id an open transaction may still commit, and return
/// both once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_out_of_id_order_are_not_passed_over() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = Arc::new(PostgresStore::connect(db.url()).await.unwrap());
    let run = store.create_run(one_step_run()).await.unwrap();
    let mut raw = raw_connection(&db).await;

    // A gate: inserting an event whose message is `slow` waits, with its id
    // taken and its row written, until this connection unlocks key 4242.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_gate() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF NEW.message = 'slow' THEN PERFORM pg_advisory_xact_lock(4242); END IF; \
             RETURN NEW; \
         END $$; \
         CREATE TRIGGER slow_gate AFTER INSERT ON events \
             FOR EACH ROW EXECUTE FUNCTION slow_gate()",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut raw)
        .await
        .unwrap();

    let event = |message: &str| NewEvent {
        run_id: run.id,
        step_id: None,
        at: Timestamp::now(),
        kind: EventKind::Log,
        level: Level::Info,
        message: message.to_owned(),
        data: serde_json::Value::Null,
    };
    let slow = tokio::spawn({
        let store = store.clone();
        let slow = event("slow");
        async move { store.append_events(vec![slow]).await }
    });
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND objid = 4242 AND objsubid = 1 AND NOT granted",
        )
        .fetch_one(&mut raw)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slow insert never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.append_events(vec![event("fast")]).await.unwrap();

    // Paging by id alone: the fast event, and a cursor past the slow one.
    let by_id = |after: i64| {
        sqlx::query_as::<_, (i64, String)>(
            "SELECT id, message FROM events WHERE id > $1 ORDER BY id",
        )
        .bind(after)
    };
    let seen = by_id(0).fetch_all(&mut raw).await.unwrap();
    let messages: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(messages, ["fast"]);
    let cursor = seen[0].0;

    // The store holds the fast event back while the slow one is open.
    assert!(store.events_since(None, 100).await.unwrap().is_empty());
    assert!(store.events(run.id, None, 100).await.unwrap().is_empty());

    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut raw)
        .await
        .unwrap();
    slow.await.unwrap().unwrap();

    // Paging on from the old cursor passes over the slow event for good.
    assert!(by_id(cursor).fetch_all(&mut raw).await.unwrap().is_empty());
    let all = by_id(0).fetch_all(&mut raw).await.unwrap();
    assert!(
        all[0].0 < cursor,
        "the slow event has the lower id: {all:?}"
    );

    // The store returns both, in id order, to either reader.
    let since = store.events_since(None, 100).await.unwrap();
    let messages: Vec<&str> = since.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["slow", "fast"]);
    let of_run = store.events(run.id, None, 100).await.unwrap();
    assert_eq!(of_run.len(), 2);
}

// -- helpers -----------------------------------------------------------------------

async fn raw_connection(db: &TestDatabase) -> PgConnection {
    PgConnection::connect(db.url()).await.unwrap()
}

/// Seconds until the lease of the run's step ends, by the database clock.
async fn lease_left(raw: &mut PgConnection, run: RunId) -> f64 {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM lease_until - now())::float8 FROM steps WHERE run_id = $1",
    )
    .bind(run.0)
    .fetch_one(raw)
    .await
    .unwrap()
}

fn key(asset: &str) -> AssetKey {
    AssetKey::new(asset).unwrap()
}

fn independent(partition: &str) -> NewStep {
    NewStep {
        target: AssetPartition::new(key("noop"), Some(partition.to_owned().into())),
        upstream: vec![],
        max_attempts: 1,
        priority: 0,
        queue: flowstone_core::store::DEFAULT_QUEUE.into(),
    }
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
fn pairs_run(n: usize) -> NewRun {
    let mut steps = Vec::with_capacity(2 * n);
    for i in 0..n {
        let partition = Some(format!("2013-01-{:02}-{i}", i % 28 + 1).into());
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
        id: RunId::new(),
        trigger: Trigger::Cli,
        user: "test".into(),
        description: "postgres test".into(),
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
    store: &PostgresStore,
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
