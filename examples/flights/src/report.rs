//! Daily and weekly carrier reports and the carrier ranking of the year.
//!
//! Every report keeps, per carrier, the integer sums and counts behind its means
//! ([`CarrierTotals`]), so a week or a year is aggregated exactly by adding totals,
//! never by averaging averages. The derived measures ([`CarrierStats`]) are always
//! recomputed from totals:
//!
//! - `flights`: every flight scheduled, including cancelled ones (dropped rows are
//!   not flights);
//! - `mean_dep_delay_min`, `mean_arr_delay_min`: means over the flights where the
//!   delay is present, `None` when there is none;
//! - `on_time_pct`: `100 × (arrivals with arr_delay <= 15) / (arrivals with
//!   arr_delay present)`, `None` when there is none.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet};

use jiff::ToSpan;
use jiff::civil::{Date, Weekday};
use serde::{Deserialize, Serialize};

use crate::clean::{CleanedFlights, Flight};
use crate::error::ReportError;
use crate::model::WeatherObs;
use crate::weather::DailyWeather;

/// An arrival at most this many minutes late is on time.
pub const ON_TIME_MAX_DELAY_MIN: i32 = 15;

/// How many routes [`DailyReport::busiest_routes`] lists.
pub const BUSIEST_ROUTES: usize = 5;

/// The additive sums and counts of one carrier over some days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierTotals {
    pub flights: u64,
    pub cancelled: u64,
    /// Flights with a `dep_delay`, and the sum of those delays in minutes.
    pub dep_delays: u64,
    pub dep_delay_sum_min: i64,
    /// Flights with an `arr_delay`, and the sum of those delays in minutes.
    pub arr_delays: u64,
    pub arr_delay_sum_min: i64,
    /// Flights with `arr_delay <= 15`.
    pub on_time: u64,
}

impl CarrierTotals {
    /// Adds one flight; `cancelled` says which list of the day it came from.
    fn add_flight(&mut self, flight: &Flight, cancelled: bool) {
        self.flights += 1;
        self.cancelled += u64::from(cancelled);
        if let Some(delay) = flight.dep_delay {
            self.dep_delays += 1;
            self.dep_delay_sum_min += i64::from(delay);
        }
        if let Some(delay) = flight.arr_delay {
            self.arr_delays += 1;
            self.arr_delay_sum_min += i64::from(delay);
            self.on_time += u64::from(delay <= ON_TIME_MAX_DELAY_MIN);
        }
    }

    /// Adds another period's totals to these.
    pub fn merge(&mut self, other: &Self) {
        self.flights += other.flights;
        self.cancelled += other.cancelled;
        self.dep_delays += other.dep_delays;
        self.dep_delay_sum_min += other.dep_delay_sum_min;
        self.arr_delays += other.arr_delays;
        self.arr_delay_sum_min += other.arr_delay_sum_min;
        self.on_time += other.on_time;
    }

    pub fn mean_dep_delay_min(&self) -> Option<f64> {
        mean(self.dep_delay_sum_min, self.dep_delays)
    }

    pub fn mean_arr_delay_min(&self) -> Option<f64> {
        mean(self.arr_delay_sum_min, self.arr_delays)
    }

    pub fn on_time_pct(&self) -> Option<f64> {
        (self.arr_delays > 0).then(|| 100.0 * self.on_time as f64 / self.arr_delays as f64)
    }

    /// Compares on-time shares exactly (by cross-multiplying the counts); a carrier
    /// without arrivals comes before any with some.
    fn cmp_on_time(&self, other: &Self) -> Ordering {
        match (self.arr_delays, other.arr_delays) {
            (0, 0) => Ordering::Equal,
            (0, _) => Ordering::Less,
            (_, 0) => Ordering::Greater,
            (mine, theirs) => {
                let mine_scaled = u128::from(self.on_time) * u128::from(theirs);
                let theirs_scaled = u128::from(other.on_time) * u128::from(mine);
                mine_scaled.cmp(&theirs_scaled)
            }
        }
    }
}

fn mean(sum: i64, count: u64) -> Option<f64> {
    (count > 0).then(|| sum as f64 / count as f64)
}

/// One carrier's totals and the measures derived from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarrierStats {
    pub carrier: String,
    pub name: String,
    pub totals: CarrierTotals,
    pub mean_dep_delay_min: Option<f64>,
    pub mean_arr_delay_min: Option<f64>,
    pub on_time_pct: Option<f64>,
}

impl CarrierStats {
    fn new(carrier: String, name: String, totals: CarrierTotals) -> Self {
        Self {
            carrier,
            name,
            mean_dep_delay_min: totals.mean_dep_delay_min(),
            mean_arr_delay_min: totals.mean_arr_delay_min(),
            on_time_pct: totals.on_time_pct(),
            totals,
        }
    }
}

/// Flights scheduled on one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCount {
    pub origin: String,
    pub dest: String,
    pub flights: u32,
}

/// One day's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyReport {
    pub date: Date,
    /// Raw rows of the day, including dropped ones.
    pub rows: u32,
    /// Rows dropped by cleaning, not counted in any carrier.
    pub dropped: u32,
    /// One entry per carrier that flew, sorted by carrier code.
    pub carriers: Vec<CarrierStats>,
    /// The [`BUSIEST_ROUTES`] routes with the most scheduled flights (cancelled
    /// included), most first; ties by origin, then destination, ascending.
    pub busiest_routes: Vec<RouteCount>,
    /// The day's worst observation, see [`worst_weather_hour`].
    pub worst_weather_hour: Option<WeatherObs>,
}

/// Builds the report of `date` from that day's cleaned flights and weather.
pub fn daily_report(date: Date, flights: &CleanedFlights, weather: &DailyWeather) -> DailyReport {
    let all = flights.flights.iter().map(|f| (f, false));
    let all = all.chain(flights.cancelled.iter().map(|f| (f, true)));

    let mut carriers: BTreeMap<&str, (&str, CarrierTotals)> = BTreeMap::new();
    let mut routes: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for (flight, cancelled) in all {
        let (_, totals) = carriers
            .entry(&flight.carrier)
            .or_insert((&flight.carrier_name, CarrierTotals::default()));
        totals.add_flight(flight, cancelled);
        *routes.entry((&flight.origin, &flight.dest)).or_default() += 1;
    }

    // The map is ordered by route, and the sort is stable, so equal counts keep
    // that order.
    let mut routes: Vec<_> = routes.into_iter().collect();
    routes.sort_by_key(|&(_, flights)| Reverse(flights));
    let busiest_routes = routes
        .into_iter()
        .take(BUSIEST_ROUTES)
        .map(|((origin, dest), flights)| RouteCount {
            origin: origin.to_owned(),
            dest: dest.to_owned(),
            flights,
        })
        .collect();

    DailyReport {
        date,
        rows: flights.counts.rows_in,
        dropped: flights.counts.dropped,
        carriers: carriers
            .into_iter()
            .map(|(carrier, (name, totals))| {
                CarrierStats::new(carrier.to_owned(), name.to_owned(), totals)
            })
            .collect(),
        busiest_routes,
        worst_weather_hour: worst_weather_hour(weather).cloned(),
    }
}

/// The day's worst observation: the lowest visibility; among equals the highest
/// precipitation, then the highest wind speed (a missing value counts as the
/// mildest), then the earliest hour, then the origin's code. Observations without
/// visibility are not considered; `None` when no observation has one.
pub fn worst_weather_hour(weather: &DailyWeather) -> Option<&WeatherObs> {
    let mildest = f64::NEG_INFINITY;
    weather
        .observations
        .iter()
        .filter(|obs| obs.visib.is_some())
        .min_by(|a, b| {
            let visib = |o: &WeatherObs| o.visib.unwrap_or(f64::INFINITY);
            let precip = |o: &WeatherObs| o.precip.unwrap_or(mildest);
            let wind = |o: &WeatherObs| o.wind_speed.unwrap_or(mildest);
            visib(a)
                .total_cmp(&visib(b))
                .then(precip(b).total_cmp(&precip(a)))
                .then(wind(b).total_cmp(&wind(a)))
                .then(a.time_hour.cmp(&b.time_hour))
                .then(a.origin.cmp(&b.origin))
        })
}

/// One week's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeeklyReport {
    /// The Monday the week starts on.
    pub week_start: Date,
    /// The days the report covers, ascending: all seven, or fewer at the edges of
    /// the data.
    pub days: Vec<Date>,
    pub rows: u32,
    pub dropped: u32,
    /// One entry per carrier that flew during the week, sorted by carrier code.
    pub carriers: Vec<CarrierStats>,
}

/// Aggregates the daily reports of the week starting on Monday `week_start`.
///
/// # Errors
///
/// Fails if `week_start` is not a Monday, or a report lies outside the week or
/// appears twice.
pub fn weekly_report(week_start: Date, daily: &[DailyReport]) -> Result<WeeklyReport, ReportError> {
    let weekday = week_start.weekday();
    if weekday != Weekday::Monday {
        return Err(ReportError::WeekStart {
            week_start,
            weekday,
        });
    }
    // A Monday this close to the end of the calendar has no room for a week.
    let week_end = week_start.checked_add(7.days()).unwrap_or(Date::MAX);
    if let Some(report) = daily
        .iter()
        .find(|r| r.date < week_start || r.date >= week_end)
    {
        return Err(ReportError::OutsideWeek {
            date: report.date,
            week_start,
        });
    }

    let summed = sum_reports(daily)?;
    Ok(WeeklyReport {
        week_start,
        days: summed.days,
        rows: summed.rows,
        dropped: summed.dropped,
        carriers: summed.carriers,
    })
}

/// The carriers of a period ranked by their on-time share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarrierRanking {
    /// First and last day covered, `None` when no report was given.
    pub first_day: Option<Date>,
    pub last_day: Option<Date>,
    pub days: u32,
    /// Best first, see [`carrier_ranking`].
    pub carriers: Vec<RankedCarrier>,
}

/// A carrier's place in a [`CarrierRanking`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedCarrier {
    /// 1 for the best; every carrier has its own rank.
    pub rank: u32,
    pub stats: CarrierStats,
}

/// Ranks the carriers over all `daily` reports by on-time share, best first.
///
/// The shares are compared exactly from their counts. Ties go to the carrier
/// with more flights, then to the smaller carrier code, so the order is the same
/// whatever order the reports come in. Carriers without any arrival delay come
/// last.
///
/// # Errors
///
/// Fails if a day appears twice.
pub fn carrier_ranking(daily: &[DailyReport]) -> Result<CarrierRanking, ReportError> {
    let summed = sum_reports(daily)?;

    let mut carriers = summed.carriers;
    carriers.sort_by(|a, b| {
        b.totals
            .cmp_on_time(&a.totals)
            .then(b.totals.flights.cmp(&a.totals.flights))
            .then(a.carrier.cmp(&b.carrier))
    });

    Ok(CarrierRanking {
        first_day: summed.days.first().copied(),
        last_day: summed.days.last().copied(),
        days: u32::try_from(summed.days.len()).unwrap_or(u32::MAX),
        carriers: carriers
            .into_iter()
            .zip(1..)
            .map(|(stats, rank)| RankedCarrier { rank, stats })
            .collect(),
    })
}

/// The sum of some daily reports.
struct Summed {
    days: Vec<Date>,
    rows: u32,
    dropped: u32,
    /// Sorted by carrier code.
    carriers: Vec<CarrierStats>,
}

/// Adds up daily reports, refusing a day given twice.
fn sum_reports(daily: &[DailyReport]) -> Result<Summed, ReportError> {
    let mut days = BTreeSet::new();
    let mut carriers: BTreeMap<&str, (&str, CarrierTotals)> = BTreeMap::new();
    let (mut rows, mut dropped) = (0u32, 0u32);

    for report in daily {
        if !days.insert(report.date) {
            return Err(ReportError::DuplicateDay { date: report.date });
        }
        rows = rows.saturating_add(report.rows);
        dropped = dropped.saturating_add(report.dropped);
        for stats in &report.carriers {
            let (_, totals) = carriers
                .entry(&stats.carrier)
                .or_insert((&stats.name, CarrierTotals::default()));
            totals.merge(&stats.totals);
        }
    }

    Ok(Summed {
        days: days.into_iter().collect(),
        rows,
        dropped,
        carriers: carriers
            .into_iter()
            .map(|(carrier, (name, totals))| {
                CarrierStats::new(carrier.to_owned(), name.to_owned(), totals)
            })
            .collect(),
    })
}
