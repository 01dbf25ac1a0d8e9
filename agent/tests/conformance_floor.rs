//! The conformance floor: over the ONNX backend test data in
//! `../shared/onnx-conformance` (or `$FLOTILLA_CONFORMANCE_DIR`), every suite named
//! in `agent/conformance-floor.toml` passes at least its floor. Missing test data is
//! a failure, not a skip: CI must not go green without having run the suite.

use std::path::PathBuf;

use flotilla_agent::conformance::{run_suite, Floor, Report, Tolerance};

fn data_root() -> PathBuf {
    match std::env::var_os("FLOTILLA_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/onnx-conformance"),
    }
}

#[test]
fn conformance_pass_counts_do_not_fall_below_the_floor() {
    let root = data_root();
    assert!(
        root.is_dir(),
        "ONNX conformance data is missing: {} is not a directory (set \
         FLOTILLA_CONFORMANCE_DIR or provide ../shared/onnx-conformance)",
        root.display()
    );
    let floor_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance-floor.toml");
    let floor = Floor::read(&floor_path).expect("the floor file must parse");
    assert!(!floor.minimum.is_empty(), "the floor file names no suite");
    let tol = Tolerance::default();
    let mut report = Report::new(tol);
    for suite in floor.minimum.keys() {
        let dir = root.join(suite);
        assert!(dir.is_dir(), "suite directory {} is missing", dir.display());
        report.add_suite(run_suite(&dir, None, tol).expect("suite directory must be listable"));
    }
    for s in report.suites() {
        println!(
            "suite {}: {} passed, {} failed, {} skipped",
            s.name,
            s.passed(),
            s.failed(),
            s.skipped()
        );
    }
    let shortfalls = floor.check(&report);
    assert!(
        shortfalls.is_empty(),
        "conformance fell below the floor:\n{}",
        shortfalls.join("\n")
    );
}
