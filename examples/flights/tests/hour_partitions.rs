//! The hour partitions of `raw_weather` around the 2013 clock changes, on the real
//! `weather.csv`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use flights::{WeatherSource, daily_weather, hour_windows, new_york};
use jiff::civil::{Date, date};
use jiff::{Timestamp, ToSpan};

fn weather() -> WeatherSource {
    WeatherSource::open(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")).unwrap()
}

/// Checks the windows of `day` against plain jiff arithmetic and returns how many
/// distinct local hours they cover.
fn check_windows(day: Date) -> usize {
    let windows = hour_windows(day).unwrap();
    let midnight = day.to_zoned(new_york()).unwrap().timestamp();
    let next_midnight = day
        .tomorrow()
        .unwrap()
        .to_zoned(new_york())
        .unwrap()
        .timestamp();

    assert_eq!(windows.first().map(|w| w.start), Some(midnight));
    assert_eq!(windows.last().map(|w| w.end), Some(next_midnight));
    for pair in windows.windows(2) {
        assert_eq!(
            pair[0].end, pair[1].start,
            "windows of {day} must be contiguous"
        );
    }
    for window in &windows {
        assert_eq!(window.start.checked_add(1.hour()).unwrap(), window.end);
    }

    let distinct: BTreeSet<Timestamp> = windows.iter().map(|w| w.start).collect();
    distinct.len()
}

#[test]
fn spring_forward_day_has_23_hours() {
    assert_eq!(check_windows(date(2013, 3, 10)), 23);
}

#[test]
fn fall_back_day_has_25_hours() {
    assert_eq!(check_windows(date(2013, 11, 3)), 25);
}

#[test]
fn ordinary_day_has_24_hours() {
    assert_eq!(check_windows(date(2013, 7, 4)), 24);
}

#[test]
fn repeated_one_oclock_hours_are_separate_partitions() {
    let weather = weather();
    let windows = hour_windows(date(2013, 11, 3)).unwrap();

    // Local 01:00 EDT then 01:00 EST: the second and third windows.
    let first = weather.hour(windows[1].start, windows[1].end).unwrap();
    let second = weather.hour(windows[2].start, windows[2].end).unwrap();

    let hours = |obs: &[flights::WeatherObs]| -> BTreeSet<String> {
        obs.iter().map(|o| o.time_hour.to_string()).collect()
    };
    assert_eq!(
        hours(&first),
        BTreeSet::from(["2013-11-03T05:00:00Z".to_owned()])
    );
    assert_eq!(
        hours(&second),
        BTreeSet::from(["2013-11-03T06:00:00Z".to_owned()])
    );
    assert_eq!((first.len(), second.len()), (3, 3));
    for obs in first.iter().chain(&second) {
        assert_eq!(obs.time_hour.to_zoned(new_york()).hour(), 1);
    }
}

#[test]
fn hour_partitions_cover_the_day_exactly() {
    let weather = weather();

    // Observation counts of weather.csv for these local dates.
    for (day, rows) in [(date(2013, 3, 10), 69), (date(2013, 11, 3), 72)] {
        let windows = hour_windows(day).unwrap();
        let hours: Vec<_> = windows
            .iter()
            .map(|w| weather.hour(w.start, w.end).unwrap())
            .collect();
        for (window, obs) in windows.iter().zip(&hours) {
            assert!(obs.iter().all(|o| window.contains(o.time_hour)));
        }

        let daily = daily_weather(day, hours);

        assert_eq!(daily.hours as usize, windows.len());
        assert_eq!(daily.observations.len(), rows, "{day}");
        let origins: Vec<&str> = daily.origins.iter().map(|o| o.origin.as_str()).collect();
        assert_eq!(origins, ["EWR", "JFK", "LGA"]);
        assert_eq!(
            daily
                .origins
                .iter()
                .map(|o| o.observations as usize)
                .sum::<usize>(),
            rows
        );
    }
}
