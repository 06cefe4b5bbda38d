//! The unpartitioned assets parse from the real files.

use std::path::PathBuf;

use flights::{read_airlines, read_airports, read_planes};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

#[test]
fn dimension_tables_parse() {
    let airlines = read_airlines(data_dir()).unwrap();
    let airports = read_airports(data_dir()).unwrap();
    let planes = read_planes(data_dir()).unwrap();

    assert_eq!(
        (airlines.len(), airports.len(), planes.len()),
        (16, 1458, 3322)
    );
    assert!(
        airlines
            .iter()
            .any(|a| a.carrier == "UA" && a.name == "United Air Lines Inc.")
    );
    assert_eq!(airports.iter().filter(|a| a.tzone.is_none()).count(), 3);
    assert_eq!(planes.iter().filter(|p| p.year.is_none()).count(), 70);
}
