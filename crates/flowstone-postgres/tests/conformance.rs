//! The store conformance suite against PostgreSQL: one test per case, each on
//! a database of its own, created for the test and dropped after it.
//!
//! The server is `FLOWSTONE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Without a reachable server
//! each test prints `skipping: ...` and passes, unless `CI` is set.

use std::sync::Arc;

use flowstone_core::Store;
use flowstone_core::conformance;
use flowstone_postgres::PostgresStore;
use flowstone_postgres::testing::TestDatabase;

/// A fresh store on a fresh database, or `None` when the test is skipped; the
/// database lives as long as the returned guard.
async fn fresh() -> Option<(Arc<dyn Store>, TestDatabase)> {
    let db = TestDatabase::create().await?;
    let store = PostgresStore::connect(db.url())
        .await
        .expect("a fresh PostgreSQL store connects");
    Some((Arc::new(store), db))
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, _db)) = fresh().await else { return };
                conformance::$case(store).await;
            }
        )*

        /// Every case of the suite has a test above.
        #[test]
        fn every_case_is_listed() {
            let listed = [$(stringify!($case)),*];
            for (name, _) in conformance::CASES {
                assert!(listed.contains(name), "conformance case {name} has no PostgreSQL test");
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
