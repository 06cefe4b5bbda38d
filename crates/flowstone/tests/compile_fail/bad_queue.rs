use flowstone::{Result, asset};

#[asset(queue = "llm calls")]
async fn summaries() -> Result<Vec<u32>> {
    Ok(vec![1, 2, 3])
}

fn main() {}
