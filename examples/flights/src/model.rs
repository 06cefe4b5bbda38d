//! Typed rows of the five nycflights13 files, as read and before any cleaning.
//!
//! Each field keeps the name of its CSV column. `NA` becomes `None`; integer columns
//! stay integers (all delays in the data are whole minutes, which keeps the sums in
//! the reports exact), measurements are `f64`. Times of day (`dep_time`,
//! `sched_dep_time`, ...) are local `HHMM` numbers exactly as in the file, where
//! `2400` means midnight at the end of the day.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One row of `airlines.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Airline {
    /// Two-letter carrier code, e.g. `UA`.
    pub carrier: String,
    pub name: String,
}

/// One row of `airports.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Airport {
    /// FAA code, e.g. `JFK`.
    pub faa: String,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// Altitude in feet.
    pub alt: i32,
    /// Offset from UTC in hours.
    pub tz: i8,
    /// Daylight saving rule: `A` (US standard), `U` (unknown) or `N` (none).
    pub dst: String,
    /// IANA time zone name; `None` for three airports.
    pub tzone: Option<String>,
}

/// One row of `planes.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plane {
    pub tailnum: String,
    /// Year of manufacture.
    pub year: Option<u16>,
    #[serde(rename = "type")]
    pub kind: String,
    pub manufacturer: String,
    pub model: String,
    pub engines: u8,
    pub seats: u16,
    /// Average cruising speed in mph.
    pub speed: Option<u16>,
    pub engine: String,
}

/// One row of `flights.csv`, typed but not yet checked for consistency.
///
/// The source guarantees that `year`, `month` and `day` form a valid date; whether
/// the other columns agree with each other is for [`crate::clean::clean_flights`]
/// to decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawFlight {
    /// Line in `flights.csv` this row came from, so a dropped row can be found.
    pub line: u64,
    /// Local date of the scheduled departure.
    pub year: i16,
    pub month: i8,
    pub day: i8,
    /// Actual departure, local `HHMM`; `None` for a cancelled flight.
    pub dep_time: Option<u16>,
    pub sched_dep_time: u16,
    /// Departure delay in minutes, negative when early.
    pub dep_delay: Option<i32>,
    pub arr_time: Option<u16>,
    pub sched_arr_time: u16,
    /// Arrival delay in minutes; `None` for cancelled and diverted flights.
    pub arr_delay: Option<i32>,
    pub carrier: String,
    pub flight: u32,
    pub tailnum: Option<String>,
    pub origin: String,
    pub dest: String,
    /// Minutes in the air.
    pub air_time: Option<u32>,
    /// Miles between the airports.
    pub distance: u32,
    /// `sched_dep_time` split into local hour and minute.
    pub hour: u8,
    pub minute: u8,
    /// The scheduled departure truncated to the hour, in UTC.
    pub time_hour: Timestamp,
}

/// One row of `weather.csv`: an hourly observation at one of the three origins.
///
/// The file's local `year,month,day,hour` columns are checked against `time_hour`
/// while reading and not kept: they are `time_hour` seen in America/New_York.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeatherObs {
    /// `EWR`, `JFK` or `LGA`.
    pub origin: String,
    /// The hour observed, in UTC.
    pub time_hour: Timestamp,
    /// Temperature in °F.
    pub temp: Option<f64>,
    /// Dew point in °F.
    pub dewp: Option<f64>,
    /// Relative humidity in percent.
    pub humid: Option<f64>,
    /// Wind direction in degrees.
    pub wind_dir: Option<u16>,
    /// Wind speed in mph.
    pub wind_speed: Option<f64>,
    /// Gust speed in mph.
    pub wind_gust: Option<f64>,
    /// Precipitation in inches.
    pub precip: Option<f64>,
    /// Sea level pressure in millibars.
    pub pressure: Option<f64>,
    /// Visibility in miles.
    pub visib: Option<f64>,
}
