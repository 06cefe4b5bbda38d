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

use flowstone_core::query::{AssetStatus, PartitionStatus};
use flowstone_core::store::{EventKind, EventRecord};
use flowstone_core::{
    AssetKey, AssetPartition, Definitions, Engine, EngineError, EventId, PartitionKey,
    PartitionState,
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

/// One asset's status, with its records in partition order and indexed.
pub struct AssetView {
    pub status: AssetStatus,
    /// `(partition index, position in status.partitions)`, by index; empty
    /// for an unpartitioned asset.
    pub by_index: Vec<(u64, usize)>,
    /// Position in `status.partitions` by partition key.
    pub by_key: HashMap<String, usize>,
}

impl AssetView {
    fn new(status: AssetStatus, def: Option<&PartitionsDef>, now: Timestamp) -> AssetView {
        let mut by_index = Vec::new();
        let mut by_key = HashMap::new();
        for (i, p) in status.partitions.iter().enumerate() {
            let Some(key) = &p.partition else { continue };
            by_key.insert(key.as_str().to_owned(), i);
            if let Some(index) = def.and_then(|d| d.index_of(key.as_str(), now).ok()) {
                by_index.push((index, i));
            }
        }
        by_index.sort_unstable();
        AssetView {
            status,
            by_index,
            by_key,
        }
    }

    /// The recorded status of one partition (`None` for an unpartitioned
    /// asset's only one).
    fn partition(&self, key: Option<&PartitionKey>) -> Option<&PartitionStatus> {
        match key {
            Some(key) => self
                .by_key
                .get(key.as_str())
                .map(|&i| &self.status.partitions[i]),
            None => self
                .status
                .partitions
                .iter()
                .find(|p| p.partition.is_none()),
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
            crate::memory::trim_soon();
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
        crate::memory::trim_soon();
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
                None => before
                    .as_ref()
                    .and_then(|v| v.partition(p.as_ref()))
                    .and_then(|s| match &s.state {
                        PartitionState::Failed(error) => Some(error.clone()),
                        _ => None,
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
                .and_then(|v| v.partition(input.partition.as_ref()))
                .is_some_and(|s| matches!(s.state, PartitionState::Stale(_)))
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
/// the other records keep their place and their known index, so only the
/// new ones have their key parsed.
fn merge(
    def: &flowstone_core::AssetDef,
    before: Option<&AssetView>,
    assessed: &[Option<PartitionKey>],
    fresh: Vec<PartitionStatus>,
    now: Timestamp,
) -> AssetView {
    let assessed: std::collections::HashSet<&Option<PartitionKey>> = assessed.iter().collect();
    let mut rows: Vec<(Option<u64>, PartitionStatus)> = Vec::new();
    if let Some(before) = before {
        let index_at: HashMap<usize, u64> =
            before.by_index.iter().map(|&(i, at)| (at, i)).collect();
        rows.extend(
            before
                .status
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| !assessed.contains(&p.partition))
                .map(|(at, p)| (index_at.get(&at).copied(), p.clone())),
        );
    }
    let index_of = |p: &PartitionStatus| {
        let key = p.partition.as_ref()?;
        def.partitions.as_ref()?.index_of(key.as_str(), now).ok()
    };
    rows.extend(
        fresh
            .into_iter()
            .filter(|p| p.state != PartitionState::Missing || p.latest.is_some())
            .map(|p| (index_of(&p), p)),
    );
    rows.sort_by_key(|(index, _)| *index);

    let mut counts = flowstone_core::query::StatusCounts {
        total: def.partitions.as_ref().map_or(1, |p| p.len(now)),
        ..Default::default()
    };
    let mut by_index = Vec::new();
    let mut by_key = HashMap::new();
    let mut partitions = Vec::with_capacity(rows.len());
    for (at, (index, p)) in rows.into_iter().enumerate() {
        match &p.state {
            PartitionState::Materialized => counts.materialized += 1,
            PartitionState::Stale(_) => counts.stale += 1,
            PartitionState::Failed(_) => counts.failed += 1,
            PartitionState::Missing => {}
        }
        if let Some(key) = &p.partition {
            by_key.insert(key.as_str().to_owned(), at);
        }
        if let Some(index) = index {
            by_index.push((index, at));
        }
        partitions.push(p);
    }
    counts.missing = counts
        .total
        .saturating_sub(counts.materialized + counts.stale + counts.failed);
    AssetView {
        status: AssetStatus {
            asset: def.key.clone(),
            partitions_def: def.partitions.as_ref().map(|p| p.describe()),
            code_version: def.code_version.clone(),
            counts,
            partitions,
        },
        by_index,
        by_key,
    }
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
        match self.by_key.get(&key) {
            Some(&i) => row_of(index, key, &self.status.partitions[i]),
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
                .by_index
                .iter()
                .filter(|(_, i)| self.status.partitions[*i].state.name() == state)
                .skip(offset as usize)
                .take(limit as usize)
                .map(|&(index, i)| {
                    let p = &self.status.partitions[i];
                    let key = p.partition.as_ref().map_or("", |k| k.as_str()).to_owned();
                    row_of(index, key, p)
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
        let mut records = self.by_index.iter().map(|(index, _)| *index);
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

    /// The whole partition space as runs of one state, in index order.
    pub fn ranges(&self, def: &PartitionsDef, now: Timestamp) -> Vec<StateRange> {
        let total = def.len(now);
        let mut out: Vec<(u64, u64, &'static str)> = Vec::new();
        let mut push = |from: u64, to: u64, state: &'static str| match out.last_mut() {
            Some(last) if last.2 == state && last.1 + 1 == from => last.1 = to,
            _ => out.push((from, to, state)),
        };
        let mut next = 0u64;
        for &(index, i) in &self.by_index {
            if index >= total {
                break;
            }
            if index > next {
                push(next, index - 1, "missing");
            }
            push(index, index, self.status.partitions[i].state.name());
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

fn row_of(index: u64, key: String, p: &PartitionStatus) -> PartitionRow {
    let reason = match &p.state {
        PartitionState::Stale(why) | PartitionState::Failed(why) => Some(why.clone()),
        PartitionState::Materialized | PartitionState::Missing => None,
    };
    PartitionRow {
        index,
        partition: key,
        state: p.state.name(),
        reason,
        latest: p.latest.map(|id| id.0),
        materialized_at: p.materialized_at,
    }
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
                let s = &view.status;
                let partitions: Vec<String> = s
                    .partitions
                    .iter()
                    .map(|p| format!("{:?} {:?} {:?}", p.partition, p.state, p.latest))
                    .collect();
                let text = format!("{:?} {partitions:?} {:?}", s.counts, view.by_index);
                (key.to_string(), text)
            })
            .collect()
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
                .status
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
        let total = &stale.assets[&AssetKey::new("total").unwrap()].status;
        assert_eq!(total.counts.stale, 1);
        assert_eq!(
            stale.assets[&AssetKey::new("month").unwrap()]
                .status
                .counts
                .stale,
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
        let numbers = &failed.assets[&AssetKey::new("numbers").unwrap()].status;
        assert_eq!(numbers.counts.failed, 1, "{:?}", numbers.partitions);
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
        let numbers = &fixed.assets[&AssetKey::new("numbers").unwrap()].status;
        assert_eq!(numbers.counts.failed, 0);
        assert_eq!(numbers.counts.materialized, 5);
    }
}
