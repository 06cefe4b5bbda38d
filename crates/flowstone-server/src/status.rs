//! Asset status for the API and the pages, computed once and then kept up
//! to date from the event log.
//!
//! Computing the status of every asset reads every recorded partition and its
//! inputs (about 1 s for the 10,277 flights partitions in a release build),
//! which is too slow to do per request or per event. The cache keeps the last
//! result with the id of the newest event in the store when it was made. A
//! request first reads the events after that id (one indexed read); every
//! change of a partition's status appends an event naming it (`materialized`,
//! `step_failed`), so the cache updates only those partitions and what reads
//! them, transitively (their impact), and is never older than the record at
//! the time of the request. An event it cannot place (a failure recorded
//! without its asset partition), or too many of them at once, makes it
//! compute everything again.
//!
//! Partitions that were never materialized are not stored anywhere: pages of
//! partitions and ranges of states are computed from the partition
//! definition (index arithmetic) and the few records that exist, so an asset
//! with a million partitions answers without making a million rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use flowstone_core::query::{AssetStatus, PartitionStatus, StatusCounts};
use flowstone_core::store::{EventKind, EventRecord};
use flowstone_core::{
    AssetKey, AssetPartition, Definitions, Engine, EngineError, EventId, MaterializationId,
    PartitionKey, PartitionState,
};
use flowstone_partitions::PartitionsDef;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::Mutex;

/// Above this many changed asset partitions in one update, computing
/// everything again is about as fast, and simpler.
const MAX_CHANGED: usize = 5_000;

/// The status of every asset, with each asset's records indexed.
pub struct Snapshot {
    /// The newest event id when this was computed.
    pub as_of: Option<EventId>,
    /// Shared between snapshots: an update copies only the assets it changes.
    pub assets: HashMap<AssetKey, Arc<AssetView>>,
}

/// One asset's status: its counts and its recorded partitions, in
/// partition order.
///
/// A view lives as long as the server, so it is kept compact: a record
/// holds no allocation of its own (its key and reason are spans of one
/// text), and a view is a handful of allocations whatever its size.
/// Small allocations made one by one while the status is computed would
/// be scattered among the computation's freed memory and keep its pages
/// from going back to the system (about 5 MiB on the flights store).
pub struct AssetView {
    pub counts: StatusCounts,
    /// By partition index; the records with no index (an unpartitioned
    /// asset's, or a key the definition no longer has) come first.
    records: Vec<Record>,
    /// Where the records with an index start.
    indexed_from: usize,
    /// Positions in `records` of the records with a key, by key.
    by_key: Vec<usize>,
    /// Every key and reason, end to end.
    text: String,
}

/// A partition's state, without its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Materialized,
    Stale,
    Failed,
    Missing,
}

impl Kind {
    fn of(state: &PartitionState) -> (Kind, &str) {
        match state {
            PartitionState::Materialized => (Kind::Materialized, ""),
            PartitionState::Stale(why) => (Kind::Stale, why),
            PartitionState::Failed(why) => (Kind::Failed, why),
            PartitionState::Missing => (Kind::Missing, ""),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Materialized => "materialized",
            Kind::Stale => "stale",
            Kind::Failed => "failed",
            Kind::Missing => "missing",
        }
    }
}

/// One recorded partition; `key` and `reason` are spans of the view's text.
#[derive(Clone, Debug)]
struct Record {
    index: Option<u64>,
    key: Option<std::ops::Range<usize>>,
    kind: Kind,
    reason: std::ops::Range<usize>,
    latest: Option<MaterializationId>,
    materialized_at: Option<Timestamp>,
}

impl AssetView {
    fn new(status: AssetStatus, def: Option<&PartitionsDef>, now: Timestamp) -> AssetView {
        let mut view = ViewBuilder::default();
        for p in &status.partitions {
            let key = p.partition.as_ref().map(|k| k.as_str());
            let index = key.and_then(|k| def?.index_of(k, now).ok());
            view.push_status(index, p);
        }
        view.finish(status.counts)
    }

    fn key(&self, record: &Record) -> Option<&str> {
        record.key.clone().map(|span| &self.text[span])
    }

    fn reason(&self, record: &Record) -> &str {
        &self.text[record.reason.clone()]
    }

    /// The record of one partition (`None` for an unpartitioned asset's
    /// only one).
    fn record(&self, key: Option<&str>) -> Option<&Record> {
        match key {
            Some(key) => self
                .by_key
                .binary_search_by(|&at| self.key(&self.records[at]).unwrap_or("").cmp(key))
                .ok()
                .map(|found| &self.records[self.by_key[found]]),
            None => self.records.iter().find(|r| r.key.is_none()),
        }
    }

    /// The records with a partition index, in index order.
    fn indexed(&self) -> &[Record] {
        &self.records[self.indexed_from..]
    }

    /// The newest materialization of any partition: its partition, id and
    /// time.
    pub fn latest(&self) -> Option<(Option<&str>, MaterializationId, Timestamp)> {
        self.records
            .iter()
            .filter_map(|r| Some((r, r.latest?, r.materialized_at?)))
            .max_by_key(|(_, _, at)| *at)
            .map(|(r, id, at)| (self.key(r), id, at))
    }

    /// The records as the engine reports them.
    #[cfg(test)]
    fn partitions(&self) -> Vec<PartitionStatus> {
        self.records
            .iter()
            .map(|r| {
                let reason = self.reason(r).to_owned();
                PartitionStatus {
                    partition: self.key(r).map(PartitionKey::from),
                    state: match r.kind {
                        Kind::Materialized => PartitionState::Materialized,
                        Kind::Stale => PartitionState::Stale(reason),
                        Kind::Failed => PartitionState::Failed(reason),
                        Kind::Missing => PartitionState::Missing,
                    },
                    latest: r.latest,
                    materialized_at: r.materialized_at,
                }
            })
            .collect()
    }
}

/// Collects records in any order and lays them out as a view.
#[derive(Default)]
struct ViewBuilder {
    records: Vec<Record>,
    text: String,
}

impl ViewBuilder {
    fn push_status(&mut self, index: Option<u64>, p: &PartitionStatus) {
        let (kind, reason) = Kind::of(&p.state);
        let key = p.partition.as_ref().map(|k| k.as_str());
        self.push(index, key, kind, reason, p.latest, p.materialized_at);
    }

    /// A record of another view, its text copied.
    fn push_record(&mut self, from: &AssetView, r: &Record) {
        self.push(
            r.index,
            from.key(r),
            r.kind,
            from.reason(r),
            r.latest,
            r.materialized_at,
        );
    }

    fn push(
        &mut self,
        index: Option<u64>,
        key: Option<&str>,
        kind: Kind,
        reason: &str,
        latest: Option<MaterializationId>,
        materialized_at: Option<Timestamp>,
    ) {
        let mut span = |s: &str| {
            let start = self.text.len();
            self.text.push_str(s);
            start..self.text.len()
        };
        let key = key.map(&mut span);
        let reason = span(reason);
        self.records.push(Record {
            index,
            key,
            kind,
            reason,
            latest,
            materialized_at,
        });
    }

    /// The counts of the recorded states, with `total` partitions in all.
    fn counts(&self, total: u64) -> StatusCounts {
        let mut counts = StatusCounts {
            total,
            ..Default::default()
        };
        for r in &self.records {
            match r.kind {
                Kind::Materialized => counts.materialized += 1,
                Kind::Stale => counts.stale += 1,
                Kind::Failed => counts.failed += 1,
                Kind::Missing => {}
            }
        }
        counts.missing = total.saturating_sub(counts.materialized + counts.stale + counts.failed);
        counts
    }

    fn finish(self, counts: StatusCounts) -> AssetView {
        let ViewBuilder {
            mut records,
            mut text,
        } = self;
        // Stable: records with no index keep the order they came in.
        records.sort_by_key(|r| r.index);
        records.shrink_to_fit();
        text.shrink_to_fit();
        let indexed_from = records.partition_point(|r| r.index.is_none());
        let mut by_key: Vec<usize> = (0..records.len())
            .filter(|&at| records[at].key.is_some())
            .collect();
        let key = |at: usize| records[at].key.clone().map_or("", |span| &text[span]);
        by_key.sort_by(|&a, &b| key(a).cmp(key(b)));
        AssetView {
            counts,
            records,
            indexed_from,
            by_key,
            text,
        }
    }
}

/// What the events since a snapshot say.
struct Changes {
    newest: Option<EventId>,
    /// The partitions whose status changed, in event order: `None` for a
    /// materialization, the error for a failure; `None` when an event could
    /// not be placed (or there are too many), so everything is computed.
    changed: Option<Vec<(AssetPartition, Option<String>)>>,
}

#[derive(Default)]
pub struct StatusCache {
    current: Mutex<Option<Arc<Snapshot>>>,
}

impl StatusCache {
    /// The status as of now: the cached one if no event came since, else
    /// the cached one with what changed since updated.
    pub async fn snapshot(&self, engine: &Engine) -> Result<Arc<Snapshot>, EngineError> {
        // One computation at a time; the others wait for it and share it.
        let mut current = self.current.lock().await;
        let started = std::time::Instant::now();
        let Some(old) = current.clone() else {
            // Where the log stands before reading, so that what is appended
            // while the status is computed is applied by the next request.
            let position = engine.store().events_position().await?;
            let snapshot = Arc::new(compute(engine, position).await?);
            tracing::debug!(target: "flowstone::server",
                            ms = started.elapsed().as_secs_f64() * 1e3, "status computed");
            *current = Some(snapshot.clone());
            return Ok(snapshot);
        };
        let changes = read_changes(engine, old.as_of).await?;
        if changes.newest == old.as_of {
            return Ok(old);
        }
        let snapshot = match changes.changed {
            Some(changed) => {
                let count = changed.len();
                let snapshot = update(engine, &old, changed, changes.newest).await?;
                tracing::debug!(target: "flowstone::server", changed = count,
                                ms = started.elapsed().as_secs_f64() * 1e3, "status updated");
                snapshot
            }
            None => {
                let snapshot = compute(engine, changes.newest).await?;
                tracing::debug!(target: "flowstone::server",
                                ms = started.elapsed().as_secs_f64() * 1e3, "status computed");
                snapshot
            }
        };
        let snapshot = Arc::new(snapshot);
        *current = Some(snapshot.clone());
        drop(old);
        Ok(snapshot)
    }
}

/// The events after `after`: the newest id, and the asset partitions whose
/// status they change.
async fn read_changes(engine: &Engine, after: Option<EventId>) -> Result<Changes, EngineError> {
    const PAGE: usize = 10_000;
    let mut changes = Changes {
        newest: after,
        changed: Some(Vec::new()),
    };
    loop {
        let page = engine
            .store()
            .events_since(changes.newest, PAGE as u32)
            .await?;
        let Some(last) = page.last() else {
            return Ok(changes);
        };
        changes.newest = Some(last.id);
        if let Some(changed) = &mut changes.changed {
            for event in &page {
                match status_change(event) {
                    Ok(Some(change)) => changed.push(change),
                    Ok(None) => {}
                    Err(()) => {
                        changes.changed = None;
                        break;
                    }
                }
            }
            if changes
                .changed
                .as_ref()
                .is_some_and(|c| c.len() > MAX_CHANGED)
            {
                changes.changed = None;
            }
        }
        if page.len() < PAGE {
            return Ok(changes);
        }
    }
}

/// The asset partition an event changes the status of, if any; `Err` for
/// one that changes a status without naming the partition.
fn status_change(event: &EventRecord) -> Result<Option<(AssetPartition, Option<String>)>, ()> {
    let failed = match event.kind {
        EventKind::Materialized => false,
        EventKind::StepFailed => true,
        _ => return Ok(None),
    };
    let data = &event.data;
    let asset = data["asset"]
        .as_str()
        .and_then(|a| AssetKey::new(a).ok())
        .ok_or(())?;
    let partition = match &data["partition"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(p) => Some(PartitionKey::from(p.as_str())),
        _ => return Err(()),
    };
    let error = if failed {
        Some(data["error"].as_str().ok_or(())?.to_owned())
    } else {
        None
    };
    Ok(Some((AssetPartition::new(asset, partition), error)))
}

async fn compute(engine: &Engine, as_of: Option<EventId>) -> Result<Snapshot, EngineError> {
    let now = Timestamp::now();
    let mut assets = HashMap::new();
    for status in engine.statuses().await? {
        let def = engine
            .definitions()
            .asset(&status.asset)
            .expect("statuses are of defined assets");
        let key = status.asset.clone();
        assets.insert(
            key,
            Arc::new(AssetView::new(status, def.partitions.as_ref(), now)),
        );
    }
    Ok(Snapshot { as_of, assets })
}

/// Partitions to assess again, by the rank of their asset in the
/// topological order.
type Affected = BTreeMap<usize, (AssetKey, BTreeSet<Option<PartitionKey>>)>;

/// Which partitions of which assets to assess again: the changed ones and
/// everything that reads them, by asset in topological order.
fn affected(
    defs: &Definitions,
    changed: &HashMap<AssetPartition, Option<String>>,
    now: Timestamp,
) -> Result<Affected, EngineError> {
    let mut out = Affected::new();
    let mut targets: Vec<(usize, &AssetPartition)> = changed
        .keys()
        .filter_map(|t| defs.rank(&t.asset).map(|rank| (rank, t)))
        .collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    for (rank, target) in targets {
        let entry = out
            .entry(rank)
            .or_insert_with(|| (target.asset.clone(), BTreeSet::new()));
        // Reached from an earlier change: its impact is in already.
        if !entry.1.insert(target.partition.clone()) {
            continue;
        }
        for impact in flowstone_core::query::impact(defs, target, now)? {
            let Some(rank) = defs.rank(&impact.asset) else {
                continue;
            };
            let unpartitioned = defs
                .asset(&impact.asset)
                .is_some_and(|d| d.partitions.is_none());
            let entry = out
                .entry(rank)
                .or_insert_with(|| (impact.asset.clone(), BTreeSet::new()));
            if unpartitioned {
                entry.1.insert(None);
            } else {
                entry.1.extend(impact.partitions.into_iter().map(Some));
            }
        }
    }
    Ok(out)
}

/// `old` with the changed partitions and everything downstream of them
/// assessed again.
async fn update(
    engine: &Engine,
    old: &Snapshot,
    changes: Vec<(AssetPartition, Option<String>)>,
    as_of: Option<EventId>,
) -> Result<Snapshot, EngineError> {
    let defs = engine.definitions();
    let now = Timestamp::now();
    // The last event of each partition wins: a failure after a
    // materialization shows, a materialization after a failure clears it.
    let changed: HashMap<AssetPartition, Option<String>> = changes.into_iter().collect();
    let mut assets = old.assets.clone();

    for (_, (key, partitions)) in affected(defs, &changed, now)? {
        let Some(def) = defs.asset(&key) else {
            continue;
        };
        let before = assets.get(&key).cloned();
        let partitions: Vec<Option<PartitionKey>> = partitions.into_iter().collect();

        // A failure shows until a materialization newer than it: from the
        // events for the changed partitions, from the snapshot for the rest.
        let mut failed: HashMap<Option<PartitionKey>, String> = HashMap::new();
        for p in &partitions {
            let target = AssetPartition::new(key.clone(), p.clone());
            let error = match changed.get(&target) {
                Some(change) => change.clone(),
                None => before.as_ref().and_then(|v| {
                    let r = v.record(p.as_ref().map(|k| k.as_str()))?;
                    (r.kind == Kind::Failed).then(|| v.reason(r).to_owned())
                }),
            };
            if let Some(error) = error {
                failed.insert(p.clone(), error);
            }
        }

        // Upstream assets come first, so their entries are already new.
        let is_stale = |input: &AssetPartition| {
            assets
                .get(&input.asset)
                .and_then(|v| v.record(input.partition.as_ref().map(|k| k.as_str())))
                .is_some_and(|r| r.kind == Kind::Stale)
        };
        let fresh = engine
            .partition_statuses(def, &partitions, &failed, &is_stale)
            .await?;

        let view = merge(def, before.as_deref(), &partitions, fresh, now);
        assets.insert(key.clone(), Arc::new(view));
    }
    Ok(Snapshot { as_of, assets })
}

/// An asset's view with the `assessed` partitions replaced by `fresh`:
/// the other records keep their known index, so only the new ones have
/// their key parsed.
fn merge(
    def: &flowstone_core::AssetDef,
    before: Option<&AssetView>,
    assessed: &[Option<PartitionKey>],
    fresh: Vec<PartitionStatus>,
    now: Timestamp,
) -> AssetView {
    let assessed: std::collections::HashSet<Option<&str>> = assessed
        .iter()
        .map(|p| p.as_ref().map(|k| k.as_str()))
        .collect();
    let mut view = ViewBuilder::default();
    if let Some(before) = before {
        for r in &before.records {
            if !assessed.contains(&before.key(r)) {
                view.push_record(before, r);
            }
        }
    }
    for p in fresh
        .iter()
        .filter(|p| p.state != PartitionState::Missing || p.latest.is_some())
    {
        let index = p
            .partition
            .as_ref()
            .and_then(|key| def.partitions.as_ref()?.index_of(key.as_str(), now).ok());
        view.push_status(index, p);
    }
    let counts = view.counts(def.partitions.as_ref().map_or(1, |p| p.len(now)));
    view.finish(counts)
}

/// One partition as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionRow {
    pub index: u64,
    pub partition: String,
    pub state: &'static str,
    /// Why it is stale or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub latest: Option<i64>,
    pub materialized_at: Option<Timestamp>,
}

/// A run of consecutive partitions in one state.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StateRange {
    pub state: &'static str,
    pub from: String,
    pub to: String,
    pub from_index: u64,
    pub to_index: u64,
    pub count: u64,
}

impl AssetView {
    fn row(&self, index: u64, key: String) -> PartitionRow {
        match self.record(Some(&key)) {
            Some(r) => self.row_of(index, key, r),
            None => PartitionRow {
                index,
                partition: key,
                state: "missing",
                reason: None,
                latest: None,
                materialized_at: None,
            },
        }
    }

    /// The partitions with index in `offset..offset + limit`, every state.
    pub fn page(
        &self,
        def: &PartitionsDef,
        offset: u64,
        limit: u64,
        now: Timestamp,
    ) -> Vec<PartitionRow> {
        let end = offset.saturating_add(limit);
        def.keys(offset..end, now)
            .zip(offset..)
            .map(|(key, index)| self.row(index, key.as_str().to_owned()))
            .collect()
    }

    /// The partitions in `state`, skipping `offset` of them; missing ones
    /// are found in the gaps between records, never by listing all keys.
    pub fn page_in_state(
        &self,
        def: &PartitionsDef,
        state: &str,
        offset: u64,
        limit: u64,
        now: Timestamp,
    ) -> Vec<PartitionRow> {
        if state != "missing" {
            return self
                .indexed()
                .iter()
                .filter(|r| r.kind.name() == state)
                .skip(offset as usize)
                .take(limit as usize)
                .filter_map(|r| {
                    let key = self.key(r).unwrap_or("").to_owned();
                    Some(self.row_of(r.index?, key, r))
                })
                .collect();
        }
        let mut rows = Vec::new();
        let mut skip = offset;
        for gap in self.gaps(def.len(now)) {
            let len = gap.end - gap.start;
            if skip >= len {
                skip -= len;
                continue;
            }
            let start = gap.start + skip;
            skip = 0;
            let want = limit - rows.len() as u64;
            let end = gap.end.min(start + want);
            rows.extend(
                def.keys(start..end, now)
                    .zip(start..)
                    .map(|(key, index)| self.row(index, key.as_str().to_owned())),
            );
            if rows.len() as u64 >= limit {
                break;
            }
        }
        rows
    }

    /// Index ranges with no record (missing partitions), in order.
    fn gaps(&self, total: u64) -> impl Iterator<Item = std::ops::Range<u64>> + '_ {
        let mut next = 0u64;
        let mut records = self.indexed().iter().filter_map(|r| r.index);
        let mut done = false;
        std::iter::from_fn(move || {
            while !done {
                match records.next() {
                    Some(index) if index >= total => done = true,
                    Some(index) => {
                        let gap = next..index;
                        next = index + 1;
                        if !gap.is_empty() {
                            return Some(gap);
                        }
                    }
                    None => done = true,
                }
            }
            if next < total {
                let gap = next..total;
                next = total;
                return Some(gap);
            }
            None
        })
    }

    fn row_of(&self, index: u64, key: String, r: &Record) -> PartitionRow {
        let reason = match r.kind {
            Kind::Stale | Kind::Failed => Some(self.reason(r).to_owned()),
            Kind::Materialized | Kind::Missing => None,
        };
        PartitionRow {
            index,
            partition: key,
            state: r.kind.name(),
            reason,
            latest: r.latest.map(|id| id.0),
            materialized_at: r.materialized_at,
        }
    }

    /// The whole partition space as runs of one state, in index order.
    pub fn ranges(&self, def: &PartitionsDef, now: Timestamp) -> Vec<StateRange> {
        let total = def.len(now);
        let mut out: Vec<(u64, u64, &'static str)> = Vec::new();
        let mut push = |from: u64, to: u64, state: &'static str| match out.last_mut() {
            Some(last) if last.2 == state && last.1 + 1 == from => last.1 = to,
            _ => out.push((from, to, state)),
        };
        let mut next = 0u64;
        for r in self.indexed() {
            let Some(index) = r.index else { continue };
            if index >= total {
                break;
            }
            if index > next {
                push(next, index - 1, "missing");
            }
            push(index, index, r.kind.name());
            next = index + 1;
        }
        if next < total {
            push(next, total - 1, "missing");
        }
        out.into_iter()
            .map(|(from, to, state)| StateRange {
                state,
                from: key_at(def, from, now),
                to: key_at(def, to, now),
                from_index: from,
                to_index: to,
                count: to - from + 1,
            })
            .collect()
    }
}

fn key_at(def: &PartitionsDef, index: u64, now: Timestamp) -> String {
    def.key_at(index, now)
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use flowstone_core::{AssetBuilder, MemoryIoManager, Store};
    use flowstone_partitions::TimeWindowPartitions;

    use super::*;

    static CALLS: AtomicU32 = AtomicU32::new(0);

    /// `numbers` (daily, 1 to 5 January 2024; fails on the days in `failing`) ->
    /// `total` (daily) -> `month` (unpartitioned, reads every day); `other`
    /// apart.
    fn definitions(failing: Arc<StdMutex<HashSet<String>>>) -> Definitions {
        let january = || {
            TimeWindowPartitions::daily("2024-01-01")
                .time_zone("UTC")
                .end("2024-01-06")
                .build()
        };
        Definitions::builder()
            .add_asset(AssetBuilder::new("numbers").partitions(january()).compute(
                move |ctx, _inputs| {
                    let failing = failing.clone();
                    async move {
                        let day = ctx.require_partition_key()?.as_str().to_owned();
                        if failing.lock().unwrap().contains(&day) {
                            return Err(flowstone_core::AssetError::fatal(std::io::Error::other(
                                format!("no numbers for {day}"),
                            )));
                        }
                        // A new value every time: a new data version.
                        Ok(day.len() as u32 + CALLS.fetch_add(1, Ordering::Relaxed))
                    }
                },
            ))
            .add_asset(
                AssetBuilder::new("total")
                    .partitions(january())
                    .dep::<u32>("numbers")
                    .compute(|_ctx, mut inputs| async move {
                        let n: u32 = inputs.take::<u32, _>("numbers")?;
                        Ok(n + 1)
                    }),
            )
            .add_asset(
                AssetBuilder::new("month")
                    .dep_mapped::<u32>("total", flowstone_partitions::PartitionMapping::All)
                    .compute(|_ctx, _inputs| async move { Ok(1u32) }),
            )
            .add_asset(AssetBuilder::new("other").compute(|_ctx, _inputs| async move { Ok(2u32) }))
            .build()
            .expect("valid definitions")
    }

    /// Every asset's counts and recorded partitions, comparable.
    fn seen(snapshot: &Snapshot) -> BTreeMap<String, String> {
        snapshot
            .assets
            .iter()
            .map(|(key, view)| {
                let partitions: Vec<String> = view
                    .partitions()
                    .iter()
                    .map(|p| format!("{:?} {:?} {:?}", p.partition, p.state, p.latest))
                    .collect();
                let indexes: Vec<Option<u64>> = view.records.iter().map(|r| r.index).collect();
                let text = format!("{:?} {partitions:?} {indexes:?}", view.counts);
                (key.to_string(), text)
            })
            .collect()
    }

    /// A view keeps every record, in partition order, finds each by key,
    /// and pages, ranges and the latest materialization read from it.
    #[test]
    fn compact_view_keeps_every_record() {
        let def = TimeWindowPartitions::daily("2024-01-01")
            .time_zone("UTC")
            .end("2024-01-06")
            .build()
            .unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let record = |key: &str, state: PartitionState, latest: Option<i64>, when: Option<&str>| {
            PartitionStatus {
                partition: Some(PartitionKey::from(key)),
                state,
                latest: latest.map(MaterializationId),
                materialized_at: when.map(at),
            }
        };
        let counts = StatusCounts {
            total: 5,
            materialized: 2,
            stale: 1,
            failed: 1,
            missing: 1,
        };
        // Out of order, and one key the definition does not have.
        let given = vec![
            record(
                "2024-01-03",
                PartitionState::Materialized,
                Some(3),
                Some("2024-02-03T00:00:00Z"),
            ),
            record(
                "2024-01-01",
                PartitionState::Stale("input changed".into()),
                Some(1),
                Some("2024-02-01T00:00:00Z"),
            ),
            record(
                "2024-01-02",
                PartitionState::Failed("boom".into()),
                None,
                None,
            ),
            record(
                "old-key",
                PartitionState::Materialized,
                Some(9),
                Some("2024-01-09T00:00:00Z"),
            ),
        ];
        let status = AssetStatus {
            asset: AssetKey::new("numbers").unwrap(),
            partitions_def: Some(def.describe()),
            code_version: "v1".into(),
            counts,
            partitions: given.clone(),
        };
        let now = at("2024-03-01T00:00:00Z");
        let view = AssetView::new(status, Some(&def), now);

        let keys: Vec<String> = view
            .partitions()
            .iter()
            .map(|p| p.partition.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(keys, ["old-key", "2024-01-01", "2024-01-02", "2024-01-03"]);
        for p in &given {
            let key = p.partition.as_ref().map(|k| k.as_str());
            let r = view
                .record(key)
                .unwrap_or_else(|| panic!("{key:?} is found"));
            assert_eq!(view.key(r), key);
            assert_eq!(r.kind, Kind::of(&p.state).0);
            assert_eq!(view.reason(r), Kind::of(&p.state).1);
            assert_eq!((r.latest, r.materialized_at), (p.latest, p.materialized_at));
        }
        assert!(view.record(Some("2024-01-04")).is_none());
        assert!(view.record(None).is_none(), "no unpartitioned record");
        assert_eq!(view.counts, counts);
        assert_eq!(
            view.latest().map(|(key, id, _)| (key, id)),
            Some((Some("2024-01-03"), MaterializationId(3)))
        );

        let page: Vec<(String, &str, Option<String>)> = view
            .page(&def, 0, 10, now)
            .into_iter()
            .map(|r| (r.partition, r.state, r.reason))
            .collect();
        assert_eq!(
            page,
            [
                ("2024-01-01".into(), "stale", Some("input changed".into())),
                ("2024-01-02".into(), "failed", Some("boom".into())),
                ("2024-01-03".into(), "materialized", None),
                ("2024-01-04".into(), "missing", None),
                ("2024-01-05".into(), "missing", None),
            ]
        );
        let failed = view.page_in_state(&def, "failed", 0, 10, now);
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (failed[0].index, failed[0].partition.as_str()),
            (1, "2024-01-02")
        );
        let missing = view.page_in_state(&def, "missing", 1, 10, now);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].partition, "2024-01-05");
        let ranges: Vec<(&str, u64, u64)> = view
            .ranges(&def, now)
            .iter()
            .map(|r| (r.state, r.from_index, r.to_index))
            .collect();
        assert_eq!(
            ranges,
            [
                ("stale", 0, 0),
                ("failed", 1, 1),
                ("materialized", 2, 2),
                ("missing", 3, 4),
            ]
        );
    }

    /// After each change, the updated snapshot equals one computed whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updates_match_a_whole_recompute() {
        let failing = Arc::new(StdMutex::new(HashSet::new()));
        let store = flowstone_sqlite::SqliteStore::in_memory().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let engine = Engine::new(definitions(failing.clone()), store)
            .with_default_io(Arc::new(MemoryIoManager::new()));
        let cache = StatusCache::default();
        let check = async |what: &str| {
            let updated = cache.snapshot(&engine).await.unwrap();
            let whole = compute(&engine, updated.as_of).await.unwrap();
            assert_eq!(seen(&updated), seen(&whole), "after {what}");
            updated
        };
        let first = check("nothing").await;

        engine.materialize("other", None).await.unwrap();
        let launch = engine
            .backfill(&["numbers", "total"], "2024-01-01", "2024-01-05", 4)
            .await
            .unwrap();
        if let flowstone_core::Launch::Started { handle, .. } = launch {
            handle.wait().await.unwrap();
        }
        engine.materialize("month", None).await.unwrap();
        let filled = check("a backfill").await;
        assert_eq!(
            filled.assets[&AssetKey::new("total").unwrap()]
                .counts
                .materialized,
            5
        );
        assert!(!Arc::ptr_eq(
            &first.assets[&AssetKey::new("other").unwrap()],
            &filled.assets[&AssetKey::new("other").unwrap()]
        ));

        // A new materialization upstream makes what reads it stale; an
        // asset apart is not touched.
        engine
            .materialize("numbers", Some("2024-01-02"))
            .await
            .unwrap();
        let stale = check("a new upstream materialization").await;
        let total = &stale.assets[&AssetKey::new("total").unwrap()];
        assert_eq!(total.counts.stale, 1);
        assert_eq!(
            stale.assets[&AssetKey::new("month").unwrap()].counts.stale,
            1
        );
        assert!(Arc::ptr_eq(
            &filled.assets[&AssetKey::new("other").unwrap()],
            &stale.assets[&AssetKey::new("other").unwrap()]
        ));

        // A failure shows, then a later materialization clears it.
        failing.lock().unwrap().insert("2024-01-03".to_owned());
        let _ = engine.materialize("numbers", Some("2024-01-03")).await;
        let failed = check("a failure").await;
        let numbers = &failed.assets[&AssetKey::new("numbers").unwrap()];
        assert_eq!(numbers.counts.failed, 1, "{:?}", numbers.partitions());
        failing.lock().unwrap().clear();
        engine
            .materialize("numbers", Some("2024-01-03"))
            .await
            .unwrap();
        engine
            .materialize("total", Some("2024-01-02"))
            .await
            .unwrap();
        let fixed = check("a fix").await;
        let numbers = &fixed.assets[&AssetKey::new("numbers").unwrap()];
        assert_eq!(numbers.counts.failed, 0);
        assert_eq!(numbers.counts.materialized, 5);
    }
}
