use flowstone::{Result, asset};

// `partitions` takes a definition, not a start date.
#[asset(partitions = "2024-01-01")]
async fn raw_flights() -> Result<Vec<u32>> {
    Ok(vec![1, 2, 3])
}

fn main() {}
