//! Misuses of `#[asset]` fail to compile with a message that says what to
//! change, at the tokens to change. Each `.stderr` beside a case is the
//! expected compiler output; regenerate with `TRYBUILD=overwrite` and read
//! the diff before committing it.

#[test]
fn misuses_of_asset_do_not_compile() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
}
