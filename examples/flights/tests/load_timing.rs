//! How long the sources take to load the real data, printed for the record.
//!
//! Run with `cargo test -p flights --test load_timing -- --nocapture` (add
//! `--release` for the optimised figure). It asserts only what was loaded.

use std::path::PathBuf;
use std::time::Instant;

use flights::{FlightsSource, WeatherSource};
use jiff::Timestamp;
use jiff::civil::date;

#[test]
fn load_the_zip_once_then_serve_days_cheaply() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let flights = FlightsSource::open(&dir).unwrap();

    let started = Instant::now();
    let first = flights.day(date(2013, 1, 1)).unwrap();
    let load = started.elapsed();

    let started = Instant::now();
    let mut rows = 0;
    for date in flights.dates().unwrap() {
        rows += flights.day(date).unwrap().len();
    }
    let all_days = started.elapsed();

    let weather = WeatherSource::open(&dir).unwrap();
    let started = Instant::now();
    let hour = weather.hour(Timestamp::UNIX_EPOCH, Timestamp::MAX).unwrap();
    let weather_load = started.elapsed();

    eprintln!(
        "flights.csv.zip parsed in {load:?}; then all 365 days served in {all_days:?}; \
         weather.csv parsed in {weather_load:?}"
    );
    assert_eq!(first.len(), 842);
    assert_eq!(rows, 336_776);
    assert_eq!(hour.len(), 26_115);
}
