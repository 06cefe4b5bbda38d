//! The Rust reports on the real data agree with `fixtures/expected.json`, which
//! `fixtures/expected.py` computes from the raw CSV independently.
//!
//! Regenerate the fixture with `python3 examples/flights/tests/fixtures/expected.py`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use flights::{
    Airline, CarrierStats, DailyReport, FlightsSource, WeatherSource, carrier_ranking,
    clean_flights, daily_report, daily_weather, hour_windows, read_airlines, weekly_report,
};
use jiff::civil::Date;
use serde_json::Value;

struct Data {
    flights: FlightsSource,
    weather: WeatherSource,
    airlines: Vec<Airline>,
    expected: Value,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The sources, shared by every test of this file so the zip is parsed once.
fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| Data {
        flights: FlightsSource::open(data_dir()).unwrap(),
        weather: WeatherSource::open(data_dir()).unwrap(),
        airlines: read_airlines(data_dir()).unwrap(),
        expected: serde_json::from_str(include_str!("fixtures/expected.json")).unwrap(),
    })
}

/// Runs the daily assets of `date` as the orchestrator will: hour partitions of
/// weather, the day's weather, cleaning, then the report.
fn report_of(date: Date) -> DailyReport {
    let data = data();
    let hours = hour_windows(date)
        .unwrap()
        .into_iter()
        .map(|window| data.weather.hour(window.start, window.end).unwrap())
        .collect();
    let weather = daily_weather(date, hours);
    let cleaned = clean_flights(data.flights.day(date).unwrap(), &data.airlines, &weather);
    daily_report(date, &cleaned, &weather)
}

fn assert_close(what: &str, actual: Option<f64>, expected: &Value) {
    match (actual, expected.as_f64()) {
        (None, None) => {}
        (Some(actual), Some(expected)) => {
            let scale = expected.abs().max(1.0);
            assert!(
                (actual - expected).abs() <= 1e-9 * scale,
                "{what}: rust {actual}, python {expected}"
            );
        }
        (actual, _) => panic!("{what}: rust {actual:?}, python {expected}"),
    }
}

/// Compares per-carrier figures with a `carriers` object of the fixture.
fn assert_carriers_match(what: &str, carriers: &[&CarrierStats], expected: &Value) {
    let expected = expected.as_object().unwrap();
    let rust: BTreeSet<&str> = carriers.iter().map(|c| c.carrier.as_str()).collect();
    let python: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(rust, python, "{what}: carriers");

    for stats in carriers {
        let want = &expected[&stats.carrier];
        let what = format!("{what} {}", stats.carrier);
        assert_eq!(
            Some(stats.totals.flights),
            want["flights"].as_u64(),
            "{what}: flights"
        );
        assert_eq!(
            Some(stats.totals.cancelled),
            want["cancelled"].as_u64(),
            "{what}: cancelled"
        );
        assert_close(
            &format!("{what}: dep"),
            stats.mean_dep_delay_min,
            &want["mean_dep_delay_min"],
        );
        assert_close(
            &format!("{what}: arr"),
            stats.mean_arr_delay_min,
            &want["mean_arr_delay_min"],
        );
        assert_close(
            &format!("{what}: on time"),
            stats.on_time_pct,
            &want["on_time_pct"],
        );
    }
}

#[test]
fn daily_reports_match_python() {
    let days = data().expected["days"].as_object().unwrap();
    assert!(days.len() >= 4);

    for (day, expected) in days {
        let report = report_of(day.parse().unwrap());

        assert_eq!(
            Some(u64::from(report.rows)),
            expected["rows"].as_u64(),
            "{day}: rows"
        );
        assert_eq!(report.dropped, 0, "{day}: dropped");
        let cancelled: u64 = report.carriers.iter().map(|c| c.totals.cancelled).sum();
        assert_eq!(
            Some(cancelled),
            expected["cancelled"].as_u64(),
            "{day}: cancelled"
        );
        let carriers: Vec<&CarrierStats> = report.carriers.iter().collect();
        assert_carriers_match(day, &carriers, &expected["carriers"]);
    }
}

#[test]
fn weekly_report_matches_python() {
    let weeks = data().expected["weeks"].as_object().unwrap();

    for (week, expected) in weeks {
        let week_start: Date = week.parse().unwrap();
        let daily: Vec<DailyReport> = expected["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|day| report_of(day.as_str().unwrap().parse().unwrap()))
            .collect();

        let report = weekly_report(week_start, &daily).unwrap();

        assert_eq!(report.days.len(), 7);
        assert_eq!(
            Some(u64::from(report.rows)),
            expected["rows"].as_u64(),
            "{week}: rows"
        );
        let carriers: Vec<&CarrierStats> = report.carriers.iter().collect();
        assert_carriers_match(week, &carriers, &expected["carriers"]);
    }
}

#[test]
fn carrier_ranking_of_the_year_matches_python() {
    let expected = &data().expected["year"];
    let dates = data().flights.dates().unwrap();
    assert_eq!(Some(dates.len() as u64), expected["days"].as_u64());

    let daily: Vec<DailyReport> = dates.iter().map(|&date| report_of(date)).collect();
    let ranking = carrier_ranking(&daily).unwrap();

    let rows: u64 = daily.iter().map(|r| u64::from(r.rows)).sum();
    assert_eq!(Some(rows), expected["rows"].as_u64());
    assert_eq!(daily.iter().map(|r| r.dropped).sum::<u32>(), 0);
    let carriers: Vec<&CarrierStats> = ranking.carriers.iter().map(|r| &r.stats).collect();
    assert_carriers_match("year", &carriers, &expected["carriers"]);

    // Best first, ranks 1, 2, 3, ...
    let shares: Vec<f64> = carriers.iter().map(|c| c.on_time_pct.unwrap()).collect();
    assert!(
        shares.windows(2).all(|pair| pair[0] >= pair[1]),
        "{shares:?}"
    );
    let ranks: Vec<u32> = ranking.carriers.iter().map(|r| r.rank).collect();
    assert_eq!(ranks, (1..=ranks.len() as u32).collect::<Vec<_>>());
}

/// Asset values are stored as JSON between steps; reading one back must give the
/// same value, floats included.
#[test]
fn asset_values_survive_a_json_round_trip() {
    let data = data();
    let date = jiff::civil::date(2013, 11, 3);
    let hours: Vec<Vec<flights::WeatherObs>> = hour_windows(date)
        .unwrap()
        .into_iter()
        .map(|window| data.weather.hour(window.start, window.end).unwrap())
        .collect();
    let raw = data.flights.day(date).unwrap();
    let weather = daily_weather(date, hours.clone());
    let cleaned = clean_flights(raw.clone(), &data.airlines, &weather);
    let report = daily_report(date, &cleaned, &weather);

    fn round_trip<T>(value: &T) -> usize
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_string(value).unwrap();
        let back: T = serde_json::from_str(&json).unwrap();
        assert!(
            &back == value,
            "{} changed in a json round trip",
            std::any::type_name::<T>()
        );
        json.len()
    }
    let sizes = [
        ("raw_flights", round_trip(&raw)),
        ("raw_weather", round_trip(&hours)),
        ("daily_weather", round_trip(&weather)),
        ("cleaned_flights", round_trip(&cleaned)),
        ("daily_report", round_trip(&report)),
    ];
    eprintln!("json sizes for {date}: {sizes:?}");
}
