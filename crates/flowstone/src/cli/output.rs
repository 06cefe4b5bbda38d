//! What the CLI prints: aligned text for people, or the typed results as JSON
//! (`--json`) for scripts. Text goes to stdout; progress and errors to stderr.

use std::fmt::Write as _;

use flowstone_core::query::{AssetStatus, ImpactEntry, Lineage, PartitionState};
use flowstone_core::store::{
    DEFAULT_QUEUE, EventRecord, Lease, MaterializationRecord, RunRecord, RunState, StepRecord,
    WorkerRecord,
};
use flowstone_core::token::{Secret, TokenRecord};
use flowstone_core::{AssetPartition, Definitions, Plan, RunId, RunOutcome};
use flowstone_partitions::PartitionsDef;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

/// Writes to stdout; a reader that went away (`| head`) ends the process
/// quietly instead of panicking, and any other write error is reported.
macro_rules! out {
    ($($arg:tt)*) => { write_stdout(format_args!($($arg)*), false) };
}

macro_rules! outln {
    ($($arg:tt)*) => { write_stdout(format_args!($($arg)*), true) };
}

fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;

    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| {
        if newline {
            stdout.write_all(b"\n")?;
        }
        Ok(())
    });
    match written {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            eprintln!("error: cannot write to stdout: {err}");
            std::process::exit(i32::from(super::EXIT_FAILED));
        }
    }
}

pub(crate) struct Printer {
    json: bool,
}

impl Printer {
    pub(crate) fn new(json: bool) -> Self {
        Printer { json }
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }

    fn emit(&self, value: &impl Serialize) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => outln!("{text}"),
            Err(err) => eprintln!("error: cannot print JSON: {err}"),
        }
    }

    pub(crate) fn assets(&self, defs: &Definitions) {
        if self.json {
            let assets: Vec<_> = defs
                .assets()
                .map(|a| {
                    json!({
                        "key": a.key,
                        "description": a.description,
                        "group": a.group,
                        "partitions": a.partitions.as_ref().map(|p| p.describe()),
                        "deps": a.deps.iter().map(|d| json!({
                            "key": d.key,
                            "input": d.name,
                            "mapping": defs.mapping(a, &d.key).map(|m| m.describe()),
                        })).collect::<Vec<_>>(),
                        "io_manager": a.io_manager,
                        "queue": a.queue,
                        "queue_limit": defs.queue_limits().get(&a.queue),
                        "code_version": a.code_version,
                        "retry_max_attempts": a.retry.max_attempts,
                        "tags": a.tags,
                        "owners": a.owners,
                    })
                })
                .collect();
            self.emit(&assets);
            return;
        }
        // A QUEUE column once any asset waits in a queue of its own.
        let queues = defs.queues().iter().any(|q| *q != DEFAULT_QUEUE);
        let mut header = vec![
            "ASSET".to_owned(),
            "PARTITIONS".to_owned(),
            "READS".to_owned(),
            "CODE VERSION".to_owned(),
        ];
        if queues {
            header.push("QUEUE".to_owned());
        }
        let mut rows = vec![header];
        for a in defs.assets() {
            let deps: Vec<String> = a
                .deps
                .iter()
                .map(|d| {
                    let mapping = defs
                        .mapping(a, &d.key)
                        .map(|m| m.describe())
                        .unwrap_or_default();
                    if mapping.is_empty() || mapping == "identity" {
                        d.key.to_string()
                    } else {
                        format!("{} ({mapping})", d.key)
                    }
                })
                .collect();
            rows.push(vec![
                a.key.to_string(),
                a.partitions
                    .as_ref()
                    .map_or("-".to_owned(), |p| p.describe()),
                if deps.is_empty() {
                    "-".to_owned()
                } else {
                    deps.join(", ")
                },
                a.code_version.clone(),
            ]);
            if queues {
                let queue = match defs.queue_limits().get(&a.queue) {
                    Some(limit) => format!("{} (limit {limit})", a.queue),
                    None => a.queue.clone(),
                };
                rows.last_mut().expect("just pushed").push(queue);
            }
        }
        out!("{}", table(&rows));
    }

    pub(crate) fn nothing_to_do(&self, plan: &Plan, store: &str) {
        let already = plan.already_materialized;
        let queued = plan.already_queued;
        if self.json {
            self.emit(&json!({
                "run": null,
                "already_materialized": already,
                "already_queued": queued,
                "store": store,
            }));
            return;
        }
        if queued == 0 {
            outln!(
                "nothing to do: all {already} selected asset partitions are already materialized \
                 (use --force to run them again)\nstore: {store}"
            );
        } else {
            let materialized = if already > 0 {
                format!("{already} selected asset partitions are already materialized and ")
            } else {
                "all ".to_owned()
            };
            outln!(
                "nothing to do: {materialized}{queued} are queued or running in other runs \
                 (e.g. {}); `runs resume RUN` continues an interrupted one, `runs cancel RUN` \
                 frees its partitions\nstore: {store}",
                plan.already_queued_examples.join(", ")
            );
        }
    }

    pub(crate) fn run_started(&self, run: &RunRecord, plan: &Plan) {
        if self.json {
            return;
        }
        let mut notes = String::new();
        if plan.already_materialized > 0 {
            let _ = write!(
                notes,
                ", {} already materialized",
                plan.already_materialized
            );
        }
        let steps = run.steps.total();
        let noun = if steps == 1 { "step" } else { "steps" };
        eprintln!(
            "run {} started: {} ({steps} {noun}{notes})",
            run.id, run.description
        );
        if plan.already_queued > 0 {
            eprintln!(
                "left out {} asset partition(s) already queued or running in other runs, e.g. {}",
                plan.already_queued,
                plan.already_queued_examples.join(", ")
            );
        }
        if plan.left_out > 0 {
            eprintln!(
                "left out {} asset partition(s) whose upstream is not materialized, e.g. {}; \
                 add --with-upstream to run that upstream too",
                plan.left_out,
                plan.left_out_examples.join(", ")
            );
        }
    }

    pub(crate) fn run_finished(
        &self,
        outcome: &RunOutcome,
        already: u64,
        left_out: u64,
        store: &str,
    ) {
        if self.json {
            self.emit(&json!({
                "run": outcome.run,
                "recorded": outcome.recorded,
                "interrupted": outcome.interrupted,
                "elapsed_ms": outcome.elapsed_ms,
                "already_materialized": already,
                "left_out_upstream_missing": left_out,
                "store": store,
            }));
            return;
        }
        let run = &outcome.run;
        let steps = &run.steps;
        let seconds = outcome.elapsed_ms as f64 / 1000.0;
        outln!("run {} {}", run.id, run.state);
        // The run's own count: workers elsewhere (or an earlier attempt at
        // the run, before a resume) may have recorded some of them.
        let here = if outcome.recorded == steps.completed {
            String::new()
        } else {
            format!(" ({} by this process)", outcome.recorded)
        };
        outln!(
            "  materializations recorded: {}{here}    failed: {}    skipped: {}    left: {}",
            steps.completed,
            steps.failed,
            steps.skipped,
            steps.live()
        );
        outln!("  time: {seconds:.2} s    store: {store}");
        if left_out > 0 {
            outln!("  left out, upstream not materialized: {left_out} (see above)");
        }
        if outcome.interrupted && steps.live() > 0 {
            outln!("  continue with: runs resume {}", run.id);
        }
        if steps.failed > 0 {
            outln!("  see the errors with: runs show {}", run.id);
        }
    }

    pub(crate) fn status(&self, status: &AssetStatus, def: Option<&PartitionsDef>, all: bool) {
        if self.json {
            self.emit(status);
            return;
        }
        let c = &status.counts;
        outln!(
            "{}  ({})",
            status.asset,
            status.partitions_def.as_deref().unwrap_or("unpartitioned")
        );
        outln!(
            "  materialized {}  stale {}  failed {}  missing {}  total {}",
            c.materialized,
            c.stale,
            c.failed,
            c.missing,
            c.total
        );
        let mut rows = vec![vec![
            "PARTITION".into(),
            "STATE".into(),
            "SINCE".into(),
            "WHY".into(),
        ]];
        let mut known = std::collections::HashMap::new();
        for p in &status.partitions {
            known.insert(p.partition.as_ref().map(|k| k.as_str().to_owned()), p);
        }
        let now = Timestamp::now();
        let listed: Vec<Option<String>> = match def {
            Some(def) if def.len(now) <= 20_000 => def
                .keys(0..def.len(now), now)
                .map(|k| Some(k.as_str().to_owned()))
                .collect(),
            Some(_) => status
                .partitions
                .iter()
                .map(|p| p.partition.as_ref().map(|k| k.as_str().to_owned()))
                .collect(),
            None => vec![None],
        };
        let mut hidden = 0;
        for key in listed {
            let entry = known.get(&key);
            let state = entry.map_or(PartitionState::Missing, |p| p.state.clone());
            if !all && state == PartitionState::Materialized {
                hidden += 1;
                continue;
            }
            let why = match &state {
                PartitionState::Stale(why) | PartitionState::Failed(why) => why.clone(),
                _ => String::new(),
            };
            // SINCE is when the partition's value was made; a failed
            // partition's newer failure has no value, so it shows none.
            let since = match state {
                PartitionState::Failed(_) => None,
                _ => entry.and_then(|p| p.materialized_at),
            };
            rows.push(vec![
                key.unwrap_or_else(|| "-".into()),
                state.name().to_owned(),
                since.map(short_time).unwrap_or_default(),
                why,
            ]);
        }
        if rows.len() > 1 {
            out!("{}", table(&rows));
        }
        if hidden > 0 {
            outln!("  ({hidden} materialized partition(s) not listed; --all lists them)");
        }
    }

    pub(crate) fn status_summary(&self, all: &[AssetStatus]) {
        if self.json {
            self.emit(&all);
            return;
        }
        let mut rows = vec![
            [
                "ASSET",
                "PARTITIONS",
                "MATERIALIZED",
                "STALE",
                "FAILED",
                "MISSING",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for s in all {
            let c = &s.counts;
            rows.push(vec![
                s.asset.to_string(),
                s.partitions_def.clone().unwrap_or_else(|| "-".into()),
                c.materialized.to_string(),
                c.stale.to_string(),
                c.failed.to_string(),
                c.missing.to_string(),
            ]);
        }
        out!("{}", table(&rows));
    }

    pub(crate) fn lineage(&self, lineage: &Lineage) {
        if self.json {
            self.emit(lineage);
            return;
        }
        let root = &lineage.root;
        let verb = match lineage.direction {
            flowstone_core::Direction::Upstream => "was made from",
            flowstone_core::Direction::Downstream => "was read by",
        };
        outln!(
            "{} (materialization #{}, run {}) {verb}:",
            root.target,
            root.id,
            root.run_id
        );
        if lineage.nodes.is_empty() {
            outln!("  nothing");
            return;
        }
        let mut rows = vec![
            [
                "DEPTH",
                "ASSET PARTITION",
                "MATERIALIZATION",
                "AT",
                "DATA VERSION",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for (depth, m) in &lineage.nodes {
            rows.push(vec![
                depth.to_string(),
                m.target.to_string(),
                format!("#{}", m.id),
                short_time(m.finished_at),
                m.data_version.clone(),
            ]);
        }
        out!("{}", table(&rows));
    }

    pub(crate) fn impact(&self, target: &AssetPartition, impact: &[ImpactEntry]) {
        if self.json {
            self.emit(&json!({ "changed": target, "impacted": impact }));
            return;
        }
        if impact.is_empty() {
            outln!("nothing downstream reads {target}");
            return;
        }
        let total: usize = impact.iter().map(|e| e.partitions.len().max(1)).sum();
        outln!("if {target} changes, {total} asset partitions go stale:");
        for entry in impact {
            let parts = match entry.partitions.as_slice() {
                [] => String::new(),
                [one] => format!(" [{one}]"),
                many if many.len() <= 6 => format!(
                    " [{}]",
                    many.iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                many => format!(
                    " [{} partitions: {} .. {}]",
                    many.len(),
                    many[0],
                    many[many.len() - 1]
                ),
            };
            outln!("  {}{parts}", entry.asset);
        }
    }

    /// `orphaned`: no live worker holds the runs that say `running`.
    pub(crate) fn workers(&self, workers: &[WorkerRecord], leader: Option<&Lease>) {
        if self.json {
            self.emit(&json!({ "workers": workers, "leader": leader }));
            return;
        }
        match leader.filter(|lease| lease.expires_at > Timestamp::now()) {
            Some(lease) => outln!(
                "leader: {} (term {}, lease until {})",
                lease.holder,
                lease.term,
                short_time(lease.expires_at)
            ),
            None => outln!("leader: none (a worker, daemon or run takes the lease when it starts)"),
        }
        if workers.is_empty() {
            outln!("no workers registered");
            return;
        }
        let mut rows = vec![
            [
                "WORKER",
                "HOST",
                "PID",
                "STARTED",
                "LAST HEARTBEAT",
                "SILENT FOR",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let now = Timestamp::now();
        for w in workers {
            // Heartbeats go out every quarter of a worker's lease; one silent
            // for longer than a minute (the default lease) has likely died,
            // and the leader rescues its steps once their leases run out.
            let silent = now.duration_since(w.heartbeat_at);
            let silent_for = if silent.as_secs() >= 60 {
                format!(
                    "{:#} (gone?)",
                    silent.round(jiff::Unit::Second).unwrap_or(silent)
                )
            } else {
                format!("{}s", silent.as_secs().max(0))
            };
            rows.push(vec![
                w.id.to_string(),
                w.host.clone(),
                w.pid.to_string(),
                short_time(w.started_at),
                short_time(w.heartbeat_at),
                silent_for,
            ]);
        }
        out!("{}", table(&rows));
    }

    pub(crate) fn runs(&self, runs: &[RunRecord], orphaned: bool) {
        if self.json {
            self.emit(&runs);
            return;
        }
        if runs.is_empty() {
            outln!("no runs yet");
            return;
        }
        let mut rows = vec![
            [
                "RUN",
                "STATE",
                "STARTED",
                "BY",
                "DONE",
                "FAILED+SKIPPED",
                "WHAT",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let mut stranded = 0;
        for r in runs {
            let state = if orphaned && r.state == RunState::Running {
                stranded += 1;
                "running, no live worker".to_owned()
            } else {
                r.state.to_string()
            };
            rows.push(vec![
                r.id.to_string(),
                state,
                short_time(r.created_at),
                format!("{} ({})", r.user, r.trigger),
                format!("{}/{}", r.steps.completed, r.steps.total()),
                (r.steps.failed + r.steps.skipped).to_string(),
                r.description.clone(),
            ]);
        }
        out!("{}", table(&rows));
        if stranded > 0 {
            outln!(
                "(a run with no live worker was left by a process that stopped: runs resume RUN)"
            );
        }
    }

    pub(crate) fn run(&self, run: &RunRecord, steps: &[StepRecord]) {
        if self.json {
            self.emit(&json!({ "run": run, "steps": steps }));
            return;
        }
        let c = &run.steps;
        outln!("run {} {}", run.id, run.state);
        outln!("  {}", run.description);
        outln!(
            "  started {} by {} ({})",
            short_time(run.created_at),
            run.user,
            run.trigger
        );
        if let Some(at) = run.finished_at {
            outln!("  finished {}", short_time(at));
        }
        outln!(
            "  steps: {} completed, {} failed, {} skipped, {} running, {} queued, {} cancelled",
            c.completed,
            c.failed,
            c.skipped,
            c.running,
            c.pending + c.available + c.retryable,
            c.cancelled
        );
        let problems: Vec<&StepRecord> = steps.iter().filter(|s| s.error.is_some()).collect();
        if !problems.is_empty() {
            let mut rows = vec![
                ["STEP", "ASSET PARTITION", "STATE", "ATTEMPT", "ERROR"]
                    .map(String::from)
                    .to_vec(),
            ];
            for s in problems.iter().take(50) {
                rows.push(vec![
                    s.id.to_string(),
                    s.target.to_string(),
                    s.state.to_string(),
                    s.attempt.to_string(),
                    s.error.clone().unwrap_or_default(),
                ]);
            }
            out!("{}", table(&rows));
            if problems.len() > 50 {
                outln!("  ... and {} more (--json lists all)", problems.len() - 50);
            }
        }
    }

    pub(crate) fn cancelled(&self, run: RunId, changed: bool) {
        if self.json {
            self.emit(&json!({ "run": run, "cancelled": changed }));
        } else if changed {
            outln!("run {run} cancelled; running steps finish, the rest will not run");
        } else {
            outln!("run {run} had already ended; nothing to cancel");
        }
    }

    pub(crate) fn events(&self, events: &[EventRecord], limit: u32) {
        if self.json {
            self.emit(&events);
            return;
        }
        for e in events {
            let step = e.step_id.map(|s| format!(" step {s}")).unwrap_or_default();
            outln!(
                "{} {:5} {}{step}: {}",
                short_time(e.at),
                e.level,
                e.kind,
                e.message
            );
        }
        if events.len() as u64 >= u64::from(limit) {
            eprintln!("(the first {limit} events; --limit N shows more)");
        }
    }

    pub(crate) fn value(&self, record: &MaterializationRecord, value: &serde_json::Value) {
        if self.json {
            self.emit(&json!({ "materialization": record, "value": value }));
            return;
        }
        eprintln!(
            "{} (materialization #{}, run {}, {})",
            record.target,
            record.id,
            record.run_id,
            short_time(record.finished_at)
        );
        self.emit(value);
    }
}

impl Printer {
    /// The secret alone on stdout (`TOKEN=$(... tokens create ...)` takes
    /// it), the rest on stderr.
    pub(crate) fn token_created(&self, token: &TokenRecord, secret: &Secret) {
        if self.json {
            self.emit(&json!({ "token": token, "secret": secret.expose() }));
            return;
        }
        let expires = token.expires_at.map_or_else(
            || "does not expire".to_owned(),
            |at| format!("expires {}", short_time(at)),
        );
        eprintln!(
            "created token {} with the {} right ({expires}); its secret follows, shown only \
             this once.\nSend it as `Authorization: Bearer SECRET`, or sign in with it on the \
             dashboard. From now on, `serve` refuses requests without a valid token.",
            token.name, token.right
        );
        outln!("{}", secret.expose());
    }

    pub(crate) fn tokens(&self, tokens: &[TokenRecord], now: Timestamp) {
        if self.json {
            self.emit(&tokens);
            return;
        }
        if tokens.is_empty() {
            outln!(
                "no tokens; `tokens create NAME --right read|launch` makes one (until one is \
                 made, `serve` accepts every request from this machine)"
            );
            return;
        }
        let mut rows = vec![
            [
                "NAME",
                "RIGHT",
                "SECRET STARTS",
                "CREATED",
                "LAST USED",
                "STATE",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for t in tokens {
            let state = match (t.revoked_at, t.expires_at) {
                (Some(at), _) => format!("revoked {}", short_time(at)),
                (None, Some(at)) if at <= now => format!("expired {}", short_time(at)),
                (None, Some(at)) => format!("active, expires {}", short_time(at)),
                (None, None) => "active".to_owned(),
            };
            rows.push(vec![
                t.name.clone(),
                t.right.to_string(),
                format!("{}...", t.prefix),
                short_time(t.created_at),
                t.last_used_at
                    .map_or_else(|| "never".to_owned(), short_time),
                state,
            ]);
        }
        out!("{}", table(&rows));
    }

    pub(crate) fn token_revoked(&self, token: &TokenRecord) {
        if self.json {
            self.emit(&json!({ "revoked": token }));
        } else {
            outln!(
                "token {} ({}...) revoked; servers sharing this store refuse it from now on",
                token.name,
                token.prefix
            );
        }
    }
}

/// A timestamp to the second, in UTC.
fn short_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
