//! The engine end to end on PostgreSQL, opened the way the CLI opens it: a
//! daily chain runs, records lineage, and a failure skips what it blocked.
//!
//! Each test runs on a database of its own on the server named by
//! `FLOWSTONE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped afterwards. Without
//! a reachable server a test prints `skipping: ...` and passes, unless `CI` is
//! set.

use flowstone::partitions::{PartitionMapping, TimeWindowPartitions};
use flowstone::store::{RunState, StepState};
use flowstone::{
    AssetBuilder, AssetError, Definitions, Direction, Engine, MemoryIoManager, PartitionSelection,
    Partitioned, RunRequest,
};
use flowstone_postgres::testing::TestDatabase;

/// numbers (daily) -> doubled (daily) -> weekly_sum (weekly); config -> doubled.
fn defs(fail_on: Option<&'static str>) -> Definitions {
    let daily = TimeWindowPartitions::daily("2024-01-01")
        .time_zone("America/New_York")
        .end("2024-01-11")
        .build()
        .unwrap();
    let weekly = TimeWindowPartitions::weekly("2024-01-01")
        .time_zone("America/New_York")
        .end("2024-01-15")
        .build()
        .unwrap();
    Definitions::builder()
        .add_asset(AssetBuilder::new("config").compute(|_ctx, _in| async { Ok(2u64) }))
        .add_asset(
            AssetBuilder::new("numbers")
                .partitions(daily.clone())
                .compute(move |ctx, _in| async move {
                    let key = ctx.require_partition_key()?.to_string();
                    if Some(key.as_str()) == fail_on {
                        return Err(AssetError::fatal(anyhow::anyhow!("bad data on {key}")));
                    }
                    let day: u64 = key[8..10].parse()?;
                    Ok(vec![day; 3])
                }),
        )
        .add_asset(
            AssetBuilder::new("doubled")
                .partitions(daily)
                .dep::<Vec<u64>>("numbers")
                .dep::<u64>("config")
                .compute(|_ctx, mut inputs| async move {
                    let numbers: Vec<u64> = inputs.take::<Vec<u64>, _>("numbers")?;
                    let factor: u64 = inputs.take::<u64, _>("config")?;
                    Ok(numbers.iter().map(|n| n * factor).collect::<Vec<u64>>())
                }),
        )
        .add_asset(
            AssetBuilder::new("weekly_sum")
                .partitions(weekly)
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

/// An engine on a fresh PostgreSQL database, opened through `open_store`;
/// `None` when the test is skipped.
async fn engine(fail_on: Option<&'static str>) -> Option<(Engine, TestDatabase)> {
    let db = TestDatabase::create().await?;
    let storage = std::env::temp_dir().join(db.name());
    let opened = flowstone::open_store(Some(db.url()), Some(&storage))
        .await
        .unwrap();
    assert!(
        opened.describe.starts_with("postgres://"),
        "{}",
        opened.describe
    );
    assert_eq!(opened.storage, storage, "--storage is kept");
    Some((Engine::new(defs(fail_on), opened.store), db))
}

fn all() -> RunRequest {
    RunRequest::backfill(vec![], PartitionSelection::All).max_parallel(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_runs_and_records_lineage_on_postgres() {
    let Some((engine, _db)) = engine(None).await else {
        return;
    };

    let outcome = engine.run(all()).await.unwrap().unwrap();
    assert_eq!(outcome.run.state, RunState::Succeeded);
    assert_eq!(
        outcome.recorded, 23,
        "1 config + 10 numbers + 10 doubled + 2 weeks"
    );

    let (_, value) = engine
        .value("weekly_sum", Some("2024-01-01"))
        .await
        .unwrap();
    assert_eq!(
        value,
        serde_json::json!((1..=7).map(|d| d * 3 * 2).sum::<u64>())
    );
    let lineage = engine
        .lineage("weekly_sum", Some("2024-01-01"), Direction::Upstream)
        .await
        .unwrap();
    assert_eq!(
        lineage.nodes.iter().filter(|(d, _)| *d == 1).count(),
        7,
        "seven days read"
    );
    let down = engine
        .lineage("config", None, Direction::Downstream)
        .await
        .unwrap();
    assert_eq!(down.nodes.len(), 12, "10 doubled and 2 weekly sums");

    let events = engine
        .store()
        .events(outcome.run.id, None, 10_000)
        .await
        .unwrap();
    let materialized = events
        .iter()
        .filter(|e| e.kind == flowstone::store::EventKind::Materialized)
        .count();
    assert_eq!(
        materialized, 23,
        "one materialized event per materialization"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_skips_downstream_on_postgres() {
    let Some((engine, _db)) = engine(Some("2024-01-03")).await else {
        return;
    };

    let outcome = engine.run(all()).await.unwrap().unwrap();
    assert_eq!(outcome.run.state, RunState::Failed);
    let steps = engine.store().steps(outcome.run.id).await.unwrap();
    let step = |t: &str| steps.iter().find(|s| s.target.to_string() == t).unwrap();
    assert_eq!(step("numbers[2024-01-03]").state, StepState::Failed);
    assert_eq!(step("doubled[2024-01-03]").state, StepState::Skipped);
    assert_eq!(step("weekly_sum[2024-01-01]").state, StepState::Skipped);
    assert_eq!(step("doubled[2024-01-04]").state, StepState::Completed);
    assert_eq!(step("weekly_sum[2024-01-08]").state, StepState::Completed);
    let cause = step("weekly_sum[2024-01-01]")
        .error
        .as_deref()
        .unwrap_or_default();
    assert!(
        cause.contains("numbers[2024-01-03]"),
        "the skip names the cause: {cause}"
    );

    // A second run takes only the failed partition and what it blocked.
    let again = engine.run(all()).await.unwrap().unwrap();
    assert_eq!(again.run.steps.total(), 3, "{:?}", again.run.steps);
}
