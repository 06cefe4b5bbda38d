//! The asset graph drawn on the server: what is drawn (assets, or groups of
//! them collapsed into one node), layers by longest path from the sources,
//! order within a layer by barycentric sweeps, SVG out.
//!
//! Layers run left to right (upstream on the left). Each node carries its
//! state as a colour and as a text marker, so states are told apart without
//! colour too. A large graph starts with its groups collapsed: an asset's
//! group path is its `group`, then the segments of its key's prefix, and
//! each collapsed group is one node counting its assets by state. Pan, zoom
//! and highlighting are done in the browser (`assets/graph.js`) on the
//! `data-` attributes written here.
//!
//! The layout depends only on the definitions and on which groups are open,
//! so it is computed once per grouping and cached ([`LayoutCache`]); the
//! states are filled in per request.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use flowstone_core::asset::AssetDef;
use flowstone_core::{AssetKey, Definitions};

const NODE_W: f64 = 180.0;
const NODE_H: f64 = 52.0;
const DUMMY_H: f64 = 8.0;
const GAP_X: f64 = 64.0;
const GAP_Y: f64 = 22.0;
const PAD: f64 = 16.0;

/// Above this many assets, the graph starts with its groups collapsed.
pub(crate) const COLLAPSE_ABOVE: usize = 150;

/// The most characters of a name a node shows (the whole name is in its
/// title and in the detail panel).
const NAME_CHARS: usize = 22;

/// What a node shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum NodeState {
    Fresh,
    Missing,
    Stale,
    Failed,
    Running,
}

impl NodeState {
    pub(crate) const ALL: [NodeState; 5] = [
        NodeState::Fresh,
        NodeState::Stale,
        NodeState::Failed,
        NodeState::Running,
        NodeState::Missing,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            NodeState::Fresh => "fresh",
            NodeState::Stale => "stale",
            NodeState::Failed => "failed",
            NodeState::Running => "running",
            NodeState::Missing => "missing",
        }
    }

    /// A marker that does not rely on colour.
    pub(crate) fn marker(self) -> &'static str {
        match self {
            NodeState::Fresh => "✓",
            NodeState::Stale => "↻",
            NodeState::Failed => "✕",
            NodeState::Running => "▶",
            NodeState::Missing => "○",
        }
    }
}

/// One node's label.
pub(crate) struct NodeInfo {
    pub state: NodeState,
    /// e.g. "365/365", or a group's counts by state.
    pub detail: String,
}

/// Which groups are drawn as one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Grouping {
    /// Whether groups are collapsed at all (only in large graphs).
    pub collapse: bool,
    /// Group paths drawn open.
    pub expanded: BTreeSet<String>,
}

impl Grouping {
    /// The grouping a page asks for: `expand` is a comma-separated list of
    /// open group paths, or `all` to open every group.
    pub(crate) fn new(defs: &Definitions, expand: Option<&str>) -> Grouping {
        let expand = expand.unwrap_or("").trim();
        if expand == "all" || defs.len() <= COLLAPSE_ABOVE {
            return Grouping::default();
        }
        Grouping {
            collapse: true,
            expanded: expand
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// The `expand` query value that gives this grouping back.
    pub(crate) fn query(&self) -> String {
        if !self.collapse {
            return String::new();
        }
        self.expanded.iter().cloned().collect::<Vec<_>>().join(",")
    }

    /// This grouping with `path` open too.
    pub(crate) fn with(&self, path: &str) -> Grouping {
        let mut open = self.clone();
        open.expanded.insert(path.to_owned());
        open
    }

    /// This grouping with `path` and the groups inside it closed.
    pub(crate) fn without(&self, path: &str) -> Grouping {
        let mut closed = self.clone();
        let inside = format!("{path}/");
        closed
            .expanded
            .retain(|p| p != path && !p.starts_with(&inside));
        closed
    }
}

/// An asset's group path: its group, then the segments of its key's prefix.
pub(crate) fn group_path(def: &AssetDef) -> Vec<&str> {
    let mut path: Vec<&str> = def.group.as_deref().into_iter().collect();
    let prefix = def.key.prefix();
    if !prefix.is_empty() {
        path.extend(prefix.split('/'));
    }
    path
}

/// A node of the drawn graph.
pub(crate) enum ViewNode {
    Asset(AssetKey),
    /// A collapsed group, with its assets in topological order.
    Group {
        path: String,
        members: Vec<AssetKey>,
    },
}

impl ViewNode {
    /// An id that stays the same across redraws of the same grouping.
    pub(crate) fn id(&self) -> String {
        match self {
            ViewNode::Asset(key) => format!("a:{key}"),
            ViewNode::Group { path, .. } => format!("g:{path}"),
        }
    }
}

/// The graph as drawn: assets and collapsed groups, and the edges between
/// them (several asset edges between two nodes drawn once).
pub(crate) struct GraphView {
    pub nodes: Vec<ViewNode>,
    pub edges: Vec<(usize, usize)>,
}

/// Which assets are drawn alone and which inside a collapsed group.
pub(crate) fn view(defs: &Definitions, grouping: &Grouping) -> GraphView {
    // How many assets each group path holds: a group of one is drawn as its
    // asset.
    let mut size: HashMap<String, usize> = HashMap::new();
    if grouping.collapse {
        for def in defs.assets() {
            let path = group_path(def);
            for end in 1..=path.len() {
                *size.entry(path[..end].join("/")).or_default() += 1;
            }
        }
    }

    // Each asset goes to its outermost closed group of more than one asset,
    // or stands alone; nodes come in the order of their first asset.
    let mut nodes: Vec<ViewNode> = Vec::new();
    let mut groups: HashMap<String, usize> = HashMap::new();
    let mut node_of: HashMap<AssetKey, usize> = HashMap::new();
    for def in defs.assets() {
        let path = group_path(def);
        let closed = (1..=path.len()).map(|end| path[..end].join("/")).find(|p| {
            grouping.collapse && !grouping.expanded.contains(p) && size.get(p) > Some(&1)
        });
        let index = match closed {
            Some(path) => {
                let index = *groups.entry(path.clone()).or_insert_with(|| {
                    nodes.push(ViewNode::Group {
                        path,
                        members: Vec::new(),
                    });
                    nodes.len() - 1
                });
                if let ViewNode::Group { members, .. } = &mut nodes[index] {
                    members.push(def.key.clone());
                }
                index
            }
            None => {
                nodes.push(ViewNode::Asset(def.key.clone()));
                nodes.len() - 1
            }
        };
        node_of.insert(def.key.clone(), index);
    }

    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut edges = Vec::new();
    for def in defs.assets() {
        let v = node_of[&def.key];
        for dep in &def.deps {
            let Some(&u) = node_of.get(&dep.key) else {
                continue;
            };
            if u != v && seen.insert((u, v)) {
                edges.push((u, v));
            }
        }
    }
    GraphView { nodes, edges }
}

/// One edge as drawn.
pub(crate) struct EdgeLine {
    pub from: usize,
    pub to: usize,
    /// The upstream node's right side, the middle of each layer it crosses,
    /// the downstream node's left side.
    pub points: Vec<(f64, f64)>,
    /// Drawn against the layers: collapsing groups can make a cycle of
    /// nodes out of a graph of assets without one.
    pub back: bool,
}

/// Positions of the nodes, by layer and order.
pub(crate) struct Layout {
    /// The top left corner of each node of the view.
    pub at: Vec<(f64, f64)>,
    pub edges: Vec<EdgeLine>,
    pub width: f64,
    pub height: f64,
}

/// Lays a view out: longest-path layers, a dummy node wherever an edge
/// crosses a layer (so long edges get a lane of their own instead of
/// passing behind nodes), then barycentric ordering.
pub(crate) fn layout(view: &GraphView) -> Layout {
    let n = view.nodes.len();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(u, v) in &view.edges {
        succs[u].push(v);
        preds[v].push(u);
    }

    // Layers: Kahn's order, a node one layer after its deepest placed
    // upstream. Collapsed groups can form a cycle: when nothing is ready,
    // the earliest unplaced node is placed anyway, and the edges into it
    // from unplaced nodes are drawn as back edges.
    let mut waiting: Vec<usize> = preds.iter().map(Vec::len).collect();
    let mut placed = vec![false; n];
    let mut layer_of: Vec<usize> = vec![0; n];
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
        .filter(|&v| waiting[v] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut next_forced = 0;
    let mut left = n;
    while left > 0 {
        let v = match ready.pop() {
            Some(std::cmp::Reverse(v)) => v,
            None => {
                while placed[next_forced] {
                    next_forced += 1;
                }
                next_forced
            }
        };
        if placed[v] {
            continue;
        }
        placed[v] = true;
        left -= 1;
        layer_of[v] = preds[v]
            .iter()
            .filter(|&&u| placed[u] && u != v)
            .map(|&u| layer_of[u] + 1)
            .max()
            .unwrap_or(0);
        for &w in &succs[v] {
            waiting[w] = waiting[w].saturating_sub(1);
            if waiting[w] == 0 && !placed[w] {
                ready.push(std::cmp::Reverse(w));
            }
        }
    }

    // Nodes: the view's, then one dummy per forward edge per layer crossed,
    // up to a budget: in a dense graph (groups of a large one) lanes for
    // every long edge would make the drawing grow with edges times layers,
    // so the edges past it are drawn straight across.
    let mut up: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut down: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut chains: Vec<(usize, usize, Vec<usize>, bool)> = Vec::new();
    let mut lanes_left = 4 * n + 1_000;
    for &(u, v) in &view.edges {
        if layer_of[u] >= layer_of[v] {
            chains.push((u, v, vec![u, v], true));
            continue;
        }
        let crossed = layer_of[v] - layer_of[u] - 1;
        if crossed > lanes_left {
            chains.push((u, v, vec![u, v], false));
            continue;
        }
        lanes_left -= crossed;
        let mut chain = vec![u];
        for l in layer_of[u] + 1..layer_of[v] {
            let dummy = layer_of.len();
            layer_of.push(l);
            up.push(Vec::new());
            down.push(Vec::new());
            chain.push(dummy);
        }
        chain.push(v);
        for pair in chain.windows(2) {
            down[pair[0]].push(pair[1]);
            up[pair[1]].push(pair[0]);
        }
        chains.push((u, v, chain, false));
    }
    let depth = layer_of.iter().copied().max().map_or(0, |d| d + 1);
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (node, &l) in layer_of.iter().enumerate() {
        layers[l].push(node);
    }

    // Order: sweep down by the mean position of upstream nodes, then up by
    // the mean position of downstream nodes, a few times.
    let mut position: Vec<f64> = vec![0.0; layer_of.len()];
    for nodes in &layers {
        for (i, &node) in nodes.iter().enumerate() {
            position[node] = i as f64;
        }
    }
    for sweep in 0..6 {
        let downward = sweep % 2 == 0;
        let order: Vec<usize> = if downward {
            (1..depth).collect()
        } else {
            (0..depth.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let mut keyed: Vec<(f64, usize)> = layers[l]
                .iter()
                .map(|&node| {
                    let neighbours = if downward { &up[node] } else { &down[node] };
                    let centre = if neighbours.is_empty() {
                        position[node]
                    } else {
                        neighbours.iter().map(|&m| position[m]).sum::<f64>()
                            / neighbours.len() as f64
                    };
                    (centre, node)
                })
                .collect();
            keyed.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(position[a.1].total_cmp(&position[b.1]))
            });
            layers[l] = keyed.into_iter().map(|(_, node)| node).collect();
            for (i, &node) in layers[l].iter().enumerate() {
                position[node] = i as f64;
            }
        }
    }

    // Coordinates: columns by layer, each column centred vertically; a
    // dummy takes a narrow slot.
    let slot = |node: usize| if node < n { NODE_H } else { DUMMY_H };
    let column_height = |nodes: &Vec<usize>| {
        nodes.iter().map(|&m| slot(m)).sum::<f64>() + (nodes.len() as f64 - 1.0).max(0.0) * GAP_Y
    };
    let tallest = layers.iter().map(column_height).fold(0.0, f64::max);
    let height = PAD * 2.0 + tallest;
    let width = PAD * 2.0 + depth as f64 * NODE_W + (depth as f64 - 1.0).max(0.0) * GAP_X;
    let mut at: Vec<(f64, f64)> = vec![(0.0, 0.0); layer_of.len()];
    for (l, nodes) in layers.iter().enumerate() {
        let mut y = PAD + (tallest - column_height(nodes)) / 2.0;
        let x = PAD + l as f64 * (NODE_W + GAP_X);
        for &node in nodes {
            at[node] = (x, y);
            y += slot(node) + GAP_Y;
        }
    }
    let edges = chains
        .into_iter()
        .map(|(from, to, chain, back)| {
            let mut points = Vec::new();
            for (i, &node) in chain.iter().enumerate() {
                let (x, y) = at[node];
                let mid = y + slot(node) / 2.0;
                if i == 0 {
                    points.push((x + NODE_W, mid));
                } else if i == chain.len() - 1 {
                    points.push((x - 2.0, mid));
                } else {
                    points.push((x, mid));
                    points.push((x + NODE_W, mid));
                }
            }
            EdgeLine {
                from,
                to,
                points,
                back,
            }
        })
        .collect();
    at.truncate(n);
    Layout {
        at,
        edges,
        width,
        height,
    }
}

/// A grouping's view and layout, computed once.
pub(crate) struct Drawn {
    pub grouping: Grouping,
    pub view: GraphView,
    pub layout: Layout,
}

/// Layouts by grouping. The definitions never change while serving, so an
/// entry stays right; the cache is emptied when it holds too many.
#[derive(Default)]
pub(crate) struct LayoutCache {
    drawn: Mutex<HashMap<Grouping, Arc<Drawn>>>,
}

impl LayoutCache {
    const MAX: usize = 32;

    pub(crate) fn get(&self, defs: &Definitions, grouping: &Grouping) -> Arc<Drawn> {
        let mut drawn = self.drawn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = drawn.get(grouping) {
            return found.clone();
        }
        let started = std::time::Instant::now();
        let view = view(defs, grouping);
        let layout = layout(&view);
        tracing::debug!(target: "flowstone::server", nodes = view.nodes.len(),
                        edges = view.edges.len(), ms = started.elapsed().as_secs_f64() * 1e3,
                        "graph laid out");
        if drawn.len() >= Self::MAX {
            drawn.clear();
        }
        let found = Arc::new(Drawn {
            grouping: grouping.clone(),
            view,
            layout,
        });
        drawn.insert(grouping.clone(), found.clone());
        found
    }
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// The SVG of the graph. Assets link to their pages and groups to the graph
/// with that group open, so it works without the script too; the script
/// turns a click into a selection. `info` is by node of the view.
pub(crate) fn svg(drawn: &Drawn, info: &[NodeInfo], encode: impl Fn(&str) -> String) -> String {
    let (view, layout) = (&drawn.view, &drawn.layout);
    let mut out = String::with_capacity(256 + view.nodes.len() * 600);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" id="graph-svg" class="graph" role="img" aria-label="asset graph" viewBox="0 0 {w} {h}" data-width="{w}" data-height="{h}" preserveAspectRatio="xMidYMid meet">"#,
        w = layout.width,
        h = layout.height
    );
    out.push_str(r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead"/></marker></defs>"#);

    // Edges first, under the nodes: a curve between layers, straight
    // through the lanes of crossed layers.
    out.push_str(r#"<g class="edges">"#);
    for edge in &layout.edges {
        let Some(&(x0, y0)) = edge.points.first() else {
            continue;
        };
        let mut d = format!("M {x0} {y0}");
        for (i, pair) in edge.points.windows(2).enumerate() {
            let ((x1, y1), (x2, y2)) = (pair[0], pair[1]);
            if edge.back {
                let bend = (y1.min(y2) - NODE_H).max(0.0);
                let _ = write!(d, " C {x1} {bend}, {x2} {bend}, {x2} {y2}");
            } else if i % 2 == 0 {
                let mid = (x1 + x2) / 2.0;
                let _ = write!(d, " C {mid} {y1}, {mid} {y2}, {x2} {y2}");
            } else {
                let _ = write!(d, " L {x2} {y2}");
            }
        }
        let _ = write!(
            out,
            r#"<path class="edge{back}" data-u="{u}" data-v="{v}" d="{d}" marker-end="url(#arrow)"/>"#,
            back = if edge.back { " back" } else { "" },
            u = edge.from,
            v = edge.to,
        );
    }
    out.push_str("</g><g class=\"nodes\">");

    for (i, node) in view.nodes.iter().enumerate() {
        let (x, y) = layout.at[i];
        let (state, detail) = match info.get(i) {
            Some(info) => (info.state, info.detail.as_str()),
            None => (NodeState::Missing, ""),
        };
        let id = escape(&node.id());
        match node {
            ViewNode::Asset(key) => {
                let name = escape(key.as_str());
                let _ = write!(
                    out,
                    r#"<a href="/assets/{href}" class="node-link"><g class="node state-{s}" data-n="{i}" data-id="{id}" data-asset="{name}" data-state="{s}" transform="translate({x} {y})"><title>{name}: {s} {detail}</title><rect class="box" width="{NODE_W}" height="{NODE_H}" rx="8"/><rect class="band" width="6" height="{NODE_H}" rx="3"/><text x="16" y="21" class="name">{short}</text><text x="16" y="40" class="detail">{m} {s} · {detail}</text></g></a>"#,
                    href = encode(key.as_str()),
                    s = state.name(),
                    m = state.marker(),
                    short = escape(&shorten(key.as_str(), NAME_CHARS)),
                    detail = escape(detail),
                );
            }
            ViewNode::Group { path, members } => {
                let open = drawn.grouping.with(path).query();
                let name = escape(path);
                let _ = write!(
                    out,
                    r#"<a href="/?expand={href}" class="node-link"><g class="node group state-{s}" data-n="{i}" data-id="{id}" data-group="{name}" data-members="{count}" data-state="{s}" transform="translate({x} {y})"><title>{name}: {count} assets, {detail}</title><rect class="stack" x="5" y="-5" width="{NODE_W}" height="{NODE_H}" rx="8"/><rect class="box" width="{NODE_W}" height="{NODE_H}" rx="8"/><rect class="band" width="6" height="{NODE_H}" rx="3"/><text x="16" y="21" class="name">▸ {short} ({count})</text><text x="16" y="40" class="detail">{detail}</text></g></a>"#,
                    href = encode(&open),
                    s = state.name(),
                    count = members.len(),
                    short = escape(&shorten(path, NAME_CHARS - 6)),
                    detail = escape(detail),
                );
            }
        }
    }
    out.push_str("</g></svg>");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use flowstone_core::AssetBuilder;

    use super::*;

    fn asset(key: &str, deps: &[&str]) -> AssetBuilder {
        let mut builder = AssetBuilder::new(key);
        for dep in deps {
            builder = builder.dep::<u32>(*dep);
        }
        builder.compute(|_ctx, _inputs| async move { Ok(1u32) })
    }

    fn drawn(defs: &Definitions, grouping: Grouping) -> Drawn {
        let view = view(defs, &grouping);
        let layout = layout(&view);
        Drawn {
            grouping,
            view,
            layout,
        }
    }

    fn node<'d>(drawn: &'d Drawn, id: &str) -> (usize, &'d ViewNode) {
        drawn
            .view
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.id() == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    #[test]
    fn long_edges_get_a_lane_and_layers_follow_the_longest_path() {
        let defs = Definitions::builder()
            .add_asset(asset("a", &[]))
            .add_asset(asset("b", &["a"]))
            .add_asset(asset("c", &["a", "b"]))
            .build()
            .unwrap();
        let drawn = drawn(&defs, Grouping::default());
        let at = |id: &str| drawn.layout.at[node(&drawn, id).0];
        assert!(
            at("a:a").0 < at("a:b").0 && at("a:b").0 < at("a:c").0,
            "one layer per step"
        );
        let (a, c) = (node(&drawn, "a:a").0, node(&drawn, "a:c").0);
        let long = drawn
            .layout
            .edges
            .iter()
            .find(|e| e.from == a && e.to == c)
            .unwrap();
        assert_eq!(
            long.points.len(),
            4,
            "through one dummy lane: {:?}",
            long.points
        );
        let by = at("a:b").1;
        let lane_y = long.points[1].1;
        assert!(
            lane_y < by || lane_y > by + NODE_H,
            "the lane does not cross node b"
        );
        let svg = svg(&drawn, &[], str::to_owned);
        assert_eq!(svg.matches("class=\"edge\"").count(), 3);
        assert!(svg.contains("data-state=\"missing\""));
        assert!(svg.contains(&format!("data-u=\"{a}\" data-v=\"{c}\"")));
    }

    /// `n` assets in groups of 50 by key prefix (`gNNN/aNNNNN`), each reading
    /// one to three earlier assets, mostly nearby.
    fn synthetic(n: usize) -> Definitions {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let key = |i: usize| format!("g{:03}/a{i:05}", i / 50);
        let mut builder = Definitions::builder();
        for i in 0..n {
            let deps: BTreeSet<usize> = if i == 0 {
                BTreeSet::new()
            } else {
                (0..1 + next(3))
                    .map(|_| {
                        if next(4) == 0 {
                            next(i)
                        } else {
                            i - 1 - next(i.min(60))
                        }
                    })
                    .collect()
            };
            let deps: Vec<String> = deps.into_iter().map(key).collect();
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            builder = builder.add_asset(asset(&key(i), &deps));
        }
        builder.build().unwrap()
    }

    #[test]
    fn large_graphs_start_collapsed_by_group_and_open_on_request() {
        let defs = synthetic(400);
        let closed = drawn(&defs, Grouping::new(&defs, None));
        assert_eq!(closed.view.nodes.len(), 8, "eight groups of fifty");
        let (g1, group) = node(&closed, "g:g001");
        let ViewNode::Group { members, .. } = group else {
            panic!("g001 is a group");
        };
        assert_eq!(members.len(), 50);
        assert!(members.contains(&AssetKey::new("g001/a00060").unwrap()));
        assert!(closed.view.edges.iter().any(|&(u, v)| u == g1 || v == g1));
        assert!(closed.view.edges.iter().all(|(u, v)| u != v));

        let open = drawn(&defs, Grouping::new(&defs, Some("g001")));
        assert_eq!(open.view.nodes.len(), 7 + 50);
        node(&open, "a:g001/a00060");
        assert_eq!(open.grouping.query(), "g001");
        assert_eq!(open.grouping.without("g001").query(), "");

        let all = drawn(&defs, Grouping::new(&defs, Some("all")));
        assert_eq!(all.view.nodes.len(), 400);
        let svg = svg(&closed, &[], str::to_owned);
        assert!(svg.contains("data-group=\"g001\" data-members=\"50\""));
        assert!(svg.contains("href=\"/?expand=g001\""));
    }

    #[test]
    fn collapsed_groups_that_form_a_cycle_still_lay_out() {
        // x/a -> y/b -> x/c: the groups x and y read each other.
        let mut builder = Definitions::builder();
        for i in 0..COLLAPSE_ABOVE {
            builder = builder.add_asset(asset(&format!("z/f{i}"), &[]));
        }
        let defs = builder
            .add_asset(asset("x/a", &[]))
            .add_asset(asset("y/b", &["x/a"]))
            .add_asset(asset("y/d", &[]))
            .add_asset(asset("x/c", &["y/b"]))
            .build()
            .unwrap();
        let drawn = drawn(&defs, Grouping::new(&defs, None));
        assert_eq!(drawn.view.nodes.len(), 3);
        assert_eq!(drawn.layout.edges.len(), 2);
        assert_eq!(drawn.layout.edges.iter().filter(|e| e.back).count(), 1);
    }

    /// Layout times at 1,000 and 10,000 assets, printed; the bounds are
    /// loose so a busy machine does not fail it (release figures are in
    /// the issue notes).
    #[test]
    fn layout_time_at_one_and_ten_thousand_assets() {
        for (n, grouping) in [
            (1_000, None),
            (1_000, Some("all")),
            (10_000, None),
            (10_000, Some("g007,g100")),
        ] {
            let defs = synthetic(n);
            let grouping = Grouping::new(&defs, grouping);
            let started = Instant::now();
            let drawn = drawn(&defs, grouping);
            let laid = started.elapsed();
            let info: Vec<NodeInfo> = (0..drawn.view.nodes.len())
                .map(|_| NodeInfo {
                    state: NodeState::Fresh,
                    detail: "1/1".to_owned(),
                })
                .collect();
            let started = Instant::now();
            let svg = svg(&drawn, &info, str::to_owned);
            let drawn_in = started.elapsed();
            eprintln!(
                "{n} assets, expand {:?}: {} nodes, {} edges, layout {:.1} ms, svg {:.1} ms, {} KiB",
                drawn.grouping.query(),
                drawn.view.nodes.len(),
                drawn.view.edges.len(),
                laid.as_secs_f64() * 1e3,
                drawn_in.as_secs_f64() * 1e3,
                svg.len() / 1024
            );
            assert!(laid.as_secs() < 20, "layout took {laid:?}");
        }
    }
}
