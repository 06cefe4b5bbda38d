//! Hour windows of a local day and the daily weather built from them.
//!
//! The weather partitions are the hours of a day in America/New_York, measured in
//! absolute time: [`hour_windows`] gives 24 windows on most days, 23 on the spring
//! change (2013-03-10) and 25 on the autumn change (2013-11-03), where the local
//! hour 01:00 happens twice. [`daily_weather`] joins the observations of those
//! windows into one [`DailyWeather`] with a summary per origin.

use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use crate::model::WeatherObs;

/// One hour of absolute time, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HourWindow {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl HourWindow {
    /// Whether `time` lies in the window.
    pub fn contains(&self, time: Timestamp) -> bool {
        self.start <= time && time < self.end
    }
}

/// The hour windows of local day `date` in America/New_York, in order, from local
/// midnight to the next local midnight.
///
/// # Errors
///
/// Fails only for dates at the very edge of what jiff represents.
pub fn hour_windows(date: Date) -> Result<Vec<HourWindow>, jiff::Error> {
    let zone = crate::new_york();
    let day_start = date.to_zoned(zone.clone())?.timestamp();
    let day_end = date.tomorrow()?.to_zoned(zone)?.timestamp();

    let mut windows = Vec::with_capacity(25);
    let mut start = day_start;
    while start < day_end {
        let end = start.checked_add(1.hour())?.min(day_end);
        windows.push(HourWindow { start, end });
        start = end;
    }
    Ok(windows)
}

/// The weather of one local day at the three origins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyWeather {
    pub date: Date,
    /// How many hour partitions the day was built from (23, 24 or 25).
    pub hours: u32,
    /// Every observation of the day, sorted by `time_hour` then origin.
    pub observations: Vec<WeatherObs>,
    /// One summary per origin that has observations, sorted by origin.
    pub origins: Vec<OriginWeather>,
}

impl DailyWeather {
    /// The observation at `origin` for the hour starting at `time_hour`, if any.
    pub fn observation(&self, origin: &str, time_hour: Timestamp) -> Option<&WeatherObs> {
        let key = (time_hour, origin);
        self.observations
            .binary_search_by(|obs| (obs.time_hour, obs.origin.as_str()).cmp(&key))
            .ok()
            .and_then(|index| self.observations.get(index))
    }
}

/// Summary of one origin's observations over a day.
///
/// Each measure covers the observations where that value is present and is `None`
/// when there is none: a missing hour or an `NA` neither counts as zero nor fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginWeather {
    pub origin: String,
    /// Observations of the day; fewer than the day's hours when some are missing.
    pub observations: u32,
    /// Mean temperature in °F.
    pub mean_temp_f: Option<f64>,
    /// Total precipitation in inches.
    pub total_precip_in: Option<f64>,
    /// Lowest visibility in miles.
    pub min_visib_mi: Option<f64>,
}

/// Builds the day's weather from its hour partitions (`hours`, one list per
/// window of [`hour_windows`]).
///
/// The observations are taken as given: the caller passes the hours of `date`.
/// `hours.len()` is recorded so that a missing partition shows.
pub fn daily_weather(date: Date, hours: Vec<Vec<WeatherObs>>) -> DailyWeather {
    let hour_count = u32::try_from(hours.len()).unwrap_or(u32::MAX);
    let mut observations: Vec<WeatherObs> = hours.into_iter().flatten().collect();
    observations.sort_by(|a, b| (a.time_hour, &a.origin).cmp(&(b.time_hour, &b.origin)));

    // Observations are sorted by time, so each origin's sums run in time order and
    // come out the same on every run.
    let mut origins: Vec<OriginWeather> = Vec::new();
    let mut temps: Vec<(f64, u32)> = Vec::new();
    for obs in &observations {
        let index = match origins.iter().position(|o| o.origin == obs.origin) {
            Some(index) => index,
            None => {
                origins.push(OriginWeather {
                    origin: obs.origin.clone(),
                    observations: 0,
                    mean_temp_f: None,
                    total_precip_in: None,
                    min_visib_mi: None,
                });
                temps.push((0.0, 0));
                origins.len() - 1
            }
        };
        let (summary, temp) = (&mut origins[index], &mut temps[index]);

        summary.observations += 1;
        if let Some(value) = obs.temp {
            *temp = (temp.0 + value, temp.1 + 1);
        }
        if let Some(value) = obs.precip {
            summary.total_precip_in = Some(summary.total_precip_in.unwrap_or(0.0) + value);
        }
        if let Some(value) = obs.visib {
            summary.min_visib_mi = Some(summary.min_visib_mi.map_or(value, |min| min.min(value)));
        }
    }
    for (summary, (sum, count)) in origins.iter_mut().zip(temps) {
        summary.mean_temp_f = (count > 0).then(|| sum / f64::from(count));
    }
    origins.sort_by(|a, b| a.origin.cmp(&b.origin));

    DailyWeather {
        date,
        hours: hour_count,
        observations,
        origins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use jiff::civil::date;

    fn obs(origin: &str, time_hour: &str, temp: Option<f64>, visib: Option<f64>) -> WeatherObs {
        WeatherObs {
            origin: origin.into(),
            time_hour: time_hour.parse().unwrap(),
            temp,
            dewp: None,
            humid: None,
            wind_dir: None,
            wind_speed: None,
            wind_gust: None,
            precip: Some(0.25),
            pressure: None,
            visib,
        }
    }

    #[test]
    fn summary_skips_missing_values_per_measure() {
        let hours = vec![
            vec![
                obs("LGA", "2013-01-01T05:00:00Z", Some(40.0), Some(10.0)),
                obs("EWR", "2013-01-01T05:00:00Z", Some(30.0), None),
            ],
            vec![],
            vec![obs("EWR", "2013-01-01T07:00:00Z", None, Some(2.5))],
        ];

        let day = daily_weather(date(2013, 1, 1), hours);

        assert_eq!(day.hours, 3);
        let order: Vec<&str> = day.observations.iter().map(|o| o.origin.as_str()).collect();
        assert_eq!(order, ["EWR", "LGA", "EWR"]);
        let ewr = &day.origins[0];
        assert_eq!(ewr.origin, "EWR");
        assert_eq!(ewr.observations, 2);
        assert_eq!(ewr.mean_temp_f, Some(30.0));
        assert_eq!(ewr.total_precip_in, Some(0.5));
        assert_eq!(ewr.min_visib_mi, Some(2.5));
        assert_eq!(day.origins[1].origin, "LGA");
    }

    #[test]
    fn observation_lookup_uses_the_utc_hour() {
        let hours = vec![
            vec![obs("EWR", "2013-11-03T05:00:00Z", Some(52.0), None)],
            vec![obs("EWR", "2013-11-03T06:00:00Z", Some(50.0), None)],
        ];
        let day = daily_weather(date(2013, 11, 3), hours);

        let at = |hour: &str| {
            day.observation("EWR", hour.parse().unwrap())
                .and_then(|o| o.temp)
        };

        assert_eq!(at("2013-11-03T05:00:00Z"), Some(52.0));
        assert_eq!(at("2013-11-03T06:00:00Z"), Some(50.0));
        assert_eq!(at("2013-11-03T07:00:00Z"), None);
        assert_eq!(
            day.observation("JFK", "2013-11-03T05:00:00Z".parse().unwrap()),
            None
        );
    }

    #[test]
    fn clock_change_days_have_23_and_25_windows() {
        let count = |d| hour_windows(d).unwrap().len();

        assert_eq!(count(date(2013, 3, 10)), 23);
        assert_eq!(count(date(2013, 11, 3)), 25);
        assert_eq!(count(date(2013, 1, 1)), 24);
    }
}
