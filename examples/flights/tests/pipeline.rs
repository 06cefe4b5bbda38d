//! The flights pipeline run through FlowStone (SQLite store, file I/O) on the
//! real data: the reports it stores match the figures that
//! `fixtures/expected.py` computed independently from the CSV, and the DST days
//! have the right number of hourly partitions.

use std::sync::Arc;

use flowstone::query::Direction;
use flowstone::{Engine, FileIoManager, SqliteStore};
use serde_json::Value;

fn expected() -> Value {
    let text = include_str!("fixtures/expected.json");
    serde_json::from_str(text).expect("expected.json is JSON")
}

async fn engine(dir: &std::path::Path) -> Engine {
    let store = SqliteStore::open(dir.to_str().unwrap()).await.unwrap();
    Engine::new(flights::definitions().unwrap(), Arc::new(store))
        .with_default_io(Arc::new(FileIoManager::new(dir.join("storage"))))
}

fn close(a: &Value, b: &Value, what: &str) {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => {
            let scale = x.abs().max(y.abs()).max(1.0);
            assert!((x - y).abs() <= 1e-9 * scale, "{what}: {x} != {y}");
        }
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// Compares a stored report's carriers with the independent figures.
fn check_carriers(stored: &Value, expected: &Value, day: &str) {
    let carriers = stored["carriers"].as_array().unwrap();
    let want = expected["carriers"].as_object().unwrap();
    assert_eq!(carriers.len(), want.len(), "{day}: number of carriers");
    for c in carriers {
        let code = c["carrier"].as_str().unwrap();
        let e = &want[code];
        let what = |field: &str| format!("{day} {code} {field}");
        close(&c["totals"]["flights"], &e["flights"], &what("flights"));
        close(
            &c["totals"]["cancelled"],
            &e["cancelled"],
            &what("cancelled"),
        );
        for field in ["mean_dep_delay_min", "mean_arr_delay_min", "on_time_pct"] {
            close(&c[field], &e[field], &what(field));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_reports_through_the_engine_match_the_independent_figures() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let expected = expected();
    for day in ["2013-03-10", "2013-11-03", "2013-07-04"] {
        let outcome = engine
            .materialize_with_upstream("daily_report", Some(day))
            .await
            .unwrap();
        assert_eq!(outcome.run.steps.failed, 0, "{day}");
        let (_, report) = engine.value("daily_report", Some(day)).await.unwrap();
        check_carriers(&report, &expected["days"][day], day);
    }

    // The DST days read 23 and 25 local hours of weather.
    let steps_of = |day: &'static str| {
        let engine = engine.clone();
        async move {
            let lineage = engine
                .lineage("daily_weather", Some(day), Direction::Upstream)
                .await
                .unwrap();
            lineage.nodes.len()
        }
    };
    assert_eq!(steps_of("2013-03-10").await, 23);
    assert_eq!(steps_of("2013-11-03").await, 25);

    // The cleaned flights record their row counts as metadata.
    let (record, _) = engine
        .value("cleaned_flights", Some("2013-07-04"))
        .await
        .unwrap();
    let rows_in = record.metadata["rows_in"].as_u64().unwrap();
    let cancelled = record.metadata["cancelled"].as_u64().unwrap();
    let rows_out = record.metadata["rows_out"].as_u64().unwrap();
    assert_eq!(
        rows_in,
        rows_out + cancelled + record.metadata["dropped"].as_u64().unwrap()
    );
    let total = expected["days"]["2013-07-04"]["rows"].as_u64();
    if let Some(total) = total {
        assert_eq!(rows_in, total);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_through_the_engine_matches_the_independent_figures() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let outcome = engine
        .materialize_with_upstream("weekly_report", Some("2013-03-04"))
        .await
        .unwrap();
    assert_eq!(outcome.run.steps.failed, 0);
    let (_, week) = engine
        .value("weekly_report", Some("2013-03-04"))
        .await
        .unwrap();
    check_carriers(
        &week,
        &expected()["weeks"]["2013-03-04"],
        "week of 2013-03-04",
    );

    // Impact: a change to one hour of weather reaches its day, that day's
    // cleaned flights and report, the week and the yearly ranking.
    let impact = engine
        .impact("raw_weather", Some("2013-03-05T08:00"))
        .unwrap();
    let names: Vec<String> = impact
        .iter()
        .map(|e| {
            format!(
                "{}{:?}",
                e.asset,
                e.partitions.iter().map(|p| p.as_str()).collect::<Vec<_>>()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "daily_weather[\"2013-03-05\"]",
            "cleaned_flights[\"2013-03-05\"]",
            "daily_report[\"2013-03-05\"]",
            "carrier_ranking[]",
            "weekly_report[\"2013-03-04\"]",
        ],
    );
}
