//! [`Definitions`]: every asset, resource and I/O manager of a code location,
//! validated once.
//!
//! Once built, a `Definitions` guarantees: keys are unique, every dependency
//! names a defined asset of the expected type, the graph has no cycle, every
//! partition mapping fits the partitions on both sides, and every asset's I/O
//! manager exists. Build errors are all reported together, each naming the
//! assets involved and saying what to change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use flowstone_partitions::PartitionMapping;

use crate::asset::{Asset, AssetBuilder, AssetDef};
use crate::context::Resources;
use crate::ids::AssetKey;
use crate::io::{FileIoManager, IoManager};
use crate::store::QueueLimits;

/// One problem found while building definitions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("asset {key}: {message}")]
    InvalidAsset { key: String, message: String },
    #[error(
        "asset key {key} is defined twice: at {first} and at {second}; rename one of them \
         (or give it a key prefix)"
    )]
    DuplicateKey {
        key: AssetKey,
        first: String,
        second: String,
    },
    #[error("asset {asset} depends on {dep}, which is not defined{hint}")]
    UnknownDependency {
        asset: AssetKey,
        dep: AssetKey,
        hint: String,
    },
    #[error(
        "assets form a cycle: {}; remove one of these dependencies",
        .cycle.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" -> ")
    )]
    Cycle { cycle: Vec<AssetKey> },
    #[error("asset {asset}: dependency {dep}: {message}")]
    BadMapping {
        asset: AssetKey,
        dep: AssetKey,
        message: String,
    },
    #[error(
        "asset {asset}: input {input} expects values of type {expected}, but {dep} produces \
         {found}"
    )]
    TypeMismatch {
        asset: AssetKey,
        input: String,
        dep: AssetKey,
        expected: String,
        found: String,
    },
    #[error(
        "asset {asset} uses I/O manager {name:?}, which is not configured; configured: {known}"
    )]
    UnknownIoManager {
        asset: AssetKey,
        name: String,
        known: String,
    },
    #[error("queue limit for {queue:?}: {message}")]
    BadQueueLimit { queue: String, message: String },
}

/// Every problem found while building definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid definitions: {one}"),
            many => {
                write!(f, "invalid definitions ({} problems):", many.len())?;
                for err in many {
                    write!(f, "\n  - {err}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for DefinitionErrors {}

/// Gathers assets, resources and I/O managers; see [`Definitions::builder`].
#[derive(Default)]
#[must_use]
pub struct DefinitionsBuilder {
    assets: Vec<AssetBuilder>,
    resources: Resources,
    io_managers: BTreeMap<String, Arc<dyn IoManager>>,
    queue_limits: Vec<(String, u32)>,
}

impl DefinitionsBuilder {
    /// Adds an asset declared with `#[asset]`.
    pub fn asset<A: Asset>(mut self) -> Self {
        self.assets.push(A::definition());
        self
    }

    /// Adds an asset made with [`AssetBuilder`].
    pub fn add_asset(mut self, asset: AssetBuilder) -> Self {
        self.assets.push(asset);
        self
    }

    /// Adds or replaces the resource of type `T`, handed to assets through
    /// `ctx.resource::<T>()`.
    pub fn resource<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.resources.insert(value);
        self
    }

    /// Adds or replaces the I/O manager called `name`. Without a `"default"`
    /// one, the engine stores JSON files under the store's directory.
    pub fn io_manager(mut self, name: impl Into<String>, io: impl IoManager) -> Self {
        self.io_managers.insert(name.into(), Arc::new(io));
        self
    }

    /// At most `limit` steps of queue `name` running at once, across every
    /// worker of the cluster, e.g. `.queue_limit("llm", 4)` for assets declared
    /// with `#[asset(queue = "llm")]`. The limit must be at least 1 and the
    /// queue must be one an asset uses.
    pub fn queue_limit(mut self, name: impl Into<String>, limit: u32) -> Self {
        self.queue_limits.push((name.into(), limit));
        self
    }

    /// Validates everything; see the module guarantees.
    ///
    /// # Errors
    ///
    /// Every problem found, together.
    pub fn build(self) -> Result<Definitions, DefinitionErrors> {
        let mut errors = Vec::new();

        // Check each asset on its own, then key uniqueness.
        let mut assets: Vec<AssetDef> = Vec::new();
        let mut index: HashMap<AssetKey, usize> = HashMap::new();
        for builder in self.assets {
            let def = match builder.build() {
                Ok(def) => def,
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|p| DefinitionError::InvalidAsset {
                        key: p.key,
                        message: p.message,
                    }));
                    continue;
                }
            };
            if let Some(&first) = index.get(&def.key) {
                errors.push(DefinitionError::DuplicateKey {
                    key: def.key.clone(),
                    first: assets[first].origin.to_string(),
                    second: def.origin.to_string(),
                });
                continue;
            }
            index.insert(def.key.clone(), assets.len());
            assets.push(def);
        }

        // Dependencies: defined, of the expected type, with a mapping that fits.
        let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); assets.len()];
        for (i, def) in assets.iter().enumerate() {
            for dep in &def.deps {
                let Some(&j) = index.get(&dep.key) else {
                    errors.push(DefinitionError::UnknownDependency {
                        asset: def.key.clone(),
                        dep: dep.key.clone(),
                        hint: suggestion(dep.key.as_str(), index.keys()),
                    });
                    continue;
                };
                let up = &assets[j];
                if let Some(expects) = &dep.expects
                    && *expects != up.output
                {
                    errors.push(DefinitionError::TypeMismatch {
                        asset: def.key.clone(),
                        input: dep.name.clone(),
                        dep: dep.key.clone(),
                        expected: expects.type_name().to_owned(),
                        found: up.output.type_name().to_owned(),
                    });
                }
                let mapping = dep.mapping.clone().unwrap_or_else(|| {
                    PartitionMapping::default_for(def.partitions.as_ref(), up.partitions.as_ref())
                });
                if let Err(err) = mapping.validate(def.partitions.as_ref(), up.partitions.as_ref())
                {
                    errors.push(DefinitionError::BadMapping {
                        asset: def.key.clone(),
                        dep: dep.key.clone(),
                        message: err.to_string(),
                    });
                }
                upstream[i].push(j);
            }
        }

        // I/O managers: "default" always exists (the engine supplies one).
        for def in &assets {
            if def.io_manager != "default" && !self.io_managers.contains_key(&def.io_manager) {
                let mut known: Vec<&str> = self.io_managers.keys().map(String::as_str).collect();
                if !known.contains(&"default") {
                    known.insert(0, "default");
                }
                errors.push(DefinitionError::UnknownIoManager {
                    asset: def.key.clone(),
                    name: def.io_manager.clone(),
                    known: known.join(", "),
                });
            }
        }

        // Queue limits: at least 1, once per queue, on a queue some asset uses.
        let used: BTreeSet<&str> = assets.iter().map(|def| def.queue.as_str()).collect();
        let mut queue_limits = QueueLimits::new();
        for (queue, limit) in &self.queue_limits {
            let message = if let Err(message) = crate::asset::check_queue_name(queue) {
                Some(message)
            } else if *limit == 0 {
                Some("the limit must be at least 1".to_owned())
            } else if queue_limits.contains_key(queue) {
                Some("given twice".to_owned())
            } else if !used.contains(queue.as_str()) {
                let known: Vec<&str> = used.iter().copied().collect();
                Some(format!(
                    "no asset uses this queue; queues in use: {}",
                    known.join(", ")
                ))
            } else {
                None
            };
            match message {
                Some(message) => errors.push(DefinitionError::BadQueueLimit {
                    queue: queue.clone(),
                    message,
                }),
                None => {
                    queue_limits.insert(queue.clone(), *limit);
                }
            }
        }

        // The graph: a topological order, or the cycle that prevents one.
        let order = match topological_order(&upstream) {
            Ok(order) => order,
            Err(cycle) => {
                let cycle = cycle.into_iter().map(|i| assets[i].key.clone()).collect();
                errors.push(DefinitionError::Cycle { cycle });
                Vec::new()
            }
        };
        if !errors.is_empty() {
            return Err(DefinitionErrors(errors));
        }

        let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); assets.len()];
        for (i, ups) in upstream.iter().enumerate() {
            for &j in ups {
                if !downstream[j].contains(&i) {
                    downstream[j].push(i);
                }
            }
        }
        let mut rank = vec![0; assets.len()];
        for (position, &i) in order.iter().enumerate() {
            rank[i] = position;
        }
        Ok(Definitions {
            assets: assets.into_iter().map(Arc::new).collect(),
            index,
            upstream,
            downstream,
            order,
            rank,
            resources: self.resources,
            io_managers: self.io_managers,
            queue_limits: Arc::new(queue_limits),
        })
    }
}

/// ` (did you mean X?)` for the closest defined key, or a list when few exist.
fn suggestion<'a>(missing: &str, known: impl Iterator<Item = &'a AssetKey>) -> String {
    let mut best: Option<(usize, &AssetKey)> = None;
    let mut all: Vec<&AssetKey> = Vec::new();
    for key in known {
        all.push(key);
        let distance = edit_distance(missing, key.as_str());
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, key));
        }
    }
    match best {
        Some((distance, key)) if distance <= missing.len().max(3) / 3 + 1 => {
            format!("; did you mean {key}?")
        }
        _ if all.is_empty() => "; no assets are defined".to_owned(),
        _ => {
            all.sort();
            let shown: Vec<&str> = all.iter().take(10).map(|k| k.as_str()).collect();
            let more = all.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("; defined assets: {}{more}", shown.join(", "))
        }
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// A topological order of the assets, upstream first; on a cycle, the assets of
/// one cycle listed upstream to downstream.
fn topological_order(upstream: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    use petgraph::graph::DiGraph;

    let mut graph = DiGraph::<usize, ()>::with_capacity(upstream.len(), 0);
    let nodes: Vec<_> = (0..upstream.len()).map(|i| graph.add_node(i)).collect();
    for (i, ups) in upstream.iter().enumerate() {
        for &j in ups {
            graph.add_edge(nodes[j], nodes[i], ());
        }
    }
    // Stable order: petgraph's toposort follows node order for ties.
    match petgraph::algo::toposort(&graph, None) {
        Ok(order) => Ok(order.into_iter().map(|n| graph[n]).collect()),
        Err(cycle) => {
            let start = graph[cycle.node_id()];
            Err(find_cycle(upstream, start))
        }
    }
}

/// A cycle through `start`, listed upstream to downstream and closed by
/// repeating its first asset.
fn find_cycle(upstream: &[Vec<usize>], start: usize) -> Vec<usize> {
    // Depth-first search along upstream edges until we come back to `start`.
    let mut stack = vec![(start, 0usize)];
    let mut on_path = vec![false; upstream.len()];
    let mut seen = vec![false; upstream.len()];
    on_path[start] = true;
    while let Some(&mut (node, ref mut next)) = stack.last_mut() {
        if let Some(&up) = upstream[node].get(*next) {
            *next += 1;
            if up == start {
                let mut cycle: Vec<usize> = stack.iter().map(|(n, _)| *n).collect();
                // `stack` reads downstream to upstream; reverse it.
                cycle.reverse();
                cycle.push(cycle[0]);
                return cycle;
            }
            if !on_path[up] && !seen[up] {
                on_path[up] = true;
                stack.push((up, 0));
            }
        } else {
            on_path[node] = false;
            seen[node] = true;
            stack.pop();
        }
    }
    vec![start, start]
}

/// The validated definitions of a code location.
pub struct Definitions {
    assets: Vec<Arc<AssetDef>>,
    index: HashMap<AssetKey, usize>,
    upstream: Vec<Vec<usize>>,
    downstream: Vec<Vec<usize>>,
    order: Vec<usize>,
    rank: Vec<usize>,
    resources: Resources,
    io_managers: BTreeMap<String, Arc<dyn IoManager>>,
    queue_limits: Arc<QueueLimits>,
}

impl Definitions {
    /// The queue limits declared with [`DefinitionsBuilder::queue_limit`].
    pub fn queue_limits(&self) -> &Arc<QueueLimits> {
        &self.queue_limits
    }

    /// The queues the assets use, sorted.
    pub fn queues(&self) -> Vec<&str> {
        let used: BTreeSet<&str> = self.assets.iter().map(|def| def.queue.as_str()).collect();
        used.into_iter().collect()
    }

    pub fn builder() -> DefinitionsBuilder {
        DefinitionsBuilder::default()
    }

    /// Every asset, upstream before downstream.
    pub fn assets(&self) -> impl Iterator<Item = &Arc<AssetDef>> {
        self.order.iter().map(|&i| &self.assets[i])
    }

    pub fn len(&self) -> usize {
        self.assets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    pub fn asset(&self, key: &AssetKey) -> Option<&Arc<AssetDef>> {
        self.index.get(key).map(|&i| &self.assets[i])
    }

    /// Looks up an asset by its key as typed by a user.
    ///
    /// # Errors
    ///
    /// A message naming the unknown key and the closest defined one.
    pub fn lookup(&self, key: &str) -> Result<&Arc<AssetDef>, String> {
        let parsed = AssetKey::new(key).map_err(|err| err.to_string())?;
        self.asset(&parsed)
            .ok_or_else(|| format!("unknown asset {key}{}", suggestion(key, self.index.keys())))
    }

    /// Assets that `key` reads directly.
    pub fn upstream_of(&self, key: &AssetKey) -> Vec<&Arc<AssetDef>> {
        self.neighbours(key, &self.upstream)
    }

    /// Assets that read `key` directly.
    pub fn downstream_of(&self, key: &AssetKey) -> Vec<&Arc<AssetDef>> {
        self.neighbours(key, &self.downstream)
    }

    fn neighbours(&self, key: &AssetKey, edges: &[Vec<usize>]) -> Vec<&Arc<AssetDef>> {
        let Some(&i) = self.index.get(key) else {
            return Vec::new();
        };
        edges[i].iter().map(|&j| &self.assets[j]).collect()
    }

    /// The position of `key` in the topological order (upstream first).
    pub fn rank(&self, key: &AssetKey) -> Option<usize> {
        self.index.get(key).map(|&i| self.rank[i])
    }

    /// The partition mapping of `asset`'s (first) dependency on `dep`,
    /// explicit or default.
    pub fn mapping(&self, asset: &AssetDef, dep: &AssetKey) -> Option<PartitionMapping> {
        let d = asset.deps.iter().find(|d| &d.key == dep)?;
        Some(self.dep_mapping(asset, d))
    }

    /// The partition mapping of one dependency of `asset`, explicit or default.
    pub fn dep_mapping(&self, asset: &AssetDef, dep: &crate::asset::DepDef) -> PartitionMapping {
        dep.mapping.clone().unwrap_or_else(|| {
            let up = self.asset(&dep.key).and_then(|up| up.partitions.as_ref());
            PartitionMapping::default_for(asset.partitions.as_ref(), up)
        })
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// The I/O manager called `name`; `"default"` falls back to `fallback`.
    pub fn io_manager(&self, name: &str) -> Option<Arc<dyn IoManager>> {
        self.io_managers.get(name).cloned()
    }

    /// Whether a `"default"` I/O manager was configured.
    pub fn has_default_io_manager(&self) -> bool {
        self.io_managers.contains_key("default")
    }

    /// A file I/O manager under `dir`, used when no `"default"` is configured.
    pub fn fallback_io_manager(dir: impl Into<std::path::PathBuf>) -> Arc<dyn IoManager> {
        Arc::new(FileIoManager::new(dir))
    }
}

impl fmt::Debug for Definitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Definitions")
            .field(
                "assets",
                &self.assets().map(|a| a.key.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(key: &str, deps: &[&str]) -> AssetBuilder {
        let mut b = AssetBuilder::new(key);
        for dep in deps {
            b = b.dep::<u32>(*dep);
        }
        b.compute(|_ctx, _inputs| async { Ok(1u32) })
    }

    #[test]
    fn orders_upstream_first() {
        let defs = Definitions::builder()
            .add_asset(asset("c", &["b"]))
            .add_asset(asset("b", &["a"]))
            .add_asset(asset("a", &[]))
            .build()
            .unwrap();
        let order: Vec<_> = defs.assets().map(|a| a.key.to_string()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        let b = AssetKey::new("b").unwrap();
        assert_eq!(defs.downstream_of(&b)[0].key.as_str(), "c");
        assert_eq!(defs.upstream_of(&b)[0].key.as_str(), "a");
    }

    #[test]
    fn names_the_cycle_in_order() {
        let err = Definitions::builder()
            .add_asset(asset("a", &["c"]))
            .add_asset(asset("b", &["a"]))
            .add_asset(asset("c", &["b"]))
            .add_asset(asset("d", &["a"]))
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("a -> b -> c -> a")
                || text.contains("b -> c -> a -> b")
                || text.contains("c -> a -> b -> c"),
            "{text}"
        );
    }

    #[test]
    fn reports_duplicates_unknown_deps_and_type_mismatches_together() {
        let err = Definitions::builder()
            .add_asset(asset("a", &[]).origin("mod_one::a"))
            .add_asset(asset("a", &[]).origin("mod_two::a"))
            .add_asset(asset("b", &["raw_flight"]))
            .add_asset(asset("raw_flights", &[]))
            .add_asset(
                AssetBuilder::new("c")
                    .dep::<String>("a")
                    .compute(|_, _| async { Ok(0u8) }),
            )
            .add_asset(asset("d", &[]).io_manager("s3"))
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        assert!(
            text.contains("defined twice: at mod_one::a and at mod_two::a"),
            "{text}"
        );
        assert!(
            text.contains("depends on raw_flight, which is not defined; did you mean raw_flights?"),
            "{text}"
        );
        assert!(
            text.contains("expects values of type alloc::string::String, but a produces u32"),
            "{text}"
        );
        assert!(
            text.contains("I/O manager \"s3\", which is not configured"),
            "{text}"
        );
    }

    #[test]
    fn lookup_suggests() {
        let defs = Definitions::builder()
            .add_asset(asset("daily_report", &[]))
            .build()
            .unwrap();
        assert!(
            defs.lookup("daily_reports")
                .unwrap_err()
                .contains("did you mean daily_report?")
        );
        assert!(
            defs.lookup("bad key")
                .unwrap_err()
                .contains("invalid asset key")
        );
    }
}
