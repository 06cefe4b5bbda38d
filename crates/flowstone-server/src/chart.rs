//! A small chart of one numeric metadata value over an asset's partitions
//! (rows per day, observations per hour), drawn on the server as inline
//! SVG: bars, each linking to its partition, up to [`BARS_UP_TO`] points; a
//! line, broken where partitions have no value, beyond.

use std::collections::HashMap;
use std::fmt::Write;

use flowstone_core::store::PartitionRecord;

use crate::graph::escape;

/// The most points a chart draws: the newest ones.
pub(crate) const MAX_POINTS: usize = 9000;
/// Up to this many points a chart is drawn as bars.
pub(crate) const BARS_UP_TO: usize = 400;

const W: f64 = 960.0;
const H: f64 = 220.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;

/// One partition's value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Point {
    /// The partition's index in its definition (0 for unpartitioned).
    pub index: u64,
    pub partition: String,
    pub value: f64,
}

/// The metadata keys with a number in the latest materialization of some
/// partition: those naming rows first (the usual thing to watch), then the
/// most common, then by name.
pub(crate) fn numeric_keys(records: &[PartitionRecord]) -> Vec<String> {
    let mut found: HashMap<&str, usize> = HashMap::new();
    for record in records {
        let Some(m) = &record.latest else { continue };
        for (key, value) in &m.metadata {
            if value.as_f64().is_some_and(f64::is_finite) {
                *found.entry(key.as_str()).or_default() += 1;
            }
        }
    }
    let mut keys: Vec<(&str, usize)> = found.into_iter().collect();
    let rows = |k: &str| !k.contains("rows");
    keys.sort_by(|a, b| {
        (rows(a.0), a.0 != "rows")
            .cmp(&(rows(b.0), b.0 != "rows"))
            .then(b.1.cmp(&a.1))
            .then(a.0.cmp(b.0))
    });
    keys.into_iter().map(|(k, _)| k.to_owned()).collect()
}

/// The values of `metric` by partition index, the newest [`MAX_POINTS`];
/// `index_of` gives a partition's index (records it cannot place are left
/// out).
pub(crate) fn points(
    records: &[PartitionRecord],
    metric: &str,
    index_of: impl Fn(Option<&str>) -> Option<u64>,
) -> Vec<Point> {
    let mut points: Vec<Point> = records
        .iter()
        .filter_map(|record| {
            let value = record.latest.as_ref()?.metadata.get(metric)?.as_f64()?;
            let partition = record.partition.as_ref().map(|p| p.as_str());
            Some(Point {
                index: index_of(partition)?,
                partition: partition.unwrap_or("").to_owned(),
                value,
            })
        })
        .filter(|p| p.value.is_finite())
        .collect();
    points.sort_by_key(|p| p.index);
    if points.len() > MAX_POINTS {
        points.drain(..points.len() - MAX_POINTS);
    }
    points
}

/// A round number at or above `x` (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8
/// times a power of ten), so the highest value fills most of the chart.
fn nice_ceil(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(x.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&v| v >= x * (1.0 - 1e-12))
        .unwrap_or(10.0 * power)
}

/// A number short enough for an axis: 950, 1.2k, 3.4M, 0.25.
pub(crate) fn short_number(x: f64) -> String {
    let a = x.abs();
    let (v, unit) = if a >= 1e9 {
        (x / 1e9, "G")
    } else if a >= 1e6 {
        (x / 1e6, "M")
    } else if a >= 1e4 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let text = if v.fract() == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        let t = format!("{v:.2}");
        t.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    format!("{text}{unit}")
}

/// The chart's SVG; `href` links a partition key to its materialization.
pub(crate) fn svg(points: &[Point], metric: &str, href: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{m} by partition" data-metric="{m}" data-points="{n}">"#,
        m = escape(metric),
        n = points.len(),
    );
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        out.push_str("</svg>");
        return out;
    };

    // Scales: x over the partition indexes shown, y from 0 (or the lowest
    // negative value) to a round number at or above the highest.
    let span = (last.index - first.index + 1) as f64;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / span;
    let x = |index: u64| LEFT + (index - first.index) as f64 * slot + slot / 2.0;
    let low = points.iter().map(|p| p.value).fold(0.0, f64::min);
    let high = points.iter().map(|p| p.value).fold(0.0, f64::max);
    let low = if low < 0.0 { -nice_ceil(-low) } else { 0.0 };
    let high = nice_ceil(high);
    let y = |v: f64| TOP + (high - v) / (high - low) * plot_h;

    // Grid and labels: four steps on y; the first, middle and last
    // partitions on x.
    for step in 0..=4 {
        let v = low + (high - low) * f64::from(step) / 4.0;
        let gy = y(v);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" x2="{x2}" y1="{gy:.1}" y2="{gy:.1}"/><text class="tick" x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = gy + 4.0,
            label = short_number(v),
        );
    }
    let middle = &points[points.len() / 2];
    let mut labelled: Vec<(&Point, &str)> = vec![(first, "start")];
    if points.len() > 2 {
        labelled.push((middle, "middle"));
    }
    if points.len() > 1 {
        labelled.push((last, "end"));
    }
    for (p, anchor) in labelled {
        let _ = write!(
            out,
            r#"<text class="tick" x="{tx:.1}" y="{ty}" text-anchor="{anchor}">{label}</text>"#,
            tx = x(p.index).clamp(LEFT, W - RIGHT),
            ty = H - 10.0,
            label = escape(&p.partition),
        );
    }

    if points.len() <= BARS_UP_TO {
        let bar = (slot * 0.8).max(1.0);
        let zero = y(0.0);
        for p in points {
            let top = y(p.value).min(zero);
            let height = (y(p.value) - zero).abs().max(0.5);
            let _ = write!(
                out,
                r#"<a href="{href}"><rect class="bar" data-partition="{key}" x="{bx:.2}" y="{top:.2}" width="{bar:.2}" height="{height:.2}"><title>{key}: {value}</title></rect></a>"#,
                href = escape(&href(&p.partition)),
                key = escape(&p.partition),
                bx = x(p.index) - bar / 2.0,
                value = p.value,
            );
        }
    } else {
        // One path, a new stroke after each gap in the partitions.
        let mut d = String::new();
        let mut previous: Option<u64> = None;
        for p in points {
            let verb = if previous.is_some_and(|i| i + 1 == p.index) {
                'L'
            } else {
                'M'
            };
            let _ = write!(d, "{verb}{:.1} {:.1} ", x(p.index), y(p.value));
            previous = Some(p.index);
        }
        let _ = write!(
            out,
            r#"<path class="line" d="{d}"><title>{m}: {n} partitions</title></path>"#,
            m = escape(metric),
            n = points.len()
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flowstone_core::store::{MaterializationRecord, PartitionRecord};
    use flowstone_core::{AssetKey, AssetPartition, MaterializationId, RunId, StepId, Trigger};

    use super::*;

    fn point(index: u64, value: f64) -> Point {
        Point {
            index,
            partition: format!("p{index}"),
            value,
        }
    }

    #[test]
    fn round_numbers_for_the_axis() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(1.0), 1.0);
        assert_eq!(nice_ceil(1.1), 1.2);
        assert_eq!(nice_ceil(730.0), 800.0);
        assert_eq!(nice_ceil(1014.0), 1200.0);
        assert!((nice_ceil(0.33) - 0.4).abs() < 1e-9);
        assert_eq!(short_number(950.0), "950");
        assert_eq!(short_number(12_500.0), "12.5k");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(2_000_000.0), "2M");
    }

    #[test]
    fn bars_link_to_partitions_and_lines_break_at_gaps() {
        let few = vec![point(0, 3.0), point(1, 5.0), point(3, 1.0)];
        let svg = svg(&few, "rows", |p| format!("/assets/a?partition={p}"));
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        assert!(svg.contains("href=\"/assets/a?partition=p3\""));
        assert!(svg.contains("<title>p1: 5</title>"));
        assert!(svg.contains(">5<") || svg.contains(">5</text>"), "{svg}");

        let mut many: Vec<Point> = (0..500).map(|i| point(i, i as f64)).collect();
        many.extend((600..700).map(|i| point(i, 1.0)));
        let svg = super::svg(&many, "rows", |p| p.to_owned());
        assert_eq!(svg.matches("class=\"bar\"").count(), 0);
        assert_eq!(
            svg.matches('M').count(),
            2,
            "one stroke per run of partitions"
        );
        assert!(svg.contains("data-points=\"600\""));

        let negative = vec![point(0, -4.0), point(1, 3.0)];
        let svg = super::svg(&negative, "delta", |p| p.to_owned());
        assert!(svg.contains(">-4<"), "{svg}");
    }

    #[test]
    fn numeric_keys_and_points_come_from_the_latest_materializations() {
        let record = |key: &str, metadata: serde_json::Value| {
            let metadata: BTreeMap<String, serde_json::Value> =
                serde_json::from_value(metadata).unwrap();
            let target = AssetPartition::new(AssetKey::new("a").unwrap(), Some(key.into()));
            let latest = MaterializationRecord {
                id: MaterializationId(1),
                target: target.clone(),
                run_id: RunId::new(),
                step_id: StepId(1),
                attempt: 1,
                started_at: jiff::Timestamp::UNIX_EPOCH,
                finished_at: jiff::Timestamp::UNIX_EPOCH,
                trigger: Trigger::Api,
                user: "u".to_owned(),
                code_version: "c".to_owned(),
                data_version: "d".to_owned(),
                metadata,
                location: String::new(),
                io_manager: "memory".to_owned(),
            };
            PartitionRecord {
                partition: target.partition,
                latest: Some(latest),
                failure: None,
            }
        };
        let records = vec![
            record(
                "2",
                serde_json::json!({"rows": 5, "note": "x", "ratio": 0.5}),
            ),
            record("1", serde_json::json!({"rows": 7, "a": 1, "rows_in": 2})),
        ];
        assert_eq!(numeric_keys(&records), ["rows", "rows_in", "a", "ratio"]);
        let points = points(&records, "rows", |k| k.and_then(|k| k.parse().ok()));
        assert_eq!(
            points,
            vec![
                Point {
                    index: 1,
                    partition: "1".into(),
                    value: 7.0
                },
                Point {
                    index: 2,
                    partition: "2".into(),
                    value: 5.0
                },
            ]
        );
    }
}
