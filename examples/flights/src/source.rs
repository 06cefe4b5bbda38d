//! Reading the data files into the typed rows of [`crate::model`].
//!
//! The three dimension tables are small and read whole by [`read_airlines`],
//! [`read_airports`] and [`read_planes`]. The two big files are read once per
//! process through a source: [`FlightsSource`] serves the rows of one local day,
//! [`WeatherSource`] the observations of one hour window. Both parse on first use
//! and keep the result (or the error) for later calls, from any thread, until
//! nothing has asked for [`KEEP_IDLE`]: a long-lived process (`serve`) does not
//! hold the parsed year after its runs.
//!
//! Parsing is strict: the header must be exactly the expected one, and a value that
//! does not fit its column fails the whole file with a [`DataError`] naming the
//! file, line and column. The files are pinned by `data/SHA256SUMS`, so a bad row
//! means a damaged file, not a row to skip.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use csv::StringRecord;
use jiff::Timestamp;
use jiff::civil::Date;

use crate::error::DataError;
use crate::model::{Airline, Airport, Plane, RawFlight, WeatherObs};

/// How long a source keeps its parsed file after the last call.
pub const KEEP_IDLE: Duration = Duration::from_secs(5);

/// A parsed file (or its error), kept while it is asked for and dropped by a
/// short-lived thread once nobody has asked for `idle`. Concurrent first calls
/// wait for a single parse.
struct IdleCache<T> {
    idle: Duration,
    state: Arc<Mutex<Cached<T>>>,
}

struct Cached<T> {
    value: Option<Arc<Result<T, DataError>>>,
    used: Instant,
    /// Whether a thread is waiting to drop `value`.
    reaper: bool,
}

impl<T: Send + Sync + 'static> IdleCache<T> {
    fn new(idle: Duration) -> Self {
        Self {
            idle,
            state: Arc::new(Mutex::new(Cached {
                value: None,
                used: Instant::now(),
                reaper: false,
            })),
        }
    }

    fn get(&self, load: impl FnOnce() -> Result<T, DataError>) -> Arc<Result<T, DataError>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let value = state.value.get_or_insert_with(|| Arc::new(load())).clone();
        state.used = Instant::now();
        if !state.reaper {
            // Without a thread the value is simply kept, as before.
            state.reaper = spawn_reaper(Arc::downgrade(&self.state), self.idle);
        }
        value
    }

    fn is_loaded(&self) -> Option<bool> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.value.as_ref().map(|v| v.is_ok())
    }
}

/// Drops the cached value once it has been idle for `idle`; ends then, or
/// when the cache itself is gone. Whether a thread was started.
fn spawn_reaper<T: Send + Sync + 'static>(state: Weak<Mutex<Cached<T>>>, idle: Duration) -> bool {
    std::thread::Builder::new()
        .name("flights-source-reaper".into())
        .spawn(move || {
            loop {
                let Some(strong) = state.upgrade() else {
                    return;
                };
                let mut cached = strong.lock().unwrap_or_else(|e| e.into_inner());
                let due = cached.used + idle;
                if Instant::now() >= due {
                    let value = cached.value.take();
                    cached.reaper = false;
                    drop(cached);
                    // Freed outside the lock (the year of flights is ~100 MB).
                    drop(value);
                    return;
                }
                drop(cached);
                drop(strong);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        })
        .is_ok()
}

/// Name of the zip archive holding the flights, inside the data directory.
pub const FLIGHTS_ZIP: &str = "flights.csv.zip";
/// Name of the one CSV inside [`FLIGHTS_ZIP`].
pub const FLIGHTS_ENTRY: &str = "flights.csv";
pub const WEATHER_CSV: &str = "weather.csv";
pub const AIRLINES_CSV: &str = "airlines.csv";
pub const AIRPORTS_CSV: &str = "airports.csv";
pub const PLANES_CSV: &str = "planes.csv";

const AIRLINE_COLUMNS: &[&str] = &["carrier", "name"];
const AIRPORT_COLUMNS: &[&str] = &["faa", "name", "lat", "lon", "alt", "tz", "dst", "tzone"];
const PLANE_COLUMNS: &[&str] = &[
    "tailnum",
    "year",
    "type",
    "manufacturer",
    "model",
    "engines",
    "seats",
    "speed",
    "engine",
];
const FLIGHT_COLUMNS: &[&str] = &[
    "year",
    "month",
    "day",
    "dep_time",
    "sched_dep_time",
    "dep_delay",
    "arr_time",
    "sched_arr_time",
    "arr_delay",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "air_time",
    "distance",
    "hour",
    "minute",
    "time_hour",
];
const WEATHER_COLUMNS: &[&str] = &[
    "origin",
    "year",
    "month",
    "day",
    "hour",
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
    "time_hour",
];

/// Reads `airlines.csv` from the data directory.
pub fn read_airlines(data_dir: impl AsRef<Path>) -> Result<Vec<Airline>, DataError> {
    let path = data_dir.as_ref().join(AIRLINES_CSV);
    parse_csv(
        open(&path)?,
        &path.display().to_string(),
        AIRLINE_COLUMNS,
        |f| {
            Ok(Airline {
                carrier: f.string(0)?,
                name: f.string(1)?,
            })
        },
    )
}

/// Reads `airports.csv` from the data directory.
pub fn read_airports(data_dir: impl AsRef<Path>) -> Result<Vec<Airport>, DataError> {
    let path = data_dir.as_ref().join(AIRPORTS_CSV);
    parse_csv(
        open(&path)?,
        &path.display().to_string(),
        AIRPORT_COLUMNS,
        |f| {
            Ok(Airport {
                faa: f.string(0)?,
                name: f.string(1)?,
                lat: f.float(2)?,
                lon: f.float(3)?,
                alt: f.required(4, INTEGER)?,
                tz: f.required(5, INTEGER)?,
                dst: f.string(6)?,
                tzone: f.optional_string(7),
            })
        },
    )
}

/// Reads `planes.csv` from the data directory.
pub fn read_planes(data_dir: impl AsRef<Path>) -> Result<Vec<Plane>, DataError> {
    let path = data_dir.as_ref().join(PLANES_CSV);
    parse_csv(
        open(&path)?,
        &path.display().to_string(),
        PLANE_COLUMNS,
        |f| {
            Ok(Plane {
                tailnum: f.string(0)?,
                year: f.optional(1, INTEGER_OR_NA)?,
                kind: f.string(2)?,
                manufacturer: f.string(3)?,
                model: f.string(4)?,
                engines: f.required(5, INTEGER)?,
                seats: f.required(6, INTEGER)?,
                speed: f.optional(7, INTEGER_OR_NA)?,
                engine: f.string(8)?,
            })
        },
    )
}

/// Parses the CSV text of `flights.csv`; `file` names it in errors.
///
/// Rows come back in file order. Besides the types of single fields this checks
/// only that `year`, `month` and `day` form a real date, since that is the key the
/// rows are served by.
pub fn parse_flights(reader: impl Read, file: &str) -> Result<Vec<RawFlight>, DataError> {
    let dated = parse_dated_flights(reader, file)?;
    Ok(dated.into_iter().map(|(_, flight)| flight).collect())
}

/// [`parse_flights`], with each row's local date of scheduled departure.
fn parse_dated_flights(reader: impl Read, file: &str) -> Result<Vec<(Date, RawFlight)>, DataError> {
    parse_csv(reader, file, FLIGHT_COLUMNS, |f| {
        let flight = RawFlight {
            line: f.line,
            year: f.required(0, INTEGER)?,
            month: f.required(1, INTEGER)?,
            day: f.required(2, INTEGER)?,
            dep_time: f.optional(3, INTEGER_OR_NA)?,
            sched_dep_time: f.required(4, INTEGER)?,
            dep_delay: f.optional(5, INTEGER_OR_NA)?,
            arr_time: f.optional(6, INTEGER_OR_NA)?,
            sched_arr_time: f.required(7, INTEGER)?,
            arr_delay: f.optional(8, INTEGER_OR_NA)?,
            carrier: f.string(9)?,
            flight: f.required(10, INTEGER)?,
            tailnum: f.optional_string(11),
            origin: f.string(12)?,
            dest: f.string(13)?,
            air_time: f.optional(14, INTEGER_OR_NA)?,
            distance: f.required(15, INTEGER)?,
            hour: f.required(16, INTEGER)?,
            minute: f.required(17, INTEGER)?,
            time_hour: f.required(18, TIMESTAMP)?,
        };
        if !(1..=12).contains(&flight.month) {
            return Err(f.invalid(1, "a month from 1 to 12"));
        }
        let date = Date::new(flight.year, flight.month, flight.day)
            .map_err(|_| f.invalid(2, "a day that exists in the month"))?;
        Ok((date, flight))
    })
}

/// Parses the CSV text of `weather.csv`; `file` names it in errors.
///
/// The local `year,month,day,hour` of each row must be its `time_hour` seen in
/// America/New_York; a row where they disagree is an error.
pub fn parse_weather(reader: impl Read, file: &str) -> Result<Vec<WeatherObs>, DataError> {
    let zone = crate::new_york();
    parse_csv(reader, file, WEATHER_COLUMNS, |f| {
        let local: (i16, i8, i8, i8) = (
            f.required(1, INTEGER)?,
            f.required(2, INTEGER)?,
            f.required(3, INTEGER)?,
            f.required(4, INTEGER)?,
        );
        let obs = WeatherObs {
            origin: f.string(0)?,
            time_hour: f.required(14, TIMESTAMP)?,
            temp: f.optional_float(5)?,
            dewp: f.optional_float(6)?,
            humid: f.optional_float(7)?,
            wind_dir: f.optional(8, INTEGER_OR_NA)?,
            wind_speed: f.optional_float(9)?,
            wind_gust: f.optional_float(10)?,
            precip: f.optional_float(11)?,
            pressure: f.optional_float(12)?,
            visib: f.optional_float(13)?,
        };

        // The hour partitions select rows by `time_hour` alone, so the local columns
        // must not say something else.
        let seen = obs.time_hour.to_zoned(zone.clone()).datetime();
        if (seen.year(), seen.month(), seen.day(), seen.hour()) != local {
            let (year, month, day, hour) = local;
            return Err(f.inconsistent(
                14,
                format!(
                    "{} is {seen} in America/New_York, but the row says \
                     {year}-{month:02}-{day:02} hour {hour}",
                    obs.time_hour
                ),
            ));
        }
        Ok(obs)
    })
}

/// The flights of `flights.csv.zip`, served one local day at a time.
///
/// The archive is parsed on the first call to [`FlightsSource::day`] (0.3 s in a
/// release build, 1.2 s in a debug one, on the 2-core development machine) and
/// kept in memory, indexed by date, until no call has come for [`KEEP_IDLE`];
/// later calls only clone the day's rows. Share one source between tasks, e.g.
/// in an `Arc`: concurrent first calls wait for a single parse.
pub struct FlightsSource {
    path: PathBuf,
    /// Rows grouped by the local date of scheduled departure, in file order within a
    /// day. A failed load is kept too, so every caller gets the same error.
    days: IdleCache<HashMap<Date, Vec<RawFlight>>>,
}

impl FlightsSource {
    /// Points a source at `flights.csv.zip` in `data_dir`, without parsing it yet.
    ///
    /// # Errors
    ///
    /// Fails if the archive does not exist or cannot be accessed.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = data_dir.as_ref().join(FLIGHTS_ZIP);
        std::fs::metadata(&path).map_err(|source| io_error(&path, source))?;
        Ok(Self {
            path,
            days: IdleCache::new(KEEP_IDLE),
        })
    }

    /// The flights scheduled to depart on local date `date`, in file order.
    ///
    /// A date without flights (outside 2013) gives an empty list.
    ///
    /// # Errors
    ///
    /// Fails if the archive cannot be read or any of its rows does not parse; the
    /// same error is returned by every call.
    pub fn day(&self, date: Date) -> Result<Vec<RawFlight>, DataError> {
        let loaded = self.load();
        let days = loaded.as_ref().as_ref().map_err(Clone::clone)?;
        Ok(days.get(&date).cloned().unwrap_or_default())
    }

    /// Every date that has at least one flight, ascending.
    ///
    /// # Errors
    ///
    /// As for [`FlightsSource::day`].
    pub fn dates(&self) -> Result<Vec<Date>, DataError> {
        let loaded = self.load();
        let days = loaded.as_ref().as_ref().map_err(Clone::clone)?;
        let mut dates: Vec<Date> = days.keys().copied().collect();
        dates.sort_unstable();
        Ok(dates)
    }

    fn load(&self) -> Arc<Result<HashMap<Date, Vec<RawFlight>>, DataError>> {
        self.days.get(|| {
            let mut days: HashMap<Date, Vec<RawFlight>> = HashMap::new();
            for (date, flight) in read_flights_zip(&self.path)? {
                days.entry(date).or_default().push(flight);
            }
            Ok(days)
        })
    }
}

impl fmt::Debug for FlightsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlightsSource")
            .field("path", &self.path)
            .field("loaded", &self.days.is_loaded())
            .finish()
    }
}

fn read_flights_zip(path: &Path) -> Result<Vec<(Date, RawFlight)>, DataError> {
    let zip_error = |source| DataError::Zip {
        path: path.to_path_buf(),
        entry: FLIGHTS_ENTRY,
        source: Arc::new(source),
    };
    let mut archive = zip::ZipArchive::new(open(path)?).map_err(zip_error)?;
    let entry = archive.by_name(FLIGHTS_ENTRY).map_err(zip_error)?;
    parse_dated_flights(entry, &format!("{FLIGHTS_ENTRY} in {}", path.display()))
}

/// The observations of `weather.csv`, served by hour window.
///
/// Like [`FlightsSource`], the file is parsed on first use and kept while in
/// use, sorted by `time_hour` then origin, so a window is found by binary search.
pub struct WeatherSource {
    path: PathBuf,
    /// All observations sorted by `(time_hour, origin)`; errors kept too.
    observations: IdleCache<Vec<WeatherObs>>,
}

impl WeatherSource {
    /// Points a source at `weather.csv` in `data_dir`, without parsing it yet.
    ///
    /// # Errors
    ///
    /// Fails if the file does not exist or cannot be accessed.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = data_dir.as_ref().join(WEATHER_CSV);
        std::fs::metadata(&path).map_err(|source| io_error(&path, source))?;
        Ok(Self {
            path,
            observations: IdleCache::new(KEEP_IDLE),
        })
    }

    /// The observations whose `time_hour` lies in `[start, end)`, sorted by
    /// `time_hour` then origin. An empty or inverted window gives an empty list.
    ///
    /// For an hour partition pass the partition's bounds: on 2013-11-03 the two
    /// local 01:00 hours are the windows starting 05:00Z and 06:00Z, and each gets
    /// only its own observations.
    ///
    /// # Errors
    ///
    /// Fails if the file cannot be read or any of its rows does not parse; the same
    /// error is returned by every call.
    pub fn hour(&self, start: Timestamp, end: Timestamp) -> Result<Vec<WeatherObs>, DataError> {
        let loaded = self.load();
        let all = loaded.as_ref().as_ref().map_err(Clone::clone)?;
        let from = all.partition_point(|obs| obs.time_hour < start);
        let to = all.partition_point(|obs| obs.time_hour < end).max(from);
        Ok(all[from..to].to_vec())
    }

    fn load(&self) -> Arc<Result<Vec<WeatherObs>, DataError>> {
        self.observations.get(|| {
            let file = self.path.display().to_string();
            let mut all = parse_weather(BufReader::new(open(&self.path)?), &file)?;
            all.sort_by(|a, b| (a.time_hour, &a.origin).cmp(&(b.time_hour, &b.origin)));
            Ok(all)
        })
    }
}

impl fmt::Debug for WeatherSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeatherSource")
            .field("path", &self.path)
            .field("loaded", &self.observations.is_loaded())
            .finish()
    }
}

const INTEGER: &str = "an integer";
const INTEGER_OR_NA: &str = "an integer or NA";
const TIMESTAMP: &str = "a UTC timestamp like 2013-01-01T10:00:00Z";

fn open(path: &Path) -> Result<File, DataError> {
    File::open(path).map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// Checks the header of a CSV file against `columns`, then turns each record into a
/// row with `row`, stopping at the first error.
fn parse_csv<T>(
    reader: impl Read,
    file: &str,
    columns: &'static [&'static str],
    mut row: impl FnMut(&Fields<'_>) -> Result<T, DataError>,
) -> Result<Vec<T>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .buffer_capacity(1 << 16)
        .from_reader(reader);

    let header = reader.headers().map_err(|err| csv_error(file, &err))?;
    if !header.iter().eq(columns.iter().copied()) {
        return Err(DataError::Header {
            file: file.to_owned(),
            found: header.iter().collect::<Vec<_>>().join(","),
            expected: columns.join(","),
        });
    }

    let mut rows = Vec::new();
    let mut record = StringRecord::new();
    while reader
        .read_record(&mut record)
        .map_err(|err| csv_error(file, &err))?
    {
        let line = record.position().map_or(0, csv::Position::line);
        rows.push(row(&Fields {
            file,
            line,
            columns,
            record: &record,
        })?);
    }
    Ok(rows)
}

fn csv_error(file: &str, err: &csv::Error) -> DataError {
    let line = err.position().map_or(0, csv::Position::line);
    let message = match err.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("expected {expected_len} fields, found {len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid utf-8: {err}"),
        csv::ErrorKind::Io(err) => format!("read failed: {err}"),
        _ => err.to_string(),
    };
    DataError::Csv {
        file: file.to_owned(),
        line,
        message,
    }
}

/// One record being parsed, with what is needed to report a bad field.
struct Fields<'a> {
    file: &'a str,
    line: u64,
    columns: &'static [&'static str],
    /// Has exactly `columns.len()` fields: the header check and the csv reader's
    /// equal-length rule guarantee it.
    record: &'a StringRecord,
}

impl Fields<'_> {
    fn text(&self, column: usize) -> &str {
        self.record.get(column).unwrap_or_default()
    }

    fn string(&self, column: usize) -> Result<String, DataError> {
        match self.text(column) {
            "" | "NA" => Err(self.invalid(column, "a non-empty value")),
            text => Ok(text.to_owned()),
        }
    }

    fn optional_string(&self, column: usize) -> Option<String> {
        match self.text(column) {
            "" | "NA" => None,
            text => Some(text.to_owned()),
        }
    }

    fn required<T: FromStr>(&self, column: usize, expected: &'static str) -> Result<T, DataError> {
        self.text(column)
            .parse()
            .map_err(|_| self.invalid(column, expected))
    }

    fn optional<T: FromStr>(
        &self,
        column: usize,
        expected: &'static str,
    ) -> Result<Option<T>, DataError> {
        match self.text(column) {
            "NA" => Ok(None),
            text => text
                .parse()
                .map(Some)
                .map_err(|_| self.invalid(column, expected)),
        }
    }

    fn float(&self, column: usize) -> Result<f64, DataError> {
        match self.text(column).parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(value),
            _ => Err(self.invalid(column, "a finite number")),
        }
    }

    fn optional_float(&self, column: usize) -> Result<Option<f64>, DataError> {
        match self.text(column) {
            "NA" => Ok(None),
            text => match text.parse::<f64>() {
                Ok(value) if value.is_finite() => Ok(Some(value)),
                _ => Err(self.invalid(column, "a finite number or NA")),
            },
        }
    }

    fn invalid(&self, column: usize, expected: &'static str) -> DataError {
        DataError::Field {
            file: self.file.to_owned(),
            line: self.line,
            column: column + 1,
            name: self.columns.get(column).copied().unwrap_or_default(),
            value: self.text(column).to_owned(),
            expected,
        }
    }

    fn inconsistent(&self, column: usize, message: String) -> DataError {
        DataError::Inconsistent {
            file: self.file.to_owned(),
            line: self.line,
            column: column + 1,
            name: self.columns.get(column).copied().unwrap_or_default(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const HEADER: &str = "year,month,day,dep_time,sched_dep_time,dep_delay,arr_time,\
                          sched_arr_time,arr_delay,carrier,flight,tailnum,origin,dest,\
                          air_time,distance,hour,minute,time_hour\n";
    const GOOD: &str =
        "2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,2013-01-01T10:00:00Z\n";
    const CANCELLED: &str =
        "2013,1,1,NA,1630,NA,NA,1815,NA,EV,4308,N18120,EWR,RDU,NA,416,16,30,2013-01-01T21:00:00Z\n";

    fn flights_csv(rows: &[&str]) -> String {
        std::iter::once(HEADER)
            .chain(rows.iter().copied())
            .collect()
    }

    #[test]
    fn na_becomes_none() {
        let rows =
            parse_flights(flights_csv(&[GOOD, CANCELLED]).as_bytes(), "flights.csv").unwrap();

        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].line, rows[0].arr_delay, rows[0].dep_time),
            (2, Some(11), Some(517))
        );
        assert_eq!(
            (rows[1].line, rows[1].arr_delay, rows[1].dep_time),
            (3, None, None)
        );
        assert_eq!(rows[1].time_hour.to_string(), "2013-01-01T21:00:00Z");
    }

    #[test]
    fn malformed_value_names_file_line_and_column() {
        let bad = GOOD.replace(",11,UA,", ",eleven,UA,");
        let csv = flights_csv(&[GOOD, CANCELLED, &bad]);

        let err = parse_flights(csv.as_bytes(), "flights.csv").unwrap_err();

        assert_eq!(
            err.to_string(),
            "flights.csv: line 4, column 9 (arr_delay): invalid value \"eleven\", \
             expected an integer or NA"
        );
    }

    #[test]
    fn impossible_date_is_malformed() {
        let bad = GOOD.replacen("2013,1,1,", "2013,2,30,", 1);

        let err = parse_flights(flights_csv(&[&bad]).as_bytes(), "flights.csv").unwrap_err();

        assert!(
            err.to_string()
                .starts_with("flights.csv: line 2, column 3 (day): invalid value \"30\""),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_a_csv_error_with_line() {
        let short = GOOD.replace(",2013-01-01T10:00:00Z", "");

        let err = parse_flights(flights_csv(&[GOOD, &short]).as_bytes(), "f.csv").unwrap_err();

        assert_eq!(
            err.to_string(),
            "f.csv: line 3: expected 19 fields, found 18"
        );
    }

    #[test]
    fn unexpected_header_is_refused() {
        let csv = flights_csv(&[GOOD]).replacen("dep_time", "departure", 1);

        let err = parse_flights(csv.as_bytes(), "flights.csv").unwrap_err();

        assert!(matches!(err, DataError::Header { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("flights.csv: line 1: unexpected header")
        );
    }

    #[test]
    fn weather_local_columns_must_match_time_hour() {
        let header = WEATHER_COLUMNS.join(",");
        let good = "EWR,2013,11,3,1,51.98,39.02,61.15,310,6.9,NA,0,1009.8,10,2013-11-03T06:00:00Z";
        // 06:00Z on 2013-11-03 is 01:00 EST; 02:00 would be 07:00Z.
        let bad = good.replace(",3,1,", ",3,2,");

        let rows = parse_weather(format!("{header}\n{good}\n").as_bytes(), "w.csv").unwrap();
        let err = parse_weather(format!("{header}\n{bad}\n").as_bytes(), "w.csv").unwrap_err();

        assert_eq!(rows[0].wind_gust, None);
        assert_eq!(rows[0].temp, Some(51.98));
        assert_eq!(
            err.to_string(),
            "w.csv: line 2, column 15 (time_hour): 2013-11-03T06:00:00Z is \
             2013-11-03T01:00:00 in America/New_York, but the row says 2013-11-03 hour 2"
        );
    }

    #[test]
    fn weather_rejects_non_finite_numbers() {
        let header = WEATHER_COLUMNS.join(",");
        let row = "EWR,2013,1,1,1,NaN,26.06,59.37,270,10.3,NA,0,1012,10,2013-01-01T06:00:00Z";

        let err = parse_weather(format!("{header}\n{row}\n").as_bytes(), "w.csv").unwrap_err();

        assert!(
            err.to_string()
                .contains("column 6 (temp): invalid value \"NaN\""),
            "{err}"
        );
    }

    /// Writes a `flights.csv.zip` holding `csv` into a fresh directory.
    fn zip_dir(csv: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join(FLIGHTS_ZIP)).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        zip.start_file(FLIGHTS_ENTRY, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(csv.as_bytes()).unwrap();
        zip.finish().unwrap();
        dir
    }

    #[test]
    fn flights_source_serves_days_from_the_zip() {
        let next_day = GOOD.replacen("2013,1,1,", "2013,1,2,", 1);
        let dir = zip_dir(&flights_csv(&[GOOD, &next_day, CANCELLED]));

        let source = FlightsSource::open(dir.path()).unwrap();

        let first: Vec<u64> = source
            .day(jiff::civil::date(2013, 1, 1))
            .unwrap()
            .iter()
            .map(|f| f.line)
            .collect();
        assert_eq!(first, [2, 4]);
        assert_eq!(source.day(jiff::civil::date(2013, 1, 2)).unwrap().len(), 1);
        assert!(
            source
                .day(jiff::civil::date(2014, 1, 1))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn concurrent_first_calls_share_one_load() {
        let dir = zip_dir(&flights_csv(&[GOOD, CANCELLED]));
        let source = FlightsSource::open(dir.path()).unwrap();

        let counts: Vec<usize> = std::thread::scope(|scope| {
            let tasks: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| source.day(jiff::civil::date(2013, 1, 1)).unwrap().len()))
                .collect();
            tasks.into_iter().map(|task| task.join().unwrap()).collect()
        });

        assert_eq!(counts, [2, 2, 2, 2]);
    }

    #[test]
    fn flights_source_keeps_its_load_error() {
        let bad = GOOD.replace(",1400,", ",far,");
        let dir = zip_dir(&flights_csv(&[GOOD, &bad]));
        let source = FlightsSource::open(dir.path()).unwrap();

        let first = source
            .day(jiff::civil::date(2013, 1, 1))
            .unwrap_err()
            .to_string();
        let again = source
            .day(jiff::civil::date(2013, 1, 1))
            .unwrap_err()
            .to_string();

        assert_eq!(first, again);
        assert!(first.starts_with("flights.csv in "), "{first}");
        assert!(
            first.ends_with(
                "line 3, column 16 (distance): invalid value \"far\", expected an integer"
            )
        );
    }

    #[test]
    fn missing_files_fail_on_open() {
        let dir = tempfile::tempdir().unwrap();

        let err = FlightsSource::open(dir.path()).unwrap_err();

        assert!(err.to_string().starts_with("cannot read "), "{err}");
        assert!(WeatherSource::open(dir.path()).is_err());
    }

    #[test]
    fn an_idle_cache_lets_go_and_loads_again() {
        let cache = IdleCache::new(Duration::from_millis(50));
        let loads = AtomicUsize::new(0);
        let load = || {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(vec![1, 2, 3])
        };
        let first = cache.get(load);
        assert_eq!(first.as_ref().as_ref().ok(), Some(&vec![1, 2, 3]));
        assert_eq!(
            cache.get(load).as_ref().as_ref().ok().map(Vec::len),
            Some(3)
        );
        assert_eq!(loads.load(Ordering::SeqCst), 1, "kept while in use");
        assert_eq!(cache.is_loaded(), Some(true));

        // Dropped once idle (polled for at most 5 s)...
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.is_loaded().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cache.is_loaded(), None, "dropped after being idle");
        // ...while a caller's copy lives on, and the next call loads again.
        assert_eq!(first.as_ref().as_ref().ok().map(Vec::len), Some(3));
        assert_eq!(
            cache.get(load).as_ref().as_ref().ok().map(Vec::len),
            Some(3)
        );
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_idle_cache_keeps_an_error_while_in_use() {
        let cache: IdleCache<Vec<u8>> = IdleCache::new(Duration::from_secs(60));
        let err = cache.get(|| {
            Err(io_error(
                Path::new("gone.csv"),
                std::io::ErrorKind::NotFound.into(),
            ))
        });
        let again = cache.get(|| Ok(vec![1]));
        assert!(
            err.is_err() && again.is_err(),
            "the same error for every call"
        );
        assert_eq!(cache.is_loaded(), Some(false));
    }
}
