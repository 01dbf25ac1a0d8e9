//! What a batch run did: rows scored, rejected and skipped, time taken, and
//! rejected rows grouped by reason; as text or as one JSON object.
//!
//! It does not print anything itself (the command does).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Reasons shown in a summary.
const TOP_REASONS: usize = 10;

/// Counts of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// The input file.
    pub input: String,
    /// The output file.
    pub output: String,
    /// Rows scored in this run.
    pub scored: u64,
    /// Rows rejected in this run.
    pub rejected: u64,
    /// Rows skipped because an earlier run had written them.
    pub skipped: u64,
    /// Time the run took.
    pub elapsed: Duration,
    /// Rejected rows per reason.
    reasons: HashMap<String, u64>,
}

impl Summary {
    /// An empty summary of scoring `input` into `output`.
    #[must_use]
    pub fn new(input: &Path, output: &Path) -> Self {
        Self {
            input: input.display().to_string(),
            output: output.display().to_string(),
            ..Self::default()
        }
    }

    /// Counts one scored row.
    pub fn add_scored(&mut self) {
        self.scored += 1;
    }

    /// Counts one rejected row under `reason`.
    pub fn add_rejected(&mut self, reason: &str) {
        self.rejected += 1;
        match self.reasons.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.reasons.insert(reason.to_owned(), 1);
            }
        }
    }

    /// Rows handled in this run per second.
    #[must_use]
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.scored + self.rejected) as f64 / secs
        } else {
            0.0
        }
    }

    /// The most frequent reasons, most frequent first (ties by name), at most
    /// ten.
    #[must_use]
    pub fn top_reasons(&self) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> =
            self.reasons.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(TOP_REASONS);
        all
    }

    /// Distinct reasons seen.
    #[must_use]
    pub fn reason_count(&self) -> usize {
        self.reasons.len()
    }

    /// The summary for people, lines ending in `\n`.
    #[must_use]
    pub fn text(&self) -> String {
        let mut s = format!(
            "{}: {} rows scored, {} rejected, {} skipped (resumed) in {:.2} s ({:.0} rows/s); output in {}\n",
            self.input,
            self.scored,
            self.rejected,
            self.skipped,
            self.elapsed.as_secs_f64(),
            self.rows_per_second(),
            self.output,
        );
        let top = self.top_reasons();
        if !top.is_empty() {
            s.push_str("rejected rows by reason:\n");
            for (reason, n) in &top {
                let _ = writeln!(s, "{n:>8}  {reason}");
            }
            let more = self.reasons.len() - top.len();
            if more > 0 {
                let _ = writeln!(s, "          ({more} more reasons)");
            }
        }
        s
    }

    /// The summary as one JSON object.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let reasons: Vec<Value> = self
            .top_reasons()
            .into_iter()
            .map(|(reason, count)| json!({"reason": reason, "count": count}))
            .collect();
        json!({
            "input": self.input,
            "output": self.output,
            "scored": self.scored,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "rows_per_s": self.rows_per_second(),
            "rejected_reasons": reasons,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_counted_and_the_top_ten_shown_most_frequent_first() {
        let mut s = Summary::new(Path::new("in.csv"), Path::new("out.jsonl"));
        for i in 0..12u64 {
            for _ in 0..=i {
                s.add_rejected(&format!("reason {i:02}"));
            }
        }
        s.add_scored();
        let top = s.top_reasons();
        assert_eq!(top.len(), 10);
        assert_eq!(top[0], ("reason 11", 12));
        assert_eq!(top[9], ("reason 02", 3));
        let json = s.to_json();
        assert_eq!(json["rejected"], 78);
        assert_eq!(json["scored"], 1);
        assert_eq!(json["rejected_reasons"][0]["count"], 12);
        assert!(s.text().contains("(2 more reasons)"), "{}", s.text());
    }
}
