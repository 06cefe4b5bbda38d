use flowstone::{AssetContext, Result, asset};

#[asset]
async fn raw_flights(_ctx: &AssetContext) -> Result<Vec<u32>> {
    Ok(vec![1, 2, 3])
}

// The parameter names an asset that does not exist (a typo for `raw_flights`).
#[asset]
async fn cleaned_flights(raw_flight: Vec<u32>) -> Result<Vec<u32>> {
    Ok(raw_flight)
}

fn main() {}
