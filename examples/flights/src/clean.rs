//! Cleaning one day of raw flights: checks, the carrier join and the weather join.
//!
//! Every raw row ends in exactly one of three lists of [`CleanedFlights`]:
//! `flights` (departed), `cancelled` (no `dep_time`) or `dropped` (with a
//! [`DropReason`]), so `rows_in = rows_out + cancelled + dropped` always holds.
//!
//! The carrier join is an inner join: a carrier missing from `airlines.csv` drops
//! the row. The weather join is a left join: the observation at the flight's
//! origin for its scheduled hour (`origin` + `time_hour`) is attached when the day
//! has one, and a flight without one is kept with `weather: None` and counted in
//! `without_weather` (the weather file has gaps, e.g. after 2013-12-30 18:00).

use std::collections::HashMap;
use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::model::{Airline, RawFlight, WeatherObs};
use crate::weather::DailyWeather;

/// A checked flight with its carrier's name and the weather at departure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flight {
    /// Line in `flights.csv` the row came from.
    pub line: u64,
    pub carrier: String,
    pub carrier_name: String,
    pub flight: u32,
    pub tailnum: Option<String>,
    pub origin: String,
    pub dest: String,
    /// Local `HHMM` times as in the file; `dep_time` is `None` when cancelled.
    pub sched_dep_time: u16,
    pub dep_time: Option<u16>,
    pub sched_arr_time: u16,
    pub arr_time: Option<u16>,
    /// Delays in minutes; `arr_delay` is `None` when cancelled or diverted.
    pub dep_delay: Option<i32>,
    pub arr_delay: Option<i32>,
    pub air_time: Option<u32>,
    pub distance: u32,
    /// The scheduled hour in UTC.
    pub time_hour: Timestamp,
    /// The origin's observation for `time_hour`, if the weather has one.
    pub weather: Option<WeatherObs>,
}

/// A raw row left out of the cleaned flights, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedFlight {
    /// Line in `flights.csv`.
    pub line: u64,
    pub carrier: String,
    pub flight: u32,
    pub reason: DropReason,
}

/// Why a raw row was dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DropReason {
    /// The row belongs to another day than the one being cleaned.
    OtherDate { found: String, expected: Date },
    /// A local time column does not hold a valid `HHMM` time.
    InvalidTime { column: String, value: u16 },
    /// `hour`, `minute`, `sched_dep_time` and `time_hour` do not describe the same
    /// scheduled departure.
    ScheduleMismatch { detail: String },
    /// Exactly one of `dep_time` and `dep_delay` is present.
    DepartureMismatch,
    /// The carrier is not in `airlines.csv`.
    UnknownCarrier { carrier: String },
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OtherDate { found, expected } => {
                write!(f, "row is dated {found}, not {expected}")
            }
            Self::InvalidTime { column, value } => {
                write!(f, "{column} {value} is not a valid HHMM time")
            }
            Self::ScheduleMismatch { detail } => write!(f, "scheduled departure: {detail}"),
            Self::DepartureMismatch => write!(f, "dep_time and dep_delay are not both present"),
            Self::UnknownCarrier { carrier } => write!(f, "carrier {carrier} is not in airlines"),
        }
    }
}

/// Row counts of a cleaning, recorded as materialization metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanCounts {
    pub rows_in: u32,
    /// Departed flights kept.
    pub rows_out: u32,
    pub cancelled: u32,
    pub dropped: u32,
    /// Kept or cancelled flights with no weather observation attached.
    pub without_weather: u32,
}

/// One day of cleaned flights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanedFlights {
    pub date: Date,
    /// Departed flights, in file order.
    pub flights: Vec<Flight>,
    /// Cancelled flights (no `dep_time`), in file order.
    pub cancelled: Vec<Flight>,
    pub dropped: Vec<DroppedFlight>,
    pub counts: CleanCounts,
}

/// Cleans the raw flights of the day of `weather` (`weather.date`).
///
/// Checks, in order: the row's date is the day's; `sched_dep_time`, `dep_time`,
/// `sched_arr_time` and `arr_time` are valid `HHMM` times (`2400` allowed); `hour`
/// and `minute` split `sched_dep_time` and `time_hour` is that hour in
/// America/New_York; `dep_time` and `dep_delay` are present together; the carrier
/// is known. The first failed check drops the row with its reason.
pub fn clean_flights(
    raw: Vec<RawFlight>,
    airlines: &[Airline],
    weather: &DailyWeather,
) -> CleanedFlights {
    let date = weather.date;
    let names: HashMap<&str, &str> = airlines
        .iter()
        .map(|a| (a.carrier.as_str(), a.name.as_str()))
        .collect();
    let mut cleaned = CleanedFlights {
        date,
        flights: Vec::with_capacity(raw.len()),
        cancelled: Vec::new(),
        dropped: Vec::new(),
        counts: CleanCounts::default(),
    };

    for row in raw {
        cleaned.counts.rows_in += 1;

        let carrier_name = match check(&row, date, &names) {
            Ok(name) => name.to_owned(),
            Err(reason) => {
                cleaned.dropped.push(DroppedFlight {
                    line: row.line,
                    carrier: row.carrier,
                    flight: row.flight,
                    reason,
                });
                continue;
            }
        };

        let flight = Flight {
            weather: weather.observation(&row.origin, row.time_hour).cloned(),
            line: row.line,
            carrier: row.carrier,
            carrier_name,
            flight: row.flight,
            tailnum: row.tailnum,
            origin: row.origin,
            dest: row.dest,
            sched_dep_time: row.sched_dep_time,
            dep_time: row.dep_time,
            sched_arr_time: row.sched_arr_time,
            arr_time: row.arr_time,
            dep_delay: row.dep_delay,
            arr_delay: row.arr_delay,
            air_time: row.air_time,
            distance: row.distance,
            time_hour: row.time_hour,
        };
        if flight.weather.is_none() {
            cleaned.counts.without_weather += 1;
        }
        if flight.dep_time.is_some() {
            cleaned.flights.push(flight);
        } else {
            cleaned.cancelled.push(flight);
        }
    }

    cleaned.counts.rows_out = count(cleaned.flights.len());
    cleaned.counts.cancelled = count(cleaned.cancelled.len());
    cleaned.counts.dropped = count(cleaned.dropped.len());
    cleaned
}

/// Runs the checks of [`clean_flights`] on one row, giving the carrier's name.
fn check<'a>(
    row: &RawFlight,
    date: Date,
    names: &HashMap<&str, &'a str>,
) -> Result<&'a str, DropReason> {
    if Date::new(row.year, row.month, row.day).ok() != Some(date) {
        let found = format!("{}-{:02}-{:02}", row.year, row.month, row.day);
        return Err(DropReason::OtherDate {
            found,
            expected: date,
        });
    }

    let times = [
        ("sched_dep_time", Some(row.sched_dep_time)),
        ("dep_time", row.dep_time),
        ("sched_arr_time", Some(row.sched_arr_time)),
        ("arr_time", row.arr_time),
    ];
    for (column, value) in times {
        if let Some(value) = value.filter(|&v| !is_hhmm(v)) {
            return Err(DropReason::InvalidTime {
                column: column.to_owned(),
                value,
            });
        }
    }

    let split = u16::from(row.hour) * 100 + u16::from(row.minute);
    if split != row.sched_dep_time {
        let detail = format!(
            "hour {} and minute {} do not make sched_dep_time {}",
            row.hour, row.minute, row.sched_dep_time
        );
        return Err(DropReason::ScheduleMismatch { detail });
    }
    let local = row.time_hour.to_zoned(crate::new_york()).datetime();
    if local.date() != date || i32::from(local.hour()) != i32::from(row.hour) {
        let detail = format!(
            "time_hour {} is {local} locally, not hour {}",
            row.time_hour, row.hour
        );
        return Err(DropReason::ScheduleMismatch { detail });
    }

    if row.dep_time.is_some() != row.dep_delay.is_some() {
        return Err(DropReason::DepartureMismatch);
    }

    names
        .get(row.carrier.as_str())
        .copied()
        .ok_or_else(|| DropReason::UnknownCarrier {
            carrier: row.carrier.clone(),
        })
}

/// Whether `value` read as `HHMM` is a time of day, `2400` being end-of-day midnight.
fn is_hhmm(value: u16) -> bool {
    let (hour, minute) = (value / 100, value % 100);
    minute < 60 && (hour < 24 || value == 2400)
}

/// A list length as a count; a day never comes near `u32::MAX` rows.
fn count(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    use jiff::civil::date;

    fn airlines() -> Vec<Airline> {
        vec![Airline {
            carrier: "UA".into(),
            name: "United Air Lines Inc.".into(),
        }]
    }

    fn obs(origin: &str, time_hour: &str, temp: f64) -> WeatherObs {
        WeatherObs {
            origin: origin.into(),
            time_hour: time_hour.parse().unwrap(),
            temp: Some(temp),
            dewp: None,
            humid: None,
            wind_dir: None,
            wind_speed: Some(5.0),
            wind_gust: None,
            precip: Some(0.0),
            pressure: None,
            visib: Some(10.0),
        }
    }

    /// A flight of 2013-11-03 scheduled at local `hhmm`, in the hour `time_hour`.
    fn raw(hhmm: u16, time_hour: &str) -> RawFlight {
        RawFlight {
            line: 2,
            year: 2013,
            month: 11,
            day: 3,
            dep_time: Some(hhmm + 2),
            sched_dep_time: hhmm,
            dep_delay: Some(2),
            arr_time: Some(hhmm + 300),
            sched_arr_time: hhmm + 300,
            arr_delay: Some(0),
            carrier: "UA".into(),
            flight: 1,
            tailnum: None,
            origin: "EWR".into(),
            dest: "IAH".into(),
            air_time: Some(200),
            distance: 1400,
            hour: u8::try_from(hhmm / 100).unwrap(),
            minute: u8::try_from(hhmm % 100).unwrap(),
            time_hour: time_hour.parse().unwrap(),
        }
    }

    fn fall_back_weather() -> DailyWeather {
        crate::weather::daily_weather(
            date(2013, 11, 3),
            vec![
                vec![obs("EWR", "2013-11-03T05:00:00Z", 51.98)],
                vec![obs("EWR", "2013-11-03T06:00:00Z", 50.0)],
            ],
        )
    }

    #[test]
    fn repeated_local_hour_matches_weather_by_utc_hour() {
        // Both flights leave at local 01:30, one before and one after the clocks
        // fall back; each must get the observation of its own hour.
        let first = raw(130, "2013-11-03T05:00:00Z");
        let second = raw(130, "2013-11-03T06:00:00Z");

        let cleaned = clean_flights(vec![first, second], &airlines(), &fall_back_weather());

        assert_eq!(cleaned.counts.rows_out, 2, "dropped: {:?}", cleaned.dropped);
        let temps: Vec<_> = cleaned
            .flights
            .iter()
            .map(|f| f.weather.as_ref().and_then(|w| w.temp))
            .collect();
        assert_eq!(temps, [Some(51.98), Some(50.0)]);
    }

    #[test]
    fn flight_without_weather_is_kept_and_counted() {
        let cleaned = clean_flights(
            vec![raw(1015, "2013-11-03T15:00:00Z")],
            &airlines(),
            &fall_back_weather(),
        );

        assert_eq!(cleaned.counts.rows_out, 1);
        assert_eq!(cleaned.counts.without_weather, 1);
        assert_eq!(cleaned.flights[0].carrier_name, "United Air Lines Inc.");
    }

    #[test]
    fn every_row_lands_in_exactly_one_list() {
        let mut cancelled = raw(1015, "2013-11-03T15:00:00Z");
        cancelled.dep_time = None;
        cancelled.dep_delay = None;
        cancelled.arr_time = None;
        cancelled.arr_delay = None;
        let mut unknown = raw(1015, "2013-11-03T15:00:00Z");
        unknown.carrier = "ZZ".into();
        let mut bad_time = raw(1015, "2013-11-03T15:00:00Z");
        bad_time.arr_time = Some(1375);
        let mut wrong_hour = raw(1015, "2013-11-03T16:00:00Z");
        wrong_hour.line = 7;
        let mut no_delay = raw(1015, "2013-11-03T15:00:00Z");
        no_delay.dep_delay = None;
        let mut other_day = raw(1015, "2013-11-03T15:00:00Z");
        other_day.day = 4;
        let rows = vec![
            raw(1015, "2013-11-03T15:00:00Z"),
            cancelled,
            unknown,
            bad_time,
            wrong_hour,
            no_delay,
            other_day,
        ];

        let cleaned = clean_flights(rows, &airlines(), &fall_back_weather());

        let counts = cleaned.counts;
        assert_eq!(
            (
                counts.rows_in,
                counts.rows_out,
                counts.cancelled,
                counts.dropped
            ),
            (7, 1, 1, 5)
        );
        let reasons: Vec<String> = cleaned
            .dropped
            .iter()
            .map(|d| d.reason.to_string())
            .collect();
        assert_eq!(
            reasons,
            [
                "carrier ZZ is not in airlines",
                "arr_time 1375 is not a valid HHMM time",
                "scheduled departure: time_hour 2013-11-03T16:00:00Z is \
                 2013-11-03T11:00:00 locally, not hour 10",
                "dep_time and dep_delay are not both present",
                "row is dated 2013-11-04, not 2013-11-03",
            ]
        );
        assert_eq!(cleaned.dropped[2].line, 7);
    }
}
