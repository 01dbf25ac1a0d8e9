//! [`Floor`]: the minimum pass count per suite, kept in the repository and checked
//! by CI so that conformance never silently regresses.
//!
//! The file is TOML with one `suite = count` entry per suite directory name. This
//! module reads and checks it; it does not run tests.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

use crate::conformance::Report;

/// Minimum pass counts by suite name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floor {
    /// Suite name to minimum number of passing tests.
    pub minimum: BTreeMap<String, usize>,
}

impl Floor {
    /// Reads a floor file.
    ///
    /// # Errors
    ///
    /// Unreadable file, invalid TOML, or a value that is not a non-negative integer.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses floor TOML.
    ///
    /// # Errors
    ///
    /// Invalid TOML or a value that is not a non-negative integer.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let table: toml::Table = text.parse()?;
        let mut minimum = BTreeMap::new();
        for (k, v) in table {
            let n = v
                .as_integer()
                .and_then(|n| usize::try_from(n).ok())
                .with_context(|| format!("{k}: expected a non-negative integer"))?;
            minimum.insert(k, n);
        }
        Ok(Self { minimum })
    }

    /// One line per shortfall: a suite below its floor, or a suite with a floor
    /// that the report does not contain.
    pub fn check(&self, report: &Report) -> Vec<String> {
        let mut out = Vec::new();
        for (name, &min) in &self.minimum {
            match report.suites().iter().find(|s| &s.name == name) {
                Some(s) if s.passed() < min => out.push(format!(
                    "suite {name}: {} passed, floor is {min}",
                    s.passed()
                )),
                Some(_) => {}
                None => out.push(format!("suite {name}: not run (floor is {min})")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_file_parses_suite_counts() {
        let f = Floor::parse("node = 12\nsimple = 3\n").unwrap();
        assert_eq!(f.minimum.get("node"), Some(&12));
        assert_eq!(f.minimum.get("simple"), Some(&3));
    }

    #[test]
    fn negative_floor_is_rejected() {
        assert!(Floor::parse("node = -1").is_err());
    }

    #[test]
    fn missing_suite_is_a_shortfall() {
        let f = Floor::parse("node = 1").unwrap();
        let r = Report::new(crate::conformance::Tolerance::default());
        assert_eq!(f.check(&r).len(), 1);
    }
}
