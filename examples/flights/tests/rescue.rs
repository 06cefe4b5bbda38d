//! A step of a raw asset whose worker died is handed back to the queue by
//! the leader, not failed: the raw assets have a retry policy. The worker's
//! death is played on an embedded store: a claim under a short lease that
//! nobody renews, then the leader's rescue pass, as on PostgreSQL beside
//! other workers.

use std::sync::Arc;
use std::time::Duration;

use flowstone::store::{ClaimRequest, StepState};
use flowstone::{Engine, PartitionSelection, RunRequest, SqliteStore, Store, WorkerId};
use jiff::{SignedDuration, Timestamp};

/// Regression: the example had no retry policy, so killing a worker beside
/// PostgreSQL failed the steps it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_steps_of_a_dead_worker_are_retried_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().to_str().unwrap())
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let engine = Engine::new(flights::definitions().unwrap(), store.clone());

    // One step of each raw asset, queued but worked on by nobody here.
    let mut steps = 0;
    for (asset, partition) in [
        ("airlines", None),
        ("airports", None),
        ("planes", None),
        ("raw_flights", Some("2013-07-04")),
        ("raw_weather", Some("2013-11-03T01:00-05:00")),
    ] {
        let partitions = match partition {
            Some(key) => PartitionSelection::Keys(vec![key.to_owned()]),
            None => PartitionSelection::Unspecified,
        };
        let request = RunRequest::materialize(vec![asset.parse().unwrap()], partitions);
        let (_, run) = engine.submit(&request).await.unwrap();
        assert!(run.is_some(), "{asset} is queued");
        steps += 1;
    }

    // A worker claims them all, then dies: its claim is never renewed.
    let dead = WorkerId("dead-worker".to_owned());
    let claimed = store
        .claim(ClaimRequest {
            worker: dead,
            run: None,
            limit: 100,
            now: Timestamp::now(),
            lease: SignedDuration::from_millis(20),
            queues: None,
            limits: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), steps);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The leader's rescue hands every one back, its attempt counted.
    let leader = WorkerId("leader".to_owned());
    let lease = store
        .acquire_lease(
            "leader",
            &leader,
            SignedDuration::from_secs(60),
            Timestamp::now(),
        )
        .await
        .unwrap()
        .expect("the leader lease is free");
    let rescued = store
        .rescue_expired(&lease, Timestamp::now())
        .await
        .unwrap();
    assert_eq!(
        rescued.failed,
        vec![],
        "no raw step fails for a dead worker"
    );
    assert_eq!(rescued.retried.len(), steps, "{rescued:?}");
    for step in &claimed {
        let records = store.steps(step.run_id).await.unwrap();
        let record = records.iter().find(|r| r.id == step.id).unwrap();
        assert_eq!(record.state, StepState::Retryable, "{record:?}");
        assert!(record.max_attempts >= 3, "{record:?}");
    }
}
