//! A quick conformance run for people working on operators: the same runner as
//! `flotilla-agent conformance` (its module is included from the agent crate by
//! path), without rebuilding the agent after each kernel change.
//!
//! ```sh
//! cargo run -p flotilla-runtime --example conformance -- DIR [FILTER]
//! ```
//!
//! Prints every failed test and the line `N passed, M failed, K skipped`.

#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../../agent/src/conformance/mod.rs"]
mod conformance;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        anyhow::bail!("usage: conformance DIR [FILTER]");
    };
    let filter = args.next();
    let tol = conformance::Tolerance::default();
    let suite = conformance::run_suite(std::path::Path::new(&dir), filter.as_deref(), tol)?;
    for t in &suite.tests {
        if t.status == conformance::Status::Failed {
            println!("{}", t.line());
        }
    }
    println!(
        "{} passed, {} failed, {} skipped",
        suite.passed(),
        suite.failed(),
        suite.skipped()
    );
    Ok(())
}
