use flowstone::asset;

#[asset]
async fn raw_flights() -> Result<Vec<u32>, String> {
    Ok(vec![1, 2, 3])
}

fn main() {}
