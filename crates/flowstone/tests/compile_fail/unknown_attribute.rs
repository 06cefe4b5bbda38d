use flowstone::{Result, asset};

#[asset(grup = "flights")]
async fn raw_flights() -> Result<Vec<u32>> {
    Ok(vec![1, 2, 3])
}

fn main() {}
