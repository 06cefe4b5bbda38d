//! The store conformance suite: what every [`Store`] backend must do, as
//! executable cases.
//!
//! Each case is a public async function that takes a fresh, empty store and
//! panics with a message naming the broken promise. A backend's tests run every
//! case against its own store, one test per case so that a failure is named;
//! [`CASES`] lists them all and [`run_all`] runs them in one go.
//!
//! The cases only use the [`Store`] trait. They keep to real time (the
//! PostgreSQL store may use its own clock for leases and retries): a case that
//! waits for a retry sleeps well under a second.
//!
//! Besides the trait's documented guarantees, the cases pin down these details
//! that callers rely on:
//! - `complete` appends, after the caller's events of each recorded item, one
//!   [`EventKind::Materialized`] event for the step whose `data` holds the
//!   `materialization_id`;
//! - a final failure appends one [`EventKind::StepSkipped`] event per skipped
//!   step, whose message (and the step's `error`) is `upstream ASSET[PARTITION]
//!   failed`, naming the failed step's target;
//! - `release` appends one [`EventKind::StepReleased`] event per released step;
//! - a running step of a cancelled run can still complete.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};

use crate::ids::{
    AssetKey, AssetPartition, EventId, MaterializationId, PartitionKey, RunId, StepId, WorkerId,
};
use crate::store::{
    ClaimRequest, ClaimedStep, Completion, EventKind, EventRecord, Failure, Level,
    MaterializationRecord, NewEvent, NewMaterialization, NewRun, NewStep, Outcome, QueueLimits,
    RunState, StepCounts, StepRecord, StepState, Store, StoreError, Trigger, WorkerRecord,
};

/// Makes a fresh, empty store for one case.
pub type StoreFactory<'a> = &'a (dyn Fn() -> BoxFuture<'static, Arc<dyn Store>> + Sync);

/// One conformance case: its name and how to run it.
pub type Case = (&'static str, fn(Arc<dyn Store>) -> BoxFuture<'static, ()>);

/// Every case, in the order [`run_all`] runs them.
pub const CASES: &[Case] = &[
    ("create_run_sets_initial_states", |s| {
        Box::pin(create_run_sets_initial_states(s))
    }),
    ("claim_respects_upstream", |s| {
        Box::pin(claim_respects_upstream(s))
    }),
    ("claim_limit_and_order", |s| {
        Box::pin(claim_limit_and_order(s))
    }),
    ("concurrent_claimers_never_share", |s| {
        Box::pin(concurrent_claimers_never_share(s))
    }),
    ("completion_records_everything", |s| {
        Box::pin(completion_records_everything(s))
    }),
    ("failed_batch_writes_nothing", |s| {
        Box::pin(failed_batch_writes_nothing(s))
    }),
    ("zombie_completion_is_fenced", |s| {
        Box::pin(zombie_completion_is_fenced(s))
    }),
    ("retryable_waits_for_retry_at", |s| {
        Box::pin(retryable_waits_for_retry_at(s))
    }),
    ("final_failure_skips_downstream", |s| {
        Box::pin(final_failure_skips_downstream(s))
    }),
    ("cancel_run_ends_waiting_steps", |s| {
        Box::pin(cancel_run_ends_waiting_steps(s))
    }),
    ("set_run_state_checks_from", |s| {
        Box::pin(set_run_state_checks_from(s))
    }),
    ("events_in_order_with_paging", |s| {
        Box::pin(events_in_order_with_paging(s))
    }),
    ("latest_materializations_and_partitions", |s| {
        Box::pin(latest_materializations_and_partitions(s))
    }),
    ("lineage_both_ways", |s| Box::pin(lineage_both_ways(s))),
    ("step_counts_and_running_workers", |s| {
        Box::pin(step_counts_and_running_workers(s))
    }),
    ("release_returns_steps_to_queue", |s| {
        Box::pin(release_returns_steps_to_queue(s))
    }),
    ("heartbeat_and_workers", |s| {
        Box::pin(heartbeat_and_workers(s))
    }),
    ("complete_and_claim_takes_what_it_released", |s| {
        Box::pin(complete_and_claim_takes_what_it_released(s))
    }),
    ("one_live_step_per_target", |s| {
        Box::pin(one_live_step_per_target(s))
    }),
    ("racing_runs_leave_one_live_step", |s| {
        Box::pin(racing_runs_leave_one_live_step(s))
    }),
    ("claims_skip_runs_not_running", |s| {
        Box::pin(claims_skip_runs_not_running(s))
    }),
    ("lease_has_one_holder_and_terms", |s| {
        Box::pin(lease_has_one_holder_and_terms(s))
    }),
    ("rescue_expired_retries_or_fails", |s| {
        Box::pin(rescue_expired_retries_or_fails(s))
    }),
    ("rescue_leaves_completed_and_renewed_steps", |s| {
        Box::pin(rescue_leaves_completed_and_renewed_steps(s))
    }),
    ("maintenance_is_fenced_by_the_lease", |s| {
        Box::pin(maintenance_is_fenced_by_the_lease(s))
    }),
    ("runs_without_live_steps_and_forgotten_workers", |s| {
        Box::pin(runs_without_live_steps_and_forgotten_workers(s))
    }),
    ("pruning_keeps_history_and_counts", |s| {
        Box::pin(pruning_keeps_history_and_counts(s))
    }),
    ("events_since_reads_every_run", |s| {
        Box::pin(events_since_reads_every_run(s))
    }),
    ("queue_limits_hold_across_claimers", |s| {
        Box::pin(queue_limits_hold_across_claimers(s))
    }),
    ("claims_serve_only_their_queues", |s| {
        Box::pin(claims_serve_only_their_queues(s))
    }),
    ("run_caps_hold_across_claimers", |s| {
        Box::pin(run_caps_hold_across_claimers(s))
    }),
    ("release_unknown_hands_back_lost_claims", |s| {
        Box::pin(release_unknown_hands_back_lost_claims(s))
    }),
    ("tokens_by_hash_revoked_and_renamed", |s| {
        Box::pin(tokens_by_hash_revoked_and_renamed(s))
    }),
    ("release_memory_loses_nothing", |s| {
        Box::pin(release_memory_loses_nothing(s))
    }),
];

/// Runs every case, each against a fresh store from `factory`.
///
/// # Panics
///
/// At the first case that fails, with its message; the case's name is printed
/// to stderr before it starts.
pub async fn run_all(factory: StoreFactory<'_>) {
    for (name, case) in CASES {
        eprintln!("store conformance: {name}");
        case(factory().await).await;
    }
}

// -- cases -------------------------------------------------------------------

/// A new run is `running`; steps without upstream steps are `available`, the
/// others `pending`; `runs` lists runs newest first.
pub async fn create_run_sets_initial_states(store: Arc<dyn Store>) {
    let first = RunPlan::new()
        .step("first", None, &[])
        .create(&*store)
        .await;
    let plan = RunPlan::new()
        .step("a", None, &[])
        .step("b", None, &[0])
        .step("c", None, &[0, 1]);
    let created = store.create_run(plan.new_run()).await.must("create_run");

    assert_eq!(created.state, RunState::Running, "a new run is running");
    assert_eq!(
        (
            created.steps.available,
            created.steps.pending,
            created.steps.total()
        ),
        (1, 2, 3),
        "create_run's record counts 1 available and 2 pending steps"
    );
    let run = store
        .run(created.id)
        .await
        .must("run")
        .expect("run() finds the run just created");
    assert_eq!(run.state, RunState::Running);
    assert_eq!(run.trigger, Trigger::Cli);
    assert_eq!(run.user, "tester");
    assert_eq!(run.description, "conformance");
    assert_eq!(run.finished_at, None, "a running run has no finished_at");
    assert_eq!(
        run.steps, created.steps,
        "run() counts steps like create_run"
    );

    let steps = by_asset(&store.steps(created.id).await.must("steps"));
    assert_eq!(steps.len(), 3, "steps() lists every step of the run");
    assert_eq!(
        steps["a"].state,
        StepState::Available,
        "a step without upstream is available"
    );
    assert_eq!(
        steps["b"].state,
        StepState::Pending,
        "a step with upstream is pending"
    );
    assert_eq!(
        steps["c"].state,
        StepState::Pending,
        "a step with upstream is pending"
    );
    for step in steps.values() {
        assert_eq!(step.attempt, 0, "an unclaimed step has attempt 0");
        assert_eq!(step.max_attempts, 3);
        assert_eq!(step.run_id, created.id);
        assert!(step.worker.is_none() && step.started_at.is_none() && step.error.is_none());
    }

    let runs = store.runs(10).await.must("runs");
    let ids: Vec<RunId> = runs.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        vec![created.id, first.id],
        "runs() lists runs newest first"
    );
    assert_eq!(
        store.runs(1).await.must("runs").len(),
        1,
        "runs() respects its limit"
    );
    assert!(
        store.run(RunId::new()).await.must("run").is_none(),
        "run() of an unknown id"
    );
}

/// In a diamond a -> (b, c) -> d, each step becomes claimable only when all of
/// its upstream steps completed, and a completion releases downstream steps in
/// the same call.
pub async fn claim_respects_upstream(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("a", None, &[])
        .step("b", None, &[0])
        .step("c", None, &[0])
        .step("d", None, &[1, 2])
        .create(&*store)
        .await;
    let w = worker("w1");

    let claimed = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(
        assets(&claimed),
        ["a"],
        "only the root of the diamond is claimable at first"
    );
    assert!(
        claim(&*store, &w, Some(run.id), 10).await.is_empty(),
        "a is taken, b and c wait"
    );

    complete_all(&*store, &w, &claimed).await;
    let claimed = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(
        assets(&claimed),
        ["b", "c"],
        "completing a releases b and c"
    );

    let (b, c) = (&claimed[0], &claimed[1]);
    complete_all(&*store, &w, std::slice::from_ref(b)).await;
    assert!(
        claim(&*store, &w, Some(run.id), 10).await.is_empty(),
        "d must wait for c as well as b"
    );
    assert_eq!(
        run.state_of(&*store, "d").await,
        StepState::Pending,
        "d stays pending"
    );

    complete_all(&*store, &w, std::slice::from_ref(c)).await;
    assert_eq!(
        run.state_of(&*store, "d").await,
        StepState::Available,
        "d is released by c"
    );
    let claimed = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(
        assets(&claimed),
        ["d"],
        "d is claimable once b and c completed"
    );
}

/// `claim` takes at most `limit` steps, highest priority first, then by
/// schedule and id; it counts the attempt, records the worker and carries the
/// run's trigger and user; with a run given it claims only from that run.
pub async fn claim_limit_and_order(store: Arc<dyn Store>) {
    let priorities = [0, 5, 0, 5, 1, 0];
    let mut plan = RunPlan::new();
    for (i, &priority) in priorities.iter().enumerate() {
        plan = plan.step_with(&format!("s{i}"), None, &[], priority);
    }
    let run = plan.create(&*store).await;
    let other = RunPlan::new()
        .step("elsewhere", None, &[])
        .create(&*store)
        .await;
    let w = worker("w1");

    assert!(
        claim(&*store, &w, Some(run.id), 0).await.is_empty(),
        "limit 0 claims nothing"
    );

    let first = claim(&*store, &w, Some(run.id), 3).await;
    assert_eq!(first.len(), 3, "claim respects its limit");
    assert_eq!(assets(&first), ["s1", "s3", "s4"], "priority 5, 5, then 1");
    assert!(
        first[0].id < first[1].id,
        "equal priority and schedule: lower id first"
    );

    let second = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(
        assets(&second),
        ["s0", "s2", "s5"],
        "then the priority 0 steps by id"
    );
    assert!(
        claim(&*store, &w, Some(run.id), 10).await.is_empty(),
        "the run is drained"
    );

    for step in first.iter().chain(&second) {
        assert_eq!(
            step.run_id, run.id,
            "claim with a run only takes that run's steps"
        );
        assert_eq!(step.attempt, 1, "the first claim is attempt 1");
        assert_eq!(step.max_attempts, 3);
        assert_eq!(
            step.trigger,
            Trigger::Cli,
            "the claim carries the run's trigger"
        );
        assert_eq!(step.user, "tester", "the claim carries the run's user");
    }
    let records = store.steps(run.id).await.must("steps");
    for record in &records {
        assert_eq!(record.state, StepState::Running);
        assert_eq!(
            record.worker.as_ref(),
            Some(&w),
            "a claimed step records its worker"
        );
        assert_eq!(record.attempt, 1);
        assert!(
            record.started_at.is_some(),
            "a claimed step records when it started"
        );
    }

    let rest = claim(&*store, &worker("w2"), None, 10).await;
    assert_eq!(
        assets(&rest),
        ["elsewhere"],
        "claim without a run takes from any run"
    );
    assert_eq!(rest[0].run_id, other.id);
}

/// Two workers claiming and completing in a loop over 500 steps never get the
/// same step, and between them claim every step.
pub async fn concurrent_claimers_never_share(store: Arc<dyn Store>) {
    const STEPS: usize = 500;
    let mut plan = RunPlan::new();
    for i in 0..STEPS {
        plan = plan.step("many", Some(&format!("p{i:04}")), &[]);
    }
    let run = plan.create(&*store).await;

    let claimers: Vec<_> = ["w1", "w2", "w3"]
        .into_iter()
        .map(|name| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let w = worker(name);
                let mut mine = Vec::new();
                loop {
                    let claimed = claim(&*store, &w, None, 7).await;
                    if claimed.is_empty() {
                        return mine;
                    }
                    complete_all(&*store, &w, &claimed).await;
                    mine.extend(claimed.iter().map(|c| c.id));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    let mut seen = HashSet::new();
    for claimer in claimers {
        for id in claimer.await.expect("a claimer task panicked") {
            assert!(seen.insert(id), "step {id} was claimed by two workers");
        }
    }
    assert_eq!(
        seen.len(),
        STEPS,
        "the claimers together claimed every step once"
    );
    let counts = store.step_counts(run.id).await.must("step_counts");
    assert_eq!(
        counts.completed, STEPS as u64,
        "every step completed: {counts:?}"
    );
}

/// A completion records the materialization with every field, its lineage
/// edges, the caller's events and a `materialized` event, moves the step to
/// `completed` and releases its downstream step, all in one call.
pub async fn completion_records_everything(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("raw", Some("2013-01-01"), &[])
        .step("clean", Some("2013-01-01"), &[0])
        .create(&*store)
        .await;
    let w = worker("w1");

    let raw = claim_one(&*store, &w, run.id).await;
    let mut completion = completion_of(&raw, &w, vec![]);
    completion
        .materialization
        .metadata
        .insert("rows".into(), serde_json::json!(336_776));
    completion
        .materialization
        .metadata
        .insert("schema".into(), serde_json::json!({"a": [1]}));
    let expected = completion.materialization.clone();
    let outcomes = store.complete(vec![completion]).await.must("complete");
    let raw_m = recorded_id(&outcomes[0]);

    // The step moved and its downstream step was released in the same call.
    let steps = by_asset(&store.steps(run.id).await.must("steps"));
    let (raw_label, clean_label) = ("raw[2013-01-01]", "clean[2013-01-01]");
    assert_eq!(
        steps[raw_label].state,
        StepState::Completed,
        "the completed step is completed"
    );
    assert!(
        steps[raw_label].finished_at.is_some(),
        "a completed step has finished_at"
    );
    assert_eq!(
        steps[clean_label].state,
        StepState::Available,
        "complete releases downstream"
    );

    // Every field comes back as written.
    let m = store
        .materialization(raw_m)
        .await
        .must("materialization")
        .expect("recorded");
    assert_eq!(m.id, raw_m);
    assert_eq!(m.target, expected.target);
    assert_eq!(m.run_id, run.id);
    assert_eq!(m.step_id, raw.id);
    assert_eq!(m.attempt, 1);
    assert_eq!(m.started_at, expected.started_at);
    assert_eq!(m.finished_at, expected.finished_at);
    assert_eq!(m.trigger, Trigger::Cli);
    assert_eq!(m.user, "tester");
    assert_eq!(m.code_version, expected.code_version);
    assert_eq!(m.data_version, expected.data_version);
    assert_eq!(
        m.metadata, expected.metadata,
        "metadata round-trips as JSON"
    );
    assert_eq!(m.location, expected.location);
    assert_eq!(m.io_manager, expected.io_manager);

    // The caller's event, then the store's `materialized` event.
    let events = store.events(run.id, None, 100).await.must("events");
    let mine: Vec<&EventRecord> = events
        .iter()
        .filter(|e| e.step_id == Some(raw.id))
        .collect();
    assert!(
        mine.iter()
            .any(|e| e.kind == EventKind::Log && e.message == format!("ran {}", raw.id)),
        "the completion's own events are recorded: {mine:?}"
    );
    let materialized = mine
        .iter()
        .find(|e| e.kind == EventKind::Materialized)
        .unwrap_or_else(|| panic!("no materialized event for the step: {mine:?}"));
    assert_eq!(
        materialized.data["materialization_id"],
        serde_json::json!(raw_m.0),
        "the materialized event names the materialization"
    );

    // A downstream completion records its lineage edge.
    let clean = claim_one(&*store, &w, run.id).await;
    let outcomes = store
        .complete(vec![completion_of(&clean, &w, vec![raw_m])])
        .await;
    let clean_m = recorded_id(&outcomes.must("complete")[0]);
    let inputs = store.inputs_of(&[clean_m]).await.must("inputs_of");
    assert_eq!(inputs.len(), 1, "one lineage edge: {inputs:?}");
    assert_eq!((inputs[0].0.consumer, inputs[0].0.input), (clean_m, raw_m));
    assert_eq!(
        inputs[0].1.id, raw_m,
        "inputs_of returns the input's record"
    );

    let of_run: Vec<MaterializationId> = store
        .materializations_of_run(run.id)
        .await
        .must("materializations_of_run")
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        of_run,
        vec![raw_m, clean_m],
        "materializations of the run, in id order"
    );
}

/// A batch that cannot be recorded whole (here, an input that does not exist)
/// fails and writes nothing, not even for its good items.
pub async fn failed_batch_writes_nothing(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("a", None, &[])
        .step("b", None, &[])
        .create(&*store)
        .await;
    let w = worker("w1");
    let claimed = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(claimed.len(), 2);
    let events_before = store.events(run.id, None, 1000).await.must("events").len();

    let good = completion_of(&claimed[0], &w, vec![]);
    let bad = completion_of(&claimed[1], &w, vec![MaterializationId(i64::MAX - 7)]);
    let result = store.complete(vec![good, bad]).await;
    assert!(
        result.is_err(),
        "a completion reading a missing materialization must fail"
    );

    let counts = store.step_counts(run.id).await.must("step_counts");
    assert_eq!(
        counts.running, 2,
        "no step of the failed batch moved: {counts:?}"
    );
    let recorded = store
        .materializations_of_run(run.id)
        .await
        .must("materializations_of_run");
    assert!(
        recorded.is_empty(),
        "no materialization of the failed batch: {recorded:?}"
    );
    let events_after = store.events(run.id, None, 1000).await.must("events").len();
    assert_eq!(events_before, events_after, "no event of the failed batch");

    let outcomes = store
        .complete(vec![completion_of(&claimed[0], &w, vec![])])
        .await;
    assert!(
        matches!(outcomes.must("complete")[0], Outcome::Recorded(Some(_))),
        "retry works"
    );
}

/// After `release` moved a step back and another worker claimed it with a
/// higher attempt, the first worker's completion or failure is fenced and
/// writes nothing; a wrong attempt or worker is fenced too; a batch records its
/// good items beside fenced ones.
pub async fn zombie_completion_is_fenced(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("a", None, &[])
        .step("b", None, &[])
        .create(&*store)
        .await;
    let (zombie, rescuer) = (worker("zombie"), worker("rescuer"));

    let first = claim(&*store, &zombie, Some(run.id), 1).await;
    assert_eq!(assets(&first), ["a"]);
    let released = store
        .release(None, std::slice::from_ref(&zombie), "worker lost", now())
        .await;
    assert_eq!(
        released.must("release"),
        vec![first[0].id],
        "release returns the step"
    );

    let second = claim(&*store, &rescuer, Some(run.id), 1).await;
    assert_eq!(
        second[0].id, first[0].id,
        "the released step is claimable again"
    );
    assert_eq!(second[0].attempt, 2, "the new claim is attempt 2");
    let events_before = store.events(run.id, None, 1000).await.must("events");

    // The zombie's completion and failure are fenced.
    let outcomes = store
        .complete(vec![completion_of(&first[0], &zombie, vec![])])
        .await;
    assert_eq!(
        outcomes.must("complete"),
        vec![Outcome::Fenced],
        "a zombie completion"
    );
    let outcomes = store.fail(vec![failure_of(&first[0], &zombie, None)]).await;
    assert_eq!(
        outcomes.must("fail"),
        vec![Outcome::Fenced],
        "a zombie failure"
    );

    // So are the rescuer's own items with a wrong attempt or worker.
    let mut wrong_attempt = completion_of(&second[0], &rescuer, vec![]);
    wrong_attempt.attempt = 1;
    let wrong_worker = completion_of(&second[0], &zombie, vec![]);
    let outcomes = store
        .complete(vec![wrong_attempt, wrong_worker])
        .await
        .must("complete");
    assert_eq!(
        outcomes,
        vec![Outcome::Fenced, Outcome::Fenced],
        "wrong attempt, wrong worker"
    );

    assert!(
        store
            .materializations_of_run(run.id)
            .await
            .must("materializations_of_run")
            .is_empty(),
        "a fenced completion writes no materialization"
    );
    let events_after = store.events(run.id, None, 1000).await.must("events");
    assert_eq!(
        events_before.len(),
        events_after.len(),
        "a fenced item writes no event"
    );
    let step = &by_asset(&store.steps(run.id).await.must("steps"))["a"];
    assert_eq!(step.state, StepState::Running, "the rescuer's claim stands");
    assert_eq!((step.attempt, step.worker.as_ref()), (2, Some(&rescuer)));

    // A batch with a fenced item and a good one records the good one.
    let b = claim_one(&*store, &rescuer, run.id).await;
    let batch = vec![
        completion_of(&first[0], &zombie, vec![]),
        completion_of(&second[0], &rescuer, vec![]),
        completion_of(&b, &rescuer, vec![]),
    ];
    let outcomes = store.complete(batch).await.must("complete");
    assert_eq!(
        outcomes[0],
        Outcome::Fenced,
        "the zombie item of a mixed batch"
    );
    recorded_id(&outcomes[1]);
    recorded_id(&outcomes[2]);

    // Completing a completed step is fenced too.
    let again = store
        .complete(vec![completion_of(&second[0], &rescuer, vec![])])
        .await;
    assert_eq!(
        again.must("complete"),
        vec![Outcome::Fenced],
        "a second completion"
    );
    let recorded = store
        .materializations_of_run(run.id)
        .await
        .must("materializations_of_run");
    assert_eq!(
        recorded.len(),
        2,
        "one materialization per completed step: {recorded:?}"
    );
    assert_eq!(
        recorded[0].attempt, 2,
        "the materialization is the rescuer's attempt"
    );
}

/// A failure with `retry_at` makes the step `retryable`: not claimable before
/// then, reported by `next_retry_at`, claimable after with the next attempt.
pub async fn retryable_waits_for_retry_at(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("flaky", None, &[])
        .step("after", None, &[0])
        .create(&*store)
        .await;
    let w = worker("w1");

    let step = claim_one(&*store, &w, run.id).await;
    let retry_at = now() + SignedDuration::from_millis(600);
    let outcomes = store
        .fail(vec![failure_of(&step, &w, Some(retry_at))])
        .await;
    assert_eq!(outcomes.must("fail"), vec![Outcome::Recorded(None)]);

    let record = &by_asset(&store.steps(run.id).await.must("steps"))["flaky"];
    assert_eq!(
        record.state,
        StepState::Retryable,
        "a failure with retry_at is retryable"
    );
    assert_eq!(
        record.error.as_deref(),
        Some("boom"),
        "the retryable step keeps the error"
    );
    assert_eq!(
        run.state_of(&*store, "after").await,
        StepState::Pending,
        "downstream waits"
    );
    assert!(
        claim(&*store, &w, None, 10).await.is_empty(),
        "not claimable before retry_at"
    );
    assert_eq!(
        store
            .next_retry_at(Some(run.id))
            .await
            .must("next_retry_at"),
        Some(retry_at)
    );
    assert_eq!(
        store.next_retry_at(None).await.must("next_retry_at"),
        Some(retry_at)
    );
    assert_eq!(
        store
            .next_retry_at(Some(RunId::new()))
            .await
            .must("next_retry_at"),
        None
    );

    tokio::time::sleep(Duration::from_millis(800)).await;
    let again = claim(&*store, &w, None, 10).await;
    assert_eq!(again.len(), 1, "claimable after retry_at");
    assert_eq!(
        (again[0].id, again[0].attempt),
        (step.id, 2),
        "the retry is attempt 2"
    );
    assert_eq!(
        store.next_retry_at(None).await.must("next_retry_at"),
        None,
        "none left"
    );

    complete_all(&*store, &w, &again).await;
    assert_eq!(run.state_of(&*store, "after").await, StepState::Available);
}

/// A final failure marks the step `failed` and every pending step downstream
/// of it, transitively, `skipped` with the cause; an independent branch goes
/// on.
pub async fn final_failure_skips_downstream(store: Arc<dyn Store>) {
    let day = Some("2013-01-02");
    let run = RunPlan::new()
        .step("raw_flights", day, &[]) // 0
        .step("clean", day, &[0]) // 1
        .step("report", day, &[1]) // 2
        .step("joined", day, &[0, 4]) // 3
        .step("weather", day, &[]) // 4
        .step("planes", day, &[]) // 5
        .step("fleet", day, &[5]) // 6
        .create(&*store)
        .await;
    let w = worker("w1");

    let claimed = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(assets(&claimed), ["raw_flights", "weather", "planes"]);
    let outcomes = store
        .fail(vec![failure_of(&claimed[0], &w, None)])
        .await
        .must("fail");
    assert_eq!(outcomes, vec![Outcome::Recorded(None)]);
    complete_all(&*store, &w, &claimed[1..]).await;

    let steps = by_asset(&store.steps(run.id).await.must("steps"));
    let step = |asset: &str| &steps[&format!("{asset}[2013-01-02]")];
    assert_eq!(
        step("raw_flights").state,
        StepState::Failed,
        "the final failure"
    );
    assert_eq!(step("raw_flights").error.as_deref(), Some("boom"));
    assert!(step("raw_flights").finished_at.is_some());
    let cause = "upstream raw_flights[2013-01-02] failed";
    for name in ["clean", "report", "joined"] {
        assert_eq!(
            step(name).state,
            StepState::Skipped,
            "{name} is downstream of the failure"
        );
        assert_eq!(
            step(name).error.as_deref(),
            Some(cause),
            "{name} names the cause"
        );
    }
    assert_eq!(step("weather").state, StepState::Completed);
    assert_eq!(step("planes").state, StepState::Completed);
    assert_eq!(
        step("fleet").state,
        StepState::Available,
        "the independent branch goes on"
    );

    let events = store.events(run.id, None, 1000).await.must("events");
    for name in ["clean", "report", "joined"] {
        let skipped: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventKind::StepSkipped && e.step_id == Some(step(name).id))
            .collect();
        assert_eq!(
            skipped.len(),
            1,
            "one step_skipped event for {name}: {events:?}"
        );
        assert!(
            skipped[0].message.contains(cause),
            "the event names the cause"
        );
    }
    let counts = store.step_counts(run.id).await.must("step_counts");
    assert_eq!(
        (counts.failed, counts.skipped, counts.completed),
        (1, 3, 2),
        "{counts:?}"
    );
}

/// Cancelling a run ends its steps that have not started; running steps may
/// still finish; a second cancel reports no change.
pub async fn cancel_run_ends_waiting_steps(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("a", None, &[])
        .step("b", None, &[0])
        .step("c", None, &[])
        .create(&*store)
        .await;
    let w = worker("w1");
    let a = claim_one(&*store, &w, run.id).await;
    assert_eq!(a.target.asset.as_str(), "a");

    let at = now();
    assert!(
        store.cancel_run(run.id, at).await.must("cancel_run"),
        "cancel_run changes a run"
    );
    let record = store.run(run.id).await.must("run").expect("the run");
    assert_eq!(record.state, RunState::Cancelled);
    assert_eq!(
        record.finished_at,
        Some(at),
        "a cancelled run has finished_at"
    );
    let steps = by_asset(&store.steps(run.id).await.must("steps"));
    assert_eq!(
        steps["a"].state,
        StepState::Running,
        "a running step is left to finish"
    );
    assert_eq!(
        steps["b"].state,
        StepState::Cancelled,
        "a pending step is cancelled"
    );
    assert_eq!(
        steps["c"].state,
        StepState::Cancelled,
        "an available step is cancelled"
    );
    assert!(
        claim(&*store, &w, None, 10).await.is_empty(),
        "nothing of the run is claimable"
    );

    assert!(
        !store.cancel_run(run.id, now()).await.must("cancel_run"),
        "a second cancel"
    );
    let outcomes = store
        .complete(vec![completion_of(&a, &w, vec![])])
        .await
        .must("complete");
    recorded_id(&outcomes[0]);
    assert_eq!(
        run.state_of(&*store, "b").await,
        StepState::Cancelled,
        "b stays cancelled"
    );
}

/// `set_run_state` changes the state only from one of the given states and
/// sets `finished_at` exactly when the new state is terminal.
pub async fn set_run_state_checks_from(store: Arc<dyn Store>) {
    let run = RunPlan::new().step("a", None, &[]).create(&*store).await;
    let run_id = run.id;
    let state = |store: Arc<dyn Store>| async move {
        let record = store.run(run_id).await.must("run").expect("the run");
        (record.state, record.finished_at)
    };

    let changed = store.set_run_state(run.id, &[RunState::Interrupted], RunState::Running, now());
    assert!(
        !changed.await.must("set_run_state"),
        "a running run is not interrupted"
    );
    let changed = store.set_run_state(
        run.id,
        &[RunState::Running, RunState::Interrupted],
        RunState::Interrupted,
        now(),
    );
    assert!(
        changed.await.must("set_run_state"),
        "running -> interrupted"
    );
    assert_eq!(state(store.clone()).await, (RunState::Interrupted, None));

    let changed = store.set_run_state(run.id, &[RunState::Interrupted], RunState::Running, now());
    assert!(
        changed.await.must("set_run_state"),
        "interrupted -> running"
    );
    let at = now();
    let changed = store.set_run_state(run.id, &[RunState::Running], RunState::Succeeded, at);
    assert!(changed.await.must("set_run_state"), "running -> succeeded");
    assert_eq!(
        state(store.clone()).await,
        (RunState::Succeeded, Some(at)),
        "finished_at set"
    );

    let changed = store.set_run_state(run.id, &[RunState::Running], RunState::Failed, now());
    assert!(
        !changed.await.must("set_run_state"),
        "a succeeded run stays succeeded"
    );
    assert_eq!(state(store.clone()).await.0, RunState::Succeeded);
}

/// Events come back in the order appended, per run, and `after` pages through
/// them; kind, level, message and data round-trip.
pub async fn events_in_order_with_paging(store: Arc<dyn Store>) {
    let run = RunPlan::new().step("a", None, &[]).create(&*store).await;
    let other = RunPlan::new()
        .step("other", None, &[])
        .create(&*store)
        .await;
    let step = run.ids["a"];
    let kinds = [
        EventKind::RunStarted,
        EventKind::Log,
        EventKind::StepStarted,
    ];
    let levels = [Level::Debug, Level::Info, Level::Warn, Level::Error];

    let event = |run_id: RunId, i: usize| NewEvent {
        run_id,
        step_id: i.is_multiple_of(2).then_some(step),
        at: now(),
        kind: kinds[i % kinds.len()],
        level: levels[i % levels.len()],
        message: format!("event {i}"),
        data: serde_json::json!({ "i": i, "nested": { "list": [i, "x"] } }),
    };
    let mine: Vec<NewEvent> = (0..25).map(|i| event(run.id, i)).collect();
    store
        .append_events(mine[..10].to_vec())
        .await
        .must("append_events");
    store
        .append_events((0..3).map(|i| event(other.id, 100 + i)).collect())
        .await
        .must("append");
    store
        .append_events(mine[10..].to_vec())
        .await
        .must("append_events");
    store
        .append_events(vec![])
        .await
        .must("append_events of nothing");

    let mut read: Vec<EventRecord> = Vec::new();
    let mut after: Option<EventId> = None;
    let mut pages = Vec::new();
    loop {
        let page = store.events(run.id, after, 10).await.must("events");
        if page.is_empty() {
            break;
        }
        pages.push(page.len());
        after = page.last().map(|e| e.id);
        read.extend(page);
    }
    assert_eq!(pages, [10, 10, 5], "pages of 10 after the last id seen");
    assert!(
        read.windows(2).all(|w| w[0].id < w[1].id),
        "event ids increase"
    );
    for (i, (got, want)) in read.iter().zip(&mine).enumerate() {
        assert_eq!(got.run_id, run.id, "event {i}: only the run's own events");
        assert_eq!(got.step_id, want.step_id, "event {i}: step");
        assert_eq!(got.at, want.at, "event {i}: at");
        assert_eq!(got.kind, want.kind, "event {i}: kind");
        assert_eq!(got.level, want.level, "event {i}: level");
        assert_eq!(
            got.message, want.message,
            "event {i}: message, in order appended"
        );
        assert_eq!(got.data, want.data, "event {i}: data");
    }
    let others = store.events(other.id, None, 100).await.must("events");
    assert_eq!(others.len(), 3, "the other run's events stay apart");
}

/// `latest_materializations` returns the newest materialization per target;
/// `partitions` gives one record per partition with a materialization or a
/// failed step, showing a failure only when it is newer than the latest
/// materialization.
pub async fn latest_materializations_and_partitions(store: Arc<dyn Store>) {
    let w = worker("w1");
    let flights = |p: &str| target("flights", Some(p));

    // p1 materialized twice; p2 materialized; p4 fails (it succeeds later).
    let first = RunPlan::new()
        .step("flights", Some("p1"), &[])
        .step("flights", Some("p2"), &[])
        .step("flights", Some("p4"), &[])
        .step("summary", None, &[])
        .create(&*store)
        .await;
    let claimed = claim(&*store, &w, Some(first.id), 10).await;
    let (done, p4): (Vec<_>, Vec<_>) = claimed.into_iter().partition(|c| c.target != flights("p4"));
    let old = complete_all(&*store, &w, &done).await;
    store
        .fail(vec![failure_of(&p4[0], &w, None)])
        .await
        .must("fail");
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Then p1 again, p2 fails, p3 only fails, p4 succeeds.
    let second = RunPlan::new()
        .step("flights", Some("p1"), &[])
        .step("flights", Some("p2"), &[])
        .step("flights", Some("p3"), &[])
        .step("flights", Some("p4"), &[])
        .create(&*store)
        .await;
    let claimed = claim(&*store, &w, Some(second.id), 10).await;
    let pick = |p: &str| {
        claimed
            .iter()
            .find(|c| c.target == flights(p))
            .expect("claimed")
            .clone()
    };
    let new = complete_all(&*store, &w, &[pick("p1"), pick("p4")]).await;
    let failures = vec![
        failure_of(&pick("p2"), &w, None),
        failure_of(&pick("p3"), &w, None),
    ];
    store.fail(failures).await.must("fail");

    let latest = store
        .latest_materializations(&[
            flights("p1"),
            flights("p2"),
            flights("p3"),
            target("summary", None),
            target("nothing", None),
        ])
        .await
        .must("latest_materializations");
    let latest: HashMap<AssetPartition, MaterializationId> =
        latest.iter().map(|m| (m.target.clone(), m.id)).collect();
    assert_eq!(
        latest.len(),
        3,
        "p1, p2 and summary have materializations: {latest:?}"
    );
    assert_eq!(
        latest[&flights("p1")],
        new[0],
        "the newest of p1's two materializations"
    );
    assert!(
        old.contains(&latest[&flights("p2")]),
        "p2's only materialization"
    );
    assert!(
        old.contains(&latest[&target("summary", None)]),
        "an unpartitioned asset"
    );

    let partitions = store.partitions(&key("flights")).await.must("partitions");
    let by_key: BTreeMap<String, _> = partitions
        .iter()
        .map(|p| {
            (
                p.partition
                    .as_ref()
                    .map_or("-".into(), |k| k.as_str().to_owned()),
                p,
            )
        })
        .collect();
    assert_eq!(
        by_key.keys().map(String::as_str).collect::<Vec<_>>(),
        ["p1", "p2", "p3", "p4"],
        "one record per partition with a materialization or a failure"
    );
    let latest_id = |p: &str| by_key[p].latest.as_ref().map(|m| m.id);
    let failure_step = |p: &str| by_key[p].failure.as_ref().map(|f| f.step_id);
    assert_eq!(latest_id("p1"), Some(new[0]));
    assert_eq!(failure_step("p1"), None, "p1 never failed");
    assert_eq!(latest_id("p2"), latest.get(&flights("p2")).copied());
    assert_eq!(
        failure_step("p2"),
        Some(pick("p2").id),
        "p2's failure is newer: it shows"
    );
    let p2_failure = by_key["p2"].failure.as_ref().expect("failure");
    assert_eq!(
        (p2_failure.run_id, p2_failure.error.as_str()),
        (second.id, "boom")
    );
    assert_eq!(latest_id("p3"), None, "p3 was never materialized");
    assert_eq!(
        failure_step("p3"),
        Some(pick("p3").id),
        "p3's failure shows"
    );
    assert_eq!(latest_id("p4"), Some(new[1]));
    assert_eq!(
        failure_step("p4"),
        None,
        "p4's failure is older than its materialization"
    );

    let summary = store.partitions(&key("summary")).await.must("partitions");
    assert_eq!(summary.len(), 1, "an unpartitioned asset has one record");
    assert_eq!(summary[0].partition, None);
    assert!(
        store
            .partitions(&key("nothing"))
            .await
            .must("partitions")
            .is_empty()
    );
}

/// `inputs_of` and `consumers_of` follow lineage edges both ways, for several
/// materializations at once.
pub async fn lineage_both_ways(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("a1", None, &[])
        .step("a2", None, &[])
        .step("b", None, &[0, 1])
        .step("c", None, &[0])
        .create(&*store)
        .await;
    let w = worker("w1");

    let roots = claim(&*store, &w, Some(run.id), 10).await;
    let ids = complete_all(&*store, &w, &roots).await;
    let (a1, a2) = (ids[0], ids[1]);
    let next = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(assets(&next), ["b", "c"]);
    let outcomes = store
        .complete(vec![
            completion_of(&next[0], &w, vec![a1, a2]),
            completion_of(&next[1], &w, vec![a1]),
        ])
        .await
        .must("complete");
    let (b, c) = (recorded_id(&outcomes[0]), recorded_id(&outcomes[1]));

    let edges = |pairs: Vec<(crate::store::LineageEdge, MaterializationRecord)>| {
        pairs
            .into_iter()
            .map(|(edge, m)| {
                assert!(
                    m.id == edge.input || m.id == edge.consumer,
                    "record matches its edge"
                );
                (edge.consumer, edge.input)
            })
            .collect::<BTreeSet<_>>()
    };
    let inputs = edges(store.inputs_of(&[b]).await.must("inputs_of"));
    assert_eq!(
        inputs,
        BTreeSet::from([(b, a1), (b, a2)]),
        "b read a1 and a2"
    );
    let inputs = edges(store.inputs_of(&[b, c]).await.must("inputs_of"));
    assert_eq!(
        inputs,
        BTreeSet::from([(b, a1), (b, a2), (c, a1)]),
        "inputs of b and c"
    );
    let consumers = edges(store.consumers_of(&[a1]).await.must("consumers_of"));
    assert_eq!(
        consumers,
        BTreeSet::from([(b, a1), (c, a1)]),
        "a1 was read by b and c"
    );
    for (edge, m) in store.consumers_of(&[a1]).await.must("consumers_of") {
        assert_eq!(
            m.id, edge.consumer,
            "consumers_of returns the consumers' records"
        );
    }
    for (edge, m) in store.inputs_of(&[b]).await.must("inputs_of") {
        assert_eq!(m.id, edge.input, "inputs_of returns the inputs' records");
    }
    assert!(
        store
            .consumers_of(&[b])
            .await
            .must("consumers_of")
            .is_empty(),
        "nobody read b"
    );
    assert!(store.inputs_of(&[]).await.must("inputs_of").is_empty());
}

/// `step_counts` counts a run's steps by state; `running_workers` names the
/// workers holding its running steps.
pub async fn step_counts_and_running_workers(store: Arc<dyn Store>) {
    let mut plan = RunPlan::new();
    for i in 0..6 {
        plan = plan.step("s", Some(&format!("p{i}")), &[]);
    }
    let run = plan.step("down", None, &[5]).create(&*store).await;
    let (w1, w2) = (worker("w1"), worker("w2"));

    let expect = |pending, available, running, retryable, completed| StepCounts {
        pending,
        available,
        running,
        retryable,
        completed,
        ..StepCounts::default()
    };
    let counts = store.step_counts(run.id).await.must("step_counts");
    assert_eq!(counts, expect(1, 6, 0, 0, 0), "a fresh run");
    assert!(
        store
            .running_workers(run.id)
            .await
            .must("running_workers")
            .is_empty()
    );

    let one = claim(&*store, &w1, Some(run.id), 2).await;
    let two = claim(&*store, &w2, Some(run.id), 2).await;
    complete_all(&*store, &w1, &one[..1]).await;
    let later = now() + SignedDuration::from_hours(1);
    store
        .fail(vec![failure_of(&two[0], &w2, Some(later))])
        .await
        .must("fail");

    let counts = store.step_counts(run.id).await.must("step_counts");
    assert_eq!(
        counts,
        expect(1, 2, 2, 1, 1),
        "after claims, a completion and a retry"
    );
    let record = store.run(run.id).await.must("run").expect("the run");
    assert_eq!(record.steps, counts, "run() counts like step_counts");
    let mut running = store.running_workers(run.id).await.must("running_workers");
    running.sort();
    assert_eq!(
        running,
        vec![w1.clone(), w2.clone()],
        "both workers hold a running step"
    );
    assert_eq!(
        store.step_counts(RunId::new()).await.must("step_counts"),
        StepCounts::default()
    );
}

/// `release` moves the given workers' running steps (of one run, if given)
/// back to `available` with their attempt and an event; other steps stay.
pub async fn release_returns_steps_to_queue(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("a", None, &[])
        .step("b", None, &[])
        .create(&*store)
        .await;
    let other = RunPlan::new().step("x", None, &[]).create(&*store).await;
    let (w1, w2) = (worker("w1"), worker("w2"));
    let a = claim(&*store, &w1, Some(run.id), 1).await;
    let b = claim(&*store, &w2, Some(run.id), 1).await;
    let x = claim(&*store, &w1, Some(other.id), 1).await;

    let none = store
        .release(None, &[worker("nobody")], "test", now())
        .await
        .must("release");
    assert!(none.is_empty(), "a worker without steps releases nothing");
    let released = store
        .release(
            Some(run.id),
            std::slice::from_ref(&w1),
            "worker stopped",
            now(),
        )
        .await;
    assert_eq!(
        released.must("release"),
        vec![a[0].id],
        "only w1's step of the run"
    );

    let steps = by_asset(&store.steps(run.id).await.must("steps"));
    assert_eq!(steps["a"].state, StepState::Available, "released");
    assert_eq!(steps["a"].attempt, 1, "release keeps the attempt");
    assert_eq!(steps["b"].state, StepState::Running, "w2's step stays");
    assert_eq!(
        other.state_of(&*store, "x").await,
        StepState::Running,
        "the other run's step"
    );
    let events = store.events(run.id, None, 100).await.must("events");
    assert!(
        events.iter().any(|e| e.kind == EventKind::StepReleased
            && e.step_id == Some(a[0].id)
            && e.message.contains("worker stopped")),
        "release records a step_released event with the reason: {events:?}"
    );

    let released = store
        .release(None, &[w1.clone(), w2.clone()], "shutdown", now())
        .await;
    let mut released = released.must("release");
    released.sort();
    assert_eq!(
        released,
        vec![b[0].id, x[0].id],
        "every run when no run is given"
    );
}

/// Workers register, heartbeat and deregister; a heartbeat leaves the worker's
/// claims in place.
pub async fn heartbeat_and_workers(store: Arc<dyn Store>) {
    let started = now();
    let record = |id: &str, pid| WorkerRecord {
        id: worker(id),
        host: "host-1".into(),
        pid,
        started_at: started,
        heartbeat_at: started,
    };
    store
        .register_worker(&record("w1", 11))
        .await
        .must("register_worker");
    store
        .register_worker(&record("w2", 22))
        .await
        .must("register_worker");
    let workers = store.workers().await.must("workers");
    let ids: BTreeSet<&str> = workers.iter().map(|w| w.id.0.as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from(["w1", "w2"]),
        "both workers are registered"
    );
    let w1 = workers.iter().find(|w| w.id.0 == "w1").expect("w1");
    assert_eq!(
        (w1.host.as_str(), w1.pid, w1.started_at),
        ("host-1", 11, started)
    );

    let run = RunPlan::new().step("a", None, &[]).create(&*store).await;
    let step = claim_one(&*store, &worker("w1"), run.id).await;
    let later = now() + SignedDuration::from_secs(30);
    store
        .heartbeat(&worker("w1"), later, SignedDuration::from_secs(60))
        .await
        .must("heartbeat");
    let w1 = store
        .workers()
        .await
        .must("workers")
        .into_iter()
        .find(|w| w.id.0 == "w1");
    assert_eq!(
        w1.expect("w1").heartbeat_at,
        later,
        "the heartbeat is recorded"
    );
    let record_a = &store.steps(run.id).await.must("steps")[0];
    assert_eq!(
        record_a.state,
        StepState::Running,
        "a heartbeat keeps the claim"
    );
    assert_eq!(
        (record_a.attempt, record_a.worker.clone()),
        (1, Some(worker("w1")))
    );
    let outcomes = store
        .complete(vec![completion_of(&step, &worker("w1"), vec![])])
        .await;
    recorded_id(&outcomes.must("complete")[0]);

    store
        .deregister_worker(&worker("w2"))
        .await
        .must("deregister_worker");
    let ids: Vec<String> = store
        .workers()
        .await
        .must("workers")
        .into_iter()
        .map(|w| w.id.0)
        .collect();
    assert_eq!(ids, ["w1"], "w2 is gone");
    store
        .register_worker(&record("w1", 33))
        .await
        .must("registering again updates");
    let workers = store.workers().await.must("workers");
    assert_eq!(workers.len(), 1, "registering an id twice keeps one record");
    assert_eq!(workers[0].pid, 33, "the second registration wins");
}

// -- helpers -----------------------------------------------------------------

/// Unwraps store results with the failing call's name in the panic.
trait Must<T> {
    fn must(self, call: &str) -> T;
}

impl<T> Must<T> for Result<T, StoreError> {
    #[track_caller]
    fn must(self, call: &str) -> T {
        self.unwrap_or_else(|err| panic!("{call} failed: {err}"))
    }
}

/// The current time at the stores' resolution (microseconds).
/// [`Store::complete_and_claim`] records the completions (fenced as
/// [`Store::complete`] is) and then claims, seeing the steps it just released.
pub async fn complete_and_claim_takes_what_it_released(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("a", None, &[])
        .step("b", None, &[0])
        .step("c", None, &[0])
        .step("d", None, &[1, 2])
        .create(&*store)
        .await;
    let w = worker("w1");
    let a = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(assets(&a), ["a"]);

    let next = |limit| ClaimRequest {
        worker: w.clone(),
        run: Some(run.id),
        limit,
        now: now(),
        lease: SignedDuration::from_secs(60),
        queues: None,
        limits: Default::default(),
    };
    let batch = vec![completion_of(&a[0], &w, vec![])];
    let (outcomes, claimed) = store
        .complete_and_claim(batch, next(1))
        .await
        .must("complete");
    assert!(
        matches!(outcomes[..], [Outcome::Recorded(Some(_))]),
        "{outcomes:?}"
    );
    assert_eq!(
        assets(&claimed),
        ["b"],
        "the limit holds; b is released and claimed"
    );
    let b = claimed[0].clone();
    assert_eq!(
        run.state_of(&*store, "c").await,
        StepState::Available,
        "c is left"
    );

    // A zombie completion of a records nothing; a limit of 0 claims nothing.
    let zombie = vec![completion_of(&a[0], &w, vec![])];
    let (outcomes, claimed) = store
        .complete_and_claim(zombie, next(0))
        .await
        .must("zombie");
    assert_eq!(outcomes, [Outcome::Fenced]);
    assert!(claimed.is_empty(), "a limit of 0 claims nothing");

    let c = claim(&*store, &w, Some(run.id), 10).await;
    assert_eq!(assets(&c), ["c"]);
    let batch = vec![completion_of(&c[0], &w, vec![])];
    let (_, claimed) = store
        .complete_and_claim(batch, next(10))
        .await
        .must("complete c");
    assert!(claimed.is_empty(), "d still waits for b");
    let batch = vec![completion_of(&b, &w, vec![])];
    let (_, claimed) = store
        .complete_and_claim(batch, next(10))
        .await
        .must("complete b");
    assert_eq!(
        assets(&claimed),
        ["d"],
        "completing b releases d, claimed in the same call"
    );
}

/// At most one live step per asset partition across runs: a second run
/// naming a live target is refused whole with [`StoreError::Conflict`],
/// `live_steps` names the holder, and once the step ends the target may be
/// queued again. Unpartitioned targets count too. `live_assets` lists the
/// assets with a live step.
pub async fn one_live_step_per_target(store: Arc<dyn Store>) {
    let live_assets = async |store: &dyn Store| -> Vec<String> {
        let keys = store.live_assets().await.must("live_assets");
        keys.iter().map(|k| k.as_str().to_owned()).collect()
    };
    assert!(live_assets(&*store).await.is_empty());
    let first = RunPlan::new()
        .step("daily", Some("2024-01-01"), &[])
        .step("daily", Some("2024-01-02"), &[])
        .step("root", None, &[])
        .create(&*store)
        .await;
    assert_eq!(live_assets(&*store).await, ["daily", "root"]);

    for plan in [
        RunPlan::new().step("daily", Some("2024-01-03"), &[]).step(
            "daily",
            Some("2024-01-02"),
            &[],
        ),
        RunPlan::new().step("root", None, &[]),
    ] {
        let refused = store.create_run(plan.new_run()).await;
        match refused {
            Err(StoreError::Conflict(message)) => assert!(
                message.contains(&first.id.to_string()),
                "the conflict names the run holding the target: {message}"
            ),
            other => panic!("a second live step for a target must be refused, got {other:?}"),
        }
    }
    assert_eq!(
        store.runs(10).await.must("runs").len(),
        1,
        "a refused run leaves no row behind"
    );
    let live = store
        .live_steps(&[
            target("daily", Some("2024-01-02")),
            target("daily", Some("2024-01-03")),
            target("root", None),
        ])
        .await
        .must("live_steps");
    let mut live: Vec<(String, RunId)> = live.iter().map(|(t, r)| (label(t), *r)).collect();
    live.sort();
    assert_eq!(
        live,
        vec![
            ("daily[2024-01-02]".to_owned(), first.id),
            ("root".to_owned(), first.id)
        ],
        "live_steps finds the live targets and their run"
    );

    let repeated = RunPlan::new()
        .step("twice", None, &[])
        .step("twice", None, &[]);
    assert!(
        matches!(
            store.create_run(repeated.new_run()).await,
            Err(StoreError::Conflict(_))
        ),
        "a run naming one target twice is refused"
    );

    // Once the steps end, the targets may be queued again.
    let w = worker("w1");
    let claimed = claim(&*store, &w, Some(first.id), 10).await;
    complete_all(&*store, &w, &claimed).await;
    assert!(
        live_assets(&*store).await.is_empty(),
        "no asset is live once its steps ended"
    );
    RunPlan::new()
        .step("daily", Some("2024-01-02"), &[])
        .step("root", None, &[])
        .create(&*store)
        .await;
    assert_eq!(live_assets(&*store).await, ["daily", "root"]);
}

/// Many runs created at once for the same target: exactly one is created,
/// the others are refused with a conflict.
pub async fn racing_runs_leave_one_live_step(store: Arc<dyn Store>) {
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        racers.spawn(async move {
            let plan =
                RunPlan::new()
                    .step(&format!("own{i}"), None, &[])
                    .step("shared", Some("p"), &[]);
            store.create_run(plan.new_run()).await
        });
    }
    let (mut created, mut refused) = (0, 0);
    while let Some(result) = racers.join_next().await {
        match result.expect("racer task") {
            Ok(_) => created += 1,
            Err(StoreError::Conflict(_)) => refused += 1,
            Err(other) => panic!("a racing create_run failed otherwise: {other}"),
        }
    }
    assert_eq!(
        (created, refused),
        (1, 7),
        "one racer wins, the rest are refused"
    );
    let live = store
        .live_steps(&[target("shared", Some("p"))])
        .await
        .must("live_steps");
    assert_eq!(live.len(), 1, "exactly one live step for the raced target");
}

/// Claims take steps only from `running` runs: an interrupted run is paused
/// for every worker until it runs again.
pub async fn claims_skip_runs_not_running(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("a", None, &[])
        .step("b", None, &[])
        .create(&*store)
        .await;
    let w = worker("w1");
    let at = now();
    assert!(
        store
            .set_run_state(run.id, &[RunState::Running], RunState::Interrupted, at)
            .await
            .must("interrupt")
    );
    assert!(
        claim(&*store, &w, None, 10).await.is_empty(),
        "nothing is claimed from an interrupted run"
    );
    assert!(
        claim(&*store, &w, Some(run.id), 10).await.is_empty(),
        "nothing is claimed from an interrupted run, named or not"
    );
    store
        .set_run_state(run.id, &[RunState::Interrupted], RunState::Running, at)
        .await
        .must("resume");
    assert_eq!(claim(&*store, &w, None, 10).await.len(), 2);
}

/// One holder at a time: the lease is taken when free, renewed by its holder
/// in the same term, refused to others while it holds, taken over with a new
/// term once expired, and free again once released.
pub async fn lease_has_one_holder_and_terms(store: Arc<dyn Store>) {
    let (a, b) = (worker("leader-a"), worker("leader-b"));
    let long = SignedDuration::from_secs(60);
    let first = store
        .acquire_lease("leader", &a, long, now())
        .await
        .must("acquire")
        .expect("a free lease is taken");
    assert_eq!(
        (first.holder.clone(), first.name.as_str()),
        (a.clone(), "leader")
    );
    assert!(
        store
            .acquire_lease("leader", &b, long, now())
            .await
            .must("acquire")
            .is_none(),
        "a held lease is refused to another"
    );
    let renewed = store
        .acquire_lease("leader", &a, long, now())
        .await
        .must("renew")
        .expect("the holder renews");
    assert_eq!(renewed.term, first.term, "a renewal keeps the term");
    assert!(renewed.expires_at >= first.expires_at);
    assert!(
        store
            .acquire_lease("other", &b, long, now())
            .await
            .must("acquire")
            .is_some(),
        "leases of other names are independent"
    );

    // A short lease expires; another takes it over in a new term.
    let short = SignedDuration::from_millis(50);
    store
        .acquire_lease("leader", &a, short, now())
        .await
        .must("renew short");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let taken = store
        .acquire_lease("leader", &b, long, now())
        .await
        .must("take over")
        .expect("an expired lease is taken over");
    assert_eq!(taken.term, first.term + 1, "a takeover starts a new term");
    assert_eq!(
        store.lease("leader").await.must("lease"),
        Some(taken.clone())
    );
    assert!(
        store
            .acquire_lease("leader", &a, long, now())
            .await
            .must("acquire")
            .is_none(),
        "the old holder cannot renew after a takeover"
    );

    // Releasing with a stale term does nothing; with the current one frees it.
    store.release_lease(&first).await.must("release stale");
    assert_eq!(
        store.lease("leader").await.must("lease"),
        Some(taken.clone())
    );
    store.release_lease(&taken).await.must("release");
    let next = store
        .acquire_lease("leader", &a, long, now())
        .await
        .must("acquire")
        .expect("a released lease is free at once");
    assert_eq!(
        next.term,
        taken.term + 1,
        "the term after a release follows the released one"
    );
}

/// Running steps whose claim expired are rescued: back to `retryable` with
/// the attempt counted while attempts remain, `failed` on the last one (its
/// pending downstream `skipped`); a completion by the old worker is then
/// fenced, and the retry is claimable at once as the next attempt.
pub async fn rescue_expired_retries_or_fails(store: Arc<dyn Store>) {
    let mut plan = RunPlan::new().step("retry_me", None, &[]);
    plan.steps.push(NewStep {
        target: target("last_try", None),
        upstream: vec![],
        max_attempts: 1,
        priority: 0,
        queue: crate::store::DEFAULT_QUEUE.into(),
    });
    let run = plan.step("after_last", None, &[1]).create(&*store).await;
    let dead = worker("dead");
    let claimed = claim_with_lease(&*store, &dead, run.id, SignedDuration::from_millis(20)).await;
    assert_eq!(claimed.len(), 2);
    tokio::time::sleep(Duration::from_millis(120)).await;

    let lease = lead(&*store, "leader-a").await;
    let rescued = store.rescue_expired(&lease, now()).await.must("rescue");
    assert_eq!(
        (rescued.retried, rescued.failed),
        (vec![run.ids["retry_me"]], vec![run.ids["last_try"]]),
        "the step with attempts left is retried, the one on its last attempt fails"
    );
    assert_eq!(
        run.state_of(&*store, "retry_me").await,
        StepState::Retryable
    );
    assert_eq!(run.state_of(&*store, "last_try").await, StepState::Failed);
    assert_eq!(
        run.state_of(&*store, "after_last").await,
        StepState::Skipped,
        "the downstream of a rescued final failure is skipped"
    );
    let steps = by_asset(&store.steps(run.id).await.must("steps"));
    assert!(
        steps["last_try"]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("dead")),
        "the error names the lost worker: {:?}",
        steps["last_try"].error
    );

    let zombie = completion_of(&claimed[0], &dead, vec![]);
    assert_eq!(
        store.complete(vec![zombie]).await.must("zombie complete"),
        vec![Outcome::Fenced],
        "the lost worker's late completion is fenced"
    );
    let again = claim(&*store, &worker("alive"), Some(run.id), 10).await;
    assert_eq!(
        assets(&again),
        ["retry_me"],
        "the rescued step is due at once"
    );
    assert_eq!(again[0].attempt, 2, "the rescue counted the lost attempt");

    let events = store.events(run.id, None, 100).await.must("events");
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&EventKind::StepRetrying) && kinds.contains(&EventKind::StepFailed),
        "the rescue logs one event per step: {kinds:?}"
    );
    assert!(
        store
            .rescue_expired(&lease, now())
            .await
            .must("rescue")
            .retried
            .is_empty(),
        "a second pass finds nothing more"
    );
}

/// The rescue is a compare-and-set: a step that completed, or whose worker
/// renewed its claim, is left alone.
pub async fn rescue_leaves_completed_and_renewed_steps(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("done", None, &[])
        .step("renewed", None, &[])
        .create(&*store)
        .await;
    let w = worker("w1");
    let short = SignedDuration::from_millis(20);
    let claimed = claim_with_lease(&*store, &w, run.id, short).await;
    let done: Vec<ClaimedStep> = claimed
        .iter()
        .filter(|c| c.target.asset.as_str() == "done")
        .cloned()
        .collect();
    complete_all(&*store, &w, &done).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    // The heartbeat renews the claim (w1 never registered: the renewal of
    // its claims does not depend on that).
    store
        .heartbeat(&w, now(), SignedDuration::from_secs(60))
        .await
        .must("heartbeat");
    let lease = lead(&*store, "leader-a").await;
    let rescued = store.rescue_expired(&lease, now()).await.must("rescue");
    assert_eq!(
        rescued,
        Default::default(),
        "nothing expired is left to rescue"
    );
    assert_eq!(run.state_of(&*store, "done").await, StepState::Completed);
    assert_eq!(run.state_of(&*store, "renewed").await, StepState::Running);
}

/// Maintenance under a lease that was taken over does nothing.
pub async fn maintenance_is_fenced_by_the_lease(store: Arc<dyn Store>) {
    let run = RunPlan::new().step("a", None, &[]).create(&*store).await;
    let w = worker("w1");
    claim_with_lease(&*store, &w, run.id, SignedDuration::from_millis(20)).await;
    let old = store
        .acquire_lease(
            "leader",
            &worker("old"),
            SignedDuration::from_millis(30),
            now(),
        )
        .await
        .must("acquire")
        .expect("free lease");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let new = lead(&*store, "new").await;
    assert!(new.term > old.term);
    assert_eq!(
        store.rescue_expired(&old, now()).await.must("stale rescue"),
        Default::default(),
        "a leader whose lease was taken over rescues nothing"
    );
    assert_eq!(
        store
            .forget_workers(&old, now(), now())
            .await
            .must("stale forget"),
        0,
        "a leader whose lease was taken over forgets nobody"
    );
    assert_eq!(run.state_of(&*store, "a").await, StepState::Running);
    assert_eq!(
        store
            .rescue_expired(&new, now())
            .await
            .must("rescue")
            .retried
            .len(),
        1,
        "the current leader rescues"
    );
}

/// `runs_without_live_steps` finds running runs whose steps all ended;
/// `forget_workers` drops silent registrations and `heartbeat` then says so.
pub async fn runs_without_live_steps_and_forgotten_workers(store: Arc<dyn Store>) {
    let run = RunPlan::new().step("a", None, &[]).create(&*store).await;
    let open = RunPlan::new().step("b", None, &[]).create(&*store).await;
    let w = worker("w1");
    let claimed = claim(&*store, &w, Some(run.id), 1).await;
    complete_all(&*store, &w, &claimed).await;
    assert_eq!(
        store
            .runs_without_live_steps(10)
            .await
            .must("runs_without_live_steps"),
        vec![run.id],
        "only the run whose steps all ended"
    );
    assert!(!store.has_live_steps(run.id).await.must("has_live_steps"));
    assert!(store.has_live_steps(open.id).await.must("has_live_steps"));

    let old = WorkerRecord {
        id: worker("old"),
        host: "h".into(),
        pid: 1,
        started_at: now() - SignedDuration::from_secs(7200),
        heartbeat_at: now() - SignedDuration::from_secs(7200),
    };
    store.register_worker(&old).await.must("register");
    let fresh = WorkerRecord {
        id: worker("fresh"),
        heartbeat_at: now(),
        ..old.clone()
    };
    store.register_worker(&fresh).await.must("register");
    let lease = lead(&*store, "leader-a").await;
    let before = now() - SignedDuration::from_secs(3600);
    assert_eq!(
        store
            .forget_workers(&lease, before, now())
            .await
            .must("forget"),
        1
    );
    let ids: Vec<WorkerId> = store
        .workers()
        .await
        .must("workers")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, vec![worker("fresh")]);
    assert!(
        !store
            .heartbeat(&old.id, now(), SignedDuration::from_secs(60))
            .await
            .must("heartbeat"),
        "a forgotten worker's heartbeat says it is not registered"
    );
    assert!(
        store
            .heartbeat(&fresh.id, now(), SignedDuration::from_secs(60))
            .await
            .must("heartbeat")
    );
}

/// Pruning deletes the completed and skipped steps of runs that ended before
/// the cut-off, keeps failed steps, the run's counts, its materializations,
/// lineage and events, and leaves newer or unfinished runs alone.
pub async fn pruning_keeps_history_and_counts(store: Arc<dyn Store>) {
    let mut plan = RunPlan::new().step("up", None, &[]);
    plan.steps.push(NewStep {
        target: target("breaks", None),
        upstream: vec![],
        max_attempts: 1,
        priority: 0,
        queue: crate::store::DEFAULT_QUEUE.into(),
    });
    let old = plan
        .step("down", None, &[0])
        .step("after_break", None, &[1])
        .create(&*store)
        .await;
    let w = worker("w1");
    let roots = claim(&*store, &w, Some(old.id), 10).await;
    let (up, breaks): (Vec<_>, Vec<_>) = roots
        .into_iter()
        .partition(|c| c.target.asset.as_str() == "up");
    let up_id = complete_all(&*store, &w, &up).await[0];
    store
        .fail(vec![failure_of(&breaks[0], &w, None)])
        .await
        .must("fail");
    let down = claim_one(&*store, &w, old.id).await;
    let outcomes = store
        .complete(vec![completion_of(&down, &w, vec![up_id])])
        .await
        .must("complete down");
    let down_id = recorded_id(&outcomes[0]);
    store
        .set_run_state(old.id, &[RunState::Running], RunState::Failed, now())
        .await
        .must("finish");
    let before = store.run(old.id).await.must("run").expect("run").steps;
    let events_before = store.events(old.id, None, 1000).await.must("events").len();
    let open = RunPlan::new().step("open", None, &[]).create(&*store).await;

    let lease = lead(&*store, "leader-a").await;
    let cut = now() + SignedDuration::from_secs(1);
    assert_eq!(
        store.prune_runs(&lease, cut, 10, now()).await.must("prune"),
        1
    );
    assert_eq!(
        store.prune_runs(&lease, cut, 10, now()).await.must("prune"),
        0,
        "a pruned run is not pruned again"
    );

    let after = store.run(old.id).await.must("run").expect("run kept");
    assert_eq!(after.steps, before, "a pruned run keeps its step counts");
    let left: Vec<String> = store
        .steps(old.id)
        .await
        .must("steps")
        .iter()
        .map(|s| label(&s.target))
        .collect();
    assert_eq!(left, ["breaks"], "only the failed step stays");
    assert!(store.materialization(up_id).await.must("m").is_some());
    let lineage = store.inputs_of(&[down_id]).await.must("inputs_of");
    assert_eq!(
        lineage.iter().map(|(_, m)| m.id).collect::<Vec<_>>(),
        vec![up_id],
        "lineage is history"
    );
    assert_eq!(
        store.events(old.id, None, 1000).await.must("events").len(),
        events_before,
        "events are history"
    );
    assert_eq!(
        store.materializations_of_run(old.id).await.must("m").len(),
        2,
        "materializations are history"
    );
    assert_eq!(
        store.steps(open.id).await.must("steps").len(),
        1,
        "an unfinished run is left alone"
    );
}

/// Takes the leader lease for `holder`, which must be free.
async fn lead(store: &dyn Store, holder: &str) -> crate::store::Lease {
    store
        .acquire_lease(
            "leader",
            &worker(holder),
            SignedDuration::from_secs(60),
            now(),
        )
        .await
        .must("acquire")
        .expect("the leader lease is free")
}

/// Claims every claimable step of `run` with a claim lasting `lease`.
async fn claim_with_lease(
    store: &dyn Store,
    worker: &WorkerId,
    run: RunId,
    lease: SignedDuration,
) -> Vec<ClaimedStep> {
    let req = ClaimRequest {
        worker: worker.clone(),
        run: Some(run),
        limit: 100,
        now: now(),
        lease,
        queues: None,
        limits: Default::default(),
    };
    store.claim(req).await.must("claim")
}

fn now() -> Timestamp {
    let us = Timestamp::now().as_microsecond();
    Timestamp::from_microsecond(us).expect("now is a valid timestamp")
}

fn key(asset: &str) -> AssetKey {
    AssetKey::new(asset).expect("test asset keys are valid")
}

fn target(asset: &str, partition: Option<&str>) -> AssetPartition {
    AssetPartition::new(key(asset), partition.map(PartitionKey::from))
}

fn worker(name: &str) -> WorkerId {
    WorkerId(name.to_owned())
}

/// A run to create; targets must be distinct within one plan.
struct RunPlan {
    steps: Vec<NewStep>,
    max_parallel: Option<u32>,
}

impl RunPlan {
    fn new() -> Self {
        RunPlan {
            steps: Vec::new(),
            max_parallel: None,
        }
    }

    /// A step without upstream in `queue`.
    fn step_in(mut self, asset: &str, partition: Option<&str>, queue: &str) -> Self {
        self = self.step(asset, partition, &[]);
        self.steps.last_mut().expect("just pushed").queue = queue.to_owned();
        self
    }

    fn max_parallel(mut self, n: u32) -> Self {
        self.max_parallel = Some(n);
        self
    }

    fn step(self, asset: &str, partition: Option<&str>, upstream: &[usize]) -> Self {
        self.step_with(asset, partition, upstream, 0)
    }

    fn step_with(
        mut self,
        asset: &str,
        partition: Option<&str>,
        upstream: &[usize],
        priority: i32,
    ) -> Self {
        self.steps.push(NewStep {
            target: target(asset, partition),
            upstream: upstream.to_vec(),
            max_attempts: 3,
            priority,
            queue: crate::store::DEFAULT_QUEUE.into(),
        });
        self
    }

    fn new_run(&self) -> NewRun {
        NewRun {
            id: RunId::new(),
            trigger: Trigger::Cli,
            user: "tester".into(),
            description: "conformance".into(),
            created_at: now(),
            max_parallel: self.max_parallel,
            steps: self.steps.clone(),
        }
    }

    async fn create(self, store: &dyn Store) -> CreatedRun {
        let run = store.create_run(self.new_run()).await.must("create_run");
        let steps = store.steps(run.id).await.must("steps");
        let ids = steps.iter().map(|s| (label(&s.target), s.id)).collect();
        CreatedRun { id: run.id, ids }
    }
}

/// A run created by a [`RunPlan`], with its step ids by label (`asset` or
/// `asset[partition]`).
struct CreatedRun {
    id: RunId,
    ids: HashMap<String, StepId>,
}

impl CreatedRun {
    async fn state_of(&self, store: &dyn Store, label: &str) -> StepState {
        let id = self
            .ids
            .get(label)
            .unwrap_or_else(|| panic!("no step {label} in the run"));
        let steps = store.steps(self.id).await.must("steps");
        steps
            .iter()
            .find(|s| s.id == *id)
            .map(|s| s.state)
            .expect("the step is listed")
    }
}

fn label(target: &AssetPartition) -> String {
    target.to_string()
}

/// Steps by label; with one step per label.
fn by_asset(steps: &[StepRecord]) -> HashMap<String, StepRecord> {
    steps
        .iter()
        .map(|s| (label(&s.target), s.clone()))
        .collect()
}

/// The assets of claimed steps, in claim order.
fn assets(claimed: &[ClaimedStep]) -> Vec<&str> {
    claimed.iter().map(|c| c.target.asset.as_str()).collect()
}

async fn claim(
    store: &dyn Store,
    worker: &WorkerId,
    run: Option<RunId>,
    limit: u32,
) -> Vec<ClaimedStep> {
    let req = ClaimRequest {
        worker: worker.clone(),
        run,
        limit,
        now: now(),
        lease: SignedDuration::from_secs(60),
        queues: None,
        limits: Default::default(),
    };
    store.claim(req).await.must("claim")
}

/// A claim serving `queues` (all when `None`) under `limits`.
fn limited_request(
    worker: &WorkerId,
    limit: u32,
    queues: Option<&[&str]>,
    limits: &Arc<QueueLimits>,
) -> ClaimRequest {
    ClaimRequest {
        worker: worker.clone(),
        run: None,
        limit,
        now: now(),
        lease: SignedDuration::from_secs(60),
        queues: queues.map(|q| q.iter().map(|s| (*s).to_owned()).collect()),
        limits: Arc::clone(limits),
    }
}

/// Claims by `workers` at once, each in its own task; every claimed step
/// with its worker.
async fn claim_at_once(
    store: &Arc<dyn Store>,
    workers: usize,
    request: impl Fn(&WorkerId) -> ClaimRequest,
) -> Vec<(WorkerId, ClaimedStep)> {
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            let store = Arc::clone(store);
            let w = worker(&format!("w{i}"));
            let req = request(&w);
            tokio::spawn(async move {
                let claimed = store.claim(req).await.must("claim");
                claimed
                    .into_iter()
                    .map(|c| (w.clone(), c))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    for task in tasks {
        for (w, step) in task.await.expect("a claimer task panicked") {
            assert!(seen.insert(step.id), "step {} claimed twice", step.id);
            all.push((w, step));
        }
    }
    all
}

/// Claimed steps per asset.
fn per_asset(claimed: &[(WorkerId, ClaimedStep)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, step) in claimed {
        *counts.entry(step.target.asset.to_string()).or_default() += 1;
    }
    counts
}

async fn claim_one(store: &dyn Store, worker: &WorkerId, run: RunId) -> ClaimedStep {
    let mut claimed = claim(store, worker, Some(run), 1).await;
    assert_eq!(claimed.len(), 1, "expected one claimable step in run {run}");
    claimed.remove(0)
}

fn completion_of(
    step: &ClaimedStep,
    worker: &WorkerId,
    inputs: Vec<MaterializationId>,
) -> Completion {
    let at = now();
    Completion {
        step: step.id,
        attempt: step.attempt,
        worker: worker.clone(),
        materialization: NewMaterialization {
            target: step.target.clone(),
            run_id: step.run_id,
            step_id: step.id,
            attempt: step.attempt,
            started_at: at - SignedDuration::from_millis(3),
            finished_at: at,
            trigger: step.trigger,
            user: step.user.clone(),
            code_version: "code-1".into(),
            data_version: format!("data-{}", step.id),
            metadata: BTreeMap::from([("by".to_owned(), serde_json::json!(worker.0))]),
            location: format!("/tmp/flowstone/{}", step.id),
            io_manager: "memory".into(),
        },
        inputs,
        events: vec![NewEvent {
            run_id: step.run_id,
            step_id: Some(step.id),
            at,
            kind: EventKind::Log,
            level: Level::Info,
            message: format!("ran {}", step.id),
            data: serde_json::Value::Null,
        }],
    }
}

fn failure_of(step: &ClaimedStep, worker: &WorkerId, retry_at: Option<Timestamp>) -> Failure {
    let at = now();
    Failure {
        step: step.id,
        attempt: step.attempt,
        worker: worker.clone(),
        error: "boom".into(),
        retry_at,
        finished_at: at,
        events: vec![NewEvent {
            run_id: step.run_id,
            step_id: Some(step.id),
            at,
            kind: if retry_at.is_some() {
                EventKind::StepRetrying
            } else {
                EventKind::StepFailed
            },
            level: Level::Error,
            message: "boom".into(),
            data: serde_json::Value::Null,
        }],
    }
}

/// Completes `steps` in one batch; returns their materialization ids in order.
async fn complete_all(
    store: &dyn Store,
    worker: &WorkerId,
    steps: &[ClaimedStep],
) -> Vec<MaterializationId> {
    let batch = steps
        .iter()
        .map(|s| completion_of(s, worker, vec![]))
        .collect();
    let outcomes = store.complete(batch).await.must("complete");
    assert_eq!(outcomes.len(), steps.len(), "one outcome per item");
    outcomes.iter().map(recorded_id).collect()
}

#[track_caller]
fn recorded_id(outcome: &Outcome) -> MaterializationId {
    match outcome {
        Outcome::Recorded(Some(id)) => *id,
        other => panic!("expected a recorded completion, got {other:?}"),
    }
}

/// `events_since` reads the events of every run in id order, pages after the
/// last id seen, and agrees with `events` on each record.
pub async fn events_since_reads_every_run(store: Arc<dyn Store>) {
    let first = RunPlan::new().step("a", None, &[]).create(&*store).await;
    let second = RunPlan::new().step("b", None, &[]).create(&*store).await;
    let before = store.events_since(None, 1000).await.must("events_since");
    let start = before.last().map(|e| e.id);
    let position = store.events_position().await.must("events_position");
    assert_eq!(position, start, "the position is the newest settled event");

    let event = |run_id: RunId, i: usize| NewEvent {
        run_id,
        step_id: None,
        at: now(),
        kind: EventKind::Log,
        level: Level::Info,
        message: format!("event {i}"),
        data: serde_json::json!({ "i": i }),
    };
    for i in 0..7 {
        let run = if i % 2 == 0 { first.id } else { second.id };
        store
            .append_events(vec![event(run, i)])
            .await
            .must("append_events");
    }

    let mut read: Vec<EventRecord> = Vec::new();
    let mut after = start;
    let mut pages = Vec::new();
    loop {
        let page = store.events_since(after, 3).await.must("events_since");
        if page.is_empty() {
            break;
        }
        pages.push(page.len());
        after = page.last().map(|e| e.id);
        read.extend(page);
    }
    assert_eq!(pages, [3, 3, 1], "pages of 3 after the last id seen");
    assert!(
        read.windows(2).all(|w| w[0].id < w[1].id),
        "event ids increase across runs"
    );
    let messages: Vec<&str> = read.iter().map(|e| e.message.as_str()).collect();
    let want: Vec<String> = (0..7).map(|i| format!("event {i}")).collect();
    assert_eq!(messages, want, "every run's events, in the order appended");
    let position = store.events_position().await.must("events_position");
    assert_eq!(position, read.last().map(|e| e.id), "the position moved on");
    let runs: Vec<RunId> = read.iter().map(|e| e.run_id).collect();
    assert_eq!(runs[..2], [first.id, second.id], "events keep their run");

    let per_run = store.events(first.id, start, 100).await.must("events");
    let from_feed: Vec<EventId> = read
        .iter()
        .filter(|e| e.run_id == first.id)
        .map(|e| e.id)
        .collect();
    let ids: Vec<EventId> = per_run.iter().map(|e| e.id).collect();
    assert_eq!(ids, from_feed, "the feed and the run's events agree");
    let last = read.last().map(|e| e.id);
    assert!(
        store
            .events_since(last, 10)
            .await
            .must("events_since")
            .is_empty(),
        "nothing after the last event"
    );
}

/// A queue limit holds across claimers that race: eight claimers asking for
/// more than the limit together take exactly the limit of the limited queue
/// (and every step of the unlimited one). A completion frees a slot that the
/// same transaction's claim takes, and a release frees one too.
pub async fn queue_limits_hold_across_claimers(store: Arc<dyn Store>) {
    let mut plan = RunPlan::new();
    for i in 0..12 {
        plan = plan.step_in("llm_call", Some(&format!("p{i:02}")), "llm");
    }
    for i in 0..6 {
        plan = plan.step("plain", Some(&format!("p{i:02}")), &[]);
    }
    let run = plan.create(&*store).await;
    let limits = Arc::new(QueueLimits::from([("llm".to_owned(), 3)]));

    let claimed = claim_at_once(&store, 8, |w| limited_request(w, 4, None, &limits)).await;
    let counts = per_asset(&claimed);
    assert_eq!(counts.get("llm_call"), Some(&3), "claimed: {counts:?}");
    assert_eq!(counts.get("plain"), Some(&6), "claimed: {counts:?}");

    // Full: another claim takes nothing.
    let more = store
        .claim(limited_request(&worker("late"), 4, None, &limits))
        .await
        .must("claim");
    assert!(more.is_empty(), "the llm queue is full: {more:?}");

    // A completion frees one slot, taken in the same transaction.
    let (w, done) = claimed
        .iter()
        .find(|(_, c)| c.target.asset.as_str() == "llm_call")
        .expect("an llm step was claimed");
    let (outcomes, next) = store
        .complete_and_claim(
            vec![completion_of(done, w, vec![])],
            limited_request(w, 4, None, &limits),
        )
        .await
        .must("complete_and_claim");
    assert!(matches!(outcomes[0], Outcome::Recorded(_)));
    assert_eq!(assets(&next), ["llm_call"], "one slot was freed");

    // A release frees the releasing worker's slots.
    let running_llm = |steps: &[StepRecord]| -> Vec<StepRecord> {
        steps
            .iter()
            .filter(|s| s.state == StepState::Running && s.target.asset.as_str() == "llm_call")
            .cloned()
            .collect()
    };
    let steps = store.steps(run.id).await.must("steps");
    assert_eq!(running_llm(&steps).len(), 3, "the limit is used up again");
    let holder = running_llm(&steps)[0]
        .worker
        .clone()
        .expect("a running step has a worker");
    let held = running_llm(&steps)
        .iter()
        .filter(|s| s.worker.as_ref() == Some(&holder))
        .count();
    store
        .release(Some(run.id), std::slice::from_ref(&holder), "test", now())
        .await
        .must("release");
    let after = store
        .claim(limited_request(&worker("after"), 10, None, &limits))
        .await
        .must("claim");
    let llm_after = after
        .iter()
        .filter(|c| c.target.asset.as_str() == "llm_call")
        .count();
    assert_eq!(llm_after, held, "the released llm slots are free again");
    let steps = store.steps(run.id).await.must("steps");
    assert_eq!(
        running_llm(&steps).len(),
        3,
        "never more than the limit running"
    );
}

/// A claim that names queues takes only their steps; one without queues
/// takes from all.
pub async fn claims_serve_only_their_queues(store: Arc<dyn Store>) {
    let plan = RunPlan::new()
        .step_in("in_a", Some("1"), "a")
        .step_in("in_a", Some("2"), "a")
        .step_in("in_b", Some("1"), "b")
        .step("in_default", Some("1"), &[]);
    plan.create(&*store).await;
    let none = Arc::new(QueueLimits::new());

    let only_a = store
        .claim(limited_request(&worker("a"), 10, Some(&["a"]), &none))
        .await
        .must("claim");
    assert_eq!(assets(&only_a), ["in_a", "in_a"]);
    let unknown = store
        .claim(limited_request(&worker("z"), 10, Some(&["zzz"]), &none))
        .await
        .must("claim");
    assert!(
        unknown.is_empty(),
        "no step waits in queue zzz: {unknown:?}"
    );
    let mut rest = store
        .claim(limited_request(&worker("all"), 10, None, &none))
        .await
        .must("claim");
    rest.sort_by(|x, y| x.target.asset.cmp(&y.target.asset));
    assert_eq!(assets(&rest), ["in_b", "in_default"]);
}

/// A run's cap holds across claimers that race, beside an uncapped run, and
/// a completion of a capped step lets the same transaction claim one more.
pub async fn run_caps_hold_across_claimers(store: Arc<dyn Store>) {
    let mut capped = RunPlan::new().max_parallel(2);
    for i in 0..8 {
        capped = capped.step("capped", Some(&format!("p{i}")), &[]);
    }
    let capped = capped.create(&*store).await;
    let record = store
        .run(capped.id)
        .await
        .must("run")
        .expect("the run exists");
    assert_eq!(record.max_parallel, Some(2));
    let mut free = RunPlan::new();
    for i in 0..4 {
        free = free.step("free", Some(&format!("p{i}")), &[]);
    }
    free.create(&*store).await;
    let none = Arc::new(QueueLimits::new());

    let claimed = claim_at_once(&store, 6, |w| limited_request(w, 3, None, &none)).await;
    let counts = per_asset(&claimed);
    assert_eq!(counts.get("capped"), Some(&2), "claimed: {counts:?}");
    assert_eq!(counts.get("free"), Some(&4), "claimed: {counts:?}");

    // A claim of the capped run alone finds it full.
    let scoped = claim(&*store, &worker("scoped"), Some(capped.id), 5).await;
    assert!(scoped.is_empty(), "the run is at its cap: {scoped:?}");

    let (w, done) = claimed
        .iter()
        .find(|(_, c)| c.target.asset.as_str() == "capped")
        .expect("a capped step was claimed");
    let (_, next) = store
        .complete_and_claim(
            vec![completion_of(done, w, vec![])],
            limited_request(w, 5, None, &none),
        )
        .await
        .must("complete_and_claim");
    assert_eq!(assets(&next), ["capped"], "one slot of the cap was freed");
    let counts = store.step_counts(capped.id).await.must("step_counts");
    assert_eq!((counts.running, counts.completed), (2, 1), "{counts:?}");
}

/// Steps running under a worker that it does not know of (their claim's
/// answer was lost) and that were claimed before the bound go back to the
/// queue, with an event; known steps, younger claims and other workers' steps
/// stay, and a late completion of a handed-back step is fenced.
pub async fn release_unknown_hands_back_lost_claims(store: Arc<dyn Store>) {
    let run = RunPlan::new()
        .step("known", None, &[])
        .step("lost", None, &[])
        .step("young", None, &[])
        .step("others", None, &[])
        .create(&*store)
        .await;
    let w = worker("w");
    let long_ago = now() - SignedDuration::from_secs(120);
    let claim_at = |who: &WorkerId, at: Timestamp| ClaimRequest {
        worker: who.clone(),
        run: Some(run.id),
        limit: 1,
        now: at,
        lease: SignedDuration::from_secs(600),
        queues: None,
        limits: Default::default(),
    };
    let known = store.claim(claim_at(&w, long_ago)).await.must("claim");
    let lost = store.claim(claim_at(&w, long_ago)).await.must("claim");
    let young = store.claim(claim_at(&w, now())).await.must("claim");
    let theirs = store
        .claim(claim_at(&worker("other"), long_ago))
        .await
        .must("claim");
    assert_eq!(
        (known.len(), lost.len(), young.len(), theirs.len()),
        (1, 1, 1, 1)
    );

    let released = store
        .release_unknown(
            &w,
            &[known[0].id],
            now() - SignedDuration::from_secs(60),
            now(),
        )
        .await
        .must("release_unknown");
    assert_eq!(released, vec![lost[0].id], "only the lost claim goes back");
    let steps = by_asset(&store.steps(run.id).await.must("steps"));
    assert_eq!(steps["lost"].state, StepState::Available);
    for label in ["known", "young", "others"] {
        assert_eq!(steps[label].state, StepState::Running, "{label}");
    }
    let events = store.events(run.id, None, 100).await.must("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::StepReleased && e.step_id == Some(lost[0].id)),
        "a step_released event names the step: {events:?}"
    );
    let outcomes = store
        .complete(vec![completion_of(&lost[0], &w, vec![])])
        .await
        .must("complete");
    assert_eq!(outcomes, vec![Outcome::Fenced]);
}

/// API tokens: found by hash until revoked; a name is unique among tokens
/// not revoked and free again once its token is, or once it has expired
/// (creating a token with the name then revokes the expired one, in the
/// same transaction); expiry is the caller's to judge but
/// `has_active_tokens` counts it; a use is noted.
pub async fn tokens_by_hash_revoked_and_renamed(store: Arc<dyn Store>) {
    use crate::token::{NewToken, TokenRight, generate, hash};

    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let hour = SignedDuration::from_hours(1);
    assert!(store.tokens().await.unwrap().is_empty());
    assert!(
        !store.has_active_tokens(now).await.unwrap(),
        "an empty store has no active token"
    );

    let (ci, ci_secret) = generate("ci", TokenRight::Launch, None, now).unwrap();
    let created = store.create_token(ci.clone()).await.unwrap();
    assert_eq!(created.name, "ci");
    assert_eq!(created.right, TokenRight::Launch);
    assert_eq!(created.prefix, ci.prefix);
    assert_eq!(created.created_at, now);
    assert_eq!(created.expires_at, None);
    assert_eq!(created.revoked_at, None);
    assert!(store.has_active_tokens(now).await.unwrap());

    let found = store
        .token_by_hash(&hash(ci_secret.expose()))
        .await
        .unwrap()
        .expect("a token is found by the hash of its secret");
    assert_eq!(found, created);
    assert_eq!(store.token_by_hash(&hash("fst_wrong")).await.unwrap(), None);

    // A second token with the name is refused while the first is live.
    let (again, _) = generate("ci", TokenRight::Read, None, now).unwrap();
    match store.create_token(again.clone()).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("\"ci\""), "{message}"),
        other => panic!("a second live token named ci must conflict, got {other:?}"),
    }

    // An expiring token: found by hash (the caller judges expiry), active
    // before it expires and not after.
    let (temp, temp_secret) = generate(
        "temp",
        TokenRight::Read,
        Some(now + hour),
        now + SignedDuration::from_secs(1),
    )
    .unwrap();
    let temp = store.create_token(temp).await.unwrap();
    assert_eq!(temp.expires_at, Some(now + hour));
    let listed: Vec<String> = store
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(listed, ["temp", "ci"], "tokens are listed newest first");

    store.token_used(created.id, now + hour).await.unwrap();
    let used = store
        .token_by_hash(&hash(ci_secret.expose()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used.last_used_at, Some(now + hour));

    // Revoking: the token is no longer found, its name is free again.
    let revoked = store
        .revoke_token("ci", now + hour)
        .await
        .unwrap()
        .expect("ci is revoked");
    assert_eq!(revoked.revoked_at, Some(now + hour));
    assert_eq!(
        store
            .token_by_hash(&hash(ci_secret.expose()))
            .await
            .unwrap(),
        None,
        "a revoked token is not found"
    );
    assert_eq!(store.revoke_token("ci", now + hour).await.unwrap(), None);
    assert_eq!(store.revoke_token("nobody", now).await.unwrap(), None);
    assert!(
        store.has_active_tokens(now).await.unwrap(),
        "temp is active"
    );
    assert!(
        !store.has_active_tokens(now + hour).await.unwrap(),
        "temp has expired and ci is revoked"
    );
    let renewed = store.create_token(again).await.unwrap();
    assert_eq!(renewed.right, TokenRight::Read);
    assert!(
        store
            .token_by_hash(&hash(temp_secret.expose()))
            .await
            .unwrap()
            .is_some()
    );
    let all = store.tokens().await.unwrap();
    assert_eq!(all.len(), 3, "revoked tokens stay listed: {all:?}");
    assert_eq!(
        all.iter().filter(|t| t.revoked_at.is_some()).count(),
        1,
        "{all:?}"
    );

    // Regression: an expired token's name stayed taken until it was
    // revoked. Before it expires, the name is still taken.
    let half = SignedDuration::from_mins(30);
    let (early, _) = generate("temp", TokenRight::Read, None, now + half).unwrap();
    match store.create_token(early).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("\"temp\""), "{message}"),
        other => panic!("temp has not expired: its name must conflict, got {other:?}"),
    }
    let temp_found = || async {
        store
            .token_by_hash(&hash(temp_secret.expose()))
            .await
            .unwrap()
    };
    assert!(
        temp_found().await.is_some(),
        "a refused create revokes nothing"
    );

    // Once it has expired, a new token takes the name and the expired one
    // is revoked, in one transaction: when the new one is refused (here
    // for a hash in use), the expired one is left as it was.
    let (late, late_secret) = generate("temp", TokenRight::Launch, None, now + hour).unwrap();
    let clash = NewToken {
        hash: hash(ci_secret.expose()),
        ..late.clone()
    };
    assert!(
        matches!(
            store.create_token(clash).await,
            Err(StoreError::Conflict(_))
        ),
        "a hash in use conflicts"
    );
    assert!(
        temp_found().await.is_some(),
        "the expired token is not revoked when the new one is refused"
    );
    let late = store.create_token(late).await.unwrap();
    assert_eq!(
        (late.name.as_str(), late.right),
        ("temp", TokenRight::Launch)
    );
    assert_eq!(temp_found().await, None, "the expired token is revoked");
    let old = store
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == temp.id)
        .expect("the expired token stays listed");
    assert_eq!(
        old.revoked_at,
        Some(now + hour),
        "revoked when the name was taken"
    );
    let found = store
        .token_by_hash(&hash(late_secret.expose()))
        .await
        .unwrap()
        .expect("the new token is found by hash");
    assert_eq!(found.id, late.id);
}

/// `release_memory`, called while reads are under way and between writes,
/// changes nothing a read returns and leaves the store usable.
pub async fn release_memory_loses_nothing(store: Arc<dyn Store>) {
    let mut plan = RunPlan::new();
    for i in 0..4 {
        plan = plan.step("s", Some(&format!("p{i}")), &[]);
    }
    let run = plan.create(&*store).await;
    let w = worker("w1");
    let done = claim(&*store, &w, Some(run.id), 2).await;
    complete_all(&*store, &w, &done).await;
    let before = store.step_counts(run.id).await.must("step_counts");
    let events = store.events(run.id, None, 100).await.must("events").len();

    for _ in 0..5 {
        let reads = (0..8).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let counts = store.step_counts(run.id).await.must("step_counts");
                let events = store.events(run.id, None, 100).await.must("events");
                (counts, events.len())
            })
        });
        let reads: Vec<_> = reads.collect();
        store.release_memory().await;
        for read in reads {
            let (counts, seen) = read.await.expect("a reader task panicked");
            assert_eq!(counts, before, "a read beside release_memory");
            assert_eq!(seen, events, "events read beside release_memory");
        }
    }
    store.release_memory().await;
    store.release_memory().await;

    // Writes and reads go on after it.
    let rest = claim(&*store, &w, Some(run.id), 2).await;
    assert_eq!(rest.len(), 2, "the two steps left are claimed");
    complete_all(&*store, &w, &rest).await;
    store.release_memory().await;
    let after = store.step_counts(run.id).await.must("step_counts");
    assert_eq!(after.completed, 4, "every step completed: {after:?}");
}
