//! Asset status for the API and the pages, computed once per change of the
//! record and shared.
//!
//! Computing the status of every asset reads every recorded partition and its
//! inputs, which is too slow to do per request. The cache keeps the last
//! result with the id of the newest event in the store when it was computed;
//! a request first asks the store for any event after that id (one indexed
//! read) and recomputes only if there is one. Every change of status (a
//! materialization, a failure) appends an event, so the cache is never older
//! than the record at the time of the request.
//!
//! Partitions that were never materialized are not stored anywhere: pages of
//! partitions and ranges of states are computed from the partition
//! definition (index arithmetic) and the few records that exist, so an asset
//! with a million partitions answers without making a million rows.

// FIXME(whole recompute): any new event recomputes the status of every
// asset (about 1 s for the 10,277 flights partitions in a release build),
// so a dashboard watching a long backfill recomputes back to back. Updating
// only the asset partitions that the new events name, with their
// downstream, would resolve it.

use std::collections::HashMap;
use std::sync::Arc;

use flowstone_core::query::{AssetStatus, PartitionStatus};
use flowstone_core::{AssetKey, Engine, EngineError, EventId, PartitionState};
use flowstone_partitions::PartitionsDef;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::Mutex;

/// The status of every asset, with each asset's records indexed.
pub struct Snapshot {
    /// The newest event id when this was computed.
    pub as_of: Option<EventId>,
    pub assets: HashMap<AssetKey, AssetView>,
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

#[derive(Default)]
pub struct StatusCache {
    current: Mutex<Option<Arc<Snapshot>>>,
}

impl StatusCache {
    /// The status as of now: the cached one if no event came since.
    pub async fn snapshot(&self, engine: &Engine) -> Result<Arc<Snapshot>, EngineError> {
        // One computation at a time; the others wait for it and share it.
        let mut current = self.current.lock().await;
        let newest = newest_event(engine, current.as_ref().and_then(|s| s.as_of)).await?;
        if let Some(snapshot) = current.as_ref()
            && snapshot.as_of == newest
        {
            return Ok(snapshot.clone());
        }
        let snapshot = Arc::new(compute(engine, newest).await?);
        *current = Some(snapshot.clone());
        Ok(snapshot)
    }
}

/// The id of the newest event, reading forward from `known`.
async fn newest_event(
    engine: &Engine,
    known: Option<EventId>,
) -> Result<Option<EventId>, EngineError> {
    let mut after = known;
    loop {
        let page = engine.store().events_since(after, 10_000).await?;
        match page.last() {
            Some(last) => after = Some(last.id),
            None => return Ok(after),
        }
        if page.len() < 10_000 {
            return Ok(after);
        }
    }
}

async fn compute(engine: &Engine, as_of: Option<EventId>) -> Result<Snapshot, EngineError> {
    let now = Timestamp::now();
    let mut assets = HashMap::new();
    for status in engine.statuses().await? {
        let def = engine
            .definitions()
            .asset(&status.asset)
            .expect("statuses are of defined assets");
        let mut by_index = Vec::new();
        let mut by_key = HashMap::new();
        for (i, p) in status.partitions.iter().enumerate() {
            let Some(key) = &p.partition else { continue };
            by_key.insert(key.as_str().to_owned(), i);
            if let Some(index) = def
                .partitions
                .as_ref()
                .and_then(|d| d.index_of(key.as_str(), now).ok())
            {
                by_index.push((index, i));
            }
        }
        by_index.sort_unstable();
        assets.insert(
            status.asset.clone(),
            AssetView {
                status,
                by_index,
                by_key,
            },
        );
    }
    Ok(Snapshot { as_of, assets })
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
