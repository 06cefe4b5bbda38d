use flowstone::asset;

#[asset]
async fn raw_flights() -> Vec<u32> {
    vec![1, 2, 3]
}

#[asset]
async fn airlines() {}

fn main() {}
