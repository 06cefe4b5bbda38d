//! The flights example as FlowStone assets.
//!
//! ```text
//! airlines ─────────────┐
//! raw_flights (day) ────┼─> cleaned_flights (day) ─> daily_report (day) ─┬─> weekly_report (week)
//! raw_weather (hour) ─> daily_weather (day) ──┴────────────────┘          └─> carrier_ranking
//! airports, planes (dimension tables)
//! ```
//!
//! Every partition is local to America/New_York: a day has 23, 24 or 25 hours of
//! `raw_weather`, and a week starts on Monday.

use std::path::{Path, PathBuf};

use flowstone::partitions::{PartitionsDef, PartitionsError, TimeWindowPartitions};
use flowstone::{
    AssetContext, DefinitionErrors, Definitions, Partitioned, Result, ResultExt, RetryPolicy, asset,
};
use jiff::civil::Date;

use crate::{
    Airline, Airport, CarrierRanking, CleanedFlights, DailyReport, DailyWeather, FlightsSource,
    Plane, RawFlight, WeatherObs, WeatherSource, WeeklyReport,
};

/// Where the data files are, with their parsed sources; one per process.
pub struct FlightsData {
    pub dir: PathBuf,
    pub flights: FlightsSource,
    pub weather: WeatherSource,
}

impl FlightsData {
    /// The sources in `dir`.
    ///
    /// # Errors
    ///
    /// When `flights.csv.zip` or `weather.csv` is missing there.
    pub fn open(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        Ok(FlightsData {
            flights: FlightsSource::open(&dir)?,
            weather: WeatherSource::open(&dir)?,
            dir,
        })
    }
}

/// The data directory: `FLIGHTS_DATA`, or the copy shipped with this crate.
pub fn data_dir() -> PathBuf {
    std::env::var_os("FLIGHTS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
}

/// Days of 2013 in New York.
pub fn daily() -> Result<PartitionsDef, PartitionsError> {
    TimeWindowPartitions::daily("2013-01-01")
        .time_zone(crate::TIME_ZONE)
        .end("2014-01-01")
        .build()
}

/// Hours of 2013 in New York: 8,760, with 23 on 2013-03-10 and 25 on 2013-11-03.
pub fn hourly() -> Result<PartitionsDef, PartitionsError> {
    TimeWindowPartitions::hourly("2013-01-01")
        .time_zone(crate::TIME_ZONE)
        .end("2014-01-01")
        .build()
}

/// Weeks from Monday covering 2013: the first and last hold fewer than 7 days of data.
pub fn weekly() -> Result<PartitionsDef, PartitionsError> {
    TimeWindowPartitions::weekly("2012-12-31")
        .time_zone(crate::TIME_ZONE)
        .end("2014-01-06")
        .build()
}

/// All assets of the example, with the data in [`data_dir`].
pub fn definitions() -> Result<Definitions, DefinitionErrors> {
    definitions_with(data_dir())
}

/// All assets of the example, reading the data files in `dir`.
pub fn definitions_with(dir: impl AsRef<Path>) -> Result<Definitions, DefinitionErrors> {
    let mut builder = Definitions::builder()
        .asset::<airlines>()
        .asset::<airports>()
        .asset::<planes>()
        .asset::<raw_flights>()
        .asset::<raw_weather>()
        .asset::<daily_weather>()
        .asset::<cleaned_flights>()
        .asset::<daily_report>()
        .asset::<weekly_report>()
        .asset::<carrier_ranking>();
    // A missing data file shows up when an asset first needs it, as that
    // asset's error, so `assets` and `status` work without the data.
    match FlightsData::open(dir.as_ref()) {
        Ok(data) => builder = builder.resource(data),
        Err(err) => tracing::warn!(error = %err, "flights data not found"),
    }
    builder.build()
}

/// The retry policy of the raw assets, those that read the data files: 3
/// attempts in all, 1 s then 2 s apart (with jitter). A file that cannot be
/// read or parsed is a fatal error and is not retried; what is retried is a
/// step whose worker died, which the leader hands back to the queue with
/// the attempt counted (on PostgreSQL, beside other workers).
pub fn raw_retry() -> RetryPolicy {
    RetryPolicy::exponential(3)
}

fn partition_date(ctx: &AssetContext) -> Result<Date> {
    let key = ctx.require_partition_key()?;
    key.as_str().parse::<Date>().fatal()
}

/// Airlines: carrier code and name.
#[asset(group = "flights", retry = raw_retry())]
pub async fn airlines(ctx: &AssetContext) -> Result<Vec<Airline>> {
    let data = ctx.resource::<FlightsData>()?;
    let rows = crate::read_airlines(&data.dir).fatal()?;
    ctx.add_metadata("rows", rows.len());
    Ok(rows)
}

/// Airports: FAA code, name, position and time zone.
#[asset(group = "flights", retry = raw_retry())]
pub async fn airports(ctx: &AssetContext) -> Result<Vec<Airport>> {
    let data = ctx.resource::<FlightsData>()?;
    let rows = crate::read_airports(&data.dir).fatal()?;
    ctx.add_metadata("rows", rows.len());
    Ok(rows)
}

/// Planes: tail number, maker, model, seats.
#[asset(group = "flights", retry = raw_retry())]
pub async fn planes(ctx: &AssetContext) -> Result<Vec<Plane>> {
    let data = ctx.resource::<FlightsData>()?;
    let rows = crate::read_planes(&data.dir).fatal()?;
    ctx.add_metadata("rows", rows.len());
    Ok(rows)
}

/// The day's departures, as read from flights.csv.zip (by their local date of
/// scheduled departure).
#[asset(group = "flights", partitions = daily(), retry = raw_retry())]
pub async fn raw_flights(ctx: &AssetContext) -> Result<Vec<RawFlight>> {
    let date = partition_date(ctx)?;
    let data = ctx.resource::<FlightsData>()?;
    let rows = data.flights.day(date).fatal()?;
    ctx.add_metadata("rows", rows.len());
    Ok(rows)
}

/// The weather observations of one local hour at EWR, JFK and LGA.
#[asset(group = "flights", partitions = hourly(), retry = raw_retry())]
pub async fn raw_weather(ctx: &AssetContext) -> Result<Vec<WeatherObs>> {
    let window = ctx.require_partition_window()?;
    let data = ctx.resource::<FlightsData>()?;
    let rows = data.weather.hour(window.start, window.end).fatal()?;
    ctx.add_metadata("observations", rows.len());
    Ok(rows)
}

/// The day's weather: its hours of observations and a summary per origin.
#[asset(group = "flights", partitions = daily())]
pub async fn daily_weather(
    ctx: &AssetContext,
    raw_weather: Partitioned<Vec<WeatherObs>>,
) -> Result<DailyWeather> {
    let date = partition_date(ctx)?;
    let hours = raw_weather.len();
    let day = crate::daily_weather(date, raw_weather.into_values().collect());
    ctx.add_metadata("hours", hours);
    ctx.add_metadata("observations", day.observations.len());
    Ok(day)
}

/// The day's flights, typed; cancelled flights apart; carrier names and the
/// origin's weather of the scheduled hour attached.
#[asset(group = "flights", partitions = daily())]
pub async fn cleaned_flights(
    ctx: &AssetContext,
    raw_flights: Vec<RawFlight>,
    airlines: Vec<Airline>,
    daily_weather: DailyWeather,
) -> Result<CleanedFlights> {
    let cleaned = crate::clean_flights(raw_flights, &airlines, &daily_weather);
    let counts = &cleaned.counts;
    ctx.add_metadata("rows_in", counts.rows_in);
    ctx.add_metadata("rows_out", counts.rows_out);
    ctx.add_metadata("cancelled", counts.cancelled);
    ctx.add_metadata("dropped", counts.dropped);
    ctx.add_metadata("without_weather", counts.without_weather);
    if counts.dropped > 0 {
        ctx.log().warn(format!("dropped {} rows", counts.dropped));
    }
    Ok(cleaned)
}

/// Per carrier: flights, cancellations, mean delays, on-time share; the busiest
/// routes and the worst weather hour of the day.
#[asset(group = "flights", partitions = daily())]
pub async fn daily_report(
    ctx: &AssetContext,
    cleaned_flights: CleanedFlights,
    daily_weather: DailyWeather,
) -> Result<DailyReport> {
    let date = partition_date(ctx)?;
    let report = crate::daily_report(date, &cleaned_flights, &daily_weather);
    ctx.add_metadata("flights", report.rows);
    ctx.add_metadata("carriers", report.carriers.len());
    Ok(report)
}

/// The week's carrier figures, from its daily reports (Monday to Sunday).
#[asset(group = "flights", partitions = weekly())]
pub async fn weekly_report(
    ctx: &AssetContext,
    daily_report: Partitioned<DailyReport>,
) -> Result<WeeklyReport> {
    let week_start = partition_date(ctx)?;
    let days: Vec<DailyReport> = daily_report.into_values().collect();
    ctx.add_metadata("days", days.len());
    crate::weekly_report(week_start, &days).fatal()
}

/// Carriers ranked by on-time arrivals over the whole year.
#[asset(group = "flights")]
pub async fn carrier_ranking(
    ctx: &AssetContext,
    daily_report: Partitioned<DailyReport>,
) -> Result<CarrierRanking> {
    let days: Vec<DailyReport> = daily_report.into_values().collect();
    ctx.add_metadata("days", days.len());
    crate::carrier_ranking(&days).fatal()
}
