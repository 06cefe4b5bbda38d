//! Time window partitions: a cadence (hourly, daily, weekly, monthly or cron)
//! laid over absolute time in one time zone.
//!
//! Guarantees, for every cadence and zone:
//! - windows are half-open, contiguous and non-overlapping, so every instant
//!   from the first window's start on lies in exactly one window;
//! - a key names exactly one window and `key -> window -> key` round-trips;
//! - counting, indexing and parsing cost at most one step per time zone
//!   transition between the start and the instant asked about (cron excepted,
//!   see `cron`), never one step per window.
//!
//! The set of keys at a given `now` runs from the first window to the last one
//! complete at `now`, moved by `end_offset` windows, and never past an explicit
//! end.

mod calendar;
mod cron;
mod hourly;

use std::ops::Range;
use std::str::FromStr;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::PartitionsDef;
use crate::civil::{
    day_number, first_instant_at_or_after, format_local, month_number, parse_local, parse_offset,
    parse_setting, split_offset,
};
use crate::error::{PartitionKeyError, PartitionsError};
use crate::key::{PartitionKey, TimeWindow};

use self::calendar::{CalendarGrid, Unit, weekday_name};
use self::cron::CronGrid;
use self::hourly::{HourGrid, hour_boundary_at_or_after};

/// The cadence of a time window definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cadence {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Cron,
}

impl Cadence {
    fn name(self) -> &'static str {
        match self {
            Cadence::Hourly => "hourly",
            Cadence::Daily => "daily",
            Cadence::Weekly => "weekly",
            Cadence::Monthly => "monthly",
            Cadence::Cron => "cron",
        }
    }
}

/// Settings for a time window definition, checked by [`TimeWindowBuilder::build`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct TimeWindowBuilder {
    cadence: Cadence,
    cron: Option<String>,
    start: String,
    zone: String,
    end: Option<String>,
    end_offset: i64,
    week_start: Option<Weekday>,
}

impl TimeWindowBuilder {
    /// The IANA time zone the windows follow; `"UTC"` by default.
    pub fn time_zone(mut self, name: &str) -> TimeWindowBuilder {
        self.zone = name.to_owned();
        self
    }

    /// An exclusive end: only windows that finish by this local date or time
    /// are partitions. Without it the range grows with `now`.
    pub fn end(mut self, end: &str) -> TimeWindowBuilder {
        self.end = Some(end.to_owned());
        self
    }

    /// Windows to add past the last one complete at `now` (negative removes
    /// some); an explicit end still caps the range. Default 0.
    pub fn end_offset(mut self, windows: i64) -> TimeWindowBuilder {
        self.end_offset = windows;
        self
    }

    /// The first day of a week; weekly partitions only. Default Monday.
    pub fn week_starts_on(mut self, weekday: Weekday) -> TimeWindowBuilder {
        self.week_start = Some(weekday);
        self
    }

    /// Checks the settings and builds the definition.
    ///
    /// The first window is the first one that starts at or after `start`
    /// (`weekly("2013-01-01")` starts on Monday 2013-01-07).
    ///
    /// # Errors
    ///
    /// An unknown time zone, a start or end that is not a date or local time,
    /// an end not after the first window's start, a cron expression that does
    /// not parse or never fires, or a week start on a non-weekly cadence.
    pub fn build(self) -> Result<PartitionsDef, PartitionsError> {
        TimeWindowPartitions::from_builder(self).map(PartitionsDef::Time)
    }
}

/// How windows are laid out, per cadence.
#[derive(Debug, Clone)]
enum Grid {
    Hourly(HourGrid),
    Calendar(CalendarGrid),
    Cron(Box<CronGrid>),
}

impl Grid {
    fn index_containing(&self, t: Timestamp) -> i64 {
        match self {
            Grid::Hourly(grid) => grid.index_containing(t),
            Grid::Calendar(grid) => grid.index_containing(t),
            Grid::Cron(grid) => grid.index_containing(t),
        }
    }

    fn window_start(&self, index: i64) -> Option<Timestamp> {
        match self {
            Grid::Hourly(grid) => grid.window_start(index),
            Grid::Calendar(grid) => grid.window_start(index),
            Grid::Cron(grid) => grid.window_start(index),
        }
    }

    fn key(&self, index: i64) -> Option<String> {
        match self {
            Grid::Hourly(grid) => Some(grid.key_at_start(grid.window_start(index)?)),
            Grid::Calendar(grid) => grid.key(index),
            Grid::Cron(grid) => {
                let start = grid.window_start(index)?;
                let offset = grid.tz.to_offset(start);
                Some(format_local(offset.to_datetime(start), offset))
            }
        }
    }
}

/// Why a key names no window, before the range is considered.
enum Problem {
    Malformed(String),
    Ambiguous(Vec<String>),
    Nonexistent(String),
}

/// Windows of one cadence in one time zone; see the module docs.
#[derive(Debug, Clone)]
pub struct TimeWindowPartitions {
    cadence: Cadence,
    /// The cron expression as given; `Some` exactly for the cron cadence.
    cron: Option<String>,
    /// The zone's name as the user gave it, for messages.
    zone: String,
    tz: TimeZone,
    grid: Grid,
    /// The first instant of window 0.
    start: Timestamp,
    /// The exclusive end as an instant: windows ending after it are not keys.
    end: Option<Timestamp>,
    end_offset: i64,
}

impl PartialEq for TimeWindowPartitions {
    fn eq(&self, other: &TimeWindowPartitions) -> bool {
        // The grid is derived from these, apart from the cron cache.
        self.cadence == other.cadence
            && self.cron == other.cron
            && self.tz == other.tz
            && self.start == other.start
            && self.end == other.end
            && self.end_offset == other.end_offset
            && self.week_start() == other.week_start()
    }
}

impl Eq for TimeWindowPartitions {}

impl TimeWindowPartitions {
    /// Hourly windows from `start` (`"2013-01-01"` or `"2013-01-01T05:00"`).
    pub fn hourly(start: &str) -> TimeWindowBuilder {
        TimeWindowPartitions::builder(Cadence::Hourly, None, start)
    }

    /// Daily windows from `start`.
    pub fn daily(start: &str) -> TimeWindowBuilder {
        TimeWindowPartitions::builder(Cadence::Daily, None, start)
    }

    /// Weekly windows from the first week start on or after `start`.
    pub fn weekly(start: &str) -> TimeWindowBuilder {
        TimeWindowPartitions::builder(Cadence::Weekly, None, start)
    }

    /// Monthly windows from the first month start on or after `start`.
    pub fn monthly(start: &str) -> TimeWindowBuilder {
        TimeWindowPartitions::builder(Cadence::Monthly, None, start)
    }

    /// One window between each two consecutive fire times of the cron
    /// expression `expr` (five or six fields, as the `croner` crate reads them),
    /// from the first fire at or after `start`.
    pub fn cron(expr: &str, start: &str) -> TimeWindowBuilder {
        TimeWindowPartitions::builder(Cadence::Cron, Some(expr.to_owned()), start)
    }

    fn builder(cadence: Cadence, cron: Option<String>, start: &str) -> TimeWindowBuilder {
        TimeWindowBuilder {
            cadence,
            cron,
            start: start.to_owned(),
            zone: String::from("UTC"),
            end: None,
            end_offset: 0,
            week_start: None,
        }
    }

    fn from_builder(b: TimeWindowBuilder) -> Result<TimeWindowPartitions, PartitionsError> {
        let tz = TimeZone::get(&b.zone).map_err(|e| PartitionsError::BadTimeZone {
            name: b.zone.clone(),
            reason: lowercase_message(&e.to_string()),
        })?;
        let bad_start = |reason: &str| PartitionsError::BadStart {
            value: b.start.clone(),
            reason: reason.to_owned(),
        };
        let start_local = parse_setting(&b.start).map_err(|reason| bad_start(&reason))?;
        if b.week_start.is_some() && b.cadence != Cadence::Weekly {
            return Err(PartitionsError::UnusedSetting {
                setting: "week_starts_on",
                applies_to: "weekly",
                kind: b.cadence.name(),
            });
        }

        // Each cadence starts at its first window boundary at or after `start`.
        let out_of_range = "outside the supported years -9999 to 9999";
        let past_midnight = i64::from(start_local.time() != Time::midnight());
        let start_day = day_number(start_local.date()) + past_midnight;
        let grid = match b.cadence {
            Cadence::Hourly => {
                let from = first_instant_at_or_after(&tz, start_local)
                    .ok_or_else(|| bad_start(out_of_range))?;
                let start =
                    hour_boundary_at_or_after(&tz, from).ok_or_else(|| bad_start(out_of_range))?;
                Grid::Hourly(HourGrid {
                    tz: tz.clone(),
                    start,
                })
            }
            Cadence::Daily => Grid::Calendar(CalendarGrid {
                tz: tz.clone(),
                unit: Unit::Day,
                base: start_day,
            }),
            Cadence::Weekly => {
                let weekday = b.week_start.unwrap_or(Weekday::Monday);
                let wanted = i64::from(weekday.to_monday_zero_offset());
                let actual = (start_day + 3).rem_euclid(7);
                let base = start_day + (wanted - actual).rem_euclid(7);
                Grid::Calendar(CalendarGrid {
                    tz: tz.clone(),
                    unit: Unit::Week(weekday),
                    base,
                })
            }
            Cadence::Monthly => {
                let date = start_local.date();
                let later = i64::from(date.day() != 1) | past_midnight;
                let base = month_number(date) + later;
                Grid::Calendar(CalendarGrid {
                    tz: tz.clone(),
                    unit: Unit::Month,
                    base,
                })
            }
            Cadence::Cron => {
                let expr = b.cron.clone().unwrap_or_default();
                let bad_cron = |reason: String| PartitionsError::BadCron {
                    expr: expr.clone(),
                    reason,
                };
                let cron = croner::Cron::from_str(&expr)
                    .map_err(|e| bad_cron(lowercase_message(&e.to_string())))?;
                let from = first_instant_at_or_after(&tz, start_local)
                    .ok_or_else(|| bad_start(out_of_range))?;
                let grid = CronGrid::new(cron, tz.clone(), from)
                    .ok_or_else(|| bad_cron(String::from("it never fires after the start")))?;
                Grid::Cron(Box::new(grid))
            }
        };
        let start = grid
            .window_start(0)
            .ok_or_else(|| bad_start(out_of_range))?;

        // The end is an instant; windows that finish after it are not keys, and
        // at least one window must finish by it.
        let end = match &b.end {
            None => None,
            Some(text) => {
                let bad_end = |reason: &str| PartitionsError::BadEnd {
                    value: text.clone(),
                    reason: reason.to_owned(),
                };
                let local = parse_setting(text).map_err(|reason| bad_end(&reason))?;
                let end =
                    first_instant_at_or_after(&tz, local).ok_or_else(|| bad_end(out_of_range))?;
                if grid.index_containing(end) < 1 {
                    return Err(PartitionsError::EndBeforeStart {
                        start: grid.key(0).unwrap_or_default(),
                        end: text.clone(),
                    });
                }
                Some(end)
            }
        };

        Ok(TimeWindowPartitions {
            cadence: b.cadence,
            cron: b.cron,
            zone: b.zone,
            tz,
            grid,
            start,
            end,
            end_offset: b.end_offset,
        })
    }

    /// The time zone the windows follow.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The zone's name as given to the builder.
    pub fn time_zone_name(&self) -> &str {
        &self.zone
    }

    /// The first instant of the first window.
    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// The day weeks start on, for weekly partitions.
    pub fn week_start(&self) -> Option<Weekday> {
        match &self.grid {
            Grid::Calendar(CalendarGrid {
                unit: Unit::Week(weekday),
                ..
            }) => Some(*weekday),
            _ => None,
        }
    }

    /// The window of `index`, whether or not it is in range at any `now`.
    ///
    /// Past the last instant that jiff represents (year 9999) the window is the
    /// empty `[Timestamp::MAX, Timestamp::MAX)`.
    pub fn window_at(&self, index: u64) -> TimeWindow {
        let index = i64::try_from(index).unwrap_or(i64::MAX);
        self.window_signed(index).unwrap_or(TimeWindow {
            start: Timestamp::MAX,
            end: Timestamp::MAX,
        })
    }

    /// The key of the window holding `t`; `None` when that window is not a key
    /// at `now`.
    pub fn key_for(&self, t: Timestamp, now: Timestamp) -> Option<PartitionKey> {
        let index = self.grid.index_containing(t);
        let index = u64::try_from(index).ok()?;
        self.key_at(index, now)
    }

    /// The indices of the windows in range at `now` that share an instant with
    /// `w`; empty for an empty `w`.
    pub fn indices_overlapping(&self, w: TimeWindow, now: Timestamp) -> Range<u64> {
        let len = self.len(now);
        let Some((first, end)) = self.signed_overlapping(w) else {
            return 0..0;
        };
        let clip = |i: i64| u64::try_from(i).unwrap_or(0).min(len);
        clip(first)..clip(end).max(clip(first))
    }

    /// How many windows are keys at `now`.
    pub fn len(&self, now: Timestamp) -> u64 {
        // Past an explicit end, `now` cannot add windows; skip counting up to it
        // (a cron grid would have to find every fire in between).
        if let Some(end) = self.end.filter(|&end| now >= end && self.end_offset >= 0) {
            return u64::try_from(self.grid.index_containing(end)).unwrap_or(0);
        }
        let complete = self.grid.index_containing(now).max(0);
        let mut len = complete.saturating_add(self.end_offset).max(0);
        if let Some(end) = self.end {
            len = len.min(self.grid.index_containing(end).max(0));
        }
        u64::try_from(len).unwrap_or(0)
    }

    /// Whether no window is a key at `now`.
    pub fn is_empty(&self, now: Timestamp) -> bool {
        self.len(now) == 0
    }

    /// The key of window `index`, if it is in range at `now`.
    pub fn key_at(&self, index: u64, now: Timestamp) -> Option<PartitionKey> {
        if index >= self.len(now) {
            return None;
        }
        self.grid
            .key(i64::try_from(index).ok()?)
            .map(PartitionKey::from)
    }

    /// Keys `range` (clipped to the keys at `now`), made one at a time.
    pub fn keys(
        &self,
        range: Range<u64>,
        now: Timestamp,
    ) -> Box<dyn Iterator<Item = PartitionKey> + '_> {
        let end = range.end.min(self.len(now));
        let count = usize::try_from(end.saturating_sub(range.start)).unwrap_or(usize::MAX);

        // Hourly windows are found by stepping from one boundary to the next,
        // rather than by walking from the start for every key.
        if let Grid::Hourly(grid) = &self.grid {
            let first = i64::try_from(range.start)
                .ok()
                .and_then(|i| grid.window_start(i));
            let starts = std::iter::successors(first, |&at| grid.next_boundary(at));
            let keys = starts
                .take(count)
                .map(|at| PartitionKey::from(grid.key_at_start(at)));
            return Box::new(keys);
        }
        Box::new((range.start..end).filter_map(move |i| {
            let i = i64::try_from(i).ok()?;
            self.grid.key(i).map(PartitionKey::from)
        }))
    }

    /// The canonical key and index that `key` names at `now`.
    ///
    /// # Errors
    ///
    /// A key in the wrong format, an hourly key without offset for an hour that
    /// repeats or does not exist, or a key outside the range at `now`.
    pub fn parse(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<(u64, PartitionKey), PartitionKeyError> {
        let (index, canonical) = self.locate(key).map_err(|problem| match problem {
            Problem::Malformed(reason) => self.invalid(key, reason, now),
            Problem::Ambiguous(candidates) => PartitionKeyError::Ambiguous {
                key: key.to_owned(),
                zone: self.zone.clone(),
                candidates,
            },
            Problem::Nonexistent(reason) => PartitionKeyError::Nonexistent {
                key: key.to_owned(),
                zone: self.zone.clone(),
                reason,
            },
        })?;

        match u64::try_from(index) {
            Ok(index) if index < self.len(now) => Ok((index, PartitionKey::from(canonical))),
            _ => Err(PartitionKeyError::OutOfRange {
                key: key.to_owned(),
                def: self.label(),
                first: self.first_key(),
                last: self.last_key(now),
            }),
        }
    }

    /// The signed index and canonical text of the window `key` names.
    fn locate(&self, key: &str) -> Result<(i64, String), Problem> {
        match &self.grid {
            Grid::Calendar(grid) => {
                let index = grid.parse(key).map_err(Problem::Malformed)?;
                let canonical = grid.key(index).ok_or_else(|| {
                    Problem::Malformed(String::from("outside the supported years"))
                })?;
                if canonical != key {
                    return Err(Problem::Malformed(String::from("not in canonical form")));
                }
                Ok((index, canonical))
            }
            Grid::Hourly(grid) => self.locate_hour(grid, key),
            Grid::Cron(grid) => self.locate_fire(grid, key),
        }
    }

    fn locate_hour(&self, grid: &HourGrid, key: &str) -> Result<(i64, String), Problem> {
        let (local, offset) = split_offset(key);
        let hour = parse_local(local)
            .ok_or_else(|| Problem::Malformed(String::from("not a local hour with offset")))?;
        if hour.minute() != 0 || hour.second() != 0 {
            return Err(Problem::Malformed(String::from("not on the hour")));
        }

        // Every key whose local hour this is; the offset picks one of them.
        let keys = grid.keys_for_local_hour(hour);
        let texts: Vec<String> = keys
            .iter()
            .map(|&(start, _)| grid.key_at_start(start))
            .collect();
        let chosen = match offset {
            Some(text) => {
                let offset = parse_offset(text)
                    .ok_or_else(|| Problem::Malformed(format!("{text:?} is not an offset")))?;
                match keys.iter().position(|&(_, o)| o == offset) {
                    Some(at) => at,
                    None if keys.is_empty() => return Err(self.skipped(hour)),
                    None => {
                        return Err(Problem::Nonexistent(format!(
                            "the offset there is not {text}; use {}",
                            texts.join(" or ")
                        )));
                    }
                }
            }
            None => match keys.len() {
                0 => return Err(self.skipped(hour)),
                1 => 0,
                _ => return Err(Problem::Ambiguous(texts)),
            },
        };

        let (start, _) = keys[chosen];
        Ok((grid.index_containing(start), texts[chosen].clone()))
    }

    fn skipped(&self, local: jiff::civil::DateTime) -> Problem {
        Problem::Nonexistent(format!(
            "the clocks skip {:02}:{:02} on {} there",
            local.hour(),
            local.minute(),
            crate::civil::format_date(local.date())
        ))
    }

    fn locate_fire(&self, grid: &CronGrid, key: &str) -> Result<(i64, String), Problem> {
        let (local, offset) = split_offset(key);
        let local = parse_local(local)
            .ok_or_else(|| Problem::Malformed(String::from("not a local time with offset")))?;

        // The candidate instants: one per offset the local time can have.
        let candidates: Vec<Timestamp> = match offset {
            Some(text) => {
                let offset = parse_offset(text)
                    .ok_or_else(|| Problem::Malformed(format!("{text:?} is not an offset")))?;
                let at = offset
                    .to_timestamp(local)
                    .map_err(|_| Problem::Malformed(String::from("outside the supported years")))?;
                if self.tz.to_offset(at) != offset {
                    return Err(Problem::Nonexistent(format!(
                        "the offset there is not {text}"
                    )));
                }
                vec![at]
            }
            None => {
                let ambiguous = self.tz.to_ambiguous_timestamp(local);
                match ambiguous.offset() {
                    jiff::tz::AmbiguousOffset::Gap { .. } => return Err(self.skipped(local)),
                    _ => [ambiguous.earlier(), ambiguous.later()]
                        .into_iter()
                        .filter_map(Result::ok)
                        .collect(),
                }
            }
        };
        let mut fires: Vec<Timestamp> = candidates
            .into_iter()
            .filter(|&at| grid.fires_at(at))
            .collect();
        fires.dedup();

        let texts: Vec<String> = fires
            .iter()
            .map(|&at| format_local(self.tz.to_datetime(at), self.tz.to_offset(at)))
            .collect();
        match fires.as_slice() {
            [] => Err(Problem::Malformed(String::from(
                "not a fire time of the schedule",
            ))),
            [at] => Ok((grid.index_containing(*at), texts.concat())),
            _ => Err(Problem::Ambiguous(texts)),
        }
    }

    /// The window `key` names, in range or not.
    pub(crate) fn window_of_key(&self, key: &str) -> Option<TimeWindow> {
        let (index, _) = self.locate(key).ok()?;
        self.window_signed(index)
    }

    /// The key of window `index`, in range or not.
    pub(crate) fn key_unchecked(&self, index: u64) -> Option<PartitionKey> {
        self.grid
            .key(i64::try_from(index).ok()?)
            .map(PartitionKey::from)
    }

    /// The window of a signed index, `None` past jiff's range.
    pub(crate) fn window_signed(&self, index: i64) -> Option<TimeWindow> {
        let start = self.grid.window_start(index)?;
        let end = index
            .checked_add(1)
            .and_then(|next| self.grid.window_start(next))
            .unwrap_or(Timestamp::MAX);
        Some(TimeWindow { start, end })
    }

    /// Signed indices `[first, end)` of every window sharing an instant with
    /// `w`, in range or not; `None` for an empty `w`.
    pub(crate) fn signed_overlapping(&self, w: TimeWindow) -> Option<(i64, i64)> {
        if w.is_empty() {
            return None;
        }
        let last_instant = w.end.checked_sub(SignedDuration::from_nanos(1)).ok()?;
        let first = self.grid.index_containing(w.start);
        let last = self.grid.index_containing(last_instant);
        Some((first, last.saturating_add(1)))
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        self.cadence.name()
    }

    /// The first window's key, in range or not.
    pub(crate) fn first_key(&self) -> String {
        self.grid.key(0).unwrap_or_default()
    }

    /// The last key at `now`, `None` when there is none.
    pub(crate) fn last_key(&self, now: Timestamp) -> Option<String> {
        let last = self.len(now).checked_sub(1)?;
        self.grid.key(i64::try_from(last).ok()?)
    }

    /// "daily partitions in America/New_York".
    pub(crate) fn label(&self) -> String {
        match &self.cron {
            Some(expr) => format!("cron partitions ({expr:?}) in {}", self.zone),
            None => format!("{} partitions in {}", self.cadence.name(), self.zone),
        }
    }

    /// "daily in America/New_York from 2013-01-01 to 2013-12-31".
    pub(crate) fn describe(&self) -> String {
        let mut text = match &self.cron {
            Some(expr) => format!("cron {expr:?} in {}", self.zone),
            None => format!("{} in {}", self.cadence.name(), self.zone),
        };
        if let Some(weekday) = self.week_start().filter(|&w| w != Weekday::Monday) {
            text.push_str(&format!(" (weeks start on {})", weekday_name(weekday)));
        }
        text.push_str(&format!(" from {}", self.first_key()));
        if let Some(end) = self.end {
            let last = self.grid.index_containing(end) - 1;
            text.push_str(&format!(" to {}", self.grid.key(last).unwrap_or_default()));
        }
        if self.end_offset != 0 {
            text.push_str(&format!(" (end offset {:+})", self.end_offset));
        }
        text
    }

    fn invalid(&self, key: &str, reason: String, now: Timestamp) -> PartitionKeyError {
        PartitionKeyError::Invalid {
            key: key.to_owned(),
            def: self.label(),
            reason,
            first: self.first_key(),
            last: self.last_key(now),
        }
    }
}

/// Library messages start with a capital and end with a period; ours do not.
fn lowercase_message(message: &str) -> String {
    let trimmed = message.trim().trim_end_matches('.');
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
