//! Conformance results: per test, per suite, per operator, and the summary line.
//!
//! This module only aggregates and formats; it runs nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use crate::conformance::Tolerance;

/// The outcome of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every output of every data set matched.
    Passed,
    /// Something went wrong; see the reason.
    Failed,
    /// The test uses element types the executor does not hold.
    Skipped,
}

/// One test folder's result.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    /// The folder name (`test_conv_with_strides_padding`).
    pub name: String,
    /// The operator types in the model's main graph (domain-qualified outside the
    /// default domain), sorted.
    pub ops: Vec<String>,
    /// Passed, failed or skipped.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
}

impl TestResult {
    pub(crate) fn fail(mut self, reason: String) -> Self {
        self.status = Status::Failed;
        self.reason = Some(reason);
        self
    }

    pub(crate) fn skip(mut self, reason: String) -> Self {
        self.status = Status::Skipped;
        self.reason = Some(reason);
        self
    }

    /// One line for the text output.
    pub fn line(&self) -> String {
        let status = match self.status {
            Status::Passed => "ok",
            Status::Failed => "FAIL",
            Status::Skipped => "skip",
        };
        match &self.reason {
            Some(r) => format!("{status} {}: {r}", self.name),
            None => format!("{status} {}", self.name),
        }
    }
}

/// The results of one suite directory.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The directory's last path component.
    pub name: String,
    /// The directory.
    pub dir: PathBuf,
    /// One result per test folder.
    pub tests: Vec<TestResult>,
}

impl Suite {
    fn count(&self, s: Status) -> usize {
        self.tests.iter().filter(|t| t.status == s).count()
    }

    /// Tests passed.
    pub fn passed(&self) -> usize {
        self.count(Status::Passed)
    }

    /// Tests failed.
    pub fn failed(&self) -> usize {
        self.count(Status::Failed)
    }

    /// Tests skipped.
    pub fn skipped(&self) -> usize {
        self.count(Status::Skipped)
    }
}

/// All suites of one run.
#[derive(Debug, Clone)]
pub struct Report {
    tolerance: Tolerance,
    suites: Vec<Suite>,
}

impl Report {
    /// An empty report.
    pub fn new(tolerance: Tolerance) -> Self {
        Self {
            tolerance,
            suites: Vec::new(),
        }
    }

    /// Adds a suite's results.
    pub fn add_suite(&mut self, suite: Suite) {
        self.suites.push(suite);
    }

    /// The suites, in the order run.
    pub fn suites(&self) -> &[Suite] {
        &self.suites
    }

    /// Tests passed over all suites.
    pub fn passed(&self) -> usize {
        self.suites.iter().map(Suite::passed).sum()
    }

    /// Tests failed over all suites.
    pub fn failed(&self) -> usize {
        self.suites.iter().map(Suite::failed).sum()
    }

    /// Tests skipped over all suites.
    pub fn skipped(&self) -> usize {
        self.suites.iter().map(Suite::skipped).sum()
    }

    /// `N passed, M failed, K skipped`.
    pub fn summary_line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }

    /// The JSON report: tolerance, per-suite counts, per-operator counts, per-test
    /// results.
    pub fn to_json(&self) -> serde_json::Value {
        let mut ops: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
        for t in self.suites.iter().flat_map(|s| &s.tests) {
            for op in &t.ops {
                let e = ops.entry(op).or_default();
                match t.status {
                    Status::Passed => e[0] += 1,
                    Status::Failed => e[1] += 1,
                    Status::Skipped => e[2] += 1,
                }
            }
        }
        let operators: serde_json::Map<String, serde_json::Value> = ops
            .into_iter()
            .map(|(op, [p, f, s])| {
                (
                    op.to_owned(),
                    json!({ "passed": p, "failed": f, "skipped": s }),
                )
            })
            .collect();
        let suites: Vec<_> = self
            .suites
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "dir": s.dir.display().to_string(),
                    "passed": s.passed(),
                    "failed": s.failed(),
                    "skipped": s.skipped(),
                    "tests": s.tests,
                })
            })
            .collect();
        json!({
            "tolerance": self.tolerance,
            "passed": self.passed(),
            "failed": self.failed(),
            "skipped": self.skipped(),
            "suites": suites,
            "operators": operators,
        })
    }
}
