//! `#[asset]` end to end: the definitions it produces (keys, dependencies,
//! descriptions, partitions, code versions), and the asset functions called
//! directly and through `AssetDef::call`.

use flowstone::partitions::{PartitionsError, TimeWindowPartitions};
use flowstone::{
    AssetContext, AssetDef, AssetKey, Definitions, Inputs, MemoryIoManager, PartitionMapping,
    Partitioned, PartitionsDef, Result, RetryPolicy, asset,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Flight {
    day: String,
    carrier: String,
    delay: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plane {
    pub tail: String,
}

fn daily() -> std::result::Result<PartitionsDef, PartitionsError> {
    TimeWindowPartitions::daily("2024-01-01")
        .end("2024-01-10")
        .build()
}

/// Assets in another module, reached with `#[from(path)]`.
mod fleet {
    use super::Plane;
    use flowstone::{Result, asset};

    /// Every plane of the fleet.
    #[asset(key_prefix = "fleet/")]
    pub async fn planes() -> Result<Vec<Plane>> {
        Ok(vec![Plane {
            tail: "N101".into(),
        }])
    }
}

/// Flights of one day.
///
/// One line per flight.
#[asset(
    partitions = daily(),
    retry = RetryPolicy::exponential(3),
    group = "flights",
    tags(team = "data", tier = "gold"),
    owners("a@example.com", "b@example.com")
)]
async fn raw_flights(ctx: &AssetContext) -> Result<Vec<Flight>> {
    let day = ctx.require_partition_key()?.to_string();
    Ok(vec![
        Flight {
            day: day.clone(),
            carrier: "AA".into(),
            delay: 5,
        },
        Flight {
            day,
            carrier: "ZZ".into(),
            delay: -2,
        },
    ])
}

/// Ignored: `description` wins over the doc comment.
#[asset(
    description = "Airline codes.",
    io_manager = "memory",
    code_version = "v2"
)]
async fn airlines() -> anyhow::Result<Vec<String>> {
    Ok(vec!["AA".to_owned()])
}

#[asset(key = "weather", partitions = TimeWindowPartitions::daily("2024-01-01").build())]
async fn daily_weather(_ctx: &AssetContext) -> Result<f64> {
    Ok(3.5)
}

/// Flights of known airlines, with yesterday's weather.
#[asset(partitions = daily())]
async fn cleaned_flights(
    _ctx: &AssetContext,
    raw_flights: Vec<Flight>,
    airlines: Vec<String>,
    #[mapping(PartitionMapping::TimeWindow { offset: -1 })] daily_weather: Option<f64>,
    #[from(fleet::planes)] fleet: Vec<Plane>,
) -> Result<Vec<Flight>> {
    let _ = (daily_weather, fleet);
    Ok(raw_flights
        .into_iter()
        .filter(|f| airlines.contains(&f.carrier))
        .collect())
}

/// The number of flights over every day.
#[asset(key_prefix = "reports")]
async fn flight_count(
    #[mapping(PartitionMapping::All)] cleaned_flights: Partitioned<Vec<Flight>>,
) -> Result<usize> {
    Ok(cleaned_flights.values().map(Vec::len).sum())
}

fn definitions() -> Definitions {
    Definitions::builder()
        .asset::<raw_flights>()
        .asset::<airlines>()
        .asset::<daily_weather>()
        .asset::<fleet::planes>()
        .asset::<cleaned_flights>()
        .asset::<flight_count>()
        .io_manager("memory", MemoryIoManager::new())
        .build()
        .expect("the test assets are valid")
}

fn def<'a>(defs: &'a Definitions, key: &str) -> &'a AssetDef {
    let key = AssetKey::new(key).unwrap();
    defs.asset(&key)
        .unwrap_or_else(|| panic!("asset {key} is defined"))
}

fn dep_names(def: &AssetDef) -> Vec<(&str, &str)> {
    def.deps
        .iter()
        .map(|dep| (dep.key.as_str(), dep.name.as_str()))
        .collect()
}

#[test]
fn keys_follow_names_prefixes_and_overrides() {
    use flowstone::Asset;

    assert_eq!(raw_flights::KEY, "raw_flights");
    assert_eq!(daily_weather::KEY, "weather");
    assert_eq!(fleet::planes::KEY, "fleet/planes");
    assert_eq!(flight_count::KEY, "reports/flight_count");

    let defs = definitions();
    let mut keys: Vec<&str> = defs.assets().map(|def| def.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "airlines",
            "cleaned_flights",
            "fleet/planes",
            "raw_flights",
            "reports/flight_count",
            "weather"
        ]
    );
}

#[test]
fn dependencies_come_from_parameters() {
    let defs = definitions();

    let cleaned = def(&defs, "cleaned_flights");
    assert_eq!(
        dep_names(cleaned),
        [
            ("raw_flights", "raw_flights"),
            ("airlines", "airlines"),
            ("weather", "daily_weather"),
            ("fleet/planes", "fleet"),
        ]
    );
    let mappings: Vec<_> = cleaned.deps.iter().map(|dep| dep.mapping.clone()).collect();
    assert_eq!(
        mappings,
        [
            None,
            None,
            Some(PartitionMapping::TimeWindow { offset: -1 }),
            None
        ]
    );
    let expects = cleaned.deps[3]
        .expects
        .expect("the macro records the expected type");
    assert_eq!(expects.type_name(), std::any::type_name::<Vec<Plane>>());

    let count = def(&defs, "reports/flight_count");
    assert_eq!(dep_names(count), [("cleaned_flights", "cleaned_flights")]);
    assert_eq!(count.deps[0].mapping, Some(PartitionMapping::All));
    assert!(def(&defs, "raw_flights").deps.is_empty());
}

#[test]
fn arguments_and_doc_comments_fill_the_definition() {
    let defs = definitions();

    let raw = def(&defs, "raw_flights");
    assert_eq!(
        raw.description.as_deref(),
        Some("Flights of one day.\n\nOne line per flight.")
    );
    assert_eq!(raw.group.as_deref(), Some("flights"));
    assert_eq!(raw.retry, RetryPolicy::exponential(3));
    assert_eq!(raw.io_manager, "default");
    let tags: Vec<(&str, &str)> = raw
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(tags, [("team", "data"), ("tier", "gold")]);
    assert_eq!(raw.owners, ["a@example.com", "b@example.com"]);
    assert_eq!(raw.partitions.as_ref(), Some(&daily().unwrap()));
    assert!(
        raw.origin.0.ends_with("asset_macro::raw_flights"),
        "{}",
        raw.origin
    );
    assert_eq!(raw.output.type_name(), std::any::type_name::<Vec<Flight>>());

    let airlines = def(&defs, "airlines");
    assert_eq!(airlines.description.as_deref(), Some("Airline codes."));
    assert_eq!(airlines.io_manager, "memory");
    assert_eq!(airlines.code_version, "v2");
    assert_eq!(airlines.partitions, None);
    assert_eq!(airlines.retry, RetryPolicy::none());

    let weather = def(&defs, "weather");
    assert_eq!(weather.description, None);
    assert!(
        weather
            .partitions
            .as_ref()
            .is_some_and(|p| p.describe().starts_with("daily"))
    );
}

#[test]
fn code_versions_are_hashes_of_the_function_and_stable() {
    let first = definitions();
    let second = definitions();

    let versions: Vec<&str> = first
        .assets()
        .map(|def| def.code_version.as_str())
        .collect();
    for asset in first
        .assets()
        .filter(|asset| asset.key.as_str() != "airlines")
    {
        let version = &asset.code_version;
        assert_eq!(version.len(), 16, "{}: {version}", asset.key);
        assert!(
            version.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: {version}",
            asset.key
        );
        assert_eq!(&def(&second, asset.key.as_str()).code_version, version);
    }
    let mut unique = versions.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        versions.len(),
        "every function hashes differently: {versions:?}"
    );
}

#[tokio::test]
async fn an_asset_function_is_still_a_plain_function() {
    let ctx = AssetContext::test("raw_flights")
        .partition("2024-01-03")
        .build()
        .unwrap();
    let flights = raw_flights(&ctx).await.unwrap();
    assert_eq!(flights.len(), 2);
    assert_eq!(flights[0].day, "2024-01-03");

    let ctx = AssetContext::test("cleaned_flights").build().unwrap();
    let cleaned = cleaned_flights(&ctx, flights, vec!["AA".into()], None, vec![])
        .await
        .unwrap();
    assert_eq!(cleaned.len(), 1);
}

#[tokio::test]
async fn compute_takes_inputs_by_parameter_name() {
    let defs = definitions();
    let flights = vec![
        Flight {
            day: "2024-01-03".into(),
            carrier: "AA".into(),
            delay: 1,
        },
        Flight {
            day: "2024-01-03".into(),
            carrier: "BB".into(),
            delay: 2,
        },
    ];

    let cleaned = def(&defs, "cleaned_flights");
    let inputs = Inputs::empty()
        .with("raw_flights", Some("2024-01-03"), flights.clone())
        .with("airlines", None, vec!["BB".to_owned()])
        .with("fleet", None, vec![Plane { tail: "N1".into() }]);
    let ctx = AssetContext::test("cleaned_flights").build().unwrap();
    let value = cleaned.call(ctx, inputs).await.unwrap();
    let value = value.downcast::<Vec<Flight>>().expect("the output type");
    assert_eq!(*value, vec![flights[1].clone()]);

    let count = def(&defs, "reports/flight_count");
    let inputs = Inputs::empty()
        .with("cleaned_flights", Some("2024-01-01"), flights.clone())
        .with("cleaned_flights", Some("2024-01-02"), flights);
    let ctx = AssetContext::test("reports/flight_count").build().unwrap();
    let value = count.call(ctx, inputs).await.unwrap();
    assert_eq!(*value.downcast::<usize>().unwrap(), 4);
}

#[tokio::test]
async fn compute_reports_a_missing_input() {
    let defs = definitions();

    let cleaned = def(&defs, "cleaned_flights");
    let ctx = AssetContext::test("cleaned_flights").build().unwrap();
    let err = cleaned.call(ctx, Inputs::empty()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("input raw_flights expects exactly one"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn errors_of_other_types_become_asset_errors() {
    #[asset]
    async fn parsed() -> std::result::Result<u32, std::num::ParseIntError> {
        "x".parse::<u32>()
    }

    let defs = Definitions::builder().asset::<parsed>().build().unwrap();
    let ctx = AssetContext::test("parsed").build().unwrap();
    let err = def(&defs, "parsed")
        .call(ctx, Inputs::empty())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid digit"), "{err}");
    assert!(err.is_retryable());
}
