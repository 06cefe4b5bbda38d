use flowstone::{Result, asset};

#[asset]
async fn raw_flights() -> Result<Vec<u32>> {
    Ok(vec![1, 2, 3])
}

// `raw_flights` produces `Vec<u32>`, not `Vec<String>`.
#[asset]
async fn cleaned_flights(raw_flights: Vec<String>) -> Result<usize> {
    Ok(raw_flights.len())
}

fn main() {}
