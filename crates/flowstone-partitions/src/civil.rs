//! Calendar arithmetic on plain integers, and the few conversions between civil
//! time and absolute time that every cadence shares.
//!
//! Days are counted from 1970-01-01 and months from year 0, so stepping by a
//! window is an addition and never walks a calendar. Every conversion that can
//! leave jiff's range (years -9999 to 9999) returns `None` instead of failing
//! loudly.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};

/// Days from 1970-01-01 to `date` (negative before it).
pub(crate) fn day_number(date: Date) -> i64 {
    // Howard Hinnant's days_from_civil, on a calendar whose year starts in March.
    let (y, m, d) = (
        i64::from(date.year()),
        i64::from(date.month()),
        i64::from(date.day()),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `n` days after 1970-01-01, if jiff can represent it.
pub(crate) fn date_from_day_number(n: i64) -> Option<Date> {
    let z = n.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Date::new(i16::try_from(y).ok()?, m as i8, d as i8).ok()
}

/// Months from January of year 0 to the month holding `date`.
pub(crate) fn month_number(date: Date) -> i64 {
    i64::from(date.year()) * 12 + i64::from(date.month()) - 1
}

/// The first day of month number `n`, if jiff can represent it.
pub(crate) fn date_from_month_number(n: i64) -> Option<Date> {
    let year = i16::try_from(n.div_euclid(12)).ok()?;
    Date::new(year, n.rem_euclid(12) as i8 + 1, 1).ok()
}

/// The first instant whose local time in `tz` is at or after `dt`.
///
/// For a time the zone skips, that is the transition itself; for a time that
/// repeats, the first of its two instants.
pub(crate) fn first_instant_at_or_after(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, `dt` lands just before the gap; the
            // next offset change is where the skipped stretch begins.
            let before_gap = after.to_timestamp(dt).ok()?;
            next_offset_change(tz, before_gap)
        }
    }
}

/// The first instant strictly after `t` at which the zone's UTC offset changes.
///
/// Transitions that only rename the zone or flip its DST flag are skipped: they
/// change no key.
pub(crate) fn next_offset_change(tz: &TimeZone, t: Timestamp) -> Option<Timestamp> {
    tz.following(t)
        .take(64)
        .map(|transition| transition.timestamp())
        .find(|&at| offset_changes_at(tz, at))
}

/// The last instant strictly before `t` at which the zone's UTC offset changes.
pub(crate) fn previous_offset_change(tz: &TimeZone, t: Timestamp) -> Option<Timestamp> {
    tz.preceding(t)
        .take(64)
        .map(|transition| transition.timestamp())
        .find(|&at| offset_changes_at(tz, at))
}

fn offset_changes_at(tz: &TimeZone, at: Timestamp) -> bool {
    match at.checked_sub(jiff::SignedDuration::from_secs(1)) {
        Ok(just_before) => tz.to_offset(just_before) != tz.to_offset(at),
        Err(_) => false,
    }
}

/// `+05:30`, `-04:00`, `+00:00`; seconds only when the offset has them.
pub(crate) fn format_offset(offset: Offset) -> String {
    let total = offset.seconds();
    let sign = if total < 0 { '-' } else { '+' };
    let abs = total.unsigned_abs();
    let (h, m, s) = (abs / 3600, abs / 60 % 60, abs % 60);
    if s == 0 {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}:{m:02}:{s:02}")
    }
}

/// Reads `±HH:MM` or `±HH:MM:SS`, as [`format_offset`] writes it.
pub(crate) fn parse_offset(text: &str) -> Option<Offset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let parts: Vec<&str> = rest.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| !is_two_digits(p)) {
        return None;
    }
    let number = |i: usize| {
        parts
            .get(i)
            .and_then(|p| p.parse::<i32>().ok())
            .unwrap_or(0)
    };
    let (h, m, s) = (number(0), number(1), number(2));
    if m >= 60 || s >= 60 {
        return None;
    }
    Offset::from_seconds(sign * (h * 3600 + m * 60 + s)).ok()
}

fn is_two_digits(text: &str) -> bool {
    text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Reads `YYYY-MM-DD`.
pub(crate) fn parse_date(text: &str) -> Option<Date> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shaped {
        return None;
    }
    let year = text[0..4].parse().ok()?;
    let month = text[5..7].parse().ok()?;
    let day = text[8..10].parse().ok()?;
    Date::new(year, month, day).ok()
}

/// Reads `YYYY-MM`.
pub(crate) fn parse_month(text: &str) -> Option<Date> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 7
        && bytes[4] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || b.is_ascii_digit());
    if !shaped {
        return None;
    }
    Date::new(text[0..4].parse().ok()?, text[5..7].parse().ok()?, 1).ok()
}

/// Reads `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS`.
pub(crate) fn parse_local(text: &str) -> Option<DateTime> {
    let (date, time) = text.split_once('T')?;
    let date = parse_date(date)?;
    let parts: Vec<&str> = time.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| !is_two_digits(p)) {
        return None;
    }
    let number = |i: usize| parts.get(i).and_then(|p| p.parse::<i8>().ok()).unwrap_or(0);
    let time = Time::new(number(0), number(1), number(2), 0).ok()?;
    Some(date.to_datetime(time))
}

/// Reads a start or end setting: a date (midnight) or a local date-time.
pub(crate) fn parse_setting(text: &str) -> Result<DateTime, String> {
    let text = text.trim();
    if let Some(date) = parse_date(text) {
        return Ok(date.to_datetime(Time::midnight()));
    }
    parse_local(text).ok_or_else(|| {
        String::from(
            "expected a date like \"2013-01-01\" or a local time like \"2013-01-01T05:00\"",
        )
    })
}

/// Splits `2013-11-03T01:00-04:00` into its local part and its offset; the
/// offset is `None` when the text has none.
pub(crate) fn split_offset(text: &str) -> (&str, Option<&str>) {
    let Some(t) = text.find('T') else {
        return (text, None);
    };
    match text[t..].find(['+', '-']) {
        Some(at) => (&text[..t + at], Some(&text[t + at..])),
        None => (text, None),
    }
}

/// Local date-time and offset, `YYYY-MM-DDTHH:MM±HH:MM`, seconds only when set.
pub(crate) fn format_local(dt: DateTime, offset: Offset) -> String {
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute()
    );
    if dt.second() != 0 {
        text.push_str(&format!(":{:02}", dt.second()));
    }
    text.push_str(&format_offset(offset));
    text
}

/// `YYYY-MM-DD`.
pub(crate) fn format_date(date: Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
}

/// `YYYY-MM`.
pub(crate) fn format_month(date: Date) -> String {
    format!("{:04}-{:02}", date.year(), date.month())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_round_trip_and_match_known_dates() {
        assert_eq!(day_number(Date::constant(1970, 1, 1)), 0);
        assert_eq!(day_number(Date::constant(2013, 1, 1)), 15_706);
        assert_eq!(day_number(Date::constant(1969, 12, 31)), -1);
        for n in [-800_000, -1, 0, 59, 60, 15_706, 2_000_000] {
            let date = date_from_day_number(n).expect("in range");
            assert_eq!(day_number(date), n);
        }
        assert_eq!(date_from_day_number(i64::MAX), None);
    }

    #[test]
    fn offsets_format_and_parse() {
        let kolkata = Offset::from_seconds(5 * 3600 + 1800).expect("valid");
        assert_eq!(format_offset(kolkata), "+05:30");
        assert_eq!(
            format_offset(Offset::from_seconds(-4 * 3600).expect("valid")),
            "-04:00"
        );
        assert_eq!(format_offset(Offset::UTC), "+00:00");
        assert_eq!(parse_offset("+05:30"), Some(kolkata));
        assert_eq!(parse_offset("05:30"), None);
        assert_eq!(parse_offset("+5:30"), None);
        assert_eq!(parse_offset("+05:60"), None);
    }

    #[test]
    fn split_offset_finds_the_sign_after_the_time() {
        assert_eq!(
            split_offset("2013-11-03T01:00-04:00"),
            ("2013-11-03T01:00", Some("-04:00"))
        );
        assert_eq!(split_offset("2013-11-03T01:00"), ("2013-11-03T01:00", None));
        assert_eq!(split_offset("2013-11-03"), ("2013-11-03", None));
    }
}
