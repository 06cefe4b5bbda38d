//! End-to-end behaviour of the engine on the SQLite store: planning, running,
//! failures, retries, re-runs, staleness, lineage and impact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flowstone::partitions::{PartitionMapping, TimeWindowPartitions};
use flowstone::store::{RunState, StepState};
use flowstone::{
    AssetBuilder, AssetError, Definitions, Direction, Engine, Launch, MemoryIoManager,
    PartitionSelection, PartitionState, Partitioned, RetryPolicy, RunRequest, SqliteStore,
};

fn daily() -> flowstone::PartitionsDef {
    TimeWindowPartitions::daily("2024-01-01")
        .time_zone("America/New_York")
        .end("2024-01-11")
        .build()
        .unwrap()
}

fn weekly() -> flowstone::PartitionsDef {
    TimeWindowPartitions::weekly("2024-01-01")
        .time_zone("America/New_York")
        .end("2024-01-15")
        .build()
        .unwrap()
}

/// numbers (daily) -> doubled (daily) -> weekly_sum (weekly); config (unpartitioned) -> doubled
fn defs(fail_on: Option<&'static str>, calls: Arc<AtomicU32>) -> Definitions {
    Definitions::builder()
        .add_asset(AssetBuilder::new("config").compute(|_ctx, _in| async { Ok(2u64) }))
        .add_asset(
            AssetBuilder::new("numbers")
                .partitions(daily())
                .compute(move |ctx, _in| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let key = ctx.require_partition_key()?.to_string();
                        if Some(key.as_str()) == fail_on {
                            return Err(AssetError::fatal(anyhow::anyhow!("bad data on {key}")));
                        }
                        let day: u64 = key[8..10].parse()?;
                        ctx.add_metadata("rows", day);
                        Ok(vec![day; 3])
                    }
                }),
        )
        .add_asset(
            AssetBuilder::new("doubled")
                .partitions(daily())
                .dep::<Vec<u64>>("numbers")
                .dep::<u64>("config")
                .compute(|ctx, mut inputs| async move {
                    let numbers: Vec<u64> = inputs.take::<Vec<u64>, _>("numbers")?;
                    let factor: u64 = inputs.take::<u64, _>("config")?;
                    ctx.log()
                        .info(format!("doubling {} numbers", numbers.len()));
                    Ok(numbers.iter().map(|n| n * factor).collect::<Vec<u64>>())
                }),
        )
        .add_asset(
            AssetBuilder::new("weekly_sum")
                .partitions(weekly())
                .dep_mapped::<Vec<u64>>("doubled", PartitionMapping::TimeWindow { offset: 0 })
                .compute(|_ctx, mut inputs| async move {
                    let days: Partitioned<Vec<u64>> = inputs.take::<Vec<u64>, _>("doubled")?;
                    Ok(days.values().flatten().sum::<u64>())
                }),
        )
        .io_manager("default", MemoryIoManager::new())
        .build()
        .unwrap()
}

async fn engine(fail_on: Option<&'static str>) -> (Engine, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let store = SqliteStore::in_memory().await.unwrap();
    (
        Engine::new(defs(fail_on, calls.clone()), Arc::new(store)),
        calls,
    )
}

fn all() -> RunRequest {
    RunRequest::backfill(vec![], PartitionSelection::All).max_parallel(4)
}

#[tokio::test]
async fn backfill_materializes_everything_and_records_lineage() {
    let (engine, _) = engine(None).await;
    let outcome = engine.run(all()).await.unwrap().unwrap();
    assert_eq!(outcome.run.state, RunState::Succeeded);
    // 1 config + 10 numbers + 10 doubled + 2 weeks.
    assert_eq!(outcome.recorded, 23);

    let (_, value) = engine
        .value("weekly_sum", Some("2024-01-01"))
        .await
        .unwrap();
    // Days 1..=7, three numbers each, doubled.
    assert_eq!(
        value,
        serde_json::json!((1..=7).map(|d| d * 3 * 2).sum::<u64>())
    );
    let (_, second) = engine
        .value("weekly_sum", Some("2024-01-08"))
        .await
        .unwrap();
    // The second week is cut at the range end: days 8..=10.
    assert_eq!(
        second,
        serde_json::json!((8..=10).map(|d| d * 3 * 2).sum::<u64>())
    );

    let lineage = engine
        .lineage("weekly_sum", Some("2024-01-01"), Direction::Upstream)
        .await
        .unwrap();
    let direct: Vec<String> = lineage
        .nodes
        .iter()
        .filter(|(d, _)| *d == 1)
        .map(|(_, m)| m.target.to_string())
        .collect();
    assert_eq!(direct.len(), 7, "{direct:?}");
    assert!(direct.contains(&"doubled[2024-01-03]".to_owned()));
    let deeper = lineage.nodes.iter().filter(|(d, _)| *d == 2).count();
    assert_eq!(deeper, 8, "7 numbers and config");

    let down = engine
        .lineage("config", None, Direction::Downstream)
        .await
        .unwrap();
    assert_eq!(down.nodes.len(), 12, "10 doubled and 2 weekly sums");
}

#[tokio::test]
async fn second_backfill_does_nothing_and_force_reruns() {
    let (engine, calls) = engine(None).await;
    engine.run(all()).await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    match engine.launch(all()).await.unwrap() {
        Launch::NothingToDo { plan } => assert_eq!(plan.already_materialized, 23),
        Launch::Started { .. } => panic!("a second backfill must do nothing"),
    }
    let forced = engine.run(all().force(true)).await.unwrap().unwrap();
    assert_eq!(forced.recorded, 23);
    assert_eq!(calls.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_failure_skips_downstream_and_leaves_other_partitions_running() {
    let (engine, calls) = engine(Some("2024-01-03")).await;
    let outcome = engine.run(all()).await.unwrap().unwrap();
    assert_eq!(outcome.run.state, RunState::Failed);
    let steps = engine.store().steps(outcome.run.id).await.unwrap();
    let state_of = |t: &str| {
        steps
            .iter()
            .find(|s| s.target.to_string() == t)
            .unwrap()
            .state
    };
    assert_eq!(state_of("numbers[2024-01-03]"), StepState::Failed);
    assert_eq!(state_of("doubled[2024-01-03]"), StepState::Skipped);
    assert_eq!(state_of("weekly_sum[2024-01-01]"), StepState::Skipped);
    assert_eq!(state_of("doubled[2024-01-04]"), StepState::Completed);
    assert_eq!(state_of("weekly_sum[2024-01-08]"), StepState::Completed);
    let skipped = steps
        .iter()
        .find(|s| s.target.to_string() == "doubled[2024-01-03]")
        .unwrap();
    assert!(
        skipped
            .error
            .as_deref()
            .unwrap()
            .contains("numbers[2024-01-03]"),
        "{skipped:?}"
    );

    let status = engine.status("numbers").await.unwrap();
    assert_eq!(status.counts.failed, 1);
    assert_eq!(status.counts.materialized, 9);
    let doubled = engine.status("doubled").await.unwrap();
    assert_eq!(doubled.counts.missing, 1);

    // Fix nothing, re-run: only the failed partition and what it blocked run.
    let before = calls.load(Ordering::SeqCst);
    let again = engine.run(all()).await.unwrap().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "only the failed partition reruns"
    );
    assert_eq!(again.run.steps.total(), 3, "{:?}", again.run.steps);
}

#[tokio::test]
async fn retries_with_backoff_until_success() {
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let defs = Definitions::builder()
        .add_asset(
            AssetBuilder::new("flaky")
                .retry(
                    RetryPolicy::exponential(3)
                        .initial_delay(Duration::from_millis(20))
                        .jitter(0.0),
                )
                .compute(move |ctx, _| {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        if ctx.attempt() < 3 {
                            return Err(AssetError::msg("service unavailable"));
                        }
                        Ok(ctx.attempt())
                    }
                }),
        )
        .add_asset(
            AssetBuilder::new("hopeless")
                .retry(RetryPolicy::exponential(5))
                .compute(|_ctx, _| async {
                    Err::<u32, _>(AssetError::fatal(anyhow::anyhow!("schema changed")))
                }),
        )
        .io_manager("default", MemoryIoManager::new())
        .build()
        .unwrap();
    let engine = Engine::new(defs, Arc::new(SqliteStore::in_memory().await.unwrap()));
    let outcome = engine.run(all()).await.unwrap().unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let steps = engine.store().steps(outcome.run.id).await.unwrap();
    let flaky = steps
        .iter()
        .find(|s| s.target.asset.as_str() == "flaky")
        .unwrap();
    assert_eq!((flaky.state, flaky.attempt), (StepState::Completed, 3));
    let hopeless = steps
        .iter()
        .find(|s| s.target.asset.as_str() == "hopeless")
        .unwrap();
    assert_eq!(
        (hopeless.state, hopeless.attempt),
        (StepState::Failed, 1),
        "fatal: no retry"
    );
    let events = engine
        .store()
        .events(outcome.run.id, None, 1000)
        .await
        .unwrap();
    let retries = events
        .iter()
        .filter(|e| e.message.contains("retrying"))
        .count();
    assert_eq!(retries, 2);
}

#[tokio::test]
async fn a_panicking_asset_fails_its_step_only() {
    let defs = Definitions::builder()
        .add_asset(AssetBuilder::new("boom").compute(|_ctx, _| async {
            if true {
                panic!("index out of bounds");
            }
            Ok(1u8)
        }))
        .add_asset(AssetBuilder::new("fine").compute(|_ctx, _| async { Ok(1u8) }))
        .io_manager("default", MemoryIoManager::new())
        .build()
        .unwrap();
    let engine = Engine::new(defs, Arc::new(SqliteStore::in_memory().await.unwrap()));
    let outcome = engine.run(all()).await.unwrap().unwrap();
    assert_eq!(outcome.run.state, RunState::Failed);
    assert_eq!(outcome.recorded, 1);
    let steps = engine.store().steps(outcome.run.id).await.unwrap();
    let boom = steps
        .iter()
        .find(|s| s.target.asset.as_str() == "boom")
        .unwrap();
    assert!(
        boom.error
            .as_deref()
            .unwrap()
            .contains("asset panicked: index out of bounds")
    );
}

#[tokio::test]
async fn rematerializing_upstream_makes_downstream_stale_and_impact_says_so() {
    // `source` returns new data on every call; `steady` always the same.
    let calls = Arc::new(AtomicU32::new(0));
    let defs = Definitions::builder()
        .add_asset(
            AssetBuilder::new("source")
                .partitions(daily())
                .compute(move |_ctx, _| {
                    let calls = calls.clone();
                    async move { Ok(calls.fetch_add(1, Ordering::SeqCst)) }
                }),
        )
        .add_asset(
            AssetBuilder::new("steady")
                .partitions(daily())
                .compute(|_, _| async { Ok(7u32) }),
        )
        .add_asset(
            AssetBuilder::new("derived")
                .partitions(daily())
                .dep::<u32>("source")
                .dep::<u32>("steady")
                .compute(|_ctx, mut inputs| async move {
                    let a: u32 = inputs.take::<u32, _>("source")?;
                    let b: u32 = inputs.take::<u32, _>("steady")?;
                    Ok(a + b)
                }),
        )
        .add_asset(
            AssetBuilder::new("weekly")
                .partitions(weekly())
                .dep::<u32>("derived")
                .compute(|_ctx, mut inputs| async move {
                    let days: Partitioned<u32> = inputs.take::<u32, _>("derived")?;
                    Ok(days.values().sum::<u32>())
                }),
        )
        .io_manager("default", MemoryIoManager::new())
        .build()
        .unwrap();
    let engine = Engine::new(defs, Arc::new(SqliteStore::in_memory().await.unwrap()));
    engine.run(all()).await.unwrap().unwrap();
    for asset in ["derived", "weekly"] {
        assert_eq!(
            engine.status(asset).await.unwrap().counts.stale,
            0,
            "{asset}"
        );
    }

    // The same data again: nothing downstream is stale.
    engine
        .materialize("steady", Some("2024-01-02"))
        .await
        .unwrap();
    assert_eq!(engine.status("derived").await.unwrap().counts.stale, 0);

    // New data: the day that read it is stale, and so is the week that read that day.
    engine
        .materialize("source", Some("2024-01-02"))
        .await
        .unwrap();
    let derived = engine.status("derived").await.unwrap();
    assert_eq!(derived.counts.stale, 1, "{:?}", derived.partitions);
    let stale = derived
        .partitions
        .iter()
        .find(|p| matches!(p.state, PartitionState::Stale(_)));
    let stale = stale.unwrap();
    assert_eq!(stale.partition.as_ref().unwrap().as_str(), "2024-01-02");
    assert!(
        matches!(&stale.state, PartitionState::Stale(why) if why.contains("source[2024-01-02] changed"))
    );
    let weekly = engine.status("weekly").await.unwrap();
    assert_eq!(weekly.counts.stale, 1, "{:?}", weekly.partitions);
    assert!(matches!(&weekly.partitions[0].state,
        PartitionState::Stale(why) if why.contains("derived[2024-01-02] is stale")));
    let statuses = engine.statuses().await.unwrap();
    let stale: Vec<u64> = statuses.iter().map(|s| s.counts.stale).collect();
    assert_eq!(stale, [0, 0, 1, 1], "source, steady, derived, weekly");

    // Impact says the same, from the definitions.
    let impact = engine.impact("source", Some("2024-01-02")).unwrap();
    let summary: Vec<(String, Vec<String>)> = impact
        .iter()
        .map(|e| {
            (
                e.asset.to_string(),
                e.partitions.iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("derived".to_owned(), vec!["2024-01-02".to_owned()]),
            ("weekly".to_owned(), vec!["2024-01-01".to_owned()]),
        ]
    );

    // A backfill skips stale partitions unless asked to refresh them.
    assert!(matches!(
        engine.launch(all()).await.unwrap(),
        Launch::NothingToDo { .. }
    ));
    let refreshed = engine
        .run(all().refresh_stale(true))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        refreshed.recorded, 2,
        "derived[2024-01-02] and weekly[2024-01-01]"
    );
    assert_eq!(engine.status("weekly").await.unwrap().counts.stale, 0);
    engine
        .materialize("source", Some("2024-01-02"))
        .await
        .unwrap();

    // Refreshing the stale day makes the week stale only until it is refreshed too.
    engine
        .materialize("derived", Some("2024-01-02"))
        .await
        .unwrap();
    assert_eq!(engine.status("derived").await.unwrap().counts.stale, 0);
    assert_eq!(engine.status("weekly").await.unwrap().counts.stale, 1);
    engine
        .materialize("weekly", Some("2024-01-01"))
        .await
        .unwrap();
    assert_eq!(engine.status("weekly").await.unwrap().counts.stale, 0);
}

#[tokio::test]
async fn impact_of_an_unpartitioned_asset_reaches_every_partition() {
    let (engine, _) = engine(None).await;
    let config_impact = engine.impact("config", None).unwrap();
    assert_eq!(config_impact[0].partitions.len(), 10);
}

#[tokio::test]
async fn materialize_checks_its_input() {
    let (engine, _) = engine(None).await;
    let err = engine.materialize("doubled", None).await.unwrap_err();
    assert!(err.to_string().contains("is partitioned"), "{err}");
    assert!(err.is_user_error());
    let err = engine
        .materialize("doubled", Some("2024-13-01"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("2024-13-01"), "{err}");
    let err = engine
        .materialize("doubled", Some("2024-01-02"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not materialized"), "{err}");
    assert!(err.to_string().contains("--with-upstream"), "{err}");
    let ok = engine
        .materialize_with_upstream("doubled", Some("2024-01-02"))
        .await
        .unwrap();
    assert_eq!(ok.recorded, 3);
    let err = engine.materialize("config", Some("x")).await.unwrap_err();
    assert!(err.to_string().contains("not partitioned"), "{err}");
    let err = engine.materialize("nope", None).await.unwrap_err();
    assert!(err.to_string().contains("unknown asset nope"), "{err}");
}

#[tokio::test]
async fn an_interrupted_run_resumes_without_redoing_completed_steps() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let defs = Definitions::builder()
        .add_asset(
            AssetBuilder::new("slow")
                .partitions(daily())
                .compute(move |_ctx, _| {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok(1u8)
                    }
                }),
        )
        .io_manager("default", MemoryIoManager::new())
        .build()
        .unwrap();
    let engine = Engine::new(defs, Arc::new(SqliteStore::in_memory().await.unwrap()));
    let Launch::Started { handle, run, .. } = engine.launch(all().max_parallel(2)).await.unwrap()
    else {
        panic!("expected a run");
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.interrupt();
    let outcome = handle.wait().await.unwrap();
    assert!(outcome.interrupted);
    assert_eq!(outcome.run.state, RunState::Interrupted);
    let done = outcome.run.steps.completed;
    assert!(done > 0 && done < 10, "{:?}", outcome.run.steps);

    let resumed = engine
        .resume(run.id, 4)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(resumed.run.state, RunState::Succeeded);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "no completed step ran twice"
    );
    let err = engine.resume(run.id, 4).await.err().unwrap();
    assert!(
        err.to_string().contains("already ended (succeeded)"),
        "{err}"
    );
}

#[tokio::test]
async fn an_asset_can_read_the_same_upstream_twice_through_two_mappings() {
    let calls = Arc::new(AtomicU32::new(0));
    let vec_u64 = flowstone::value::ValueType::of::<Vec<u64>>();
    let defs = Definitions::builder()
        .add_asset(defs_numbers(calls))
        .add_asset(
            AssetBuilder::new("delta")
                .partitions(daily())
                .dep_as("numbers", "today", None, Some(vec_u64))
                .dep_as(
                    "numbers",
                    "yesterday",
                    Some(PartitionMapping::TimeWindow { offset: -1 }),
                    Some(vec_u64),
                )
                .compute(|_ctx, mut inputs| async move {
                    let today: Vec<u64> = inputs.take::<Vec<u64>, _>("today")?;
                    let yesterday: Option<Vec<u64>> = inputs.take::<Vec<u64>, _>("yesterday")?;
                    Ok(today[0] as i64 - yesterday.map_or(0, |y| y[0] as i64))
                }),
        )
        .io_manager("default", MemoryIoManager::new())
        .build()
        .unwrap();
    let engine = Engine::new(defs, Arc::new(SqliteStore::in_memory().await.unwrap()));
    engine.run(all()).await.unwrap().unwrap();
    let (_, first) = engine.value("delta", Some("2024-01-01")).await.unwrap();
    assert_eq!(
        first,
        serde_json::json!(1),
        "no yesterday before the first day"
    );
    let (_, fifth) = engine.value("delta", Some("2024-01-05")).await.unwrap();
    assert_eq!(fifth, serde_json::json!(1));
    let lineage = engine
        .lineage("delta", Some("2024-01-05"), Direction::Upstream)
        .await
        .unwrap();
    let read: Vec<String> = lineage
        .nodes
        .iter()
        .map(|(_, m)| m.target.to_string())
        .collect();
    assert_eq!(read, ["numbers[2024-01-04]", "numbers[2024-01-05]"]);
    let impact = engine.impact("numbers", Some("2024-01-05")).unwrap();
    let keys: Vec<String> = impact[0].partitions.iter().map(|p| p.to_string()).collect();
    assert_eq!(keys, ["2024-01-05", "2024-01-06"]);
}

fn defs_numbers(calls: Arc<AtomicU32>) -> AssetBuilder {
    AssetBuilder::new("numbers")
        .partitions(daily())
        .compute(move |ctx, _in| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let day: u64 = ctx.require_partition_key()?.as_str()[8..10].parse()?;
                Ok(vec![day])
            }
        })
}

#[tokio::test]
async fn each_step_records_one_materialized_event_naming_its_materialization() {
    let (engine, _) = engine(None).await;
    let outcome = engine.run(all()).await.unwrap().unwrap();

    let events = engine
        .store()
        .events(outcome.run.id, None, 1000)
        .await
        .unwrap();
    let materialized: Vec<_> = events
        .iter()
        .filter(|e| e.kind == flowstone::store::EventKind::Materialized)
        .collect();
    assert_eq!(
        materialized.len() as u64,
        outcome.recorded,
        "{materialized:?}"
    );
    assert!(
        materialized
            .iter()
            .all(|e| e.data["materialization_id"].is_u64()),
        "{materialized:?}"
    );
}

#[tokio::test]
async fn a_second_backfill_leaves_out_what_a_queued_run_holds_and_a_materialize_is_refused() {
    let (engine, _) = engine(None).await;
    let january_first_week = || {
        RunRequest::backfill(
            vec![],
            PartitionSelection::Range {
                from: "2024-01-01".into(),
                to: "2024-01-03".into(),
            },
        )
    };
    // Queued, not worked on: its steps stay live.
    let (_, first) = engine.submit(&january_first_week()).await.unwrap();
    let first = first.expect("a run was queued");

    // The same range again: everything is held by the first run.
    let (plan, second) = engine.submit(&january_first_week()).await.unwrap();
    assert!(second.is_none(), "nothing left to queue");
    assert_eq!(plan.already_queued, first.steps.total());
    assert!(
        plan.already_queued_examples[0].contains(&first.id.to_string()),
        "the examples name the holding run: {:?}",
        plan.already_queued_examples
    );

    // A wider range queues only what the first run does not hold.
    let wider = RunRequest::backfill(
        vec![],
        PartitionSelection::Range {
            from: "2024-01-01".into(),
            to: "2024-01-05".into(),
        },
    );
    let (plan, third) = engine.submit(&wider).await.unwrap();
    let third = third.expect("the new days are queued");
    assert_eq!(plan.already_queued, first.steps.total());
    let steps = engine.store().steps(third.id).await.unwrap();
    assert!(
        steps.iter().all(|s| s
            .target
            .partition
            .as_ref()
            .is_some_and(|p| p.as_str() >= "2024-01-04")),
        "the third run holds only the days the first does not"
    );

    // A materialize of a held partition is refused, naming the run.
    let err = engine
        .materialize("numbers", Some("2024-01-02"))
        .await
        .unwrap_err();
    assert!(err.is_user_error());
    let message = err.to_string();
    assert!(
        message.contains("already queued") && message.contains(&first.id.to_string()),
        "{message}"
    );

    // Once the first run is cancelled, its partitions are free again.
    engine.cancel(first.id).await.unwrap();
    let outcome = engine
        .materialize("numbers", Some("2024-01-02"))
        .await
        .unwrap();
    assert_eq!(outcome.run.state, RunState::Succeeded);
}

/// The most steps seen running at once, per asset.
#[derive(Default)]
struct Gauge {
    now: std::sync::Mutex<std::collections::HashMap<String, (u32, u32)>>,
}

impl Gauge {
    fn enter(&self, asset: &str) {
        let mut now = self.now.lock().unwrap();
        let (current, max) = now.entry(asset.to_owned()).or_default();
        *current += 1;
        *max = (*max).max(*current);
    }

    fn leave(&self, asset: &str) {
        let mut now = self.now.lock().unwrap();
        now.get_mut(asset).unwrap().0 -= 1;
    }

    fn max(&self, asset: &str) -> u32 {
        self.now
            .lock()
            .unwrap()
            .get(asset)
            .map_or(0, |(_, max)| *max)
    }
}

fn gauged(key: &str, gauge: &Arc<Gauge>) -> AssetBuilder {
    let gauge = gauge.clone();
    let key_owned = key.to_owned();
    AssetBuilder::new(key)
        .partitions(daily())
        .compute(move |_ctx, _in| {
            let gauge = gauge.clone();
            let key = key_owned.clone();
            async move {
                gauge.enter(&key);
                tokio::time::sleep(Duration::from_millis(25)).await;
                gauge.leave(&key);
                Ok(1u8)
            }
        })
}

/// A queue's limit and a run's cap bound the steps running at once across
/// every loop working on the store: the run's own loop and a worker over all
/// runs, each allowed 8. (A loop that completes a step takes the freed slot in
/// the same transaction, so the worker that joins late may get none; without
/// the limit it would take up to 8 more at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_limits_and_run_caps_bound_steps_across_loops() {
    let gauge = Arc::new(Gauge::default());
    let defs = Definitions::builder()
        .add_asset(gauged("call", &gauge).queue("llm"))
        .add_asset(gauged("plain", &gauge))
        .queue_limit("llm", 2)
        .io_manager("default", MemoryIoManager::new())
        .build()
        .unwrap();
    let store = SqliteStore::in_memory().await.unwrap();
    let engine = Engine::new(defs, Arc::new(store));

    // Each run is launched, and once its own loop recorded a step a worker
    // over all runs joins in; each loop may run 8 steps at once.
    let run_with_worker = async |request: RunRequest| {
        let Launch::Started { handle, .. } = engine.launch(request).await.unwrap() else {
            panic!("something to do");
        };
        let mut started = handle.progress();
        started.wait_for(|p| p.recorded >= 1).await.unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(flowstone::Stop::No);
        let (progress, progress_rx) = tokio::sync::watch::channel(flowstone::Progress::default());
        let opts = flowstone::WorkerOptions {
            max_parallel: 8,
            poll: Duration::from_millis(5),
            ..flowstone::WorkerOptions::default()
        };
        let worker = tokio::spawn({
            let engine = engine.clone();
            async move { engine.serve_worker(opts, stop_rx, progress).await }
        });
        let outcome = handle.wait().await.unwrap();
        stop.send_replace(flowstone::Stop::Drain);
        worker.await.unwrap().unwrap();
        let by_worker = progress_rx.borrow().recorded;
        (outcome, by_worker)
    };

    // The run is uncapped: the llm queue's limit alone holds the calls to 2.
    let (outcome, by_worker) = run_with_worker(RunRequest::backfill(
        vec!["call".parse().unwrap()],
        PartitionSelection::All,
    ))
    .await;
    assert_eq!(outcome.run.state, RunState::Succeeded);
    assert_eq!(outcome.recorded + by_worker, 10);
    assert_eq!(gauge.max("call"), 2, "the llm queue's limit is 2");

    // A capped run: 3 at once.
    let (outcome, by_worker) = run_with_worker(
        RunRequest::backfill(vec!["plain".parse().unwrap()], PartitionSelection::All)
            .max_parallel(3),
    )
    .await;
    assert_eq!(outcome.run.state, RunState::Succeeded);
    assert_eq!(outcome.recorded + by_worker, 10);
    let max = gauge.max("plain");
    assert!(
        (1..=3).contains(&max),
        "the run's cap is 3, saw {max} at once"
    );
}

#[test]
fn queue_limits_are_checked_with_the_definitions() {
    let err = Definitions::builder()
        .add_asset(
            AssetBuilder::new("a")
                .queue("llm")
                .compute(|_c, _i| async { Ok(1u8) }),
        )
        .add_asset(
            AssetBuilder::new("b")
                .queue("bad queue!")
                .compute(|_c, _i| async { Ok(1u8) }),
        )
        .queue_limit("lm", 2)
        .queue_limit("llm", 0)
        .build()
        .map(|_| ())
        .expect_err("invalid definitions")
        .to_string();
    assert!(err.contains("bad queue name \"bad queue!\""), "{err}");
    assert!(
        err.contains("queue limit for \"lm\": no asset uses this queue; queues in use:"),
        "{err}"
    );
    assert!(
        err.contains("queue limit for \"llm\": the limit must be at least 1"),
        "{err}"
    );
}

/// A claim whose answer never reached its worker (the connection failed after
/// the commit) leaves a step running under the worker's id that its loop does
/// not know of: the worker's heartbeat hands it back to the queue, rather than
/// renewing its lease for ever. (The worker serves another queue here, so
/// that it does not claim the step again before the test looks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_is_handed_back_by_the_heartbeat() {
    let defs = Definitions::builder()
        .add_asset(AssetBuilder::new("only").compute(|_ctx, _in| async { Ok(1u8) }))
        .io_manager("default", MemoryIoManager::new())
        .build()
        .unwrap();
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let engine = Engine::new(defs, store.clone());

    let (stop, stop_rx) = tokio::sync::watch::channel(flowstone::Stop::No);
    let (progress, _) = tokio::sync::watch::channel(flowstone::Progress::default());
    let opts = flowstone::WorkerOptions {
        max_parallel: 2,
        lease: jiff::SignedDuration::from_millis(400),
        heartbeat: Duration::from_millis(100),
        poll: Duration::from_millis(20),
        queues: Some(vec!["elsewhere".to_owned()]),
        ..flowstone::WorkerOptions::default()
    };
    let worker = tokio::spawn({
        let engine = engine.clone();
        async move { engine.serve_worker(opts, stop_rx, progress).await }
    });
    let id = loop {
        if let Some(w) = flowstone::Store::workers(&*store).await.unwrap().first() {
            break w.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // The lost claim: taken under the worker's id, a while ago.
    let request = RunRequest::materialize(vec![], PartitionSelection::Unspecified);
    let run = engine.submit(&request).await.unwrap().1.expect("a run").id;
    let lost = flowstone::Store::claim(
        &*store,
        flowstone::store::ClaimRequest {
            worker: id,
            run: Some(run),
            limit: 1,
            now: jiff::Timestamp::now() - jiff::SignedDuration::from_secs(30),
            lease: jiff::SignedDuration::from_secs(600),
            queues: None,
            limits: Default::default(),
        },
    )
    .await
    .unwrap();
    assert_eq!(lost.len(), 1);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let steps = loop {
        let steps = flowstone::Store::steps(&*store, run).await.unwrap();
        if steps[0].state != StepState::Running || std::time::Instant::now() > deadline {
            break steps;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.send_replace(flowstone::Stop::Drain);
    worker.await.unwrap().unwrap();
    assert_eq!(
        steps[0].state,
        StepState::Available,
        "handed back: {steps:#?}"
    );
    let events = flowstone::Store::events(&*store, run, None, 100)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("never got the answer")),
        "{events:#?}"
    );
}

/// A partition key given twice is one step, not a conflict with itself.
#[tokio::test]
async fn a_partition_key_given_twice_is_one_step() {
    let (engine, _) = engine(None).await;
    let keys = vec!["2024-01-02".to_owned(), "2024-01-02".to_owned()];
    let request = RunRequest::materialize(
        vec!["numbers".parse().unwrap()],
        PartitionSelection::Keys(keys),
    );
    let outcome = engine.run(request).await.unwrap().expect("something to do");
    assert_eq!(outcome.run.state, RunState::Succeeded);
    assert_eq!(outcome.run.steps.total(), 1);
}
