//! The data logic of FlowStone's main example: a year of flights from New York
//! (nycflights13, 2013), turned into daily reports.
//!
//! This crate knows nothing of the orchestrator. Each asset of the example maps to
//! a source or a pure function here; all partitions are local to America/New_York:
//!
//! | asset | partition | computed by |
//! | --- | --- | --- |
//! | `airlines`, `airports`, `planes` | none | [`read_airlines`], [`read_airports`], [`read_planes`] |
//! | `raw_flights` | day | [`FlightsSource::day`] |
//! | `raw_weather` | hour | [`WeatherSource::hour`] over a window of [`hour_windows`] |
//! | `daily_weather` | day | [`daily_weather`] |
//! | `cleaned_flights` | day | [`clean_flights`] |
//! | `daily_report` | day | [`daily_report`] |
//! | `weekly_report` | week from Monday | [`weekly_report`] |
//! | `carrier_ranking` | none | [`carrier_ranking`] |
//!
//! Every asset value is a plain type that is `Serialize + Deserialize`, so it can be
//! stored as JSON between steps. Input files are parsed strictly, failing with a
//! [`DataError`] that names the file, line and column; what the functions after
//! the sources receive is never rejected, only recorded (dropped rows carry a
//! reason) or reported as missing (`None` measures).
//!
//! `tests/reports_match_python.rs` checks the reports on the real data against
//! `tests/fixtures/expected.json`, which `tests/fixtures/expected.py` (Python 3
//! standard library only) computes from the raw CSV; rerun the script after
//! changing the data or a definition.

pub mod clean;
pub mod error;
pub mod model;
pub mod report;
pub mod source;
pub mod weather;

pub use clean::{CleanCounts, CleanedFlights, DropReason, DroppedFlight, Flight, clean_flights};
pub use error::{DataError, ReportError};
pub use model::{Airline, Airport, Plane, RawFlight, WeatherObs};
pub use report::{
    CarrierRanking, CarrierStats, CarrierTotals, DailyReport, RankedCarrier, RouteCount,
    WeeklyReport, carrier_ranking, daily_report, weekly_report, worst_weather_hour,
};
pub use source::{FlightsSource, WeatherSource, read_airlines, read_airports, read_planes};
pub use weather::{DailyWeather, HourWindow, OriginWeather, daily_weather, hour_windows};

/// Name of the time zone all partitions of the example are local to.
pub const TIME_ZONE: &str = "America/New_York";

/// The time zone [`TIME_ZONE`], compiled into the binary so that no lookup can fail
/// and every host agrees on it.
pub fn new_york() -> jiff::tz::TimeZone {
    jiff::tz::get!("America/New_York")
}

pub mod assets;

pub use assets::{definitions, definitions_with};
