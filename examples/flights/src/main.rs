//! The flights example's command line: `cargo run --release -p flights -- backfill --all`.

fn main() -> std::process::ExitCode {
    flowstone::cli::main(flights::definitions())
}
