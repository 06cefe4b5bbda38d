//! The asset graph drawn on the server: layers by longest path from the
//! sources, order within a layer by barycentric sweeps, SVG out.
//!
//! Layers run left to right (upstream on the left). Each node carries its
//! state as a colour and as a text marker, so states are told apart without
//! colour too.

use std::collections::HashMap;
use std::fmt::Write;

use flowstone_core::{AssetKey, Definitions};

const NODE_W: f64 = 180.0;
const NODE_H: f64 = 52.0;
const DUMMY_H: f64 = 8.0;
const GAP_X: f64 = 64.0;
const GAP_Y: f64 = 22.0;
const PAD: f64 = 16.0;

/// What a node shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeState {
    Fresh,
    Stale,
    Failed,
    Running,
    Missing,
}

impl NodeState {
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
    /// e.g. "365 / 365".
    pub detail: String,
}

/// An edge, upstream to downstream, with the points it passes.
pub(crate) type Edge = (AssetKey, AssetKey, Vec<(f64, f64)>);

/// Positions of the nodes, by layer and order.
pub(crate) struct Layout {
    /// `(key, x, y)` per asset.
    pub nodes: Vec<(AssetKey, f64, f64)>,
    /// Each edge as the points it passes: the upstream node's right side,
    /// the middle of each layer it crosses, the downstream node's left side.
    pub edges: Vec<Edge>,
    pub width: f64,
    pub height: f64,
}

/// Lays the graph out: longest-path layers, a dummy node wherever an edge
/// crosses a layer (so long edges get a lane of their own instead of
/// passing behind nodes), then barycentric ordering.
pub(crate) fn layout(defs: &Definitions) -> Layout {
    // Layers: a source is in layer 0, every other asset one after its
    // deepest upstream (the order of `assets()` is upstream first).
    let keys: Vec<AssetKey> = defs.assets().map(|a| a.key.clone()).collect();
    let index: HashMap<&AssetKey, usize> = keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut layer_of: Vec<usize> = vec![0; keys.len()];
    for (i, key) in keys.iter().enumerate() {
        layer_of[i] = defs
            .upstream_of(key)
            .iter()
            .filter_map(|up| index.get(&up.key))
            .map(|&u| layer_of[u] + 1)
            .max()
            .unwrap_or(0);
    }

    // Nodes: the assets, then one dummy per edge per layer crossed.
    let mut up: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
    let mut down: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
    let mut chains: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    for (v, key) in keys.iter().enumerate() {
        for upstream in defs.upstream_of(key) {
            let Some(&u) = index.get(&upstream.key) else {
                continue;
            };
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
            chains.push((u, v, chain));
        }
    }
    let depth = layer_of.iter().copied().max().map_or(0, |d| d + 1);
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (node, &l) in layer_of.iter().enumerate() {
        layers[l].push(node);
    }

    // Order: sweep down by the mean position of upstream nodes, then up by
    // the mean position of downstream nodes, a few times.
    let mut position: Vec<f64> = vec![0.0; layer_of.len()];
    let place = |layers: &Vec<Vec<usize>>, position: &mut Vec<f64>| {
        for nodes in layers {
            for (i, &n) in nodes.iter().enumerate() {
                position[n] = i as f64;
            }
        }
    };
    place(&layers, &mut position);
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
                .map(|&n| {
                    let neighbours = if downward { &up[n] } else { &down[n] };
                    let centre = if neighbours.is_empty() {
                        position[n]
                    } else {
                        neighbours.iter().map(|&m| position[m]).sum::<f64>()
                            / neighbours.len() as f64
                    };
                    (centre, n)
                })
                .collect();
            keyed.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(position[a.1].total_cmp(&position[b.1]))
            });
            layers[l] = keyed.into_iter().map(|(_, n)| n).collect();
            for (i, &n) in layers[l].iter().enumerate() {
                position[n] = i as f64;
            }
        }
    }

    // Coordinates: columns by layer, each column centred vertically; a
    // dummy takes a narrow slot.
    let slot = |n: usize| if n < keys.len() { NODE_H } else { DUMMY_H };
    let column_height = |nodes: &Vec<usize>| {
        nodes.iter().map(|&n| slot(n)).sum::<f64>() + (nodes.len() as f64 - 1.0).max(0.0) * GAP_Y
    };
    let tallest = layers.iter().map(column_height).fold(0.0, f64::max);
    let height = PAD * 2.0 + tallest;
    let width = PAD * 2.0 + depth as f64 * NODE_W + (depth as f64 - 1.0).max(0.0) * GAP_X;
    let mut at: Vec<(f64, f64)> = vec![(0.0, 0.0); layer_of.len()];
    for (l, nodes) in layers.iter().enumerate() {
        let mut y = PAD + (tallest - column_height(nodes)) / 2.0;
        let x = PAD + l as f64 * (NODE_W + GAP_X);
        for &n in nodes {
            at[n] = (x, y);
            y += slot(n) + GAP_Y;
        }
    }
    let nodes = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), at[i].0, at[i].1))
        .collect();
    let edges = chains
        .into_iter()
        .map(|(u, v, chain)| {
            let mut points = Vec::new();
            for (i, &n) in chain.iter().enumerate() {
                let (x, y) = at[n];
                let mid = y + slot(n) / 2.0;
                if i == 0 {
                    points.push((x + NODE_W, mid));
                } else if i == chain.len() - 1 {
                    points.push((x - 2.0, mid));
                } else {
                    points.push((x, mid));
                    points.push((x + NODE_W, mid));
                }
            }
            (keys[u].clone(), keys[v].clone(), points)
        })
        .collect();
    Layout {
        nodes,
        edges,
        width,
        height,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG of the graph, nodes linking to their asset pages.
pub(crate) fn svg(layout: &Layout, info: &HashMap<AssetKey, NodeInfo>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" aria-label="asset graph" viewBox="0 0 {w} {h}" width="{w}" height="{h}">"#,
        w = layout.width,
        h = layout.height
    );
    out.push_str(r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead"/></marker></defs>"#);

    // Edges first, under the nodes: a curve between layers, straight
    // through the lanes of crossed layers.
    for (from, to, points) in &layout.edges {
        let Some(&(x0, y0)) = points.first() else {
            continue;
        };
        let mut d = format!("M {x0} {y0}");
        for (i, pair) in points.windows(2).enumerate() {
            let ((x1, y1), (x2, y2)) = (pair[0], pair[1]);
            if i % 2 == 0 {
                let mid = (x1 + x2) / 2.0;
                let _ = write!(d, " C {mid} {y1}, {mid} {y2}, {x2} {y2}");
            } else {
                let _ = write!(d, " L {x2} {y2}");
            }
        }
        let _ = write!(
            out,
            r#"<path class="edge" data-from="{f}" data-to="{t}" d="{d}" marker-end="url(#arrow)"/>"#,
            f = escape(from.as_str()),
            t = escape(to.as_str()),
        );
    }

    for (key, x, y) in &layout.nodes {
        let (state, detail) = match info.get(key) {
            Some(i) => (i.state, i.detail.as_str()),
            None => (NodeState::Missing, ""),
        };
        let name = escape(key.as_str());
        let _ = write!(
            out,
            r#"<a href="/assets/{href}" class="node-link"><g class="node state-{s}" data-asset="{name}" data-state="{s}" transform="translate({x} {y})"><title>{name}: {s} {detail}</title><rect width="{NODE_W}" height="{NODE_H}" rx="8"/><rect class="band" width="6" height="{NODE_H}" rx="3"/><text x="16" y="21" class="name">{name}</text><text x="16" y="40" class="detail">{m} {s} · {detail}</text></g></a>"#,
            href = escape(&key.as_str().replace('/', "%2F")),
            s = state.name(),
            m = state.marker(),
            detail = escape(detail),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use flowstone_core::AssetBuilder;

    use super::*;

    fn asset(key: &str, deps: &[&str]) -> AssetBuilder {
        let mut builder = AssetBuilder::new(key);
        for dep in deps {
            builder = builder.dep::<u32>(*dep);
        }
        builder.compute(|_ctx, _inputs| async move { Ok(1u32) })
    }

    #[test]
    fn long_edges_get_a_lane_and_layers_follow_the_longest_path() {
        let defs = Definitions::builder()
            .add_asset(asset("a", &[]))
            .add_asset(asset("b", &["a"]))
            .add_asset(asset("c", &["a", "b"]))
            .build()
            .unwrap();
        let layout = layout(&defs);
        let x = |key: &str| {
            layout
                .nodes
                .iter()
                .find(|(k, _, _)| k.as_str() == key)
                .map(|(_, x, _)| *x)
                .unwrap()
        };
        assert!(x("a") < x("b") && x("b") < x("c"), "one layer per step");
        let long = layout
            .edges
            .iter()
            .find(|(f, t, _)| f.as_str() == "a" && t.as_str() == "c")
            .unwrap();
        assert_eq!(long.2.len(), 4, "through one dummy lane: {:?}", long.2);
        let (_, by, _) = layout
            .nodes
            .iter()
            .find(|(k, _, _)| k.as_str() == "b")
            .unwrap();
        let lane_y = long.2[1].1;
        assert!(
            lane_y < *by || lane_y > by + NODE_H,
            "the lane does not cross node b"
        );
        let svg = svg(&layout, &HashMap::new());
        assert_eq!(svg.matches("class=\"edge\"").count(), 3);
        assert!(svg.contains("data-state=\"missing\""));
    }
}
