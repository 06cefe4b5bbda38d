//! A million hourly keys are answered without listing them. Nothing here times
//! anything: a listing implementation would simply make this test crawl.

use flowstone_partitions::{TimeWindowPartitions, Timestamp};

#[test]
fn a_million_hours_answer_at_the_far_end() {
    let def = TimeWindowPartitions::hourly("2000-01-01")
        .time_zone("America/New_York")
        .build()
        .expect("valid def");
    let now: Timestamp = "2120-01-01T00:00:00Z".parse().expect("timestamp");

    let len = def.len(now);
    assert!(len > 1_000_000, "{len}");
    let last = def.key_at(len - 1, now).expect("last key");
    assert_eq!(last.as_str(), "2119-12-31T18:00-05:00");
    assert_eq!(def.index_of(last.as_str(), now), Ok(len - 1));
    assert_eq!(def.index_of("2119-12-31T18:00", now), Ok(len - 1));
    assert_eq!(def.key_at(len, now), None);

    let time = def.as_time().expect("time");
    let window = time.window_at(1_000_000);
    assert_eq!(time.key_for(window.start, now), def.key_at(1_000_000, now));
    assert_eq!(def.keys(len - 3..len + 5, now).count(), 3);
}
