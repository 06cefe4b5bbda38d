//! The store conformance suite against SQLite: one test per case, each on a
//! fresh database file in its own temporary directory.

use std::sync::Arc;

use flowstone_core::Store;
use flowstone_core::conformance;
use flowstone_sqlite::SqliteStore;

/// A fresh store on disk; the directory lives as long as the returned guard.
async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path().to_str().expect("a UTF-8 temp path"))
        .await
        .expect("a fresh SQLite store opens");
    (Arc::new(store), dir)
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _dir) = fresh().await;
                conformance::$case(store).await;
            }
        )*

        /// Every case of the suite has a test above.
        #[test]
        fn every_case_is_listed() {
            let listed = [$(stringify!($case)),*];
            for (name, _) in conformance::CASES {
                assert!(listed.contains(name), "conformance case {name} has no SQLite test");
            }
        }
    };
}

cases!(
    create_run_sets_initial_states,
    claim_respects_upstream,
    claim_limit_and_order,
    concurrent_claimers_never_share,
    completion_records_everything,
    failed_batch_writes_nothing,
    zombie_completion_is_fenced,
    retryable_waits_for_retry_at,
    final_failure_skips_downstream,
    cancel_run_ends_waiting_steps,
    set_run_state_checks_from,
    events_in_order_with_paging,
    latest_materializations_and_partitions,
    lineage_both_ways,
    step_counts_and_running_workers,
    release_returns_steps_to_queue,
    heartbeat_and_workers,
    complete_and_claim_takes_what_it_released,
    one_live_step_per_target,
    racing_runs_leave_one_live_step,
    claims_skip_runs_not_running,
    lease_has_one_holder_and_terms,
    rescue_expired_retries_or_fails,
    rescue_leaves_completed_and_renewed_steps,
    maintenance_is_fenced_by_the_lease,
    runs_without_live_steps_and_forgotten_workers,
    pruning_keeps_history_and_counts,
    events_since_reads_every_run,
    queue_limits_hold_across_claimers,
    claims_serve_only_their_queues,
    run_caps_hold_across_claimers,
    release_unknown_hands_back_lost_claims,
    tokens_by_hash_revoked_and_renamed,
    release_memory_loses_nothing,
);

/// The whole suite through `run_all`, against in-memory stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_memory() {
    let factory = || -> futures::future::BoxFuture<'static, Arc<dyn Store>> {
        Box::pin(async {
            let store = SqliteStore::in_memory().await.expect("an in-memory store");
            Arc::new(store) as Arc<dyn Store>
        })
    };
    conformance::run_all(&factory).await;
}
