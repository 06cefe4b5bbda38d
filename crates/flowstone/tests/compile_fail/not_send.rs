use std::rc::Rc;

use flowstone::{Result, asset};

async fn tick() {}

// The engine runs assets on a multi-threaded runtime, so the future must be `Send`.
#[asset]
async fn raw_flights() -> Result<Vec<u32>> {
    let shared = Rc::new(vec![1, 2, 3]);
    tick().await;
    Ok(shared.to_vec())
}

fn main() {}
