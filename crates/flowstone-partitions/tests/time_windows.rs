//! Time window definitions: every cadence, and the DST days of the zones that
//! make local clocks awkward.

use flowstone_partitions::{PartitionKey, PartitionsDef, TimeWindow, Timestamp, Weekday};
use flowstone_partitions::{PartitionsError, TimeWindowPartitions};

fn ts(text: &str) -> Timestamp {
    text.parse().expect("test timestamp")
}

fn later() -> Timestamp {
    ts("2030-01-01T00:00:00Z")
}

fn key(text: &str) -> PartitionKey {
    PartitionKey::from(text)
}

fn hours(window: TimeWindow) -> f64 {
    window.duration().as_secs_f64() / 3600.0
}

fn all_keys(def: &PartitionsDef, now: Timestamp) -> Vec<String> {
    def.keys(0..def.len(now), now)
        .map(|k| k.as_str().to_owned())
        .collect()
}

fn new_york_2013(build: flowstone_partitions::TimeWindowBuilder) -> PartitionsDef {
    build
        .time_zone("America/New_York")
        .end("2014-01-01")
        .build()
        .expect("valid def")
}

#[test]
fn daily_new_york_2013_has_365_keys_and_dst_days_of_23_and_25_hours() {
    let def = new_york_2013(TimeWindowPartitions::daily("2013-01-01"));

    assert_eq!(def.len(later()), 365);
    assert_eq!(def.key_at(0, later()), Some(key("2013-01-01")));
    assert_eq!(def.key_at(364, later()), Some(key("2013-12-31")));
    assert_eq!(def.key_at(365, later()), None);
    assert_eq!(
        def.describe(),
        "daily in America/New_York from 2013-01-01 to 2013-12-31"
    );
    assert_eq!(def.kind_name(), "daily");

    let spring = def.time_window(&key("2013-03-10")).expect("window");
    assert_eq!(spring.start, ts("2013-03-10T05:00:00Z"));
    assert_eq!(spring.end, ts("2013-03-11T04:00:00Z"));
    assert_eq!(hours(spring), 23.0);
    let fall = def.time_window(&key("2013-11-03")).expect("window");
    assert_eq!(hours(fall), 25.0);
    assert_eq!(
        hours(def.time_window(&key("2013-07-04")).expect("window")),
        24.0
    );
}

#[test]
fn hourly_new_york_spring_forward_day_has_23_keys_and_no_2am() {
    let def = new_york_2013(TimeWindowPartitions::hourly("2013-01-01"));
    let day = TimeWindow {
        start: ts("2013-03-10T05:00:00Z"),
        end: ts("2013-03-11T04:00:00Z"),
    };
    let hours = def
        .as_time()
        .expect("time")
        .indices_overlapping(day, later());

    assert_eq!(hours.end - hours.start, 23);
    let keys: Vec<String> = def.keys(hours, later()).map(|k| k.to_string()).collect();
    assert_eq!(keys[0], "2013-03-10T00:00-05:00");
    assert_eq!(keys[1], "2013-03-10T01:00-05:00");
    assert_eq!(keys[2], "2013-03-10T03:00-04:00");
    assert_eq!(keys[22], "2013-03-10T23:00-04:00");
    assert!(!keys.iter().any(|k| k.starts_with("2013-03-10T02:")));
}

#[test]
fn hourly_new_york_fall_back_day_has_25_keys_with_two_one_oclocks() {
    let def = new_york_2013(TimeWindowPartitions::hourly("2013-01-01"));
    let day = def.as_time().expect("time");
    let window = TimeWindow {
        start: ts("2013-11-03T04:00:00Z"),
        end: ts("2013-11-04T05:00:00Z"),
    };
    let hours = day.indices_overlapping(window, later());

    assert_eq!(hours.end - hours.start, 25);
    let keys: Vec<String> = def.keys(hours, later()).map(|k| k.to_string()).collect();
    assert_eq!(keys[1], "2013-11-03T01:00-04:00");
    assert_eq!(keys[2], "2013-11-03T01:00-05:00");
    assert_eq!(keys[3], "2013-11-03T02:00-05:00");

    let first = def
        .time_window(&key("2013-11-03T01:00-04:00"))
        .expect("window");
    let second = def
        .time_window(&key("2013-11-03T01:00-05:00"))
        .expect("window");
    assert_eq!(first.start, ts("2013-11-03T05:00:00Z"));
    assert_eq!(first.end, second.start);
    assert_eq!(second.end, ts("2013-11-03T07:00:00Z"));
}

#[test]
fn hourly_new_york_year_has_8760_keys() {
    let def = new_york_2013(TimeWindowPartitions::hourly("2013-01-01"));
    assert_eq!(def.len(later()), 8760);
    assert_eq!(
        def.key_at(8759, later()),
        Some(key("2013-12-31T23:00-05:00"))
    );
    assert_eq!(all_keys(&def, later()).len(), 8760);
}

#[test]
fn hourly_keys_without_offset_are_canonicalised_or_rejected() {
    let def = new_york_2013(TimeWindowPartitions::hourly("2013-01-01"));
    let now = later();

    assert_eq!(
        def.parse_key("2013-07-01T12:00", now),
        Ok(key("2013-07-01T12:00-04:00"))
    );
    assert_eq!(
        def.parse_key("2013-11-03T01:00-05:00", now),
        Ok(key("2013-11-03T01:00-05:00"))
    );

    let ambiguous = def.parse_key("2013-11-03T01:00", now).expect_err("repeats");
    assert_eq!(
        ambiguous.to_string(),
        "ambiguous partition key \"2013-11-03T01:00\" in America/New_York: the hour repeats; \
         use \"2013-11-03T01:00-04:00\" or \"2013-11-03T01:00-05:00\""
    );

    let skipped = def.parse_key("2013-03-10T02:00", now).expect_err("skipped");
    let text = skipped.to_string();
    assert!(
        text.contains("does not exist in America/New_York"),
        "{text}"
    );
    assert!(text.contains("02:00 on 2013-03-10"), "{text}");

    let wrong_offset = def
        .parse_key("2013-07-01T12:00-05:00", now)
        .expect_err("offset");
    assert!(
        wrong_offset.to_string().contains("2013-07-01T12:00-04:00"),
        "{wrong_offset}"
    );
    assert!(def.parse_key("2013-07-01T12:30-04:00", now).is_err());
}

#[test]
fn lord_howe_half_hour_dst_gives_30_minute_windows() {
    let def = TimeWindowPartitions::hourly("2013-01-01")
        .time_zone("Australia/Lord_Howe")
        .build()
        .expect("valid def");
    let now = later();

    // Clocks go from 02:00 +10:30 to 02:30 +11:00 on 2013-10-06.
    let after_jump = def.parse_key("2013-10-06T02:00", now).expect("exists once");
    assert_eq!(after_jump, key("2013-10-06T02:00+11:00"));
    let window = def.time_window(&after_jump).expect("window");
    assert_eq!(hours(window), 0.5);
    assert_eq!(window.start, ts("2013-10-05T15:30:00Z"));

    // Clocks go from 02:00 +11:00 back to 01:30 +10:30 on 2013-04-07.
    let summer = def
        .time_window(&key("2013-04-07T01:00+11:00"))
        .expect("window");
    let winter = def
        .time_window(&key("2013-04-07T01:00+10:30"))
        .expect("window");
    assert_eq!(hours(summer), 1.0);
    assert_eq!(hours(winter), 0.5);
    assert_eq!(summer.end, winter.start);
    assert!(def.parse_key("2013-04-07T01:00", now).is_err());

    let day = TimeWindowPartitions::daily("2013-01-01")
        .time_zone("Australia/Lord_Howe")
        .build()
        .expect("valid def");
    let short_day = day.time_window(&key("2013-10-06")).expect("window");
    assert_eq!(hours(short_day), 23.5);
    let long_day = day.time_window(&key("2013-04-07")).expect("window");
    assert_eq!(hours(long_day), 24.5);
}

#[test]
fn kolkata_keys_carry_the_half_hour_offset() {
    let def = TimeWindowPartitions::hourly("2013-01-01T05:00")
        .time_zone("Asia/Kolkata")
        .build()
        .expect("valid def");

    let first = def.key_at(0, later()).expect("first key");
    assert_eq!(first, key("2013-01-01T05:00+05:30"));
    assert_eq!(
        def.time_window(&first).map(|w| w.start),
        Some(ts("2012-12-31T23:30:00Z"))
    );
    assert!(
        def.keys(0..50, later())
            .all(|k| k.as_str().ends_with("+05:30"))
    );
    assert_eq!(
        def.parse_key("2013-01-02T10:00", later()),
        Ok(key("2013-01-02T10:00+05:30"))
    );
}

#[test]
fn weekly_starts_on_the_configured_weekday() {
    let monday = TimeWindowPartitions::weekly("2013-01-01")
        .end("2014-01-01")
        .build()
        .expect("def");
    assert_eq!(monday.key_at(0, later()), Some(key("2013-01-07")));
    assert_eq!(monday.len(later()), 51);
    assert_eq!(
        days(monday.time_window(&key("2013-01-07")).expect("window")),
        7.0
    );

    let sunday = TimeWindowPartitions::weekly("2013-01-01")
        .week_starts_on(Weekday::Sunday)
        .time_zone("America/New_York")
        .build()
        .expect("def");
    assert_eq!(sunday.key_at(0, later()), Some(key("2013-01-06")));
    let spring_week = sunday.time_window(&key("2013-03-10")).expect("window");
    assert_eq!(hours(spring_week), 7.0 * 24.0 - 1.0);

    let wrong_day = sunday
        .parse_key("2013-03-11", later())
        .expect_err("a monday");
    assert!(
        wrong_day.to_string().contains("its week is 2013-03-10"),
        "{wrong_day}"
    );
}

fn days(window: TimeWindow) -> f64 {
    hours(window) / 24.0
}

#[test]
fn monthly_keys_are_year_and_month() {
    let def = TimeWindowPartitions::monthly("2013-01-01")
        .time_zone("Europe/London")
        .end("2014-01-01")
        .build()
        .expect("def");
    assert_eq!(def.len(later()), 12);
    assert_eq!(all_keys(&def, later())[2], "2013-03");
    let march = def.time_window(&key("2013-03")).expect("window");
    assert_eq!(hours(march), 31.0 * 24.0 - 1.0);
    assert_eq!(def.index_of("2013-12", later()), Ok(11));

    let mid_month = TimeWindowPartitions::monthly("2013-01-15")
        .build()
        .expect("def");
    assert_eq!(mid_month.key_at(0, later()), Some(key("2013-02")));
}

#[test]
fn cron_windows_run_between_fire_times() {
    let def = TimeWindowPartitions::cron("0 6 * * *", "2013-01-01")
        .time_zone("America/New_York")
        .end("2013-02-01")
        .build()
        .expect("def");
    let now = later();

    // Fires 06:00 on Jan 1..31; the window from Jan 31 06:00 ends after the end.
    assert_eq!(def.len(now), 30);
    assert_eq!(def.key_at(0, now), Some(key("2013-01-01T06:00-05:00")));
    assert_eq!(def.index_of("2013-01-03T06:00-05:00", now), Ok(2));
    assert_eq!(
        def.parse_key("2013-01-03T06:00", now),
        Ok(key("2013-01-03T06:00-05:00"))
    );
    assert!(def.parse_key("2013-01-03T07:00", now).is_err());
    let window = def
        .time_window(&key("2013-01-01T06:00-05:00"))
        .expect("window");
    assert_eq!(hours(window), 24.0);
    assert_eq!(def.kind_name(), "cron");

    let dst = TimeWindowPartitions::cron("0 6 * * *", "2013-03-01")
        .time_zone("America/New_York")
        .build()
        .expect("def");
    let short = dst
        .time_window(&key("2013-03-09T06:00-05:00"))
        .expect("window");
    assert_eq!(hours(short), 23.0);
}

#[test]
fn default_end_is_the_last_complete_window_plus_end_offset() {
    let def = TimeWindowPartitions::daily("2013-01-01")
        .build()
        .expect("def");
    let noon = ts("2013-01-10T12:00:00Z");
    assert_eq!(def.len(noon), 9);
    assert_eq!(def.key_at(8, noon), Some(key("2013-01-09")));
    assert_eq!(def.len(ts("2013-01-10T00:00:00Z")), 9);
    assert_eq!(def.len(ts("2012-06-01T00:00:00Z")), 0);

    let ahead = TimeWindowPartitions::daily("2013-01-01")
        .end_offset(1)
        .build()
        .expect("def");
    assert_eq!(ahead.len(noon), 10);
    assert_eq!(ahead.key_at(9, noon), Some(key("2013-01-10")));

    let capped = TimeWindowPartitions::daily("2013-01-01")
        .end("2013-01-05")
        .end_offset(3)
        .build()
        .expect("def");
    assert_eq!(capped.len(later()), 4);
    assert_eq!(capped.len(ts("2013-01-01T01:00:00Z")), 3);
    assert_eq!(capped.len(ts("2013-01-03T01:00:00Z")), 4);
}

#[test]
fn key_for_and_indices_overlapping_stay_in_range() {
    let def = new_york_2013(TimeWindowPartitions::daily("2013-01-01"));
    let time = def.as_time().expect("time");
    let now = later();

    assert_eq!(
        time.key_for(ts("2013-03-10T04:59:59Z"), now),
        Some(key("2013-03-09"))
    );
    assert_eq!(
        time.key_for(ts("2013-03-10T05:00:00Z"), now),
        Some(key("2013-03-10"))
    );
    assert_eq!(time.key_for(ts("2012-12-31T12:00:00Z"), now), None);
    assert_eq!(time.key_for(ts("2014-01-01T12:00:00Z"), now), None);

    let whole = TimeWindow {
        start: ts("2000-01-01T00:00:00Z"),
        end: ts("2020-01-01T00:00:00Z"),
    };
    assert_eq!(time.indices_overlapping(whole, now), 0..365);
    let empty = TimeWindow {
        start: ts("2013-05-01T00:00:00Z"),
        end: ts("2013-05-01T00:00:00Z"),
    };
    assert_eq!(time.indices_overlapping(empty, now), 0..0);
    assert_eq!(time.window_at(0).start, ts("2013-01-01T05:00:00Z"));
}

#[test]
fn builders_reject_bad_settings_with_the_value_named() {
    let zone = TimeWindowPartitions::daily("2013-01-01")
        .time_zone("America/Nowhere")
        .build();
    let Err(PartitionsError::BadTimeZone { name, .. }) = &zone else {
        panic!("expected a time zone error, got {zone:?}");
    };
    assert_eq!(name, "America/Nowhere");
    let text = zone.expect_err("bad zone").to_string();
    assert!(
        text.starts_with("unknown time zone \"America/Nowhere\""),
        "{text}"
    );

    let start = TimeWindowPartitions::daily("2013-13-01")
        .build()
        .expect_err("bad start");
    assert!(matches!(start, PartitionsError::BadStart { .. }), "{start}");
    let end = TimeWindowPartitions::daily("2013-01-01")
        .end("soon")
        .build()
        .expect_err("bad end");
    assert!(matches!(end, PartitionsError::BadEnd { .. }), "{end}");
    let reversed = TimeWindowPartitions::daily("2013-01-01")
        .end("2012-01-01")
        .build()
        .expect_err("reversed");
    assert!(
        matches!(reversed, PartitionsError::EndBeforeStart { .. }),
        "{reversed}"
    );

    let short = TimeWindowPartitions::daily("2013-01-01")
        .end("2013-01-01T12:00")
        .build();
    assert!(
        matches!(short, Err(PartitionsError::EndBeforeStart { .. })),
        "{short:?}"
    );

    let cron = TimeWindowPartitions::cron("every day", "2013-01-01")
        .build()
        .expect_err("bad cron");
    let PartitionsError::BadCron { expr, reason } = &cron else {
        panic!("expected a cron error, got {cron:?}");
    };
    assert_eq!(expr, "every day");
    assert!(
        !reason.ends_with('.') && !reason.starts_with(char::is_uppercase),
        "{reason}"
    );

    let never = TimeWindowPartitions::cron("0 0 30 2 *", "2013-01-01").build();
    assert!(
        matches!(never, Err(PartitionsError::BadCron { .. })),
        "{never:?}"
    );

    let unused = TimeWindowPartitions::daily("2013-01-01")
        .week_starts_on(Weekday::Sunday)
        .build();
    assert!(
        matches!(unused, Err(PartitionsError::UnusedSetting { .. })),
        "{unused:?}"
    );
}

#[test]
fn bad_keys_say_what_is_wrong_and_what_is_valid() {
    let def = new_york_2013(TimeWindowPartitions::daily("2013-01-01"));
    let now = later();

    assert_eq!(
        def.parse_key("2013-13-01", now)
            .expect_err("not a date")
            .to_string(),
        "invalid partition key \"2013-13-01\" for daily partitions in America/New_York: not a \
         date; expected a key like \"2013-01-01\", from 2013-01-01 to 2013-12-31"
    );
    assert_eq!(
        def.parse_key("2014-02-01", now)
            .expect_err("outside")
            .to_string(),
        "partition key \"2014-02-01\" is outside daily partitions in America/New_York \
         (2013-01-01 to 2013-12-31)"
    );
    assert_eq!(def.index_of("2013-02-01", now), Ok(31));
    assert_eq!(def.range("2013-01-02", "2013-01-04", now), Ok(1..4));
    let reversed = def
        .range("2013-01-04", "2013-01-02", now)
        .expect_err("reversed");
    assert_eq!(
        reversed.to_string(),
        "partition range is reversed: \"2013-01-04\" comes after \"2013-01-02\""
    );

    let young = TimeWindowPartitions::daily("2013-01-01")
        .build()
        .expect("def");
    let none_yet = young
        .parse_key("2013-01-01", ts("2013-01-01T03:00:00Z"))
        .expect_err("empty");
    assert!(
        none_yet.to_string().contains("none complete yet"),
        "{none_yet}"
    );
}

#[test]
fn descriptions_name_cadence_zone_and_range() {
    let hourly = new_york_2013(TimeWindowPartitions::hourly("2013-01-01"));
    assert_eq!(
        hourly.describe(),
        "hourly in America/New_York from 2013-01-01T00:00-05:00 to 2013-12-31T23:00-05:00"
    );
    let cron = TimeWindowPartitions::cron("0 6 * * *", "2013-01-01")
        .build()
        .expect("def");
    assert_eq!(
        cron.describe(),
        "cron \"0 6 * * *\" in UTC from 2013-01-01T06:00+00:00"
    );
    let weekly = TimeWindowPartitions::weekly("2013-01-01")
        .week_starts_on(Weekday::Sunday)
        .end_offset(1)
        .build()
        .expect("def");
    assert_eq!(
        weekly.describe(),
        "weekly in UTC (weeks start on sunday) from 2013-01-06 (end offset +1)"
    );
}
