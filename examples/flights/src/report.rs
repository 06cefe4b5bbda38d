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

#[cfg(test)]
mod tests {
    use super::*;

    use jiff::civil::date;

    use crate::clean::CleanCounts;

    fn flight(carrier: &str, route: (&str, &str), delays: (Option<i32>, Option<i32>)) -> Flight {
        Flight {
            line: 2,
            carrier: carrier.into(),
            carrier_name: format!("{carrier} Airways"),
            flight: 1,
            tailnum: None,
            origin: route.0.into(),
            dest: route.1.into(),
            sched_dep_time: 900,
            dep_time: delays.0.map(|_| 905),
            sched_arr_time: 1200,
            arr_time: delays.1.map(|_| 1210),
            dep_delay: delays.0,
            arr_delay: delays.1,
            air_time: None,
            distance: 500,
            time_hour: "2013-02-08T14:00:00Z".parse().unwrap(),
            weather: None,
        }
    }

    fn cleaned(flights: Vec<Flight>, cancelled: Vec<Flight>) -> CleanedFlights {
        let counts = CleanCounts {
            rows_in: (flights.len() + cancelled.len()) as u32,
            rows_out: flights.len() as u32,
            cancelled: cancelled.len() as u32,
            ..CleanCounts::default()
        };
        CleanedFlights {
            date: date(2013, 2, 8),
            flights,
            cancelled,
            dropped: vec![],
            counts,
        }
    }

    fn no_weather() -> DailyWeather {
        crate::weather::daily_weather(date(2013, 2, 8), vec![])
    }

    fn report(flights: Vec<Flight>, cancelled: Vec<Flight>) -> DailyReport {
        daily_report(
            date(2013, 2, 8),
            &cleaned(flights, cancelled),
            &no_weather(),
        )
    }

    const JFK_LAX: (&str, &str) = ("JFK", "LAX");

    #[test]
    fn carrier_without_arrival_delays_has_no_arrival_measures() {
        // As YV on 2013-02-08: one flight diverted (departed, no arr_delay), the
        // rest cancelled.
        let diverted = flight("YV", JFK_LAX, (Some(30), None));
        let cancelled = vec![flight("YV", JFK_LAX, (None, None)); 2];

        let report = report(vec![diverted], cancelled);

        let yv = &report.carriers[0];
        assert_eq!((yv.totals.flights, yv.totals.cancelled), (3, 2));
        assert_eq!(yv.mean_dep_delay_min, Some(30.0));
        assert_eq!((yv.mean_arr_delay_min, yv.on_time_pct), (None, None));
    }

    #[test]
    fn carrier_with_only_cancellations_has_no_means() {
        let report = report(vec![], vec![flight("OO", JFK_LAX, (None, None))]);

        let oo = &report.carriers[0];
        assert_eq!((oo.totals.flights, oo.totals.cancelled), (1, 1));
        assert_eq!(
            (oo.mean_dep_delay_min, oo.mean_arr_delay_min, oo.on_time_pct),
            (None, None, None)
        );
    }

    #[test]
    fn on_time_includes_exactly_fifteen_minutes() {
        let flights = vec![
            flight("UA", JFK_LAX, (Some(10), Some(15))),
            flight("UA", JFK_LAX, (Some(20), Some(16))),
            flight("UA", JFK_LAX, (Some(-5), Some(-20))),
            flight("UA", JFK_LAX, (Some(0), None)),
        ];

        let ua = &report(flights, vec![]).carriers[0];

        assert_eq!(ua.on_time_pct, Some(100.0 * 2.0 / 3.0));
        assert_eq!(ua.mean_arr_delay_min, Some(11.0 / 3.0));
        assert_eq!(ua.mean_dep_delay_min, Some(25.0 / 4.0));
    }

    #[test]
    fn busiest_routes_count_cancelled_flights_and_break_ties_by_name() {
        let on = |route| flight("UA", route, (Some(0), Some(0)));
        let off = |route| flight("UA", route, (None, None));
        let flights = vec![
            on(("LGA", "ORD")),
            on(("LGA", "ORD")),
            on(("EWR", "SFO")),
            on(("JFK", "BOS")),
            on(("EWR", "ATL")),
            on(("JFK", "MIA")),
            on(("EWR", "DEN")),
        ];
        let cancelled = vec![off(("JFK", "BOS")), off(("JFK", "BOS"))];

        let routes: Vec<String> = report(flights, cancelled)
            .busiest_routes
            .iter()
            .map(|r| format!("{}-{} {}", r.origin, r.dest, r.flights))
            .collect();

        assert_eq!(
            routes,
            [
                "JFK-BOS 3",
                "LGA-ORD 2",
                "EWR-ATL 1",
                "EWR-DEN 1",
                "EWR-SFO 1"
            ]
        );
    }

    fn obs(origin: &str, hour: &str, visib: f64, precip: f64, wind: Option<f64>) -> WeatherObs {
        WeatherObs {
            origin: origin.into(),
            time_hour: format!("2013-02-08T{hour}:00:00Z").parse().unwrap(),
            temp: None,
            dewp: None,
            humid: None,
            wind_dir: None,
            wind_speed: wind,
            wind_gust: None,
            precip: Some(precip),
            pressure: None,
            visib: Some(visib),
        }
    }

    #[test]
    fn worst_weather_hour_breaks_ties_by_precip_wind_time_then_origin() {
        let worst = |hours: Vec<WeatherObs>| {
            let weather = crate::weather::daily_weather(date(2013, 2, 8), vec![hours]);
            worst_weather_hour(&weather).map(|o| format!("{} {}", o.origin, o.time_hour))
        };

        let by_visib = vec![
            obs("EWR", "10", 0.5, 0.0, None),
            obs("JFK", "11", 0.25, 0.0, None),
        ];
        assert_eq!(worst(by_visib).unwrap(), "JFK 2013-02-08T11:00:00Z");

        let by_precip = vec![
            obs("EWR", "10", 0.5, 0.1, None),
            obs("JFK", "10", 0.5, 0.2, None),
        ];
        assert_eq!(worst(by_precip).unwrap(), "JFK 2013-02-08T10:00:00Z");

        let by_wind = vec![
            obs("EWR", "10", 0.5, 0.1, None),
            obs("JFK", "10", 0.5, 0.1, Some(20.0)),
            obs("LGA", "10", 0.5, 0.1, Some(15.0)),
        ];
        assert_eq!(worst(by_wind).unwrap(), "JFK 2013-02-08T10:00:00Z");

        let by_time_then_origin = vec![
            obs("LGA", "12", 0.5, 0.1, Some(9.0)),
            obs("LGA", "11", 0.5, 0.1, Some(9.0)),
            obs("JFK", "11", 0.5, 0.1, Some(9.0)),
        ];
        assert_eq!(
            worst(by_time_then_origin).unwrap(),
            "JFK 2013-02-08T11:00:00Z"
        );

        assert_eq!(worst(vec![]), None);
    }

    fn day_report(day: Date, carriers: &[(&str, u64, u64)]) -> DailyReport {
        // Each carrier: (code, arrivals, on time); one flight per arrival, each
        // delayed 0 or 30 minutes.
        let flights = carriers
            .iter()
            .flat_map(|&(code, arrivals, on_time)| {
                (0..arrivals).map(move |i| {
                    let delay = if i < on_time { 0 } else { 30 };
                    flight(code, JFK_LAX, (Some(delay), Some(delay)))
                })
            })
            .collect();
        DailyReport {
            date: day,
            ..report(flights, vec![])
        }
    }

    #[test]
    fn weekly_report_adds_sums_not_means() {
        let monday = date(2013, 3, 4);
        let daily = [
            day_report(monday, &[("UA", 1, 1)]),
            day_report(date(2013, 3, 6), &[("UA", 3, 0), ("AA", 2, 2)]),
        ];

        let week = weekly_report(monday, &daily).unwrap();

        assert_eq!(week.days, [monday, date(2013, 3, 6)]);
        let ua = &week.carriers[1];
        assert_eq!(ua.carrier, "UA");
        assert_eq!(ua.totals.flights, 4);
        // The mean of the daily means would be (0 + 30) / 2 = 15.
        assert_eq!(ua.mean_arr_delay_min, Some(90.0 / 4.0));
        assert_eq!(ua.on_time_pct, Some(25.0));
    }

    #[test]
    fn weekly_report_refuses_reports_that_do_not_fit() {
        let monday = date(2013, 3, 4);
        let report = day_report(monday, &[("UA", 1, 1)]);

        let not_monday = weekly_report(date(2013, 3, 5), &[]).unwrap_err();
        let outside = weekly_report(monday, &[day_report(date(2013, 3, 11), &[])]).unwrap_err();
        let twice = weekly_report(monday, &[report.clone(), report]).unwrap_err();

        assert_eq!(
            not_monday.to_string(),
            "week start 2013-03-05 is a Tuesday, not a Monday"
        );
        assert!(matches!(outside, ReportError::OutsideWeek { .. }));
        assert_eq!(twice, ReportError::DuplicateDay { date: monday });
    }

    #[test]
    fn ranking_compares_shares_exactly_then_flights_then_code() {
        // AA and DL both 2/3 on time; DL has more flights. OO equals AA exactly
        // on every count, so the code decides. HA has no arrivals at all.
        let mut daily = vec![day_report(
            date(2013, 3, 4),
            &[("AA", 3, 2), ("DL", 6, 4), ("OO", 3, 2), ("UA", 4, 3)],
        )];
        let mut no_arrivals = report(vec![flight("HA", JFK_LAX, (Some(5), None))], vec![]);
        no_arrivals.date = date(2013, 3, 5);
        daily.push(no_arrivals);

        let ranking = carrier_ranking(&daily).unwrap();

        let order: Vec<(u32, &str)> = ranking
            .carriers
            .iter()
            .map(|r| (r.rank, r.stats.carrier.as_str()))
            .collect();
        assert_eq!(
            order,
            [(1, "UA"), (2, "DL"), (3, "AA"), (4, "OO"), (5, "HA")]
        );
        assert_eq!(
            (ranking.first_day, ranking.last_day),
            (Some(date(2013, 3, 4)), Some(date(2013, 3, 5)))
        );
        assert_eq!(ranking.days, 2);
    }

    #[test]
    fn ranking_does_not_depend_on_report_order() {
        let a = day_report(date(2013, 3, 4), &[("AA", 3, 2), ("UA", 5, 4)]);
        let b = day_report(date(2013, 3, 5), &[("AA", 2, 2), ("DL", 4, 1)]);

        let forward = carrier_ranking(&[a.clone(), b.clone()]).unwrap();
        let backward = carrier_ranking(&[b, a]).unwrap();

        assert_eq!(forward, backward);
    }
}
