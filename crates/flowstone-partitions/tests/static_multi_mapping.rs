//! Static and multi definitions, and the mappings between definitions.

use std::collections::BTreeMap;

use flowstone_partitions::{
    MappingError, MultiPartitions, PartitionKey, PartitionKeyError, PartitionMapping,
    PartitionsDef, PartitionsError, StaticPartitions, TimeWindowPartitions, Timestamp,
    UpstreamPartitions,
};

fn ts(text: &str) -> Timestamp {
    text.parse().expect("test timestamp")
}

fn now() -> Timestamp {
    ts("2030-01-01T00:00:00Z")
}

fn key(text: &str) -> PartitionKey {
    PartitionKey::from(text)
}

fn keys(texts: &[&str]) -> UpstreamPartitions {
    UpstreamPartitions::Keys(texts.iter().map(|t| key(t)).collect())
}

fn carriers() -> PartitionsDef {
    StaticPartitions::new(["AA", "B6", "DL", "UA"]).expect("valid carriers")
}

fn daily() -> PartitionsDef {
    TimeWindowPartitions::daily("2013-01-01")
        .time_zone("America/New_York")
        .end("2014-01-01")
        .build()
        .expect("valid daily")
}

fn hourly() -> PartitionsDef {
    TimeWindowPartitions::hourly("2013-01-01")
        .time_zone("America/New_York")
        .end("2014-01-01")
        .build()
        .expect("valid hourly")
}

fn date_by_carrier() -> PartitionsDef {
    MultiPartitions::new(vec![
        ("date".into(), daily()),
        ("carrier".into(), carriers()),
    ])
    .expect("valid multi")
}

#[test]
fn static_keys_keep_their_order_and_reject_unknown_keys() {
    let def = carriers();
    assert_eq!(def.len(now()), 4);
    assert_eq!(def.index_of("DL", now()), Ok(2));
    assert_eq!(def.key_at(1, now()), Some(key("B6")));
    assert_eq!(def.describe(), "static: AA, B6, DL, UA");
    assert_eq!(def.time_window(&key("AA")), None);
    assert_eq!(
        def.parse_key("XX", now()).expect_err("unknown").to_string(),
        "unknown partition key \"XX\" for static partitions; valid keys: AA, B6, DL, UA"
    );

    let many = StaticPartitions::new((0..25).map(|i| format!("k{i:02}"))).expect("valid");
    let text = many
        .parse_key("zz", now())
        .expect_err("unknown")
        .to_string();
    assert!(text.ends_with("k08, k09, and 15 more"), "{text}");
}

#[test]
fn static_keys_are_checked_when_built() {
    let empty: [&str; 0] = [];
    assert_eq!(
        StaticPartitions::new(empty),
        Err(PartitionsError::EmptyStatic)
    );
    assert_eq!(
        StaticPartitions::new(["a", "b", "a"]),
        Err(PartitionsError::DuplicateKey("a".into()))
    );
    for bad in ["", "a|b", "a/b", "a\\b", "..", ".", "a\nb"] {
        let err = StaticPartitions::new([bad]).expect_err("invalid key");
        assert!(
            matches!(&err, PartitionsError::InvalidKey { key, .. } if key == bad),
            "{err}"
        );
    }
}

#[test]
fn multi_keys_list_all_carriers_of_a_date_together() {
    let def = date_by_carrier();
    assert_eq!(def.len(now()), 365 * 4);
    assert_eq!(def.key_at(0, now()), Some(key("2013-01-01|AA")));
    assert_eq!(def.key_at(3, now()), Some(key("2013-01-01|UA")));
    assert_eq!(def.key_at(4, now()), Some(key("2013-01-02|AA")));
    assert_eq!(def.index_of("2013-01-02|DL", now()), Ok(6));
    assert_eq!(def.describe(), "date × carrier");
    assert_eq!(def.dimensions(), vec!["date", "carrier"]);
    assert_eq!(
        def.dimension_key(&key("2013-01-02|DL"), "carrier"),
        Some("DL")
    );
    assert_eq!(def.dimension_key(&key("2013-01-02|DL"), "route"), None);
    assert_eq!(def.example_key(now()), "2013-01-01|AA");

    let window = def.time_window(&key("2013-03-10|AA")).expect("date window");
    assert_eq!(window.start, ts("2013-03-10T05:00:00Z"));

    let listed: Vec<String> = def.keys(5..8, now()).map(|k| k.to_string()).collect();
    assert_eq!(listed, ["2013-01-02|B6", "2013-01-02|DL", "2013-01-02|UA"]);
}

#[test]
fn multi_key_errors_name_the_dimension() {
    let def = date_by_carrier();
    let wrong = def
        .parse_key("2013-01-01|XX", now())
        .expect_err("unknown carrier");
    assert!(
        matches!(&wrong, PartitionKeyError::InDimension { dimension, .. } if dimension == "carrier")
    );
    assert!(
        wrong.to_string().contains("unknown partition key \"XX\""),
        "{wrong}"
    );

    let parts = def.parse_key("2013-01-01", now()).expect_err("one part");
    assert!(matches!(
        parts,
        PartitionKeyError::WrongParts {
            expected: 2,
            got: 1,
            ..
        }
    ));
}

#[test]
fn multi_rules_are_checked_when_built() {
    let one = MultiPartitions::new(vec![("carrier".into(), carriers())]);
    assert_eq!(one, Err(PartitionsError::TooFewDimensions(1)));
    let same = MultiPartitions::new(vec![("a".into(), carriers()), ("a".into(), daily())]);
    assert_eq!(same, Err(PartitionsError::DuplicateDimension("a".into())));
    let nested = MultiPartitions::new(vec![
        ("a".into(), carriers()),
        ("b".into(), date_by_carrier()),
    ]);
    assert_eq!(nested, Err(PartitionsError::NestedMulti("b".into())));
    let two_times = MultiPartitions::new(vec![("a".into(), daily()), ("b".into(), hourly())]);
    assert!(matches!(
        two_times,
        Err(PartitionsError::TwoTimeDimensions { .. })
    ));
}

#[test]
fn default_mappings_follow_the_contract() {
    let (d, h, c, m) = (daily(), hourly(), carriers(), date_by_carrier());
    assert_eq!(
        PartitionMapping::default_for(Some(&d), Some(&d)),
        PartitionMapping::Identity
    );
    assert_eq!(
        PartitionMapping::default_for(Some(&d), None),
        PartitionMapping::Identity
    );
    assert_eq!(
        PartitionMapping::default_for(None, Some(&d)),
        PartitionMapping::All
    );
    assert_eq!(
        PartitionMapping::default_for(Some(&d), Some(&h)),
        PartitionMapping::TimeWindow { offset: 0 }
    );
    assert_eq!(
        PartitionMapping::default_for(Some(&m), Some(&c)),
        PartitionMapping::Dimension {
            name: "carrier".into()
        }
    );
    assert_eq!(
        PartitionMapping::default_for(Some(&d), Some(&m)),
        PartitionMapping::Dimension {
            name: "date".into()
        }
    );
    assert_eq!(
        PartitionMapping::default_for(Some(&c), Some(&d)),
        PartitionMapping::All
    );
}

#[test]
fn a_day_reads_its_23_24_or_25_hours() {
    let (d, h) = (daily(), hourly());
    let map = PartitionMapping::TimeWindow { offset: 0 };
    let read = |day: &str| {
        map.upstream(Some(&d), Some(&key(day)), Some(&h), now())
            .expect("fits")
    };

    assert_eq!(read("2013-03-10").count(), 23);
    assert_eq!(read("2013-11-03").count(), 25);
    assert_eq!(read("2013-07-04").count(), 24);
    let UpstreamPartitions::Keys(fall) = read("2013-11-03") else {
        panic!("a day is listed as keys");
    };
    assert_eq!(fall[0], key("2013-11-03T00:00-04:00"));
    assert_eq!(fall[24], key("2013-11-03T23:00-05:00"));

    // An hour is read by the day holding it, in New York time.
    let readers = map.downstream(
        Some(&d),
        Some(&h),
        Some(&key("2013-11-03T01:00-05:00")),
        now(),
    );
    assert_eq!(readers, Ok(keys(&["2013-11-03"])));
    let readers = map.downstream(
        Some(&d),
        Some(&h),
        Some(&key("2013-03-11T00:00-04:00")),
        now(),
    );
    assert_eq!(readers, Ok(keys(&["2013-03-11"])));
}

#[test]
fn an_offset_reads_the_previous_window_and_drops_what_is_out_of_range() {
    let d = daily();
    let yesterday = PartitionMapping::TimeWindow { offset: -1 };
    assert_eq!(
        yesterday.upstream(Some(&d), Some(&key("2013-03-11")), Some(&d), now()),
        Ok(keys(&["2013-03-10"]))
    );
    assert_eq!(
        yesterday.upstream(Some(&d), Some(&key("2013-01-01")), Some(&d), now()),
        Ok(keys(&[]))
    );
    assert_eq!(
        yesterday.downstream(Some(&d), Some(&d), Some(&key("2013-03-10")), now()),
        Ok(keys(&["2013-03-11"]))
    );
    assert_eq!(
        yesterday.downstream(Some(&d), Some(&d), Some(&key("2013-12-31")), now()),
        Ok(keys(&[]))
    );
}

#[test]
fn hourly_reads_its_day_and_a_week_reads_seven_days() {
    let (d, h) = (daily(), hourly());
    let map = PartitionMapping::TimeWindow { offset: 0 };
    assert_eq!(
        map.upstream(
            Some(&h),
            Some(&key("2013-11-03T01:00-05:00")),
            Some(&d),
            now()
        ),
        Ok(keys(&["2013-11-03"]))
    );

    let weekly = TimeWindowPartitions::weekly("2013-01-07")
        .time_zone("America/New_York")
        .build()
        .expect("weekly");
    let read = map.upstream(Some(&weekly), Some(&key("2013-03-04")), Some(&d), now());
    let UpstreamPartitions::Keys(days) = read.expect("fits") else {
        panic!("a week is listed as keys");
    };
    assert_eq!(days.len(), 7);
    assert_eq!(days[0], key("2013-03-04"));
    assert_eq!(days[6], key("2013-03-10"));

    let year = TimeWindowPartitions::monthly("2013-01-01")
        .end("2014-01-01")
        .build()
        .expect("m");
    let all_hours = map.upstream(Some(&year), Some(&key("2013-05")), Some(&hourly()), now());
    assert!(matches!(all_hours, Ok(UpstreamPartitions::Range(ref r)) if r.end - r.start == 744));
}

#[test]
fn dimension_mappings_go_both_ways() {
    let (c, d, m) = (carriers(), daily(), date_by_carrier());
    let by_carrier = PartitionMapping::Dimension {
        name: "carrier".into(),
    };
    assert_eq!(
        by_carrier.upstream(Some(&m), Some(&key("2013-01-02|DL")), Some(&c), now()),
        Ok(keys(&["DL"]))
    );
    let readers = by_carrier.downstream(Some(&m), Some(&c), Some(&key("DL")), now());
    let UpstreamPartitions::Keys(readers) = readers.expect("fits") else {
        panic!("strided readers are listed as keys");
    };
    assert_eq!(readers.len(), 365);
    assert_eq!(readers[1], key("2013-01-02|DL"));

    let by_date = PartitionMapping::Dimension {
        name: "date".into(),
    };
    assert_eq!(
        by_date.upstream(Some(&d), Some(&key("2013-01-02")), Some(&m), now()),
        Ok(keys(&[
            "2013-01-02|AA",
            "2013-01-02|B6",
            "2013-01-02|DL",
            "2013-01-02|UA"
        ]))
    );
}

#[test]
fn all_static_and_unpartitioned_mappings() {
    let (c, d) = (carriers(), daily());
    assert_eq!(
        PartitionMapping::All.upstream(Some(&d), Some(&key("2013-01-05")), Some(&c), now()),
        Ok(UpstreamPartitions::Range(0..4))
    );
    assert_eq!(
        PartitionMapping::Identity.upstream(Some(&d), Some(&key("2013-01-05")), None, now()),
        Ok(UpstreamPartitions::Unpartitioned)
    );
    assert_eq!(
        PartitionMapping::All.downstream(None, Some(&d), Some(&key("2013-01-05")), now()),
        Ok(UpstreamPartitions::Unpartitioned)
    );

    let regions = StaticPartitions::new(["east", "west"]).expect("regions");
    let map = PartitionMapping::Static(BTreeMap::from([
        ("east".to_owned(), vec!["B6".to_owned(), "DL".to_owned()]),
        ("west".to_owned(), vec!["UA".to_owned(), "DL".to_owned()]),
    ]));
    assert_eq!(map.validate(Some(&regions), Some(&c)), Ok(()));
    assert_eq!(
        map.upstream(Some(&regions), Some(&key("west")), Some(&c), now()),
        Ok(keys(&["DL", "UA"]))
    );
    assert_eq!(
        map.downstream(Some(&regions), Some(&c), Some(&key("DL")), now()),
        Ok(keys(&["east", "west"]))
    );
}

#[test]
fn validation_says_what_fits_instead() {
    let (c, d, h, m) = (carriers(), daily(), hourly(), date_by_carrier());
    let identity = PartitionMapping::Identity
        .validate(Some(&d), Some(&h))
        .expect_err("differ");
    assert!(
        matches!(&identity, MappingError::DoesNotFit { suggestion, .. } if suggestion == "time window")
    );
    let text = identity.to_string();
    assert!(
        text.starts_with("identity mapping does not fit: downstream is daily"),
        "{text}"
    );

    let window = PartitionMapping::TimeWindow { offset: 0 }.validate(Some(&c), Some(&d));
    assert!(matches!(window, Err(MappingError::DoesNotFit { .. })));
    let dim = PartitionMapping::Dimension {
        name: "route".into(),
    }
    .validate(Some(&m), Some(&c));
    assert!(
        matches!(&dim, Err(MappingError::UnknownDimension { available, .. }) if available == "date, carrier")
    );
    let bad_static = PartitionMapping::Static(BTreeMap::from([("AA".into(), vec!["ZZ".into()])]));
    let err = bad_static
        .validate(Some(&c), Some(&c))
        .expect_err("unknown key");
    assert!(
        matches!(&err, MappingError::UnknownStaticKey { side: "upstream", key, .. } if key == "ZZ")
    );
}

#[test]
fn separately_built_equal_definitions_are_equal() {
    assert_eq!(daily(), daily());
    assert_eq!(date_by_carrier(), date_by_carrier());
    assert_ne!(daily(), hourly());
    let cron = || {
        TimeWindowPartitions::cron("0 6 * * *", "2013-01-01")
            .build()
            .expect("cron")
    };
    assert_eq!(cron(), cron());
    let (a, b) = (daily(), daily());
    assert_eq!(
        PartitionMapping::default_for(Some(&a), Some(&b)),
        PartitionMapping::Identity
    );
}

#[test]
fn keys_serialize_as_plain_strings() {
    let json = serde_json::to_string(&key("2013-01-01|AA")).expect("serialize");
    assert_eq!(json, "\"2013-01-01|AA\"");
    let back: PartitionKey = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, key("2013-01-01|AA"));
}
