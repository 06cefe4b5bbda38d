//! The planner: a selection (assets, a partition range, optionally their
//! upstream closure) becomes the steps of a run, each with its upstream steps,
//! through the partition mappings.
//!
//! The planner never lists a partition set it does not need: ranges are index
//! ranges of the partition definitions, and only the partitions selected (and
//! their upstream, when asked) become steps. Every upstream partition that a
//! step reads but that is not in the plan must already be materialized; the
//! planner checks this before anything is queued.

use std::collections::{BTreeSet, HashMap, HashSet};

use flowstone_partitions::{PartitionsDef, TimeWindow, UpstreamPartitions};
use jiff::Timestamp;

use crate::asset::AssetDef;
use crate::definitions::Definitions;
use crate::ids::{AssetKey, AssetPartition, PartitionKey};
use crate::store::{NewStep, Store, StoreError};

/// Targets per batched store lookup, to keep each query's parameter small.
pub(crate) const LOOKUP_CHUNK: usize = 500;

/// Which partitions of the selected assets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionSelection {
    /// No partition named: valid only for unpartitioned assets.
    Unspecified,
    /// These keys.
    Keys(Vec<String>),
    /// From one key to another, both included. Time-partitioned assets of
    /// another cadence take the windows overlapping that time range.
    Range { from: String, to: String },
    /// Every partition.
    All,
}

/// What to plan.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The assets; empty means every asset.
    pub assets: Vec<AssetKey>,
    pub partitions: PartitionSelection,
    /// Also every upstream asset partition they read, transitively.
    pub with_upstream: bool,
    /// Leave out asset partitions that are already materialized and whose
    /// latest step did not fail (what a backfill does unless `--force`).
    pub skip_materialized: bool,
    /// Leave out asset partitions whose upstream is missing (and not planned)
    /// instead of refusing the plan; what a backfill does.
    pub leave_out_unready: bool,
}

/// A user's selection that cannot be planned, or a store failure.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    UnknownAsset(String),
    #[error("asset {asset}: {message}")]
    BadPartition { asset: AssetKey, message: String },
    #[error(
        "asset {asset} is partitioned ({describe}); name a partition with --partition, \
         e.g. --partition {example}"
    )]
    NeedsPartition {
        asset: AssetKey,
        describe: String,
        example: String,
    },
    #[error("asset {asset} is not partitioned; drop the partition selection for it")]
    NotPartitioned { asset: AssetKey },
    #[error(
        "{count} upstream asset partition(s) are not materialized, e.g. {examples}; add \
         --with-upstream or materialize them first"
    )]
    MissingUpstream { count: usize, examples: String },
    #[error("asset {asset}: {message}")]
    Mapping { asset: AssetKey, message: String },
    #[error(
        "{count} selected asset partition(s) are already queued or running in another run \
         ({examples}); wait for that run (`runs resume RUN` if it was interrupted), or stop it \
         with `runs cancel RUN`"
    )]
    AlreadyQueued { count: usize, examples: String },
    #[error("no assets are defined")]
    NothingDefined,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PlanError {
    /// A mistake in what the user asked, as opposed to a store failure.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, PlanError::Store(_))
    }
}

/// The steps of a run, ready for [`Store::create_run`].
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub steps: Vec<NewStep>,
    /// Asset partitions left out because they were already materialized.
    pub already_materialized: u64,
    /// Asset partitions left out of a backfill because an upstream partition
    /// they read is not materialized and not in the plan.
    pub left_out: u64,
    /// A few of those missing upstream partitions.
    pub left_out_examples: Vec<String>,
    /// Asset partitions left out of a backfill because another run has them
    /// queued or running (the store keeps one live step per asset partition).
    pub already_queued: u64,
    /// A few of those, each with the run that holds it.
    pub already_queued_examples: Vec<String>,
    /// A one-line description of the selection.
    pub description: String,
}

/// Plans `selection` against `defs` and the record in `store`.
///
/// # Errors
///
/// A [`PlanError`] that says what was wrong with the selection.
pub async fn plan(
    defs: &Definitions,
    store: &dyn Store,
    selection: &Selection,
    now: Timestamp,
) -> Result<Plan, PlanError> {
    plan_refreshing(defs, store, selection, &HashSet::new(), now).await
}

/// As [`plan`], treating the asset partitions in `refresh` (e.g. the stale
/// ones) as not materialized.
pub async fn plan_refreshing(
    defs: &Definitions,
    store: &dyn Store,
    selection: &Selection,
    refresh: &HashSet<AssetPartition>,
    now: Timestamp,
) -> Result<Plan, PlanError> {
    if defs.is_empty() {
        return Err(PlanError::NothingDefined);
    }

    // The selected assets, upstream first.
    let selected: Vec<&AssetDef> = if selection.assets.is_empty() {
        defs.assets().map(|a| a.as_ref()).collect()
    } else {
        let mut chosen = Vec::new();
        for key in &selection.assets {
            let def = defs.lookup(key.as_str()).map_err(PlanError::UnknownAsset)?;
            if !chosen.iter().any(|c: &&AssetDef| c.key == def.key) {
                chosen.push(def.as_ref());
            }
        }
        chosen.sort_by_key(|def| defs.rank(&def.key));
        chosen
    };

    // The selected asset partitions.
    let range_window = range_as_time(&selected, &selection.partitions, now)?;
    let mut targets: Vec<AssetPartition> = Vec::new();
    for def in &selected {
        targets.extend(select_partitions(
            def,
            &selection.partitions,
            range_window,
            now,
        )?);
    }

    // Their upstream closure, when asked.
    let mut in_plan: HashSet<AssetPartition> = targets.iter().cloned().collect();
    if selection.with_upstream {
        let mut queue: Vec<AssetPartition> = targets.clone();
        while let Some(target) = queue.pop() {
            let def = defs
                .asset(&target.asset)
                .expect("planned assets are defined");
            for up in upstream_targets(defs, def, target.partition.as_ref(), now)? {
                if in_plan.insert(up.clone()) {
                    queue.push(up.clone());
                    targets.push(up);
                }
            }
        }
    }

    // Leave out what is already materialized. One batched lookup finds the
    // assets with any materialization at all; only those need the per-asset
    // read that also sees failures, so planning a fresh graph of n assets
    // takes a few queries instead of n.
    let mut already_materialized = 0;
    if selection.skip_materialized {
        let mut assets: BTreeSet<AssetKey> = BTreeSet::new();
        for chunk in targets.chunks(LOOKUP_CHUNK) {
            for record in store.latest_materializations(chunk).await? {
                assets.insert(record.target.asset);
            }
        }
        let mut done: HashSet<AssetPartition> = HashSet::new();
        for asset in &assets {
            for record in store.partitions(asset).await? {
                if record.latest.is_some() && record.failure.is_none() {
                    done.insert(AssetPartition::new(asset.clone(), record.partition));
                }
            }
        }
        let before = targets.len();
        targets.retain(|t| !done.contains(t) || refresh.contains(t));
        already_materialized = (before - targets.len()) as u64;
    }

    // What another run holds live cannot be queued again (the store would
    // refuse the run): a backfill leaves it out, a materialize refuses.
    let mut live = Vec::new();
    for chunk in targets.chunks(LOOKUP_CHUNK) {
        live.extend(store.live_steps(chunk).await?);
    }
    let already_queued = live.len() as u64;
    let already_queued_examples: Vec<String> = live
        .iter()
        .take(3)
        .map(|(target, run)| format!("{target} in run {run}"))
        .collect();
    if !live.is_empty() {
        if !selection.leave_out_unready {
            return Err(PlanError::AlreadyQueued {
                count: live.len(),
                examples: already_queued_examples.join(", "),
            });
        }
        let held: HashSet<AssetPartition> = live.into_iter().map(|(t, _)| t).collect();
        targets.retain(|t| !held.contains(t));
    }

    // Upstream first, then partition order, so step ids follow the natural order.
    let sort_index = |t: &AssetPartition| {
        let def = defs.asset(&t.asset).expect("planned assets are defined");
        let index = match (&def.partitions, &t.partition) {
            (Some(p), Some(k)) => p.index_of(k.as_str(), now).unwrap_or(u64::MAX),
            _ => 0,
        };
        (defs.rank(&t.asset), index)
    };
    let mut keyed: Vec<_> = targets.into_iter().map(|t| (sort_index(&t), t)).collect();
    keyed.sort_by_key(|(index, _)| *index);
    let targets: Vec<AssetPartition> = keyed.into_iter().map(|(_, t)| t).collect();

    // Each step's upstream: in the plan, or outside it (and then it must exist).
    let position: HashMap<&AssetPartition, usize> =
        targets.iter().enumerate().map(|(i, t)| (t, i)).collect();
    let mut links: Vec<(Vec<usize>, Vec<AssetPartition>)> = Vec::with_capacity(targets.len());
    let mut external: BTreeSet<AssetPartition> = BTreeSet::new();
    for target in &targets {
        let def = defs
            .asset(&target.asset)
            .expect("planned assets are defined");
        let mut inside = Vec::new();
        let mut outside = Vec::new();
        for up in upstream_targets(defs, def, target.partition.as_ref(), now)? {
            match position.get(&up) {
                Some(&i) => inside.push(i),
                None => {
                    external.insert(up.clone());
                    outside.push(up);
                }
            }
        }
        inside.sort_unstable();
        inside.dedup();
        links.push((inside, outside));
    }
    let wanted: Vec<AssetPartition> = external.into_iter().collect();
    let mut have = HashSet::new();
    for chunk in wanted.chunks(LOOKUP_CHUNK) {
        for record in store.latest_materializations(chunk).await? {
            have.insert(record.target);
        }
    }

    // A step whose upstream is missing cannot run: a materialize refuses the
    // plan; a backfill leaves it out, with everything downstream of it.
    let mut blocked: Vec<Option<AssetPartition>> = vec![None; targets.len()];
    for (i, (inside, outside)) in links.iter().enumerate() {
        let missing = outside.iter().find(|up| !have.contains(*up)).cloned();
        let upstream_blocked = inside.iter().find_map(|&j| blocked[j].clone());
        blocked[i] = missing.or(upstream_blocked);
    }
    let missing: BTreeSet<&AssetPartition> = blocked.iter().flatten().collect();
    let left_out = blocked.iter().filter(|b| b.is_some()).count() as u64;
    let all_blocked = left_out == targets.len() as u64 && already_queued == 0;
    if left_out > 0 && (!selection.leave_out_unready || all_blocked) {
        let examples: Vec<String> = missing.iter().take(5).map(|t| t.to_string()).collect();
        return Err(PlanError::MissingUpstream {
            count: missing.len(),
            examples: examples.join(", "),
        });
    }

    // The steps, renumbered without those left out.
    let mut renumber = vec![usize::MAX; targets.len()];
    let mut steps = Vec::with_capacity(targets.len() - left_out as usize);
    for (i, (target, (inside, _))) in targets.iter().zip(links).enumerate() {
        if blocked[i].is_some() {
            continue;
        }
        renumber[i] = steps.len();
        let def = defs
            .asset(&target.asset)
            .expect("planned assets are defined");
        steps.push(NewStep {
            target: target.clone(),
            upstream: inside.into_iter().map(|j| renumber[j]).collect(),
            max_attempts: def.retry.max_attempts,
            priority: 0,
            queue: def.queue.clone(),
        });
    }
    let left_out_examples = missing.iter().take(3).map(|t| t.to_string()).collect();

    Ok(Plan {
        steps,
        already_materialized,
        left_out,
        left_out_examples,
        already_queued,
        already_queued_examples,
        description: describe(&selected, selection),
    })
}

/// The time span of a `Range` selection, taken from the first selected
/// time-partitioned asset whose keys the range is written in.
///
/// # Errors
///
/// When `from` comes after `to` there.
fn range_as_time(
    selected: &[&AssetDef],
    partitions: &PartitionSelection,
    now: Timestamp,
) -> Result<Option<TimeWindow>, PlanError> {
    let PartitionSelection::Range { from, to } = partitions else {
        return Ok(None);
    };
    for def in selected {
        let Some(p) = def.partitions.as_ref() else {
            continue;
        };
        let (Ok(from_key), Ok(to_key)) = (p.parse_key(from, now), p.parse_key(to, now)) else {
            continue;
        };
        let (Some(first), Some(last)) = (p.time_window(&from_key), p.time_window(&to_key)) else {
            continue;
        };
        if first.start > last.start {
            return Err(PlanError::BadPartition {
                asset: def.key.clone(),
                message: format!("the range starts at {from}, after its end {to}; swap them"),
            });
        }
        return Ok(Some(TimeWindow {
            start: first.start,
            end: last.end,
        }));
    }
    Ok(None)
}

fn select_partitions(
    def: &AssetDef,
    selection: &PartitionSelection,
    range_window: Option<TimeWindow>,
    now: Timestamp,
) -> Result<Vec<AssetPartition>, PlanError> {
    let target = |key: Option<PartitionKey>| AssetPartition::new(def.key.clone(), key);
    let bad = |message: String| PlanError::BadPartition {
        asset: def.key.clone(),
        message,
    };
    let Some(partitions) = &def.partitions else {
        return match selection {
            PartitionSelection::Keys(_) => Err(PlanError::NotPartitioned {
                asset: def.key.clone(),
            }),
            _ => Ok(vec![target(None)]),
        };
    };
    match selection {
        PartitionSelection::Unspecified => Err(PlanError::NeedsPartition {
            asset: def.key.clone(),
            describe: partitions.describe(),
            example: partitions.example_key(now),
        }),
        PartitionSelection::Keys(keys) => {
            // A key given twice (or two spellings of one key) is one target.
            let mut seen = std::collections::HashSet::new();
            let mut targets = Vec::with_capacity(keys.len());
            for key in keys {
                let key = partitions
                    .parse_key(key, now)
                    .map_err(|err| bad(err.to_string()))?;
                if seen.insert(key.clone()) {
                    targets.push(target(Some(key)));
                }
            }
            Ok(targets)
        }
        PartitionSelection::All => {
            let range = 0..partitions.len(now);
            Ok(partitions
                .keys(range, now)
                .map(|k| target(Some(k)))
                .collect())
        }
        PartitionSelection::Range { from, to } => {
            let range = match partitions.range(from, to, now) {
                Ok(range) => range,
                Err(err) => match (partitions, range_window) {
                    (PartitionsDef::Time(time), Some(window)) => {
                        time.indices_overlapping(window, now)
                    }
                    _ => return Err(bad(err.to_string())),
                },
            };
            Ok(partitions
                .keys(range, now)
                .map(|k| target(Some(k)))
                .collect())
        }
    }
}

/// The upstream asset partitions that `def`'s partition `key` reads.
pub fn upstream_targets(
    defs: &Definitions,
    def: &AssetDef,
    key: Option<&PartitionKey>,
    now: Timestamp,
) -> Result<Vec<AssetPartition>, PlanError> {
    Ok(upstream_targets_by_dep(defs, def, key, now)?
        .into_iter()
        .flatten()
        .collect())
}

/// The upstream asset partitions that `def`'s partition `key` reads, one list
/// per dependency in declaration order (an asset may read the same upstream
/// twice, e.g. today and yesterday, through two mappings).
pub fn upstream_targets_by_dep(
    defs: &Definitions,
    def: &AssetDef,
    key: Option<&PartitionKey>,
    now: Timestamp,
) -> Result<Vec<Vec<AssetPartition>>, PlanError> {
    let mut out = Vec::with_capacity(def.deps.len());
    for dep in &def.deps {
        let up = defs.asset(&dep.key).expect("dependencies are validated");
        let mapping = defs.dep_mapping(def, dep);
        let upstream = mapping
            .upstream(def.partitions.as_ref(), key, up.partitions.as_ref(), now)
            .map_err(|err| PlanError::Mapping {
                asset: def.key.clone(),
                message: err.to_string(),
            })?;
        let target = |k| AssetPartition::new(up.key.clone(), k);
        out.push(match upstream {
            UpstreamPartitions::Unpartitioned => vec![target(None)],
            UpstreamPartitions::Keys(keys) => keys.into_iter().map(|k| target(Some(k))).collect(),
            UpstreamPartitions::Range(range) => {
                let partitions = up.partitions.as_ref().expect("a range implies partitions");
                partitions
                    .keys(range, now)
                    .map(|k| target(Some(k)))
                    .collect()
            }
        });
    }
    Ok(out)
}

fn describe(selected: &[&AssetDef], selection: &Selection) -> String {
    let names: Vec<&str> = selected.iter().map(|d| d.key.as_str()).collect();
    let names = if names.len() > 4 {
        format!("{} and {} more", names[..3].join(", "), names.len() - 3)
    } else {
        names.join(", ")
    };
    let partitions = match &selection.partitions {
        PartitionSelection::Unspecified => String::new(),
        PartitionSelection::Keys(keys) if keys.len() == 1 => format!(" [{}]", keys[0]),
        PartitionSelection::Keys(keys) => format!(" [{} partitions]", keys.len()),
        PartitionSelection::Range { from, to } => format!(" [{from}..{to}]"),
        PartitionSelection::All => " [all partitions]".to_owned(),
    };
    let upstream = if selection.with_upstream {
        " with upstream"
    } else {
        ""
    };
    format!("{names}{partitions}{upstream}")
}
