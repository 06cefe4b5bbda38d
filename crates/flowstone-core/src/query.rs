//! Questions asked of the record: lineage (which materializations went into
//! this one, which came out of it), impact (which asset partitions go stale if
//! this one changes) and status (per partition: materialized, stale, failed or
//! missing).
//!
//! Lineage reads recorded edges; impact reads the definitions (it answers for
//! partitions that were never materialized too); staleness compares versions,
//! never timestamps: a partition is stale when its code version changed since it
//! was materialized, or when the latest materialization of an input it reads is
//! not the one it consumed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use flowstone_partitions::UpstreamPartitions;
use jiff::Timestamp;
use serde::Serialize;

use crate::asset::AssetDef;
use crate::definitions::Definitions;
use crate::engine::{Engine, EngineError};
use crate::ids::{AssetKey, AssetPartition, MaterializationId, PartitionKey};
use crate::plan::{PlanError, upstream_targets};
use crate::store::{LineageEdge, MaterializationRecord};

/// Which way to walk the lineage graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The materializations consumed, transitively.
    Upstream,
    /// The materializations that consumed it, transitively.
    Downstream,
}

/// A lineage graph around one materialization.
#[derive(Clone, Debug, Serialize)]
pub struct Lineage {
    pub direction: Direction,
    pub root: MaterializationRecord,
    /// Every other materialization reached, with its distance from the root.
    pub nodes: Vec<(u32, MaterializationRecord)>,
    pub edges: Vec<LineageEdge>,
}

/// The partitions of one asset that a change would make stale.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ImpactEntry {
    pub asset: AssetKey,
    /// Empty for an unpartitioned asset.
    pub partitions: Vec<PartitionKey>,
    /// How many steps away from the changed asset.
    pub distance: u32,
}

/// The state of one asset partition.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum PartitionState {
    Materialized,
    Stale(String),
    Failed(String),
    Missing,
}

impl PartitionState {
    pub fn name(&self) -> &'static str {
        match self {
            PartitionState::Materialized => "materialized",
            PartitionState::Stale(_) => "stale",
            PartitionState::Failed(_) => "failed",
            PartitionState::Missing => "missing",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PartitionStatus {
    pub partition: Option<PartitionKey>,
    #[serde(flatten)]
    pub state: PartitionState,
    pub latest: Option<MaterializationId>,
    pub materialized_at: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StatusCounts {
    pub total: u64,
    pub materialized: u64,
    pub stale: u64,
    pub failed: u64,
    pub missing: u64,
}

/// Every partition of an asset that has a record, and counts over all of them
/// (missing partitions are counted, not listed).
#[derive(Clone, Debug, Serialize)]
pub struct AssetStatus {
    pub asset: AssetKey,
    pub partitions_def: Option<String>,
    pub code_version: String,
    pub counts: StatusCounts,
    pub partitions: Vec<PartitionStatus>,
}

impl Engine {
    /// The materialization of `asset` (and `partition`) that lineage starts
    /// from: its latest.
    async fn lineage_root(
        &self,
        asset: &str,
        partition: Option<&str>,
    ) -> Result<MaterializationRecord, EngineError> {
        let target = self.target(asset, partition)?;
        let latest = self
            .store()
            .latest_materializations(std::slice::from_ref(&target))
            .await?;
        latest
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Invalid(format!("{target} has never been materialized")))
    }

    /// Checks an asset key and partition key typed by a user.
    ///
    /// # Errors
    ///
    /// An unknown asset, a bad partition key, a missing partition key for a
    /// partitioned asset or one given for an unpartitioned asset.
    pub fn target(
        &self,
        asset: &str,
        partition: Option<&str>,
    ) -> Result<AssetPartition, EngineError> {
        let def = self
            .definitions()
            .lookup(asset)
            .map_err(EngineError::Invalid)?;
        let now = Timestamp::now();
        let partition = match (&def.partitions, partition) {
            (Some(p), Some(key)) => Some(p.parse_key(key, now).map_err(|err| {
                EngineError::Plan(PlanError::BadPartition {
                    asset: def.key.clone(),
                    message: err.to_string(),
                })
            })?),
            (Some(p), None) => {
                return Err(EngineError::Plan(PlanError::NeedsPartition {
                    asset: def.key.clone(),
                    describe: p.describe(),
                    example: p.example_key(now),
                }));
            }
            (None, Some(_)) => {
                return Err(EngineError::Plan(PlanError::NotPartitioned {
                    asset: def.key.clone(),
                }));
            }
            (None, None) => None,
        };
        Ok(AssetPartition::new(def.key.clone(), partition))
    }

    /// The materializations that went into (upstream) or came out of
    /// (downstream) the latest materialization of an asset partition,
    /// transitively.
    pub async fn lineage(
        &self,
        asset: &str,
        partition: Option<&str>,
        direction: Direction,
    ) -> Result<Lineage, EngineError> {
        self.lineage_to_depth(asset, partition, direction, None)
            .await
    }

    /// As [`Engine::lineage`], following at most `max_depth` edges from the root.
    pub async fn lineage_to_depth(
        &self,
        asset: &str,
        partition: Option<&str>,
        direction: Direction,
        max_depth: Option<u32>,
    ) -> Result<Lineage, EngineError> {
        let root = self.lineage_root(asset, partition).await?;
        let mut seen: HashSet<MaterializationId> = HashSet::from([root.id]);
        let mut frontier = vec![root.id];
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        let mut depth = 0;
        while !frontier.is_empty() && max_depth.is_none_or(|max| depth < max) {
            depth += 1;
            let mut next = Vec::new();
            for chunk in frontier.chunks(500) {
                let found = match direction {
                    Direction::Upstream => self.store().inputs_of(chunk).await?,
                    Direction::Downstream => self.store().consumers_of(chunk).await?,
                };
                for (edge, record) in found {
                    edges.push(edge);
                    if seen.insert(record.id) {
                        next.push(record.id);
                        nodes.push((depth, record));
                    }
                }
            }
            frontier = next;
        }
        nodes.sort_by(|a, b| (a.0, &a.1.target).cmp(&(b.0, &b.1.target)));
        Ok(Lineage {
            direction,
            root,
            nodes,
            edges,
        })
    }

    /// Every downstream asset partition that would be stale if this asset
    /// partition changed, through the partition mappings.
    pub fn impact(
        &self,
        asset: &str,
        partition: Option<&str>,
    ) -> Result<Vec<ImpactEntry>, EngineError> {
        let target = self.target(asset, partition)?;
        impact(self.definitions(), &target, Timestamp::now())
    }

    /// Per-partition state of `asset`, with counts.
    ///
    /// Staleness follows the graph: a partition is stale when its code version
    /// changed, when an input's latest materialization holds other data than
    /// the one it consumed, or when an input partition is itself stale.
    pub async fn status(&self, asset: &str) -> Result<AssetStatus, EngineError> {
        let def = self
            .definitions()
            .lookup(asset)
            .map_err(EngineError::Invalid)?;
        let key = def.key.clone();

        // The asset and everything upstream of it, upstream first.
        let mut wanted: HashSet<AssetKey> = HashSet::from([key.clone()]);
        let mut queue = vec![key.clone()];
        while let Some(k) = queue.pop() {
            for up in self.definitions().upstream_of(&k) {
                if wanted.insert(up.key.clone()) {
                    queue.push(up.key.clone());
                }
            }
        }
        let mut statuses = self.statuses_of(|k| wanted.contains(k)).await?;
        Ok(statuses.remove(&key).expect("the asset itself is computed"))
    }

    /// The status of every asset, upstream first.
    pub async fn statuses(&self) -> Result<Vec<AssetStatus>, EngineError> {
        let mut statuses = self.statuses_of(|_| true).await?;
        let order: Vec<AssetKey> = self.definitions().assets().map(|a| a.key.clone()).collect();
        Ok(order.iter().filter_map(|k| statuses.remove(k)).collect())
    }

    /// Statuses of the assets `include` picks, which must be closed upstream.
    async fn statuses_of(
        &self,
        include: impl Fn(&AssetKey) -> bool,
    ) -> Result<HashMap<AssetKey, AssetStatus>, EngineError> {
        let mut done: HashMap<AssetKey, AssetStatus> = HashMap::new();
        let mut stale: HashSet<AssetPartition> = HashSet::new();
        let assets: Vec<Arc<AssetDef>> = self
            .definitions()
            .assets()
            .filter(|a| include(&a.key))
            .cloned()
            .collect();
        for def in assets {
            let status = self.direct_status(&def, &stale).await?;
            for p in &status.partitions {
                if matches!(p.state, PartitionState::Stale(_)) {
                    stale.insert(AssetPartition::new(def.key.clone(), p.partition.clone()));
                }
            }
            done.insert(def.key.clone(), status);
        }
        Ok(done)
    }

    /// The status of one asset, given which upstream partitions are stale.
    async fn direct_status(
        &self,
        def: &AssetDef,
        stale_upstream: &HashSet<AssetPartition>,
    ) -> Result<AssetStatus, EngineError> {
        let now = Timestamp::now();
        let records = self.store().partitions(&def.key).await?;
        let records = records
            .into_iter()
            .map(|r| (r.partition, r.latest, r.failure.map(|f| f.error)))
            .collect();
        let partitions = self
            .assess(def, records, &|p| stale_upstream.contains(p))
            .await?;
        Ok(asset_status(def, partitions, now))
    }

    /// The state of some partitions of one asset, read from the store as
    /// [`Engine::status`] reads them, for a cache that updates only the
    /// partitions that changed and what reads them.
    ///
    /// `failed` gives the partitions among `partitions` whose newest record
    /// is a failed step (newer than their latest materialization), with its
    /// error; `is_stale` says whether an input partition is stale. Partitions
    /// with neither a materialization nor a failure come back `Missing`.
    pub async fn partition_statuses(
        &self,
        def: &AssetDef,
        partitions: &[Option<PartitionKey>],
        failed: &HashMap<Option<PartitionKey>, String>,
        is_stale: &(dyn Fn(&AssetPartition) -> bool + Sync),
    ) -> Result<Vec<PartitionStatus>, EngineError> {
        let targets: Vec<AssetPartition> = partitions
            .iter()
            .map(|p| AssetPartition::new(def.key.clone(), p.clone()))
            .collect();
        let mut latest: HashMap<Option<PartitionKey>, MaterializationRecord> = HashMap::new();
        for chunk in targets.chunks(500) {
            for m in self.store().latest_materializations(chunk).await? {
                latest.insert(m.target.partition.clone(), m);
            }
        }
        let records = partitions
            .iter()
            .map(|p| (p.clone(), latest.remove(p), failed.get(p).cloned()))
            .collect();
        self.assess(def, records, is_stale).await
    }

    /// The state of each `(partition, latest materialization, failure)`.
    async fn assess(
        &self,
        def: &AssetDef,
        records: Vec<(
            Option<PartitionKey>,
            Option<MaterializationRecord>,
            Option<String>,
        )>,
        is_stale: &(dyn Fn(&AssetPartition) -> bool + Sync),
    ) -> Result<Vec<PartitionStatus>, EngineError> {
        let defs = self.definitions();
        let store = self.store();
        let now = Timestamp::now();

        // What each latest materialization consumed, with the data versions.
        let latest_ids: Vec<MaterializationId> = records
            .iter()
            .filter_map(|(_, latest, _)| latest.as_ref().map(|m| m.id))
            .collect();
        let mut consumed: HashMap<MaterializationId, Vec<Version>> = HashMap::new();
        for chunk in latest_ids.chunks(500) {
            for (edge, input) in store.inputs_of(chunk).await? {
                consumed
                    .entry(edge.consumer)
                    .or_default()
                    .push(Version::of(&input));
            }
        }

        // What each partition reads now, and the latest of each of those.
        let mut expected: HashMap<Option<PartitionKey>, Vec<AssetPartition>> = HashMap::new();
        let mut all_inputs: BTreeSet<AssetPartition> = BTreeSet::new();
        for (partition, _, _) in records.iter().filter(|r| r.1.is_some()) {
            let inputs = upstream_targets(defs, def, partition.as_ref(), now)?;
            all_inputs.extend(inputs.iter().cloned());
            expected.insert(partition.clone(), inputs);
        }
        let all_inputs: Vec<AssetPartition> = all_inputs.into_iter().collect();
        let mut current: HashMap<AssetPartition, Version> = HashMap::new();
        for chunk in all_inputs.chunks(500) {
            for m in store.latest_materializations(chunk).await? {
                current.insert(m.target.clone(), Version::of(&m));
            }
        }

        let mut partitions = Vec::with_capacity(records.len());
        for (partition, latest, failure) in records {
            let state = match (&latest, failure) {
                (_, Some(error)) => PartitionState::Failed(error),
                (None, None) => PartitionState::Missing,
                (Some(latest), None) => {
                    let inputs = expected.get(&partition).map(Vec::as_slice).unwrap_or(&[]);
                    let consumed = consumed.get(&latest.id).map(Vec::as_slice).unwrap_or(&[]);
                    staleness(
                        &def.code_version,
                        latest,
                        inputs,
                        consumed,
                        &current,
                        is_stale,
                    )
                }
            };
            partitions.push(PartitionStatus {
                partition,
                state,
                latest: latest.as_ref().map(|m| m.id),
                materialized_at: latest.as_ref().map(|m| m.finished_at),
            });
        }
        Ok(partitions)
    }
}

/// An asset's status from the states of its recorded partitions: counts
/// (missing ones counted, not listed) and the partitions in index order.
pub fn asset_status(
    def: &AssetDef,
    mut partitions: Vec<PartitionStatus>,
    now: Timestamp,
) -> AssetStatus {
    partitions.retain(|p| p.state != PartitionState::Missing || p.latest.is_some());
    let mut counts = StatusCounts {
        total: def.partitions.as_ref().map_or(1, |p| p.len(now)),
        ..StatusCounts::default()
    };
    for p in &partitions {
        match &p.state {
            PartitionState::Materialized => counts.materialized += 1,
            PartitionState::Stale(_) => counts.stale += 1,
            PartitionState::Failed(_) => counts.failed += 1,
            PartitionState::Missing => {}
        }
    }
    counts.missing = counts
        .total
        .saturating_sub(counts.materialized + counts.stale + counts.failed);
    if let Some(p) = &def.partitions {
        // Each key's index once: working it out parses the key.
        partitions.sort_by_cached_key(|s| {
            s.partition
                .as_ref()
                .and_then(|k| p.index_of(k.as_str(), now).ok())
        });
    }
    AssetStatus {
        asset: def.key.clone(),
        partitions_def: def.partitions.as_ref().map(|p| p.describe()),
        code_version: def.code_version.clone(),
        counts,
        partitions,
    }
}

/// A materialization as staleness sees it.
struct Version {
    id: MaterializationId,
    target: AssetPartition,
    data: String,
}

impl Version {
    fn of(m: &MaterializationRecord) -> Self {
        Version {
            id: m.id,
            target: m.target.clone(),
            data: m.data_version.clone(),
        }
    }
}

fn staleness(
    code_version: &str,
    latest: &MaterializationRecord,
    inputs: &[AssetPartition],
    consumed: &[Version],
    current: &HashMap<AssetPartition, Version>,
    is_stale: &(dyn Fn(&AssetPartition) -> bool + Sync),
) -> PartitionState {
    if latest.code_version != code_version {
        return PartitionState::Stale(format!(
            "code version changed from {} to {code_version}",
            latest.code_version
        ));
    }
    for input in inputs {
        if is_stale(input) {
            return PartitionState::Stale(format!("input {input} is stale"));
        }
        let Some(now) = current.get(input) else {
            continue;
        };
        let read = consumed.iter().find(|v| &v.target == input);
        match read {
            Some(read) if read.id == now.id || read.data == now.data => {}
            Some(read) => {
                return PartitionState::Stale(format!(
                    "input {input} changed: read data version {} (#{}), latest is {} (#{})",
                    read.data, read.id, now.data, now.id
                ));
            }
            None => {
                return PartitionState::Stale(format!(
                    "input {input} was materialized (#{}) after this was",
                    now.id
                ));
            }
        }
    }
    PartitionState::Materialized
}

/// Every downstream asset partition that reads `target`, transitively, through
/// the mappings.
pub fn impact(
    defs: &Definitions,
    target: &AssetPartition,
    now: Timestamp,
) -> Result<Vec<ImpactEntry>, EngineError> {
    // Affected partitions per asset: `None` for an unpartitioned asset.
    let mut affected: BTreeMap<AssetKey, (u32, BTreeSet<Option<PartitionKey>>)> = BTreeMap::new();
    let mut queue: Vec<(AssetKey, Option<PartitionKey>, u32)> =
        vec![(target.asset.clone(), target.partition.clone(), 0)];
    let mut visited: HashSet<(AssetKey, Option<PartitionKey>)> = HashSet::new();
    while let Some((asset, key, distance)) = queue.pop() {
        if !visited.insert((asset.clone(), key.clone())) {
            continue;
        }
        let up = defs.asset(&asset).expect("impact walks defined assets");
        for down in defs.downstream_of(&asset) {
            // An asset may read the same upstream through several mappings.
            let mut keys: Vec<Option<PartitionKey>> = Vec::new();
            for dep in down.deps.iter().filter(|d| d.key == asset) {
                let mapping = defs.dep_mapping(down, dep);
                let reached = mapping
                    .downstream(
                        down.partitions.as_ref(),
                        up.partitions.as_ref(),
                        key.as_ref(),
                        now,
                    )
                    .map_err(|err| EngineError::Invalid(format!("asset {}: {err}", down.key)))?;
                match reached {
                    UpstreamPartitions::Unpartitioned => keys.push(None),
                    UpstreamPartitions::Keys(found) => keys.extend(found.into_iter().map(Some)),
                    UpstreamPartitions::Range(range) => {
                        let p = down
                            .partitions
                            .as_ref()
                            .expect("a range implies partitions");
                        keys.extend(p.keys(range, now).map(Some));
                    }
                }
            }
            let entry = affected
                .entry(down.key.clone())
                .or_insert((distance + 1, BTreeSet::new()));
            entry.0 = entry.0.min(distance + 1);
            for key in keys {
                if entry.1.insert(key.clone()) {
                    queue.push((down.key.clone(), key, distance + 1));
                }
            }
        }
    }

    let mut out: Vec<ImpactEntry> = affected
        .into_iter()
        .map(|(asset, (distance, keys))| {
            let def = defs.asset(&asset).expect("impact walks defined assets");
            let mut partitions: Vec<PartitionKey> = keys.into_iter().flatten().collect();
            if let Some(p) = &def.partitions {
                partitions.sort_by_key(|k| p.index_of(k.as_str(), now).ok());
            }
            ImpactEntry {
                asset,
                partitions,
                distance,
            }
        })
        .collect();
    out.sort_by_key(|e| (defs.rank(&e.asset), e.distance));
    Ok(out)
}

impl Engine {
    /// The stored value of the latest materialization of an asset partition,
    /// as JSON.
    ///
    /// # Errors
    ///
    /// A bad target, a partition never materialized, or a value the I/O
    /// manager cannot load.
    pub async fn value(
        &self,
        asset: &str,
        partition: Option<&str>,
    ) -> Result<(MaterializationRecord, serde_json::Value), EngineError> {
        let record = self.lineage_root(asset, partition).await?;
        let def = self
            .definitions()
            .asset(&record.target.asset)
            .expect("target is defined");
        let io = self.io_manager_for(def);
        let value = io.load(&record.target, &def.output).await.map_err(|err| {
            EngineError::Invalid(format!("cannot load the value of {}: {err}", record.target))
        })?;
        let bytes = def.output.encode(value.as_ref()).map_err(|err| {
            EngineError::Invalid(format!(
                "cannot encode the value of {}: {err}",
                record.target
            ))
        })?;
        let json = serde_json::from_slice(&bytes).map_err(|err| {
            EngineError::Invalid(format!("the value of {} is not JSON: {err}", record.target))
        })?;
        Ok((record, json))
    }
}
