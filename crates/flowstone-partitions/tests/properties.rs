//! Property tests for partition arithmetic across awkward time zones.
//!
//! Instants are drawn both uniformly and near the zones' offset changes, where
//! hourly windows are cut short, repeated or skipped.

use flowstone_partitions::{
    PartitionKey, PartitionMapping, PartitionsDef, TimeWindow, TimeWindowPartitions, Timestamp,
    UpstreamPartitions,
};
use jiff::SignedDuration;
use jiff::tz::TimeZone;
use proptest::prelude::*;

const ZONES: [&str; 6] = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Australia/Adelaide",
    "UTC",
];

/// 2010-02-01T00:00:00Z, after the first window of every cadence in every
/// zone, and roughly six years on, before the definitions' end.
const FROM: i64 = 1_264_982_400;
const SPAN: i64 = 6 * 365 * 86_400;

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("timestamp")
}

fn build(cadence: usize, zone: &str) -> PartitionsDef {
    let builder = match cadence {
        0 => TimeWindowPartitions::hourly("2010-01-01"),
        1 => TimeWindowPartitions::daily("2010-01-01"),
        2 => TimeWindowPartitions::weekly("2010-01-01"),
        3 => TimeWindowPartitions::monthly("2010-01-01"),
        _ => TimeWindowPartitions::cron("30 */6 * * *", "2010-01-01"),
    };
    builder
        .time_zone(zone)
        .end("2017-01-01")
        .build()
        .expect("valid def")
}

/// An instant within the definitions' range: uniform, or within three hours of
/// an offset change of the zone.
fn instant(zone: &str, seconds: i64, near_change: bool, jitter: i64) -> Timestamp {
    let t = Timestamp::from_second(FROM + seconds).expect("in range");
    if !near_change {
        return t;
    }
    let tz = TimeZone::get(zone).expect("zone");
    match tz.following(t).next() {
        Some(change) if change.timestamp().as_second() < FROM + SPAN => change
            .timestamp()
            .checked_add(SignedDuration::from_secs(jitter))
            .expect("in range"),
        _ => t,
    }
}

fn instants() -> impl Strategy<Value = (usize, usize, i64, bool, i64)> {
    (
        0..ZONES.len(),
        0..5usize,
        0..SPAN,
        any::<bool>(),
        -3 * 3600..3 * 3600i64,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_instant_has_one_key_whose_window_holds_it(
        (zone, cadence, seconds, near, jitter) in instants(),
    ) {
        let zone = ZONES[zone];
        let def = build(cadence, zone);
        let time = def.as_time().expect("time");
        let t = instant(zone, seconds, near, jitter);

        let key = time.key_for(t, now()).expect("instant in range has a key");
        let window = def.time_window(&key).expect("key has a window");
        prop_assert!(window.contains(t), "{key} window {window} misses {t}");

        // The window's first and last instants have the same key, and the ones
        // just outside it do not.
        let last = window.end.checked_sub(SignedDuration::from_nanos(1)).expect("ts");
        prop_assert_eq!(time.key_for(window.start, now()), Some(key.clone()));
        prop_assert_eq!(time.key_for(last, now()), Some(key.clone()));
        let before = window.start.checked_sub(SignedDuration::from_nanos(1)).expect("ts");
        prop_assert_ne!(time.key_for(before, now()), Some(key.clone()));
        prop_assert_ne!(time.key_for(window.end, now()), Some(key.clone()));
    }

    #[test]
    fn indices_keys_and_windows_agree(
        (zone, cadence, seconds, near, jitter) in instants(),
    ) {
        let zone = ZONES[zone];
        let def = build(cadence, zone);
        let time = def.as_time().expect("time");
        let t = instant(zone, seconds, near, jitter);
        let key = time.key_for(t, now()).expect("key");

        let index = def.index_of(key.as_str(), now()).expect("canonical key parses");
        prop_assert_eq!(def.key_at(index, now()), Some(key.clone()));
        prop_assert_eq!(def.parse_key(key.as_str(), now()), Ok(key.clone()));

        // Listing steps through the same keys as indexing.
        let listed: Vec<PartitionKey> = def.keys(index..index + 3, now()).collect();
        let indexed: Vec<PartitionKey> =
            (index..index + 3).filter_map(|i| def.key_at(i, now())).collect();
        prop_assert_eq!(listed, indexed);

        // Windows are contiguous and non-empty; hourly ones are at most an hour.
        let window = time.window_at(index);
        let next = time.window_at(index + 1);
        prop_assert_eq!(Some(window), def.time_window(&key));
        prop_assert_eq!(window.end, next.start);
        prop_assert!(!window.is_empty());
        if cadence == 0 {
            prop_assert!(window.duration() <= SignedDuration::from_hours(1));
            prop_assert!(window.duration() >= SignedDuration::from_mins(30));
        }
        if index > 0 {
            prop_assert_eq!(time.window_at(index - 1).end, window.start);
        }
    }

    #[test]
    fn hourly_keys_without_offset_resolve_to_the_same_window(
        (zone, _cadence, seconds, near, jitter) in instants(),
    ) {
        let zone = ZONES[zone];
        let def = build(0, zone);
        let key = def.as_time().expect("time")
            .key_for(instant(zone, seconds, near, jitter), now())
            .expect("key");
        let local = &key.as_str()[..16];

        match def.parse_key(local, now()) {
            Ok(parsed) => prop_assert_eq!(parsed, key),
            Err(e) => prop_assert!(e.to_string().starts_with("ambiguous"), "{e}"),
        }
    }

    #[test]
    fn the_hours_a_day_reads_tile_the_day(
        (zone, _cadence, seconds, near, jitter) in instants(),
    ) {
        let zone = ZONES[zone];
        let (day_def, hour_def) = (build(1, zone), build(0, zone));
        let t = instant(zone, seconds, near, jitter);
        let day = day_def.as_time().expect("time").key_for(t, now()).expect("day");
        let day_window = day_def.time_window(&day).expect("window");

        let read = PartitionMapping::TimeWindow { offset: 0 }
            .upstream(Some(&day_def), Some(&day), Some(&hour_def), now())
            .expect("fits");
        let hours: Vec<TimeWindow> = read
            .keys(Some(&hour_def), now())
            .map(|h| hour_def.time_window(&h).expect("hour window"))
            .collect();

        prop_assert!(!hours.is_empty());
        prop_assert_eq!(hours[0].start, day_window.start);
        prop_assert_eq!(hours[hours.len() - 1].end, day_window.end);
        for pair in hours.windows(2) {
            prop_assert_eq!(pair[0].end, pair[1].start);
        }
    }

    #[test]
    fn upstream_and_downstream_are_inverse(
        (zone, down_cadence, seconds, near, jitter) in instants(),
        up_cadence in 0..4usize,
        offset in -2..=2i64,
        up_seconds in 0..SPAN,
    ) {
        let zone = ZONES[zone];
        let (down, up) = (build(down_cadence % 4, zone), build(up_cadence, zone));
        let map = PartitionMapping::TimeWindow { offset };
        let down_key = down.as_time().expect("time")
            .key_for(instant(zone, seconds, near, jitter), now())
            .expect("down key");
        // Pick the upstream key near the downstream window half the time, so
        // that reading relations are common enough to test.
        let up_at = if up_seconds % 2 == 0 {
            down.time_window(&down_key).expect("window").start
        } else {
            instant(zone, up_seconds, false, 0)
        };
        let Some(up_key) = up.as_time().expect("time").key_for(up_at, now()) else {
            return Ok(());
        };

        let reads = contains(
            &map.upstream(Some(&down), Some(&down_key), Some(&up), now()).expect("up"),
            &up,
            &up_key,
        );
        let read_by = contains(
            &map.downstream(Some(&down), Some(&up), Some(&up_key), now()).expect("down"),
            &down,
            &down_key,
        );
        prop_assert_eq!(reads, read_by, "{} -> {} with offset {}", down_key, up_key, offset);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_text_is_rejected_or_parsed_without_panicking(
        zone in 0..ZONES.len(),
        cadence in 0..5usize,
        text in "(20[01][0-9]-[01][0-9]-[0-3][0-9](T[0-2][0-9]:[0-5]0([+-][01][0-9]:[03]0)?)?)|\\PC{0,24}",
    ) {
        let def = build(cadence, ZONES[zone]);
        if let Ok(key) = def.parse_key(&text, now()) {
            prop_assert_eq!(def.parse_key(key.as_str(), now()), Ok(key.clone()));
            let index = def.index_of(key.as_str(), now()).expect("parsed key has an index");
            prop_assert_eq!(def.key_at(index, now()), Some(key));
        }
    }
}

fn contains(found: &UpstreamPartitions, def: &PartitionsDef, key: &PartitionKey) -> bool {
    match found {
        UpstreamPartitions::Unpartitioned => false,
        UpstreamPartitions::Keys(keys) => keys.contains(key),
        UpstreamPartitions::Range(range) => def
            .index_of(key.as_str(), now())
            .is_ok_and(|i| range.contains(&i)),
    }
}
