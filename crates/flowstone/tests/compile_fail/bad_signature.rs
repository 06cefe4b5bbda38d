use flowstone::{AssetContext, Result, asset};

#[asset]
async fn generic<T>() -> Result<Vec<u32>> {
    Ok(vec![1, 2, 3])
}

#[asset]
async fn pattern((a, b): (u32, u32)) -> Result<u32> {
    Ok(a + b)
}

#[asset]
async fn context_last(a: u32, ctx: &AssetContext) -> Result<u32> {
    let _ = ctx;
    Ok(a)
}

struct Loader;

impl Loader {
    #[asset]
    async fn load(&self) -> Result<u32> {
        Ok(1)
    }
}

fn main() {}
