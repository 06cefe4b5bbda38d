use flowstone::{Result, asset};

struct Flight {
    carrier: String,
}

// An asset's value is stored by an I/O manager, so it must be serde-serializable.
#[asset]
async fn raw_flights() -> Result<Vec<Flight>> {
    Ok(vec![Flight { carrier: "AA".into() }])
}

fn main() {}
